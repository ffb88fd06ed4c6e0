"""What every IPv4 output socket is set up with, UDP (in the worker) or raw ESP (in the supervisor)."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv6Address

__all__ = ["SNDBUF", "aim_ipv4", "prepare_ipv4"]

SNDBUF = 4 << 20
_MREQN = struct.Struct("=4s4si")


def aim_ipv4(
    sock: socket.socket,
    group: IPv4Address | IPv6Address,
    port: int,
    source: IPv4Address | IPv6Address,
    ifindex: int,
    ttl: int | None,
) -> None:
    """`prepare_ipv4` for `group`, then connect to `group`:`port`. Raises OSError."""
    prepare_ipv4(sock, group.is_multicast, source, ifindex, ttl)
    sock.connect((str(group), port))


def prepare_ipv4(
    sock: socket.socket, multicast: bool, source: IPv4Address | IPv6Address, ifindex: int, ttl: int | None
) -> None:
    """Send from `source` out of `ifindex`: to multicast groups with TTL `ttl` and no loop back, or to unicast
    destinations bound to the interface with the TTL set only when given (else the kernel's default); bound to
    `source`. Raises OSError."""
    if multicast:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _MREQN.pack(b"\0\0\0\0", source.packed, ifindex))
        if ttl is not None:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, socket.if_indextoname(ifindex).encode())
        if ttl is not None:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    sock.bind((str(source), 0))
