"""Last-hop SPT switchover: sources found on the shared tree, the SPT bit by link-layer sender, expiry."""

import struct
from ipaddress import IPv4Address

from mcr.packet.cbpf import ACCEPT, DROP, PacketType, check_program, run_program
from mcr.routing.pim_spt import (
    KEEPALIVE_PERIOD,
    MAX_SOURCES_PER_GROUP,
    SOURCE_PROBE_TIME,
    SPT_CONFIRM_TIME,
    SourceState,
    SptPolicy,
    SptSwitch,
    new_source_filter,
    rpt_prunes,
    stale_spt_bits,
)
from mcr.routing.pim_upstream import UpstreamEntry

G = IPv4Address("239.1.1.1")
S = IPv4Address("10.9.0.9")
RPT_MAC, SPT_MAC = b"\x02" * 6, b"\x04" * 6


def test_a_new_source_is_joined_and_its_spt_bit_set_when_another_router_delivers_it() -> None:
    spt = SptSwitch()
    assert spt.on_data("eth0", G, S, RPT_MAC, same_upstream=False, now=0.0)
    (src,) = spt.sources()
    assert (src.source, src.state, src.spt_bit) == (S, SourceState.SWITCHING, False)
    assert spt.settled("eth0", G) == []  # still read: the SPT data is awaited
    assert not spt.on_data("eth0", G, S, RPT_MAC, False, 1.0)  # more from the shared tree: nothing new
    assert spt.on_data("eth0", G, S, SPT_MAC, False, 2.0)
    (src,) = spt.sources()
    assert (src.state, src.spt_bit, src.deadline) == (SourceState.SETTLED, True, 2.0 + KEEPALIVE_PERIOD)
    assert spt.settled("eth0", G) == [S] and spt.settled("eth1", G) == []


def test_same_upstream_sets_the_spt_bit_at_once() -> None:
    spt = SptSwitch()
    assert spt.on_data("eth0", G, S, RPT_MAC, same_upstream=True, now=0.0)
    (src,) = spt.sources()
    assert (src.state, src.spt_bit) == (SourceState.SETTLED, True)


def test_spt_data_that_never_shows_settles_without_the_spt_bit() -> None:
    spt = SptSwitch()
    spt.on_data("eth0", G, S, RPT_MAC, False, 0.0)
    assert spt.next_deadline() == SPT_CONFIRM_TIME
    assert spt.on_timer(SPT_CONFIRM_TIME)
    (src,) = spt.sources()
    assert (src.state, src.spt_bit, spt.unconfirmed) == (SourceState.SETTLED, False, 1)


def test_keepalive_then_probe_keeps_a_live_source_and_ends_a_silent_one() -> None:
    spt = SptSwitch()
    spt.on_data("eth0", G, S, RPT_MAC, True, 0.0)
    assert spt.on_timer(KEEPALIVE_PERIOD)
    assert spt.sources()[0].state is SourceState.PROBING and spt.settled("eth0", G) == []
    assert spt.on_data("eth0", G, S, SPT_MAC, True, KEEPALIVE_PERIOD + 1)
    assert spt.sources()[0].state is SourceState.SETTLED and spt.sources()[0].spt_bit
    spt.on_timer(2 * KEEPALIVE_PERIOD + 1)
    assert spt.on_timer(2 * KEEPALIVE_PERIOD + 1 + SOURCE_PROBE_TIME)
    assert spt.sources() == []


def test_policy_never_stays_on_the_shared_tree_and_the_table_is_bounded() -> None:
    assert not SptSwitch(SptPolicy.NEVER).on_data("eth0", G, S, RPT_MAC, True, 0.0)
    assert SptSwitch(SptPolicy.NEVER).on_data("eth0", G, S, RPT_MAC, True, 0.0, local=True)  # to register it
    spt = SptSwitch()
    for i in range(MAX_SOURCES_PER_GROUP + 3):
        spt.on_data("eth0", G, IPv4Address(int(S) + i), RPT_MAC, True, 0.0)
    assert len(spt.sources()) == MAX_SOURCES_PER_GROUP and spt.table_full == 3
    assert spt.on_data("eth0", IPv4Address("239.1.1.2"), S, RPT_MAC, True, 0.0)  # per group
    assert spt.forget({("eth0", IPv4Address("239.1.1.2"))}) and len(spt.sources()) == 1


def packet(src: IPv4Address, dst: IPv4Address) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, src.packed, dst.packed) + bytes(8)


def test_new_source_filter() -> None:
    known = [IPv4Address(int(S) + i) for i in range(MAX_SOURCES_PER_GROUP)]
    for sources in ([], [S], known):
        program = new_source_filter(G, sources)
        check_program(program)
        other = IPv4Address("10.8.0.1")
        assert run_program(program, packet(other, G)) == ACCEPT
        assert run_program(program, packet(other, IPv4Address("239.1.1.2"))) == DROP
        assert run_program(program, packet(other, G), pkttype=PacketType.OUTGOING) == DROP
        for s in sources:
            assert run_program(program, packet(s, G)) == DROP


def test_rpt_prune_only_with_the_spt_bit_and_another_upstream_neighbour() -> None:
    rp, a, b = IPv4Address("10.0.0.9"), IPv4Address("10.0.0.2"), IPv4Address("10.0.0.3")
    star = UpstreamEntry(None, G, rp, "eth0", a)
    spt = SptSwitch()
    spt.on_data("eth0", G, S, RPT_MAC, False, 0.0)
    assert rpt_prunes({star, UpstreamEntry(S, G, None, "eth0", b)}, spt.sources()) == set()  # no SPT bit yet
    spt.on_data("eth0", G, S, SPT_MAC, False, 1.0)
    assert rpt_prunes({star, UpstreamEntry(S, G, None, "eth0", b)}, spt.sources()) == {
        UpstreamEntry(S, G, rp, "eth0", a, rpt=True)
    }
    assert rpt_prunes({star, UpstreamEntry(S, G, None, "eth0", a)}, spt.sources()) == set()  # the same neighbour
    assert rpt_prunes({UpstreamEntry(S, G, None, "eth0", b)}, spt.sources()) == set()  # no shared tree


def test_an_spt_bit_from_one_shared_neighbour_is_reconsidered_when_the_neighbours_split() -> None:
    rp, a, b = IPv4Address("10.0.0.9"), IPv4Address("10.0.0.2"), IPv4Address("10.0.0.3")
    star = UpstreamEntry(None, G, rp, "eth0", a)
    spt = SptSwitch()
    spt.on_data("eth0", G, S, RPT_MAC, same_upstream=True, now=0.0)  # only A was a neighbour then
    assert stale_spt_bits({star, UpstreamEntry(S, G, None, "eth0", a)}, spt.sources()) == []
    split = {star, UpstreamEntry(S, G, None, "eth0", b)}  # B came: the (S,G) Join now goes to B
    (key,) = stale_spt_bits(split, spt.sources())
    assert spt.reconsider([key], 5.0)
    (src,) = spt.sources()
    assert (src.state, src.spt_bit) == (SourceState.SWITCHING, False)
    assert rpt_prunes(split, spt.sources()) == set()  # no Prune before S's data comes from the SPT
    assert spt.on_data("eth0", G, S, SPT_MAC, False, 6.0)
    assert spt.sources()[0].by_sender and stale_spt_bits(split, spt.sources()) == []
    assert not spt.reconsider([key], 7.0)
