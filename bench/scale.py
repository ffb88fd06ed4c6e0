#!/usr/bin/env python3
"""Scale benchmark (issue 18): thousands of rules changed one by one at run time.

    python3 bench/scale.py --rules 10000              # root; writes bench/results/scale-<label>.{json,md}
    python3 bench/scale.py --rules 1000 --engine kernel --label k1000

In a network namespace of its own (an input veth and four output ones, each with its peer, IPv4 and IPv6 addresses,
no traffic at all) it starts `multicast_relay supervisor` and measures, over the control socket with the
original's framing (one JSON request, then a half-close):

- each `AddRule` (IPv4 and IPv6 rules alternate, 1-4 outputs each): latency p50/p99 per tenth of the table,
  and whether the rule was active at its `Success` (sampled with `ListRules` at each tenth);
- `ListRules`, `GetStats` and the metrics endpoint at each tenth; supervisor and worker RSS per rule (the
  supervisor's also 4 s after the last queries, when it has given the heap's free pages back);
- each `RemoveRule` of every rule, latency p50/p99 per tenth;
- the same rules from a config file: start to READY (systemd's notify protocol) and to every rule active;
- a SIGHUP reload that changes 1% of them: until the changed rules are active, and whether any unchanged
  rule left `active` meanwhile (the reload is hitless for them);
- the CPU time each process (supervisor, worker, this client) spent per add and per remove, the supervisor's
  until READY, and the machine's speed at the start and the end (`reference_ms`: this machine has fast and
  slow phases); `--py-spy DIR` records the supervisor and the worker over each phase.

`--config-only` measures the config file's start and its reload only (a minute instead of four); `--log-dir DIR`
keeps the supervisor's log, at level info (the times it started its worker, heard it ready, and had every rule
confirmed), and prints each `ListRules` of the wait for every rule active.

`--memory` measures memory only: RSS of the supervisor and of its worker with no rule, then after adding
1,000 and 10,000 rules one by one (`--memory-points`), as kB per rule beyond the base; `--memory-queries N`
measures once more after N rounds of the three queries (0.5 s apart) and the supervisor's quiet period, what
the answers leave behind. `--trace` adds where the
bytes are: tracemalloc snapshots of both processes (bench/memtrace/sitecustomize.py) at each point, and the
lines that grew most (traced runs are slower and bigger; their RSS is not the one to quote).

The namespace is deleted at the end, also on an error or Ctrl-C; the run is bounded by --max-minutes.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUTPUTS = ("out0", "out1", "out2", "out3")
METRICS_PORT = 9187
#: When the supervisor's RSS is read a second time after the queries: past its quiet period (mcr.linux.heap), when
#: it gives the C heap's free pages back, as it does between an operator's scrapes.
SETTLED_S = 4.0


def sh(*argv: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def build_namespace(ns: str) -> None:
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "set", "lo", "up", ns=ns)
    for i, name in enumerate(("in0", *OUTPUTS)):
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p", ns=ns)
        sh("ip", "link", "set", f"{name}p", "up", ns=ns)
        sh("ip", "addr", "add", f"10.77.{i}.1/24", "dev", name, ns=ns)
        sh("ip", "-6", "addr", "add", f"fd00:77:{i}::1/64", "dev", name, "nodad", ns=ns)
        sh("ip", "link", "set", name, "up", ns=ns)


# --------------------------------------------------------------------------------------------- rules


def rule_doc(i: int, port_shift: int = 0) -> dict[str, Any]:
    """Rule i: IPv4 for even i, IPv6 for odd i; 1 + i % 4 outputs, one per output interface."""
    n_out = 1 + i % 4
    if i % 2 == 0:
        group = f"239.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        outs = [f"239.{100 + k}.{(i >> 8) & 255}.{i & 255}" for k in range(n_out)]
    else:
        group = f"ff3e::7:{i:x}"
        outs = [f"ff3e::{100 + k}:{i:x}" for k in range(n_out)]
    return {
        "rule_id": f"r{i}",
        "input_interface": "in0",
        "input_group": group,
        "input_port": 5000,
        "outputs": [
            {"group": g, "port": 6000 + port_shift, "interface": OUTPUTS[k], "ttl": 4} for k, g in enumerate(outs)
        ],
    }


def toml_rule(doc: dict[str, Any]) -> str:
    outs = ", ".join(
        f'{{ group = "{o["group"]}", port = {o["port"]}, interface = "{o["interface"]}" }}' for o in doc["outputs"]
    )
    return (
        f'[[rule]]\nid = "{doc["rule_id"]}"\ninput_interface = "{doc["input_interface"]}"\n'
        f'input_group = "{doc["input_group"]}"\ninput_port = {doc["input_port"]}\nttl = 4\noutputs = [{outs}]\n'
    )


# --------------------------------------------------------------------------------------- the client


def exchange_raw(path: str, request: object, timeout: float = 30.0) -> bytes:
    """One request with the original's framing (JSON, then half-close); the answer's bytes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def exchange(path: str, request: object, timeout: float = 30.0) -> Any:
    """`exchange_raw`, decoded."""
    return json.loads(exchange_raw(path, request, timeout))


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def ring_kb(pid: int) -> int:
    """Resident kB of a process's socket mappings: a worker's capture rings (TPACKET_V3, mapped whole when the
    first rule on an input interface opens its capture, a fixed size per interface whatever the rules)."""
    total = 0
    in_socket = False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                    in_socket = line.rstrip().endswith("]") and " socket:[" in line
                elif in_socket and line.startswith("Rss:"):
                    total += int(line.split()[1])
    except OSError:
        pass
    return total


