#!/usr/bin/env python3
"""Per-frame cost of the userspace worker's ring loop against the size of its rule table (issue 18).

    python3 bench/lookup.py            # no root, no network: the real DataPlane.drain over a block in memory
    python3 bench/lookup.py --send     # the same with the sends: every rule has an output on the loopback

A TPACKET_V3 block of 1,000 frames (100-byte payloads) is laid out in memory, as the kernel hands it over, and
drained by the worker's own loop with 1, 100, 1,000 or 10,000 rules in its table; the frames go to 1 flow or
are spread over 1,000 (all in the table). The rules have no outputs, so what is timed is the frame header,
the parse, the lookup and the batching, not the sends. Best of several drains, nanoseconds per frame.

With --send every rule has one output, 127.0.0.1 on the loopback, each rule to its own port (a destination
of its own), and the worker's lanes send them for real: one unconnected socket for them all, one sendmmsg
per block (the loopback delivers them to a socket that takes none, so the receive side costs little).
"""

from __future__ import annotations

import ctypes
import socket
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mcr.linux.ring import BLOCK_HEADER, FRAME_HEADER, TP_STATUS_USER
from mcr.packet.build import build_udp_frame
from mcr.protocol.worker import Sync, WorkerOutput, WorkerRule
from mcr.worker.loop import FAST_MAC, Capture, DataPlane

FIRST = 48
FRAMES = 1000


class Block:
    """One block the "kernel" hands over again at every drain."""

    def __init__(self, frames: list[bytes]) -> None:
        data = bytearray(FIRST)
        for i, raw in enumerate(frames):
            size = (FAST_MAC + len(raw) + 15) & ~15
            nxt = size if i < len(frames) - 1 else 0
            header = FRAME_HEADER.pack(nxt, 0, 0, len(raw), len(raw), TP_STATUS_USER, FAST_MAC)
            data += header.ljust(FAST_MAC, b"\0") + raw + b"\0" * (size - FAST_MAC - len(raw))
        data += b"\0" * 256
        BLOCK_HEADER.pack_into(data, 8, TP_STATUS_USER, len(frames), FIRST)
        self._buffer = (ctypes.c_char * len(data)).from_buffer_copy(bytes(data))
        self.view = memoryview(self._buffer).cast("B")
        self.address = ctypes.addressof(self._buffer)
        self.handed = True

    def ready_block(self) -> int:
        if self.handed:
            self.handed = False
            return 0
        return -1

    def release(self, offset: int) -> None:
        self.handed = True  # ready again for the next drain


def group(i: int) -> IPv4Address:
    return IPv4Address("239.0.0.0") + i


def outputs(i: int, send: bool) -> tuple[WorkerOutput, ...]:
    if not send:
        return ()
    lo = IPv4Address("127.0.0.1")
    return (WorkerOutput(0, lo, 20000 + i % 40000, socket.if_nametoindex("lo"), lo, None),)


def measure(rules: int, flows: int, repeat: int = 200, send: bool = False) -> float:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        plane = DataPlane(0, a, -1)
        plane.sync(Sync(1, tuple(WorkerRule(f"r{i}", 1, group(i), 5000, outputs(i, send)) for i in range(rules))))
        frames = [
            build_udp_frame(src_ip="10.0.0.1", dst_ip=str(group(k % flows)), dst_port=5000, payload=b"x" * 100)
            for k in range(FRAMES)
        ]
        block = Block(frames)
        table, sources = plane.index.tables(1)
        cap = Capture(1, block, table, sources)  # type: ignore[arg-type]
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter_ns()
            plane.drain(cap, max_blocks=1)
            best = min(best, time.perf_counter_ns() - t)
        relayed = sum(s.packets for s in plane.slots.values())
        assert relayed == FRAMES * repeat, f"{relayed} frames matched, expected {FRAMES * repeat}"
        if send:
            sent = sum(o.packets for s in plane.slots.values() for o in s.outputs)
            assert sent == FRAMES * repeat, f"{sent} frames sent, expected {FRAMES * repeat}"
        return best / FRAMES
    finally:
        for lane in plane.lanes.values():
            lane.sock.close()
        a.close()
        b.close()


def main() -> int:
    send = "--send" in sys.argv[1:]
    print("| rules in the table | 1 flow (ns/frame) | 1,000 flows (ns/frame) |")
    print("|---|---|---|")
    for rules in (1, 100, 1_000, 10_000):
        one = measure(rules, 1, send=send)
        many = f"{measure(rules, 1000, send=send):.0f}" if rules >= 1000 else "-"
        print(f"| {rules:,} | {one:.0f} | {many} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
