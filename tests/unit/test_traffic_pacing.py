"""The token-bucket pacer, driven by a fake clock."""

from __future__ import annotations

import random

import pytest

from mcr.traffic.pacing import NS_PER_S, Pacer, default_burst

MS = 1_000_000


def test_unlimited_rate_grants_everything_and_never_waits() -> None:
    pacer = Pacer(0, now_ns=0)
    assert pacer.due(0, 64) == 64
    assert pacer.due(0, 64) == 64
    assert pacer.wait_ns(0) == 0


def test_first_packet_is_due_at_once_then_one_per_interval() -> None:
    pacer = Pacer(1000, now_ns=10 * MS, burst=8)
    assert pacer.due(10 * MS, 64) == 1
    assert pacer.due(10 * MS, 64) == 0
    assert pacer.wait_ns(10 * MS) == MS
    assert pacer.wait_ns(10 * MS + MS // 4) == 3 * MS // 4
    assert pacer.due(11 * MS - 1, 64) == 0
    assert pacer.due(11 * MS, 64) == 1
    assert pacer.due(14 * MS, 64) == 3


@pytest.mark.parametrize(
    ("rate", "elapsed_ns", "limit", "burst", "expected"),
    [
        (1000, 5 * MS, 64, 64, 1 + 5),  # credit accrues
        (1000, 5 * MS, 2, 64, 2),  # capped by the caller's limit
        (1000, 10 * NS_PER_S, 1000, 16, 16),  # a stall gives at most one burst
        (3, NS_PER_S, 10, 10, 1 + 3),  # slow rates are exact
        (1_000_000, 1000, 64, 64, 1 + 1),  # 1 us at 1 Mpps
    ],
)
def test_due_counts(rate: int, elapsed_ns: int, limit: int, burst: int, expected: int) -> None:
    pacer = Pacer(rate, now_ns=0, burst=burst)
    assert pacer.due(elapsed_ns, limit) == expected


def test_limit_leaves_the_rest_of_the_credit() -> None:
    pacer = Pacer(1000, now_ns=0, burst=64)
    assert pacer.due(10 * MS, 4) == 4
    assert pacer.due(10 * MS, 64) == 7
    assert pacer.due(10 * MS, 64) == 0


@pytest.mark.parametrize("rate", [1, 7, 1000, 12_345, 999_999])
def test_long_run_rate_has_no_drift(rate: int) -> None:
    rng = random.Random(rate)
    pacer = Pacer(rate, now_ns=0, burst=default_burst(rate, 64))
    now = 0
    sent = 0
    end = 2 * NS_PER_S
    while now < end:
        while n := pacer.due(now, 64):  # the caller drains what is due before it sleeps
            sent += n
        now += min(rng.randint(0, MS), max(pacer.wait_ns(now), 1) + rng.randint(0, 50_000))
    while n := pacer.due(now, 64):
        sent += n
    # Whatever the wake-up jitter (below the burst window), the count is rate * time, give or take one packet.
    assert abs(sent - (rate * now // NS_PER_S + 1)) <= 1


def test_stall_does_not_catch_up() -> None:
    pacer = Pacer(10_000, now_ns=0, burst=20)
    assert pacer.due(0, 100) == 1
    assert pacer.due(NS_PER_S, 100) == 20
    assert pacer.due(NS_PER_S, 100) == 0
    assert pacer.wait_ns(NS_PER_S) == 100_000


def test_clock_going_backwards_grants_nothing_extra() -> None:
    pacer = Pacer(1000, now_ns=5 * MS)
    assert pacer.due(5 * MS, 10) == 1
    assert pacer.due(4 * MS, 10) == 0
    assert pacer.wait_ns(4 * MS) == MS


def test_zero_limit_consumes_nothing() -> None:
    pacer = Pacer(1000, now_ns=0)
    assert pacer.due(0, 0) == 0
    assert pacer.due(0, 1) == 1


@pytest.mark.parametrize(("rate", "burst"), [(-1, 1), (100, 0)])
def test_invalid_settings_are_rejected(rate: int, burst: int) -> None:
    with pytest.raises(ValueError):
        Pacer(rate, now_ns=0, burst=burst)


@pytest.mark.parametrize(
    ("rate", "batch", "expected"),
    [(0, 64, 64), (1000, 64, 64), (1_000_000, 64, 2000), (100, 1, 1)],
)
def test_default_burst_is_one_batch_or_two_milliseconds(rate: int, batch: int, expected: int) -> None:
    assert default_burst(rate, batch) == expected
