"""SinkTally: loss, duplicates, reordering, corruption, unnumbered payloads, runs, streams and latency."""

from __future__ import annotations

import pytest

from mcr.traffic.payload import HEADER_SIZE, build_payload
from mcr.traffic.tally import LatencyHistogram, SinkTally, encode_report

RUN = 1234


def feed_seqs(tally: SinkTally, seqs: list[int], run_id: int = RUN, stream: int = 0, size: int = 64) -> None:
    for i, seq in enumerate(seqs):
        tally.feed(build_payload(run_id, seq, size, 1_000), 2_000 + i, stream)


@pytest.mark.parametrize(
    ("seqs", "expected", "counts"),
    [
        # seqs arriving in this order, --expect, then (unique, lost, duplicated, reordered)
        (list(range(10)), None, (10, 0, 0, 0)),
        ([0, 1, 2, 5, 6], None, (5, 2, 0, 0)),
        ([0, 1, 2], 5, (3, 2, 0, 0)),  # a lost tail is only visible against --expect
        ([0, 1, 2, 5, 6], 7, (5, 2, 0, 0)),
        ([0, 1, 1, 2, 2, 2], None, (3, 0, 3, 0)),
        ([0, 2, 1, 3], None, (4, 0, 0, 1)),
        ([0, 3, 1, 1, 2], None, (4, 0, 1, 2)),
        ([3, 2, 1, 0], None, (4, 0, 0, 3)),
        ([5, 6], None, (2, 5, 0, 0)),  # numbering starts at 0: 0..4 never came
        ([], 3, (0, 3, 0, 0)),
        ([0, 2**40], None, (2, 2**40 - 1, 0, 0)),
    ],
)
def test_sequence_accounting(seqs: list[int], expected: int | None, counts: tuple[int, int, int, int]) -> None:
    tally = SinkTally(["s"], expected=expected)
    feed_seqs(tally, seqs)
    total = tally.report().total
    assert (total.unique, total.lost, total.duplicated, total.reordered) == counts
    assert total.received == len(seqs)
    assert total.bytes == 64 * len(seqs)
    assert total.corrupted == total.unnumbered == total.late == 0


@pytest.mark.parametrize("position", range(64))
def test_a_flipped_byte_anywhere_counts_as_corrupted_and_its_packet_as_lost(position: int) -> None:
    tally = SinkTally(["s"])
    damaged = bytearray(build_payload(RUN, 1, 64, 1_000))
    damaged[position] ^= 0x20
    tally.feed(build_payload(RUN, 0, 64, 1_000), 5_000)
    tally.feed(damaged, 5_001)
    tally.feed(build_payload(RUN, 2, 64, 1_000), 5_002)
    total = tally.report().total
    assert (total.received, total.unique, total.corrupted, total.lost, total.unnumbered) == (3, 2, 1, 1, 0)


@pytest.mark.parametrize("size", range(1, HEADER_SIZE))
def test_unnumbered_sizes_are_counted_and_meet_expect(size: int) -> None:
    tally = SinkTally(["s"], expected=3)
    for i in range(3):
        tally.feed(build_payload(RUN, i, size, 0), 10 + i)
    report = tally.report()
    assert (report.total.received, report.total.unnumbered, report.total.unique, report.total.lost) == (
        3,
        3,
        0,
        0,
    )
    assert report.total.delivered == 3
    assert report.expect_met is True
    assert report.total.latency.count == 0


def test_missing_unnumbered_packets_are_lost_against_expect() -> None:
    tally = SinkTally(["s"], expected=10)
    for i in range(7):
        tally.feed(build_payload(RUN, i, 8, 0), i)
    report = tally.report()
    assert (report.total.lost, report.expect_met) == (3, False)


def test_runs_are_tracked_separately() -> None:
    tally = SinkTally(["s"])
    feed_seqs(tally, [0, 1, 2], run_id=1)
    feed_seqs(tally, [0, 2], run_id=2)
    feed_seqs(tally, [3], run_id=1)
    report = tally.report()
    assert [(r.run_id, r.unique, r.lost, r.max_seq) for r in report.streams[0].runs] == [
        (1, 4, 0, 3),
        (2, 2, 1, 2),
    ]
    assert (report.total.unique, report.total.lost, report.total.reordered) == (6, 1, 0)


def test_streams_are_reported_separately_and_summed() -> None:
    tally = SinkTally(["239.1.1.1:5001", "239.1.1.2:5001"], expected=7)
    feed_seqs(tally, [0, 1, 2, 3], stream=0)
    feed_seqs(tally, [0, 2], stream=1, size=100)
    tally.feed(b"x", 99, 1)
    report = tally.report()
    a, b = report.streams
    assert (a.stream, a.counts.unique, a.counts.lost, a.counts.bytes) == ("239.1.1.1:5001", 4, 0, 256)
    assert (b.stream, b.counts.unique, b.counts.lost, b.counts.unnumbered, b.counts.bytes) == (
        "239.1.1.2:5001",
        2,
        1,
        1,
        201,
    )
    assert (report.total.received, report.total.unique, report.total.delivered, report.total.lost) == (
        7,
        6,
        7,
        1,
    )
    assert report.expect_met is True
    assert tally.delivered == 7
    assert tally.received == 7


