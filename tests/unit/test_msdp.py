"""MSDP peers and SA cache, with a fake clock."""

from ipaddress import IPv4Address

import pytest

from mcr.routing.msdp import (
    CONNECT_RETRY_PERIOD,
    HOLD_TIME,
    KEEPALIVE_PERIOD,
    SG_STATE_PERIOD,
    Close,
    Connect,
    Msdp,
    PeerConfig,
    PeerState,
    Send,
)
from mcr.routing.msdp_wire import Keepalive, SaEntry, SourceActive

LOCAL = IPv4Address("10.0.0.5")
LOW = IPv4Address("10.0.0.2")  # connects to us
HIGH = IPv4Address("10.0.0.9")  # we connect to it
HIGH2 = IPv4Address("10.0.0.10")
RP_FAR = IPv4Address("10.50.0.1")
E = SaEntry(IPv4Address("10.7.0.7"), IPv4Address("239.1.1.1"))


def peer(addr: IPv4Address, **kw: object) -> PeerConfig:
    return PeerConfig(addr, LOCAL, **kw)  # type: ignore[arg-type]


def test_the_lower_address_connects_the_higher_listens() -> None:
    m = Msdp()
    assert m.add_peer(peer(HIGH), 0.0) == [Connect(HIGH, LOCAL)]
    assert m.add_peer(peer(LOW), 0.0) == []
    assert m.peers[HIGH].state is PeerState.CONNECTING and m.peers[LOW].state is PeerState.LISTEN
    assert m.accepts(LOW) and not m.accepts(HIGH) and not m.accepts(IPv4Address("10.0.0.1"))
    assert m.counters.rejected_connections == 2


def test_connect_retry_keepalive_and_hold() -> None:
    m = Msdp()
    m.add_peer(peer(HIGH), 0.0)
    m.on_connect_failed(HIGH, 1.0)
    assert m.next_deadline() == 1.0 + CONNECT_RETRY_PERIOD
    assert m.on_timer(1.0 + CONNECT_RETRY_PERIOD) == [Connect(HIGH, LOCAL)]
    assert m.on_established(HIGH, 40.0) == [Send(HIGH, Keepalive())]
    assert m.on_timer(40.0 + KEEPALIVE_PERIOD) == [Send(HIGH, Keepalive())]
    m.on_message(HIGH, Keepalive(), 90.0)  # the hold timer restarts on anything received
    assert m.on_timer(90.0 + HOLD_TIME - 1)[:1] != [Close(HIGH, "hold timer expired")]
    actions = m.on_timer(90.0 + HOLD_TIME)
    assert Close(HIGH, "hold timer expired") in actions
    assert m.peers[HIGH].state is PeerState.CONNECTING and m.peers[HIGH].retry_at == 90.0 + HOLD_TIME + 30.0


def test_listener_goes_back_to_listen_when_closed() -> None:
    m = Msdp()
    m.add_peer(peer(LOW), 0.0)
    m.on_established(LOW, 1.0)
    m.on_closed(LOW, 2.0)
    assert m.peers[LOW].state is PeerState.LISTEN and m.next_deadline() is None


def established(*configs: PeerConfig) -> Msdp:
    m = Msdp()
    for c in configs:
        m.add_peer(c, 0.0)
        m.on_established(c.address, 0.0)
    return m


def test_sa_from_the_originating_rp_is_cached_and_flooded_to_the_others() -> None:
    m = established(peer(HIGH), peer(HIGH2), peer(LOW))
    actions = m.on_message(HIGH, SourceActive(HIGH, (E,)), 10.0)
    assert sorted(a.peer for a in actions if isinstance(a, Send)) == [LOW, HIGH2]
    (entry,) = m.cache()
    assert (entry.source, entry.group, entry.rp, entry.learned_from) == (E.source, E.group, HIGH, HIGH)
    assert entry.expires_at == 10.0 + SG_STATE_PERIOD
    m.on_message(HIGH, SourceActive(HIGH, (E,)), 50.0)  # refreshed
    assert m.cache()[0].expires_at == 50.0 + SG_STATE_PERIOD and m.cache()[0].created_at == 10.0
    m.on_timer(50.0 + SG_STATE_PERIOD)
    assert m.cache() == [] and m.counters.sa_cache_expired == 1


def test_peer_rpf_failure_is_counted_not_cached() -> None:
    m = established(peer(HIGH), peer(HIGH2))
    assert m.on_message(HIGH, SourceActive(RP_FAR, (E,)), 1.0) == []
    assert m.cache() == [] and m.peers[HIGH].rpf_failures == 1


