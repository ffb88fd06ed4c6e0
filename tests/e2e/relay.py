"""The product's processes in a `NetLab`: the supervisor with its control client, and the traffic tools.

Everything goes through the real command lines of DESIGN §4 (`multicast_relay supervisor`, `control_client`,
`traffic_generator`, `traffic_sink`) or the raw control protocol of §5; nothing imports the product's internals.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .netns import Chain, CommandFailed, NetLab, Proc, pid_alive, tool, wait_for

_socket_counter = itertools.count()
PROBES = Path(__file__).with_name("probes.py")
READY_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = 15.0


def socket_dir() -> Path:
    """A fresh, short directory for one supervisor's control socket (the supervisor creates it)."""
    return Path(f"/tmp/mcr-e2e-{os.getpid()}-{next(_socket_counter)}")


def exchange(path: str, payload: bytes, *, half_close: bool = True, timeout: float = 10.0) -> bytes:
    """Send `payload` on a new connection (then half-close, unless told not to); return everything answered.

    A server that answers early and closes may make our send fail (EPIPE); its answer is still read.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(payload)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class CtlResult:
    """One `control_client` run."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def doc(self) -> Any:
        """stdout parsed as JSON (for `--json` runs)."""
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"control_client printed no JSON ({e}): {self.stdout!r} {self.stderr!r}") from None


