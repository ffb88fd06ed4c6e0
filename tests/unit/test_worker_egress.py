"""The worker's output sockets. UDP outputs: one lane per way out, whose one sendmmsg carries the frames of
every rule on it, each to its own destination, counted per output. Raw ESP outputs: taken from the
supervisor (OpenEgress), used by the Sync's ESP outputs, and given up (CloseEgress) without leaving an
output pointing at a descriptor number that another socket may reuse."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address

import pytest

from mcr.linux.mmsg import buffer_address
from mcr.linux.ring import TP_STATUS_USER
from mcr.model.rules import InputProtocol
from mcr.packet.build import build_udp_frame
from mcr.protocol.worker import CloseEgress, OpenEgress, Sync, Update, WorkerOutput, WorkerRule
from mcr.worker.egress import Destinations, destination
from mcr.worker.loop import FAST_MAC, Capture, DataPlane
from tests.property.test_ring_fast_path import OneBlock

OUT = WorkerOutput(0, IPv4Address("239.5.5.5"), 0, 1, IPv4Address("127.0.0.1"), 4, InputProtocol.ESP)
RULE = WorkerRule("e", 1, IPv4Address("239.1.1.1"), 0, (OUT,), protocol=InputProtocol.ESP)


def stand_in() -> int:
    """A descriptor in place of a raw socket (opening one takes CAP_NET_RAW; the worker only sends on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return os.dup(s.fileno())


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_esp_outputs_use_the_sockets_handed_over_and_let_go_of_closed_ones(data_plane: DataPlane) -> None:
    fd, extra = stand_in(), stand_in()
    data_plane.apply(OpenEgress((OUT.raw_egress,)), [fd, extra])  # a descriptor too many is closed
    assert not is_open(extra)
    data_plane.sync(Sync(1, (RULE,)))
    (out,) = data_plane.slots["e"].outputs
    assert out.fd == fd and not data_plane.lanes  # no UDP socket of its own for an ESP output
    data_plane.apply(CloseEgress((OUT.raw_egress,)), [])
    assert out.fd == -1 and not is_open(fd)  # unhooked before the next Sync: its sends count as errors
    data_plane.apply(CloseEgress((OUT.raw_egress,)), [])  # twice: nothing to do


def test_an_esp_output_without_its_socket_counts_errors(data_plane: DataPlane) -> None:
    data_plane.sync(Sync(1, (RULE,)))
    slot = data_plane.slots["e"]
    (out,) = slot.outputs
    assert out.fd == -1
    data_plane.flush(slot, [0, 100, 0, 200])  # (address, length) pairs; nothing is sent
    assert (slot.packets, out.packets, out.errors) == (2, 0, 2)


LOOPBACK = IPv4Address("127.0.0.1")


@pytest.fixture
def receivers() -> Iterator[list[socket.socket]]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2.0)
    yield socks
    for s in socks:
        s.close()


def udp_rule(rule_id: str, group: str, *ports: int) -> WorkerRule:
    outs = tuple(WorkerOutput(i, LOOPBACK, port, 1, LOOPBACK, None) for i, port in enumerate(ports))
    return WorkerRule(rule_id, 1, IPv4Address(group), 5000, outs)


def drain(sock: socket.socket, want: int) -> list[bytes]:
    got = []
    deadline = time.monotonic() + 2.0
    while len(got) < want and time.monotonic() < deadline:
        got.append(sock.recv(100))
    return got


def test_the_rules_of_one_lane_go_out_together_each_to_its_destination(
    data_plane: DataPlane, receivers: list[socket.socket]
) -> None:
    a, b, c = (s.getsockname()[1] for s in receivers)
    data_plane.update(Update(1, (udp_rule("x", "239.1.1.1", a, b), udp_rule("y", "239.1.1.2", c))))
    (lane,) = data_plane.lanes.values()
    frames = bytearray(b"onetwothree")
    base = buffer_address(frames)
    x, y = data_plane.slots["x"], data_plane.slots["y"]
    data_plane.flush(x, [base, 3, base + 3, 3])  # "one", "two" to a and b
    data_plane.flush(y, [base + 6, 5])  # "three" to c
    assert len(lane.names) == 5 and data_plane.busy == [lane], "queued until the block ends"
    data_plane.send_lanes()
    assert drain(receivers[0], 2) == [b"one", b"two"] and drain(receivers[1], 2) == [b"one", b"two"]
    assert drain(receivers[2], 1) == [b"three"]
    assert [(o.packets, o.bytes, o.errors) for o in x.outputs] == [(2, 6, 0), (2, 6, 0)]
    assert [(o.packets, o.bytes, o.errors) for o in y.outputs] == [(1, 5, 0)]
    assert (x.packets, x.bytes, y.packets, y.bytes) == (2, 6, 1, 5)
    assert not lane.names and not lane.entries and not data_plane.busy


