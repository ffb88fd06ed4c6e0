"""The data-plane loop: capture rings in, batched UDP sends out, counters pushed on a timer.

Per packet the loop does only what it must: read the frame header, parse, look the flow up, ask the
rule's token bucket when it has a rate limit, and note where the payload lies inside the ring (no copy).
Each rule's frames are queued, as one run per output, on the output's lane (the socket of its interface,
source and TTL, see `mcr.worker.egress`); every lane then sends the runs of all its rules with one sendmmsg,
each message to its own destination, before the ring block goes back to the kernel.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field, replace

from mcr.linux.mmsg import SendBatch
from mcr.linux.packet_socket import attach_filter, fanout_id, read_statistics
from mcr.linux.ring import BLOCK_HEADER, FRAME_HEADER, RxRing
from mcr.model.errors import ProtocolError
from mcr.model.ratelimit import TokenBucket
from mcr.model.rules import InputProtocol
from mcr.packet.cbpf import pack_program
from mcr.packet.parse import DROP_KEYS, ESP_KEY_TAG, DropReason, parse_frame, src_address
from mcr.protocol.worker import (
    HANDOVER_MESSAGE,
    MAX_FDS_PER_MESSAGE,
    CloseEgress,
    CloseSockets,
    Command,
    HoldSockets,
    OpenEgress,
    OpenSockets,
    RawEgress,
    Ready,
    Released,
    ReleaseSockets,
    SetLogLevels,
    Shutdown,
    StatsReport,
    Sync,
    SyncAck,
    Update,
    WorkerOutput,
    WorkerRule,
    decode_command,
    encode_reply,
    encode_stats,
)
from mcr.worker.egress import Destinations, Lane, LaneKey, destination, lane_key, open_lane_socket
from mcr.worker.table import FilterSet, OutputSlot, RuleIndex, RuleSlot, SourceSplit, wire_key_from_flow_key

log = logging.getLogger("mcr.worker")

BATCH = 1024
FULL = 2 * BATCH  # a rule's pending entries (address and length per frame) when its batch is full
STATS_INTERVAL_S = 0.5
# A worker with up to FULL_REPORT_RULES rules reports every rule every time (at most about 90 kB, a few ms for
# the supervisor to read); beyond, every FULL_REPORT_EVERY-th report (10 s) does, the others only what changed.
FULL_REPORT_RULES = 1000
FULL_REPORT_EVERY = 20
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


def _same_flow(a: WorkerRule, b: WorkerRule) -> bool:
    """Whether a rule's slot (counters, rate-limit bucket) carries over from `a` to `b`: same input, same
    epoch (a new epoch is a re-added rule, whose counters restart from zero)."""
    return (a.ifindex, a.group, a.port, a.protocol, a.source, a.epoch) == (
        b.ifindex,
        b.group,
        b.port,
        b.protocol,
        b.source,
        b.epoch,
    )


@dataclass(slots=True)
class Capture:
    ifindex: int
    ring: RxRing
    table: dict[int, RuleSlot] = field(default_factory=dict)
    sources: dict[int, SourceSplit] = field(default_factory=dict)  # rules that name a source
    program: bytes = b""  # the capture filter attached, packed


class DataPlane:
    def __init__(self, worker_id: int, channel: socket.socket, stats_fd: int) -> None:
        self.worker_id = worker_id
        self.channel = channel
        self._peek = bytearray(1)  # where a message is peeked at for its size
        self.stats_fd = stats_fd
        self.captures: dict[int, Capture] = {}
        self.slots: dict[str, RuleSlot] = {}
        self.lanes: dict[LaneKey, Lane] = {}  # UDP output sockets, one per way out, shared by the outputs
        self.busy: list[Lane] = []  # lanes with frames queued in the current ring block
        self.destinations = Destinations()  # the lane outputs' sockaddrs
        self.egress: dict[RawEgress, int] = {}  # raw ESP output sockets the supervisor opened (and closes)
        self.index = RuleIndex()
        self.filters = FilterSet()
        self.batch = SendBatch(BATCH)  # for raw ESP outputs: a rule's batch is laid out at its flush
        self.lane_batch = SendBatch(BATCH)  # for the lanes: messages with a destination each
        self.drops = [0] * len(DROP_KEYS)
        self.ring_resyncs = 0  # times a capture ring had drifted out of order (see RxRing.resync)
        self.kernel_packets = 0
        self.kernel_drops = 0
        self.pipe_errors = 0
        self.pending_stats = b""
        self.reports = 0  # reports made so far
        # rule id -> its packets and drops last reported, summed (both only grow while a rule stays; a replaced
        # rule is in `changed`): an int, a shared small one while the rule is idle
        self.reported: dict[str, int] = {}
        self.changed: set[str] = set()  # rules replaced since the last report: reported whatever their counts
        self.gone: set[str] = set()  # rules dropped since the last report
        self.generation = 0
        self.running = True
        self.poller = select.poll()
        self.poller.register(channel.fileno(), select.POLLIN)
        self.pid = os.getpid()
        self.handover: socket.socket | None = None  # where a new supervisor takes this worker over
        self.orphan_timeout = 0.0  # how long to relay on without a supervisor (0: exit with it)
        self.orphaned_at: float | None = None  # when the supervisor went away
        self.supervisor_uid = 0
        self.taken_over = False  # until the first Sync after a takeover: keep counters across epochs
        self.version = ""  # this worker's code, told to a supervisor that takes it over
        self.held: list[int] = []  # the supervisor's membership sockets (HoldSockets), never used here

    # ----------------------------------------------------------------------------------- handover

    def enable_handover(self, sock: socket.socket, orphan_timeout: float, supervisor_uid: int, version: str) -> None:
        sock.setblocking(False)
        self.version = version
        self.handover = sock
        self.orphan_timeout = orphan_timeout
        self.supervisor_uid = supervisor_uid
        self.poller.register(sock.fileno(), select.POLLIN)

    def orphan(self, why: str) -> None:
        """The supervisor is gone: relay on with the rules we have, for at most `orphan_timeout` seconds."""
        if self.orphan_timeout <= 0 or self.handover is None:
            log.info("%s; worker %d exiting", why, self.worker_id)
            self.running = False
            return
        if self.orphaned_at is None:
            self.orphaned_at = time.monotonic()
            log.warning(
                "%s; worker %d relays on for up to %.1f s until a new supervisor takes it over",
                why,
                self.worker_id,
                self.orphan_timeout,
            )
        try:
            self.poller.unregister(self.channel.fileno())
        except (KeyError, ValueError):
            pass

    def take_over(self) -> None:
        """A new supervisor sent its channel and stats pipe: answer Ready on them, with the captures we hold."""
        assert self.handover is not None
        try:
            data, ancdata, _flags, _addr = self.handover.recvmsg(64, socket.CMSG_SPACE(8) + socket.CMSG_SPACE(12))
        except BlockingIOError:
            return
        fds: list[int] = []
        uid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4])
            elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                _pid, uid, _gid = struct.unpack("3i", payload[:12])
        if data != HANDOVER_MESSAGE or len(fds) != 2 or uid not in (0, self.supervisor_uid):
            log.warning("ignoring a malformed handover message (from uid %d, %d descriptors)", uid, len(fds))
            for fd in fds:
                os.close(fd)
            return
        try:
            self.poller.unregister(self.channel.fileno())
        except (KeyError, ValueError):
            pass
        self.channel.close()
        os.close(self.stats_fd)
        self.channel = socket.socket(fileno=fds[0])
        self.stats_fd = fds[1]
        os.set_blocking(self.stats_fd, False)
        self.pending_stats = b""
        self.poller.register(self.channel.fileno(), select.POLLIN)
        self.orphaned_at = None
        self.taken_over = True
        captures = tuple((ifindex, fanout_id(cap.ring.sock)) for ifindex, cap in self.captures.items())
        self.send_reply(Ready(pid=self.pid, uid=os.getuid(), captures=captures, version=self.version))
        log.info("worker %d taken over by a new supervisor (%d capture sockets kept)", self.worker_id, len(captures))

    # ------------------------------------------------------------------------------------ channel

    def send_reply(self, reply: Ready | SyncAck | Released) -> None:
        try:
            self.channel.send(encode_reply(reply))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the supervisor is gone: reading the channel tells, and the worker is orphaned there

    def handle_channel(self) -> None:
        try:
            # the message's size first, then a buffer of that size: a 16 MB one (a Sync's bound) for every
            # message made each small Update cost an allocation of 16 MB, 27 us of the worker's time
            size = self.channel.recv_into(self._peek, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
            data, fds, _flags, _addr = socket.recv_fds(self.channel, max(size, 1), MAX_FDS_PER_MESSAGE)
        except BlockingIOError:
            return
        except ConnectionResetError:
            # the supervisor died with a reply of ours unread (a SIGKILL in the middle of a change): as gone as
            # when it closes the channel, not a reason for the worker to die with it
            self.orphan("supervisor reset the channel")
            return
        if not data:
            for fd in fds:
                os.close(fd)
            self.orphan("supervisor closed the channel")
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
                positions: list[int | None] = [*cmd.positions] + [None] * (len(cmd.ifindexes) - len(cmd.positions))
                for ifindex, fd, position in zip(cmd.ifindexes, fds, positions, strict=False):
                    self.add_capture(ifindex, socket.socket(fileno=fd), position)
                for fd in fds[len(cmd.ifindexes) :]:
                    os.close(fd)
            case CloseSockets():
                for ifindex in cmd.ifindexes:
                    self.remove_capture(ifindex)
            case OpenEgress():
                for key, fd in zip(cmd.keys, fds, strict=False):
                    self.close_egress(key)  # the supervisor sends a key once; a second one replaces it
                    self.egress[key] = fd
                    self.hook_egress(key, fd)
                for fd in fds[len(cmd.keys) :]:
                    os.close(fd)
            case Sync():
                self.sync(cmd)
                self.generation = cmd.generation
                self.send_reply(SyncAck(cmd.generation))
            case Update():
                self.update(cmd)
                self.generation = cmd.generation
                self.send_reply(SyncAck(cmd.generation))
            case SetLogLevels():
                logging.getLogger().setLevel(cmd.global_level)
                for name, level in cmd.overrides:
                    logging.getLogger(name).setLevel(level)
            case CloseEgress():
                for key in cmd.keys:
                    self.close_egress(key)
            case Shutdown():
                self.running = False
            case ReleaseSockets():
                self.release_sockets()
            case HoldSockets():
                if not cmd.append:
                    for fd in self.held:
                        os.close(fd)
                    self.held = []
                self.held += fds[: cmd.count]
                for fd in fds[cmd.count :]:
                    os.close(fd)

    def hook_egress(self, key: RawEgress, fd: int) -> None:
        """Outputs installed before their raw socket arrived (it could not be opened then) take it now."""
        for slot in self.slots.values():
            for out in slot.outputs:
                if out.fd < 0 and out.spec.protocol is InputProtocol.ESP and out.spec.raw_egress == key:
                    out.fd = fd

    def close_egress(self, key: RawEgress) -> None:
        """Close a raw ESP output socket; outputs still pointing at it send nowhere (counted as errors)
        rather than into whatever socket reuses the descriptor number."""
        fd = self.egress.pop(key, -1)
        if fd < 0:
            return
        for slot in self.slots.values():
            for out in slot.outputs:
                if out.fd == fd:
                    out.fd = -1
        os.close(fd)

    def release_sockets(self) -> None:
        """Relay what the rings hold, then send the capture sockets back and end: a successor reads on."""
        ifindexes: list[int] = []
        positions: list[int] = []
        socks: list[socket.socket] = []
        for ifindex, cap in list(self.captures.items()):
            while self.drain(cap, cap.ring.block_count):
                pass
            self.poller.unregister(cap.ring.sock.fileno())
            self.account_kernel(cap)
            ifindexes.append(ifindex)
            positions.append(cap.ring.current)
            socks.append(cap.ring.sock)
        reply = encode_reply(Released(tuple(ifindexes), tuple(positions)))
        try:
            socket.send_fds(self.channel, [reply], [s.fileno() for s in socks])
        except OSError as e:
            log.error("cannot send the capture sockets back: %s", e)
        for cap in self.captures.values():
            cap.ring.close()  # our mapping and descriptor: the sockets and their rings live on in the successor
        self.captures.clear()
        self.running = False
        log.info("worker %d released its capture sockets (%s) to its successor", self.worker_id, ifindexes)

    def add_capture(self, ifindex: int, sock: socket.socket, position: int | None = None) -> None:
        """Read `sock`; `position`: its ring was set up by a predecessor, read on from that block."""
        self.remove_capture(ifindex)
        try:
            ring = RxRing(sock, existing=position is not None)
        except OSError as e:
            log.error("cannot map the capture ring on ifindex %d: %s; exiting to be restarted", ifindex, e)
            sock.close()
            if position is not None:  # a predecessor's ring (of another size?): a restart opens a new socket
                self.running = False
            return
        if position is not None:
            ring.current = position % ring.block_count
        cap = Capture(ifindex, ring, *self.index.tables(ifindex))
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
        """Attach the interface's capture filter, unless the one attached is already the same program."""
        program = pack_program(self.filters.program(cap.ifindex))
        if program != cap.program:
            attach_filter(cap.ring.sock, program)
            cap.program = program

    # --------------------------------------------------------------------------------------- rules

    def sync(self, cmd: Sync) -> None:
        """Replace the rule set; rules and output sockets that did not change keep their state. A rule whose
        epoch changed (the supervisor re-added it, e.g. a reload changed it) starts again from zero counters."""
        wanted = {rule.rule_id for rule in cmd.rules}
        self.change(cmd.rules, [rule_id for rule_id in self.slots if rule_id not in wanted])
        self.taken_over = False
        log.debug("synced generation %d: %d rules", cmd.generation, len(self.slots))

    def update(self, cmd: Update) -> None:
        """Apply one change: only the rules named are touched."""
        self.change(cmd.rules, cmd.removed)
        log.debug("updated to generation %d: %d rules", cmd.generation, len(self.slots))

    def change(self, rules: tuple[WorkerRule, ...], removed: list[str] | tuple[str, ...]) -> None:
        for rule_id in removed:
            slot = self.slots.pop(rule_id, None)
            if slot is not None:
                self.uninstall(slot)
                self.gone.add(rule_id)
                self.changed.discard(rule_id)
        for rule in rules:
            self.install(rule)
        for ifindex in self.filters.take_dirty():
            cap = self.captures.get(ifindex)
            if cap is not None:
                self.refilter(cap)

    def install(self, rule: WorkerRule) -> None:
        """Add `rule`, or replace the rule of its id. Counters, rate-limit bucket and the outputs that stay
        carry over when the rule keeps its flow and epoch."""
        prev = self.slots.get(rule.rule_id)
        if prev is not None and prev.rule == rule and all(o.fd >= 0 for o in prev.outputs):
            return
        keep = prev is not None and _same_flow(prev.rule, rule)
        if prev is not None and self.taken_over:  # a new supervisor numbers epochs anew: keep the counters
            keep = _same_flow(prev.rule, replace(rule, epoch=prev.rule.epoch))
        prev_outputs = {o.spec: o for o in prev.outputs} if keep and prev is not None else {}
        outputs = []
        for spec in rule.outputs:
            out = prev_outputs.get(spec)
            if out is None:
                out = OutputSlot(spec)
                self.acquire(out)
            elif out.fd < 0:  # its socket could not be opened before: try again
                self.acquire(out)
            outputs.append(out)
        slot = RuleSlot(rule, tuple(outputs))
        if keep and prev is not None:
            slot.packets, slot.bytes, slot.drops = prev.packets, prev.bytes, prev.drops
        if keep and prev is not None and prev.rule.rate_limit == rule.rate_limit:
            slot.bucket = prev.bucket  # an unrelated change does not refill the bucket
        elif rule.rate_limit is not None:
            slot.bucket = TokenBucket(rule.rate_limit)
        if len(outputs) == 1 and outputs[0].lane is not None:
            slot.direct = outputs[0]
        if prev is not None:
            self.uninstall(prev, keep=set(prev_outputs) & set(rule.outputs))
        self.slots[rule.rule_id] = slot
        self.changed.add(rule.rule_id)
        self.gone.discard(rule.rule_id)
        self.index.add(slot)
        self.filters.add(rule)

    def uninstall(self, slot: RuleSlot, keep: set[WorkerOutput] | None = None) -> None:
        """Take `slot` out of the lookup tables and the filter set; release its output sockets (but those
        of the outputs in `keep`, which a replacement slot took over)."""
        self.index.discard(slot)
        self.filters.remove(slot.rule)
        for out in slot.outputs:
            if out.fd >= 0 and (keep is None or out.spec not in keep):
                self.release(out)

    def acquire(self, out: OutputSlot) -> None:
        """Give `out` its socket: a UDP output joins the lane of its way out (opened by its first output), an
        ESP output takes the supervisor's raw socket. Without one its `fd` stays -1 and its sends count as
        errors."""
        spec = out.spec
        if spec.protocol is InputProtocol.ESP:
            out.fd = self.egress.get(spec.raw_egress, -1)  # none yet: OpenEgress hooks it up
            return
        key = lane_key(spec)
        lane = self.lanes.get(key)
        if lane is None:
            try:
                sock = open_lane_socket(spec)
            except OSError as e:
                log.warning(
                    "output %s:%d on ifindex %d: cannot open its socket: %s", spec.group, spec.port, spec.ifindex, e
                )
                return
            lane = self.lanes[key] = Lane(sock, len(destination(spec)), self.busy, BATCH)
        lane.users += 1
        out.lane, out.fd = lane, lane.fd
        out.name = self.destinations.take(spec)

    def release(self, out: OutputSlot) -> None:
        """Take `out` off its lane, closing the lane with its last output (ESP: the supervisor closes it)."""
        lane = out.lane
        if lane is None:
            return
        self.destinations.give(out.name)
        out.lane, out.fd, out.name = None, -1, 0
        lane.users -= 1
        if lane.users <= 0:
            del self.lanes[lane_key(out.spec)]
            lane.sock.close()

    # ------------------------------------------------------------------------------------ hot path

    def drain(self, cap: Capture, max_blocks: int = 64) -> int:
        """Process every block the kernel has handed over; returns the number of frames seen.

        The fast path reads the ring's frame header and the Ethernet/IPv4/UDP headers of a plain
        frame (no IP options, no fragment) with a single unpack, and takes plain IPv4 ESP from the
        same unpack (its key and payload need only the IP header); anything else takes the general
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
        direct = self.direct
        lane_batch = self.lane_batch
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
            pending: dict[RuleSlot, list[int]] = {}  # frames to send per rule: address, length, ...
            run_slot: RuleSlot | None = None  # the rule of the last frame that went to a direct output
            run: list[int] = []  # its frames since the last other rule's: address, length, ...
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
                    if not fast_ok and proto == 50:  # ESP without IP options: the whole IP payload
                        fast_ok = (
                            mac == FAST_MAC
                            and not status & TP_STATUS_VLAN_VALID
                            and ethertype == ETHERTYPE_IPV4_LE
                            and vihl == 0x45
                            and not frag & FRAG_MASK_LE
                            and 28 <= total <= snap - 14
                        )
                        key = ESP_KEY_TAG | (dst << 16)
                        poff = off + FAST_MAC + 34
                        plen = total - 20
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
                            slot.count_drop(reason)
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
                    slot.count_drop(RATE_LIMITED)
                elif slot.direct is not None:  # one output, on a lane: a run of this rule's frames in a row
                    if slot is not run_slot:
                        if run and run_slot is not None:
                            if len(run) == 2:  # a run of one frame (interleaved flows): `direct`, without a call
                                one = run[1]
                                run_slot.packets += 1
                                run_slot.bytes += one
                                out = run_slot.direct
                                out.lane.queue(out, run, 1, one, lane_batch)  # type: ignore[union-attr,arg-type]
                                run.clear()
                            else:
                                direct(run_slot, run)
                        run_slot = slot
                    run.append(base + poff)
                    run.append(plen)
                    if len(run) == FULL:
                        direct(slot, run)
                else:
                    entries = pending.get(slot)
                    if entries is None:
                        entries = pending[slot] = []
                    entries.append(base + poff)
                    entries.append(plen)
                    if len(entries) == FULL:
                        flush(slot, entries)
                        pending[slot] = []  # a lane may hold the full list until it sends
                off += nxt
            if run and run_slot is not None:
                direct(run_slot, run)
            for slot, entries in pending.items():
                if entries:
                    flush(slot, entries)
            if self.busy:
                self.send_lanes()
            ring.release(boff)
            handled += num_pkts
        return handled

    def flush(self, slot: RuleSlot, entries: list[int]) -> None:
        """Count one rule's frames (`entries`: address, length, address, length, ...) and hand them to every
        output: queued on a UDP output's lane (sent by `send_lanes`, or at once when the lane's batch is
        full), sent at once to a raw ESP output (laid out in the shared send array, one sendmmsg each)."""
        count = len(entries) >> 1
        total = entries[1] if count == 1 else sum(entries[1::2])
        slot.packets += count
        slot.bytes += total
        batch = None
        for out in slot.outputs:
            lane = out.lane
            if lane is not None:
                lane.queue(out, entries, count, total, self.lane_batch)
                continue
            fd = out.fd
            if fd < 0:
                out.errors += count
                continue
            if batch is None:
                batch = self.batch
                batch.set_run(0, entries)
            start = 0
            while start < count:
                sent = batch.send(fd, count - start, start)
                if sent <= 0:
                    if sent == -errno.EINTR:
                        continue
                    out.errors += count - start
                    break
                out.packets += sent
                out.bytes += total if sent == count else sum(entries[2 * start + 1 : 2 * (start + sent) : 2])
                start += sent

    def direct(self, slot: RuleSlot, run: list[int]) -> None:
        """Count a run of `slot`'s frames (address, length, ...) and queue them on the lane of its only
        output, `slot.direct`; `run` is emptied for the next."""
        count = len(run) >> 1
        total = run[1] if count == 1 else sum(run[1::2])
        slot.packets += count
        slot.bytes += total
        out = slot.direct
        assert out is not None and out.lane is not None
        out.lane.queue(out, run, count, total, self.lane_batch)
        run.clear()

    def send_lanes(self) -> None:
        """Send what the lanes queued: one sendmmsg per lane (more only where the kernel stops short)."""
        batch = self.lane_batch
        for lane in self.busy:
            lane.send(batch)
        self.busy.clear()

    # ---------------------------------------------------------------------------------------- stats

    def account_kernel(self, cap: Capture) -> None:
        try:
            packets, dropped = read_statistics(cap.ring.sock)
        except OSError:
            return
        self.kernel_packets += packets
        self.kernel_drops += dropped

    def report(self) -> StatsReport:
        """The worker's counters: every rule in the first report, every FULL_REPORT_EVERY-th and whenever it
        has at most FULL_REPORT_RULES rules; otherwise only the rules whose counts changed (or that were
        replaced) and the ids dropped since the last report."""
        for cap in self.captures.values():
            self.account_kernel(cap)
        full = self.reports % FULL_REPORT_EVERY == 0 or len(self.slots) <= FULL_REPORT_RULES
        self.reports += 1
        reported = self.reported
        changed = self.changed
        rules = []
        for rid, slot in self.slots.items():  # (ids of rules gone leave `reported` below: no clear, no regrowth)
            mark = slot.packets if slot.drops is None else slot.packets + sum(slot.drops)
            if full or reported.get(rid) != mark or rid in changed:
                reported[rid] = mark
                rules.append((rid, slot.counts()))
        for rid in self.gone:
            reported.pop(rid, None)
        gone = () if full else tuple(self.gone)
        self.gone = set()
        self.changed = set()
        return StatsReport(
            worker_id=self.worker_id,
            pid=self.pid,
            rules=tuple(rules),
            drops=tuple((DROP_KEYS[i], n) for i, n in enumerate(self.drops) if i),  # every reason, zeros too
            kernel_packets=self.kernel_packets,
            kernel_drops=self.kernel_drops,
            pipe_errors=self.pipe_errors,
            generation=self.generation,
            ring_resyncs=self.ring_resyncs,
            delta=not full,
            gone=gone,
            taken_at=time.monotonic(),
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
            self.orphan("the supervisor's stats pipe is closed")
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
            handover_fd = self.handover.fileno() if self.handover is not None else -1
            for fd, _ev in self.poller.poll(timeout_ms):
                if fd == chan_fd:
                    self.handle_channel()
                    chan_fd = self.channel.fileno()
                elif fd == handover_fd:
                    self.take_over()
                    chan_fd = self.channel.fileno()
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
            if self.orphaned_at is not None:
                if now - self.orphaned_at > self.orphan_timeout:
                    log.warning(
                        "no supervisor took worker %d over within %.1f s; exiting", self.worker_id, self.orphan_timeout
                    )
                    self.running = False
            elif now >= next_stats:
                self.push_stats()
                next_stats = now + STATS_INTERVAL_S
        for cap in list(self.captures.values()):
            self.drain(cap)
        if self.orphaned_at is not None:
            return
        self.push_stats()
        if self.pending_stats:
            self.pending_stats = self._write(self.pending_stats)
