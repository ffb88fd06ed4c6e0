"""What a traffic sink received: loss, duplicates, reordering, corruption and latency (pure, no I/O).

`SinkTally` is fed every received payload with its arrival time (CLOCK_MONOTONIC ns, the clock the generator
stamps into each payload) and the index of the stream it came from, and produces a `TallyReport`.

Definitions, per stream and per generator run (run id) within a stream:

- received / bytes: every datagram, whatever its content.
- unique: intact numbered payloads counted once per (run id, seq); delivered = unique + unnumbered.
- duplicated: intact copies of a (run id, seq) already seen.
- reordered: first copies that arrived after a higher sequence number of the same run.
- lost: sequence numbers 0..max_seq of a run that never arrived intact (the generator numbers from 0, so start
  the sink before the generator). A corrupted packet is counted as corrupted *and*, since its intact copy
  never came, as lost. With `expected`, the total is max(that, expected - delivered), which also covers a lost
  tail and unnumbered payloads.
- late: a sequence number older than the duplicate window (`window` sequence numbers behind the newest one);
  it cannot be told apart from a duplicate and is only counted (its number stays lost).
- corrupted: ours (magic present or repairable) but the CRC or the size field does not match.
- unnumbered: shorter than the header, raw (`--payload`) or foreign payloads.
- latency: arrival time minus the payload's send time, over first copies, in a log-linear histogram
  (32 sub-buckets per power of two, under 3.2 % error for percentiles; min, max and mean are exact).

Memory is bounded: per run a bitmap of at most `window` bits (512 KiB by default), per stream a fixed
histogram.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from mcr.traffic.payload import (
    HEADER_SIZE,
    HEADER_STRUCT,
    MAGIC,
    RESIDUE,
    Bytes,
    Verdict,
    inspect_payload,
)

__all__ = [
    "DEFAULT_WINDOW",
    "Counts",
    "LatencyHistogram",
    "LatencySummary",
    "RunReport",
    "SinkTally",
    "StreamReport",
    "StreamTally",
    "TallyReport",
    "encode_report",
]

DEFAULT_WINDOW: Final = 1 << 22  # sequence numbers remembered per run for duplicate detection
_LINEAR: Final = 64  # values below this get one bucket each
_SUB_BITS: Final = 5
_SUB: Final = 1 << _SUB_BITS
_BUCKETS: Final = _LINEAR + (64 - 6) * _SUB
_CORRUPT: Final = Verdict.CORRUPT


def _bucket(value: int) -> int:
    if value < _LINEAR:
        return value if value > 0 else 0
    shift = value.bit_length() - 6
    return _LINEAR + ((shift - 1) << _SUB_BITS) + (value >> shift) - _SUB


def _bucket_bounds(index: int) -> tuple[int, int]:
    """The smallest and largest value that fall into bucket `index`."""
    if index < _LINEAR:
        return index, index
    shift = (index - _LINEAR) // _SUB + 1
    low = ((index - _LINEAR) % _SUB + _SUB) << shift
    return low, low + (1 << shift) - 1


class LatencyHistogram:
    """Latency samples in nanoseconds: exact count, sum, min and max, and a log-linear histogram."""

    __slots__ = ("count", "counts", "max_ns", "min_ns", "total_ns")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.total_ns = 0
        self.min_ns = 0
        self.max_ns = 0

    def add(self, value_ns: int) -> None:
        if self.count == 0 or value_ns < self.min_ns:
            self.min_ns = value_ns
        if self.count == 0 or value_ns > self.max_ns:
            self.max_ns = value_ns
        self.count += 1
        self.total_ns += value_ns
        self.counts[_bucket(value_ns)] += 1

    def merge(self, other: LatencyHistogram) -> None:
        if other.count == 0:
            return
        if self.count == 0 or other.min_ns < self.min_ns:
            self.min_ns = other.min_ns
        if self.count == 0 or other.max_ns > self.max_ns:
            self.max_ns = other.max_ns
        self.count += other.count
        self.total_ns += other.total_ns
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]

    def percentile_ns(self, fraction: float) -> int:
        """The value below which `fraction` of the samples lie (bucket midpoint, clamped to min..max)."""
        if self.count == 0:
            raise ValueError("no samples")
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                low, high = _bucket_bounds(index)
                return min(max((low + high) // 2, self.min_ns), self.max_ns)
        return self.max_ns

    def summary(self) -> LatencySummary:
        if self.count == 0:
            return LatencySummary(0, None, None, None, None, None)
        return LatencySummary(
            count=self.count,
            min_us=_us(self.min_ns),
            mean_us=_us(self.total_ns // self.count),
            p50_us=_us(self.percentile_ns(0.50)),
            p99_us=_us(self.percentile_ns(0.99)),
            max_us=_us(self.max_ns),
        )


def _us(ns: int) -> float:
    return round(ns / 1000, 3)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    min_us: float | None
    mean_us: float | None
    p50_us: float | None
    p99_us: float | None
    max_us: float | None


@dataclass(frozen=True, slots=True)
class RunReport:
    run_id: int
    unique: int
    lost: int
    duplicated: int
    reordered: int
    late: int
    max_seq: int


@dataclass(frozen=True, slots=True)
class Counts:
    received: int
    bytes: int
    unique: int
    lost: int
    duplicated: int
    reordered: int
    late: int
    corrupted: int
    unnumbered: int
    first_arrival_ns: int | None
    last_arrival_ns: int | None
    latency: LatencySummary

    @property
    def delivered(self) -> int:
        return self.unique + self.unnumbered

    @property
    def duration_s(self) -> float:
        if self.first_arrival_ns is None or self.last_arrival_ns is None:
            return 0.0
        return (self.last_arrival_ns - self.first_arrival_ns) / 1e9

    @property
    def rate_pps(self) -> float:
        """Arrival rate between the first and the last packet."""
        duration = self.duration_s
        return (self.received - 1) / duration if duration > 0 else 0.0


@dataclass(frozen=True, slots=True)
class StreamReport:
    stream: str
    counts: Counts
    runs: tuple[RunReport, ...]


@dataclass(frozen=True, slots=True)
class TallyReport:
    total: Counts
    expected: int | None
    streams: tuple[StreamReport, ...]

    @property
    def expect_met(self) -> bool | None:
        return None if self.expected is None else self.total.delivered >= self.expected


class _RunTracker:
    """Seen sequence numbers of one run: a bitmap over [base, base + window), grown lazily, slid forward."""

    __slots__ = ("base", "bits", "duplicated", "late", "max_seq", "reordered", "unique", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.base = 0  # always a multiple of 8
        self.bits = bytearray()
        self.max_seq = -1
        self.unique = 0
        self.duplicated = 0
        self.reordered = 0
        self.late = 0

    def state(self) -> tuple[int, bytearray, int, int, int, int]:
        """(base, bits, unique, duplicated, reordered, max_seq): what a caller that inlines `add` keeps in locals
        and hands back with `flush`."""
        return self.base, self.bits, self.unique, self.duplicated, self.reordered, self.max_seq

    def add(self, seq: int) -> bool:
        """Record seq; True if this is its first intact copy."""
        rel = seq - self.base
        if rel < 0:
            self.late += 1
            return False
        if rel >= self.window:
            self._slide(seq)
            rel = seq - self.base
        index = rel >> 3
        bits = self.bits
        if index >= len(bits):
            grow = max(index + 1, 2 * len(bits), 64)
            bits.extend(bytes(min(grow, (self.window + 7) >> 3) - len(bits)))
        mask = 1 << (seq & 7)
        byte = bits[index]
        if byte & mask:
            self.duplicated += 1
            return False
        bits[index] = byte | mask
        self.unique += 1
        if seq < self.max_seq:
            self.reordered += 1
        else:
            self.max_seq = seq
        return True

    def flush(self, unique: int, duplicated: int, reordered: int, max_seq: int) -> None:
        """Store counters that a caller kept in locals (see StreamTally.feed_packed)."""
        self.unique = unique
        self.duplicated = duplicated
        self.reordered = reordered
        self.max_seq = max_seq

    def _slide(self, seq: int) -> None:
        new_base = ((seq - self.window) // 8 + 1) * 8
        drop = (new_base - self.base) >> 3
        if drop >= len(self.bits):
            self.bits = bytearray()
        else:
            del self.bits[:drop]
        self.base = new_base

    def report(self, run_id: int) -> RunReport:
        return RunReport(
            run_id=run_id,
            unique=self.unique,
            lost=self.max_seq + 1 - self.unique,
            duplicated=self.duplicated,
            reordered=self.reordered,
            late=self.late,
            max_seq=self.max_seq,
        )


_NO_RUN: Final = _RunTracker(8)


class StreamTally:
    """The tally of one received stream (one socket: group and port)."""

    __slots__ = (
        "_latency",
        "_runs",
        "_window",
        "bytes",
        "corrupted",
        "first_ns",
        "last_ns",
        "name",
        "received",
        "unique",
        "unnumbered",
    )

    def __init__(self, name: str, window: int = DEFAULT_WINDOW) -> None:
        if window < 8 or window % 8:
            raise ValueError(f"window must be a positive multiple of 8 sequence numbers, not {window}")
        self.name = name
        self._window = window
        self._runs: dict[int, _RunTracker] = {}
        self._latency = LatencyHistogram()
        self.received = 0
        self.bytes = 0
        self.unique = 0
        self.corrupted = 0
        self.unnumbered = 0
        self.first_ns = 0
        self.last_ns = 0

    @property
    def delivered(self) -> int:
        return self.unique + self.unnumbered

    @property
    def latency(self) -> LatencyHistogram:
        return self._latency

    def feed(self, data: Bytes, arrival_ns: int) -> None:
        """Count one received payload."""
        self.feed_packed(memoryview(data), (0,), (len(data),), arrival_ns)

    def feed_batch(self, payloads: Iterable[Bytes], arrival_ns: int) -> None:
        """Count payloads that arrived together at `arrival_ns`."""
        items = [bytes(p) for p in payloads]
        offsets = list(itertools.accumulate((len(p) for p in items), initial=0))
        self.feed_packed(memoryview(b"".join(items)), offsets, [len(p) for p in items], arrival_ns)

    def feed_packed(self, buffer: memoryview, offsets: Iterable[int], lengths: Iterable[int], arrival_ns: int) -> None:
        """Count payloads stored in `buffer` at `offsets` with `lengths`, all arrived at `arrival_ns`.

        This is the sink's hot path, laid out like a recvmmsg batch (fixed-stride slots in one buffer) so that
        no view per payload is needed: the common case (an intact payload of the same run as the previous one,
        inside the run's bitmap) is inlined, and the counters live in locals until the end of the batch.
        """
        unpack = HEADER_STRUCT.unpack_from
        crc32 = zlib.crc32
        runs = self._runs
        hist = self._latency
        counts = hist.counts
        lat_count = hist.count
        lat_sum = hist.total_ns
        lat_min = hist.min_ns
        lat_max = hist.max_ns
        received = self.received
        nbytes = self.bytes
        unique = self.unique
        corrupted = self.corrupted
        unnumbered = self.unnumbered
        # The current run's counters live in locals too; flush() stores them on a run change and at the end.
        run_id_now = -1
        run = _NO_RUN
        run_base, run_bits, r_unique, r_duplicated, r_reordered, r_max = run.state()
        run_len = len(run_bits)
        if received == 0:
            self.first_ns = arrival_ns
        for off, n in zip(offsets, lengths, strict=False):  # offsets may be a longer range
            received += 1
            nbytes += n
            if n < HEADER_SIZE:
                unnumbered += 1
                continue
            magic, run_id, size, seq, sent_ns, _digest = unpack(buffer, off)
            if not (magic == MAGIC and size == n and crc32(buffer[off : off + n]) == RESIDUE):
                if inspect_payload(buffer[off : off + n])[0] is _CORRUPT:
                    corrupted += 1
                else:
                    unnumbered += 1
                continue
            if run_id != run_id_now:
                run.flush(r_unique, r_duplicated, r_reordered, r_max)
                found = runs.get(run_id)
                if found is None:
                    found = runs[run_id] = _RunTracker(self._window)
                run = found
                run_id_now = run_id
                run_base, run_bits, r_unique, r_duplicated, r_reordered, r_max = run.state()
                run_len = len(run_bits)
            rel = seq - run_base
            index = rel >> 3
            if rel >= 0 and index < run_len:  # inline _RunTracker.add
                mask = 1 << (seq & 7)
                byte = run_bits[index]
                if byte & mask:
                    r_duplicated += 1
                    continue
                run_bits[index] = byte | mask
                r_unique += 1
                if seq < r_max:
                    r_reordered += 1
                else:
                    r_max = seq
            else:
                run.flush(r_unique, r_duplicated, r_reordered, r_max)
                first = run.add(seq)
                run_base, run_bits, r_unique, r_duplicated, r_reordered, r_max = run.state()
                run_len = len(run_bits)
                if not first:
                    continue
            unique += 1
            lat = arrival_ns - sent_ns
            if lat_count == 0:
                lat_min = lat_max = lat
            elif lat < lat_min:
                lat_min = lat
            elif lat > lat_max:
                lat_max = lat
            lat_count += 1
            lat_sum += lat
            if lat < _LINEAR:
                counts[lat if lat > 0 else 0] += 1
            else:
                shift = lat.bit_length() - 6
                counts[_LINEAR - _SUB + ((shift - 1) << _SUB_BITS) + (lat >> shift)] += 1
        run.flush(r_unique, r_duplicated, r_reordered, r_max)
        hist.count = lat_count
        hist.total_ns = lat_sum
        hist.min_ns = lat_min
        hist.max_ns = lat_max
        self.received = received
        self.bytes = nbytes
        self.unique = unique
        self.corrupted = corrupted
        self.unnumbered = unnumbered
        self.last_ns = arrival_ns

    def _counts(self, runs: Sequence[RunReport]) -> Counts:
        received = self.received
        return Counts(
            received=received,
            bytes=self.bytes,
            unique=self.unique,
            lost=sum(r.lost for r in runs),
            duplicated=sum(r.duplicated for r in runs),
            reordered=sum(r.reordered for r in runs),
            late=sum(r.late for r in runs),
            corrupted=self.corrupted,
            unnumbered=self.unnumbered,
            first_arrival_ns=self.first_ns if received else None,
            last_arrival_ns=self.last_ns if received else None,
            latency=self._latency.summary(),
        )

    def report(self) -> StreamReport:
        runs = tuple(self._runs[r].report(r) for r in sorted(self._runs))
        return StreamReport(stream=self.name, counts=self._counts(runs), runs=runs)


class SinkTally:
    """The tally of every stream a sink receives; `expected` counts packets over all streams."""

    __slots__ = ("_streams", "expected")

    def __init__(
        self, streams: Sequence[str] = ("",), expected: int | None = None, window: int = DEFAULT_WINDOW
    ) -> None:
        if not streams:
            raise ValueError("a tally needs at least one stream")
        if expected is not None and expected < 0:
            raise ValueError(f"expected must not be negative, not {expected}")
        self.expected = expected
        self._streams = tuple(StreamTally(name, window) for name in streams)

    @property
    def streams(self) -> tuple[StreamTally, ...]:
        return self._streams

    def stream(self, index: int) -> StreamTally:
        return self._streams[index]

    def feed(self, data: Bytes, arrival_ns: int, stream: int = 0) -> None:
        self._streams[stream].feed(data, arrival_ns)

    @property
    def received(self) -> int:
        return sum(s.received for s in self._streams)

    @property
    def delivered(self) -> int:
        return sum(s.delivered for s in self._streams)

    def report(self) -> TallyReport:
        streams = tuple(s.report() for s in self._streams)
        latency = LatencyHistogram()
        for s in self._streams:
            latency.merge(s.latency)
        counts = [s.counts for s in streams]
        firsts = [c.first_arrival_ns for c in counts if c.first_arrival_ns is not None]
        lasts = [c.last_arrival_ns for c in counts if c.last_arrival_ns is not None]
        unique = sum(c.unique for c in counts)
        unnumbered = sum(c.unnumbered for c in counts)
        lost = sum(c.lost for c in counts)
        if self.expected is not None:
            lost = max(lost, self.expected - unique - unnumbered)
        total = Counts(
            received=sum(c.received for c in counts),
            bytes=sum(c.bytes for c in counts),
            unique=unique,
            lost=lost,
            duplicated=sum(c.duplicated for c in counts),
            reordered=sum(c.reordered for c in counts),
            late=sum(c.late for c in counts),
            corrupted=sum(c.corrupted for c in counts),
            unnumbered=unnumbered,
            first_arrival_ns=min(firsts) if firsts else None,
            last_arrival_ns=max(lasts) if lasts else None,
            latency=latency.summary(),
        )
        return TallyReport(total=total, expected=self.expected, streams=streams)


def _encode_latency(summary: LatencySummary) -> dict[str, object]:
    return {
        "count": summary.count,
        "min": summary.min_us,
        "mean": summary.mean_us,
        "p50": summary.p50_us,
        "p99": summary.p99_us,
        "max": summary.max_us,
    }


def _encode_counts(counts: Counts) -> dict[str, object]:
    return {
        "received": counts.received,
        "bytes": counts.bytes,
        "unique": counts.unique,
        "delivered": counts.delivered,
        "lost": counts.lost,
        "duplicated": counts.duplicated,
        "reordered": counts.reordered,
        "late": counts.late,
        "corrupted": counts.corrupted,
        "unnumbered": counts.unnumbered,
        "first_arrival_ns": counts.first_arrival_ns,
        "last_arrival_ns": counts.last_arrival_ns,
        "duration_s": round(counts.duration_s, 6),
        "rate_pps": round(counts.rate_pps, 1),
        "latency_us": _encode_latency(counts.latency),
    }


def encode_report(report: TallyReport) -> dict[str, object]:
    """The report as a JSON-ready dict: totals at the top level, then expected, expect_met, streams."""
    out = _encode_counts(report.total)
    out["expected"] = report.expected
    out["expect_met"] = report.expect_met
    out["streams"] = [
        {
            "stream": s.stream,
            **_encode_counts(s.counts),
            "runs": [
                {
                    "run_id": r.run_id,
                    "unique": r.unique,
                    "lost": r.lost,
                    "duplicated": r.duplicated,
                    "reordered": r.reordered,
                    "late": r.late,
                    "max_seq": r.max_seq,
                }
                for r in s.runs
            ],
        }
        for s in report.streams
    ]
    return out
