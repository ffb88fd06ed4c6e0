"""Output sockets: one connected, non-blocking UDP socket per rule output."""

from __future__ import annotations

import socket
import struct

from mcr.model.rules import MULTICAST_V4
from mcr.protocol.worker import WorkerOutput

SNDBUF = 4 << 20
_MREQN = struct.Struct("=4s4si")


def open_output_socket(out: WorkerOutput) -> socket.socket:
    """A socket that sends from the output interface's address, on that interface, to the destination."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        if out.group in MULTICAST_V4:
            mreqn = _MREQN.pack(b"\0\0\0\0", out.source.packed, out.ifindex)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, out.ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, socket.if_indextoname(out.ifindex).encode())
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, out.ttl)
        sock.bind((str(out.source), 0))
        sock.connect((str(out.group), out.port))
    except BaseException:
        sock.close()
        raise
    return sock
