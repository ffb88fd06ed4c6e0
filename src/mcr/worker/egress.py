"""Output sockets: one connected, non-blocking UDP socket per rule output, IPv4 or IPv6 by the output's group
(only the UDP payload is relayed, so the input's family does not matter)."""

from __future__ import annotations

import socket

from mcr.linux.send_socket import SNDBUF, aim_ipv4
from mcr.protocol.worker import WorkerOutput


def open_output_socket(out: WorkerOutput) -> socket.socket:
    """A socket that sends from the output interface's address, on that interface, to the destination."""
    family = socket.AF_INET if out.group.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        if family == socket.AF_INET6:
            _setup_ipv6(sock, out)
            return sock
        aim_ipv4(sock, out.group, out.port, out.source, out.ifindex, out.ttl)
    except BaseException:
        sock.close()
        raise
    return sock


def _setup_ipv6(sock: socket.socket, out: WorkerOutput) -> None:
    """IPV6_MULTICAST_IF / _HOPS / _LOOP for a group (SO_BINDTODEVICE and IPV6_UNICAST_HOPS for a unicast
    destination); bound to the interface's address, with the interface as scope when it is link-local."""
    if out.group.is_multicast:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, out.ifindex)
        if out.ttl is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, out.ttl)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, socket.if_indextoname(out.ifindex).encode())
        if out.ttl is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, out.ttl)
    sock.bind((str(out.source), 0, 0, out.ifindex if out.source.is_link_local else 0))
    sock.connect((str(out.group), out.port, 0, out.ifindex if out.group.is_link_local else 0))
