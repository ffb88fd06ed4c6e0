"""The worker's forwarding state: one slot per rule, indexed per input interface by (group, port).

Rules that name an input source are kept apart (`SourceSplit`), so that the lookup of the common rule
without a source costs nothing more; rules on one (group, port) have disjoint sources (validation), so
the first prefix that holds a packet's source is the only one.

Counters live in the slots as plain ints, updated per batch on the hot path and read on a timer. A rule
with a rate limit has a token bucket in its slot; the hot path asks it once per packet (see `DataPlane.drain`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from mcr.model.ratelimit import TokenBucket
from mcr.model.rules import InputProtocol
from mcr.packet.cbpf import MAX_IPV6_GROUPS, Insn, build_capture_filter, coarse_filter
from mcr.packet.parse import DROP_KEYS, ESP_KEY_TAG, IPV6_KEY_TAG
from mcr.protocol.worker import Counts, RuleCounters, WorkerOutput, WorkerRule, counts_layout

if TYPE_CHECKING:
    from mcr.worker.egress import Lane

K = TypeVar("K")


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


@dataclass(slots=True)
class OutputSlot:
    """One output of a rule in this worker: where it sends (a UDP output's lane and destination, or a raw ESP
    socket) and its counters. `fd` -1: no socket could be opened; its sends count as errors."""

    spec: WorkerOutput
    fd: int = -1
    packets: int = 0
    bytes: int = 0
    errors: int = 0
    lane: Lane | None = None  # a UDP output's shared socket and send queue
    name: int = 0  # the address of a UDP output's destination (a slot of the worker's `Destinations`)


@dataclass(slots=True, eq=False)
class RuleSlot:
    rule: WorkerRule
    outputs: tuple[OutputSlot, ...]
    packets: int = 0
    bytes: int = 0
    drops: list[int] | None = None  # by DropReason, made at the rule's first drop (most rules never drop)
    bucket: TokenBucket | None = None  # the rule's rate limit in this worker; None: unlimited
    direct: OutputSlot | None = None  # the rule's only output when it is on a lane: frames go to it as read

    def count_drop(self, reason: int) -> None:
        drops = self.drops
        if drops is None:
            drops = self.drops = [0] * len(DROP_KEYS)
        drops[reason] += 1

    def counts(self) -> Counts:
        """The rule's counts as a report carries them: packed as they travel (`counts_layout`), or the
        counters themselves when the rule has drops."""
        outputs = self.outputs
        if self.drops is None:
            if not self.packets and not any(o.errors for o in outputs):
                return _idle(tuple(o.spec.index for o in outputs))
            values = [self.packets, self.bytes]
            for o in outputs:
                values += (o.spec.index, o.packets, o.bytes, o.errors)
            return counts_layout(len(outputs)).pack(*values)
        return RuleCounters(
            packets=self.packets,
            bytes=self.bytes,
            outputs=tuple((o.spec.index, o.packets, o.bytes, o.errors) for o in outputs),
            drops=tuple((DROP_KEYS[i], n) for i, n in enumerate(self.drops) if n),
        )


_IDLE: dict[tuple[int, ...], bytes] = {}


def _idle(indexes: tuple[int, ...]) -> bytes:
    """The counts of a rule that has seen nothing, one object for every rule with these output indexes (a full
    report names every rule: most are idle in a large table)."""
    found = _IDLE.get(indexes)
    if found is None:
        if len(_IDLE) >= 64:
            _IDLE.clear()
        found = _IDLE[indexes] = counts_layout(len(indexes)).pack(0, 0, *(n for i in indexes for n in (i, 0, 0, 0)))
    return found


class SourceSplit:
    """The rules of one (interface, group, port) that name a source host or prefix."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[tuple[int, int, RuleSlot]] = []  # (network, netmask, slot)

    def add(self, slot: RuleSlot) -> None:
        prefix = slot.rule.source
        assert prefix is not None
        self.entries.append((int(prefix.network_address), int(prefix.netmask), slot))

    def discard(self, rule_id: str) -> None:
        self.entries = [e for e in self.entries if e[2].rule.rule_id != rule_id]

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


