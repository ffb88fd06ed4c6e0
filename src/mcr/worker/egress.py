"""Output lanes: one unconnected, non-blocking UDP socket per way out of the host — address family, output
interface, source address, TTL, multicast or unicast — shared by every output that leaves that way. Each
message carries its own destination, so the frames of every rule leaving through one lane go out in one
sendmmsg per ring block, however many rules (flows) they belong to; counters stay per rule and output.

Only the UDP payload is relayed, so the input's family does not matter: a lane's family is its outputs'.
"""

from __future__ import annotations

import errno
import socket
import struct
from bisect import bisect_right
from typing import TYPE_CHECKING

from mcr.linux.mmsg import SendBatch
from mcr.linux.send_socket import SNDBUF, prepare_ipv4
from mcr.model.rules import IPAddress
from mcr.protocol.worker import WorkerOutput

if TYPE_CHECKING:
    from mcr.worker.table import OutputSlot

__all__ = ["Lane", "LaneKey", "destination", "lane_key", "open_lane_socket"]

#: (IP version, output ifindex, source address, TTL or None, multicast destination)
LaneKey = tuple[int, int, IPAddress, int | None, bool]

_SOCKADDR_IN = struct.Struct("=H2s4s8x")
_SOCKADDR_IN6 = struct.Struct("=H2sI16sI")
# Errors that say the socket cannot take more now, for every destination alike: the rest of the batch fails.
_FULL = (-errno.EAGAIN, -errno.ENOBUFS)


def lane_key(out: WorkerOutput) -> LaneKey:
    return (out.group.version, out.ifindex, out.source, out.ttl, out.group.is_multicast)


def destination(out: WorkerOutput) -> bytearray:
    """The output's struct sockaddr_in / sockaddr_in6 (a link-local destination scoped to its interface). A
    bytearray is never moved or resized, so its address (`buffer_address`) stays valid while it is held."""
    port = out.port.to_bytes(2, "big")
    if out.group.version == 4:
        return bytearray(_SOCKADDR_IN.pack(socket.AF_INET, port, out.group.packed))
    scope = out.ifindex if out.group.is_link_local else 0
    return bytearray(_SOCKADDR_IN6.pack(socket.AF_INET6, port, 0, out.group.packed, scope))


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
    """One lane's socket and the frames queued on it during a ring block: runs of (output, entries) where
    `entries` are a rule's (address, length) pairs. `queue` sends first when the batch would overflow;
    the owner sends every busy lane before it gives the ring block back (the entries point into it)."""

    __slots__ = ("busy", "fd", "queued", "runs", "sock", "users")

    def __init__(self, sock: socket.socket, busy: list[Lane]) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.users = 0  # outputs on this lane
        self.runs: list[tuple[OutputSlot, list[int], int]] = []  # (output, entries, total bytes)
        self.queued = 0  # messages in `runs`
        self.busy = busy  # the owner's list of lanes with something queued

    def queue(self, out: OutputSlot, entries: list[int], total: int, batch: SendBatch) -> None:
        count = len(entries) >> 1
        if not self.queued:
            self.busy.append(self)
        elif self.queued + count > batch.capacity:
            self.send(batch)  # still busy: what follows goes with the next send
        self.runs.append((out, entries, total))
        self.queued += count

    def send(self, batch: SendBatch) -> None:
        """Lay the queued runs out in `batch` and send them; count what went out and what failed per output.
        A destination the kernel refuses fails the rest of its run only; a full socket, the rest of the batch."""
        runs = self.runs
        if not runs:
            return
        at = 0
        ends: list[int] = []
        for out, entries, _total in runs:
            batch.set_run(at, entries)
            count = len(entries) >> 1
            batch.name_run(at, count, out.name, out.namelen)
            at += count
            ends.append(at)
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
                end = ends[bisect_right(ends, start)]
                failed.append((start, end))
                start = end
        begin = 0
        for (out, entries, total), end in zip(runs, ends, strict=True):
            if not failed:
                out.packets += end - begin
                out.bytes += total
            else:
                _account(out, entries, begin, end, failed)
            begin = end
        self.runs = []
        self.queued = 0


def _account(out: OutputSlot, entries: list[int], begin: int, end: int, failed: list[tuple[int, int]]) -> None:
    """Count the messages begin..end-1 of one run (its `entries` from 0) as sent, or as errors where they fall
    in a failed range."""
    for i in range(begin, end):
        if any(lo <= i < hi for lo, hi in failed):
            out.errors += 1
        else:
            out.packets += 1
            out.bytes += entries[2 * (i - begin) + 1]
