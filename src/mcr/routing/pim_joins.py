"""Downstream Join/Prune state (RFC 7761 §4.5) and the static RP table, pure: messages and time in.

A Join/Prune is acted on only when its Upstream Neighbor field is one of our addresses on the link it
arrived on (the original acted on every one it heard). For each (*,G), (S,G) and (S,G,rpt) it keeps,
per interface, when the downstream state expires (the message's holdtime). A Prune does not remove an
interface at once: it is prune-pending for the J/P override interval (3 s), during which another
router's Join on the same link overrides it (RFC 7761 §4.5.3). The routes out are the outgoing
interface lists: (*,G) joined interfaces, and for (S,G) its own joined interfaces plus the (*,G) ones
not pruned for S with (S,G,rpt).

The static RP table maps group prefixes to RPs by longest-prefix match (the original compared only
the first octet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Network, IPv6Network, ip_network

from mcr.routing.pim_wire import IPAddress, JoinPrune

JP_OVERRIDE_INTERVAL = 3.0  # seconds: Effective_Override_Interval with the default propagation delay
MAX_ENTRIES = 8192  # (*,G), (S,G) and (S,G,rpt) entries together: more (a flood of Joins) are counted, not kept


class EntryType(Enum):
    STAR_G = "StarG"
    SG = "SG"


@dataclass(frozen=True, slots=True)
class Mroute:
    source: IPAddress | None  # None: (*,G)
    group: IPAddress
    output_interfaces: tuple[str, ...]
    entry_type: EntryType
    created_at: float
    rp: IPAddress | None = None  # the RP named in a (*,G) Join


@dataclass(slots=True)
class _Downstream:
    expires_at: float
    prune_pending_until: float | None = None


@dataclass(slots=True)
class _Entry:
    created_at: float
    interfaces: dict[str, _Downstream]
    rp: IPAddress | None = None


Key = tuple[IPAddress | None, IPAddress]  # (source or None for (*,G), group)


class JoinState:
    """Downstream (*,G), (S,G) and (S,G,rpt) state from the Join/Prunes addressed to us."""

    def __init__(self) -> None:
        self._joins: dict[Key, _Entry] = {}
        self._rpt_prunes: dict[Key, _Entry] = {}  # (S,G,rpt): interfaces where S is pruned off the shared tree
        self.ignored = 0  # Join/Prunes for another upstream neighbour
        self.rp_mismatch = 0  # (*,G) entries naming another RP than ours
        self.table_full = 0  # Joins for new entries beyond MAX_ENTRIES

    # ------------------------------------------------------------------------------------------- events

    def on_join_prune(
        self,
        interface: str,
        msg: JoinPrune,
        ours: frozenset[IPAddress],
        now: float,
        rp_of: Callable[[IPAddress], IPAddress | None] = lambda group: None,
    ) -> bool:
        """Apply a Join/Prune heard on `interface`; `ours` are our addresses there. True when a route changed.
        A (*,G) Join or Prune naming another RP than ours for G (`rp_of`) is dropped (RFC 7761 §4.5.2), and
        counted; with no RP known for G it is taken."""
        if msg.upstream_neighbor not in ours:
            self.ignored += 1
            return self._override_by_others(interface, msg)
        before = self.routes_key()
        for g in msg.groups:
            group = g.group.address
            rp = rp_of(group)
            for src in g.joins:
                if src.wildcard and src.rpt and rp is not None and src.address != rp:
                    self.rp_mismatch += 1
                elif src.wildcard and src.rpt:
                    self._join(self._joins, (None, group), interface, msg.holdtime, now, rp=src.address)
                elif src.rpt:
                    self._forget(self._rpt_prunes, (src.address, group), interface)  # (S,G,rpt) Join: unprune
                else:
                    self._join(self._joins, (src.address, group), interface, msg.holdtime, now)
            for src in g.prunes:
                if src.wildcard and src.rpt and rp is not None and src.address != rp:
                    self.rp_mismatch += 1
                elif src.wildcard and src.rpt:
                    self._prune(self._joins, (None, group), interface, now)
                elif src.rpt:
                    self._join(self._rpt_prunes, (src.address, group), interface, msg.holdtime, now)
                else:
                    self._prune(self._joins, (src.address, group), interface, now)
        return self.routes_key() != before

    def _override_by_others(self, interface: str, msg: JoinPrune) -> bool:
        """Another router's Join on the link cancels a pending Prune for the same entry (prune override):
        it keeps wanting the traffic that a neighbour on the same LAN asked to prune."""
        for g in msg.groups:
            for src in g.joins:
                key: Key = (None if src.wildcard else src.address, g.group.address)
                if src.rpt and not src.wildcard:
                    continue
                entry = self._joins.get(key)
                state = entry.interfaces.get(interface) if entry else None
                if state is not None:
                    state.prune_pending_until = None
        return False

    def _join(
        self,
        table: dict[Key, _Entry],
        key: Key,
        interface: str,
        holdtime: int,
        now: float,
        rp: IPAddress | None = None,
    ) -> None:
        if key not in table and len(self._joins) + len(self._rpt_prunes) >= MAX_ENTRIES:
            self.table_full += 1
            return
        entry = table.setdefault(key, _Entry(now, {}, rp))
        if rp is not None:
            entry.rp = rp
        state = entry.interfaces.get(interface)
        expires = now + holdtime
        if state is None:
            entry.interfaces[interface] = _Downstream(expires)
        else:
            state.expires_at = max(state.expires_at, expires) if state.prune_pending_until is None else expires
            state.prune_pending_until = None

    @staticmethod
    def _prune(table: dict[Key, _Entry], key: Key, interface: str, now: float) -> None:
        entry = table.get(key)
        state = entry.interfaces.get(interface) if entry else None
        if state is not None and state.prune_pending_until is None:
            state.prune_pending_until = now + JP_OVERRIDE_INTERVAL

    @staticmethod
    def _forget(table: dict[Key, _Entry], key: Key, interface: str) -> None:
        entry = table.get(key)
        if entry is not None:
            entry.interfaces.pop(interface, None)
            if not entry.interfaces:
                del table[key]

    def on_timer(self, now: float) -> bool:
        """Expire downstream state and finish pending prunes; True when a route changed."""
        before = self.routes_key()
        for table in (self._joins, self._rpt_prunes):
            for key, entry in list(table.items()):
                for name, state in list(entry.interfaces.items()):
                    pending = state.prune_pending_until
                    if state.expires_at <= now or (pending is not None and pending <= now):
                        del entry.interfaces[name]
                if not entry.interfaces:
                    del table[key]
        return self.routes_key() != before

    def forget_interface(self, interface: str) -> bool:
        """PIM stopped on an interface (or its neighbours left): its downstream state goes with it."""
        before = self.routes_key()
        for table in (self._joins, self._rpt_prunes):
            for key in list(table):
                self._forget(table, key, interface)
        return self.routes_key() != before

    def next_deadline(self) -> float | None:
        times: list[float] = []
        for table in (self._joins, self._rpt_prunes):
            for entry in table.values():
                for state in entry.interfaces.values():
                    times.append(state.expires_at)
                    if state.prune_pending_until is not None:
                        times.append(state.prune_pending_until)
        return min(times, default=None)

    # ------------------------------------------------------------------------------------------ queries

    @property
    def empty(self) -> bool:
        return not self._joins

    def routes(self) -> list[Mroute]:
        """Outgoing interface lists; an interface in prune-pending still forwards until the prune is final."""
        found: list[Mroute] = []
        for (source, group), entry in self._joins.items():
            oifs = set(entry.interfaces)
            if source is not None:
                star = self._joins.get((None, group))
                pruned = self._rpt_prunes.get((source, group))
                if star is not None:
                    oifs |= set(star.interfaces) - (set(pruned.interfaces) if pruned else set())
            kind = EntryType.STAR_G if source is None else EntryType.SG
            found.append(Mroute(source, group, tuple(sorted(oifs)), kind, entry.created_at, entry.rp))
        return sorted(found, key=lambda m: (m.group.version, m.group, m.source is not None, str(m.source)))

    def routes_key(self) -> tuple[tuple[object, ...], ...]:
        return tuple((m.source, m.group, m.output_interfaces) for m in self.routes())

    def outputs_for(self, group: IPAddress, source: IPAddress | None) -> tuple[str, ...]:
        """The interfaces PIM wants (S,G) traffic on (source None: the shared tree's only)."""
        star = self._joins.get((None, group))
        oifs = set(star.interfaces) if star else set()
        if source is not None:
            pruned = self._rpt_prunes.get((source, group))
            if pruned:
                oifs -= set(pruned.interfaces)
            sg = self._joins.get((source, group))
            if sg:
                oifs |= set(sg.interfaces)
        return tuple(sorted(oifs))


# ------------------------------------------------------------------------------------------------ RPs

Network = IPv4Network | IPv6Network


def parse_group_prefix(text: str) -> Network:
    """`239.1.0.0/16` (a bare address is a host prefix); it must lie in the multicast range."""
    try:
        net = ip_network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"invalid group prefix '{text}': {e}") from None
    if not net.network_address.is_multicast or not net.broadcast_address.is_multicast:
        raise ValueError(f"group prefix '{text}' is not within the multicast range (224.0.0.0/4, ff00::/8)")
    return net


@dataclass(frozen=True, slots=True)
class StaticRp:
    prefix: Network
    rp: IPAddress


class RpTable:
    """Static group-to-RP mappings, looked up by longest prefix."""

    def __init__(self) -> None:
        self._rps: dict[Network, IPAddress] = {}

    def set(self, prefix: Network, rp: IPAddress) -> None:
        if prefix.version != rp.version:
            raise ValueError(f"RP {rp} is not of the family of {prefix}")
        self._rps[prefix] = rp

    def remove(self, prefix: Network) -> bool:
        return self._rps.pop(prefix, None) is not None

    def lookup(self, group: IPAddress) -> IPAddress | None:
        best: Network | None = None
        for prefix in self._rps:
            if (
                prefix.version == group.version
                and group in prefix
                and (best is None or prefix.prefixlen > best.prefixlen)
            ):
                best = prefix
        return None if best is None else self._rps[best]

    def addresses(self) -> frozenset[IPAddress]:
        """Every RP address configured."""
        return frozenset(self._rps.values())

    def entries(self) -> list[StaticRp]:
        return [StaticRp(p, r) for p, r in sorted(self._rps.items(), key=lambda i: (i[0].version, i[0]))]