class RuleIndex:
    """The hot path's tables, kept up to date one rule at a time: {ifindex: {key: slot}} of the rules
    without a source and {ifindex: {key: split}} of those with one. A capture holds its interface's two
    dicts, which are changed in place, so a rule change costs the same whatever the size of the table."""

    __slots__ = ("plain", "sourced")

    def __init__(self) -> None:
        self.plain: dict[int, dict[int, RuleSlot]] = {}
        self.sourced: dict[int, dict[int, SourceSplit]] = {}

    def tables(self, ifindex: int) -> tuple[dict[int, RuleSlot], dict[int, SourceSplit]]:
        return self.plain.setdefault(ifindex, {}), self.sourced.setdefault(ifindex, {})

    def add(self, slot: RuleSlot) -> None:
        r = slot.rule
        plain, sourced = self.tables(r.ifindex)
        if r.source is None:
            plain[rule_key(r)] = slot
        else:
            sourced.setdefault(rule_key(r), SourceSplit()).add(slot)

    def discard(self, slot: RuleSlot) -> None:
        r = slot.rule
        plain, sourced = self.tables(r.ifindex)
        key = rule_key(r)
        if r.source is None:
            if plain.get(key) is slot:
                del plain[key]
            return
        split = sourced.get(key)
        if split is not None:
            split.discard(r.rule_id)
            if not split.entries:
                del sourced[key]


#: Up to this many groups on an interface its capture filter names them (exactly, or by group when the
#: ports do not fit); beyond, it passes any multicast group and the worker's dict lookup does the rest
#: (a frame to no rule is counted as `no_rule`). Building the exact filter takes time in proportion to
#: the groups, so a change to a table of thousands of rules would cost milliseconds; the coarse filter
#: costs the same at any size.
EXACT_FILTER_GROUPS = 256


class FilterSet:
    """What each input interface's capture filter must pass, counted by rule: IPv4 (group, port) pairs
    and IPv6 groups. Adding or removing a rule marks its interface dirty only when the set changed. The
    unicast IPv4 inputs are also counted apart, so that the coarse filter (past `EXACT_FILTER_GROUPS`) is
    made without a pass over the groups: its cost does not depend on the table."""

    __slots__ = ("coarse", "dirty", "groups4", "groups6", "pairs4", "unicast4")

    def __init__(self) -> None:
        self.pairs4: dict[int, Counter[tuple[int, int]]] = {}
        self.groups4: dict[int, Counter[int]] = {}
        self.groups6: dict[int, Counter[int]] = {}
        self.unicast4: dict[int, Counter[int]] = {}
        self.coarse: dict[int, tuple[object, list[Insn]]] = {}  # ifindex -> what its coarse filter passes, it
        self.dirty: set[int] = set()

    def add(self, rule: WorkerRule) -> None:
        self._count(rule, +1)

    def remove(self, rule: WorkerRule) -> None:
        self._count(rule, -1)

    def _count(self, rule: WorkerRule, delta: int) -> None:
        g = int(rule.group)
        if rule.group.version == 6:
            changed = _bump(self.groups6.setdefault(rule.ifindex, Counter()), g, delta)
        else:
            changed = _bump(self.pairs4.setdefault(rule.ifindex, Counter()), (g, rule.port), delta)
            _bump(self.groups4.setdefault(rule.ifindex, Counter()), g, delta)
            if g >> 28 != 0xE:
                _bump(self.unicast4.setdefault(rule.ifindex, Counter()), g, delta)
        if changed:
            self.dirty.add(rule.ifindex)

    def program(self, ifindex: int) -> list[Insn]:
        """The capture filter of `ifindex` (see `EXACT_FILTER_GROUPS`)."""
        groups6 = self.groups6.get(ifindex, Counter()).keys()
        groups4 = self.groups4.get(ifindex, Counter())
        if len(groups4) + len(groups6) > EXACT_FILTER_GROUPS:
            unicast = self.unicast4.get(ifindex, Counter()).keys()  # the unicast inputs, by address
            passes = (frozenset(groups6) if len(groups6) <= MAX_IPV6_GROUPS else None, frozenset(unicast))
            kept = self.coarse.get(ifindex)
            if kept is None or kept[0] != passes:  # a new multicast group of a large table changes nothing
                kept = self.coarse[ifindex] = (passes, coarse_filter(groups6, unicast))
            return kept[1]
        groups: dict[int, set[int]] = {}
        for group, port in self.pairs4.get(ifindex, ()):
            groups.setdefault(group, set()).add(port)
        return build_capture_filter(groups, groups6)

    def take_dirty(self) -> set[int]:
        dirty, self.dirty = self.dirty, set()
        return dirty


def _bump(counts: Counter[K], key: K, delta: int) -> bool:
    """Count `key` up or down by one; whether it appeared or disappeared."""
    n = counts[key] + delta
    if n > 0:
        counts[key] = n
        return n == 1 and delta > 0
    return counts.pop(key, None) is not None
