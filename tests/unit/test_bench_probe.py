"""The benchmark's host probes (bench/probe.py): finding the kernel threads it keeps off the relay's CPU."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("probe", BENCH / "probe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("probe", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


probe = _load()


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
