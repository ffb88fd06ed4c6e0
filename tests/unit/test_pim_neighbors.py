"""PIM neighbour discovery and DR election, driven with a fake clock."""

from ipaddress import IPv4Address

import pytest

from mcr.routing.pim_neighbors import (
    DownReason,
    DrChanged,
    InterfaceSettings,
    Neighbor,
    NeighborDown,
    NeighborRestarted,
    NeighborUp,
    PimNeighbors,
    SendHello,
    elect_dr,
)
from mcr.routing.pim_wire import Hello

US = IPv4Address("10.1.0.5")
A = IPv4Address("10.1.0.9")
B = IPv4Address("10.1.0.2")


def core(priority: int = 1) -> PimNeighbors:
    pim = PimNeighbors()
    pim.enable(InterfaceSettings("eth0", US, dr_priority=priority), generation_id=77, now=0.0)
    return pim


def sent(actions: list[object]) -> list[Hello]:
    return [a.hello for a in actions if isinstance(a, SendHello)]


def test_first_hello_then_one_per_period_with_holdtime_priority_and_genid() -> None:
    pim = core(priority=3)
    assert sent(pim.on_timer(0.0)) == [Hello(105, 3, 77)]
    assert sent(pim.on_timer(29.9)) == []
    assert sent(pim.on_timer(30.0)) == [Hello(105, 3, 77)]
    assert pim.next_deadline() == 60.0


def test_new_neighbour_is_up_triggers_a_hello_and_expires_after_its_holdtime() -> None:
    pim = core()
    pim.on_timer(0.0)
    actions = pim.on_hello("eth0", A, Hello(35, 1, 1), now=10.0, delay=2.0)
    assert isinstance(actions[0], NeighborUp) and actions[0].neighbor.address == A
    assert DrChanged("eth0", A, False) in actions
    assert pim.next_deadline() == 12.0  # the triggered Hello, before the periodic one at 30
    assert sent(pim.on_timer(12.0)) == [Hello(105, 1, 77)]
    pim.on_hello("eth0", A, Hello(35, 1, 1), now=20.0)  # refreshed: expires at 55
    assert sent(pim.on_timer(54.9)) == [Hello(105, 1, 77)]  # the periodic Hello at 42; the neighbour stays
    assert pim.neighbors()[0].address == A
    actions = pim.on_timer(55.0)
    assert NeighborDown(pim_neighbor(A, 35, 1, 1, 55.0, 10.0), DownReason.EXPIRED) in actions
    assert DrChanged("eth0", US, True) in actions
    assert pim.neighbors() == []


def pim_neighbor(addr: IPv4Address, hold: int, prio: int | None, genid: int | None, exp: float, up: float) -> Neighbor:
    return Neighbor("eth0", addr, hold, prio, genid, exp, up)


def test_goodbye_removes_the_neighbour_at_once() -> None:
    pim = core()
    pim.on_hello("eth0", A, Hello(105, 1, 1), now=1.0)
    actions = pim.on_hello("eth0", A, Hello(0, 1, 1), now=2.0)
    assert isinstance(actions[0], NeighborDown) and actions[0].reason is DownReason.GOODBYE
    assert pim.dr("eth0") == US and not pim.is_neighbor("eth0", A)
    assert pim.on_hello("eth0", A, Hello(0, 1, 1), now=3.0) == []  # a Goodbye from a stranger: nothing


def test_genid_change_is_a_restart_and_triggers_a_hello() -> None:
    pim = core()
    pim.on_timer(0.0)
    pim.on_hello("eth0", A, Hello(105, 1, 1), now=1.0)
    pim.on_timer(1.0)
    actions = pim.on_hello("eth0", A, Hello(105, 1, 2), now=5.0, delay=0.5)
    assert [type(a) for a in actions] == [NeighborRestarted]
    assert pim.next_deadline() == 5.5
    assert pim.neighbors()[0].up_since == 1.0


def test_infinite_holdtime_never_expires() -> None:
    pim = core()
    pim.on_hello("eth0", A, Hello(0xFFFF, 1, 1), now=0.0)
    assert not any(isinstance(a, NeighborDown) for a in pim.on_timer(1e9))


