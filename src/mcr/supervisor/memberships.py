"""IGMP and MLD memberships for the input groups, so that real NICs, snooping switches and SSM
networks deliver them: any-source joins (IP_ADD_MEMBERSHIP, IPV6_JOIN_GROUP) and source-specific
ones (MCAST_JOIN_SOURCE_GROUP, which makes the kernel send IGMPv3 / MLDv2 reports)."""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections.abc import Collection, Mapping
from collections.abc import Set as AbstractSet

from mcr.model.rules import IPAddress
from mcr.supervisor.core import Membership

log = logging.getLogger("mcr.supervisor")

_MREQN = struct.Struct("=4s4si")  # struct ip_mreqn
_MREQ6 = struct.Struct("=16sI")  # struct ipv6_mreq
# struct group_source_req: interface, then two sockaddr_storage (128 bytes, 8-byte aligned)
_GSR = struct.Struct("=I4x128s128s")
MCAST_JOIN_SOURCE_GROUP = 46
MCAST_LEAVE_SOURCE_GROUP = 47

#: (ifindex, group, source or None)
Key = tuple[int, IPAddress, IPAddress | None]


def _sockaddr(address: IPAddress) -> bytes:
    """A sockaddr_in / sockaddr_in6 with port 0, padded to sockaddr_storage."""
    if address.version == 4:
        raw = struct.pack("=H2x4s8x", socket.AF_INET, address.packed)
    else:
        raw = struct.pack("=H2xI16sI", socket.AF_INET6, 0, address.packed, 0)
    return raw.ljust(128, b"\0")


def membership_option(key: Key, join: bool) -> tuple[int, int, bytes]:
    """(level, option, value) of the setsockopt that joins (or leaves) one membership."""
    ifindex, group, source = key
    level = socket.IPPROTO_IP if group.version == 4 else socket.IPPROTO_IPV6
    if source is not None:
        option = MCAST_JOIN_SOURCE_GROUP if join else MCAST_LEAVE_SOURCE_GROUP
        return level, option, _GSR.pack(ifindex, _sockaddr(group), _sockaddr(source))
    if group.version == 4:
        option = socket.IP_ADD_MEMBERSHIP if join else socket.IP_DROP_MEMBERSHIP
        return level, option, _MREQN.pack(group.packed, b"\0" * 4, ifindex)
    option = socket.IPV6_JOIN_GROUP if join else socket.IPV6_LEAVE_GROUP
    return level, option, _MREQ6.pack(group.packed, ifindex)


_LIMIT_TTL_S = 5.0  # how long a reading of igmp_max_memberships is used (one read per join costs ~30 µs)
_limit: tuple[float, int] = (-_LIMIT_TTL_S, 20)  # (when read, value)


def _max_per_socket() -> int:
    """net.ipv4.igmp_max_memberships, read again at most every few seconds (an operator may raise it)."""
    global _limit
    now = time.monotonic()
    if now - _limit[0] < _LIMIT_TTL_S:
        return _limit[1]
    try:
        with open("/proc/sys/net/ipv4/igmp_max_memberships") as f:
            value = max(1, int(f.read()))
    except (OSError, ValueError):
        value = 20
    _limit = (now, value)
    return value


