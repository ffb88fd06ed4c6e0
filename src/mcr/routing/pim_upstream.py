"""Upstream Join/Prune state (RFC 7761 §4.5.4-4.5.7), pure: which trees we want, messages out.

We want a stream when a rule captures it on a PIM interface: a rule for group G on interface I wants
(*,G) toward G's RP, a rule limited to one source S wants (S,G) toward S, both through I. The upstream
neighbour on I (RPF') is the RP (or S) when it is a PIM neighbour there; else the next hop of the kernel's
unicast route toward it, when that route leaves through I and the next hop is a neighbour; else I's only
neighbour. Otherwise nothing is sent and `unresolved` names the entry.

Joins go out when an entry appears (or its upstream neighbour changes: a Prune to the old one), every
t_periodic (60 s) with holdtime 210 s, and again when the upstream neighbour restarts (new GenID). An entry
that goes away is pruned. On a LAN (RFC 7761 §4.5.7): another router's Join for the same entry to the same
upstream neighbour suppresses our next periodic Join (to t_suppressed, 66-84 s, after it), and another
router's Prune for it makes us send a Join within t_override (0-2.5 s) so that the upstream keeps
forwarding to us. The random values are drawn by the shell and passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from mcr.routing.pim_joins import RpTable
from mcr.routing.pim_wire import (
    DEFAULT_JP_HOLDTIME,
    EncodedGroup,
    EncodedSource,
    IPAddress,
    JoinPrune,
    JoinPruneGroup,
)

T_PERIODIC = 60.0
T_SUPPRESSED = (1.1 * T_PERIODIC, 1.4 * T_PERIODIC)  # the shell draws a value in this range
T_OVERRIDE = (0.0, 2.5)  # J/P_Override_Interval less propagation delay: the range of the override delay


@dataclass(frozen=True, slots=True)
class Wanted:
    """A rule's wish: traffic for `group` (from `source`, or any source) arriving on `interface`."""

    interface: str
    group: IPAddress
    source: IPAddress | None


@dataclass(frozen=True, slots=True)
class UpstreamEntry:
    source: IPAddress | None  # None: (*,G)
    group: IPAddress
    rp: IPAddress | None  # (*,G): the RP named in the Join
    interface: str
    upstream: IPAddress
    rpt: bool = False  # (S,G,rpt): S pruned off the shared tree (sent as a Prune, its removal as a Join)


@dataclass(frozen=True, slots=True)
class SendJoinPrune:
    interface: str
    message: JoinPrune


def resolve_upstream(
    wanted: Iterable[Wanted],
    rps: RpTable,
    neighbors: Mapping[str, Iterable[IPAddress]],
    ours: frozenset[IPAddress] = frozenset(),
    connected: frozenset[tuple[str, IPAddress]] = frozenset(),
    gateway: Callable[[str, IPAddress], IPAddress | None] = lambda _interface, _target: None,
) -> tuple[set[UpstreamEntry], list[str]]:
    """The entries to join, and why the others cannot be (no RP, no neighbour to send to). `neighbors` has
    every interface PIM runs on; nothing is joined toward one of `ours` (we are the RP, or the source), nor
    toward a source directly connected on the interface (`connected`: (interface, source); it sends onto the
    link itself, and its DR registers it). `gateway(interface, target)`: the next hop of the unicast route
    toward the target when that route leaves through the interface (RPF'), else None."""
    entries: set[UpstreamEntry] = set()
    unresolved: list[str] = []
    for w in wanted:
        if w.interface not in neighbors:
            continue  # PIM does not run there: nothing to join
        on_link = list(neighbors[w.interface])
        rp = rps.lookup(w.group) if w.source is None else None
        target = w.source if w.source is not None else rp
        name = f"({w.source or '*'},{w.group}) on {w.interface}"
        if target is None:
            unresolved.append(f"{name}: no RP for the group")
            continue
        if target in ours or (w.source is not None and (w.interface, w.source) in connected):
            continue
        via = gateway(w.interface, target)
        if target in on_link:
            upstream = target
        elif via is not None and via in on_link:
            upstream = via
        elif len(on_link) == 1:
            upstream = on_link[0]
        else:
            unresolved.append(f"{name}: {len(on_link)} neighbours and none is {target}")
            continue
        entries.add(UpstreamEntry(w.source, w.group, rp, w.interface, upstream))
    return entries, sorted(unresolved)


def _source(entry: UpstreamEntry) -> EncodedSource:
    if entry.rpt:
        assert entry.source is not None
        return EncodedSource(entry.source, 32 if entry.source.version == 4 else 128, rpt=True)
    if entry.source is None:
        assert entry.rp is not None
        return EncodedSource(entry.rp, 32 if entry.rp.version == 4 else 128, wildcard=True, rpt=True)
    return EncodedSource(entry.source, 32 if entry.source.version == 4 else 128)


