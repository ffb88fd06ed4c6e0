"""Output lanes: one unconnected, non-blocking UDP socket per way out of the host — address family, output
interface, source address, TTL, multicast or unicast — shared by every output that leaves that way. Each
message carries its own destination, so the frames of every rule leaving through one lane go out in one
sendmmsg per ring block, however many rules (flows) they belong to; counters stay per rule and output.

Only the UDP payload is relayed, so the input's family does not matter: a lane's family is its outputs'.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from typing import TYPE_CHECKING

from mcr.linux.mmsg import SendBatch
from mcr.linux.send_socket import SNDBUF, prepare_ipv4
from mcr.model.rules import IPAddress
from mcr.protocol.worker import WorkerOutput

if TYPE_CHECKING:
    from mcr.worker.table import OutputSlot

__all__ = ["Destinations", "Lane", "LaneKey", "destination", "lane_key", "open_lane_socket"]

#: (IP version, output ifindex, source address, TTL or None, multicast destination)
LaneKey = tuple[int, int, IPAddress, int | None, bool]

_SOCKADDR_IN = struct.Struct("=H2s4s8x")
_SOCKADDR_IN6 = struct.Struct("=H2sI16sI")
# Errors that say the socket cannot take more now, for every destination alike: the rest of the batch fails.
_FULL = (-errno.EAGAIN, -errno.ENOBUFS)


def lane_key(out: WorkerOutput) -> LaneKey:
    return (out.group.version, out.ifindex, out.source, out.ttl, out.group.is_multicast)


def destination(out: WorkerOutput) -> bytes:
    """The output's struct sockaddr_in / sockaddr_in6 (a link-local destination scoped to its interface)."""
    port = out.port.to_bytes(2, "big")
    if out.group.version == 4:
        return _SOCKADDR_IN.pack(socket.AF_INET, port, out.group.packed)
    scope = out.ifindex if out.group.is_link_local else 0
    return _SOCKADDR_IN6.pack(socket.AF_INET6, port, 0, out.group.packed, scope)


class Destinations:
    """Where the outputs' sockaddrs live: slots of 28 bytes in chunks of fixed memory that never move (so a
    slot's address stays valid while the output holds it), taken and given back, not an object per output."""

    CHUNK = 256
    SLOT = 28  # sizeof(struct sockaddr_in6); a sockaddr_in uses the first 16

    def __init__(self) -> None:
        self._chunks: list[ctypes.Array[ctypes.c_char]] = []
        self._free: list[int] = []  # addresses of free slots

    def take(self, out: WorkerOutput) -> int:
        """The address of a slot holding `out`'s destination."""
        if not self._free:
            chunk = (ctypes.c_char * (self.CHUNK * self.SLOT))()
            self._chunks.append(chunk)
            base = ctypes.addressof(chunk)
            self._free.extend(base + i * self.SLOT for i in reversed(range(self.CHUNK)))
        address = self._free.pop()
        name = destination(out)
        ctypes.memmove(address, name, len(name))
        return address

    def give(self, address: int) -> None:
        self._free.append(address)

    @property
    def in_use(self) -> int:
        return len(self._chunks) * self.CHUNK - len(self._free)


def open_lane_socket(out: WorkerOutput) -> socket.socket:
    """A socket that sends from the output interface's address, on that interface, to any destination of the
    lane (multicast: IP_MULTICAST_IF, TTL 1 unless given, no loop back; unicast: bound to the interface, the
    kernel's default TTL unless given). Raises OSError."""
    family = socket.AF_INET if out.group.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        if family == socket.AF_INET:
            prepare_ipv4(sock, out.group.is_multicast, out.source, out.ifindex, out.ttl)
        else:
            _prepare_ipv6(sock, out)
    except BaseException:
        sock.close()
        raise
    return sock


def _prepare_ipv6(sock: socket.socket, out: WorkerOutput) -> None:
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


class Lane:
    """One lane's socket and the frames queued on it during a ring block, flat as the send array wants them:
    (address, length) pairs, a destination address per message, and the output of each message. An output
    counts its messages as sent when they are queued, and takes back those a send then fails (as errors): a
    send that fails nothing, the common case, costs no counting per message. `queue` sends first when the
    batch would overflow; the owner sends every busy lane before it gives the ring block back (the pairs
    point into it), so the counters are exact whenever the owner reads them, between blocks."""

    __slots__ = ("busy", "capacity", "entries", "fd", "namelen", "names", "outs", "sock", "users")

    def __init__(self, sock: socket.socket, namelen: int, busy: list[Lane], capacity: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.namelen = namelen  # the size of every destination on this lane (one family)
        self.capacity = capacity  # messages per send: the owner's send array
        self.users = 0  # outputs on this lane
        self.entries: list[int] = []  # address, length, address, length, ...
        self.names: list[int] = []  # the address of each message's destination
        self.outs: list[OutputSlot] = []  # the output of each message
        self.busy = busy  # the owner's list of lanes with something queued

    def queue(self, out: OutputSlot, entries: list[int], count: int, total: int, batch: SendBatch) -> None:
        """Queue `count` messages of `out` (`entries`: their address, length pairs; `total`: their bytes)."""
        names = self.names
        if not names:
            self.busy.append(self)
        elif len(names) + count > self.capacity:
            self.send(batch)  # still busy: what follows goes with the next send
        self.entries += entries
        out.packets += count  # taken back by `_account` for any that a send fails
        out.bytes += total
        if count == 1:
            names.append(out.name)
            self.outs.append(out)
        else:
            names += [out.name] * count
            self.outs += [out] * count

    def send(self, batch: SendBatch) -> None:
        """Lay the queue out in `batch` and send it; count what went out and what failed per output. A
        destination the kernel refuses fails the rest of its run only; a full socket, the rest of the batch."""
        at = len(self.names)
        if not at:
            return
        batch.set_run(0, self.entries)
        batch.set_names(0, self.names, self.namelen)
        failed: list[tuple[int, int]] = []  # [start, end) of messages not sent
        start, fd = 0, self.fd
        while start < at:
            sent = batch.send(fd, at - start, start)
            if sent > 0:
                start += sent
            elif sent == -errno.EINTR:
                continue
            elif sent in _FULL:
                failed.append((start, at))
                break
            else:
                end = self._run_end(start)
                failed.append((start, end))
                start = end
        if failed:
            self._account(failed)
        self.entries.clear()
        self.names.clear()
        self.outs.clear()

    def _run_end(self, message: int) -> int:
        """Where the run of `message`'s output that holds it ends: the next message of another output."""
        outs = self.outs
        out = outs[message]
        end = message + 1
        while end < len(outs) and outs[end] is out:
            end += 1
        return end

    def _account(self, failed: list[tuple[int, int]]) -> None:
        """Take the messages of the failed ranges back from their outputs' sent counts, as errors."""
        outs, entries = self.outs, self.entries
        for lo, hi in failed:
            for k in range(lo, hi):
                out = outs[k]
                out.packets -= 1
                out.bytes -= entries[2 * k + 1]
                out.errors += 1
