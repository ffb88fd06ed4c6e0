"""The worker's forwarding state: one slot per rule, indexed per input interface by (group, port).

Rules that name an input source are kept apart (`SourceSplit`), so that the lookup of the common rule
without a source costs nothing more; rules on one (group, port) have disjoint sources (validation), so
the first prefix that holds a packet's source is the only one.

Counters live in the slots as plain ints, updated per batch on the hot path and read on a timer. A rule
with a rate limit has a token bucket in its slot; the hot path asks it once per packet (see `DataPlane.drain`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from mcr.model.ratelimit import TokenBucket
from mcr.model.rules import InputProtocol
from mcr.packet.parse import DROP_KEYS, ESP_KEY_TAG, IPV6_KEY_TAG
from mcr.protocol.worker import RuleCounters, WorkerOutput, WorkerRule


def flow_key(group: int, port: int, version: int = 4) -> int:
    """The lookup key the parser produces: (destination << 16) | UDP destination port, tagged for IPv6."""
    return (IPV6_KEY_TAG if version == 6 else 0) | (group << 16) | port


def wire_key(group: int, port: int) -> int:
    """The key the ring's fast path produces: the destination address and port as they lie on the
    wire, read as little-endian integers, so that one little-endian unpack serves both the ring's
    frame header and the packet headers."""
    g = int.from_bytes(group.to_bytes(4, "big"), "little")
    p = int.from_bytes(port.to_bytes(2, "big"), "little")
    return (g << 16) | p


def wire_key_from_flow_key(key: int) -> int:
    """The table key of a parser key: IPv4 keys in wire order (the fast path's), ESP keys too with their tag,
    IPv6 keys as they are (IPv6 and ESP never take the fast path)."""
    if key >= IPV6_KEY_TAG:
        return key
    if key >= ESP_KEY_TAG:
        return ESP_KEY_TAG | wire_key((key >> 16) & 0xFFFFFFFF, 0)
    return wire_key(key >> 16, key & 0xFFFF)


def rule_key(rule: WorkerRule) -> int:
    """The table key of a rule's (group, port), or of an ESP rule's group."""
    if rule.group.version == 6:
        return flow_key(int(rule.group), rule.port, 6)
    if rule.protocol is InputProtocol.ESP:
        return ESP_KEY_TAG | wire_key(int(rule.group), 0)
    return wire_key(int(rule.group), rule.port)


class Batch(Protocol):
    """Where the hot path puts the payloads of one rule (a preallocated sendmmsg array)."""

    def set(self, i: int, address: int, length: int) -> None: ...

    def send(self, fd: int, count: int, start: int = 0) -> int: ...


@dataclass(slots=True)
class OutputSlot:
    spec: WorkerOutput
    fd: int = -1
    packets: int = 0
    bytes: int = 0
    errors: int = 0


@dataclass(slots=True, eq=False)
class RuleSlot:
    rule: WorkerRule
    outputs: list[OutputSlot]
    batch: Batch
    packets: int = 0
    bytes: int = 0
    drops: list[int] = field(default_factory=lambda: [0] * len(DROP_KEYS))
    bucket: TokenBucket | None = None  # the rule's rate limit in this worker; None: unlimited

    def counters(self) -> RuleCounters:
        return RuleCounters(
            packets=self.packets,
            bytes=self.bytes,
            outputs=tuple((o.spec.index, o.packets, o.bytes, o.errors) for o in self.outputs),
            drops=tuple((DROP_KEYS[i], n) for i, n in enumerate(self.drops) if n),
        )


class SourceSplit:
    """The rules of one (interface, group, port) that name a source host or prefix."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[tuple[int, int, RuleSlot]] = []  # (network, netmask, slot)

    def add(self, slot: RuleSlot) -> None:
        prefix = slot.rule.source
        assert prefix is not None
        self.entries.append((int(prefix.network_address), int(prefix.netmask), slot))

    def pick(self, source: int) -> RuleSlot | None:
        """The rule whose prefix holds `source` (an address as an int), or None."""
        for network, mask, slot in self.entries:
            if source & mask == network:
                return slot
        return None


def index_rules(slots: Iterable[RuleSlot]) -> dict[int, dict[int, RuleSlot]]:
    """{ifindex: {key: slot}} of the rules without a source, for the hot path."""
    table: dict[int, dict[int, RuleSlot]] = {}
    for slot in slots:
        r = slot.rule
        if r.source is None:
            table.setdefault(r.ifindex, {})[rule_key(r)] = slot
    return table


def index_sources(slots: Iterable[RuleSlot]) -> dict[int, dict[int, SourceSplit]]:
    """{ifindex: {key: split}} of the rules with a source."""
    table: dict[int, dict[int, SourceSplit]] = {}
    for slot in slots:
        r = slot.rule
        if r.source is not None:
            table.setdefault(r.ifindex, {}).setdefault(rule_key(r), SourceSplit()).add(slot)
    return table


def filter_groups(rules: Iterable[WorkerRule], ifindex: int) -> dict[int, set[int]]:
    """{IPv4 group: ports} of the rules on one input interface, for its kernel socket filter (an ESP rule's
    port is 0, which lets ESP to its group through; unicast inputs are in it like groups)."""
    groups: dict[int, set[int]] = {}
    for r in rules:
        if r.ifindex == ifindex and r.group.version == 4:
            groups.setdefault(int(r.group), set()).add(r.port)
    return groups


def filter_groups6(rules: Iterable[WorkerRule], ifindex: int) -> set[int]:
    """The IPv6 groups of the rules on one input interface, for its kernel socket filter."""
    return {int(r.group) for r in rules if r.ifindex == ifindex and r.group.version == 6}