def rss_kinds_kb(pid: int) -> dict[str, int]:
    """Resident kB of a process by kind of mapping: the C heap (`brk`), anonymous maps (Python's arenas of
    small objects, 1 MiB each, and malloc's large blocks and thread arenas), files, and the rest (stacks,
    sockets)."""
    kinds = {"heap": 0, "anon": 0, "file": 0, "other": 0}
    kind = "other"
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(" ", 1)[0]
                if line[0] in "0123456789abcdef" and "-" in head:
                    path = line.split(None, 5)[5].strip() if len(line.split(None, 5)) > 5 else ""
                    kind = "heap" if path == "[heap]" else "anon" if not path else "file" if path[0] == "/" else "other"
                elif line.startswith("Rss:"):
                    kinds[kind] += int(line.split()[1])
    except OSError:
        pass
    return kinds


def cpu_times(pid: int) -> tuple[float, float]:
    """A process's user and system CPU time so far (s), zeros once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_s(pid: int) -> float:
    return sum(cpu_times(pid))


def reference_ms() -> float:
    """The machine's speed now: the best of five runs of a fixed pure-Python workload (ms). This machine
    has fast and slow hours; a run's times are read against this figure, taken at its start and end."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        table: dict[str, list[int]] = {}
        for i in range(100_000):
            table.setdefault(f"r{i % 5000}", []).append(i)
        json.loads(json.dumps(table))
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def spy_on(pid: int, output: Path, children: bool = False) -> subprocess.Popen[bytes]:
    """py-spy recording a process's samples (and its children's) into `output` (raw form) until it gets SIGINT."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tool = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    # --nonblocking: a process paused for each sample gets signals that cut short what the kernel was doing (a BPF
    # program's verification gives up with EAGAIN when one arrives; at 250 samples a second, every attempt did)
    argv = [tool, "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
    argv += ["--format", "raw", "--output", str(output)]
    argv += ["--subprocesses"] * children
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class CpuMeter:
    """CPU time spent by the supervisor, its workers and this client over one phase, per operation; with
    `--py-spy DIR`, each process's samples over the phase too (DIR/<phase>-<process>.txt, py-spy's raw form)."""

    def __init__(self, relay: Relay, phase: str, spy: Path | None) -> None:
        self.pids = [relay.proc.pid, *relay.worker_pids()]
        self.start = [cpu_times(p) for p in self.pids]
        self.client = time.process_time()
        self.paused = 0.0
        self.spies = []
        if spy is not None:
            for name, pid in zip(("supervisor", "worker"), self.pids, strict=False):
                self.spies.append(spy_on(pid, spy / f"{phase}-{name}.txt"))

    def pause(self, relay_cpu_s: float) -> None:
        """Leave out the supervisor's CPU time spent on something else (the checkpoints' queries)."""
        self.paused += relay_cpu_s

    def per_op_ms(self, ops: int) -> dict[str, float]:
        now = [cpu_times(p) for p in self.pids]
        system = [s1 - s0 for (_u0, s0), (_u1, s1) in zip(self.start, now, strict=True)]
        used = [u1 + s1 - u0 - s0 for (u0, s0), (u1, s1) in zip(self.start, now, strict=True)]
        used[0] -= self.paused
        for spy in self.spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        return {
            "supervisor": used[0] * 1e3 / ops,
            "supervisor_system": system[0] * 1e3 / ops,  # the checkpoints' share included
            "workers": sum(used[1:]) * 1e3 / ops,
            "workers_system": sum(system[1:]) * 1e3 / ops,
            "client": (time.process_time() - self.client) * 1e3 / ops,
        }


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Relay:
    def __init__(
        self, a: argparse.Namespace, work: Path, config: Path | None = None, trace: Path | None = None
    ) -> None:
        self.sock = str(work / "control.sock")
        self.verbose = a.log_dir is not None
        self.notify_path = str(work / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.log = open((a.log_dir or work) / f"supervisor-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        argv = [sys.executable, "-m", "mcr", "supervisor", "--control-socket-path", self.sock,
                "--num-workers", str(a.workers), "--engine", a.engine, "--max-rules", str(max(a.rules, 1000)),
                "--max-total-outputs", str(max(4 * a.rules, 10_000)), "--metrics-addr", f"127.0.0.1:{METRICS_PORT}",
                "--state-file", str(work / "state.json"),
                "--log-level", "info" if self.verbose else "warning"]  # fmt: skip
        if config is not None:
            argv += ["--config", str(config)]
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path, PYTHONPATH=str(REPO / "src"))
        if a.memory:
            # worker 0 holds copies of the supervisor's join sockets (issue 17), sent in one SCM_RIGHTS message
            # at every rule change; beyond 253 of them (about 5,000 groups at igmp_max_memberships 20) the send
            # fails and the worker is restarted again and again. The memory run does without those copies.
            argv += ["--worker-orphan-timeout", "0"]
        if trace is not None:  # every process traces its allocations; SIGUSR2 writes a snapshot
            argv.append("--no-seccomp")  # the worker writes its snapshot after its privilege drop
            env.update(MCR_MEMTRACE=str(trace), PYTHONPATH=f"{HERE / 'memtrace'}:{REPO / 'src'}")
            env["MCR_MEMTRACE_FRAMES"] = str(a.trace_frames)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float) -> float:
        """Seconds from start to READY=1."""
        self.notify.settimeout(timeout)
        while True:
            msg = self.notify.recv(4096).decode()
            if "READY=1" in msg:
                return time.perf_counter() - self.started

    def call(self, request: object) -> Any:
        return exchange(self.sock, request)

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.call("ListWorkers")["Workers"] if w["worker_type"] == "DataPlane"]

    def rss(self) -> tuple[int, int]:
        """(supervisor, largest worker) RSS in kB."""
        return rss_kb(self.proc.pid), max((rss_kb(p) for p in self.worker_pids()), default=0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        self.log.close()
        Path(self.notify_path).unlink(missing_ok=True)


def wait_all_active(relay: Relay, n: int, timeout: float, want: dict[str, int] | None = None) -> float:
    """Poll ListRules until `n` rules are listed and active (and the rules of `want` have that output port)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        t_call = time.perf_counter()
        rules = relay.call("ListRules")["Rules"]
        if relay.verbose:
            active = sum(r["state"] == "active" for r in rules)
            print(f"    ListRules at {t_call - t0:.3f} s took {time.perf_counter() - t_call:.3f} s: {active} active")
        ok = len(rules) == n and all(r["state"] == "active" for r in rules)
        if ok and want:
            ports = {r["rule_id"]: r["outputs"][0]["port"] for r in rules}
            ok = all(ports.get(k) == v for k, v in want.items())
        if ok:
            return time.perf_counter() - t0
        time.sleep(0.05)
    states = Counter(r["state"] for r in rules)
    raise TimeoutError(f"rules not all active within {timeout} s: {len(rules)} listed, {dict(states)}")


