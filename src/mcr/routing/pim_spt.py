"""Last-hop switchover to the shortest-path tree (RFC 7761 §4.2.1, §4.5.7-4.5.8), pure.

A rule for any source of G on a PIM interface I pulls G down the shared tree ((*,G) toward the RP). When
a packet of G from a new source S arrives there, the policy `immediate` (the RFC's and FRR's default)
makes us join S's own tree: `sources` lists S, the shell adds an (S,G) Join toward S (RPF'(S,G): S when it
is a neighbour on I, else I's only neighbour). Policy `never` (FRR's `spt-switchover
infinity-and-beyond`) stays on the shared tree.

Both trees deliver on the same link I, so the RFC's interface test cannot tell them apart; the link-layer
sender can: a packet of S sent by another router than the one that delivered S on the shared tree has come
down the SPT. Then (the SPT bit) S is pruned off the shared tree with an (S,G,rpt) Prune toward RPF'(*,G),
when that is another neighbour than RPF'(S,G) (the shell decides; with the same neighbour, one router
carries both trees and nothing is pruned, and the SPT bit is set at once). A source whose SPT data does
not show within `SPT_CONFIRM_TIME` stays joined on its SPT but is not pruned off the shared tree.

The shell sees packets through a kernel filter that drops the settled sources (`settled`), so a stream
costs the supervisor its first packets only. A settled source is kept for the Keepalive period (210 s),
then looked at again for `SOURCE_PROBE_TIME`: a packet keeps it, silence ends it (its Joins and Prunes go).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from ipaddress import IPv4Address, IPv6Address

from mcr.packet.cbpf import ACCEPT, DROP, SKF_AD_OFF, SKF_AD_PKTTYPE, Insn, Op, PacketType
from mcr.routing.pim_dr_register import match_ipv6
from mcr.routing.pim_upstream import UpstreamEntry
from mcr.routing.pim_wire import IPAddress

KEEPALIVE_PERIOD = 210.0
SOURCE_PROBE_TIME = 10.0
SPT_CONFIRM_TIME = 10.0
MAX_SOURCES_PER_GROUP = 200  # per (interface, group), for the filter's 8-bit jumps; more stay on the RPT, counted


class SptPolicy(Enum):
    IMMEDIATE = "immediate"
    NEVER = "never"


class SourceState(Enum):
    SWITCHING = "switching"  # (S,G) joined, waiting for data from the SPT (read: in the filter)
    SETTLED = "settled"  # on the SPT (or given up waiting): dropped by the filter
    PROBING = "probing"  # the Keepalive period ran out: read again to see whether S still sends


@dataclass(frozen=True, slots=True)
class SptSource:
    interface: str
    group: IPAddress
    source: IPAddress
    rpt_sender: bytes  # the link-layer address that delivered S on the shared tree
    state: SourceState
    spt_bit: bool
    deadline: float  # SWITCHING: give up waiting; SETTLED: the Keepalive period; PROBING: the end
    by_sender: bool = False  # the SPT bit came from SPT data (not from both Joins going to one neighbour)


Key = tuple[str, IPAddress, IPAddress]  # (interface, group, source)


class SptSwitch:
    """The sources we switched to their SPT, per (interface, group)."""

    def __init__(self, policy: SptPolicy = SptPolicy.IMMEDIATE) -> None:
        self.policy = policy
        self._sources: dict[Key, SptSource] = {}
        self.table_full = 0  # sources not switched: MAX_SOURCES_PER_GROUP reached
        self.unconfirmed = 0  # sources whose SPT data did not show within SPT_CONFIRM_TIME

    def on_data(
        self,
        interface: str,
        group: IPAddress,
        source: IPAddress,
        sender: bytes,
        same_upstream: bool,
        now: float,
        local: bool = False,
    ) -> bool:
        """A packet of G from S arrived on `interface` from link-layer `sender`; `same_upstream`: RPF'(S,G) is
        RPF'(*,G) (or no separate one); `local`: S is directly connected there (kept whatever the policy, so
        that its DR registers it). Whether the set of sources or SPT bits changed."""
        if self.policy is SptPolicy.NEVER and not local:
            return False
        key = (interface, group, source)
        entry = self._sources.get(key)
        if entry is None:
            if sum(1 for k in self._sources if k[:2] == (interface, group)) >= MAX_SOURCES_PER_GROUP:
                self.table_full += 1
                return False
            if same_upstream:
                self._sources[key] = SptSource(
                    interface, group, source, sender, SourceState.SETTLED, True, now + KEEPALIVE_PERIOD
                )
            else:
                self._sources[key] = SptSource(
                    interface, group, source, sender, SourceState.SWITCHING, False, now + SPT_CONFIRM_TIME
                )
            return True
        if entry.state is SourceState.PROBING:
            self._sources[key] = replace(entry, state=SourceState.SETTLED, deadline=now + KEEPALIVE_PERIOD)
            return True
        if entry.state is SourceState.SWITCHING and (same_upstream or sender != entry.rpt_sender):
            self._sources[key] = replace(
                entry,
                state=SourceState.SETTLED,
                spt_bit=True,
                deadline=now + KEEPALIVE_PERIOD,
                by_sender=sender != entry.rpt_sender,
            )
            return True
        return False

    def reconsider(self, keys: Iterable[Key], now: float) -> bool:
        """These sources' SPT bit rested on both Joins going to one neighbour, which no longer holds (a route
        moved, a neighbour came): back to waiting for their SPT data (read again). Whether any changed."""
        changed = False
        for key in keys:
            entry = self._sources.get(key)
            if entry is not None and entry.spt_bit and not entry.by_sender:
                self._sources[key] = replace(
                    entry, state=SourceState.SWITCHING, spt_bit=False, deadline=now + SPT_CONFIRM_TIME
                )
                changed = True
        return changed

    def on_timer(self, now: float) -> bool:
        changed = False
        for key, entry in list(self._sources.items()):
            if entry.deadline > now:
                continue
            changed = True
            if entry.state is SourceState.SWITCHING:
                self.unconfirmed += 1
                self._sources[key] = replace(entry, state=SourceState.SETTLED, deadline=now + KEEPALIVE_PERIOD)
            elif entry.state is SourceState.SETTLED:
                self._sources[key] = replace(entry, state=SourceState.PROBING, deadline=now + SOURCE_PROBE_TIME)
            else:
                del self._sources[key]
        return changed

    def forget(self, keep: set[tuple[str, IPAddress]]) -> bool:
        """Drop the sources of every (interface, group) not in `keep` (its rule went, or its shared tree)."""
        gone = [k for k in self._sources if k[:2] not in keep]
        for key in gone:
            del self._sources[key]
        return bool(gone)

    def sources(self) -> list[SptSource]:
        return sorted(self._sources.values(), key=lambda s: (s.interface, str(s.group), str(s.source)))

    def settled(self, interface: str, group: IPAddress) -> list[IPAddress]:
        """The sources of G on `interface` the shell need not see (the kernel filter drops them)."""
        return [
            s.source
            for s in self._sources.values()
            if (s.interface, s.group) == (interface, group) and s.state is SourceState.SETTLED
        ]

    def next_deadline(self) -> float | None:
        return min((s.deadline for s in self._sources.values()), default=None)


def _split_upstreams(
    entries: Iterable[UpstreamEntry], sources: Iterable[SptSource]
) -> list[tuple[SptSource, UpstreamEntry]]:
    """The sources whose (S,G) Join goes to another neighbour than their group's (*,G) Join on the same
    interface, each with that (*,G) entry."""
    entries = list(entries)
    star = {(e.interface, e.group): e for e in entries if e.source is None and not e.rpt}
    joined = {(e.interface, e.group, e.source): e for e in entries if e.source is not None and not e.rpt}
    split: list[tuple[SptSource, UpstreamEntry]] = []
    for s in sources:
        shared, own = star.get((s.interface, s.group)), joined.get((s.interface, s.group, s.source))
        if shared is not None and own is not None and own.upstream != shared.upstream:
            split.append((s, shared))
    return split


def rpt_prunes(entries: Iterable[UpstreamEntry], sources: Iterable[SptSource]) -> set[UpstreamEntry]:
    """The (S,G,rpt) Prunes to send: for each source with the SPT bit whose (S,G) Join goes to another
    neighbour than its group's (*,G) Join on the same interface, a Prune toward the (*,G) one."""
    return {
        UpstreamEntry(s.source, s.group, shared.rp, s.interface, shared.upstream, rpt=True)
        for s, shared in _split_upstreams(entries, sources)
        if s.spt_bit
    }