def build_messages(joins: Iterable[UpstreamEntry], prunes: Iterable[UpstreamEntry]) -> list[SendJoinPrune]:
    """One Join/Prune per (interface, upstream neighbour), with a group record per group."""
    batches: dict[tuple[str, IPAddress], dict[IPAddress, tuple[list[EncodedSource], list[EncodedSource]]]] = {}
    for index, entries in enumerate((joins, prunes)):
        for e in entries:
            groups = batches.setdefault((e.interface, e.upstream), {})
            groups.setdefault(e.group, ([], []))[index].append(_source(e))
    messages: list[SendJoinPrune] = []
    for (interface, upstream), groups in sorted(batches.items(), key=lambda i: (i[0][0], i[0][1])):
        records = tuple(
            JoinPruneGroup(EncodedGroup(g, 32 if g.version == 4 else 128), tuple(j), tuple(p))
            for g, (j, p) in sorted(groups.items())
        )
        messages.append(SendJoinPrune(interface, JoinPrune(upstream, DEFAULT_JP_HOLDTIME, records)))
    return messages


def _messages(wanted: Iterable[UpstreamEntry], unwanted: Iterable[UpstreamEntry]) -> list[SendJoinPrune]:
    """Joins for the `wanted` trees and Prunes for the `unwanted` ones, where an (S,G,rpt) entry is wanted
    as a Prune (and unwanted as a Join)."""
    wanted, unwanted = list(wanted), list(unwanted)
    joins = [e for e in wanted if not e.rpt] + [e for e in unwanted if e.rpt]
    prunes = [e for e in unwanted if not e.rpt] + [e for e in wanted if e.rpt]
    return build_messages(joins, prunes)


def _matches(entry: UpstreamEntry, src: EncodedSource) -> bool:
    if entry.rpt:
        return False  # our (S,G,rpt) Prune is not suppressed by another's
    if entry.source is None:
        return src.wildcard and src.rpt
    return not src.rpt and not src.wildcard and src.address == entry.source


class Upstream:
    """The trees we have joined, each with the time of its next Join; `update`, `on_timer` and
    `on_others_join_prune` say what to send."""

    def __init__(self) -> None:
        self.join_at: dict[UpstreamEntry, float] = {}
        self.unresolved: list[str] = []

    @property
    def entries(self) -> set[UpstreamEntry]:
        return set(self.join_at)

    def update(self, entries: set[UpstreamEntry], unresolved: list[str], now: float) -> list[SendJoinPrune]:
        self.unresolved = unresolved
        joins = entries - set(self.join_at)
        prunes = set(self.join_at) - entries
        for e in prunes:
            del self.join_at[e]
        # a new (S,G,rpt) Prune goes out with its (*,G) Join, and from then on keeps its period; an (S,G,rpt)
        # whose (*,G) is pruned too is just dropped (no Join(S,G,rpt) next to the Prune(*,G))
        joins |= self._companions(joins - prunes)
        pruned_shared = {(e.interface, e.upstream, e.group) for e in prunes if e.source is None}
        prunes = {e for e in prunes if not (e.rpt and (e.interface, e.upstream, e.group) in pruned_shared)}
        for e in joins:
            self.join_at[e] = now + T_PERIODIC
        return _messages(joins, prunes)

    def _companions(self, entries: set[UpstreamEntry]) -> set[UpstreamEntry]:
        """The (*,G) entries of the (S,G,rpt) ones among `entries` and the (S,G,rpt) of the (*,G) ones (same
        interface, upstream neighbour and group): they are sent together."""
        keys = {(e.interface, e.upstream, e.group) for e in entries if e.rpt or e.source is None}
        return {
            e
            for e in self.join_at
            if (e.rpt or e.source is None) and (e.interface, e.upstream, e.group) in keys and e not in entries
        }

    def on_timer(self, now: float) -> list[SendJoinPrune]:
        due = {e for e, t in self.join_at.items() if t <= now}
        due |= self._companions(due)
        for e in due:
            self.join_at[e] = now + T_PERIODIC
        return _messages(due, ())

    def on_neighbor_restart(self, interface: str, address: IPAddress) -> list[SendJoinPrune]:
        """Our upstream neighbour lost its state (new GenID): join again at once."""
        return _messages((e for e in self.join_at if (e.interface, e.upstream) == (interface, address)), ())

    def on_others_join_prune(
        self, interface: str, msg: JoinPrune, now: float, suppressed: float, override: float
    ) -> None:
        """Another router's Join/Prune on `interface`: join suppression and prune override for our entries
        toward the same upstream neighbour. `suppressed` is drawn in T_SUPPRESSED, `override` in T_OVERRIDE."""
        for entry, at in list(self.join_at.items()):
            if (entry.interface, entry.upstream) != (interface, msg.upstream_neighbor):
                continue
            for g in msg.groups:
                if g.group.address != entry.group:
                    continue
                if any(_matches(entry, s) for s in g.joins):
                    self.join_at[entry] = max(at, now + suppressed)
                if any(_matches(entry, s) for s in g.prunes):
                    self.join_at[entry] = min(self.join_at[entry], now + override)

    def next_deadline(self) -> float | None:
        return min(self.join_at.values(), default=None)
