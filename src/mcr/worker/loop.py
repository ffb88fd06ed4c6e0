"""The data-plane loop: capture rings in, batched UDP sends out, counters pushed on a timer.

Per packet the loop does only what it must: read the frame header, parse, look the flow up, ask the
rule's token bucket when it has a rate limit, and point the rule's send batch at the payload inside the
ring (no copy). Each batch is then sent with
one sendmmsg per output socket, before the ring block goes back to the kernel.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field

from mcr.linux.mmsg import SendBatch
from mcr.linux.packet_socket import attach_filter, read_statistics
from mcr.linux.ring import BLOCK_HEADER, FRAME_HEADER, RxRing
from mcr.model.errors import ProtocolError
from mcr.model.ratelimit import TokenBucket
from mcr.packet.cbpf import build_capture_filter, pack_program
from mcr.packet.parse import DROP_KEYS, DropReason, parse_frame, src_address
from mcr.protocol.worker import (
    CloseSockets,
    Command,
    OpenSockets,
    Ready,
    SetLogLevels,
    Shutdown,
    StatsReport,
    Sync,
    SyncAck,
    decode_command,
    encode_reply,
    encode_stats,
)
from mcr.worker.egress import open_output_socket
from mcr.worker.table import (
    OutputSlot,
    RuleSlot,
    SourceSplit,
    filter_groups,
    filter_groups6,
    index_rules,
    index_sources,
    wire_key_from_flow_key,
)

log = logging.getLogger("mcr.worker")

BATCH = 1024
STATS_INTERVAL_S = 0.5
MAX_FDS_PER_MESSAGE = 64
NO_RULE = int(DropReason.NO_RULE)
NOT_IPV4 = int(DropReason.NOT_IPV4)
RATE_LIMITED = int(DropReason.RATE_LIMITED)

# The fast path: tpacket3_hdr fields, then at FAST_MAC (where the kernel puts an Ethernet frame in a
# TPACKET_V3 block: 48-byte header + sockaddr_ll, aligned) the Ethernet type, IPv4 header and UDP
# header, all read little-endian (network fields are compared in wire order, see wire_key).
FAST_MAC = 82
FAST_FRAME = struct.Struct("<I8xI4xIH" + f"{FAST_MAC - 26}x" + "12xHBxH2xHxB2x4xI2xHH")
TP_STATUS_VLAN_VALID = 0x10  # the kernel took an 802.1Q tag off: the frame belongs to a VLAN, not to us
ETHERTYPE_IPV4_LE = 0x0008
FRAG_MASK_LE = 0xFF3F
_OUTPUT_KEY = tuple[str, int, int, int, int, int, int | None]


@dataclass(slots=True)
class Capture:
    ifindex: int
    ring: RxRing
    table: dict[int, RuleSlot] = field(default_factory=dict)
    sources: dict[int, SourceSplit] = field(default_factory=dict)  # rules that name a source


class DataPlane:
    def __init__(self, worker_id: int, channel: socket.socket, stats_fd: int) -> None:
        self.worker_id = worker_id
        self.channel = channel
        self.stats_fd = stats_fd
        self.captures: dict[int, Capture] = {}
        self.slots: dict[str, RuleSlot] = {}
        self.sockets: dict[_OUTPUT_KEY, socket.socket] = {}
        self.rules_by_if: dict[int, dict[int, RuleSlot]] = {}
        self.sources_by_if: dict[int, dict[int, SourceSplit]] = {}
        self.drops = [0] * len(DROP_KEYS)
        self.ring_resyncs = 0  # times a capture ring had drifted out of order (see RxRing.resync)
        self.kernel_packets = 0
        self.kernel_drops = 0
        self.pipe_errors = 0
        self.pending_stats = b""
        self.generation = 0
        self.running = True
        self.poller = select.poll()
        self.poller.register(channel.fileno(), select.POLLIN)
        self.pid = os.getpid()

    # ------------------------------------------------------------------------------------ channel

    def send_reply(self, reply: Ready | SyncAck) -> None:
        self.channel.send(encode_reply(reply))

    def handle_channel(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.channel, 16 << 20, MAX_FDS_PER_MESSAGE)
        except BlockingIOError:
            return
        if not data:
            log.info("supervisor closed the channel; worker %d exiting", self.worker_id)
            self.running = False
            for fd in fds:
                os.close(fd)
            return
        try:
            cmd = decode_command(data)
        except ProtocolError as e:
            log.error("ignoring malformed command from the supervisor: %s", e)
            for fd in fds:
                os.close(fd)
            return
        self.apply(cmd, fds)

    def apply(self, cmd: Command, fds: list[int]) -> None:
        match cmd:
            case OpenSockets():
                for ifindex, fd in zip(cmd.ifindexes, fds, strict=False):
                    self.add_capture(ifindex, socket.socket(fileno=fd))
                for fd in fds[len(cmd.ifindexes) :]:
                    os.close(fd)
            case CloseSockets():
                for ifindex in cmd.ifindexes:
                    self.remove_capture(ifindex)
            case Sync():
                self.sync(cmd)
                self.generation = cmd.generation
                self.send_reply(SyncAck(cmd.generation))
            case SetLogLevels():
                logging.getLogger().setLevel(cmd.global_level)
                for name, level in cmd.overrides:
                    logging.getLogger(name).setLevel(level)
            case Shutdown():
                self.running = False

    def add_capture(self, ifindex: int, sock: socket.socket) -> None:
        self.remove_capture(ifindex)
        ring = RxRing(sock)
        cap = Capture(ifindex, ring, self.rules_by_if.get(ifindex, {}), self.sources_by_if.get(ifindex, {}))
        self.captures[ifindex] = cap
        self.poller.register(sock.fileno(), select.POLLIN)
        self.refilter(cap)
        log.debug("capturing on ifindex %d", ifindex)

    def remove_capture(self, ifindex: int) -> None:
        cap = self.captures.pop(ifindex, None)
        if cap is None:
            return
        self.poller.unregister(cap.ring.sock.fileno())
        self.account_kernel(cap)
        cap.ring.close()

    def refilter(self, cap: Capture) -> None:
        rules = [s.rule for s in self.slots.values()]
        program = build_capture_filter(filter_groups(rules, cap.ifindex), filter_groups6(rules, cap.ifindex))
        attach_filter(cap.ring.sock, pack_program(program))

    # --------------------------------------------------------------------------------------- rules

    def sync(self, cmd: Sync) -> None:
        """Replace the rule set; rules and output sockets that did not change keep their state. A rule whose
        epoch changed (the supervisor re-added it, e.g. a reload changed it) starts again from zero counters."""
        old = self.slots
        slots: dict[str, RuleSlot] = {}
        wanted: set[_OUTPUT_KEY] = set()
        for rule in cmd.rules:
            prev = old.get(rule.rule_id)
            keep = prev is not None and prev.rule.ifindex == rule.ifindex and prev.rule.group == rule.group
            keep = keep and prev is not None and (prev.rule.port, prev.rule.source) == (rule.port, rule.source)
            keep = keep and prev is not None and prev.rule.epoch == rule.epoch  # a new epoch: counters from zero
            outputs: list[OutputSlot] = []
            prev_outputs = {o.spec: o for o in prev.outputs} if keep and prev is not None else {}
            for spec in rule.outputs:
                key = (
                    rule.rule_id,
                    spec.index,
                    int(spec.group),
                    spec.port,
                    spec.ifindex,
                    int(spec.source),
                    spec.ttl,
                )
                wanted.add(key)
                out = prev_outputs.get(spec) or OutputSlot(spec)
                sock = self.sockets.get(key)
                if sock is None:
                    try:
                        sock = open_output_socket(spec)
                    except OSError as e:
                        log.warning("rule %s output %d: cannot open socket: %s", rule.rule_id, spec.index, e)
                        out.fd = -1
                        outputs.append(out)
                        continue
                    self.sockets[key] = sock
                out.fd = sock.fileno()
                outputs.append(out)
            slot = RuleSlot(rule, outputs, prev.batch if keep and prev is not None else SendBatch(BATCH))
            if keep and prev is not None:
                slot.packets, slot.bytes, slot.drops = prev.packets, prev.bytes, prev.drops
            if keep and prev is not None and prev.rule.rate_limit == rule.rate_limit:
                slot.bucket = prev.bucket  # an unrelated change does not refill the bucket
            elif rule.rate_limit is not None:
                slot.bucket = TokenBucket(rule.rate_limit)
            slots[rule.rule_id] = slot
        for key in list(self.sockets):
            if key not in wanted:
                self.sockets.pop(key).close()
        self.slots = slots
        self.rules_by_if = index_rules(slots.values())
        self.sources_by_if = index_sources(slots.values())
        for cap in self.captures.values():
            cap.table = self.rules_by_if.get(cap.ifindex, {})
            cap.sources = self.sources_by_if.get(cap.ifindex, {})
            self.refilter(cap)
        log.debug("synced generation %d: %d rules", cmd.generation, len(slots))

    # ------------------------------------------------------------------------------------ hot path

    def drain(self, cap: Capture, max_blocks: int = 64) -> int:
        """Process every block the kernel has handed over; returns the number of frames seen.

        The fast path reads the ring's frame header and the Ethernet/IPv4/UDP headers of a plain
        frame (no IP options, no fragment) with a single unpack; anything else takes the general
        parser, which counts the drop reason (IPv6 always takes it). A flow whose rules name sources
        is looked up in `cap.sources` by the frame's source address, only when the plain table misses.
        """
        ring = cap.ring
        mm = ring.view
        base = ring.address
        table = cap.table
        sources = cap.sources
        drops = self.drops
        flush = self.flush
        unpack_block = BLOCK_HEADER.unpack_from
        fast = FAST_FRAME.unpack_from
        fast_limit = len(mm) - FAST_FRAME.size
        parse = parse_frame
        clock = time.monotonic_ns
        handled = 0
        for _ in range(max_blocks):
            boff = ring.ready_block()
            if boff < 0:
                break
            _status, num_pkts, first = unpack_block(mm, boff + 8)
            off = boff + first
            now = clock()  # rate limits take their credit against one reading of the clock per block
            pending: dict[RuleSlot, list[int]] = {}
            for _i in range(num_pkts):
                if off <= fast_limit:
                    nxt, snap, status, mac, ethertype, vihl, total, frag, proto, dst, port, ulen = fast(mm, off)
                    key = (dst << 16) | port
                    total = ((total & 0xFF) << 8) | (total >> 8)
                    plen = (((ulen & 0xFF) << 8) | (ulen >> 8)) - 8
                    fast_ok = (
                        mac == FAST_MAC
                        and not status & TP_STATUS_VLAN_VALID
                        and ethertype == ETHERTYPE_IPV4_LE
                        and vihl == 0x45
                        and proto == 17
                        and not frag & FRAG_MASK_LE
                        and 14 + total <= snap
                        and 0 <= plen <= total - 28
                    )
                    poff = off + FAST_MAC + 42
                else:
                    nxt, _s, _ns, snap, _len, status, mac = FRAME_HEADER.unpack_from(mm, off)
                    fast_ok = False
                if not fast_ok:
                    if status & TP_STATUS_VLAN_VALID:
                        drops[NOT_IPV4] += 1
                        off += nxt
                        continue
                    reason, bkey, poff, plen = parse(mm, off + mac, snap)
                    key = wire_key_from_flow_key(bkey)
                    if reason:
                        drops[reason] += 1
                        slot = table.get(key)
                        if slot is None and key in sources:
                            slot = sources[key].pick(src_address(mm, off + mac))
                        if slot is not None:
                            slot.drops[reason] += 1
                        off += nxt
                        continue
                slot = table.get(key)
                if slot is None and sources:
                    split = sources.get(key)
                    if split is not None:
                        slot = split.pick(src_address(mm, off + mac))
                if slot is None:
                    drops[NO_RULE] += 1
                elif slot.bucket is not None and not slot.bucket.admit(plen, now):
                    drops[RATE_LIMITED] += 1
                    slot.drops[RATE_LIMITED] += 1
                else:
                    lengths = pending.get(slot)
                    if lengths is None:
                        lengths = pending[slot] = []
                    slot.batch.set(len(lengths), base + poff, plen)
                    lengths.append(plen)
                    if len(lengths) == BATCH:
                        flush(slot, lengths)
                        lengths.clear()
                off += nxt
            for slot, lengths in pending.items():
                if lengths:
                    flush(slot, lengths)
            ring.release(boff)
            handled += num_pkts
        return handled

    @staticmethod
    def flush(slot: RuleSlot, lengths: list[int]) -> None:
        """Send one rule's batch to every output: one sendmmsg per output socket."""
        batch = slot.batch
        count = len(lengths)
        total = sum(lengths)
        slot.packets += count
        slot.bytes += total
        for out in slot.outputs:
            fd = out.fd
            if fd < 0:
                out.errors += count
                continue
            start = 0
            while start < count:
                sent = batch.send(fd, count - start, start)
                if sent <= 0:
                    if sent == -errno.EINTR:
                        continue
                    out.errors += count - start
                    break
                out.packets += sent
                out.bytes += total if sent == count else sum(lengths[start : start + sent])
                start += sent

    # ---------------------------------------------------------------------------------------- stats

    def account_kernel(self, cap: Capture) -> None:
        try:
            packets, dropped = read_statistics(cap.ring.sock)
        except OSError:
            return
        self.kernel_packets += packets
        self.kernel_drops += dropped

    def report(self) -> StatsReport:
        for cap in self.captures.values():
            self.account_kernel(cap)
        return StatsReport(
            worker_id=self.worker_id,
            pid=self.pid,
            rules=tuple((rid, slot.counters()) for rid, slot in self.slots.items()),
            drops=tuple((DROP_KEYS[i], n) for i, n in enumerate(self.drops) if i),  # every reason, zeros too
            kernel_packets=self.kernel_packets,
            kernel_drops=self.kernel_drops,
            pipe_errors=self.pipe_errors,
            generation=self.generation,
            ring_resyncs=self.ring_resyncs,
        )

    def push_stats(self) -> None:
        """Write the report without ever blocking; a report that does not fit is counted and skipped."""
        if self.pending_stats:
            self.pending_stats = self._write(self.pending_stats)
            if self.pending_stats:
                self.pipe_errors += 1
                return
        self.pending_stats = self._write(encode_stats(self.report()))

    def _write(self, data: bytes) -> bytes:
        try:
            written = os.write(self.stats_fd, data)
        except BlockingIOError:
            return data
        except BrokenPipeError:
            self.running = False
            return b""
        return data[written:]

    # ----------------------------------------------------------------------------------------- loop

    def run(self) -> None:
        self.send_reply(Ready(pid=self.pid, uid=os.getuid()))
        chan_fd = self.channel.fileno()
        next_stats = time.monotonic() + STATS_INTERVAL_S
        busy = False
        while self.running:
            timeout_ms = 0 if busy else max(0, int((next_stats - time.monotonic()) * 1000)) + 1
            readable = []
            for fd, _ev in self.poller.poll(timeout_ms):
                if fd == chan_fd:
                    self.handle_channel()
                else:
                    readable.append(fd)
            busy = False
            for cap in list(self.captures.values()):
                seen = self.drain(cap)
                if not seen and cap.ring.sock.fileno() in readable and cap.ring.resync():
                    # readable, yet nothing where we read: the kernel's block order and ours drifted apart
                    self.ring_resyncs += 1
                    log.warning("capture ring on ifindex %d resynchronised (%d so far)", cap.ifindex, self.ring_resyncs)
                    seen = self.drain(cap)
                busy = seen > 0 or busy
            now = time.monotonic()
            if now >= next_stats:
                self.push_stats()
                next_stats = now + STATS_INTERVAL_S
        for cap in list(self.captures.values()):
            self.drain(cap)
        self.push_stats()
        if self.pending_stats:
            self.pending_stats = self._write(self.pending_stats)
