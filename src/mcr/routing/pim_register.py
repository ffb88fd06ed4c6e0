"""The RP's side of Register (RFC 7761 §4.4.2), pure: Registers in, Register-Stops and sources out.

A Register tells the RP that a DR has a source S sending to G. We answer every valid Register with a
Register-Stop to the DR: either we are not G's RP, or we are and we take the traffic natively instead
(the supervisor joins (S,G) toward S on the interfaces of the rules for G, and MSDP announces S). The
encapsulated data is not forwarded: the supervisor does no per-packet work, so what arrives before the
native path is up is lost. Registered sources expire after the Keepalive period (210 s) without a
Register (a DR sends a Null-Register every minute or so while its source is active and stopped).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from mcr.routing.pim_wire import EncodedGroup, IPAddress, Register, RegisterStop

KEEPALIVE_PERIOD = 210.0
MAX_SOURCES = 4096  # registered sources kept at once; more are still stopped, and counted


@dataclass(frozen=True, slots=True)
class RegisteredSource:
    source: IPAddress
    group: IPAddress
    dr: IPAddress
    rp: IPAddress
    expires_at: float


def inner_addresses(data: bytes) -> tuple[IPAddress, IPAddress] | None:
    """(source, group) of the packet a Register carries; None when it is not an IP packet to a group.
    A Null-Register carries just the IP header."""
    if len(data) >= 20 and data[0] >> 4 == 4 and (data[0] & 0x0F) >= 5:
        src4, dst4 = IPv4Address(data[12:16]), IPv4Address(data[16:20])
        return (src4, dst4) if dst4.is_multicast else None
    if len(data) >= 40 and data[0] >> 4 == 6:
        src6, dst6 = IPv6Address(data[8:24]), IPv6Address(data[24:40])
        return (src6, dst6) if dst6.is_multicast else None
    return None


class RpRegisters:
    """The sources DRs registered with us, while we are their group's RP."""

    def __init__(self) -> None:
        self._sources: dict[tuple[IPAddress, IPAddress], RegisteredSource] = {}
        self.bad = 0  # Registers whose inner packet is not IP to a group
        self.not_rp = 0  # Registers for groups we are not the RP of
        self.table_full = 0  # new sources beyond MAX_SOURCES

    def on_register(
        self, dr: IPAddress, reg: Register, rp: IPAddress | None, ours: frozenset[IPAddress], now: float
    ) -> tuple[RegisterStop | None, bool]:
        """(the Register-Stop to send the DR, whether the set of sources changed)."""
        inner = inner_addresses(reg.data)
        if inner is None:
            self.bad += 1
            return None, False
        source, group = inner
        stop = RegisterStop(EncodedGroup(group, 32 if group.version == 4 else 128), source)
        if rp is None or rp not in ours:
            self.not_rp += 1
            return stop, False
        key = (source, group)
        new = key not in self._sources
        if new and len(self._sources) >= MAX_SOURCES:
            self.table_full += 1
            return stop, False
        self._sources[key] = RegisteredSource(source, group, dr, rp, now + KEEPALIVE_PERIOD)
        return stop, new

    def on_timer(self, now: float) -> bool:
        gone = [k for k, s in self._sources.items() if s.expires_at <= now]
        for key in gone:
            del self._sources[key]
        return bool(gone)

    def next_deadline(self) -> float | None:
        return min((s.expires_at for s in self._sources.values()), default=None)

    def sources(self) -> list[RegisteredSource]:
        return sorted(self._sources.values(), key=lambda s: (str(s.group), str(s.source)))