def metrics_get() -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=30) as r:
        return bytes(r.read())


# ------------------------------------------------------------------------------------------ the run


# a query's time until its answer's last byte arrived, apart from its time until the client has decoded it
# (at 10,000 rules about 5 MB of JSON: a Python client's share)
ANSWERED = {"ListRules": "ListRules, answer received", "GetStats": "GetStats, answer received"}


def repeated_queries(relay: Relay, rounds: int) -> dict[str, dict[str, float]]:
    """At the full table: `rounds` of ListRules, GetStats and a scrape, 0.5 s apart, so that they meet the
    workers' full reports (every 10 s) and the collector as an operator's polling would; p50, p90 and max
    (the queries until decoded, as before, and until their answer was received)."""
    took: dict[str, list[float]] = {q: [] for q in ("ListRules", "GetStats", "metrics", *ANSWERED.values())}
    for _ in range(rounds):
        for query, answered in ANSWERED.items():
            t0 = time.perf_counter()
            raw = exchange_raw(relay.sock, query)
            t1 = time.perf_counter()
            json.loads(raw)
            took[query].append(time.perf_counter() - t0)
            took[answered].append(t1 - t0)
        took["metrics"].append(timed(metrics_get)[0])
        time.sleep(0.5)
    summary = {
        name: {"p50_ms": pct(t, 0.5) * 1e3, "p90_ms": pct(t, 0.9) * 1e3, "max_ms": max(t) * 1e3}
        for name, t in took.items()
        if t
    }
    for name, q in summary.items():
        print(f"  {name} x{rounds}: p50 {q['p50_ms']:.0f} ms, p90 {q['p90_ms']:.0f} ms, max {q['max_ms']:.0f} ms")
    return summary


