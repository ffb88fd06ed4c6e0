"""One measured step (a fresh sink, one generator run, CPU and counters around it) and a path's rate ladder."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import probe
from netlab import SENDER_CPU
from paths import BenchPath, Context, counter_delta

LOSSLESS_PCT = 0.1  # "lossless" means less than 0.1 % loss
COLLAPSE = 0.5  # stop climbing after two steps that deliver less than half of what was offered
SENDER_TTL = 2  # every path gets the same sender; kernel multicast routing needs TTL >= 2 to forward
IDLE_TIMEOUT_S = 1.0
MCR_STATS_FRESH_S = 0.6  # MCR workers push counters every 0.5 s


class BudgetExceeded(Exception):
    pass


@dataclass
class Budget:
    deadline: float

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetExceeded("time budget (--max-minutes) exhausted")


Step = dict[str, Any]
Log = Callable[[str], None]


def _json_line(text: bytes) -> dict[str, Any]:
    for line in reversed(text.decode(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ValueError(f"no JSON in {text[-500:]!r}")


class StepRunner:
    def __init__(self, ctx: Context, budget: Budget, log: Log) -> None:
        self.ctx = ctx
        self.budget = budget
        self.log = log
        self.steps: list[Step] = []
        self._seq = 0
        self.quiet_cpus = 0.15
        self.quiet_wait_s = 20.0
        self.before_step: Callable[[], None] = lambda: None
        self.traffic_started: Callable[[], None] = lambda: None  # called once the generator runs (e.g. perf)

    def settle(self, path: BenchPath, quiet_s: float = 0.4, bound_s: float = 30.0) -> tuple[float, int]:
        """Wait until the sink's interface has received nothing for `quiet_s` (a relay may still be draining the
        previous step's backlog); returns (seconds waited, packets that arrived meanwhile)."""
        start = time.monotonic()
        first = last = _rx_packets(self.ctx, path)
        while time.monotonic() - start < bound_s:
            time.sleep(quiet_s)
            now = _rx_packets(self.ctx, path)
            if now == last:
                break
            last = now
        return round(time.monotonic() - start, 2), last - first

    def wait_quiet(self) -> dict[str, float]:
        """Between steps the benchmark itself is idle, so CPU use now is someone else's (a shared machine):
        wait up to `quiet_wait_s` for it to drop below `quiet_cpus` CPUs' worth, so that steps start clean."""
        start = time.monotonic()
        busy = 0.0
        while True:
            a = probe.cpu_lines()["cpu"]
            time.sleep(0.5)
            b = probe.cpu_lines()["cpu"]
            total = (b.total - a.total) or 1
            busy = (b.busy - a.busy) / total * (os.cpu_count() or 1)
            waited = time.monotonic() - start
            if busy <= self.quiet_cpus or waited >= self.quiet_wait_s:
                return {"waited_s": round(waited, 1), "busy_cpus": round(busy, 2)}

    def run(self, path: BenchPath, *, size: int, rate: int, seconds: float, label: str) -> Step:
        """Offer `rate` pps (0 = as fast as the sender can) of `size`-byte payloads for about `seconds`."""
        self.before_step()
        self.budget.check()
        ctx, lab = self.ctx, self.ctx.lab
        self._seq += 1
        outputs = path.outputs
        count = int(rate * seconds) if rate else 0
        gen_bound = seconds * 1.5 + 2 if rate else seconds
        expect = count * outputs if count else None
        ready = ctx.workdir / f"sink-{self._seq}.ready"
        sink_argv = ctx.mcr(
            "sink",
            "--group",
            path.sink_group,
            "--port",
            ",".join(str(p) for p in path.sink_ports()),
            "--interface",
            path.sink_interface,
            "--idle-timeout",
            str(IDLE_TIMEOUT_S),
            "--duration",
            str(round(gen_bound + 10, 1)),
            "--ready-file",
            str(ready),
            "--quiet",
            "--json",
        )
        if expect:
            sink_argv += ["--expect", str(expect)]
        gen_argv = ctx.mcr(
            "generate",
            "--group",
            path.sender_group,
            "--port",
            "5001",
            "--interface",
            path.sender_ip,
            "--rate",
            str(rate),
            "--size",
            str(size),
            "--ttl",
            str(SENDER_TTL),
            "--quiet",
            "--json",
        )
        if ctx.sender != "udp":
            gen_argv += ["--raw", path.sender_interface, "--raw-mode", "ring" if ctx.sender == "ring" else "mmsg"]
        if path.sender_flows > 1:
            if ctx.sender != "raw":
                raise RuntimeError(f"{path.key}: many flows need --sender raw")
            gen_argv += ["--flows", str(path.sender_flows)]
        if count:
            gen_argv += ["--count", str(count), "--duration", str(round(gen_bound, 1))]
        else:
            gen_argv += ["--duration", str(seconds)]

        step: Step = {
            "path": path.key,
            "size": size,
            "outputs": outputs,
            "label": label,
            "target_pps": rate,
            "seconds": seconds,
        }
        settle_s, settle_pkts = self.settle(path)
        step["settle"] = {"seconds": settle_s, "packets": settle_pkts}
        step["quiet"] = self.wait_quiet()
        sink = ctx.procs.spawn(lab.argv(lab.sink, sink_argv, cpu=SENDER_CPU), ctx.env)
        gen: subprocess.Popen[bytes] | None = None
        try:
            deadline = time.monotonic() + 20
            while not ready.exists():
                if sink.poll() is not None or time.monotonic() > deadline:
                    err = sink.communicate(timeout=5)[1].decode(errors="replace")
                    raise RuntimeError(f"sink did not start: {err[-1000:]}")
                time.sleep(0.02)
            snmp0 = probe.parse_snmp_udp(lab.read(lab.sink, "/proc/net/snmp"))
            c0 = path.counters()
            roots = path.roots()
            s0 = probe.sample(roots)
            gen = ctx.procs.spawn(lab.argv(lab.src, gen_argv, cpu=SENDER_CPU), ctx.env)
            self.traffic_started()
            gen_out, gen_err = gen.communicate(timeout=gen_bound + 20)
            sink_out, _sink_err = sink.communicate(timeout=gen_bound + 30)
            s1 = probe.sample(roots)
            time.sleep(MCR_STATS_FRESH_S if roots and path.key.startswith("mcr") else 0.0)
            c1 = path.counters()
            snmp1 = probe.parse_snmp_udp(lab.read(lab.sink, "/proc/net/snmp"))
            if gen.returncode != 0:
                raise RuntimeError(f"generator failed ({gen.returncode}): {gen_err.decode(errors='replace')[-1000:]}")
            g = _json_line(gen_out)
            k = _json_line(sink_out)
        except BaseException as exc:
            for proc in (gen, sink):
                if proc is not None:
                    ctx.procs.stop(proc, grace=2.0)
            if not isinstance(exc, Exception):
                raise  # Ctrl-C, a signal, SystemExit: not a failed step
            step["error"] = f"{type(exc).__name__}: {exc}"
            self.steps.append(step)
            self.log(f"  {path.key:9} {size:5}B {label:9} target {rate:>7} pps: ERROR {step['error']}")
            return step
        finally:
            for proc in (gen, sink):
                if proc is not None:
                    ctx.procs.forget(proc)
            ready.unlink(missing_ok=True)

        mine = {os.getpid(), sink.pid, gen.pid}
        cpu = probe.cpu_delta(s0, s1, relay_cpu=1, mine=mine)
        sent = int(g["sent"])
        expected = sent * outputs
        # only this generator run counts: a relay may still deliver an earlier step's backlog
        runs = [r for st in k.get("streams", []) for r in st.get("runs", [])]
        unique = sum(int(r["unique"]) for r in runs if r["run_id"] == g["run_id"])
        other_runs = sum(int(r["unique"]) for r in runs if r["run_id"] != g["run_id"])
        delivered = unique
        lost = max(0, expected - unique)
        span_ns = (k["last_arrival_ns"] or 0) - (k["first_arrival_ns"] or 0)
        span = max(float(g["elapsed_s"]), span_ns / 1e9)
        relay_s = cpu["relay_proc_s"]
        soft_s = cpu["relay_cpu_softirq_s"]
        step.update(
            {
                "sent": sent,
                "gen_errors": g["errors"],
                "gen_elapsed_s": g["elapsed_s"],
                "offered_pps": float(g["pps"]),
                "expected": expected,
                "received": int(k["received"]),
                "delivered": delivered,
                "lost": lost,
                "loss_pct": round(100.0 * lost / expected, 4) if expected else None,
                "duplicated": k["duplicated"],
                "reordered": k["reordered"],
                "corrupted": k["corrupted"],
                "unnumbered": k["unnumbered"],
                "other_runs": other_runs,
                "delivered_pps": round(unique / span, 1) if span > 0 else 0.0,
                "sink_stop": k.get("stop_reason"),
                "latency_us": k["latency_us"],
                "cpu": cpu,
                "cpu_us_per_pkt": round((relay_s + soft_s) / unique * 1e6, 3) if unique else None,
                "proc_cpu_s_per_mpkt": round(relay_s / unique * 1e6, 3) if unique else None,
                "relay_cpu_busy_us_per_pkt": round(cpu["relay_cpu_busy_s"] / unique * 1e6, 3) if unique else None,
                "relay_cpu_util_pct": (
                    round(100 * cpu["relay_cpu_busy_s"] / cpu["wall_s"], 1) if cpu["wall_s"] else None
                ),
                "softnet": probe.softnet_delta(s0, s1),
                "sink_udp": {
                    key: snmp1.get(key, 0) - snmp0.get(key, 0) for key in ("InDatagrams", "RcvbufErrors", "InErrors")
                },
                "relay_counters": counter_delta(c0, c1),
            }
        )
        self.steps.append(step)
        lat = k["latency_us"]
        self.log(
            f"  {path.key:9} {size:5}B x{outputs:<3} {label:9} target {rate:>7} offered {step['offered_pps']:>9.0f} "
            f"delivered {step['delivered_pps']:>9.0f} pps loss {step['loss_pct']:7.3f}% "
            f"cpu {step['cpu_us_per_pkt'] if step['cpu_us_per_pkt'] is not None else '-':>7} us/pkt "
            f"lat p50/p99 {lat.get('p50')}/{lat.get('p99')} us  foreign {cpu['foreign_proc_s']:.2f}s"
            + (f"  (drained {settle_pkts} late packets in {settle_s} s first)" if settle_pkts else "")
            + (f"  (waited {step['quiet']['waited_s']} s for other load)" if step["quiet"]["waited_s"] >= 1 else "")
        )
        return step