def test_a_destination_the_kernel_refuses_fails_only_its_own_run(
    data_plane: DataPlane, receivers: list[socket.socket]
) -> None:
    a, c = receivers[0].getsockname()[1], receivers[2].getsockname()[1]
    # UDP port 0 is refused (EINVAL) at send time: in the middle of the lane's batch
    data_plane.update(
        Update(1, (udp_rule("x", "239.1.1.1", a), udp_rule("bad", "239.1.1.2", 0), udp_rule("y", "239.1.1.3", c)))
    )
    frames = bytearray(b"abc")
    base = buffer_address(frames)
    data_plane.flush(data_plane.slots["x"], [base, 1])
    data_plane.flush(data_plane.slots["bad"], [base + 1, 1, base + 1, 1])
    data_plane.flush(data_plane.slots["y"], [base + 2, 1])
    data_plane.send_lanes()
    assert drain(receivers[0], 1) == [b"a"] and drain(receivers[2], 1) == [b"c"]
    counts = {rid: [(o.packets, o.errors) for o in data_plane.slots[rid].outputs] for rid in ("x", "bad", "y")}
    assert counts == {"x": [(1, 0)], "bad": [(0, 2)], "y": [(1, 0)]}
    assert data_plane.slots["bad"].outputs[0].bytes == 0, "bytes counted at queueing are taken back too"
    assert data_plane.slots["bad"].packets == 2, "the rule matched; its output could not send"


class ScriptedBatch:
    """A send array whose sends return what the script says (messages sent, or -errno), one per call."""

    def __init__(self, *results: int) -> None:
        self.results = list(results)
        self.calls: list[tuple[int, int]] = []  # (messages asked, from message)

    def set_run(self, at: int, entries: list[int]) -> None:
        pass

    def set_names(self, at: int, names: list[int], namelen: int) -> None:
        pass

    def send(self, fd: int, count: int, start: int) -> int:
        self.calls.append((count, start))
        return self.results.pop(0)


def test_a_send_that_fails_takes_the_messages_back_from_their_outputs_as_errors() -> None:
    from mcr.worker.egress import Lane
    from mcr.worker.table import OutputSlot

    spec = WorkerOutput(0, LOOPBACK, 9, 1, LOOPBACK, None)
    one, two = OutputSlot(spec), OutputSlot(spec)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        lane = Lane(sock, 16, [], 64)
        lane.queue(one, [0, 10, 0, 20], 2, 30, ScriptedBatch())  # type: ignore[arg-type]
        lane.queue(two, [0, 5], 1, 5, ScriptedBatch())  # type: ignore[arg-type]
        lane.queue(one, [0, 7], 1, 7, ScriptedBatch())  # type: ignore[arg-type]
        assert (one.packets, one.bytes, two.packets) == (3, 37, 1), "counted as sent when queued"
        # message 0 goes; 1 is refused (the rest of its output's run: message 1 alone); 2 goes; the socket is
        # full at 3 (the rest of the batch)
        batch = ScriptedBatch(1, -errno.EINVAL, 1, -errno.ENOBUFS)
        lane.send(batch)  # type: ignore[arg-type]
        assert batch.calls == [(4, 0), (3, 1), (2, 2), (1, 3)]
    assert (one.packets, one.bytes, one.errors) == (1, 10, 2)
    assert (two.packets, two.bytes, two.errors) == (1, 5, 0)
    assert not lane.outs and not lane.names and not lane.entries


