"""The worker's forwarding state: one slot per rule, indexed per input interface by (group, port).

Counters live in the slots as plain ints, updated per batch on the hot path and read on a timer. A rule
with a rate limit has a token bucket in its slot; the hot path asks it once per packet (see `DataPlane.drain`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from mcr.model.ratelimit import TokenBucket
from mcr.packet.parse import DROP_KEYS
from mcr.protocol.worker import RuleCounters, WorkerOutput, WorkerRule


def flow_key(group: int, port: int) -> int:
    """The lookup key the parser produces: (IPv4 destination << 16) | UDP destination port."""
    return (group << 16) | port


def wire_key(group: int, port: int) -> int:
    """The key the ring's fast path produces: the destination address and port as they lie on the
    wire, read as little-endian integers, so that one little-endian unpack serves both the ring's
    frame header and the packet headers."""
    g = int.from_bytes(group.to_bytes(4, "big"), "little")
    p = int.from_bytes(port.to_bytes(2, "big"), "little")
    return (g << 16) | p


def wire_key_from_flow_key(key: int) -> int:
    return wire_key(key >> 16, key & 0xFFFF)


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


def index_rules(slots: Iterable[RuleSlot]) -> dict[int, dict[int, RuleSlot]]:
    """{ifindex: {wire key: slot}} for the hot path."""
    table: dict[int, dict[int, RuleSlot]] = {}
    for slot in slots:
        r = slot.rule
        table.setdefault(r.ifindex, {})[wire_key(int(r.group), r.port)] = slot
    return table


def filter_groups(rules: Iterable[WorkerRule], ifindex: int) -> dict[int, set[int]]:
    """{group: ports} of the rules on one input interface, for its kernel socket filter."""
    groups: dict[int, set[int]] = {}
    for r in rules:
        if r.ifindex == ifindex:
            groups.setdefault(int(r.group), set()).add(r.port)
    return groups