def test_disable_sends_goodbye_and_forgets_neighbours() -> None:
    pim = core()
    pim.on_hello("eth0", A, Hello(105, 1, 1), now=1.0)
    actions = pim.disable("eth0")
    assert actions[0] == SendHello("eth0", Hello(0, 1, 77))
    assert isinstance(actions[1], NeighborDown) and actions[1].reason is DownReason.DISABLED
    assert pim.neighbors() == [] and pim.disable("eth0") == []


def test_own_hellos_and_unknown_interfaces_are_ignored() -> None:
    pim = core()
    assert pim.on_hello("eth0", US, Hello(105, 1, 77), now=1.0) == []
    assert pim.on_hello("eth9", A, Hello(105, 1, 1), now=1.0) == []


def test_priority_change_is_announced_at_once_and_reelects() -> None:
    pim = core(priority=1)
    pim.on_timer(0.0)
    pim.on_hello("eth0", A, Hello(105, 1, 1), now=1.0)
    assert pim.dr("eth0") == A
    actions = pim.enable(InterfaceSettings("eth0", US, dr_priority=10), generation_id=99, now=2.0)
    assert actions == [DrChanged("eth0", US, True)]
    assert sent(pim.on_timer(2.0)) == [Hello(105, 10, 77)]  # same GenID: we did not restart


def n(addr: str, prio: int | None) -> Neighbor:
    return Neighbor("eth0", IPv4Address(addr), 105, prio, 1, 105.0, 0.0)


@pytest.mark.parametrize(
    ("own_prio", "others", "winner"),
    [
        (1, [], "10.1.0.5"),
        (1, [("10.1.0.9", 1)], "10.1.0.9"),  # equal priority: highest address
        (5, [("10.1.0.9", 1)], "10.1.0.5"),  # higher priority beats a higher address
        (1, [("10.1.0.2", 7), ("10.1.0.9", 1)], "10.1.0.2"),
        (9, [("10.1.0.2", None)], "10.1.0.5"),  # one without the option: address only
        (9, [("10.1.0.9", None)], "10.1.0.9"),
        (0, [("10.1.0.2", 0)], "10.1.0.5"),  # priority 0 still elects, by address
    ],
)
def test_dr_election(own_prio: int, others: list[tuple[str, int | None]], winner: str) -> None:
    own = InterfaceSettings("eth0", US, dr_priority=own_prio)
    assert elect_dr(own, [n(a, p) for a, p in others]) == IPv4Address(winner)


def test_secondary_addresses_count_as_the_neighbour() -> None:
    pim = core()
    pim.on_hello("eth0", A, Hello(105, 1, 1, secondary_addresses=(B,)), now=0.0)
    assert pim.is_neighbor("eth0", B) and pim.is_neighbor("eth0", A)
    assert not pim.is_neighbor("eth0", IPv4Address("10.1.0.3"))


def test_ipv6_hellos_carry_our_global_addresses_and_a_neighbours_are_mapped_to_its_primary() -> None:
    """RFC 7761 §4.3.4: the Address List option names a router's other addresses on the link (over IPv6 its
    global ones, its Hellos coming from the link-local one), so that a next hop of the unicast routes, often
    global, can be matched to the neighbour."""
    from ipaddress import IPv6Address

    us, them = IPv6Address("fe80::1"), IPv6Address("fe80::2")
    ours, theirs = (IPv6Address("fd00::1"),), (IPv6Address("fd00::2"), IPv6Address("fd00:1::2"))
    pim = PimNeighbors()
    pim.enable(InterfaceSettings("eth0", us, secondary_addresses=ours), generation_id=5, now=0.0)
    assert sent(pim.on_timer(0.0)) == [Hello(105, 1, 5, secondary_addresses=ours)]
    pim.on_hello("eth0", them, Hello(105, 1, 9, secondary_addresses=theirs), now=1.0)
    assert [pim.primary_address("eth0", a) for a in (them, *theirs)] == [them, them, them]
    assert pim.primary_address("eth0", IPv6Address("fd00::9")) is None
    assert pim.primary_address("eth1", them) is None
