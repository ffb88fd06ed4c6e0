"""What the benchmark measures besides the packets: CPU time, kernel drop counters and the machine itself.

- Process CPU: utime + stime from /proc/PID/stat of a relay's root process and all its descendants (found
  through /proc/PID/task/*/children), in seconds.
- Softirq share: the irq and softirq columns of one CPU's line in /proc/stat.
- Foreign CPU: CPU time that processes outside the benchmark used during a step (the machine may be shared),
  estimated from a scan of /proc/*/stat; a process that starts and ends inside one step is not seen.
- Drops: /proc/net/softnet_stat (per CPU backlog drops, global) and the UDP counters of a namespace.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    return text[text.rindex(")") + 2 :].split()


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), in clock ticks; 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0
    # after comm: state(3) ppid(4) ... utime is field 14, stime field 15 -> indexes 11 and 12 here
    return int(fields[11]) + int(fields[12])


PF_KTHREAD = 0x00200000
# Kernel threads whose work is not the relay's and that may run on any CPU: DAMON's monitor (seen taking 10-50 % of
# the relay CPU's busy samples on the development VM, more the more memory the rig touches).
FOREIGN_KTHREADS = ("kdamond",)


def kernel_threads(prefixes: tuple[str, ...]) -> dict[int, str]:
    """pid -> name of the kernel threads whose name starts with one of `prefixes`."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if fields is not None and int(fields[6]) & PF_KTHREAD and comm.startswith(prefixes):
            found[int(entry.name)] = comm
    return found