def test_sequence_numbers_behind_the_window_are_late_and_memory_stays_bounded() -> None:
    tally = SinkTally(["s"], window=1024)
    feed_seqs(tally, [*range(8), 100_000, 3, 99_999, 99_999])
    run = tally.report().streams[0].runs[0]
    assert (run.unique, run.late, run.duplicated, run.reordered) == (10, 1, 1, 1)
    assert run.lost == 100_001 - 10
    stream = tally.stream(0)
    feed_seqs(tally, list(range(100_001, 120_000, 3)))
    assert all(len(r.bits) <= 1024 // 8 for r in stream._runs.values())


def test_latency_is_arrival_minus_send_time_over_first_copies() -> None:
    tally = SinkTally(["s"])
    for i in range(1, 1001):
        tally.feed(build_payload(RUN, i - 1, 64, 10_000), 10_000 + i * 1_000)  # 1..1000 us
    tally.feed(build_payload(RUN, 5, 64, 0), 10**12)  # a duplicate does not count
    latency = tally.report().total.latency
    assert latency.count == 1000
    assert (latency.min_us, latency.max_us, latency.mean_us) == (1.0, 1000.0, 500.5)
    assert latency.p50_us == pytest.approx(500, rel=0.032)
    assert latency.p99_us == pytest.approx(990, rel=0.032)


@pytest.mark.parametrize("value", [0, 1, 63, 64, 65, 127, 128, 1_000, 123_456, 10**9, 2**62 + 12_345])
def test_histogram_percentiles_stay_within_the_bucket_error(value: int) -> None:
    hist = LatencyHistogram()
    hist.add(value)
    hist.add(value * 3 + 1)
    assert hist.percentile_ns(0.5) == pytest.approx(value, rel=1 / 32, abs=1)


def test_negative_latency_from_skewed_clocks_is_kept_in_min() -> None:
    tally = SinkTally(["s"])
    tally.feed(build_payload(RUN, 0, 64, 5_000), 1_000)
    latency = tally.report().total.latency
    assert latency.min_us == -4.0
    assert latency.p50_us == -4.0


def test_batch_and_packed_feeding_match_single_feeding() -> None:
    payloads = [build_payload(RUN, s, 64, 0) for s in (0, 1, 1, 3, 2)] + [b"tiny", bytes(40)]
    damaged = bytearray(payloads[0])
    damaged[50] ^= 1
    payloads.append(bytes(damaged))
    one = SinkTally(["s"])
    for p in payloads:
        one.feed(p, 777)
    batch = SinkTally(["s"])
    batch.stream(0).feed_batch(payloads, 777)
    stride = 128
    buffer = bytearray(stride * len(payloads))
    for i, p in enumerate(payloads):
        buffer[i * stride : i * stride + len(p)] = p
    packed = SinkTally(["s"])
    packed.stream(0).feed_packed(memoryview(buffer), range(0, len(buffer), stride), [len(p) for p in payloads], 777)
    reports = [t.report() for t in (one, batch, packed)]
    assert reports[0] == reports[1] == reports[2]
    total = reports[0].total
    assert (total.unique, total.duplicated, total.reordered, total.unnumbered, total.corrupted) == (
        4,
        1,
        1,
        2,
        1,
    )


def test_arrival_times_and_rate() -> None:
    tally = SinkTally(["s"])
    for i in range(11):
        tally.feed(build_payload(RUN, i, 64, 0), 1_000_000_000 + i * 100_000_000)
    total = tally.report().total
    assert (total.first_arrival_ns, total.last_arrival_ns) == (1_000_000_000, 2_000_000_000)
    assert total.duration_s == 1.0
    assert total.rate_pps == 10.0


def test_empty_report() -> None:
    report = SinkTally(["s"]).report()
    assert report.total.received == 0
    assert report.total.first_arrival_ns is None
    assert report.total.rate_pps == 0.0
    assert report.expect_met is None


COUNT_KEYS = {
    "received",
    "bytes",
    "unique",
    "delivered",
    "lost",
    "duplicated",
    "reordered",
    "late",
    "corrupted",
    "unnumbered",
    "first_arrival_ns",
    "last_arrival_ns",
    "duration_s",
    "rate_pps",
    "latency_us",
}


def test_encoded_report_keys() -> None:
    tally = SinkTally(["a", "b"], expected=2)
    feed_seqs(tally, [0, 1])
    doc = encode_report(tally.report())
    assert set(doc) == COUNT_KEYS | {"expected", "expect_met", "streams"}
    latency = doc["latency_us"]
    assert isinstance(latency, dict)
    assert set(latency) == {"count", "min", "mean", "p50", "p99", "max"}
    streams = doc["streams"]
    assert isinstance(streams, list)
    assert [s["stream"] for s in streams] == ["a", "b"]
    assert set(streams[0]) == COUNT_KEYS | {"stream", "runs"}
    assert streams[0]["runs"] == [
        {"run_id": RUN, "unique": 2, "lost": 0, "duplicated": 0, "reordered": 0, "late": 0, "max_seq": 1}
    ]
    assert streams[1]["runs"] == []
    assert (doc["received"], doc["expected"], doc["expect_met"]) == (2, 2, True)


@pytest.mark.parametrize(("streams", "expected", "window"), [((), None, 1024), (("s",), -1, 1024), (("s",), 1, 12)])
def test_invalid_tallies_are_rejected(streams: tuple[str, ...], expected: int | None, window: int) -> None:
    with pytest.raises(ValueError):
        SinkTally(streams, expected=expected, window=window)