def churn(a: argparse.Namespace, work: Path, out: dict[str, Any], deadline: float) -> None:
    """Rules added one by one, the queries at the full table, every rule removed: into `out`."""
    n = a.rules
    tenth = max(1, n // 10)
    relay = Relay(a, work)
    try:
        relay.wait_ready(60)
        time.sleep(0.5)
        base_sup, base_wrk = relay.rss()
        out["base_rss_kb"] = {"supervisor": base_sup, "worker": base_wrk}
        adds: list[float] = []
        curve: list[dict[str, Any]] = []
        meter = CpuMeter(relay, "adds", a.py_spy)
        t_start = time.perf_counter()
        probing = 0.0  # time spent on the checkpoints' queries, not counted as adding
        for i in range(n):
            if time.monotonic() > deadline:
                raise TimeoutError("--max-minutes reached while adding")
            dt, resp = timed(relay.call, {"AddRule": rule_doc(i)})
            if "Success" not in resp:
                raise RuntimeError(f"AddRule r{i}: {resp}")
            adds.append(dt)
            if (i + 1) % tenth == 0 or i + 1 == n:
                t_probe, c_probe = time.perf_counter(), cpu_s(relay.proc.pid)
                t_list, rules = timed(relay.call, "ListRules")
                state = next(r["state"] for r in rules["Rules"] if r["rule_id"] == f"r{i}")
                t_stats, _ = timed(relay.call, "GetStats")
                t_metrics, _ = timed(metrics_get)
                sup, wrk = relay.rss()
                window = adds[-tenth:]
                curve.append({
                    "table": i + 1, "add_p50_ms": pct(window, 0.5) * 1e3, "add_p99_ms": pct(window, 0.99) * 1e3,
                    "add_max_ms": max(window) * 1e3, "last_state_at_success": state,
                    "list_ms": t_list * 1e3, "stats_ms": t_stats * 1e3, "metrics_ms": t_metrics * 1e3,
                    "supervisor_rss_kb": sup, "worker_rss_kb": wrk,
                })  # fmt: skip
                c = curve[-1]
                print(
                    f"  {i + 1:6d} rules: add p50 {c['add_p50_ms']:.1f} ms p99 {c['add_p99_ms']:.1f} ms; "
                    f"list {c['list_ms']:.0f} ms, stats {c['stats_ms']:.0f} ms, metrics {c['metrics_ms']:.0f} ms; "
                    f"rss sup {sup} kB worker {wrk} kB",
                    flush=True,
                )
                probing += time.perf_counter() - t_probe
                meter.pause(cpu_s(relay.proc.pid) - c_probe)
        out["add_total_s"] = time.perf_counter() - t_start - probing
        out["add_cpu_ms"] = meter.per_op_ms(n)
        out["add_sum_s"] = sum(adds)
        out["adds_per_s"] = n / out["add_total_s"]
        out["add_p50_ms"] = pct(adds, 0.5) * 1e3
        out["add_p99_ms"] = pct(adds, 0.99) * 1e3
        out["curve"] = curve
        out["queries"] = repeated_queries(relay, a.query_rounds)
        time.sleep(1.0)
        sup, wrk = relay.rss()
        out["rss_kb"] = {"supervisor": sup, "worker": wrk}
        out["per_rule_bytes"] = {"supervisor": (sup - base_sup) * 1024 / n, "worker": (wrk - base_wrk) * 1024 / n}
        # and once the supervisor has been quiet a while: it gives the heap's free pages back then (heap.py)
        time.sleep(SETTLED_S - 1.0)
        sup, wrk = relay.rss()
        out["settled_per_rule_bytes"] = {"supervisor": (sup - base_sup) * 1024 / n}
        # removal, newest first, of every rule
        removes: list[float] = []
        rcurve: list[dict[str, Any]] = []
        meter = CpuMeter(relay, "removes", a.py_spy)
        t_start = time.perf_counter()
        for i in reversed(range(n)):
            if time.monotonic() > deadline:
                raise TimeoutError("--max-minutes reached while removing")
            dt, resp = timed(relay.call, {"RemoveRule": {"rule_id": f"r{i}"}})
            if "Success" not in resp:
                raise RuntimeError(f"RemoveRule r{i}: {resp}")
            removes.append(dt)
            if len(removes) % tenth == 0:
                w = removes[-tenth:]
                rcurve.append({"table": i, "p50_ms": pct(w, 0.5) * 1e3, "p99_ms": pct(w, 0.99) * 1e3})
        out["remove_total_s"] = time.perf_counter() - t_start
        out["remove_cpu_ms"] = meter.per_op_ms(n)
        out["remove_p50_ms"] = pct(removes, 0.5) * 1e3
        out["remove_p99_ms"] = pct(removes, 0.99) * 1e3
        out["remove_curve"] = rcurve
        print(f"  removed {n}: {out['remove_total_s']:.1f} s, p99 {out['remove_p99_ms']:.1f} ms", flush=True)
    finally:
        relay.stop()


def run_inner(a: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + a.max_minutes * 60
    n = a.rules
    out: dict[str, Any] = {"rules": n, "engine": a.engine, "workers": a.workers, "label": a.label}
    with tempfile.TemporaryDirectory(prefix="mcr-scale-") as tmp:
        work = Path(tmp)
        out["reference_ms"] = [reference_ms()]
        if not a.config_only:
            churn(a, work, out, deadline)
        if time.monotonic() > deadline:
            return out
        # the same rules from a config file, then a reload that changes 1% of them
        config = work / "mcr.toml"
        header = f"[limits]\nmax_rules = {max(n, 1000)}\nmax_total_outputs = {max(4 * n, 10_000)}\n\n"
        config.write_text(header + "\n".join(toml_rule(rule_doc(i)) for i in range(n)))
        (work / "state.json").unlink(missing_ok=True)
        relay = Relay(a, work, config)
        spy = spy_on(relay.proc.pid, a.py_spy / "config-processes.txt", children=True) if a.py_spy else None
        try:
            out["config_ready_s"] = relay.wait_ready(120)
            out["config_cpu_s"] = cpu_s(relay.proc.pid)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            out["config_active_s"] = out["config_ready_s"] + wait_all_active(relay, n, 120)
            print(f"  config load: READY {out['config_ready_s']:.2f} s, all active {out['config_active_s']:.2f} s")
            step = 100
            changed = {f"r{i}": 6001 for i in range(0, n, step)}
            config.write_text(header + "\n".join(toml_rule(rule_doc(i, 1 if i % step == 0 else 0)) for i in range(n)))
            t0 = time.perf_counter()
            relay.proc.send_signal(signal.SIGHUP)
            left_active = 0
            while True:
                rules = relay.call("ListRules")["Rules"]
                left_active += sum(1 for r in rules if r["rule_id"] not in changed and r["state"] != "active")
                ports = {r["rule_id"]: (r["outputs"][0]["port"], r["state"]) for r in rules}
                if all(ports.get(k) == (v, "active") for k, v in changed.items()):
                    break
                if time.perf_counter() - t0 > 60:
                    raise TimeoutError("reload not applied within 60 s")
            out["reload_1pct_s"] = time.perf_counter() - t0
            out["reload_changed"] = len(changed)
            out["reload_unchanged_not_active_samples"] = left_active
            print(f"  reload of {len(changed)} rules: {out['reload_1pct_s']:.2f} s (incl. ListRules polling); "
                  f"unchanged rules seen not active: {left_active}")  # fmt: skip
        finally:
            relay.stop()
    out["reference_ms"].append(reference_ms())
    return out


# --------------------------------------------------------------------------------------- memory only


def snapshot_top(trace: Path, pid: int, before: int, after: int, limit: int, frames: int) -> list[dict[str, Any]]:
    """The source lines whose live allocations grew most between two snapshots of one process."""
    old = tracemalloc.Snapshot.load(str(trace / f"{pid}-{before}.snap"))
    new = tracemalloc.Snapshot.load(str(trace / f"{pid}-{after}.snap"))
    stats = new.compare_to(old, "traceback" if frames > 1 else "lineno")
    rows = []
    for st in stats[:limit]:
        where = " < ".join(f"{_short(f.filename)}:{f.lineno}" for f in st.traceback)
        rows.append({"where": where, "bytes": st.size_diff, "blocks": st.count_diff})
    total = sum(st.size_diff for st in stats)
    rows.append({"where": "(all lines)", "bytes": total, "blocks": sum(st.count_diff for st in stats)})
    return rows


def _short(filename: str) -> str:
    for marker in ("/src/mcr/", "/lib/python"):
        if marker in filename:
            return filename[filename.index(marker) + 1 :]
    return filename


def run_memory(a: argparse.Namespace) -> dict[str, Any]:
    """RSS per rule of the supervisor and its worker at each of `--memory-points` rules (added one by one)."""
    deadline = time.monotonic() + a.max_minutes * 60
    points = sorted(a.memory_points)
    out: dict[str, Any] = {"mode": "memory", "engine": a.engine, "workers": a.workers, "label": a.label,
                           "rules": points[-1], "traced": a.trace, "points": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mcr-scale-") as tmp:
        work = Path(tmp)
        trace = None
        if a.trace:  # the worker writes its snapshots after dropping its privileges: a directory it can reach
            trace = Path(tempfile.mkdtemp(prefix="mcr-memtrace-"))
            trace.chmod(0o777)
        relay = Relay(a, work, trace=trace)
        try:
            relay.wait_ready(60)
            time.sleep(1.0)
            pids = {"supervisor": relay.proc.pid, "worker": relay.worker_pids()[0]}
            snaps = 0

            def settle_and_measure() -> dict[str, int]:
                nonlocal snaps
                time.sleep(a.settle)  # the worker's first report, the rate tick and a periodic collection
                rss = {name: rss_kb(pid) for name, pid in pids.items()}
                rss["worker_ring"] = ring_kb(pids["worker"])
                rss["worker_heap"] = rss["worker"] - rss["worker_ring"]
                rss.update({f"supervisor_{k}": v for k, v in rss_kinds_kb(pids["supervisor"]).items()})
                if trace is not None:
                    snaps += 1
                    for pid in pids.values():
                        os.kill(pid, signal.SIGUSR2)
                    files = [trace / f"{pid}-{snaps}.snap" for pid in pids.values()]
                    t0 = time.monotonic()
                    while not all(f.exists() for f in files) and time.monotonic() - t0 < 60:
                        time.sleep(0.2)
                    time.sleep(0.5)  # the dump is complete when its size stops changing; be generous
                return rss

            base = settle_and_measure()
            out["base_rss_kb"] = base
            print(f"  no rules: supervisor {base['supervisor']} kB, worker {base['worker']} kB "
                  f"(capture rings {base['worker_ring']} kB)", flush=True)  # fmt: skip
            added = 0
            for n in points:
                for i in range(added, n):
                    if time.monotonic() > deadline:
                        raise TimeoutError("--max-minutes reached while adding")
                    resp = relay.call({"AddRule": rule_doc(i)})
                    if "Success" not in resp:
                        raise RuntimeError(f"AddRule r{i}: {resp}")
                added = n
                wait_all_active(relay, n, 120)
                rss = settle_and_measure()
                point: dict[str, Any] = {"rules": n, "rss_kb": rss}
                point["per_rule_bytes"] = {k: (rss[k] - base[k]) * 1024 / n for k in rss}
                if trace is not None:
                    point["top"] = {
                        k: snapshot_top(trace, pid, 1, snaps, a.trace_lines, a.trace_frames) for k, pid in pids.items()
                    }
                out["points"].append(point)
                p = point["per_rule_bytes"]
                print(f"  {n:6d} rules: supervisor {rss['supervisor']} kB ({p['supervisor'] / 1024:.2f} kB/rule), "
                      f"worker {rss['worker']} kB ({p['worker'] / 1024:.2f} kB/rule; capture rings "
                      f"{rss['worker_ring']} kB, without them {p['worker_heap'] / 1024:.2f} kB/rule)",
                      flush=True)  # fmt: skip
            if a.memory_queries:  # then as an operator's polling would: what the answers leave behind
                for _ in range(a.memory_queries):
                    for query in ANSWERED:
                        json.loads(exchange_raw(relay.sock, query))
                    metrics_get()
                    time.sleep(0.5)
                time.sleep(SETTLED_S)  # past the supervisor's quiet period, when it gives free heap pages back
                rss = settle_and_measure()
                n = points[-1]
                point = {"rules": n, "after_queries": a.memory_queries, "rss_kb": rss}
                point["per_rule_bytes"] = {k: (rss[k] - base[k]) * 1024 / n for k in rss}
                if trace is not None:
                    point["top"] = {
                        k: snapshot_top(trace, pid, 1, snaps, a.trace_lines, a.trace_frames) for k, pid in pids.items()
                    }
                out["points"].append(point)
                print(f"  {n:6d} rules after {a.memory_queries} rounds of queries: supervisor {rss['supervisor']} kB "
                      f"({point['per_rule_bytes']['supervisor'] / 1024:.2f} kB/rule)", flush=True)  # fmt: skip
            for pt in [{"rules": 0, "rss_kb": base}, *out["points"]]:
                kinds = ", ".join(f"{k} {pt['rss_kb'][f'supervisor_{k}']}" for k in ("heap", "anon", "file", "other"))
                print(f"  supervisor at {pt['rules']} rules{' after the queries' * ('after_queries' in pt)}: "
                      f"{kinds} kB", flush=True)  # fmt: skip
        finally:
            relay.stop()
            if trace is not None:
                shutil.rmtree(trace, ignore_errors=True)
    return out


def render_memory(doc: dict[str, Any]) -> str:
    base = doc["base_rss_kb"]
    lines = [
        f"# Memory run `{doc['label']}`: engine {doc['engine']}, {doc['workers']} worker(s)"
        + (" (traced: RSS inflated by tracemalloc)" if doc.get("traced") else ""),
        "",
        f"Measured {doc.get('when', '')} on {doc.get('host', '')}, commit {doc.get('commit', '')}. Rules as in the "
        "scale run (IPv4 and IPv6 alternating, 1-4 outputs, 2.5 on average), added one by one over the socket; "
        "RSS (`VmRSS`) once every rule is active and a few seconds passed. The worker's capture ring (one per "
        "input interface, 32 MiB, resident as soon as the first rule on that interface opens it) is shown apart: "
        "it does not grow with the rules.",
        "",
        "| rules | supervisor RSS (kB) | supervisor kB/rule | worker RSS (kB) | of it capture rings (kB) | "
        "worker kB/rule | worker kB/rule without the rings |",
        "|---|---|---|---|---|---|---|",
        f"| 0 | {base['supervisor']} | | {base['worker']} | {base['worker_ring']} | | |",
    ]
    for pt in doc["points"]:
        r, p = pt["rss_kb"], pt["per_rule_bytes"]
        rules = f"{pt['rules']} after {pt['after_queries']} rounds of queries" if "after_queries" in pt else pt["rules"]
        lines.append(
            f"| {rules} | {r['supervisor']} | {p['supervisor'] / 1024:.2f} | {r['worker']} | "
            f"{r['worker_ring']} | {p['worker'] / 1024:.2f} | {p['worker_heap'] / 1024:.2f} |"
        )
    for pt in doc["points"]:
        for proc, rows in pt.get("top", {}).items():
            when = f"{pt['rules']} rules" + (" after the queries" if "after_queries" in pt else "")
            lines += ["", f"Live Python allocations of the {proc} grown at {when} (tracemalloc, "
                      "by line):", "", "| where | bytes/rule | blocks/rule |", "|---|---|---|"]  # fmt: skip
            lines += [
                f"| `{row['where']}` | {row['bytes'] / pt['rules']:.0f} | {row['blocks'] / pt['rules']:.1f} |"
                for row in rows
            ]
    return "\n".join(lines) + "\n"


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"# Scale run `{doc['label']}`: {doc['rules']} rules, engine {doc['engine']}, {doc['workers']} worker(s)",
        "",
        f"Measured {doc.get('when', '')} on {doc.get('host', '')}, commit {doc.get('commit', '')}."
        + (
            " The machine's speed, a fixed Python workload at the start and the end: "
            + " / ".join(f"{t:.0f}" for t in doc["reference_ms"])
            + " ms."
            if "reference_ms" in doc
            else ""
        ),
        "",
        "| measure | value |",
        "|---|---|",
    ]

    def row(name: str, key: str, fmt: str) -> None:
        if key in doc:
            lines.append(f"| {name} | {format(doc[key], fmt)} |")

    row("adds, total (s; without the checkpoint queries)", "add_total_s", ".1f")
    row("sum of the add round trips (s)", "add_sum_s", ".1f")
    row("adds per second", "adds_per_s", ".0f")
    row("add p50 / all (ms)", "add_p50_ms", ".2f")
    row("add p99 / all (ms)", "add_p99_ms", ".2f")
    row("removes, total (s)", "remove_total_s", ".1f")
    row("remove p99 (ms)", "remove_p99_ms", ".2f")
    for phase in ("add", "remove"):
        if f"{phase}_cpu_ms" in doc:
            c = doc[f"{phase}_cpu_ms"]
            lines.append(f"| CPU per {phase}: supervisor / workers / client (ms; of it in the kernel) | "
                         f"{c['supervisor']:.2f} ({c.get('supervisor_system', 0):.2f}) / {c['workers']:.2f} "
                         f"({c.get('workers_system', 0):.2f}) / {c['client']:.2f} |")  # fmt: skip
    row("config load to READY (s)", "config_ready_s", ".2f")
    row("config load to all active (s)", "config_active_s", ".2f")
    row("supervisor CPU until READY (s)", "config_cpu_s", ".2f")
    row("SIGHUP reload of 1% until active (s)", "reload_1pct_s", ".2f")
    row("unchanged rules seen not active during the reload", "reload_unchanged_not_active_samples", "d")
    if "per_rule_bytes" in doc:
        p = doc["per_rule_bytes"]
        lines.append(f"| supervisor RSS per rule, 1 s after the queries (bytes) | {p['supervisor']:.0f} |")
        if "settled_per_rule_bytes" in doc:
            settled = doc["settled_per_rule_bytes"]["supervisor"]
            lines.append(f"| supervisor RSS per rule, {SETTLED_S:.0f} s after them (bytes) | {settled:.0f} |")
        lines.append(f"| worker RSS per rule (bytes) | {p['worker']:.0f} |")
    if doc.get("curve"):
        lines += [
            "",
            "| rules | add p50 (ms) | add p99 (ms) | add max (ms) | ListRules (ms) | GetStats (ms) | metrics (ms) |"
            " supervisor RSS (kB) | worker RSS (kB) | state at Success |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for c in doc.get("curve", []):
        lines.append(
            f"| {c['table']} | {c['add_p50_ms']:.2f} | {c['add_p99_ms']:.2f} | {c['add_max_ms']:.1f} | "
            f"{c['list_ms']:.0f} | {c['stats_ms']:.0f} | {c['metrics_ms']:.0f} | {c['supervisor_rss_kb']} | "
            f"{c['worker_rss_kb']} | {c['last_state_at_success']} |"
        )
    if doc.get("queries"):
        lines += ["", f"Queries at {doc['rules']} rules, repeated 0.5 s apart:", "",
                  "| query | p50 (ms) | p90 (ms) | max (ms) |", "|---|---|---|---|"]  # fmt: skip
        for name, q in doc["queries"].items():
            lines.append(f"| {name} | {q['p50_ms']:.0f} | {q['p90_ms']:.0f} | {q['max_ms']:.0f} |")
    if doc.get("remove_curve"):
        lines += ["", "| rules left | remove p50 (ms) | remove p99 (ms) |", "|---|---|---|"]
        lines += [f"| {c['table']} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} |" for c in doc["remove_curve"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rules", type=int, default=10_000)
    p.add_argument("--engine", default="userspace", choices=("userspace", "kernel", "auto"))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--label", default=None)
    p.add_argument("--max-minutes", type=float, default=10.0)
    p.add_argument("--query-rounds", type=int, default=40, help="each query this many times at the full table")
    p.add_argument("--config-only", action="store_true", help="only the config file's start and its reload")
    p.add_argument("--memory", action="store_true", help="measure RSS per rule only (see above)")
    p.add_argument("--memory-points", type=lambda t: [int(x) for x in t.split(",")], default=[1000, 10_000],
                   help="rule counts at which --memory measures (default 1000,10000)")  # fmt: skip
    p.add_argument("--settle", type=float, default=5.0, help="--memory: seconds to wait before each measurement")
    p.add_argument(
        "--memory-queries",
        type=int,
        default=0,
        help="--memory: then this many rounds of ListRules, GetStats and a scrape, and measure again",
    )
    p.add_argument("--trace", action="store_true", help="--memory: tracemalloc snapshots, the lines that grew")
    p.add_argument("--trace-lines", type=int, default=15, help="--trace: how many lines to list per process")
    p.add_argument("--trace-frames", type=int, default=1, help="--trace: frames per allocation (1: by line)")
    p.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="keep the supervisor's log (at level info) here; print each poll for active rules",
    )
    p.add_argument("--py-spy", type=Path, default=None, help="record the processes' samples into this folder")
    p.add_argument("--inner", default=None, help=argparse.SUPPRESS)  # the JSON file to write, inside the namespace
    a = p.parse_args()
    if a.memory:
        a.rules = max(a.memory_points)
    a.label = a.label or ("memory-" if a.memory else "") + f"{a.engine}-{a.rules}" + ("-traced" if a.trace else "")
    if a.inner:
        doc = run_memory(a) if a.memory else run_inner(a)
        Path(a.inner).write_text(json.dumps(doc))
        return 0
    if os.geteuid() != 0:
        print("scale.py needs root (it builds a network namespace)", file=sys.stderr)
        return 2
    # the modules compiled, as an installed package has them: where PYTHONDONTWRITEBYTECODE is set, every start
    # of the supervisor compiled them all again (about 0.4 s of the config file's time to READY here)
    compileall.compile_dir(REPO / "src", quiet=1)
    ns = f"mcrscale{os.getpid()}"
    result = Path(tempfile.mkstemp(prefix="mcr-scale-", suffix=".json")[1])
    try:
        build_namespace(ns)
        argv = [sys.executable, str(Path(__file__).resolve()), "--inner", str(result), "--rules", str(a.rules),
                "--engine", a.engine, "--workers", str(a.workers), "--label", a.label,
                "--max-minutes", str(a.max_minutes), "--settle", str(a.settle),
                "--trace-lines", str(a.trace_lines), "--trace-frames", str(a.trace_frames),
                "--memory-points", ",".join(map(str, a.memory_points)),
                "--query-rounds", str(a.query_rounds), "--memory-queries", str(a.memory_queries)]  # fmt: skip
        argv += ["--memory"] * a.memory + ["--trace"] * a.trace + ["--config-only"] * a.config_only
        argv += ["--py-spy", str(a.py_spy.resolve())] if a.py_spy else []
        argv += ["--log-dir", str(a.log_dir.resolve())] if a.log_dir else []
        subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, timeout=a.max_minutes * 60 + 120)
        doc = json.loads(result.read_text())
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        result.unlink(missing_ok=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    doc["commit"] = commit.stdout.strip()
    doc["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    doc["host"] = f"{os.cpu_count()} CPUs, Linux {os.uname().release}"
    stem = REPO / "bench" / "results" / f"scale-{a.label}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    text = render_memory(doc) if a.memory else render(doc)
    stem.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