def test_a_lane_sends_before_its_batch_overflows(data_plane: DataPlane, receivers: list[socket.socket]) -> None:
    port = receivers[0].getsockname()[1]
    receivers[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    data_plane.update(Update(1, tuple(udp_rule(f"r{i}", f"239.1.1.{i + 1}", port) for i in range(3))))
    frames = bytearray(b"z")
    entries = [buffer_address(frames), 1] * 600
    for i in range(3):  # 1,800 frames for a batch of 1,024: sent in parts, nothing lost
        data_plane.flush(data_plane.slots[f"r{i}"], list(entries))
    data_plane.send_lanes()
    sent = sum(data_plane.slots[f"r{i}"].outputs[0].packets for i in range(3))
    errors = sum(data_plane.slots[f"r{i}"].outputs[0].errors for i in range(3))
    assert (sent, errors) == (1800, 0)
    assert len(drain(receivers[0], 1800)) == 1800


def test_interleaved_flows_go_out_from_the_ring_in_order_with_their_counts(
    data_plane: DataPlane, receivers: list[socket.socket]
) -> None:
    """Rules with one output queue their frames on the lane as they are read, a run per rule in a row;
    a rule with more outputs gathers its frames and hands them to each output at the block's end."""
    a, b, c = (s.getsockname()[1] for s in receivers)
    rules = (udp_rule("x", "239.1.1.1", a), udp_rule("y", "239.1.1.2", b), udp_rule("z", "239.1.1.3", a, c))
    data_plane.update(Update(1, rules))
    x, y, z = (data_plane.slots[r] for r in "xyz")
    assert x.direct is x.outputs[0] and y.direct is y.outputs[0] and z.direct is None
    order = [("x", b"x1"), ("y", b"y1"), ("x", b"x2"), ("x", b"x3"), ("z", b"z1"), ("y", b"y2"), ("x", b"x4")]
    groups = {"x": "239.1.1.1", "y": "239.1.1.2", "z": "239.1.1.3"}
    frames = [build_udp_frame(src_ip="10.0.0.1", dst_ip=groups[r], dst_port=5000, payload=p) for r, p in order]
    ring = OneBlock([(raw, FAST_MAC, TP_STATUS_USER) for raw in frames])
    table, sources = data_plane.index.tables(1)
    assert data_plane.drain(Capture(1, ring, table, sources), max_blocks=1) == len(order)  # type: ignore[arg-type]
    assert drain(receivers[0], 5) == [b"x1", b"x2", b"x3", b"x4", b"z1"]
    assert drain(receivers[1], 2) == [b"y1", b"y2"] and drain(receivers[2], 1) == [b"z1"]
    assert [(s.packets, s.bytes) for s in (x, y, z)] == [(4, 8), (2, 4), (1, 2)]
    assert [(o.packets, o.bytes, o.errors) for s in (x, y, z) for o in s.outputs] == [
        (4, 8, 0),
        (2, 4, 0),
        (1, 2, 0),
        (1, 2, 0),
    ]
    assert not data_plane.busy and not any(lane.outs for lane in data_plane.lanes.values())


def test_an_output_whose_lane_cannot_open_counts_errors(data_plane: DataPlane) -> None:
    nowhere = WorkerOutput(0, IPv4Address("239.9.9.9"), 6000, 1, IPv4Address("192.0.2.77"), 1)  # not ours: bind fails
    data_plane.update(Update(1, (WorkerRule("n", 1, IPv4Address("239.1.1.1"), 5000, (nowhere,)),)))
    slot = data_plane.slots["n"]
    assert slot.outputs[0].fd == -1 and not data_plane.lanes
    data_plane.flush(slot, [0, 10])
    assert (slot.outputs[0].packets, slot.outputs[0].errors) == (0, 1)


def test_destinations_live_in_fixed_slots_taken_and_given_back() -> None:
    pool = Destinations()
    outs = [WorkerOutput(0, IPv4Address("239.9.0.0") + i, 6000 + i, 1, LOOPBACK, None) for i in range(300)]
    taken = [pool.take(o) for o in outs]  # more than one chunk
    assert pool.in_use == 300 and len(set(taken)) == 300
    for address, o in zip(taken, outs, strict=True):
        assert ctypes.string_at(address, 16) == destination(o)
    v6 = WorkerOutput(0, IPv6Address("fe80::1"), 7000, 3, IPv6Address("fe80::2"), None)
    address = pool.take(v6)
    assert ctypes.string_at(address, 28) == destination(v6)
    assert int.from_bytes(ctypes.string_at(address + 24, 4), sys.byteorder) == 3, "link-local: scoped to ifindex 3"
    pool.give(address)
    for a in taken:
        pool.give(a)
    assert pool.in_use == 0
    assert pool.take(outs[0]) in {*taken, address}, "a slot given back is used again"
