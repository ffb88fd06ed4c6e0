"""Upstream Joins: which trees a rule wants, toward which neighbour, and when Joins and Prunes go out."""

from ipaddress import IPv4Address, ip_network

from mcr.routing.pim_joins import RpTable
from mcr.routing.pim_upstream import T_PERIODIC, Upstream, UpstreamEntry, Wanted, resolve_upstream
from mcr.routing.pim_wire import EncodedGroup, EncodedSource, JoinPrune, JoinPruneGroup

RP = IPv4Address("10.0.0.2")
N2 = IPv4Address("10.0.0.3")
US = IPv4Address("10.0.0.1")
G = IPv4Address("239.1.1.1")
S = IPv4Address("10.9.0.9")
STAR = EncodedSource(RP, 32, wildcard=True, rpt=True)


def rps() -> RpTable:
    table = RpTable()
    table.set(ip_network("239.0.0.0/8"), RP)
    return table


def test_star_g_toward_the_rp_when_it_is_a_neighbour() -> None:
    entries, unresolved = resolve_upstream([Wanted("eth0", G, None)], rps(), {"eth0": [N2, RP]})
    ((e,),) = [list(entries)]
    assert (e.source, e.group, e.rp, e.interface, e.upstream, unresolved) == (None, G, RP, "eth0", RP, [])


def test_single_neighbour_is_upstream_several_without_the_target_is_unresolved() -> None:
    (e,) = resolve_upstream([Wanted("eth0", G, S)], rps(), {"eth0": [N2]})[0]
    assert (e.source, e.upstream) == (S, N2)
    entries, unresolved = resolve_upstream([Wanted("eth0", G, S)], rps(), {"eth0": [N2, RP]})
    assert entries == set() and unresolved == [f"({S},{G}) on eth0: 2 neighbours and none is {S}"]


def test_nothing_without_pim_or_rp_or_when_we_are_the_rp() -> None:
    assert resolve_upstream([Wanted("eth9", G, None)], rps(), {"eth0": [RP]}) == (set(), [])
    other = IPv4Address("238.1.1.1")
    assert resolve_upstream([Wanted("eth0", other, None)], rps(), {"eth0": [RP]})[1] == [
        f"(*,{other}) on eth0: no RP for the group"
    ]
    assert resolve_upstream([Wanted("eth0", G, None)], rps(), {"eth0": [N2]}, frozenset({RP})) == (set(), [])

    # a source directly connected on the interface is not joined: it sends onto the link (its DR registers it)
    wanted = [Wanted("eth0", G, S)]
    assert resolve_upstream(wanted, rps(), {"eth0": [N2]}, connected=frozenset({("eth0", S)})) == (set(), [])
    assert resolve_upstream(wanted, rps(), {"eth0": [N2]}, connected=frozenset({("eth1", S)}))[0] != set()


def test_several_neighbours_the_unicast_route_picks_the_upstream_one() -> None:
    def gateway(interface: str, target: object) -> IPv4Address | None:
        return N2 if (interface, target) == ("eth0", S) else None

    (e,) = resolve_upstream([Wanted("eth0", G, S)], rps(), {"eth0": [N2, RP]}, gateway=gateway)[0]
    assert e.upstream == N2
    # a next hop that is not a PIM neighbour there does not count
    entries, unresolved = resolve_upstream([Wanted("eth0", G, S)], rps(), {"eth0": [US, RP]}, gateway=gateway)
    assert entries == set() and unresolved


def test_join_at_once_refresh_every_period_prune_when_gone() -> None:
    up = Upstream()
    entries, _ = resolve_upstream([Wanted("eth0", G, None)], rps(), {"eth0": [RP]})
    (join,) = up.update(entries, [], now=0.0)
    assert join.interface == "eth0"
    assert join.message == JoinPrune(RP, 210, (JoinPruneGroup(EncodedGroup(G, 32), (STAR,), ()),))
    assert up.update(entries, [], now=1.0) == []
    assert up.next_deadline() == T_PERIODIC
    assert [m.message for m in up.on_timer(T_PERIODIC)] == [join.message]
    assert up.on_neighbor_restart("eth0", RP)[0].message == join.message
    assert up.on_neighbor_restart("eth0", N2) == []
    (prune,) = up.update(set(), [], now=70.0)
    assert prune.message == JoinPrune(RP, 210, (JoinPruneGroup(EncodedGroup(G, 32), (), (STAR,)),))
    assert up.next_deadline() is None


