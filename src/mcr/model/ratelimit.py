"""Per-rule rate limits: the value, its validation, its text and JSON forms, and the token bucket (pure).

A limit is either packets per second (`pps`, burst in packets) or UDP payload bits per second (`bps`,
burst in bytes: the same bytes `stats` counts as `bytes_relayed`). Both engines enforce it with the same
arithmetic, a token bucket kept in its GCRA form ("theoretical arrival time"): one 64-bit word of state,
the time in nanoseconds at which the bucket would be full again. A packet that costs `cost` ns of credit
passes when `max(tat, now) + cost - now <= burst_ns` and then moves `tat` there; otherwise it is dropped
and counted (`rate_limited`). This is exactly a bucket of `burst` tokens refilled at `rate`, and because
the whole state is one word the kernel engine can update it from every CPU with one compare-and-exchange.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final

from mcr.model.errors import ValidationError

NS_PER_S: Final = 1_000_000_000
MAX_PPS: Final = 100_000_000  # 100 Mpps: beyond any single input
MIN_BPS: Final = 1_000
MAX_BPS: Final = 1_000_000_000_000  # 1 Tbit/s
MAX_BURST_PACKETS: Final = 100_000_000
MIN_BURST_BYTES: Final = 1_500  # a burst smaller than one full Ethernet payload would never pass it
MAX_BURST_BYTES: Final = 1 << 32
DEFAULT_BURST_S_DIVISOR: Final = 10  # the default burst is a tenth of a second's worth ...
DEFAULT_MIN_BURST_BYTES: Final = 65_535  # ... and, in bytes, at least the largest UDP payload


class RateUnit(Enum):
    PPS = "pps"  # packets per second; burst in packets
    BPS = "bps"  # UDP payload bits per second; burst in bytes

    @property
    def burst_field(self) -> str:
        return "burst" if self is RateUnit.PPS else "burst_bytes"


@dataclass(frozen=True, slots=True)
class RateLimit:
    rate: int
    unit: RateUnit
    burst: int  # packets (PPS) or bytes (BPS)

    @property
    def text(self) -> str:
        """For tables: `1000 pps, burst 100` or `8000000 bps, burst 65535 B`."""
        if self.unit is RateUnit.PPS:
            return f"{self.rate} pps, burst {self.burst}"
        return f"{self.rate} bps, burst {self.burst} B"


def default_burst(rate: int, unit: RateUnit) -> int:
    if unit is RateUnit.PPS:
        return max(1, rate // DEFAULT_BURST_S_DIVISOR)
    return max(DEFAULT_MIN_BURST_BYTES, rate // 8 // DEFAULT_BURST_S_DIVISOR)


def make_rate_limit(rate: int, unit: RateUnit, burst: int | None = None) -> RateLimit:
    """A checked limit; `burst` None takes the default. Raises ValidationError naming the bad value."""
    limit = RateLimit(rate, unit, default_burst(rate, unit) if burst is None else burst)
    problem = rate_limit_problem(limit)
    if problem:
        raise ValidationError(problem)
    return limit


def rate_limit_problem(limit: RateLimit) -> str | None:
    """Why `limit` is not acceptable, or None."""
    u = limit.unit.value
    lo, hi = (1, MAX_PPS) if limit.unit is RateUnit.PPS else (MIN_BPS, MAX_BPS)
    if not lo <= limit.rate <= hi:
        return f"rate_limit.{u} {limit.rate} is out of range; valid range is {lo}-{hi}"
    blo, bhi = (1, MAX_BURST_PACKETS) if limit.unit is RateUnit.PPS else (MIN_BURST_BYTES, MAX_BURST_BYTES)
    if not blo <= limit.burst <= bhi:
        return f"rate_limit.{limit.unit.burst_field} {limit.burst} is out of range; valid range is {blo}-{bhi}"
    return None


# ------------------------------------------------------------------------------------------ text and JSON

_RATE_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)(pps|bps)", re.IGNORECASE)
_SI = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_rate(text: str) -> tuple[int, RateUnit]:
    """`10000pps`, `10kpps`, `2.5mbps`, `1gbps` (SI multipliers; bps are bits) -> (rate, unit)."""
    m = _RATE_TEXT.fullmatch(text.strip())
    if m is None:
        raise ValidationError(
            f"Invalid rate limit '{text}': expected a number and a unit, e.g. 10000pps, 10kpps, 50mbps or 1gbps"
        )
    number, prefix, unit = m.groups()
    scaled = float(number) * _SI[prefix.lower()] if "." in number else int(number) * _SI[prefix.lower()]
    if scaled != int(scaled):
        raise ValidationError(f"Invalid rate limit '{text}': {scaled:g} is not a whole number of {unit.lower()}")
    return int(scaled), RateUnit(unit.lower())


_JSON_FIELDS = ("bps", "burst", "burst_bytes", "pps")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {int: "number", float: "number", str: "string", list: "array"}.get(type(value), "object")


def decode_rate_limit(obj: object) -> RateLimit:
    """`{"pps": N[, "burst": M]}` or `{"bps": N[, "burst_bytes": M]}` (JSON or TOML) -> a checked limit."""
    if not isinstance(obj, dict):
        raise ValidationError(
            f'rate_limit must be an object like {{"pps": 1000}} or {{"bps": 8000000}}, got {_json_type(obj)}'
        )
    unknown = sorted(set(obj) - set(_JSON_FIELDS))
    if unknown:
        raise ValidationError(f"unknown field '{unknown[0]}' in rate_limit; expected {', '.join(_JSON_FIELDS)}")
    for name, value in obj.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"rate_limit.{name} must be an integer, got {_json_type(value)}")
    units = [u for u in RateUnit if u.value in obj]
    if len(units) != 1:
        raise ValidationError("rate_limit needs exactly one of 'pps' or 'bps'")
    unit = units[0]
    other = RateUnit.BPS if unit is RateUnit.PPS else RateUnit.PPS
    if other.burst_field in obj:
        raise ValidationError(
            f"rate_limit.{other.burst_field} goes with '{other.value}'; with '{unit.value}' use '{unit.burst_field}'"
        )
    return make_rate_limit(obj[unit.value], unit, obj.get(unit.burst_field))


def encode_rate_limit(limit: RateLimit) -> dict[str, int]:
    return {limit.unit.value: limit.rate, limit.unit.burst_field: limit.burst}


# ------------------------------------------------------------------------------------------ the bucket


@dataclass(frozen=True, slots=True)
class BucketParams:
    """The bucket in integer nanoseconds: a packet of `length` payload bytes costs
    `(per_packet + length * per_byte) // divisor` ns of credit; at most `burst_ns` may be owed."""

    per_packet: int
    per_byte: int
    divisor: int
    burst_ns: int


def bucket_params(limit: RateLimit) -> BucketParams:
    if limit.unit is RateUnit.PPS:
        return BucketParams(NS_PER_S, 0, limit.rate, limit.burst * NS_PER_S // limit.rate)
    return BucketParams(0, 8 * NS_PER_S, limit.rate, limit.burst * 8 * NS_PER_S // limit.rate)


class TokenBucket:
    """One rule's bucket in one worker; the clock is passed in (monotonic nanoseconds)."""

    __slots__ = ("burst_ns", "divisor", "per_byte", "per_packet", "tat")

    def __init__(self, limit: RateLimit) -> None:
        p = bucket_params(limit)
        self.per_packet, self.per_byte, self.divisor, self.burst_ns = p.per_packet, p.per_byte, p.divisor, p.burst_ns
        self.tat = 0  # the bucket starts full

    def admit(self, length: int, now: int) -> bool:
        """Take the credit for one packet of `length` payload bytes at `now`; False: over the limit."""
        tat = self.tat if self.tat > now else now
        tat += (self.per_packet + length * self.per_byte) // self.divisor
        if tat - now > self.burst_ns:
            return False
        self.tat = tat
        return True
