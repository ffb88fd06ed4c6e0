"""Downstream Join/Prune state and the static RP table, with a fake clock."""

from ipaddress import IPv4Address, ip_network

import pytest

from mcr.routing.pim_joins import EntryType, JoinState, RpTable, parse_group_prefix
from mcr.routing.pim_wire import EncodedGroup, EncodedSource, JoinPrune, JoinPruneGroup

US = IPv4Address("10.1.0.1")
OTHER = IPv4Address("10.1.0.7")
RP = IPv4Address("10.9.9.9")
S = IPv4Address("10.5.0.5")
G = IPv4Address("239.1.1.1")
OURS = frozenset({US})

STAR = EncodedSource(RP, 32, wildcard=True, rpt=True)
SG = EncodedSource(S, 32)
SG_RPT = EncodedSource(S, 32, rpt=True)


def jp(
    joins: tuple[EncodedSource, ...] = (),
    prunes: tuple[EncodedSource, ...] = (),
    upstream: IPv4Address = US,
    hold: int = 210,
) -> JoinPrune:
    return JoinPrune(upstream, hold, (JoinPruneGroup(EncodedGroup(G, 32), joins, prunes),))


def test_star_g_join_for_us_creates_route_and_expires_after_holdtime() -> None:
    state = JoinState()
    assert state.on_join_prune("eth1", jp(joins=(STAR,), hold=100), OURS, now=0.0)
    (route,) = state.routes()
    assert (route.source, route.group, route.output_interfaces, route.entry_type) == (
        None,
        G,
        ("eth1",),
        EntryType.STAR_G,
    )
    assert route.rp == RP
    assert state.next_deadline() == 100.0
    assert not state.on_timer(99.9)
    assert state.on_timer(100.0) and state.routes() == []


def test_join_for_another_upstream_neighbour_is_ignored() -> None:
    state = JoinState()
    assert not state.on_join_prune("eth1", jp(joins=(STAR,), upstream=OTHER), OURS, now=0.0)
    assert state.routes() == [] and state.ignored == 1


def test_prune_waits_the_override_interval_and_a_join_from_another_router_overrides_it() -> None:
    state = JoinState()
    state.on_join_prune("eth1", jp(joins=(STAR,)), OURS, now=0.0)
    state.on_join_prune("eth1", jp(prunes=(STAR,)), OURS, now=10.0)
    assert state.routes()[0].output_interfaces == ("eth1",)  # prune-pending still forwards
    assert state.next_deadline() == 13.0
    # another downstream router on the LAN still wants it: its Join (to us) overrides the prune
    state.on_join_prune("eth1", jp(joins=(STAR,)), OURS, now=11.0)
    assert not state.on_timer(13.0)
    assert state.routes()[0].output_interfaces == ("eth1",)
    # a prune nobody overrides takes effect after the interval
    state.on_join_prune("eth1", jp(prunes=(STAR,)), OURS, now=20.0)
    assert state.on_timer(23.0) and state.routes() == []


def test_override_seen_in_a_join_to_another_upstream() -> None:
    state = JoinState()
    state.on_join_prune("eth1", jp(joins=(STAR,)), OURS, now=0.0)
    state.on_join_prune("eth1", jp(prunes=(STAR,)), OURS, now=1.0)
    state.on_join_prune("eth1", jp(joins=(STAR,), upstream=OTHER), OURS, now=2.0)
    assert not state.on_timer(5.0)
    assert state.routes()[0].output_interfaces == ("eth1",)


def test_sg_inherits_the_shared_tree_minus_sg_rpt_prunes() -> None:
    state = JoinState()
    state.on_join_prune("eth1", jp(joins=(STAR,)), OURS, now=0.0)
    state.on_join_prune("eth2", jp(joins=(STAR,)), OURS, now=0.0)
    state.on_join_prune("eth3", jp(joins=(SG,)), OURS, now=0.0)
    assert state.outputs_for(G, S) == ("eth1", "eth2", "eth3")
    state.on_join_prune("eth2", jp(prunes=(SG_RPT,)), OURS, now=1.0)
    assert state.outputs_for(G, S) == ("eth1", "eth3")
    assert state.outputs_for(G, None) == ("eth1", "eth2")
    sg = next(r for r in state.routes() if r.source == S)
    assert sg.entry_type is EntryType.SG and sg.output_interfaces == ("eth1", "eth3")
    state.on_join_prune("eth2", jp(joins=(SG_RPT,)), OURS, now=2.0)  # (S,G,rpt) Join: unpruned
    assert state.outputs_for(G, S) == ("eth1", "eth2", "eth3")


def test_forget_interface() -> None:
    state = JoinState()
    state.on_join_prune("eth1", jp(joins=(STAR, SG)), OURS, now=0.0)
    assert state.forget_interface("eth1") and state.routes() == []


@pytest.mark.parametrize(
    ("group", "rp"),
    [("239.1.1.1", "10.0.0.3"), ("239.1.2.1", "10.0.0.2"), ("239.2.0.1", "10.0.0.1"), ("225.0.0.1", None)],
)
def test_rp_by_longest_prefix(group: str, rp: str | None) -> None:
    table = RpTable()
    table.set(parse_group_prefix("239.0.0.0/8"), IPv4Address("10.0.0.1"))
    table.set(parse_group_prefix("239.1.0.0/16"), IPv4Address("10.0.0.2"))
    table.set(parse_group_prefix("239.1.1.0/24"), IPv4Address("10.0.0.3"))
    assert table.lookup(IPv4Address(group)) == (IPv4Address(rp) if rp else None)


def test_group_prefix_must_be_multicast() -> None:
    assert parse_group_prefix("224.0.0.0/4") == ip_network("224.0.0.0/4")
    with pytest.raises(ValueError, match="not within the multicast range"):
        parse_group_prefix("10.0.0.0/8")
    with pytest.raises(ValueError, match="invalid group prefix"):
        parse_group_prefix("239.1.1.1/16")
    with pytest.raises(ValueError, match="not of the family"):
        RpTable().set(parse_group_prefix("ff3e::/16"), IPv4Address("10.0.0.1"))


def test_star_g_join_naming_another_rp_than_ours_is_dropped() -> None:
    state = JoinState()
    ours_is_elsewhere = IPv4Address("10.9.9.1")
    assert not state.on_join_prune("eth1", jp(joins=(STAR,)), OURS, 0.0, lambda g: ours_is_elsewhere)
    assert state.routes() == [] and state.rp_mismatch == 1
    assert state.on_join_prune("eth1", jp(joins=(STAR,)), OURS, 0.0, lambda g: RP)  # the same RP: taken
    assert state.on_join_prune("eth2", jp(joins=(STAR, SG)), OURS, 0.0, lambda g: None)  # no RP known: taken
