"""Memory tracing for `bench/scale.py --memory --trace` (never imported by MCR itself).

With this directory first on PYTHONPATH and MCR_MEMTRACE set to a directory, every Python process that starts
(the supervisor and its workers) traces its allocations from the first import, and on SIGUSR2 writes a
tracemalloc snapshot to MCR_MEMTRACE/<pid>-<n>.snap (through a descriptor of the directory opened at
start: the worker is chrooted by then). Tracing costs memory and time of its own: RSS figures
from a traced run are not the untraced ones, which `--memory` without `--trace` measures.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import tracemalloc
from types import FrameType

_DIR = os.environ.get("MCR_MEMTRACE")
_count = 0


def _dump(_signum: int, _frame: FrameType | None) -> None:
    global _count
    _count += 1
    assert _DIR is not None
    try:
        # what is held, not garbage in reference cycles that the next full collection would free (counted)
        os.write(2, f"memtrace: {gc.collect()} unreachable objects collected before the snapshot\n".encode())
        data = pickle.dumps(tracemalloc.take_snapshot(), pickle.HIGHEST_PROTOCOL)
        name = f"{os.getpid()}-{_count}.snap"
        fd = os.open(name + ".part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=_DIR_FD)
        try:
            os.write(fd, data)  # a regular file takes it in one write
        finally:
            os.close(fd)
        os.rename(name + ".part", name, src_dir_fd=_DIR_FD, dst_dir_fd=_DIR_FD)
    except OSError as e:  # never let the benchmark's hook take the process down
        os.write(2, f"memtrace: {e}\n".encode())


if _DIR:
    # a descriptor of the directory, opened now: the worker chroots into an empty directory before it is asked
    _DIR_FD = os.open(_DIR, os.O_RDONLY | os.O_DIRECTORY)
    tracemalloc.start(int(os.environ.get("MCR_MEMTRACE_FRAMES", "1")))
    signal.signal(signal.SIGUSR2, _dump)