def test_a_new_upstream_gets_the_join_the_old_one_the_prune() -> None:
    up = Upstream()
    up.update(resolve_upstream([Wanted("eth0", G, S)], rps(), {"eth0": [N2]})[0], [], 0.0)
    messages = up.update(resolve_upstream([Wanted("eth0", G, S)], rps(), {"eth0": [S, N2]})[0], [], 1.0)
    assert {(m.message.upstream_neighbor, bool(m.message.groups[0].joins)) for m in messages} == {
        (S, True),
        (N2, False),
    }


def joined_star() -> Upstream:
    up = Upstream()
    up.update(resolve_upstream([Wanted("eth0", G, None)], rps(), {"eth0": [RP]})[0], [], now=0.0)
    return up


def test_another_routers_join_to_the_same_upstream_suppresses_our_periodic_join() -> None:
    up = joined_star()
    others = JoinPrune(RP, 210, (JoinPruneGroup(EncodedGroup(G, 32), (STAR,), ()),))
    up.on_others_join_prune("eth0", others, now=30.0, suppressed=70.0, override=1.0)
    assert up.next_deadline() == 100.0 and up.on_timer(60.0) == []
    # a Join for another group, another upstream or another interface suppresses nothing
    other_group = JoinPrune(RP, 210, (JoinPruneGroup(EncodedGroup(IPv4Address("239.9.9.9"), 32), (STAR,), ()),))
    up2 = joined_star()
    up2.on_others_join_prune("eth0", other_group, 30.0, 70.0, 1.0)
    up2.on_others_join_prune("eth1", others, 30.0, 70.0, 1.0)
    up2.on_others_join_prune("eth0", JoinPrune(N2, 210, others.groups), 30.0, 70.0, 1.0)
    assert up2.next_deadline() == T_PERIODIC


def test_another_routers_prune_is_overridden_by_our_join_soon() -> None:
    up = joined_star()
    prune = JoinPrune(RP, 210, (JoinPruneGroup(EncodedGroup(G, 32), (), (STAR,)),))
    up.on_others_join_prune("eth0", prune, now=10.0, suppressed=70.0, override=1.5)
    assert up.next_deadline() == 11.5
    (join,) = up.on_timer(11.5)
    assert join.message.groups[0].joins == (STAR,) and up.next_deadline() == 11.5 + T_PERIODIC
    # an (S,G) Prune does not touch our (*,G) entry
    sg_prune = JoinPrune(RP, 210, (JoinPruneGroup(EncodedGroup(G, 32), (), (EncodedSource(S, 32),)),))
    up.on_others_join_prune("eth0", sg_prune, now=20.0, suppressed=70.0, override=1.0)
    assert up.next_deadline() == 11.5 + T_PERIODIC


def test_rpt_prune_goes_with_the_star_g_join_and_its_removal_is_a_join() -> None:
    up = Upstream()
    star = UpstreamEntry(None, G, RP, "eth0", RP)
    up.update({star}, [], now=0.0)
    rpt = UpstreamEntry(S, G, RP, "eth0", RP, rpt=True)
    (msg,) = up.update({star, rpt}, [], now=10.0)
    spt_source = EncodedSource(S, 32, rpt=True)
    assert msg.message.groups == (JoinPruneGroup(EncodedGroup(G, 32), (STAR,), (spt_source,)),)
    # from then on they are refreshed together
    assert up.on_timer(10.0 + T_PERIODIC - 1) == []
    (msg,) = up.on_timer(10.0 + T_PERIODIC)
    assert msg.message.groups == (JoinPruneGroup(EncodedGroup(G, 32), (STAR,), (spt_source,)),)
    # S back on the shared tree: a Join(S,G,rpt)
    (msg,) = up.update({star}, [], now=80.0)
    assert msg.message.groups == (JoinPruneGroup(EncodedGroup(G, 32), (spt_source,), ()),)


def test_rpt_prune_is_dropped_silently_when_the_shared_tree_goes_too() -> None:
    up = Upstream()
    star = UpstreamEntry(None, G, RP, "eth0", RP)
    rpt = UpstreamEntry(S, G, RP, "eth0", RP, rpt=True)
    up.update({star, rpt}, [], now=0.0)
    (msg,) = up.update(set(), [], now=1.0)
    assert msg.message.groups == (JoinPruneGroup(EncodedGroup(G, 32), (), (STAR,)),)
