"""Assert on a shared LAN: who wins, what we answer, how long a loss lasts, and what it does to outputs."""

from ipaddress import IPv4Address

from mcr.model.rules import ForwardingRule
from mcr.routing.pim_assert import (
    ASSERT_TIME,
    INFINITE_METRIC,
    INFINITE_PREFERENCE,
    AssertMetric,
    AssertState,
    our_metric,
)
from mcr.routing.pim_joins import JoinState
from mcr.routing.pim_wire import Assert, EncodedGroup, EncodedSource, JoinPrune, JoinPruneGroup
from mcr.supervisor.pim import merge_pim_outputs

US = IPv4Address("10.0.0.5")
HIGH = IPv4Address("10.0.0.9")
LOW = IPv4Address("10.0.0.2")
G = IPv4Address("239.1.1.1")
S = IPv4Address("10.7.7.7")
EG = EncodedGroup(G, 32)
AS_RP = our_metric(G, US, US, frozenset({US}))  # we are the RP: RPT, preference 0, metric 0
UNKNOWN = our_metric(G, IPv4Address("10.9.9.9"), US, frozenset({US}))


def test_metric_order() -> None:
    assert AssertMetric.of(False, 200, 50, LOW) > AssertMetric.of(True, 0, 0, HIGH)  # SPT beats RPT
    assert AssertMetric.of(True, 10, 50, LOW) > AssertMetric.of(True, 20, 0, HIGH)  # then preference
    assert AssertMetric.of(True, 10, 5, LOW) > AssertMetric.of(True, 10, 6, HIGH)  # then metric
    assert AssertMetric.of(True, 10, 5, HIGH) > AssertMetric.of(True, 10, 5, LOW)  # then address
    assert UNKNOWN.infinite and not AS_RP.infinite


def test_a_better_assert_makes_us_lose_for_assert_time() -> None:
    state = AssertState()
    reply, changed = state.on_assert("eth0", HIGH, Assert(EG, S, False, 110, 20), AS_RP, now=0.0)
    assert reply is None and changed and state.is_lost("eth0", G)
    assert state.next_deadline() == ASSERT_TIME
    assert state.on_assert("eth0", HIGH, Assert(EG, S, False, 110, 20), AS_RP, now=100.0) == (None, False)
    assert not state.on_timer(100.0 + ASSERT_TIME - 1) and state.on_timer(100.0 + ASSERT_TIME)
    assert not state.is_lost("eth0", G)


def test_a_worse_assert_gets_our_assert_in_reply() -> None:
    state = AssertState()
    reply, changed = state.on_assert("eth0", HIGH, Assert(EG, S, True, 120, 5), AS_RP, now=0.0)
    assert reply == Assert(EG, S, True, 0, 0) and not changed and not state.is_lost("eth0", G)


def test_without_routes_we_yield_and_when_not_forwarding_we_ignore() -> None:
    state = AssertState()
    assert state.on_assert("eth0", LOW, Assert(EG, S, True, 120, 5), UNKNOWN, 0.0) == (None, True)
    assert state.on_assert("eth1", LOW, Assert(EG, S, True, 120, 5), None, 0.0) == (None, False)
    assert state.lost_groups("eth0") == {G} and state.lost_groups("eth1") == set()


def test_assert_cancel_from_the_winner_ends_the_loss() -> None:
    state = AssertState()
    state.on_assert("eth0", HIGH, Assert(EG, S, False, 110, 20), AS_RP, 0.0)
    cancel = Assert(EG, S, True, INFINITE_PREFERENCE, INFINITE_METRIC)
    assert state.on_assert("eth0", LOW, cancel, AS_RP, 1.0) == (None, False)  # not from the winner
    assert state.on_assert("eth0", HIGH, cancel, AS_RP, 2.0) == (None, True)
    assert not state.is_lost("eth0", G)


def test_a_lost_interface_is_no_output() -> None:
    joins = JoinState()
    star = EncodedSource(US, 32, wildcard=True, rpt=True)
    for i in ("eth1", "eth2"):
        joins.on_join_prune(i, JoinPrune(US, 210, (JoinPruneGroup(EG, (star,)),)), frozenset({US}), 0.0)
    asserts = AssertState()
    asserts.on_assert("eth1", HIGH, Assert(EG, S, False, 1, 1), AS_RP, 0.0)
    (rule,) = merge_pim_outputs([ForwardingRule("r", "eth0", G, 5000, ())], joins, asserts)
    assert [o.interface for o in rule.outputs] == ["eth2"]
