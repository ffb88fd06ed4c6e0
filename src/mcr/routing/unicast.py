"""The kernel's IPv4 unicast routes as PIM's RPF check needs them (pure): parsed from `/proc/net/route`.

Only the main table is there (policy routing is not followed); the longest prefix wins, then the lowest
metric. The shell reads the file (at most once a second) and asks `next_hop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from mcr.routing.pim_wire import IPAddress

RTF_UP, RTF_GATEWAY = 0x1, 0x2
MAX_ROUTES = 100_000  # beyond this the rest of the table is not read (RPF falls back to the link's neighbour)


@dataclass(frozen=True, slots=True)
class UnicastRoute:
    network: IPv4Network
    interface: str
    gateway: IPv4Address | None  # None: the destination is on the link
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


def next_hop(routes: list[UnicastRoute], target: IPAddress) -> tuple[str, IPAddress] | None:
    """(interface, next hop) of the best route toward `target` (the target itself when it is on the link),
    or None without a route (or for IPv6)."""
    if not isinstance(target, IPv4Address):
        return None
    best: UnicastRoute | None = None
    for r in routes:
        if target in r.network and (
            best is None
            or r.network.prefixlen > best.network.prefixlen
            or (r.network.prefixlen == best.network.prefixlen and r.metric < best.metric)
        ):
            best = r
    if best is None:
        return None
    return best.interface, best.gateway if best.gateway is not None else target
