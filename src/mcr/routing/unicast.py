"""The kernel's unicast routes as PIM's RPF check needs them (pure): parsed from `/proc/net/route` (IPv4)
and `/proc/net/ipv6_route` (IPv6).

Only the main table is there (policy routing is not followed); the longest prefix wins, then the lowest
metric. The shell reads the file (at most once a second) and asks `next_hop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from mcr.routing.pim_wire import IPAddress

RTF_UP, RTF_GATEWAY, RTF_REJECT, RTF_LOCAL = 0x1, 0x2, 0x200, 0x80000000
MAX_ROUTES = 100_000  # beyond this the rest of the table is not read (RPF falls back to the link's neighbour)


@dataclass(frozen=True, slots=True)
class UnicastRoute:
    network: IPv4Network | IPv6Network
    interface: str
    gateway: IPAddress | None  # None: the destination is on the link
    metric: int


def _address(hex_le: str) -> IPv4Address:
    return IPv4Address(int.from_bytes(bytes.fromhex(hex_le), "little"))


def parse_proc_net_route(text: str) -> list[UnicastRoute]:
    """The routes that are up; malformed lines are skipped."""
    routes: list[UnicastRoute] = []
    for line in text.splitlines()[1 : MAX_ROUTES + 1]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway = _address(fields[1]), _address(fields[2])
            flags, metric, mask = int(fields[3], 16), int(fields[6]), _address(fields[7])
            network = IPv4Network(f"{destination}/{mask}", strict=False)
        except ValueError:
            continue
        if flags & RTF_UP:
            routes.append(UnicastRoute(network, fields[0], gateway if flags & RTF_GATEWAY else None, metric))
    return routes


def parse_proc_net_ipv6_route(text: str) -> list[UnicastRoute]:
    """The IPv6 routes that are up and not reject routes; malformed lines are skipped. A line: destination,
    its prefix length, source, its prefix length, next hop (hex), metric, refcnt, use, flags (hex), device."""
    routes: list[UnicastRoute] = []
    for line in text.splitlines()[:MAX_ROUTES]:
        fields = line.split()
        if len(fields) < 10 or not all(len(fields[i]) == 32 for i in (0, 2, 4)):
            continue
        try:
            destination, prefix = IPv6Address(bytes.fromhex(fields[0])), int(fields[1], 16)
            gateway, metric, flags = IPv6Address(bytes.fromhex(fields[4])), int(fields[5], 16), int(fields[8], 16)
            network = IPv6Network(f"{destination}/{prefix}", strict=False)
        except ValueError:
            continue
        if (
            flags & RTF_UP
            and not flags & (RTF_REJECT | RTF_LOCAL)
            and not (network.is_multicast or network.is_link_local)
        ):
            via = gateway if flags & RTF_GATEWAY and not gateway.is_unspecified else None
            routes.append(UnicastRoute(network, fields[9], via, metric))
    return routes


def next_hop(routes: list[UnicastRoute], target: IPAddress) -> tuple[str, IPAddress] | None:
    """(interface, next hop) of the best route toward `target` (the target itself when it is on the link),
    or None without a route."""
    best: UnicastRoute | None = None
    for r in routes:
        if (
            r.network.version == target.version
            and target in r.network
            and (
                best is None
                or r.network.prefixlen > best.network.prefixlen
                or (r.network.prefixlen == best.network.prefixlen and r.metric < best.metric)
            )
        ):
            best = r
    if best is None:
        return None
    return best.interface, best.gateway if best.gateway is not None else target
