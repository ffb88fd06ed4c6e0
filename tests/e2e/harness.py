"""End-to-end harness: the real supervisor, control client, generator and sink in a namespace lab."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mcr.lab import SRC_IP, Lab

T = TypeVar("T")
PY = sys.executable


def mcr(*args: str) -> list[str]:
    return [PY, "-m", "mcr", *args]


def wait_for(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value: {value!r})")
        time.sleep(interval)


def raw_exchange(path: str, payload: bytes, half_close: bool = True, timeout: float = 10.0) -> bytes:
    """One request on the control socket, framed as given; returns the raw response bytes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(payload)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except BrokenPipeError:  # refused before the request was read (a connection cap): its answer is there
            pass
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


_RAW_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect:", e.strerror)
    sys.exit(3)
if sys.argv[2]:  # else a silent client: it only waits for an answer
    try:
        s.sendall(sys.argv[2].encode())
        s.shutdown(socket.SHUT_WR)
    except BrokenPipeError:
        pass
s.settimeout(60)
print(s.recv(65536).decode())
"""


def exchange_as(uid: int, gid: int, groups: Sequence[int], path: str, payload: bytes = b'"ListRules"') -> str:
    """One request sent by a stdlib-only client running as `uid`/`gid` with supplementary `groups`,
    with no capabilities (the test's own package need not be readable by that user); an empty
    payload sends nothing. Returns what it printed: the response, or `connect: <reason>`."""
    argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}"]
    argv += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    argv += ["--inh-caps=-all", "--bounding-set=-all", PY, "-I", "-c", _RAW_CLIENT, path, payload.decode()]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")
    assert not result.stderr, result.stderr
    return result.stdout


@dataclass
class Relay:
    """A supervisor running in the lab's relay namespace, driven through control_client."""

    lab: Lab
    workdir: Path
    num_workers: int = 1
    extra: Sequence[str] = ()
    wrap: Sequence[str] = ()  # a command the supervisor runs under, inside the namespace (e.g. unshare)
    env: dict[str, str] = field(default_factory=dict)  # added to the supervisor's environment (NOTIFY_SOCKET)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.socket_path = str(self.workdir / "run" / "control.sock")
        self.log_path = self.workdir / "supervisor.log"

    def start(self, settle: bool = True) -> Relay:
        """Start the supervisor and wait until it answers ping; with `settle`, also until no rule is
        `pending` (every worker has the rule set it started with), as systemd's READY would."""
        argv = mcr("supervisor", "--control-socket-path", self.socket_path, "--num-workers", str(self.num_workers))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.lab.exec_argv(self.lab.relay, [*self.wrap, *argv, *self.extra]),
                stdout=log,
                stderr=log,
                env={**os.environ, **self.env},
            )
        try:
            wait_for(lambda: self.ctl("ping", check=False).returncode == 0, 20, what="the supervisor to answer ping")
            if settle:
                wait_for(lambda: "pending" not in self.states(), 40, what="every rule to leave 'pending'")
        except BaseException:
            self.stop()  # a supervisor that did not come up is not left running (no fixture will stop it)
            print(self.log()[-3000:])
            raise
        return self

    def states(self) -> list[str]:
        """Each rule's `state`, from one raw ListRules (fast enough to poll)."""
        return [r["state"] for r in self.request("ListRules")["Rules"]]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            mcr("control", "--socket-path", self.socket_path, *args), capture_output=True, text=True, timeout=30
        )
        if check and result.returncode != 0:
            raise AssertionError(f"control_client {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ctl("--json", *args).stdout)

    def add(
        self,
        rule_id: str,
        outputs: str,
        *,
        group: str = "239.1.1.1",
        port: int = 5001,
        iface: str = "rin",
        extra: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        return self.ctl(
            "add",
            "--rule-id",
            rule_id,
            "--input-interface",
            iface,
            "--input-group",
            group,
            "--input-port",
            str(port),
            "--outputs",
            outputs,
            *extra,
            check=check,
        )

    def request(self, doc: Any) -> Any:
        """One raw control-protocol request (no client process: fast enough for thousands)."""
        return json.loads(raw_exchange(self.socket_path, json.dumps(doc).encode()))

    def rules(self) -> list[dict[str, Any]]:
        return list(self.json("list")["Rules"])

    def flow(self, rule_id: str) -> dict[str, Any]:
        for entry in self.json("stats")["Stats"]:
            if entry["rule_id"] == rule_id:
                return dict(entry)
        raise AssertionError(f"no stats for rule {rule_id}")

    def workers(self) -> list[dict[str, Any]]:
        """`list-workers`: the data-plane worker processes."""
        return list(self.json("list-workers")["Workers"])

    def kernel(self) -> dict[str, Any]:
        """`control_client kernel`: the eBPF engine's status and drops."""
        return dict(self.json("kernel")["KernelStatus"])

    def drops(self, engine: str) -> dict[str, int]:
        """The frames one engine dropped, by reason: summed over the workers, or the kernel engine's."""
        if engine == "kernel":
            return dict(self.kernel()["drops"])
        totals: dict[str, int] = {}
        for w in self.workers():
            for reason, n in w["drops"].items():
                totals[reason] = totals.get(reason, 0) + n
        return totals

    def wait_relayed(self, rule_id: str, packets: int, timeout: float = 10.0) -> dict[str, Any]:
        return wait_for(
            lambda: (f := self.flow(rule_id))["packets_relayed"] >= packets and f,
            timeout,
            what=f"rule {rule_id} to count {packets} packets",
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


class NotifyListener:
    """What systemd's $NOTIFY_SOCKET is for a supervisor started with `env=listener.env`: a datagram socket
    that collects its state messages (READY=1, RELOADING=1 ...)."""

    def __init__(self, workdir: Path) -> None:
        self.path = str(workdir / f"notify-{time.monotonic_ns()}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.env = {"NOTIFY_SOCKET": self.path}

    def poll(self) -> list[str]:
        """The messages that arrived since the last poll, without waiting."""
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return messages

    def close(self) -> None:
        self.sock.close()
        Path(self.path).unlink(missing_ok=True)


@dataclass
class Sink:
    proc: subprocess.Popen[bytes]

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=timeout)
        return dict(json.loads(out))


def start_sink(
    lab: Lab,
    workdir: Path,
    groups: str,
    ports: str,
    *,
    expect: int | None = None,
    idle: float = 2.0,
    duration: float = 60.0,
    ns: str | None = None,
    iface: str = "snk0",
) -> Sink:
    ready = workdir / f"sink-{time.monotonic_ns()}.ready"
    argv = mcr(
        "sink",
        "--group",
        groups,
        "--port",
        ports,
        "--interface",
        iface,
        "--idle-timeout",
        str(idle),
        "--duration",
        str(duration),
        "--ready-file",
        str(ready),
        "--quiet",
        "--json",
    )
    if expect is not None:
        argv += ["--expect", str(expect)]
    proc = subprocess.Popen(lab.exec_argv(ns or lab.sink, argv), stdout=subprocess.PIPE)
    wait_for(lambda: ready.exists() or proc.poll() is not None, 10, what="the sink to be ready")
    assert proc.poll() is None, "the sink exited early"
    return Sink(proc)


def send(
    lab: Lab,
    *,
    count: int,
    rate: int,
    size: int = 1400,
    group: str = "239.1.1.1",
    port: int = 5001,
    extra: Sequence[str] = (),
    source: str = SRC_IP,
    ns: str | None = None,
) -> dict[str, Any]:
    argv = mcr(
        "generate",
        "--group",
        group,
        "--port",
        str(port),
        "--interface",
        source,
        "--rate",
        str(rate),
        "--count",
        str(count),
        "--size",
        str(size),
        "--quiet",
        "--json",
        *extra,
    )
    result = subprocess.run(lab.exec_argv(ns or lab.src, argv), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = dict(json.loads(result.stdout))
    assert report["sent"] == count and report["errors"] == 0, report
    return report


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def saved_rule_ids(snapshot: str, journal: str = "") -> list[str]:
    """The rule ids a state file holds, read as operations.md describes it: the snapshot's rules, then the
    journal's records (`{"add": rule}`, `{"remove": id}`, one per line, ending at the zeros laid ahead of them)
    in order."""
    ids = [r["rule_id"] for r in json.loads(snapshot)["rules"]] if snapshot else []
    for line in journal.split("\0", 1)[0].splitlines():
        record = json.loads(line)
        if "add" in record:
            ids = [i for i in ids if i != record["add"]["rule_id"]] + [record["add"]["rule_id"]]
        else:
            ids = [i for i in ids if i != record["remove"]]
    return ids


def read_state(path: Path) -> list[str]:
    """`saved_rule_ids` of the state file at `path` and its journal (either may be missing)."""
    journal = path.with_name(path.name + ".journal")
    return saved_rule_ids(path.read_text() if path.exists() else "", journal.read_text() if journal.exists() else "")
