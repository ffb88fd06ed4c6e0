"""The host's CPUs (sysfs) and pinning a process to one of them."""

from __future__ import annotations

import os
from pathlib import Path

from mcr.model.cpus import parse_cpu_list

SYS_CPU = Path("/sys/devices/system/cpu")


def read_cpu_list(name: str) -> tuple[int, ...]:
    """`online` or `possible`: the kernel's list of those CPUs."""
    return parse_cpu_list((SYS_CPU / name).read_text())


def online_cpus() -> tuple[int, ...]:
    """The CPUs a process can be pinned to now; those this process may use when sysfs is not readable."""
    try:
        return read_cpu_list("online")
    except (OSError, ValueError):
        return tuple(sorted(os.sched_getaffinity(0)))


def pin(pid: int, cpu: int) -> None:
    """Run process `pid` on `cpu` only (OSError when the CPU went offline or a cpuset forbids it)."""
    os.sched_setaffinity(pid, (cpu,))
