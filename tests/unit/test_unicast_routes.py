"""The kernel's unicast routes from /proc/net/route, and the next hop toward an address (PIM's RPF')."""

from ipaddress import IPv4Address, IPv6Address

from mcr.routing.unicast import UnicastRoute, next_hop, parse_proc_net_route

TEXT = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
lan0\t0000630A\t0300F00A\t0003\t0\t0\t20\t00FFFFFF\t0\t0\t0
lan1\t0000630A\t0400F00A\t0003\t0\t0\t10\t00FFFFFF\t0\t0\t0
down\t0000640A\t0300F00A\t0002\t0\t0\t0\t00FFFFFF\t0\t0\t0
garbage line
bad\tZZ\t00\t0001\t0\t0\t0\t00\t0\t0\t0
"""


def test_parse() -> None:
    routes = parse_proc_net_route(TEXT)
    assert [r.interface for r in routes] == ["eth0", "eth0", "lan0", "lan1"]
    assert routes[0] == UnicastRoute(routes[0].network, "eth0", IPv4Address("192.0.2.1"), 0)
    assert str(routes[2].network) == "10.99.0.0/24" and routes[1].gateway is None


def test_next_hop_longest_prefix_then_metric() -> None:
    routes = parse_proc_net_route(TEXT)
    assert next_hop(routes, IPv4Address("10.99.0.5")) == ("lan1", IPv4Address("10.240.0.4"))  # metric 10 < 20
    assert next_hop(routes, IPv4Address("192.0.2.7")) == ("eth0", IPv4Address("192.0.2.7"))  # on the link
    assert next_hop(routes, IPv4Address("8.8.8.8")) == ("eth0", IPv4Address("192.0.2.1"))  # default
    assert next_hop([], IPv4Address("8.8.8.8")) is None
    assert next_hop(routes, IPv6Address("2001:db8::1")) is None
