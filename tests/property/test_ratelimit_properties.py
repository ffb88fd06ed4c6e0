"""Properties of the token bucket: it never lets through more than the burst plus what the elapsed time
refills, a refused frame leaves it unchanged, a long enough pause always lets a frame through, and every
valid limit round-trips through its JSON form."""

from hypothesis import given
from hypothesis import strategies as st

from mcr.model.ratelimit import (
    MAX_BPS,
    MAX_BURST_BYTES,
    MAX_BURST_PACKETS,
    MAX_PPS,
    MIN_BPS,
    MIN_BURST_BYTES,
    RateLimit,
    RateUnit,
    TokenBucket,
    decode_rate_limit,
    encode_rate_limit,
)

pps_limits = st.builds(RateLimit, st.integers(1, MAX_PPS), st.just(RateUnit.PPS), st.integers(1, MAX_BURST_PACKETS))
bps_limits = st.builds(
    RateLimit, st.integers(MIN_BPS, MAX_BPS), st.just(RateUnit.BPS), st.integers(MIN_BURST_BYTES, MAX_BURST_BYTES)
)
limits = st.one_of(pps_limits, bps_limits)
# (payload length, ns since the previous frame); several frames often share one clock reading, as in a block
arrivals = st.lists(st.tuples(st.integers(0, 65507), st.integers(0, 50_000_000) | st.just(0)), max_size=300)


def cost(bucket: TokenBucket, length: int) -> int:
    return (bucket.per_packet + length * bucket.per_byte) // bucket.divisor


@given(limits, arrivals, st.integers(0, 1 << 50))
def test_never_more_than_the_burst_plus_the_refill(limit: RateLimit, frames: list[tuple[int, int]], start: int) -> None:
    bucket = TokenBucket(limit)
    now = start
    spent = 0
    for length, gap in frames:
        now += gap
        before = bucket.tat
        if bucket.admit(length, now):
            spent += cost(bucket, length)
        else:
            assert bucket.tat == before  # a refused frame takes nothing
        assert spent <= bucket.burst_ns + (now - start)


@given(limits, arrivals, st.integers(0, 65507))
def test_a_pause_as_long_as_the_burst_always_lets_a_frame_through(
    limit: RateLimit, frames: list[tuple[int, int]], length: int
) -> None:
    bucket = TokenBucket(limit)
    now = 0
    for frame_length, gap in frames:
        now += gap
        bucket.admit(frame_length, now)
    if cost(bucket, length) <= bucket.burst_ns:
        assert bucket.admit(length, now + bucket.burst_ns + 1)


@given(limits)
def test_json_round_trip(limit: RateLimit) -> None:
    assert decode_rate_limit(encode_rate_limit(limit)) == limit
