"""Giving the C heap's free pages back to the kernel (glibc's `malloc_trim`).

A supervisor at 10,000 rules builds answers of several MB (`ListRules`, `GetStats`, a scrape) out of
thousands of strings of 500-600 bytes, which the C allocator takes from its heap, not from pages of their
own. Freed, they leave holes that glibc returns to the kernel only from the heap's top, so the process's RSS
kept each answer's peak: in-process at 10,000 counting rules, about 1.9 kB a rule that `malloc_trim` gives back
in about a millisecond. The trim waits for a quiet moment (`QUIET_SECONDS`). Where the C library has no
`malloc_trim` (musl), nothing is done.

A scrape is written in the metrics exporter's thread, and glibc gives a thread a heap (arena) of its own. The
trim did not give back the free top of that heap, and the several MB a scrape writes raised glibc's threshold
for blocks of their own pages, so after queries at 10,000 rules the exporter's heap held about 11 MB that no
object used (1.1-1.3 kB a rule). The supervisor keeps every thread on the one heap (`one_arena`): its threads
take turns under Python's lock anyway.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable

#: An answer or a report at least this large is worth a trim soon after it is freed.
LARGE_BYTES = 1 << 20


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the C library the interpreter runs on
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _malloc_trim()
_M_ARENA_MAX = -8  # mallopt's parameter for the number of heaps (malloc.h)


def one_arena() -> bool:
    """Every thread allocates from the process's main heap, which `release` trims whole; False where the C
    library cannot be told (not glibc). Before the first thread that allocates."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, 1))


#: A trim waits until no large answer was built for this long: pages given back are faulted in again (and
#: zeroed) by the next answer, about 20 ms of a `GetStats` at 10,000 rules, so a client that asks every
#: half second would pay that each time; one that asks every 15 s (a scrape) pays it once a quarter minute.
QUIET_SECONDS = 2.0
_lock = threading.Lock()  # noted from the control server's loop and the metrics thread
_noted_at: float | None = None  # when the latest large answer was built, if none was trimmed after it


def note_large(size: int, now: float | None = None) -> None:
    """Something of `size` bytes was built (and is about to be freed): trim once things are quiet."""
    global _noted_at
    if size >= LARGE_BYTES:
        with _lock:
            _noted_at = time.monotonic() if now is None else now


def release_if_due(now: float | None = None) -> bool:
    """Trim if a large answer was built since the last trim and none for `QUIET_SECONDS`; whether one ran."""
    global _noted_at
    now = time.monotonic() if now is None else now
    with _lock:
        if _noted_at is None or now - _noted_at < QUIET_SECONDS:
            return False
        _noted_at = None
    return release()


def release() -> bool:
    """Return the heap's free pages to the kernel now; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
