"""Assert on shared LANs (RFC 7761 §4.6), pure: Asserts heard in, our replies and lost interfaces out.

When two routers forward the same traffic onto one LAN, they Assert and the worse one stops. We never
see data in the supervisor, so we do not start Asserts; we answer them. For an interface on which PIM
makes us forward group G (a downstream Join), our metric is the RP's when we are G's RP (RPT bit set,
preference 0, metric 0) and unknown otherwise (we have no unicast routing table): then any router that
asserts wins, which is what a relay without routes should do. Comparison: an SPT Assert (RPT bit clear)
beats an RPT one, then the lower preference, the lower metric, the higher address.

- A better Assert makes us the loser on that interface for Assert_Time (180 s, restarted by each of its
  Asserts); the supervisor then removes the interface from the outputs PIM added for G (for every source:
  a rule relays a group whatever its source, so the loss is per group, coarser than the RFC's (S,G)).
- A worse Assert gets our own Assert in reply (we win), and any loss we had for it ends.
- An AssertCancel (infinite preference and metric) from the winner ends our loss at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcr.routing.pim_wire import Assert, IPAddress

ASSERT_TIME = 180.0
INFINITE_PREFERENCE = 0x7FFFFFFF
INFINITE_METRIC = 0xFFFFFFFF


@dataclass(frozen=True, slots=True, order=True)
class AssertMetric:
    """Ordered so that the better metric is the larger: SPT over RPT, then lower preference and metric,
    then the higher address."""

    spt: bool
    neg_preference: int
    neg_metric: int
    address: IPAddress

    @classmethod
    def of(cls, rpt: bool, preference: int, metric: int, address: IPAddress) -> AssertMetric:
        return cls(not rpt, -preference, -metric, address)

    @property
    def infinite(self) -> bool:
        return -self.neg_preference == INFINITE_PREFERENCE and -self.neg_metric == INFINITE_METRIC


@dataclass(frozen=True, slots=True)
class LostAssert:
    interface: str
    group: IPAddress
    source: IPAddress
    winner: IPAddress
    expires_at: float


class AssertState:
    def __init__(self) -> None:
        self._lost: dict[tuple[str, IPAddress, IPAddress], LostAssert] = {}

    def on_assert(
        self, interface: str, sender: IPAddress, msg: Assert, ours: AssertMetric | None, now: float
    ) -> tuple[Assert | None, bool]:
        """(our Assert to send in reply, whether the set of lost interfaces changed). `ours` is None when we
        do not forward G on `interface` (then the Assert is none of our business)."""
        key = (interface, msg.group.address, msg.source)
        theirs = AssertMetric.of(msg.rpt, msg.metric_preference, msg.metric, sender)
        old = self._lost.get(key)
        if theirs.infinite:  # AssertCancel: the winner stops forwarding
            if old is not None and old.winner == sender:
                del self._lost[key]
                return None, True
            return None, False
        if ours is None:
            return None, False
        if theirs > ours:
            self._lost[key] = LostAssert(interface, msg.group.address, msg.source, sender, now + ASSERT_TIME)
            return None, old is None
        if old is not None:
            del self._lost[key]
        if ours.infinite:
            return None, old is not None  # nothing to assert with: we stay quiet
        reply = Assert(msg.group, msg.source, not ours.spt, -ours.neg_preference, -ours.neg_metric)
        return reply, old is not None

    def lost_groups(self, interface: str) -> set[IPAddress]:
        return {g for (i, g, _), _lost in self._lost.items() if i == interface}

    def is_lost(self, interface: str, group: IPAddress) -> bool:
        return any(i == interface and g == group for i, g, _ in self._lost)

    def on_timer(self, now: float) -> bool:
        gone = [k for k, v in self._lost.items() if v.expires_at <= now]
        for k in gone:
            del self._lost[k]
        return bool(gone)

    def next_deadline(self) -> float | None:
        return min((v.expires_at for v in self._lost.values()), default=None)

    def forget_interface(self, interface: str) -> bool:
        gone = [k for k in self._lost if k[0] == interface]
        for k in gone:
            del self._lost[k]
        return bool(gone)

    def lost(self) -> list[LostAssert]:
        return sorted(self._lost.values(), key=lambda v: (v.interface, str(v.group), str(v.source)))


def our_metric(group: IPAddress, rp: IPAddress | None, address: IPAddress, ours: frozenset[IPAddress]) -> AssertMetric:
    """Our Assert metric on an interface whose address is `address`: the RP's own when we are G's RP."""
    if rp is not None and rp in ours:
        return AssertMetric.of(True, 0, 0, address)
    return AssertMetric.of(True, INFINITE_PREFERENCE, INFINITE_METRIC, address)
