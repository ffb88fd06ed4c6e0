"""IGMP memberships for the input groups, so that real NICs and snooping switches deliver them."""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Mapping
from ipaddress import IPv4Address

log = logging.getLogger("mcr.supervisor")

_MREQN = struct.Struct("=4s4si")


def _max_per_socket() -> int:
    try:
        with open("/proc/sys/net/ipv4/igmp_max_memberships") as f:
            return max(1, int(f.read()))
    except (OSError, ValueError):
        return 20


class Memberships:
    """Keeps exactly the wanted (interface, group) memberships, spread over as many sockets as the
    per-socket limit (net.ipv4.igmp_max_memberships) requires."""

    def __init__(self) -> None:
        self.joined: dict[tuple[int, IPv4Address], socket.socket] = {}
        self.members: dict[socket.socket, int] = {}
        self.failed: dict[tuple[int, IPv4Address], str] = {}

    def _socket_for(self, ifindex: int, limit: int) -> socket.socket:
        for (idx, _g), sock in self.joined.items():
            if idx == ifindex and self.members[sock] < limit:
                return sock
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.members[sock] = 0
        return sock

    def reconcile(self, wanted: Mapping[int, frozenset[IPv4Address]]) -> None:
        want = {(idx, g) for idx, groups in wanted.items() for g in groups}
        for key in [k for k in self.joined if k not in want]:
            sock = self.joined.pop(key)
            try:
                sock.setsockopt(
                    socket.IPPROTO_IP,
                    socket.IP_DROP_MEMBERSHIP,
                    _MREQN.pack(key[1].packed, b"\0" * 4, key[0]),
                )
            except OSError:
                pass  # the interface may be gone, and the membership with it
            self.members[sock] -= 1
            if self.members[sock] == 0:
                del self.members[sock]
                sock.close()
        self.failed = {k: v for k, v in self.failed.items() if k in want}
        limit = _max_per_socket()
        for key in sorted(want - set(self.joined), key=lambda k: (k[0], int(k[1]))):
            ifindex, group = key
            sock = self._socket_for(ifindex, limit)
            try:
                sock.setsockopt(
                    socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _MREQN.pack(group.packed, b"\0" * 4, ifindex)
                )
            except OSError as e:
                if self.members.get(sock) == 0:
                    del self.members[sock]
                    sock.close()
                if key not in self.failed:
                    hint = " (raise net.ipv4.igmp_max_memberships)" if e.errno == errno.ENOBUFS else ""
                    log.warning("cannot join %s on ifindex %d: %s%s", group, ifindex, e.strerror, hint)
                self.failed[key] = str(e.strerror)
                continue
            if self.failed.pop(key, None) is not None:
                log.info("joined %s on ifindex %d (it had failed before)", group, ifindex)
            self.joined[key] = sock
            self.members[sock] += 1

    def close(self) -> None:
        self.reconcile({})
