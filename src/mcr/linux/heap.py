"""Giving the C heap's free pages back to the kernel (glibc's `malloc_trim`).

A supervisor at 10,000 rules builds answers of several MB (`ListRules`, `GetStats`, a scrape) out of
thousands of strings of 500-600 bytes, which the C allocator takes from its heap, not from pages of their
own. Freed, they leave holes that glibc returns to the kernel only from the heap's top, so the process's RSS
kept each answer's peak: in-process at 10,000 counting rules, about 1.9 kB a rule that `malloc_trim` gives back
in about a millisecond. Where the C library has no `malloc_trim` (musl), nothing is done.
"""

from __future__ import annotations

import ctypes
import threading
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
_due = threading.Event()  # set from the control server and the metrics thread, cleared by the trim


def note_large(size: int) -> None:
    """Something of `size` bytes was built (and is about to be freed): trim at the next `release_if_due`."""
    if size >= LARGE_BYTES:
        _due.set()


def release_if_due() -> bool:
    """Trim if something large was noted since the last trim; whether a trim ran."""
    if not _due.is_set():
        return False
    _due.clear()
    return release()


def release() -> bool:
    """Return the heap's free pages to the kernel now; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
