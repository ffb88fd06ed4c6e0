"""traffic_generator: send numbered, checksummed UDP payloads at a paced rate with sendmmsg.

One UDP socket bound to (--interface, 0) and connected to (--group, --port); IP_MULTICAST_IF, TTL and loop are
set when the group is multicast. IPv6 works the same way (--interface an IPv6 address: IPV6_MULTICAST_IF is
the index of the interface holding it, from /proc/net/if_inet6; --ttl is the hop limit). Payloads live in a
`PayloadRing` (one slot per in-flight sequence number, patched in place: seq, send time, digest) and go out
in batches of up to --batch messages per sendmmsg(2) call, as many as the token-bucket `Pacer` allows.

Send errors: a message the kernel refuses (EAGAIN/ENOBUFS when a queue is full, ECONNREFUSED after an ICMP
port unreachable, ENETUNREACH, EPERM from a firewall, ...) is counted in `errors` and not retried: its pacing
token is spent, but its sequence number is not, so the next packet takes the number. Sequence numbers are
therefore exactly 0..sent-1 and a sink's loss count measures the path, not the sender. With --rate 0 the
generator waits up to 1 ms for the socket to become writable after EAGAIN/ENOBUFS, so "unlimited" means "as
fast as the kernel accepts". Errors that can never succeed (EBADF, EINVAL, EMSGSIZE, ...) end the run with
exit status 1.

Sequence numbers are sent once each, so `--count N` means N packets accepted by the kernel.

--gso (off by default) sets UDP_SEGMENT: one sendmmsg message then carries up to 64 adjacent payloads and the
kernel cuts it into datagrams, which removes most of the per-packet cost of the send path. The datagrams are
identical on the wire of a real NIC, and a UDP socket receives them one by one, but on veth and loopback the
kernel passes the unsegmented "super-packet" along, so an AF_PACKET capture there (such as the relay's) sees
one large frame. Use it to load UDP receivers, not to feed a relay through veth pairs.

--raw IFACE (off by default; needs CAP_NET_RAW, multicast groups only) sends prebuilt Ethernet frames through
an AF_PACKET socket on IFACE (with PACKET_QDISC_BYPASS) instead of the UDP socket. Each frame is header and
payload in one slot of a frame ring: source MAC of IFACE, destination MAC of the group (01:00:5e + 23 bits, or
33:33 + 32 bits), source --interface; IPv4 with IP ID 0, DF and UDP checksum 0 (which IPv4 allows), IPv6 with
a correct UDP checksum (mandatory there), kept up to date per frame from a per-slot sum plus the stamped
fields (`PayloadRing.track_udp_checksum`). Skipping the sender's own UDP/IP stack roughly doubles the packets
per second one core can offer, which the benchmark needs to overload a relay; the frames are what the UDP
socket would send, except for the IPv4 checksum and IP ID. --raw-mode picks how the frames leave:

- mmsg (default): one sendmmsg message per frame, refusals handled as for the UDP socket.
- ring: the slots are the frames of a mapped PACKET_TX_RING (TPACKET_V2, linux/ring.py). A batch is stamped
  in place, marked TP_STATUS_SEND_REQUEST, and one send(MSG_DONTWAIT) hands them all over; the kernel sends
  straight from the ring's pages. Frames it does not take at once stay queued and go with the next flush, in
  order, so a refusal (counted in `errors`) delays a packet instead of losing its number; frames still queued
  at the end get up to 1 s to leave. A frame the kernel marks TP_STATUS_WRONG_FORMAT (longer than the MTU)
  ends the run with exit status 1. On veth pairs it costs as much CPU per packet as mmsg (bench/sender.py;
  the kernel's per-skb work dominates both, and sendmmsg already makes one system call per batch), which is
  why it is not the default; it may pay off on a real NIC, where its frames are sent without a copy.

--flows N (with --raw, mmsg mode, IPv4) sends to N groups at once, --group, --group + 1, ... on --port,
interleaved: packet k goes to group + k mod N. Each frame slot keeps the header of its group (the ring has a
multiple of N slots), so the cost per packet is the same as with one group. Sequence numbers are one series
across the groups, so a sink receiving what a relay makes of them on one group and port counts loss as usual.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import random
import select
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address
from typing import Final, TypeAlias

from mcr.linux.mmsg import SendBatch, buffer_address
from mcr.linux.packet_socket import SO_SNDBUFFORCE, SOL_PACKET, PacketOpt
from mcr.linux.ring import TP_STATUS_WRONG_FORMAT, TX_DATA_OFFSET, TxRing, tx_layout
from mcr.packet.build import build_udp6_frame, build_udp_frame, udp6_pseudo_header
from mcr.traffic.pacing import NS_PER_S, Pacer, default_burst
from mcr.traffic.payload import BODY_PHASES, HEADER_SIZE, MAX_PAYLOAD, MAX_RUN_ID, PayloadRing
from mcr.traffic.stop import StopFlag, catch_stop_signals, hold_stop_signals

__all__ = [
    "GeneratorConfig",
    "GeneratorSummary",
    "encode_summary",
    "gso_segments",
    "main",
    "open_socket",
    "parse_args",
    "run",
]

log = logging.getLogger(__name__)

_SNDBUF: Final = 4 * 1024 * 1024
_MAX_BATCH: Final = 1024  # UIO_MAXIOV: the kernel takes at most 1024 messages per sendmmsg
_FRAME_HEADER: Final = 42  # Ethernet 14 + IPv4 20 + UDP 8
_FRAME_HEADER6: Final = 62  # Ethernet 14 + IPv6 40 + UDP 8
RAW_MODES: Final = ("mmsg", "ring")  # the first is the default
_RING_MIN_FRAMES: Final = 256
_RING_FLUSH_NS: Final = 1_000_000_000  # at the end, how long frames still queued in the ring may take to leave
_RAW_SOURCE_PORT: Final = 40000
_UDP_SEGMENT: Final = 103  # SOL_UDP option: the kernel cuts each send into datagrams of this size (UDP GSO)
_GSO_MAX_SEGMENTS: Final = 64  # UDP_MAX_SEGMENTS on kernels before 6.x raised it
_FATAL_ERRNOS: Final = frozenset(
    {errno.EBADF, errno.ENOTSOCK, errno.EFAULT, errno.EINVAL, errno.EMSGSIZE, errno.EDESTADDRREQ}
)
_BACKPRESSURE_ERRNOS: Final = frozenset({errno.EAGAIN, errno.ENOBUFS})
_REPORTED_ERRORS: Final = 10
_MAX_SLEEP_NS: Final = 50_000_000  # keeps SIGINT/SIGTERM, progress and --duration responsive
MAX_FLOWS: Final = 65536  # --flows: one frame slot per flow at least
MULTICAST_V4: Final = IPv4Network("224.0.0.0/4")


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    group: IPv4Address | IPv6Address
    port: int
    interface: IPv4Address | IPv6Address
    rate: int = 1000
    size: int = 1024
    count: int = 0
    payload: bytes | None = None
    duration: float | None = None
    ttl: int | None = None  # None: 1 for multicast, the kernel default for unicast
    loop: bool = False
    run_id: int = 0
    batch: int = 64
    gso: bool = False
    raw: str | None = None  # send prebuilt frames through an AF_PACKET socket on this interface
    raw_mode: str = "mmsg"  # how --raw sends: "mmsg" (sendmmsg) or "ring" (PACKET_TX_RING)
    flows: int = 1  # --raw: packet k goes to group + k mod flows
    json: bool = False
    quiet: bool = False


@dataclass(frozen=True, slots=True)
class GeneratorSummary:
    sent: int
    errors: int
    elapsed_s: float
    target_pps: int
    size: int
    run_id: int
    numbered: bool
    first_error: str | None
    cpu_s: float = 0.0  # CPU time of the sending process while it sent (its system time includes the softirq
    # work done in its context, such as a veth peer's receive path)

    @property
    def pps(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def gbps(self) -> float:
        """UDP payload bits per second, in Gbit/s."""
        return self.pps * self.size * 8 / 1e9


def encode_summary(summary: GeneratorSummary) -> dict[str, object]:
    return {
        "sent": summary.sent,
        "errors": summary.errors,
        "elapsed_s": round(summary.elapsed_s, 6),
        "pps": round(summary.pps, 1),
        "target_pps": summary.target_pps,
        "gbps": round(summary.gbps, 6),
        "size": summary.size,
        "run_id": summary.run_id,
        "numbered": summary.numbered,
        "first_error": summary.first_error,
        "cpu_s": round(summary.cpu_s, 6),
    }


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def _address(text: str) -> IPv4Address | IPv6Address:
    try:
        return ip_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an IPv4 or IPv6 address: {text!r}") from exc


def ipv6_ifindex(address: IPv6Address) -> int:
    """The index of the interface that holds `address` (from /proc/net/if_inet6); 0 when none does."""
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == address.packed.hex():
                    return int(fields[1], 16)
    except OSError:
        pass
    return 0


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="traffic_generator",
        description="Send numbered, checksummed UDP payloads (multicast or unicast) at a paced rate.",
    )
    p.add_argument("--group", required=True, type=_address, help="destination group (or unicast address)")
    p.add_argument("--port", required=True, type=int, help="destination UDP port")
    p.add_argument(
        "--interface",
        required=True,
        type=_address,
        help="source IPv4 or IPv6 address (its interface sends the multicast); same family as --group",
    )
    p.add_argument("--rate", type=_non_negative_int, default=1000, help="packets per second, 0 = unlimited")
    p.add_argument("--size", type=_non_negative_int, default=1024, help="UDP payload bytes (default 1024)")
    p.add_argument("--count", type=_non_negative_int, default=0, help="packets to send, 0 = until stopped")
    p.add_argument("--payload", help="raw mode: this string's bytes, zero-padded or truncated to --size (unnumbered)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--ttl", type=int, help="IP TTL (default 1 for multicast, kernel default for unicast)")
    p.add_argument("--loop", action="store_true", help="enable IP_MULTICAST_LOOP (default off)")
    p.add_argument("--run-id", type=_non_negative_int, help="run id stamped in every payload (default random)")
    p.add_argument("--batch", type=_positive_int, default=64, help=f"messages per sendmmsg (1..{_MAX_BATCH})")
    p.add_argument(
        "--gso",
        action="store_true",
        help="UDP GSO: the kernel cuts each send into datagrams (much faster; for UDP receivers, see docs)",
    )
    p.add_argument(
        "--raw",
        metavar="IFACE",
        help="send prebuilt frames through an AF_PACKET socket on IFACE (root, multicast only; about 2x the rate)",
    )
    p.add_argument(
        "--raw-mode",
        choices=RAW_MODES,
        help="with --raw: mmsg = sendmmsg, one message per frame (default); "
        "ring = write the frames into a PACKET_TX_RING, one send() per batch",
    )
    p.add_argument(
        "--flows",
        type=_positive_int,
        default=1,
        help="with --raw (mmsg, IPv4): send to N groups from --group on, interleaved (packet k to group + k mod N)",
    )
    p.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def parse_args(argv: Sequence[str] | None = None) -> GeneratorConfig:
    parser = _build_parser()
    ns = parser.parse_args(argv)
    if not 0 <= ns.port <= 65535:
        parser.error(f"--port must be 0..65535, not {ns.port}")
    if ns.size > MAX_PAYLOAD:
        parser.error(f"--size must be at most {MAX_PAYLOAD} bytes, not {ns.size}")
    if ns.batch > _MAX_BATCH:
        parser.error(f"--batch must be at most {_MAX_BATCH}, not {ns.batch}")
    if ns.duration is not None and not ns.duration > 0:
        parser.error(f"--duration must be positive, not {ns.duration}")
    if ns.ttl is not None and not 0 <= ns.ttl <= 255:
        parser.error(f"--ttl must be 0..255, not {ns.ttl}")
    if ns.run_id is not None and ns.run_id > MAX_RUN_ID:
        parser.error(f"--run-id must be at most {MAX_RUN_ID}, not {ns.run_id}")
    if ns.group.version != ns.interface.version:
        parser.error(f"--group {ns.group} and --interface {ns.interface} must be of the same IP version")
    if ns.raw is not None and not ns.group.is_multicast:
        parser.error(f"--raw needs a multicast --group (its MAC follows from the group), not {ns.group}")
    if ns.raw_mode is not None and ns.raw is None:
        parser.error("--raw-mode goes with --raw")
    if ns.raw is not None and ns.gso:
        parser.error("--raw and --gso do not go together")
    if ns.flows > 1:
        if ns.raw is None or (ns.raw_mode or RAW_MODES[0]) != "mmsg" or ns.group.version != 4:
            parser.error("--flows needs --raw in mmsg mode and an IPv4 --group")
        if ns.flows > MAX_FLOWS:
            parser.error(f"--flows must be at most {MAX_FLOWS}, not {ns.flows}")
        last = int(ns.group) + ns.flows - 1
        if last > int(MULTICAST_V4.broadcast_address):
            parser.error(f"--flows {ns.flows} from {ns.group} leaves 224.0.0.0/4")
    if ns.gso and gso_segments(ns.size) < 2:
        parser.error(f"--gso needs --size between 1 and {MAX_PAYLOAD // 2} bytes, not {ns.size}")
    return GeneratorConfig(
        group=ns.group,
        port=ns.port,
        interface=ns.interface,
        rate=ns.rate,
        size=ns.size,
        count=ns.count,
        payload=None if ns.payload is None else os.fsencode(ns.payload),
        duration=ns.duration,
        ttl=ns.ttl,
        loop=ns.loop,
        run_id=random.randrange(MAX_RUN_ID + 1) if ns.run_id is None else ns.run_id,
        batch=ns.batch,
        gso=ns.gso,
        raw=ns.raw,
        raw_mode=ns.raw_mode or RAW_MODES[0],
        flows=ns.flows,
        json=ns.json,
        quiet=ns.quiet,
    )


def open_socket(config: GeneratorConfig) -> socket.socket:
    """The sending socket: bound to (interface, 0), connected to (group, port), non-blocking."""
    family = socket.AF_INET if config.group.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        _set_sndbuf(sock, _SNDBUF)
        if isinstance(config.interface, IPv6Address):
            ifindex = ipv6_ifindex(config.interface)
            if config.group.is_multicast:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
                hops = 1 if config.ttl is None else config.ttl
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hops)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1 if config.loop else 0)
            elif config.ttl is not None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, config.ttl)
            scope = ifindex if config.interface.is_link_local else 0
            sock.bind((str(config.interface), 0, 0, scope))
            sock.connect((str(config.group), config.port, 0, scope))
            sock.setblocking(False)
            return sock
        if config.group.is_multicast:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, config.interface.packed)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1 if config.ttl is None else config.ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1 if config.loop else 0)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            if config.ttl is not None:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, config.ttl)
        sock.bind((str(config.interface), 0))
        sock.connect((str(config.group), config.port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_sndbuf(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def open_raw_socket(config: GeneratorConfig) -> socket.socket:
    """An AF_PACKET socket bound to --raw's interface that sends whole frames and receives nothing."""
    assert config.raw is not None
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: no packet is ever received
    try:
        _set_sndbuf(sock, _SNDBUF)
        sock.setsockopt(SOL_PACKET, PacketOpt.QDISC_BYPASS, 1)
        sock.bind((config.raw, 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def flow_groups(config: GeneratorConfig) -> list[IPv4Address | IPv6Address]:
    """The groups the frames go to, in the order packets take them (--flows)."""
    return [config.group + i for i in range(config.flows)]


def frame_header(config: GeneratorConfig, src_mac: bytes, group: IPv4Address | IPv6Address | None = None) -> bytes:
    """The Ethernet/IP/UDP header every --raw frame (to `group`, default --group) starts with (the payload
    size is fixed per run).

    IPv4: 42 bytes, IP ID 0 with DF, UDP checksum 0 (allowed for IPv4; the payload varies, the header is
    shared). IPv6: 62 bytes, its UDP checksum computed for an all-zero payload (each frame's is kept correct by
    `PayloadRing.track_udp_checksum`, see `udp_checksum_prefix`).
    """
    hops = 1 if config.ttl is None else config.ttl
    group = config.group if group is None else group
    if isinstance(group, IPv6Address):
        assert isinstance(config.interface, IPv6Address)  # parse_args: same family
        frame = build_udp6_frame(
            src_mac=src_mac,
            src_ip=config.interface,
            dst_ip=group,
            src_port=_RAW_SOURCE_PORT,
            dst_port=config.port,
            payload=bytes(config.size),
            hop_limit=hops,
        )
        return frame[:_FRAME_HEADER6]
    assert isinstance(config.interface, IPv4Address)
    frame = build_udp_frame(
        src_mac=src_mac,
        src_ip=config.interface,
        dst_ip=group,
        src_port=_RAW_SOURCE_PORT,
        dst_port=config.port,
        payload=bytes(config.size),
        ttl=hops,
        dont_fragment=True,
        with_udp_checksum=False,
    )
    return frame[:_FRAME_HEADER]


def udp_checksum_prefix(config: GeneratorConfig, header: bytes) -> bytes | None:
    """What the UDP checksum covers besides the payload, for frames that need one (IPv6), else None."""
    if not isinstance(config.group, IPv6Address):
        return None
    assert isinstance(config.interface, IPv6Address)
    udp = header[-8:-2] + b"\0\0"  # ports and length; the checksum field counts as zero
    return udp6_pseudo_header(config.interface, config.group, 8 + config.size) + udp


def frame_ring(
    config: GeneratorConfig,
    header: bytes,
    slots: int,
    buffer: bytearray | memoryview | None = None,
    stride: int | None = None,
    first: int = 0,
    flow_headers: Sequence[bytes] = (),
) -> PayloadRing:
    """A PayloadRing whose slots are whole frames: `header` (then the payload) from `first` on, every `stride`
    bytes (default: back to back), with a correct UDP checksum per frame where the family needs one.
    `flow_headers` (--flows, IPv4; all of `header`'s length): slot k starts with flow_headers[k mod len]."""
    h = len(header)
    ring = PayloadRing(
        run_id=config.run_id,
        size=config.size,
        slots=slots,
        raw=config.payload,
        buffer=buffer,
        stride=h + config.size if stride is None else stride,
        start=first + h,
    )
    buf = ring.buffer
    for k in range(slots):
        off = ring.offset(k)
        buf[off - h : off] = flow_headers[k % len(flow_headers)] if flow_headers else header
    prefix = udp_checksum_prefix(config, header)
    if prefix is not None:
        ring.track_udp_checksum(prefix)
    return ring


def _describe(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)})"


class _PlainSender:
    """One datagram per sendmmsg message: message k is ring slot k, with the `prefix` bytes in front of it (the
    frame header of a --raw ring). A ring of more than _MAX_BATCH slots (--flows) is split into message arrays
    of up to that many; a call sends within one of them (`room`)."""

    __slots__ = ("_batch", "_batches", "_chunk", "_fd", "_stamp")

    what = "sendmmsg"

    def __init__(self, fd: int, ring: PayloadRing, prefix: int = 0) -> None:
        self._fd = fd
        self._stamp = ring.stamp
        self._chunk = min(ring.slots, _MAX_BATCH)
        self._batches = [SendBatch(min(self._chunk, ring.slots - k)) for k in range(0, ring.slots, self._chunk)]
        self._batch = self._batches[0]
        base = buffer_address(ring.buffer)
        for k in range(ring.slots):
            self._batches[k // self._chunk].set(k % self._chunk, base + ring.offset(k) - prefix, prefix + ring.size)

    def room(self, slot: int, want: int) -> int:
        left = self._chunk - slot % self._chunk
        return want if want < left else left

    def send(self, seq: int, slot: int, n: int, now_ns: int) -> tuple[int, int, int]:
        """Stamp and send packets seq..seq+n-1 from slots slot..slot+n-1: (sent, refused, errno or 0).

        Refused packets are dropped: their sequence numbers go to the next packets."""
        self._stamp(seq, n, now_ns)
        sent = self._batches[slot // self._chunk].send(self._fd, n, slot % self._chunk)
        if sent >= 0:
            return sent, n - sent, 0
        return 0, n, -sent

    def push(self) -> tuple[int, int]:
        return 0, 0

    def finish(self, seq: int) -> tuple[int, int]:
        """(packets sent, refusals) once the loop is done."""
        return seq, 0


class _GsoSender(_PlainSender):
    """UDP GSO: each sendmmsg message covers up to `per_message` adjacent slots (cut by UDP_SEGMENT)."""

    __slots__ = ("_base", "_per_message", "_size")

    def __init__(self, fd: int, ring: PayloadRing, per_message: int) -> None:
        self._fd = fd
        self._stamp = ring.stamp
        self._size = ring.size
        self._per_message = per_message
        self._base = buffer_address(ring.buffer)
        self._batch = SendBatch(-(-ring.slots // per_message))
        self._batches = [self._batch]
        self._chunk = ring.slots  # batches never wrap around the ring's end (`_run`): room() limits nothing

    def send(self, seq: int, slot: int, n: int, now_ns: int) -> tuple[int, int, int]:
        self._stamp(seq, n, now_ns)
        per_message = self._per_message
        size = self._size
        address = self._base + slot * size  # slots are back to back (stride == size)
        messages = 0
        left = n
        while left > 0:
            k = per_message if left > per_message else left
            self._batch.set(messages, address, k * size)
            address += k * size
            left -= k
            messages += 1
        sent = self._batch.send(self._fd, messages)
        if sent == messages:
            return n, 0, 0
        if sent < 0:
            return 0, n, -sent
        return sent * per_message, n - sent * per_message, 0  # every message but the last is full


class _RingSender:
    """PACKET_TX_RING: frame k of the ring is payload slot k. `send()` stamps the frames, hands them to the
    kernel and flushes with one send(); the kernel takes them in ring order.

    Frames the kernel does not take at once (a full send buffer, a device that dropped one and gave it back)
    stay requested and leave with a later flush, in order, so sequence numbers stay gapless; a refusal is
    counted as one error. `taken` counts the frames the kernel has taken: exactly the packets sent.
    """

    __slots__ = ("_flush", "_frame_len", "_frames", "_queued", "_stamp", "taken")

    what = "send on the PACKET_TX_RING"

    def __init__(self, tx: TxRing, ring: PayloadRing, frame_len: int) -> None:
        self._frames = tx.frames
        self._flush = tx.flush
        self._stamp = ring.stamp
        self._frame_len = frame_len
        self._queued = 0
        self.taken = 0

    def room(self, slot: int, want: int) -> int:
        """How many frames from `slot` on may be written now (the kernel is done with them)."""
        return self._frames.free(slot, want)

    def send(self, seq: int, slot: int, n: int, now_ns: int) -> tuple[int, int, int]:
        self._stamp(seq, n, now_ns)
        self._frames.request(slot, n)
        self._queued = seq + n
        err = self._push()
        return n, 1 if err else 0, err

    def _push(self) -> int:
        result = self._flush()
        if result >= 0:
            self.taken += result // self._frame_len  # every frame has the same length
            return 0
        # An error return drops the count of frames taken before it: read their states instead.
        frames = self._frames
        self.taken += frames.taken(self.taken % frames.count, self._queued - self.taken)
        return -result

    def push(self) -> tuple[int, int]:
        """Flush frames still waiting in the ring: (refusals, errno or 0)."""
        err = self._push() if self.taken < self._queued else 0
        return 1 if err else 0, err

    def wrong_format(self) -> bool:
        """Whether the kernel refused the next frame as malformed (TP_STATUS_WRONG_FORMAT)."""
        frames = self._frames
        return self.taken < self._queued and frames.status(self.taken % frames.count) == TP_STATUS_WRONG_FORMAT

    def finish(self, seq: int) -> tuple[int, int]:
        """Flush what is still queued, for at most `_RING_FLUSH_NS`: (packets sent, refusals meanwhile)."""
        deadline = time.monotonic_ns() + _RING_FLUSH_NS
        refused = 0
        while self.taken < seq and time.monotonic_ns() < deadline:
            before = self.taken
            if self._push():
                refused += 1
            if self.taken == before:
                time.sleep(0.001)
        return self.taken, refused


def gso_segments(size: int) -> int:
    """Datagrams per UDP GSO send for this payload size (kernel limits: 64 segments, 65507 bytes)."""
    return min(_GSO_MAX_SEGMENTS, MAX_PAYLOAD // size) if size > 0 else 0


_Sender: TypeAlias = _PlainSender | _RingSender


def _open_sender(config: GeneratorConfig, sock: socket.socket) -> tuple[_Sender, PayloadRing, TxRing | None]:
    """The sender for the socket and the mode, its payload ring, and the TX ring to unmap afterwards (if any)."""
    fd = sock.fileno()
    slots = -(-config.batch // BODY_PHASES) * BODY_PHASES
    if sock.family != socket.AF_PACKET:
        ring = PayloadRing(run_id=config.run_id, size=config.size, slots=slots, raw=config.payload)
        if config.gso:
            sock.setsockopt(socket.IPPROTO_UDP, _UDP_SEGMENT, config.size)
            return _GsoSender(fd, ring, gso_segments(config.size)), ring, None
        return _PlainSender(fd, ring), ring, None
    header = frame_header(config, sock.getsockname()[4])
    frame_len = len(header) + config.size
    if config.raw_mode == "mmsg":
        if config.flows > 1:  # a multiple of the flows: packet k is always in a slot of group + k mod flows
            period = math.lcm(config.flows, BODY_PHASES)
            slots = -(-slots // period) * period
            mac = sock.getsockname()[4]
            flows = [frame_header(config, mac, g) for g in flow_groups(config)]
            ring = frame_ring(config, header, slots, flow_headers=flows)
        else:
            ring = frame_ring(config, header, slots)
        return _PlainSender(fd, ring, len(header)), ring, None
    layout = tx_layout(frame_len, max(_RING_MIN_FRAMES, 2 * config.batch), BODY_PHASES)
    _set_sndbuf(sock, max(_SNDBUF, 2 * layout.size))
    tx = TxRing(sock, layout)
    try:
        ring = frame_ring(config, header, layout.frame_count, tx.view, layout.frame_size, TX_DATA_OFFSET)
        tx.frames.set_length(frame_len)
    except BaseException:
        tx.unmap()
        raise
    return _RingSender(tx, ring, frame_len), ring, tx


def run(config: GeneratorConfig, sock: socket.socket, stop: StopFlag | None = None) -> GeneratorSummary:
    """Send until --count, --duration or a stop signal and return the summary.

    Fatal send errors raise OSError. Batches never wrap around the end of the payload ring, so each one is a
    contiguous run of slots (a batch cut at the end continues from slot 0 on the next call).
    """
    sender, ring, tx = _open_sender(config, sock)
    try:
        return _run(config, sock, sender, ring, stop or StopFlag())
    finally:
        if tx is not None:
            tx.unmap()


def _run(
    config: GeneratorConfig, sock: socket.socket, sender: _Sender, ring: PayloadRing, stop: StopFlag
) -> GeneratorSummary:
    clock = time.monotonic_ns
    cpu0 = time.process_time()
    slots = ring.slots
    send = sender.send
    room = sender.room
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)

    start = clock()
    pacer = Pacer(config.rate, start, default_burst(config.rate, config.batch))
    deadline = start + int(config.duration * NS_PER_S) if config.duration else None
    progress_every = NS_PER_S
    next_progress = start + progress_every
    last_progress_sent = 0
    last_progress_ns = start
    count = config.count
    max_batch = config.batch
    seq = 0
    errors = 0
    reported = 0
    first_error: str | None = None
    unlimited = config.rate == 0

    while not stop.signum:
        now = clock()
        if deadline is not None and now >= deadline:
            break
        if now >= next_progress:
            if not config.quiet:
                _progress(seq, errors, now - last_progress_ns, seq - last_progress_sent, config.size)
            last_progress_ns = now
            last_progress_sent = seq
            next_progress = now + progress_every
        slot = seq % slots
        want = max_batch if max_batch < slots - slot else slots - slot
        if count:
            if seq >= count:
                break
            want = min(want, count - seq)
        want = room(slot, want)
        if want:
            n = pacer.due(now, want)
            if n == 0:
                wait = min(pacer.wait_ns(now), next_progress - now, _MAX_SLEEP_NS)
                if deadline is not None:
                    wait = min(wait, deadline - now)
                if wait > 0:
                    time.sleep(wait / NS_PER_S)
                continue
            queued, refused, err = send(seq, slot, n, now)
            seq += queued
        else:  # the TX ring's next frame is still the kernel's: flush what waits, and give it a moment
            refused, err = sender.push()
            poller.poll(1)
        errors += refused
        if not err:
            continue  # (a short count: the kernel stopped at a message it refused; the next call reports why)
        if first_error is None:
            first_error = _describe(err)
        if err in _FATAL_ERRNOS:
            raise OSError(err, f"{sender.what}: {os.strerror(err)}{_wrong_format_note(sender)}")
        if reported < _REPORTED_ERRORS and not config.quiet:
            reported += 1
            print(f"send error: {_describe(err)}", file=sys.stderr)
        if unlimited and err in _BACKPRESSURE_ERRNOS:
            poller.poll(1)
    sent, refused = sender.finish(seq)
    errors += refused
    elapsed = (clock() - start) / NS_PER_S
    return GeneratorSummary(
        sent=sent,
        errors=errors,
        elapsed_s=elapsed,
        target_pps=config.rate,
        size=config.size,
        run_id=config.run_id,
        numbered=ring.numbered,
        first_error=first_error,
        cpu_s=time.process_time() - cpu0,
    )


def _wrong_format_note(sender: _Sender) -> str:
    if isinstance(sender, _RingSender) and sender.wrong_format():
        return " (the kernel marked the frame TP_STATUS_WRONG_FORMAT: too long for the interface's MTU?)"
    return ""


def _progress(sent: int, errors: int, interval_ns: int, interval_sent: int, size: int) -> None:
    pps = interval_sent * NS_PER_S / interval_ns if interval_ns > 0 else 0.0
    gbps = pps * size * 8 / 1e9
    print(
        f"Progress: {sent} packets sent, current rate: {pps:.0f} pps ({gbps:.3f} Gbps), errors: {errors}",
        file=sys.stderr,
        flush=True,
    )


def _render(summary: GeneratorSummary) -> str:
    kind = "numbered" if summary.numbered else f"unnumbered (numbered needs >= {HEADER_SIZE} bytes)"
    target = "unlimited" if summary.target_pps == 0 else f"{summary.target_pps} pps"
    per_packet_us = summary.cpu_s * 1e6 / summary.sent if summary.sent else 0.0
    lines = [
        f"Total packets sent: {summary.sent}",
        f"Errors: {summary.errors}" + (f" (first: {summary.first_error})" if summary.first_error else ""),
        f"Elapsed: {summary.elapsed_s:.3f} s",
        f"Actual rate: {summary.pps:.0f} pps (target {target})",
        f"Throughput: {summary.gbps:.3f} Gbps",
        f"CPU: {summary.cpu_s:.3f} s" + (f", {per_packet_us:.2f} us per packet" if summary.sent else ""),
        f"Packet size: {summary.size} bytes, {kind}, run id {summary.run_id}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        sock = open_socket(config) if config.raw is None else open_raw_socket(config)
    except OSError as exc:
        print(f"traffic_generator: cannot open the socket: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = catch_stop_signals()
    try:
        summary = run(config, sock, stop)
    except OSError as exc:
        print(f"traffic_generator: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    if config.json:
        print(json.dumps(encode_summary(summary)), flush=True)
    else:
        print(_render(summary), flush=True)
    hold_stop_signals()
    return 0


if __name__ == "__main__":
    sys.exit(main())
