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
    assert next_hop(routes, IPv6Address("2001:db8::1")) is None  # no IPv6 route among them


def _row(destination: str, prefix: str, next_hop: str, metric: str, flags: str, device: str) -> str:
    """A line of /proc/net/ipv6_route (no source prefix, refcnt and use 0)."""
    return f"{destination} {prefix} {0:032x} 00 {next_hop} {metric} 00000001 00000000 {flags} {device}"


IPV6_TEXT = "\n".join(
    [
        _row(
            "fd000000000000000000000000000000", "40", "00000000000000000000000000000000", "00000100", "00000001", "lan0"
        ),
        _row(
            "fd009900000000000000000000000000", "40", "fe800000000000000000000000000004", "00000400", "00000003", "lan1"
        ),
        _row(
            "fd009900000000000000000000000000", "40", "fd000000000000000000000000000003", "00000010", "00000003", "lan0"
        ),
        _row(
            "00000000000000000000000000000000", "00", "fd000000000000000000000000000001", "00000400", "00000003", "lan0"
        ),
        _row(
            "fe800000000000000000000000000000", "40", "00000000000000000000000000000000", "00000100", "00000001", "lan0"
        ),
        _row(
            "fd000000000000000000000000000002", "80", "00000000000000000000000000000000", "00000000", "80200001", "lan0"
        ),
        _row(
            "fd00aa00000000000000000000000000", "40", "00000000000000000000000000000000", "00000000", "00200201", "lo"
        ),
        _row(
            "ff000000000000000000000000000000", "08", "00000000000000000000000000000000", "00000100", "00000001", "lan0"
        ),
        "garbage",
        _row(
            "zz000000000000000000000000000000", "40", "00000000000000000000000000000000", "00000100", "00000001", "bad"
        ),
    ]
)


def test_parse_ipv6_routes_skips_local_reject_link_local_and_multicast() -> None:
    from mcr.routing.unicast import parse_proc_net_ipv6_route

    routes = parse_proc_net_ipv6_route(IPV6_TEXT)
    assert [(str(r.network), r.interface, str(r.gateway), r.metric) for r in routes] == [
        ("fd00::/64", "lan0", "None", 256),
        ("fd00:9900::/64", "lan1", "fe80::4", 1024),
        ("fd00:9900::/64", "lan0", "fd00::3", 16),
        ("::/0", "lan0", "fd00::1", 1024),
    ]
    assert next_hop(routes, IPv6Address("fd00:9900::5")) == ("lan0", IPv6Address("fd00::3"))  # metric 16 < 1024
    assert next_hop(routes, IPv6Address("fd00::7")) == ("lan0", IPv6Address("fd00::7"))  # on the link
    assert next_hop(routes, IPv6Address("2001:db8::1")) == ("lan0", IPv6Address("fd00::1"))  # default
    assert next_hop(routes, IPv4Address("10.0.0.1")) is None  # no IPv4 route among them