@contextmanager
def kernel_threads_off(cpu: int, prefixes: tuple[str, ...] = FOREIGN_KTHREADS) -> Iterator[list[str]]:
    """Keep those kernel threads off `cpu` (the relay's) while the benchmark runs, so that the relay CPU's busy
    time is the relay's; each one's own affinity comes back at the end, by pid. Yields "name (pid)" of each."""
    moved: list[tuple[int, set[int], str]] = []
    for pid, comm in kernel_threads(prefixes).items():
        try:
            before = os.sched_getaffinity(pid)
            if cpu in before and len(before) > 1:
                os.sched_setaffinity(pid, before - {cpu})
                moved.append((pid, before, comm))
        except OSError:
            continue  # gone, or pinned by the kernel (PF_NO_SETAFFINITY)
    try:
        yield [f"{comm} ({pid})" for pid, _before, comm in moved]
    finally:
        for pid, before, _comm in moved:
            try:
                os.sched_setaffinity(pid, before)
            except OSError:
                pass


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out.extend(int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        except OSError:
            continue
    return out


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(children(p))
    return seen


def footprint(roots: list[int]) -> dict[str, Any]:
    """Resident memory (VmRSS, kB) and open descriptors of the roots and their descendants, per process and in
    total; a process that exits while it is read is left out."""
    procs: dict[str, dict[str, int]] = {}
    for root in roots:
        for pid in descendants(root):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue
            rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            procs[str(pid)] = {"rss_kb": rss, "fds": fds}
    return {
        "rss_kb": sum(p["rss_kb"] for p in procs.values()),
        "fds": sum(p["fds"] for p in procs.values()),
        "procs": procs,
    }


def tree_cpu(pids: list[int]) -> dict[int, int]:
    """Per-process CPU ticks of the given roots and all their descendants."""
    out: dict[int, int] = {}
    for root in pids:
        for p in descendants(root):
            out[p] = proc_cpu_ticks(p)
    return out


def tree_delta_s(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds used between two `tree_cpu` samples (processes that appeared count from zero)."""
    ticks = sum(after[p] - before.get(p, 0) for p in after)
    return ticks / CLK_TCK


def boost(pids: list[int], nice: int) -> int:
    """Give each process's autogroup the niceness `nice`; returns how many it set.

    With CONFIG_SCHED_AUTOGROUP every session is a scheduling group of its own, and a process's nice value only
    counts inside its group: against other sessions' load only the group's niceness (/proc/PID/autogroup) helps.
    """
    done = 0
    for pid in pids:
        try:
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
            done += 1
        except OSError:
            pass
    return done


@dataclass(frozen=True)
class CpuLine:
    user: int
    nice: int
    system: int
    idle: int
    iowait: int
    irq: int
    softirq: int
    steal: int

    @property
    def busy(self) -> int:
        return self.user + self.nice + self.system + self.irq + self.softirq + self.steal

    @property
    def total(self) -> int:
        return self.busy + self.idle + self.iowait


def cpu_lines() -> dict[str, CpuLine]:
    out: dict[str, CpuLine] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            break
        name, *vals = line.split()
        v = [int(x) for x in vals[:8]] + [0] * max(0, 8 - len(vals))
        out[name] = CpuLine(*v[:8])
    return out


def softnet() -> list[tuple[int, int]]:
    """(dropped, time_squeeze) per CPU from /proc/net/softnet_stat (global, not per namespace)."""
    out = []
    for line in Path("/proc/net/softnet_stat").read_text().splitlines():
        cols = line.split()
        out.append((int(cols[1], 16), int(cols[2], 16)))
    return out


def all_proc_ticks() -> dict[int, int]:
    """CPU ticks of every process but ksoftirqd (whose time /proc/stat already counts as softirq)."""
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if "(ksoftirqd/" in text[:40]:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        out[int(name)] = int(fields[11]) + int(fields[12])
    return out


@dataclass
class Sample:
    """Everything sampled at one instant around a step."""

    t: float
    cpus: dict[str, CpuLine]
    relay: dict[int, int]
    procs: dict[int, int]
    softnet: list[tuple[int, int]]


def sample(relay_roots: list[int]) -> Sample:
    return Sample(time.monotonic(), cpu_lines(), tree_cpu(relay_roots), all_proc_ticks(), softnet())


def cpu_delta(before: Sample, after: Sample, relay_cpu: int, mine: set[int]) -> dict[str, float]:
    """Relay process CPU, relay-CPU softirq and busy time, and other processes' CPU between two samples."""
    key = f"cpu{relay_cpu}"
    b, a = before.cpus[key], after.cpus[key]
    relay_s = tree_delta_s(before.relay, after.relay)
    mine = mine | set(after.relay) | set(before.relay)
    foreign = 0
    for pid, ticks in after.procs.items():
        if pid in mine or pid == os.getpid():
            continue
        foreign += ticks - before.procs.get(pid, 0)
    wall = after.t - before.t
    return {
        "wall_s": round(wall, 4),
        "relay_proc_s": round(relay_s, 4),
        "relay_cpu_softirq_s": round((a.softirq - b.softirq + a.irq - b.irq) / CLK_TCK, 4),
        "relay_cpu_busy_s": round((a.busy - b.busy) / CLK_TCK, 4),
        "sender_cpu_busy_s": round(
            (after.cpus["cpu0"].busy - before.cpus["cpu0"].busy) / CLK_TCK if "cpu0" in after.cpus else 0.0, 4
        ),
        "foreign_proc_s": round(max(foreign, 0) / CLK_TCK, 4),
    }


def softnet_delta(before: Sample, after: Sample) -> dict[str, list[int]]:
    return {
        "dropped": [a[0] - b[0] for a, b in zip(after.softnet, before.softnet, strict=False)],
        "time_squeeze": [a[1] - b[1] for a, b in zip(after.softnet, before.softnet, strict=False)],
    }


def parse_snmp_udp(text: str) -> dict[str, int]:
    rows = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2:
        return {}
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=False)}


# ------------------------------------------------------------------------------------------- machine


def _first(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0] if out else ""


def _kernel_config(option: str) -> str | None:
    import gzip

    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith(option + "=") or line.startswith(f"# {option} is not set"):
                    return line.strip()
    except OSError:
        return None
    return None


def machine(repo: Path) -> dict[str, object]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    versions = {}
    for pkg in ("socat", "nftables", "smcroute", "iproute2"):
        versions[pkg] = _first(["dpkg-query", "-W", "-f", "${Version}", pkg])
    commit = _first(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"])
    dirty = bool(_first(["git", "-C", str(repo), "status", "--porcelain", "--", "src"]))
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "tools": versions,
        "mcr_commit": commit,
        "mcr_src_dirty": dirty,
        "clk_tck": CLK_TCK,
        "irq_time_accounting": _kernel_config("CONFIG_IRQ_TIME_ACCOUNTING"),
        "netdev_max_backlog": int(Path("/proc/sys/net/core/netdev_max_backlog").read_text()),
        "rmem_max": int(Path("/proc/sys/net/core/rmem_max").read_text()),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }
