"""The supervisor gives the C heap's free pages back after large answers (mcr.linux.heap)."""

import pytest

from mcr.linux import heap


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_large_answer_is_trimmed_once_things_are_quiet_and_a_small_one_not(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(heap, "_TRIM", lambda pad: calls.append(pad) or 1)
    monkeypatch.setattr(heap, "_noted_at", None)
    heap.note_large(heap.LARGE_BYTES - 1, now=10.0)
    assert not heap.release_if_due(now=100.0) and calls == []
    heap.note_large(heap.LARGE_BYTES, now=10.0)
    heap.note_large(5 * heap.LARGE_BYTES, now=11.0)  # answers half a second apart: none trimmed between them
    assert not heap.release_if_due(now=11.5) and not heap.release_if_due(now=12.9) and calls == []
    assert heap.release_if_due(now=11.0 + heap.QUIET_SECONDS) and calls == [0]
    assert not heap.release_if_due(now=60.0) and calls == [0], "once"


def test_without_malloc_trim_nothing_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_TRIM", None)
    heap.note_large(heap.LARGE_BYTES)
    assert not heap.release_if_due() and not heap.release()


@pytest.mark.skipif(heap._TRIM is None, reason="the C library has no malloc_trim (not glibc)")
def test_strings_of_an_answer_freed_mid_heap_leave_the_rss_after_a_release() -> None:
    """What an answer at 10,000 rules leaves: 40,000 strings of 600 bytes (malloc's, not Python's small-object
    arenas) freed below objects that live on. Without the trim, the RSS keeps them."""
    answer = [("x" * 600) + str(i) for i in range(40_000)]  # ~24 MB
    kept = [str(i) * 20 for i in range(2_000)]  # allocated above them, still alive
    del answer
    before = _rss_kb()
    assert heap.release()
    after = _rss_kb()
    assert before - after >= 8_000, (before, after)
    assert len(kept) == 2_000


_THREAD_HEAPS = """
import sys, threading
from mcr.linux import heap

def reserved() -> int:  # glibc reserves 64 MiB for each heap of a thread: the part not yet used is mapped ---p
    n = 0
    for line in open("/proc/self/maps"):
        span, perms, *rest = line.split()
        lo, hi = (int(x, 16) for x in span.split("-"))
        n += perms == "---p" and len(rest) == 3 and hi - lo >= 16 << 20
    return n

if sys.argv[1] == "one":
    assert heap.one_arena()
before = reserved()
thread = threading.Thread(target=lambda: [bytes(600 + i % 7) for i in range(10_000)])
thread.start()
thread.join()
print(reserved() - before)
"""


@pytest.mark.skipif(heap._TRIM is None, reason="the C library is not glibc")
def test_with_one_arena_a_thread_allocates_from_the_main_heap_not_one_of_its_own() -> None:
    """The metrics thread's heap is what the trim did not give back; the supervisor keeps every thread on the
    main heap. Without `one_arena` a thread that allocates gets a heap of its own (and this check sees it)."""
    import subprocess
    import sys

    def heaps_made(how: str) -> int:
        done = subprocess.run([sys.executable, "-c", _THREAD_HEAPS, how], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    assert heaps_made("many") == 1
    assert heaps_made("one") == 0
