#!/usr/bin/env python3
"""MCR benchmark: MCR side by side with socat and the kernel's own forwarding, on one topology, in one run.

    python3 bench/run.py            # full run (about 35 min on 2 cores), writes bench/results/latest.*
    python3 bench/run.py --quick    # smoke check: short ladder, 2 s steps, writes bench/results/quick.*

It builds its own network namespaces (source -> relay -> sink over veth pairs, plus a direct source -> sink
pair for the rig's ceiling), measures every path at every payload size with the same sender and sink, and
deletes exactly those namespaces at the end, also on an error or Ctrl-C. Traffic never leaves them. Every
step is bounded in packets and in time, and the whole run in time (--max-minutes). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO / "src"))  # this checkout's mcr (netlab builds on mcr.lab), as the children get it

import perfsplit  # noqa: E402
import probe  # noqa: E402
import report  # noqa: E402
from netlab import RELAY_CPU, SENDER_CPU, NetLab, sh  # noqa: E402
from paths import FLOWS_KEY, IPV6_PATH_KEYS, PATH_KEYS, BenchPath, Context, Procs, make_path  # noqa: E402
from steps import Budget, BudgetExceeded, StepRunner, climb  # noqa: E402

FULL_LADDER = (10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 70_000, 80_000, 90_000, 100_000, 120_000,
               140_000, 170_000, 200_000, 250_000, 300_000, 400_000, 500_000)  # fmt: skip
QUICK_LADDER = (10_000, 30_000, 60_000, 90_000)
FULL_FANOUT_LADDER = (10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 70_000, 80_000, 100_000, 120_000, 150_000)
QUICK_FANOUT_LADDER = (10_000, 40_000)
PROFILE_SECONDS = 12.0  # a profile step's length (perf samples all but its first and last second)
SOAK_SAMPLE_S = 30.0  # footprint sampling period during a soak
SOAK_RSS_SLACK_KB = 8192  # a soak passes with its relay processes' RSS grown by at most this (allocator noise)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def _numbers(a: argparse.Namespace) -> None:
    a.sizes = _ints(a.sizes)
    a.fanout = _ints(a.fanout if a.fanout is not None else "10,50")
    a.ladder = _ints(a.ladder) if a.ladder else list(QUICK_LADDER if a.quick else FULL_LADDER)
    default_fanout = QUICK_FANOUT_LADDER if a.quick else FULL_FANOUT_LADDER
    a.fanout_ladder = _ints(a.fanout_ladder) if a.fanout_ladder else list(default_fanout)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="short ladder, 2 s steps, 5 s soak: a smoke check")
    p.add_argument(
        "--paths",
        default=",".join(PATH_KEYS),
        help=f"comma list (default {','.join(PATH_KEYS)}; IPv6: {','.join(IPV6_PATH_KEYS)}, mcrNv6; "
        "F flows at once: mcrNxF, mcrkxF)",
    )
    p.add_argument("--sizes", default="64,1400", help="UDP payload sizes in bytes (default 64,1400)")
    p.add_argument("--step-seconds", type=float, help="seconds per ladder step (default 5, quick 2)")
    p.add_argument("--soak-seconds", type=float, help="soak duration, 0 = no soak (default 60, quick 5)")
    p.add_argument(
        "--soak-load",
        type=float,
        default=0.5,
        help="soak rate as a fraction of the lossless rate just measured (default 0.5; the hardening soak: 0.9)",
    )
    p.add_argument("--fanout", help="fan-out output counts, '' = none (default 10,50)")
    p.add_argument("--fanout-paths", default="mcr1,mcrk", help="paths measured with fan-out (default mcr1,mcrk)")
    p.add_argument("--ladder", help="offered rates in pps, comma list (the sender's maximum is always added)")
    p.add_argument("--fanout-ladder", help="fan-out output rates in pps (input = rate / outputs)")
    p.add_argument("--refine", type=int, help="bisection steps at the loss edge (default 2, quick 0)")
    p.add_argument("--latency-rate", type=int, default=10_000, help="rate at which latency is compared (pps)")
    p.add_argument("--max-minutes", type=float, help="bound on the whole run (default 120, quick 20)")
    p.add_argument("--name", help="result file names: <name>.json/.md/-SIZE.png (default latest, quick: quick)")
    p.add_argument("--results-dir", type=Path, default=HERE / "results")
    p.add_argument("--no-docs", action="store_true", help="do not refresh the table in docs/benchmarks.md")
    p.add_argument(
        "--nice",
        type=int,
        default=-20,
        help="niceness of sender, sink and relays (default -20, so that other load on a shared machine yields)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="before each step, wait up to this many seconds for other load to drop below 0.15 CPU (default 20)",
    )
    p.add_argument(
        "--sender",
        choices=("raw", "ring", "udp"),
        default="raw",
        help="raw: the generator sends prebuilt frames on an AF_PACKET socket with sendmmsg (default, about 2x "
        "the rate of udp); ring: the same frames through a PACKET_TX_RING; udp: through its UDP socket",
    )
    p.add_argument(
        "--profile",
        type=int,
        metavar="PPS",
        help="after each path's ladder, one more step with `perf record` on the relay's CPU, at PPS "
        "(0 = the path's own lossless rate): where the relay's CPU time goes, per packet",
    )
    p.add_argument(
        "--leave-kthreads",
        action="store_true",
        help="do not keep DAMON's kdamond kernel threads off the relay's CPU while measuring (by default they "
        "move to the other CPUs and get their own affinity back at the end)",
    )
    p.add_argument(
        "--supervisor-cpu",
        type=int,
        choices=(0, 1),
        help="run MCR's supervisor on this CPU and pin its workers to the relay's CPU 1 with --worker-cpus, as an "
        "operator keeps the control work off the data plane's CPU (default: supervisor and workers on CPU 1)",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and sockets (temporary directory)")
    a = p.parse_args(argv)
    try:
        _numbers(a)
    except ValueError as exc:
        p.error(f"not a comma list of numbers: {exc}")
    a.paths = [x.strip() for x in a.paths.split(",") if x.strip()]
    a.fanout_paths = [x.strip() for x in a.fanout_paths.split(",") if x.strip()]
    a.step_seconds = a.step_seconds or (2.0 if a.quick else 5.0)
    a.soak_seconds = a.soak_seconds if a.soak_seconds is not None else (5.0 if a.quick else 60.0)
    a.refine = a.refine if a.refine is not None else (0 if a.quick else 2)
    a.max_minutes = a.max_minutes or (20.0 if a.quick else 120.0)
    a.name = a.name or ("quick" if a.quick else "latest")
    if a.latency_rate not in a.ladder:
        a.ladder = sorted({*a.ladder, a.latency_rate})
    for key in {*a.paths, *a.fanout_paths}:
        if (
            key not in PATH_KEYS + IPV6_PATH_KEYS
            and not re.fullmatch(r"mcr\d+(v6)?", key)
            and not FLOWS_KEY.fullmatch(key)
        ):
            p.error(f"unknown path {key!r}")
    for key in a.fanout_paths:
        if not key.startswith("mcr"):
            p.error(f"fan-out needs a path that can fan out (mcrN), not {key!r}")
    if not a.sizes or any(not 32 <= s <= 1472 for s in a.sizes):
        p.error("--sizes must be 32..1472 bytes (numbered payloads that fit a 1500-byte MTU)")
    return a


def preflight(args: argparse.Namespace) -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("run it as root: it builds network namespaces")
    online = os.sched_getaffinity(0)
    if not {SENDER_CPU, RELAY_CPU} <= online:
        problems.append(f"needs CPUs {SENDER_CPU} and {RELAY_CPU} (have {sorted(online)})")
    need = {"ip", "ethtool", "taskset"}
    if "socat" in args.paths:
        need.add("socat")
    if "nft" in args.paths:
        need.add("nft")
    if "smcroute" in args.paths:
        need.add("smcrouted")
    for tool in sorted(need):
        if shutil.which(tool) is None:
            problems.append(f"missing {tool} (apt-get install socat nftables smcroute ethtool iproute2 util-linux)")
    return problems


class Interrupted(BaseException):
    pass


STOP: list[str] = []


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    STOP.append(signal.Signals(signum).name)  # also checked before every step, in case the raise is swallowed
    raise Interrupted(f"signal {signal.Signals(signum).name}")


def _check_stop() -> None:
    if STOP:
        raise Interrupted(f"signal {STOP[0]}")


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problems = preflight(args)
    if problems:
        for msg in problems:
            print(f"bench: {msg}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    os.sched_setaffinity(0, {SENDER_CPU})  # the harness, and what it spawns unpinned, stays off the relay's CPU

    def log(msg: str) -> None:
        print(msg, flush=True)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO / "src"), env.get("PYTHONPATH", "")) if x)
    workdir = Path(tempfile.mkdtemp(prefix="mcr-bench-"))
    os.chmod(workdir, 0o755)
    lab = NetLab(nice=args.nice)
    procs = Procs(nice=args.nice)
    ctx = Context(
        lab=lab, procs=procs, workdir=workdir, env=env, sender=args.sender, supervisor_cpu=args.supervisor_cpu
    )
    start = time.monotonic()
    budget = Budget(start + args.max_minutes * 60)
    runner = StepRunner(ctx, budget, log)
    runner.quiet_wait_s = args.quiet_wait
    runner.before_step = _check_stop
    command = "python3 bench/run.py" + ("" if not (argv or sys.argv[1:]) else " " + shlex.join(argv or sys.argv[1:]))
    results: dict[str, Any] = {
        "schema": 1,
        "started_utc": now_utc(),
        "command": command,
        "options": {
            "quick": args.quick,
            "paths": args.paths,
            "sizes": args.sizes,
            "step_seconds": args.step_seconds,
            "soak_seconds": args.soak_seconds,
            "fanout": args.fanout,
            "fanout_paths": args.fanout_paths,
            "ladder": args.ladder,
            "fanout_ladder": args.fanout_ladder,
            "refine": args.refine,
            "latency_rate": args.latency_rate,
            "max_minutes": args.max_minutes,
            "sender_cpu": SENDER_CPU,
            "relay_cpu": RELAY_CPU,
            "nice": args.nice,
            "quiet_wait_s": args.quiet_wait,
            "sender": args.sender,
            "supervisor_cpu": args.supervisor_cpu,
        },
        "machine": probe.machine(REPO),
        "topology": {},
        "paths": {},
        "steps": runner.steps,
        "soak": [],
        "profiles": [],
        "errors": [],
    }
    current: BenchPath | None = None
    interrupted: str | None = None
    quiet = contextlib.ExitStack()
    try:
        if not args.leave_kthreads:
            results["moved_off_relay_cpu"] = quiet.enter_context(probe.kernel_threads_off(RELAY_CPU))
            if results["moved_off_relay_cpu"]:
                log(f"kept off CPU {RELAY_CPU} while measuring: {', '.join(results['moved_off_relay_cpu'])}")
        log(f"building namespaces {', '.join(lab.namespaces)} (workdir {workdir})")
        lab.up()
        results["topology"] = {
            "namespaces": list(lab.namespaces),
            "rps_cpus": {
                "rin": lab.rps(lab.relay, "rin"),
                "snk0": lab.rps(lab.sink, "snk0"),
                "snk1": lab.rps(lab.sink, "snk1"),
            },
            "gro_rin": lab.run(lab.relay, "ethtool", "-k", "rin").stdout.split("receive-offload:")[1].split()[0],
            "relay_route_back": lab.has_route_back(),
            "relay_rp_filter": lab.read(lab.relay, "/proc/sys/net/ipv4/conf/rin/rp_filter").strip(),
        }
        for key in args.paths:
            path = make_path(key, ctx)
            results["paths"][key] = {"label": path.label, "notes": path.notes}
            log(f"== {key}: {path.label}")
            try:
                current = path
                path.start()
                for size in args.sizes:
                    climb(runner, path, size=size, ladder=args.ladder, seconds=args.step_seconds, refine=args.refine)
                    if args.profile is not None:
                        results["profiles"].append(profile_step(runner, path, size, args.profile, workdir, log))
                    if key == "mcr1" and args.soak_seconds > 0:
                        results["soak"].append(soak(runner, path, size, args.soak_seconds, args.soak_load, log))
            except (BudgetExceeded, Interrupted, KeyboardInterrupt):
                raise
            except Exception as exc:
                results["errors"].append(f"{key}: {type(exc).__name__}: {exc}")
                log(f"   {key} failed: {exc}")
                traceback.print_exc()
            finally:
                current = None
                path.stop()
        for key in args.fanout_paths:
            for n in args.fanout:
                path = make_path(key, ctx)
                results["paths"].setdefault(key, {"label": path.label, "notes": path.notes})
                log(f"== {key} fan-out 1:{n}")
                try:
                    current = path
                    path.start(outputs=n)
                    for size in args.sizes:
                        ladder = sorted({max(100, r // n) for r in args.fanout_ladder})
                        climb(
                            runner,
                            path,
                            size=size,
                            ladder=ladder,
                            seconds=args.step_seconds,
                            refine=min(args.refine, 1),
                            overload=False,
                            sender_max=False,
                        )
                except (BudgetExceeded, Interrupted, KeyboardInterrupt):
                    raise
                except Exception as exc:
                    results["errors"].append(f"{key} fan-out {n}: {type(exc).__name__}: {exc}")
                    log(f"   {key} fan-out {n} failed: {exc}")
                finally:
                    current = None
                    path.stop()
    except BudgetExceeded as exc:
        results["incomplete"] = str(exc)
        log(f"bench: {exc}; writing what was measured")
    except (Interrupted, KeyboardInterrupt) as exc:
        interrupted = str(exc) or "Ctrl-C"
        results["incomplete"] = f"interrupted ({interrupted})"
    finally:
        # clean-up must finish even if a second signal arrives
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if current is not None:
            try:
                current.stop()
            except Exception as exc:
                print(f"bench: stopping {current.key}: {exc}", file=sys.stderr)
        procs.stop_all()
        lab.down()
        quiet.close()
        left = [ns for ns in sh("ip", "netns", "list", check=False).stdout.split() if ns.startswith(lab.prefix)]
        log(f"namespaces removed{'' if not left else ' EXCEPT ' + ', '.join(left)}")
        if args.keep_workdir:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    results["finished_utc"] = now_utc()
    results["duration_s"] = round(time.monotonic() - start, 1)
    results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    finish(results, args)
    name = args.name + ("-interrupted" if interrupted else "")
    written = report.write_all(results, args.results_dir, name)
    for kind, path_ in written.items():
        log(f"wrote {kind}: {path_}")
    if not interrupted and args.name == "latest" and not args.no_docs:
        docs = REPO / "docs" / "benchmarks.md"
        if report.update_docs(docs, results, "../bench/results", args.name):
            log(f"refreshed {docs}")
    print()
    print(Path(written["md"]).read_text().split("## Paths")[0])
    return 130 if interrupted else (1 if results["errors"] else 0)


def profile_step(runner: StepRunner, path: BenchPath, size: int, rate: int, workdir: Path, log: Any) -> dict[str, Any]:
    """One step at `rate` (0: the lossless rate just measured) with the relay's CPU sampled by perf."""
    if not perfsplit.available():
        return {"path": path.key, "size": size, "error": "perf is not installed"}
    if not rate:
        mine = [s for s in runner.steps if s["path"] == path.key and s["size"] == size and s["outputs"] == 1]
        rate = report.summarize(mine, path.key, size).get("lossless_pps") or 0
        rate = int(round(rate, -2))
    if not rate:
        return {"path": path.key, "size": size, "error": "no lossless rate to profile at"}
    seconds = PROFILE_SECONDS
    data = workdir / f"perf-{path.key}-{size}.data"
    log(f"   profile: {path.key} {size} B at {rate} pps, perf on CPU {RELAY_CPU}")
    recs: list[subprocess.Popen[bytes]] = []

    def record() -> None:
        time.sleep(1.0)  # past the generator's start
        recs.append(perfsplit.start(RELAY_CPU, seconds - 2, data))

    runner.traffic_started = record
    try:
        step = runner.run(path, size=size, rate=rate, seconds=seconds, label="profile")
    finally:
        runner.traffic_started = lambda: None
    if not recs:
        return {"path": path.key, "size": size, "error": step.get("error", "the step did not start")}
    rec = recs[0]
    _, err = rec.communicate(timeout=30)
    if rec.returncode != 0:
        return {"path": path.key, "size": size, "error": f"perf record: {err.decode(errors='replace')[-300:]}"}
    relay = frozenset(p for root in path.roots() for p in probe.descendants(root))
    text = perfsplit.report(data)
    data.unlink(missing_ok=True)
    return {
        "path": path.key,
        "size": size,
        "rate": rate,
        "step": {k: step.get(k) for k in ("offered_pps", "delivered_pps", "loss_pct", "cpu_us_per_pkt", "error")},
        "shares_pct": perfsplit.categorize(text, relay),
        "parts_top": perfsplit.top_by_part(text, relay),
        "top": perfsplit.top_symbols(text),
    }


