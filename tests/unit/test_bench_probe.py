"""The benchmark's host probes (bench/probe.py): finding the kernel threads it keeps off the relay's CPU."""

from __future__ import annotations

import os

import pytest

from tests.bench_modules import load

probe = load("probe")


def test_kernel_threads_are_found_by_name_and_flag() -> None:
    found = probe.kernel_threads(("kthreadd",))
    assert found == {2: "kthreadd"}  # the kernel's thread creator, pid 2 on every Linux
    assert os.getpid() not in probe.kernel_threads(("python", "pytest"))  # a process is not a kernel thread


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_processes_are_never_moved() -> None:
    """Only kernel threads move: a user process of the same name keeps its affinity."""
    me = os.sched_getaffinity(0)
    with probe.kernel_threads_off(min(me), prefixes=("python",)) as moved:
        assert moved == []
        assert os.sched_getaffinity(0) == me