@pytest.mark.parametrize("kw", [{"default_peer": True}, {"mesh_group": "m"}])
def test_default_peers_and_mesh_members_pass_peer_rpf(kw: dict[str, object]) -> None:
    m = established(peer(HIGH, **kw), peer(HIGH2))
    m.on_message(HIGH, SourceActive(RP_FAR, (E,)), 1.0)
    assert [e.rp for e in m.cache()] == [RP_FAR]


def test_only_peer_passes_peer_rpf() -> None:
    m = established(peer(HIGH))
    m.on_message(HIGH, SourceActive(RP_FAR, (E,)), 1.0)
    assert len(m.cache()) == 1


def test_no_flooding_back_into_the_senders_mesh_group() -> None:
    m = established(peer(HIGH, mesh_group="m"), peer(HIGH2, mesh_group="m"), peer(LOW))
    actions = m.on_message(HIGH, SourceActive(RP_FAR, (E,)), 1.0)
    assert [a.peer for a in actions if isinstance(a, Send)] == [LOW]


def test_local_sources_are_originated_at_once_and_every_60_s_and_sent_to_new_peers() -> None:
    m = established(peer(HIGH))
    actions = m.set_local_sources(LOCAL, frozenset({E}), 5.0)
    assert actions == [Send(HIGH, SourceActive(LOCAL, (E,)))]
    assert m.set_local_sources(LOCAL, frozenset({E}), 6.0) == []
    assert Send(HIGH, SourceActive(LOCAL, (E,))) in m.on_timer(65.0)
    m.add_peer(peer(LOW), 70.0)
    assert m.on_established(LOW, 70.0) == [Send(LOW, Keepalive()), Send(LOW, SourceActive(LOCAL, (E,)))]
    assert [(e.rp, e.learned_from, e.expires_at) for e in m.cache()] == [(LOCAL, None, None)]


def test_remove_peer_closes_and_forgets_its_sas() -> None:
    m = established(peer(HIGH))
    m.on_message(HIGH, SourceActive(HIGH, (E,)), 1.0)
    assert m.remove_peer(HIGH) == [Close(HIGH, "peer removed")]
    assert m.cache() == [] and m.remove_peer(HIGH) == []


def test_our_own_address_is_not_a_peer() -> None:
    with pytest.raises(ValueError, match="our own address"):
        Msdp().add_peer(peer(LOCAL), 0.0)


def test_learned_pairs_and_cache_version_for_sa_triggered_joins() -> None:
    m = established(peer(HIGH))
    v0 = m.cache_version
    m.on_message(HIGH, SourceActive(HIGH, (E,)), 1.0)
    assert m.learned_pairs() == frozenset({E}) and m.cache_version == v0 + 1
    m.on_message(HIGH, SourceActive(HIGH, (E,)), 2.0)  # a refresh is not a change
    assert m.cache_version == v0 + 1
    m.on_timer(2.0 + SG_STATE_PERIOD)
    assert m.learned_pairs() == frozenset() and m.cache_version == v0 + 2


def test_sa_filters_drop_groups_in_and_out_and_count_them() -> None:
    from ipaddress import ip_network

    scoped = SaEntry(IPv4Address("10.7.0.8"), IPv4Address("239.255.1.1"))
    no_scoped = (ip_network("239.255.0.0/16"),)
    m = established(peer(HIGH), peer(HIGH2, default_peer=True, sa_filter=no_scoped), peer(LOW))
    # in: from HIGH2 (filtered), the scoped group is dropped, the other kept and flooded
    actions = m.on_message(HIGH2, SourceActive(RP_FAR, (E, scoped)), 1.0)
    assert [(e.source, e.group) for e in m.cache()] == [(E.source, E.group)]
    assert m.peers[HIGH2].sa_filtered == 1
    assert {a.peer: a.message for a in actions if isinstance(a, Send)} == {
        HIGH: SourceActive(RP_FAR, (E,)),
        LOW: SourceActive(RP_FAR, (E,)),
    }
    # out: an SA from HIGH for the scoped group is not sent to HIGH2
    actions = m.on_message(HIGH, SourceActive(HIGH, (scoped,)), 2.0)
    assert [a.peer for a in actions if isinstance(a, Send)] == [LOW] and m.peers[HIGH2].sa_filtered == 2
    # and neither are our own sources in it
    actions = m.set_local_sources(LOCAL, frozenset({scoped}), 3.0)
    assert sorted(a.peer for a in actions if isinstance(a, Send)) == [LOW, HIGH]