def soak(runner: StepRunner, path: BenchPath, size: int, seconds: float, load: float, log: Any) -> dict[str, Any]:
    """Offer `load` x the lossless rate just measured for `seconds`; sample the relay's RSS and descriptors before,
    every SOAK_SAMPLE_S during, and after, so that growth shows as a trend and not only as two end points."""
    mine = [s for s in runner.steps if s["path"] == path.key and s["size"] == size and s["outputs"] == 1]
    summary = report.summarize(mine, path.key, size)
    lossless = summary.get("lossless_pps") or 0
    if not lossless:
        return {"size": size, "seconds": seconds, "error": "no lossless rate to soak at"}
    rate = max(100, int(round(lossless * load, -2)))
    log(f"   soak: {path.key} {size} B at {rate} pps ({load:.0%} of {lossless:,} lossless) for {seconds:.0f} s")
    start = probe.footprint(path.roots())
    samples: list[dict[str, float]] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not done.wait(SOAK_SAMPLE_S):
            f = probe.footprint(path.roots())
            samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_kb": f["rss_kb"], "fds": f["fds"]})

    sampler = threading.Thread(target=sample, name="soak-footprint", daemon=True)
    sampler.start()
    try:
        step = runner.run(path, size=size, rate=rate, seconds=seconds, label="soak")
    finally:
        done.set()
        sampler.join()
    end = probe.footprint(path.roots())
    out = dict(step)
    out["load"] = load
    out["lossless_pps"] = lossless
    out["footprint"] = {
        "start": start,
        "end": end,
        "rss_growth_kb": end["rss_kb"] - start["rss_kb"],
        "fd_growth": end["fds"] - start["fds"],
        "samples": samples,
    }
    if "error" not in step:
        intact = step["corrupted"] == 0 and step["duplicated"] == 0
        flat = out["footprint"]["fd_growth"] <= 0 and out["footprint"]["rss_growth_kb"] <= SOAK_RSS_SLACK_KB
        out["pass"] = intact and flat and step["lost"] == 0 and step["delivered"] == step["expected"]
    return out