class Supervisor:
    """`multicast_relay supervisor` running in a namespace, and the clients that talk to it."""

    def __init__(self, lab: NetLab, ns: str, proc: Proc, socket_path: Path) -> None:
        self.lab = lab
        self.ns = ns
        self.proc = proc
        self.socket_path = socket_path

    # ------------------------------------------------------------------------------------ lifecycle

    @classmethod
    def start(
        cls,
        lab: NetLab,
        ns: str,
        *,
        num_workers: int = 1,
        user: str | None = "nobody",
        group: str | None = "nogroup",
        control_group: str | None = None,
        log_level: str = "info",
        extra: Sequence[str] = (),
        wait: bool = True,
        socket_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Supervisor:
        """Start a supervisor; `socket_path` reuses an earlier one's control socket (a restart), `env` adds
        environment variables."""
        if socket_path is None:
            socket_path = lab.track_dir(socket_dir()) / "control.sock"
        argv = [*tool("multicast_relay"), "supervisor", "--control-socket-path", str(socket_path)]
        argv += ["--num-workers", str(num_workers), "--log-level", log_level]
        if not any(a == "--engine" for a in extra):
            argv += ["--engine", "userspace"]  # this suite checks the userspace workers' own counters
        if user:
            argv += ["--user", user]
        if group:
            argv += ["--group", group]
        if control_group:
            argv += ["--control-group", control_group]
        if env:
            argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]  # env execs in place: same pid
        proc = lab.popen(ns, *argv, *extra, name="supervisor")
        sup = cls(lab, ns, proc, socket_path)
        if wait:
            sup.wait_ready()
        return sup

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll `control_client ping` until it succeeds (fails at once if the supervisor died)."""

        def ready() -> bool:
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(f"the supervisor exited with status {rc} before it answered ping")
            return self.ctl("ping", check=False, json_out=False, timeout=5).returncode == 0

        wait_for(ready, timeout, "the supervisor to answer `control_client ping`", interval=0.1)

    def terminate(self, timeout: float = 5.0) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds it took). Fails when it takes longer than `timeout`."""
        t0 = time.monotonic()
        self.proc.signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        return rc, time.monotonic() - t0

    # -------------------------------------------------------------------------------- control client

    def ctl(
        self, *args: str, check: bool = True, json_out: bool = True, timeout: float = CLIENT_TIMEOUT_S
    ) -> CtlResult:
        """Run `control_client --socket-path P [--json] ARGS` (from the host: the socket is a file)."""
        argv = [*tool("control_client"), "--socket-path", str(self.socket_path)]
        if json_out:
            argv.append("--json")
        argv += args
        r = self.lab.run(None, *argv, check=False, timeout=timeout)
        result = CtlResult(argv, r.returncode, r.stdout, r.stderr)
        if check and r.returncode != 0:
            raise CommandFailed(f"control_client {' '.join(args)} exited {r.returncode}: {r.stderr} {r.stdout}")
        return result

    def add_rule(
        self,
        *,
        group: str,
        port: int,
        outputs: Sequence[str],
        rule_id: str | None = None,
        input_interface: str = "rin",
        ttl: int | None = None,
    ) -> str:
        """`control_client add ...`; returns the rule id from the `Rule <id> added` answer."""
        args = ["add", "--input-interface", input_interface, "--input-group", group, "--input-port", str(port)]
        args += ["--outputs", ",".join(outputs)]
        if rule_id is not None:
            args += ["--rule-id", rule_id]
        if ttl is not None:
            args += ["--ttl", str(ttl)]
        doc = self.ctl(*args).doc
        text = doc.get("Success", "") if isinstance(doc, dict) else ""
        assert text.startswith("Rule ") and text.endswith(" added"), doc
        added = text.removeprefix("Rule ").removesuffix(" added")
        if rule_id is not None:
            assert added == rule_id, doc
        return added

    def remove_rule(self, rule_id: str) -> None:
        assert self.ctl("remove", "--rule-id", rule_id).doc == {"Success": f"Rule {rule_id} removed"}

    # ---------------------------------------------------------------------------------- raw protocol

    def request(self, doc: object, *, timeout: float = 10.0) -> Any:
        """One raw request (JSON + newline, then half-close); the parsed answer."""
        raw = exchange(str(self.socket_path), json.dumps(doc).encode() + b"\n", timeout=timeout)
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise AssertionError(f"the supervisor's answer to {doc!r} is not JSON: {raw[:500]!r}") from None

    def rules(self) -> list[dict[str, Any]]:
        return list(self.request("ListRules")["Rules"])

    def stats(self) -> list[dict[str, Any]]:
        return list(self.request("GetStats")["Stats"])

    def workers(self) -> list[dict[str, Any]]:
        return list(self.request("ListWorkers")["Workers"])

    def flow(self, rule_id: str) -> dict[str, Any] | None:
        for entry in self.stats():
            if entry.get("rule_id") == rule_id:
                return entry
        return None

    def wait_flow(
        self, rule_id: str, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Poll `GetStats` until the rule's entry satisfies `check`; returns that entry."""

        def probe() -> dict[str, Any] | None:
            entry = self.flow(rule_id)
            return entry if entry is not None and check(entry) else None

        try:
            return wait_for(probe, timeout, f"rule {rule_id}: {what}", interval=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}; last stats entry: {self.flow(rule_id)!r}") from None

    def wait_relayed(self, rule_id: str, packets: int, timeout: float = 10.0) -> dict[str, Any]:
        """Poll until packets_relayed reaches `packets`, then a little longer to catch any excess."""
        entry = self.wait_flow(rule_id, lambda e: e["packets_relayed"] >= packets, f"{packets} relayed", timeout)
        time.sleep(1.2)  # counters are pushed at least once a second: one more push shows any extra packet
        return self.flow(rule_id) or entry

    def snapshot(self) -> dict[str, Any]:
        """Stats and workers, for failure messages."""
        try:
            return {"stats": self.stats(), "workers": self.workers()}
        except (OSError, AssertionError, KeyError) as e:
            return {"error": repr(e)}

    def worker_pids(self) -> list[int]:
        return sorted(int(w["pid"]) for w in self.workers())

    def drops(self) -> dict[str, int]:
        """Drop counters summed over workers (per-worker view) and over rules (per-rule view), the larger."""
        per_worker: dict[str, int] = {}
        for w in self.workers():
            for k, v in w.get("drops", {}).items():
                per_worker[k] = per_worker.get(k, 0) + int(v)
        per_rule: dict[str, int] = {}
        for f in self.stats():
            for k, v in f.get("drops", {}).items():
                per_rule[k] = per_rule.get(k, 0) + int(v)
        return {k: max(per_worker.get(k, 0), per_rule.get(k, 0)) for k in per_worker.keys() | per_rule.keys()}

    def all_gone(self, pids: Sequence[int]) -> bool:
        return not any(pid_alive(p) for p in pids)


# ------------------------------------------------------------------------------------------- traffic


@dataclass
class Sink:
    """A `traffic_sink --json` run."""

    proc: Proc
    ready_file: Path

    def wait_ready(self, timeout: float = 10.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"traffic_sink exited early ({self.proc.poll()}): {self.proc.err()[-2000:]}")
            return self.ready_file.exists()

        wait_for(ready, timeout, "traffic_sink's ready file")

    def report(self, timeout: float = 30.0) -> SinkReport:
        rc = self.proc.wait(timeout)
        if rc not in (0, 3):  # 3: --expect not reached, still a report
            raise CommandFailed(f"traffic_sink exited {rc}: {self.proc.err()[-3000:]}")
        try:
            return SinkReport(json.loads(self.proc.out()))
        except json.JSONDecodeError:
            raise AssertionError(f"traffic_sink printed no JSON report: {self.proc.out()[-2000:]!r}") from None

    def stop(self, timeout: float = 30.0) -> SinkReport:
        """SIGTERM (the sink reports and exits), then the report."""
        self.proc.signal(signal.SIGTERM)
        return self.report(timeout)


@dataclass
class SinkReport:
    """traffic_sink's JSON: totals at the top level and one entry per stream (`"stream": "G:P"`)."""

    doc: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.doc[key]

    @property
    def streams(self) -> list[dict[str, Any]]:
        return list(self.doc["streams"])

    def stream(self, group: str, port: int) -> dict[str, Any]:
        for s in self.streams:
            if s["stream"] == f"{group}:{port}":
                return s
        raise AssertionError(f"no stream {group}:{port} in the sink report: {[s['stream'] for s in self.streams]}")

    def summary(self, entry: dict[str, Any] | None = None) -> dict[str, int]:
        e = self.doc if entry is None else entry
        keys = ("received", "unique", "lost", "duplicated", "reordered", "corrupted", "unnumbered", "bytes")
        return {k: e[k] for k in keys}


def start_sink(
    lab: NetLab,
    ns: str,
    streams: Sequence[tuple[str, int]],
    *,
    interface: str = "snk0",
    expect: int | None = None,
    duration: float = 30.0,
    idle_timeout: float = 3.0,
) -> Sink:
    """Start `traffic_sink` on `streams` ((group, port) pairs) and wait until it is ready."""
    ready = lab.workdir / f"sink-{len(lab.procs)}.ready"
    argv = [*tool("traffic_sink"), "--group", ",".join(g for g, _ in streams)]
    argv += ["--port", ",".join(str(p) for _, p in streams), "--interface", interface]
    argv += ["--duration", str(duration), "--idle-timeout", str(idle_timeout), "--ready-file", str(ready)]
    argv += ["--json", "--quiet"]
    if expect is not None:
        argv += ["--expect", str(expect)]
    sink = Sink(lab.popen(ns, *argv, name="traffic_sink"), ready)
    sink.wait_ready()
    return sink


def generator_argv(group: str, port: int, *, source: str, rate: int, size: int, count: int) -> list[str]:
    argv = [*tool("traffic_generator"), "--group", group, "--port", str(port), "--interface", source]
    return [*argv, "--rate", str(rate), "--size", str(size), "--count", str(count), "--json", "--quiet"]


def start_generator(chain: Chain, group: str, port: int, *, rate: int, size: int = 1400, count: int) -> Proc:
    """`traffic_generator` in SRC, in the background; `count` and `rate` bound it."""
    argv = generator_argv(group, port, source=chain.src_ip, rate=rate, size=size, count=count)
    return chain.lab.popen(chain.src, *argv, name="traffic_generator")


def generate(chain: Chain, group: str, port: int, *, rate: int, size: int = 1400, count: int) -> dict[str, Any]:
    """Run `traffic_generator` in SRC to the end; checks that it sent `count` packets without error."""
    proc = start_generator(chain, group, port, rate=rate, size=size, count=count)
    report = proc.json(timeout=count / rate + 30)
    assert report["sent"] == count and report["errors"] == 0, report
    return dict(report)


# -------------------------------------------------------------------------------------------- probes


def probe(lab: NetLab, ns: str | None, *args: str, timeout: float = 30.0) -> Any:
    """Run `probes.py ARGS` inside `ns` to the end; its JSON output."""
    return json.loads(lab.run(ns, sys.executable, str(PROBES), *args, timeout=timeout).stdout)


def start_probe(lab: NetLab, ns: str | None, *args: str, name: str) -> Proc:
    """Start `probes.py ARGS` inside `ns` in the background (collect with `Proc.json`)."""
    return lab.popen(ns, sys.executable, str(PROBES), *args, name=name)


def wait_file(path: Path, proc: Proc, timeout: float = 10.0) -> None:
    """Wait for a ready file written by `proc`; fail at once if `proc` died first."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.name} exited ({proc.poll()}) before it was ready: {proc.err()[-2000:]}")
        return path.exists()

    wait_for(ready, timeout, f"{proc.name} to be ready")