class Memberships:
    """Keeps exactly the wanted (interface, group, source) memberships, spread over as many sockets
    as the per-socket limit (net.ipv4.igmp_max_memberships) requires. A socket holds at most one
    membership per (interface, group), so the sources of one group never meet the per-socket source
    limit (igmp_max_msf) and an any-source join never conflicts with a source-specific one. A change
    (`change`) costs the same whatever the number of memberships held."""

    def __init__(self) -> None:
        self.members: dict[socket.socket, int] = {}
        self.failed: dict[Key, str] = {}
        # ifindex -> group -> the socket that holds its any-source membership, as nearly always, or the socket of
        # each of its memberships by source (None: any source). By interface first and with no tuple or dict for
        # a group's one membership: a `Key` kept for each would cost 64 bytes, a dict of one 180.
        self._held: dict[int, dict[IPAddress, socket.socket | dict[IPAddress | None, socket.socket]]] = {}
        # by IP version, the sockets that may have room (under the limit at the last look), oldest first, and
        # the limit they were sorted by: finding a socket for a join looks at these, not at every socket
        self._room: dict[int, dict[socket.socket, None]] = {4: {}, 6: {}}
        self._limit = 0

    def _socket_for(self, key: Key, limit: int) -> socket.socket:
        version = key[1].version
        if limit != self._limit:  # the operator changed igmp_max_memberships: every socket is looked at again
            self._limit = limit
            for room in self._room.values():
                room.clear()
            for sock in self.members:
                self._room[4 if sock.family == socket.AF_INET else 6][sock] = None
        room = self._room[version]
        busy = self._holders(key[0], key[1])
        for sock in list(room):
            if self.members[sock] >= limit:
                del room[sock]  # full: it is put back when one of its memberships goes
            elif sock not in busy:
                return sock
        sock = socket.socket(socket.AF_INET if version == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
        self.members[sock] = 0
        room[sock] = None
        return sock

    def reconcile(self, wanted: Mapping[int, AbstractSet[Membership]]) -> None:
        """Hold exactly `wanted` ({ifindex: memberships})."""
        want: set[Key] = {(idx, g, s) for idx, members in wanted.items() for g, s in members}
        joined = set(self.joined)
        self.change(want - joined, joined - want)
        self.failed = {k: v for k, v in self.failed.items() if k in want}

    def retry(self) -> None:
        """Try the memberships that failed again (e.g. the operator has raised igmp_max_memberships)."""
        self.change(set(self.failed), set())

    def change(self, join: AbstractSet[Key], leave: AbstractSet[Key]) -> None:
        """Leave `leave`, then join `join` (a join that fails is kept in `failed` and tried again by `retry`)."""
        for key in leave:
            self.failed.pop(key, None)
            sock = self._pop(key)
            if sock is None:
                continue
            try:
                sock.setsockopt(*membership_option(key, join=False))
            except OSError:
                pass  # the interface may be gone, and the membership with it
            self.members[sock] -= 1
            if self.members[sock] == 0:
                del self.members[sock]
                self._room[key[1].version].pop(sock, None)
                sock.close()
            else:
                self._room[key[1].version][sock] = None
        if not join:
            return
        limit = _max_per_socket()
        for key in sorted((k for k in join if self.holder(k) is None), key=_order):
            ifindex, group, source = key
            sock = self._socket_for(key, limit)
            try:
                sock.setsockopt(*membership_option(key, join=True))
            except OSError as e:
                if self.members.get(sock) == 0:
                    del self.members[sock]
                    self._room[group.version].pop(sock, None)
                    sock.close()
                if key not in self.failed:
                    hint = " (raise net.ipv4.igmp_max_memberships)" if e.errno == errno.ENOBUFS else ""
                    what = str(group) if source is None else f"{group} from {source}"
                    log.warning("cannot join %s on ifindex %d: %s%s", what, ifindex, e.strerror, hint)
                self.failed[key] = str(e.strerror)
                continue
            if self.failed.pop(key, None) is not None:
                log.info("joined %s on ifindex %d (it had failed before)", group, ifindex)
            self._put(key, sock)
            self.members[sock] += 1

    @property
    def joined(self) -> dict[Key, socket.socket]:
        """Every membership held, and the socket that holds it."""
        return {
            (ifindex, group, source): sock
            for ifindex, groups in self._held.items()
            for group, held in groups.items()
            for source, sock in _by_source(held).items()
        }

    def holder(self, key: Key) -> socket.socket | None:
        """The socket that holds this membership, if it is held."""
        held = self._held.get(key[0], {}).get(key[1])
        return None if held is None else _by_source(held).get(key[2])

    def _holders(self, ifindex: int, group: IPAddress) -> Collection[socket.socket]:
        held = self._held.get(ifindex, {}).get(group)
        return () if held is None else _by_source(held).values()

    def _put(self, key: Key, sock: socket.socket) -> None:
        ifindex, group, source = key
        groups = self._held.setdefault(ifindex, {})
        held = groups.get(group)
        if held is None and source is None:
            groups[group] = sock
        else:
            groups[group] = {**({} if held is None else _by_source(held)), source: sock}

    def _pop(self, key: Key) -> socket.socket | None:
        ifindex, group, source = key
        groups = self._held.get(ifindex, {})
        held = groups.get(group)
        if held is None:
            return None
        rest = dict(_by_source(held))
        sock = rest.pop(source, None)
        if sock is None:
            return None
        if not rest:
            del groups[group]
            if not groups:
                del self._held[ifindex]
        else:
            groups[group] = rest[None] if list(rest) == [None] else rest
        return sock

    def close(self) -> None:
        self.reconcile({})

    def sockets(self) -> list[socket.socket]:
        """The sockets that hold the memberships (a worker holds copies across a restart)."""
        return list(self.members)

    def release(self) -> None:
        """Close our sockets without leaving: the memberships stay while a worker holds copies of them (a
        stop with --keep-data-plane); the next supervisor joins again, then the copies are dropped."""
        for sock in self.members:
            sock.close()
        self.members.clear()
        self._held.clear()


def _by_source(held: socket.socket | dict[IPAddress | None, socket.socket]) -> dict[IPAddress | None, socket.socket]:
    return held if isinstance(held, dict) else {None: held}


def _order(key: Key) -> tuple[int, int, int, int]:
    ifindex, group, source = key
    return (ifindex, group.version, int(group), -1 if source is None else int(source))