def finish(results: dict[str, Any], args: argparse.Namespace) -> None:
    steps = results["steps"]
    results["summary"] = [
        report.summarize(steps, key, size, 1, args.latency_rate)
        for key in args.paths
        for size in args.sizes
        if any(s["path"] == key and s["size"] == size and s["outputs"] == 1 for s in steps)
    ]
    results["fanout"] = [
        report.summarize(steps, key, size, n, args.latency_rate)
        for key in args.fanout_paths
        for n in args.fanout
        for size in args.sizes
        if any(s["path"] == key and s["size"] == size and s["outputs"] == n for s in steps)
    ]
    for rows in (results["summary"], results["fanout"]):
        for row in rows:
            base = next((r for r in results["summary"] if r["path"] == "ceiling" and r["size"] == row["size"]), None)
            lat, ref = row.get("latency_ref_rate"), (base or {}).get("latency_ref_rate")
            if lat and ref and lat.get("p50") is not None and ref.get("p50") is not None:
                row["latency_added_p50_us"] = round(lat["p50"] - ref["p50"], 1)
    results["ratios"] = report.ratios(results["summary"], args.sizes)
    measured = [s for s in steps if "error" not in s]
    results["disturbance"] = {
        "steps": len(measured),
        "waited_for_quiet": sum(1 for s in measured if s["quiet"]["waited_s"] >= 1),
        "started_busy": sum(1 for s in measured if s["quiet"]["busy_cpus"] > 0.15),
        "foreign_over_quarter_cpu": sum(
            1 for s in measured if s["cpu"]["foreign_proc_s"] > 0.25 * max(s["cpu"]["wall_s"], 0.001)
        ),
        "foreign_cpu_s_total": round(sum(s["cpu"]["foreign_proc_s"] for s in measured), 1),
        "wall_s_total": round(sum(s["cpu"]["wall_s"] for s in measured), 1),
    }


if __name__ == "__main__":
    sys.exit(main())
