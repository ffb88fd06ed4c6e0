"""The userspace worker's ring loop decides as the parser on every frame: its inline fast path (one unpack of
the TPACKET_V3 frame header and a plain frame's headers) and its fall-back to `parse_frame` together relay
exactly the frames `parse_frame` accepts (UDP to the rule's port, ESP to its group), with the same
payload, and count every other frame under the parser's reason. Runs the real `DataPlane.drain` over a
TPACKET_V3 block laid out in memory (no socket)."""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address

from hypothesis import example, given
from hypothesis import strategies as st

from mcr.linux.ring import BLOCK_HEADER, FRAME_HEADER, TP_STATUS_USER
from mcr.model.rules import InputProtocol
from mcr.packet.parse import DROP_KEYS, ESP_KEY_TAG, DropReason, parse_frame
from mcr.protocol.worker import WorkerRule
from mcr.worker.loop import FAST_MAC, TP_STATUS_VLAN_VALID, Capture, DataPlane
from mcr.worker.table import RuleSlot, rule_key, wire_key
from tests.property.test_packet_properties import Mutated, structured_frames

GROUP, PORT = IPv4Address("239.1.2.3"), 5001  # the flow structured_frames builds
FIRST = 48  # where the block's first frame header starts


class OneBlock:
    """The ring interface `drain` uses, over one block that the "kernel" has handed over."""

    def __init__(self, frames: list[tuple[bytes, int, int]]) -> None:
        """`frames`: (frame bytes, mac offset in its slot, tp_status)."""
        slots = []
        for raw, mac, status in frames:
            size = (mac + len(raw) + 15) & ~15
            header = FRAME_HEADER.pack(0, 0, 0, len(raw), len(raw), status, mac)
            slots.append(bytearray(header.ljust(mac, b"\0") + raw + b"\0" * (size - mac - len(raw))))
        block = bytearray(FIRST)
        self.macs: list[int] = []
        for i, slot in enumerate(slots):
            nxt = len(slot) if i < len(slots) - 1 else 0
            slot[0:4] = nxt.to_bytes(4, "little")
            self.macs.append(len(block) + frames[i][1])
            block += slot
        block += b"\0" * 256  # the fast path's unpack may read past a short last frame, as in a real ring
        BLOCK_HEADER.pack_into(block, 8, TP_STATUS_USER, len(slots), FIRST)
        self._buffer = (ctypes.c_char * len(block)).from_buffer_copy(bytes(block))
        self.view = memoryview(self._buffer).cast("B")
        self.address = ctypes.addressof(self._buffer)
        self.handed = True

    def ready_block(self) -> int:
        if self.handed:
            self.handed = False
            return 0
        return -1

    def release(self, offset: int) -> None:
        pass


@contextmanager
def data_plane() -> Iterator[DataPlane]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        yield DataPlane(0, a, -1)
    finally:
        a.close()
        b.close()


frames = st.one_of(
    structured_frames().map(Mutated.frame),
    st.binary(min_size=14, max_size=120),
)
# the kernel's usual mac offset (the fast path), or another one (the general parser); VLAN flag or not
placements = st.tuples(st.sampled_from([FAST_MAC, FAST_MAC, FAST_MAC, 66, 98]), st.sampled_from([0, 0, 0, 1]))


def _frame(**wrong: int) -> bytes:
    """A 50-byte-payload frame of the rule's flow with the given fields changed."""
    fields = dict(version=4, ihl=5, options=0, total=78, flags=0, offset=0, protocol=17, ethertype=0x0800,
                  vlan=None, udp_length=58, payload=50, cut=0, pad=0)  # fmt: skip
    return Mutated(**(fields | wrong)).frame()  # type: ignore[arg-type]


# each check of the fast path one past its boundary, and just inside it
BOUNDARIES = [
    _frame(),
    _frame(udp_length=59),
    _frame(udp_length=8),
    _frame(udp_length=7),
    _frame(total=79),
    _frame(total=77),
    _frame(cut=1),
    _frame(pad=4),
    _frame(flags=0x4000),
    _frame(flags=0x2000),
    _frame(offset=1),
    _frame(ihl=6, options=4, total=82),
    _frame(protocol=16),
    _frame(version=5),
    _frame(ethertype=0x0801),
    # ESP (protocol 50): the same unpack, keyed by the group alone, the whole IP payload relayed
    _frame(protocol=50),
    _frame(protocol=50, total=28),
    _frame(protocol=50, total=27),
    _frame(protocol=50, total=79),
    _frame(protocol=50, cut=1),
    _frame(protocol=50, flags=0x2000),
    _frame(protocol=50, flags=0x4000),
    _frame(protocol=50, ihl=6, options=4, total=82),
    _frame(protocol=50, version=5),
]


@example([(raw, (FAST_MAC, 0)) for raw in BOUNDARIES])
@example([(raw, (66, 0)) for raw in BOUNDARIES])
@given(st.lists(st.tuples(frames, placements), min_size=1, max_size=12))
def test_the_ring_loop_relays_and_counts_as_the_parser(cases: list[tuple[bytes, tuple[int, int]]]) -> None:
    ring = OneBlock([(raw, mac, TP_STATUS_USER | (TP_STATUS_VLAN_VALID if vlan else 0)) for raw, (mac, vlan) in cases])
    slot = RuleSlot(WorkerRule("r", 1, GROUP, PORT, ()), [])
    esp_slot = RuleSlot(WorkerRule("e", 1, GROUP, 0, (), protocol=InputProtocol.ESP), [])
    relayed: list[tuple[int, int]] = []
    esp_relayed: list[tuple[int, int]] = []
    drops = [0] * len(DROP_KEYS)
    rule_drops = [0] * len(DROP_KEYS)  # the drops of frames whose (group, port) is the rule's
    for (raw, (_mac, vlan)), mac_at in zip(cases, ring.macs, strict=True):
        if vlan:
            drops[DropReason.NOT_IPV4] += 1
            continue
        reason, key, offset, length = parse_frame(raw, 0, len(raw))
        if reason:
            drops[reason] += 1
            if key == (int(GROUP) << 16) | PORT:
                rule_drops[reason] += 1
        elif key == ESP_KEY_TAG | (int(GROUP) << 16):
            esp_relayed.append((mac_at + offset, length))
        elif key != (int(GROUP) << 16) | PORT:
            drops[DropReason.NO_RULE] += 1
        else:
            relayed.append((mac_at + offset, length))

    with data_plane() as plane:
        flushed: dict[str, list[int]] = {"r": [], "e": []}  # per rule: payload address, length, ...
        plane.flush = lambda s, entries: flushed[s.rule.rule_id].extend(entries)  # type: ignore[method-assign]
        table = {wire_key(int(GROUP), PORT): slot, rule_key(esp_slot.rule): esp_slot}
        capture = Capture(1, ring, table)  # type: ignore[arg-type]
        assert plane.drain(capture) == len(cases)
        for rule_id, expected in (("r", relayed), ("e", esp_relayed)):
            entries = flushed[rule_id]
            sent = [(address - ring.address, n) for address, n in zip(entries[::2], entries[1::2], strict=True)]
            assert sent == expected, rule_id
        assert plane.drops == drops
        assert (slot.drops or [0] * len(DROP_KEYS)) == rule_drops  # made at the first drop
