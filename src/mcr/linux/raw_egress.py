"""Raw IPPROTO_ESP output sockets: an ESP output re-sends the ESP payload (SPI onwards) and the kernel puts
a fresh IPv4 header in front (no IP_HDRINCL), routed, with ARP and fragmentation as for any local send.

A raw socket needs CAP_NET_RAW, which workers never have: the supervisor opens these and passes them with
SCM_RIGHTS, configured completely, so that the worker only sends. Connected to its destination and bound
to its source, the socket takes no ESP the host receives (the kernel delivers to a raw socket only packets
from its peer to its own address), and a drop-all filter and the smallest receive buffer make sure of it.
"""

from __future__ import annotations

import socket

from mcr.linux.packet_socket import DROP_ALL, attach_filter
from mcr.linux.send_socket import SNDBUF, aim_ipv4
from mcr.protocol.worker import RawEgress

__all__ = ["IPPROTO_ESP", "SNDBUF", "open_esp_socket"]

IPPROTO_ESP = 50


def open_esp_socket(key: RawEgress) -> socket.socket:
    """A non-blocking raw ESP socket that sends to `key.group` out of `key.ifindex` from `key.source`;
    for a multicast group with TTL `key.ttl` and no loop back, for a unicast destination with the TTL set only
    when given (else the kernel's default). Raises OSError (EPERM without CAP_NET_RAW)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, IPPROTO_ESP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)  # the kernel's minimum
        attach_filter(sock, DROP_ALL)
        aim_ipv4(sock, key.group, 0, key.source, key.ifindex, key.ttl)
    except BaseException:
        sock.close()
        raise
    return sock
