"""The PIM control requests and responses: the original's shapes, precise errors, round trips."""

from ipaddress import IPv4Address

import pytest

from mcr.cli.control_client import parse_invocation
from mcr.cli.render import render_pim_neighbors
from mcr.model.errors import ProtocolError
from mcr.protocol.control import decode_request, decode_response, encode_request, encode_response
from mcr.protocol.routing import DisablePim, EnablePim, PimNeighborInfo, PimNeighbors, RoutingQuery
from mcr.supervisor.access import is_read_only, request_name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'"GetPimNeighbors"', RoutingQuery.GET_PIM_NEIGHBORS),
        (b'{"GetPimNeighbors": null}', RoutingQuery.GET_PIM_NEIGHBORS),
        (b'{"EnablePim": {"interface": "eth0", "dr_priority": null}}', EnablePim("eth0")),  # the original's mcrctl
        (b'{"EnablePim": {"interface": "eth0", "dr_priority": 7}}', EnablePim("eth0", 7)),
        (b'{"EnablePim": {"interface": "eth0", "hello_period": 5}}', EnablePim("eth0", None, 5)),
        (b'{"EnablePim": {"interface": "eth0", "passive": true}}', EnablePim("eth0", passive=True)),
        (b'{"EnablePim": {"interface": "eth0", "passive": false}}', EnablePim("eth0", passive=False)),
        (b'{"DisablePim": {"interface": "eth0"}}', DisablePim("eth0")),
    ],
)
def test_requests_decode_and_round_trip(raw: bytes, expected: object) -> None:
    assert decode_request(raw) == expected
    assert decode_request(encode_request(expected)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"EnablePim": {}}', "missing field 'interface' in EnablePim"),
        (b'{"EnablePim": {"interface": 3}}', "field 'interface' in EnablePim must be a string"),
        (b'{"EnablePim": {"interface": "e", "dr_priority": -1}}', "between 0 and 4294967295, got -1"),
        (b'{"EnablePim": {"interface": "e", "dr_priority": true}}', "'dr_priority' in EnablePim must be an integer"),
        (b'{"EnablePim": {"interface": "e", "hello_period": 0}}', "between 1 and 18724, got 0"),
        (b'{"EnablePim": {"interface": "e", "x": 1}}', "unknown field 'x' in EnablePim"),
        (b'{"EnablePim": {"interface": "e", "passive": 1}}', "field 'passive' in EnablePim must be a boolean"),
        (b'{"DisablePim": []}', "DisablePim must be a JSON object"),
        (b'"EnablePim"', "command 'EnablePim' needs arguments"),
    ],
)
def test_bad_requests_name_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(")):
        decode_request(raw)


def test_neighbours_response_round_trips_in_the_original_shape() -> None:
    info = PimNeighborInfo("eth0", IPv4Address("10.0.0.2"), 1, False, True, 97, 0x1234, 8)
    raw = encode_response(PimNeighbors((info,)))
    assert b'"source": "PimHello"' in raw and b'"expires_in_secs": 97' in raw
    assert decode_response(raw) == PimNeighbors((info,))
    with pytest.raises(ProtocolError, match="malformed PimNeighbors"):
        decode_response(b'{"PimNeighbors": [{"interface": "eth0"}]}')


def test_read_only_and_names() -> None:
    assert is_read_only(RoutingQuery.GET_PIM_NEIGHBORS)
    assert not is_read_only(EnablePim("eth0")) and not is_read_only(DisablePim("eth0"))
    assert request_name(EnablePim("eth0")) == "EnablePim"
    assert request_name(RoutingQuery.GET_PIM_NEIGHBORS) == "GetPimNeighbors"


def test_cli_commands() -> None:
    env: dict[str, str] = {}
    assert parse_invocation(["pim", "neighbors"], env).request == RoutingQuery.GET_PIM_NEIGHBORS
    enable = ["pim", "enable", "--interface", "eth0", "--dr-priority", "9", "--hello-period", "10"]
    assert parse_invocation(enable, env).request == EnablePim("eth0", 9, 10)
    passive = ["pim", "enable", "--interface", "eth0", "--passive"]
    assert parse_invocation(passive, env).request == EnablePim("eth0", passive=True)
    active = ["pim", "enable", "--interface", "eth0", "--active"]
    assert parse_invocation(active, env).request == EnablePim("eth0", passive=False)
    with pytest.raises(SystemExit):
        parse_invocation([*passive, "--active"], env)
    assert parse_invocation(["pim", "disable", "--interface", "eth0"], env).request == DisablePim("eth0")
    with pytest.raises(SystemExit):
        parse_invocation(["pim", "enable", "--interface", "eth0", "--dr-priority", "-1"], env)


def test_neighbours_table() -> None:
    from rich.console import Console

    console = Console(width=120, record=True, color_system=None)
    console.print(render_pim_neighbors([]))
    console.print(
        render_pim_neighbors([PimNeighborInfo("eth0", IPv4Address("10.0.0.2"), 1, False, True, None, None, 3725)])
    )
    text = console.export_text()
    assert "no PIM neighbours" in text
    assert "10.0.0.2" in text and "1 (none sent)" in text and "01:02:05" in text and "never" in text


def test_static_rp_and_mroute_shapes() -> None:
    from ipaddress import ip_network

    from mcr.protocol.routing import MrouteInfo, Mroutes, SetStaticRp

    raw = b'{"SetStaticRp": {"group_prefix": "239.1.0.0/16", "rp_address": "10.0.0.9"}}'
    req = SetStaticRp(ip_network("239.1.0.0/16"), IPv4Address("10.0.0.9"))
    assert decode_request(raw) == req and decode_request(encode_request(req)) == req
    for bad, message in (
        (b'{"SetStaticRp": {"group_prefix": "10.0.0.0/8", "rp_address": "10.0.0.9"}}', "not within the multicast"),
        (b'{"SetStaticRp": {"group_prefix": "239.0.0.0/8", "rp_address": "239.0.0.1"}}', "not a unicast address"),
        (b'{"SetStaticRp": {"group_prefix": "ff3e::/16", "rp_address": "10.0.0.1"}}', "not of the family"),
        (b'{"SetStaticRp": {"group_prefix": "239.0.0.0/8"}}', "missing field 'rp_address'"),
    ):
        with pytest.raises(ProtocolError, match=message):
            decode_request(bad)
    assert decode_request(b'"GetMroute"') == RoutingQuery.GET_MROUTE
    entries = (
        MrouteInfo(None, IPv4Address("239.1.1.1"), "eth0", ("eth1", "eth2"), "StarG", 5),
        MrouteInfo(IPv4Address("10.1.1.1"), IPv4Address("239.1.1.1"), "", (), "SG", 0),
    )
    raw = encode_response(Mroutes(entries))
    assert b'"entry_type": "StarG"' in raw and b'"source": null' in raw
    assert decode_response(raw) == Mroutes(entries)
    env: dict[str, str] = {}
    assert parse_invocation(["mroute"], env).request == RoutingQuery.GET_MROUTE
    set_rp = ["pim", "set-rp", "--group", "239.1.0.0/16", "--rp", "10.0.0.9"]
    assert parse_invocation(set_rp, env).request == req


def test_msdp_requests_and_responses() -> None:
    from mcr.protocol.routing import AddMsdpPeer, MsdpPeerInfo, MsdpPeers, MsdpSaCache, MsdpSaInfo, RemoveMsdpPeer

    peer = IPv4Address("10.0.0.9")
    raw = b'{"AddMsdpPeer": {"address": "10.0.0.9", "description": null, "mesh_group": "m", "default_peer": false}}'
    assert decode_request(raw) == AddMsdpPeer(peer, None, "m", False)
    for req in (AddMsdpPeer(peer, "d", None, True), RemoveMsdpPeer(peer)):
        assert decode_request(encode_request(req)) == req
    for bad, message in (
        (b'{"AddMsdpPeer": {"address": "ff::1"}}', "is not an IPv4 address"),
        (b'{"AddMsdpPeer": {"address": "239.1.1.1"}}', "not a unicast peer address"),
        (b'{"AddMsdpPeer": {"address": "10.0.0.9", "default_peer": 1}}', "'default_peer' in AddMsdpPeer must be"),
        (b'{"RemoveMsdpPeer": {}}', "missing field 'address'"),
    ):
        with pytest.raises(ProtocolError, match=message):
            decode_request(bad)
    assert not is_read_only(RoutingQuery.CLEAR_MSDP_SA_CACHE) and is_read_only(RoutingQuery.GET_MSDP_PEERS)
    peers = MsdpPeers((MsdpPeerInfo(peer, "established", None, "m", False, 5, 1, 2, True, 0),))
    cache = MsdpSaCache((MsdpSaInfo(IPv4Address("10.1.1.1"), IPv4Address("239.1.1.1"), peer, peer, 3, 87, False),))
    for resp in (peers, cache):
        assert decode_response(encode_response(resp)) == resp
    env: dict[str, str] = {}
    assert parse_invocation(["msdp", "peers"], env).request == RoutingQuery.GET_MSDP_PEERS
    assert parse_invocation(["msdp", "sa-cache"], env).request == RoutingQuery.GET_MSDP_SA_CACHE
    assert parse_invocation(["msdp", "clear-sa-cache"], env).request == RoutingQuery.CLEAR_MSDP_SA_CACHE
    add = ["msdp", "add-peer", "--address", "10.0.0.9", "--mesh-group", "m", "--default-peer"]
    assert parse_invocation(add, env).request == AddMsdpPeer(peer, None, "m", True)
    assert parse_invocation(["msdp", "remove-peer", "--address", "10.0.0.9"], env).request == RemoveMsdpPeer(peer)


def test_local_sources_are_single_sources_in_groups_we_are_rp_for() -> None:
    from ipaddress import ip_network

    from mcr.model.rules import ForwardingRule
    from mcr.routing.msdp_wire import SaEntry
    from mcr.routing.pim_joins import RpTable
    from mcr.supervisor.msdp import local_sources

    us, other = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
    rps = RpTable()
    rps.set(ip_network("239.1.0.0/16"), us)
    rps.set(ip_network("239.2.0.0/16"), other)
    g1, g2 = IPv4Address("239.1.0.1"), IPv4Address("239.2.0.1")
    rules = [
        ForwardingRule("a", "eth0", g1, 1, (), input_source=ip_network("10.5.0.5/32")),
        ForwardingRule("b", "eth0", g1, 2, (), input_source=ip_network("10.5.0.0/24")),  # a prefix: no SA
        ForwardingRule("c", "eth0", g1, 3, ()),  # any source: no SA
        ForwardingRule("d", "eth0", g2, 4, (), input_source=ip_network("10.6.0.6/32")),  # not our RP
    ]
    assert local_sources(rules, rps, frozenset({us})) == (us, frozenset({SaEntry(IPv4Address("10.5.0.5"), g1)}))
    assert local_sources(rules, rps, frozenset()) == (None, frozenset())

    class Untouched:
        def __iter__(self) -> None:
            raise AssertionError("the rules were read: RP for no group, a rule change must cost nothing here")

    assert local_sources(Untouched(), rps, frozenset({IPv4Address("10.9.9.9")})) == (None, frozenset())  # type: ignore[arg-type]


def test_routing_counters_request_response_cli_and_metrics() -> None:
    from mcr.protocol.routing import RoutingCounters
    from mcr.supervisor.metrics import Snapshot, metric_families

    assert decode_request(b'"GetRoutingCounters"') == RoutingQuery.GET_ROUTING_COUNTERS
    assert is_read_only(RoutingQuery.GET_ROUTING_COUNTERS)
    resp = RoutingCounters((("msdp.sa_sent", 2), ("pim.rx_hello", 5)))
    raw = encode_response(resp)
    assert raw == b'{"RoutingCounters": {"msdp.sa_sent": 2, "pim.rx_hello": 5}}\n'
    assert decode_response(raw) == resp
    assert parse_invocation(["pim", "counters"], {}).request == RoutingQuery.GET_ROUTING_COUNTERS
    (family,) = [m for m in metric_families(Snapshot(routing=resp.counters)) if m.name == "mcr_routing"]
    assert [(s.labels["name"], s.value) for s in family.samples] == [("msdp.sa_sent", 2), ("pim.rx_hello", 5)]


def test_msdp_sa_filter_in_the_request_the_answer_and_the_cli() -> None:
    from ipaddress import ip_network

    from mcr.protocol.routing import AddMsdpPeer, MsdpPeerInfo, MsdpPeers

    peer = IPv4Address("10.0.0.9")
    req = AddMsdpPeer(peer, None, None, False, (ip_network("239.255.0.0/16"),))
    assert decode_request(encode_request(req)) == req
    for bad, message in (
        (b'{"AddMsdpPeer": {"address": "10.0.0.9", "sa_filter": "239.0.0.0/8"}}', "must be an array of group"),
        (b'{"AddMsdpPeer": {"address": "10.0.0.9", "sa_filter": ["10.0.0.0/8"]}}', "not within the multicast"),
        (b'{"AddMsdpPeer": {"address": "10.0.0.9", "sa_filter": ["ff3e::/16"]}}', "IPv4 groups only"),
    ):
        with pytest.raises(ProtocolError, match=message):
            decode_request(bad)
    info = MsdpPeerInfo(peer, "listen", None, None, False, None, 0, 0, False, 0, (ip_network("239.255.0.0/16"),), 4)
    assert decode_response(encode_response(MsdpPeers((info,)))) == MsdpPeers((info,))
    argv = ["msdp", "add-peer", "--address", "10.0.0.9", "--sa-filter", "239.255.0.0/16"]
    assert parse_invocation(argv, {}).request == req


def test_pim_interfaces_shape_cli_and_table() -> None:
    from rich.console import Console

    from mcr.cli.render import render_pim_interfaces
    from mcr.protocol.routing import PimInterfaceInfo, PimInterfaces

    running = PimInterfaceInfo("eth0", "running", IPv4Address("10.0.0.1"), 1, 30, IPv4Address("10.0.0.1"), True, 7, 2)
    waiting = PimInterfaceInfo("eth9", "waiting", None, 5, 30, None, False, None, 0)
    resp = PimInterfaces((running, waiting))
    assert decode_response(encode_response(resp)) == resp
    assert decode_request(b'"GetPimInterfaces"') == RoutingQuery.GET_PIM_INTERFACES
    assert parse_invocation(["pim", "interfaces"], {}).request == RoutingQuery.GET_PIM_INTERFACES
    console = Console(width=150, record=True, color_system=None)
    console.print(render_pim_interfaces(resp.interfaces))
    text = console.export_text()
    assert "10.0.0.1 (us)" in text and "waiting" in text and "0x00000007" in text


def test_pim_upstream_shape_cli_and_table() -> None:
    from rich.console import Console

    from mcr.cli.render import render_pim_upstream
    from mcr.protocol.routing import PimUpstream, PimUpstreamInfo

    g, s, n = IPv4Address("239.1.1.1"), IPv4Address("10.9.0.9"), IPv4Address("10.0.0.2")
    resp = PimUpstream(
        (
            PimUpstreamInfo("join", None, g, "eth0", n, "sent", 42),
            PimUpstreamInfo("rpt_prune", s, g, "eth0", n, "sent", 42),
            PimUpstreamInfo("register", s, g, "eth1", IPv4Address("10.0.0.9"), "Prune", 61),
            PimUpstreamInfo("spt", s, g, "eth0", None, "settled (SPT bit)", 200),
        )
    )
    assert decode_response(encode_response(resp)) == resp
    assert decode_request(b'"GetPimUpstream"') == RoutingQuery.GET_PIM_UPSTREAM
    assert parse_invocation(["pim", "upstream"], {}).request == RoutingQuery.GET_PIM_UPSTREAM
    bad = b'{"PimUpstream": [{"kind": "graft", "group": "239.1.1.1", "interface": "e", "state": "x"}]}'
    with pytest.raises(ProtocolError, match="unknown kind 'graft'"):
        decode_response(bad)
    console = Console(width=150, record=True, color_system=None)
    console.print(render_pim_upstream(resp.entries))
    text = console.export_text()
    assert "Prune (S,G,rpt)" in text and "Register" in text and "settled (SPT bit)" in text


def test_set_rp_address() -> None:
    from mcr.protocol.routing import SetRpAddress

    req = SetRpAddress(IPv4Address("10.0.0.1"))
    assert decode_request(b'{"SetRpAddress": {"address": "10.0.0.1"}}') == req
    assert decode_request(encode_request(req)) == req and not is_read_only(req)
    with pytest.raises(ProtocolError, match="not a unicast peer address"):
        decode_request(b'{"SetRpAddress": {"address": "239.0.0.1"}}')
    assert parse_invocation(["pim", "set-rp-address", "--address", "10.0.0.1"], {}).request == req
