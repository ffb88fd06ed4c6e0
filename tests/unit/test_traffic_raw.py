"""The generator's --raw frames without root: headers, whole-frame rings (IPv6 checksums checked against the
independent frame builder), and the PACKET_TX_RING sender's bookkeeping against a simulated kernel."""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address

import pytest

from mcr.linux.ring import TP_STATUS_SEND_REQUEST, TX_DATA_OFFSET, TxFrames, TxLayout, tx_layout
from mcr.packet.build import build_udp6_frame, build_udp_frame, ipv4_checksum
from mcr.traffic import generator
from mcr.traffic.payload import BODY_PHASES, Verdict, build_payload, inspect_payload
from mcr.traffic.stop import StopFlag

MAC = bytes.fromhex("020000000042")


def config(*argv: str, group: str = "ff3e::1:1", source: str = "fd00:200:1::2") -> generator.GeneratorConfig:
    return generator.parse_args(["--group", group, "--port", "5001", "--interface", source, "--raw", "eth1", *argv])


def test_raw_accepts_ipv6_groups() -> None:
    assert config().group == IPv6Address("ff3e::1:1")


def test_ipv6_frame_header() -> None:
    header = generator.frame_header(config("--size", "100", "--ttl", "9", group="ff3e::1:2345:6789"), MAC)
    assert len(header) == 62
    assert header[:14] == bytes.fromhex("333323456789") + MAC + b"\x86\xdd"
    version, length, next_header, hops = struct.unpack_from("!IHBB", header, 14)
    assert (version >> 28, length, next_header, hops) == (6, 108, 17, 9)
    assert header[22:38] == IPv6Address("fd00:200:1::2").packed
    assert header[38:54] == IPv6Address("ff3e::1:2345:6789").packed
    assert struct.unpack_from("!HHH", header, 54) == (40000, 5001, 108)


def stamped_frames(cfg: generator.GeneratorConfig, first: int, now: int) -> Iterator[tuple[int, bytes]]:
    header = generator.frame_header(cfg, MAC)
    ring = generator.frame_ring(cfg, header, 32)
    ring.stamp(first, 32, now)
    for seq in range(first, first + 32):
        off = ring.offset(seq % 32)
        yield seq, bytes(ring.buffer[off - len(header) : off + cfg.size])


@pytest.mark.parametrize("size", [0, 5, 31, 32, 33, 64, 1400])
def test_ipv6_frames_are_what_the_frame_builder_makes(size: int) -> None:
    cfg = config("--size", str(size), "--run-id", "7")
    for seq, frame in stamped_frames(cfg, 1000, 123456789):
        payload = build_payload(7, seq, size, 123456789)
        expected = build_udp6_frame(
            src_mac=MAC, src_ip=cfg.interface, dst_ip=cfg.group, dst_port=5001, payload=payload
        )  # its checksum: a plain sum over pseudo-header and segment
        assert frame == expected, seq


def test_ipv4_frames_carry_no_udp_checksum() -> None:
    cfg = config("--size", "64", "--run-id", "7", group="239.1.2.3", source="10.0.0.1")
    for seq, frame in stamped_frames(cfg, 5, 99):
        payload = build_payload(7, seq, 64, 99)
        expected = build_udp_frame(
            src_mac=MAC,
            src_ip=cfg.interface,
            dst_ip=cfg.group,
            dst_port=5001,
            payload=payload,
            dont_fragment=True,
            with_udp_checksum=False,
        )
        assert frame == expected
        assert ipv4_checksum(frame[14:34]) == 0