def _rx_packets(ctx: Context, path: BenchPath) -> int:
    text = ctx.lab.read(ctx.lab.sink, f"/sys/class/net/{path.sink_interface}/statistics/rx_packets")
    return int(text.strip() or 0)


def ok(step: Step) -> bool:
    return "error" not in step


def lossless(step: Step) -> bool:
    return ok(step) and step["delivered"] > 0 and step["loss_pct"] is not None and step["loss_pct"] < LOSSLESS_PCT


def climb(
    runner: StepRunner,
    path: BenchPath,
    *,
    size: int,
    ladder: Sequence[int],
    seconds: float,
    refine: int,
    overload: bool = True,
    sender_max: bool = True,
) -> list[Step]:
    """The ladder (then as fast as the sender goes), a few bisection steps at the edge, one overload step."""
    steps: list[Step] = []
    warm = runner.run(path, size=size, rate=min(ladder[0], 5000), seconds=min(1.0, seconds), label="warmup")
    if not ok(warm) or warm["delivered"] == 0:
        raise RuntimeError(f"{path.key}: the warm-up step delivered nothing ({warm.get('error', 'no packets')})")
    bad = 0
    rates = [*ladder, 0] if sender_max else list(ladder)
    previous = 0.0
    plateau = False
    for rate in rates:
        if plateau and rate:
            continue  # the paced sender is at its plateau: only the unpaced step (rate 0) can offer more
        st = runner.run(path, size=size, rate=rate, seconds=seconds, label="ladder" if rate else "max")
        if not ok(st):
            continue
        steps.append(st)
        bad = bad + 1 if st["delivered"] < COLLAPSE * st["expected"] else 0
        if bad >= 2:
            break  # collapsed twice in a row: higher rates only repeat it
        offered = st["offered_pps"]
        if rate and offered < 0.9 * rate and offered < 1.05 * previous:
            plateau = True
        previous = max(previous, offered)
    for _ in range(refine):
        good = [s for s in steps if lossless(s)]
        if not good:
            break
        lo = max(good, key=lambda s: s["offered_pps"])
        over = [s for s in steps if not lossless(s) and s["offered_pps"] > lo["offered_pps"]]
        if not over:
            break
        hi = min(over, key=lambda s: s["offered_pps"])
        if hi["offered_pps"] - lo["offered_pps"] < 0.05 * lo["offered_pps"]:
            break
        mid = int(round((lo["offered_pps"] + hi["offered_pps"]) / 2, -2))
        st = runner.run(path, size=size, rate=mid, seconds=seconds, label="refine")
        if ok(st):
            steps.append(st)
    # Overload: offer twice the lossless rate (if the sender can) to show that the relay does not collapse.
    # If that step turns out lossless, the estimate was low: try twice the new one, once.
    for _ in range(2 if overload and path.outputs == 1 else 0):
        good = [s for s in steps if lossless(s)]
        if not good:
            break
        best = max(s["offered_pps"] for s in good)
        top = max(s["offered_pps"] for s in steps)
        target = int(round(2 * best, -2))
        if target > 1.05 * top:
            break  # beyond the sender: the summary reports the highest offered step instead
        st = runner.run(path, size=size, rate=target, seconds=seconds, label="overload")
        if not ok(st):
            break
        steps.append(st)
        if not lossless(st):
            break
    return steps