def stale_spt_bits(entries: Iterable[UpstreamEntry], sources: Iterable[SptSource]) -> list[Key]:
    """The sources whose SPT bit was set because both Joins went to one neighbour, and now do not."""
    return [
        (s.interface, s.group, s.source) for s, _ in _split_upstreams(entries, sources) if s.spt_bit and not s.by_sender
    ]


def new_source_filter(group: IPAddress, known: Sequence[IPAddress]) -> list[Insn]:
    """A classic BPF filter for an `AF_PACKET` `SOCK_DGRAM` socket (offset 0: the IP header): packets to
    `group` that the host did not send, from a source not in `known`."""
    if isinstance(group, IPv6Address):
        # each known source: 8 instructions then a DROP, all jumps short (200 sources: 1,800 instructions)
        blocks: list[Insn] = []
        for source in known:
            assert isinstance(source, IPv6Address)
            blocks += [*match_ipv6(8, source, 1), Insn(Op.RET_K, k=DROP)]
        return [
            Insn(Op.LD_B_ABS, k=SKF_AD_OFF + SKF_AD_PKTTYPE),
            Insn(Op.JEQ_K, 0, 1, PacketType.OUTGOING),
            Insn(Op.RET_K, k=DROP),
            *match_ipv6(24, group, 0, 1),
            Insn(Op.RET_K, k=DROP),
            *blocks,
            Insn(Op.RET_K, k=ACCEPT),
            Insn(Op.RET_K, k=DROP),
        ]
    assert isinstance(group, IPv4Address) and all(isinstance(s, IPv4Address) for s in known)
    tail = [Insn(Op.RET_K, k=ACCEPT), Insn(Op.RET_K, k=DROP)]
    checks: list[Insn] = []
    for i, source in enumerate(known):  # each: on a match, jump to the final DROP
        checks.append(Insn(Op.JEQ_K, len(known) - i, 0, int(source)))
    return [
        Insn(Op.LD_B_ABS, k=SKF_AD_OFF + SKF_AD_PKTTYPE),
        Insn(Op.JEQ_K, len(checks) + 4, 0, PacketType.OUTGOING),
        Insn(Op.LD_W_ABS, k=16),
        Insn(Op.JEQ_K, 0, len(checks) + 2, int(group)),
        Insn(Op.LD_W_ABS, k=12),
        *checks,
        *tail,
    ]