def test_flows_interleave_groups_frame_by_frame() -> None:
    cfg = config("--size", "64", "--run-id", "7", "--flows", "3", group="239.1.1.254", source="10.0.0.1")
    groups = generator.flow_groups(cfg)
    assert [str(g) for g in groups] == ["239.1.1.254", "239.1.1.255", "239.1.2.0"]
    headers = [generator.frame_header(cfg, MAC, g) for g in groups]
    ring = generator.frame_ring(cfg, headers[0], 48, flow_headers=headers)  # a multiple of the flows
    ring.stamp(0, 48, 99)
    for seq in range(48):
        off = ring.offset(seq % 48)
        frame = bytes(ring.buffer[off - 42 : off + 64])
        expected = build_udp_frame(
            src_mac=MAC,
            src_ip=cfg.interface,
            dst_ip=groups[seq % 3],
            dst_port=5001,
            payload=build_payload(7, seq, 64, 99),
            dont_fragment=True,
            with_udp_checksum=False,
        )
        assert frame == expected, seq


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--flows", "2", "--group", "ff3e::1", "--interface", "fd00::1"], "--flows needs --raw"),
        (["--flows", "2", "--raw-mode", "ring"], "--flows needs --raw in mmsg mode"),
        (["--flows", "2", "--group", "239.255.255.255"], "leaves 224.0.0.0/4"),
        (["--flows", "0"], "must be at least 1"),
        (["--flows", "70000"], "at most 65536"),
    ],
)
def test_flows_refused_where_they_cannot_work(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--group", "239.1.1.1", "--port", "5001", "--interface", "10.0.0.1", "--raw", "eth1"]
    with pytest.raises(SystemExit):
        generator.parse_args(base + argv)
    assert message in capsys.readouterr().err


class FakeKernel:
    """PACKET_TX_RING as af_packet.c runs it with MSG_DONTWAIT: from its head, in ring order, every frame in
    SEND_REQUEST is sent (status back to AVAILABLE), at most `per_flush` per call (a full send buffer); every
    `refuse_every`-th call the head frame is dropped by the device and given back (-ENOBUFS, the count of
    frames sent before it lost)."""

    def __init__(self, layout: TxLayout, per_flush: int, refuse_every: int = 0) -> None:
        self.layout = layout
        self.buf = bytearray(layout.size)
        self.frames = TxFrames(self.buf, layout)
        self.view = memoryview(self.buf)
        self.per_flush = per_flush
        self.refuse_every = refuse_every
        self.head = 0
        self.calls = 0
        self.refused = 0
        self.wire: list[bytes] = []

    def flush(self) -> int:
        self.calls += 1
        sent = 0
        size = 0
        while sent < self.per_flush and self.frames.status(self.head) == TP_STATUS_SEND_REQUEST:
            offset = self.head * self.layout.frame_size
            length = struct.unpack_from("=I", self.buf, offset + 4)[0]
            if self.refuse_every and self.calls % self.refuse_every == 0 and sent == 1:
                self.refused += 1
                return -errno.ENOBUFS
            self.wire.append(bytes(self.buf[offset + TX_DATA_OFFSET : offset + TX_DATA_OFFSET + length]))
            struct.pack_into("=I", self.buf, offset, 0)
            self.head = (self.head + 1) % self.layout.frame_count
            sent += 1
            size += length
        return size


@pytest.mark.parametrize(("per_flush", "refuse_every"), [(10_000, 0), (7, 0), (50, 3)])
@pytest.mark.parametrize("group", ["ff3e::1:1", "239.1.1.1"])
def test_ring_sender_sends_every_number_once_in_order(per_flush: int, refuse_every: int, group: str) -> None:
    source = "fd00::1" if ":" in group else "10.0.0.1"
    count = 1000
    cfg = config("--size", "64", "--count", str(count), "--rate", "0", "--batch", "48", group=group, source=source)
    header = generator.frame_header(cfg, MAC)
    layout = tx_layout(len(header) + 64, 64, BODY_PHASES)
    kernel = FakeKernel(layout, per_flush, refuse_every)
    ring = generator.frame_ring(cfg, header, layout.frame_count, kernel.view, layout.frame_size, TX_DATA_OFFSET)
    kernel.frames.set_length(len(header) + 64)
    sender = generator._RingSender(kernel, ring, len(header) + 64)  # type: ignore[arg-type]
    a, b = socket.socketpair()
    with a, b:
        summary = generator._run(cfg, a, sender, ring, StopFlag())
    assert summary.sent == count == len(kernel.wire)
    assert summary.errors == kernel.refused
    assert (kernel.refused > 0) == bool(refuse_every)
    for seq, frame in enumerate(kernel.wire):
        assert frame[: len(header) - 2] == header[:-2]
        verdict, run_id, got, _sent_ns = inspect_payload(memoryview(frame)[len(header) :])
        assert (verdict, run_id, got) == (Verdict.NUMBERED, cfg.run_id, seq)
        if ":" in group:
            pseudo = cfg.interface.packed + cfg.group.packed + struct.pack("!I3xB", 72, 17)
            assert ipv4_checksum(pseudo + frame[54:]) == 0  # a correct checksum sums to 0xFFFF


def test_ring_sender_names_a_frame_the_kernel_marked_malformed() -> None:
    cfg = config("--size", "64", "--count", "10", "--rate", "0")
    header = generator.frame_header(cfg, MAC)
    layout = tx_layout(len(header) + 64, 64, BODY_PHASES)
    kernel = FakeKernel(layout, 0)

    def refuse() -> int:
        struct.pack_into("=I", kernel.buf, 0, 4)  # TP_STATUS_WRONG_FORMAT on the head frame
        return -errno.EMSGSIZE

    kernel.flush = refuse  # type: ignore[method-assign]
    ring = generator.frame_ring(cfg, header, layout.frame_count, kernel.view, layout.frame_size, TX_DATA_OFFSET)
    sender = generator._RingSender(kernel, ring, len(header) + 64)  # type: ignore[arg-type]
    a, b = socket.socketpair()
    with a, b, pytest.raises(OSError, match="WRONG_FORMAT"):
        generator._run(cfg, a, sender, ring, StopFlag())


def test_flows_beyond_one_message_array_send_every_number_once_to_its_group() -> None:
    """1,000 flows need 2,000 frame slots, more than one sendmmsg array holds: every packet still leaves once,
    numbered 0..n-1, to group + seq mod 1,000 (through a datagram socketpair standing in for the AF_PACKET one)."""
    cfg = config(
        "--size", "40", "--run-id", "7", "--flows", "1000", "--rate", "0", "--count", "2600",
        group="239.1.0.0", source="10.0.0.1",
    )  # fmt: skip
    groups = generator.flow_groups(cfg)
    headers = [generator.frame_header(cfg, MAC, g) for g in groups]
    ring = generator.frame_ring(cfg, headers[0], 2000, flow_headers=headers)
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    got: list[bytes] = []
    done = threading.Event()

    def drain() -> None:
        rx.settimeout(0.2)
        while not (done.is_set() and len(got) >= 2600):
            try:
                got.append(rx.recv(2048))
            except TimeoutError:
                if done.is_set():
                    return

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        tx.setblocking(False)
        summary = generator._run(cfg, tx, generator._PlainSender(tx.fileno(), ring, 42), ring, StopFlag())
    finally:
        done.set()
        reader.join(10)
        tx.close()
        rx.close()
    assert summary.sent == len(got) == 2600
    seqs = []
    for frame in got:
        verdict, run_id, seq, _sent = inspect_payload(frame[42:])
        assert (verdict, run_id) == (Verdict.NUMBERED, 7)
        assert IPv4Address(frame[30:34]) == groups[seq % 1000]
        seqs.append(seq)
    assert sorted(seqs) == list(range(2600))
