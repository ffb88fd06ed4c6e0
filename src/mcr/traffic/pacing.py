"""Send pacing: a token bucket driven by the caller's clock (pure, no I/O).

Credit is kept in exact integer units (one packet = 1e9 units, the bucket gains `rate_pps` units per
nanosecond), so the long-run rate has no rounding drift whatever the rate. The bucket holds at most `burst`
packets: after a stall (a descheduled process, a blocked send) at most `burst` packets go out back to back and
the rest of the backlog is dropped rather than caught up, so the average rate then falls below the target
instead of producing a storm. A rate of 0 means unlimited: every call may send as many packets as the caller
allows.
"""

from __future__ import annotations

from typing import Final

__all__ = ["NS_PER_S", "Pacer", "default_burst"]

NS_PER_S: Final = 1_000_000_000


def default_burst(rate_pps: int, batch: int, window_ns: int = 2_000_000) -> int:
    """One batch, or `window_ns` worth of packets at high rates (absorbs sleep overshoot)."""
    return max(1, batch, rate_pps * window_ns // NS_PER_S)


class Pacer:
    """Token bucket: `due(now_ns, limit)` grants packets, `wait_ns(now_ns)` says when the next is due."""

    __slots__ = ("_cap", "_credit", "_last_ns", "_rate", "burst")

    def __init__(self, rate_pps: int, now_ns: int, burst: int = 1) -> None:
        if rate_pps < 0:
            raise ValueError(f"rate must be 0 (unlimited) or positive, not {rate_pps}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1 packet, not {burst}")
        self._rate = rate_pps
        self.burst = burst
        self._cap = burst * NS_PER_S
        self._credit = NS_PER_S  # the first packet is due at once
        self._last_ns = now_ns

    @property
    def rate_pps(self) -> int:
        return self._rate

    def _refill(self, now_ns: int) -> int:
        elapsed = now_ns - self._last_ns
        if elapsed > 0:
            credit = self._credit + elapsed * self._rate
            self._credit = credit if credit < self._cap else self._cap
            self._last_ns = now_ns
        return self._credit

    def due(self, now_ns: int, limit: int) -> int:
        """Grant and consume up to `limit` packets that may be sent at `now_ns`."""
        if limit <= 0:
            return 0
        if self._rate == 0:
            return limit
        credit = self._refill(now_ns)
        n = credit // NS_PER_S
        if n > limit:
            n = limit
        self._credit = credit - n * NS_PER_S
        return n

    def wait_ns(self, now_ns: int) -> int:
        """Nanoseconds from `now_ns` until the next packet is due (0 if one is due now)."""
        if self._rate == 0:
            return 0
        missing = NS_PER_S - self._refill(now_ns)
        if missing <= 0:
            return 0
        return -(-missing // self._rate)
