"""sendmmsg/recvmmsg through ctypes, over real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import errno
import mmap
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from mcr.linux.mmsg import RecvBatch, SendBatch, buffer_address


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A receiver bound to 127.0.0.1 and a sender connected to it, both non-blocking."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        tx.connect(rx.getsockname())
        tx.setblocking(False)
        yield rx, tx
    finally:
        rx.close()
        tx.close()


def recv_all(batch: RecvBatch, sock: socket.socket, want: int, timeout_s: float = 2.0) -> list[bytes]:
    """Receive until `want` datagrams came or the deadline passed."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        n = batch.recv(sock.fileno())
        if n == -errno.EAGAIN:
            time.sleep(0.001)
            continue
        assert n > 0
        got.extend(bytes(batch.view(i)) for i in range(n))
    return got


def test_a_batch_arrives_whole_and_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    buf = bytearray(b"".join(bytes([i]) * (10 + i) for i in range(8)))
    base = buffer_address(buf)
    send = SendBatch(8)
    offset = 0
    for i in range(8):
        send.set(i, base + offset, 10 + i)
        offset += 10 + i
    assert send.send(tx.fileno(), 8) == 8
    recv = RecvBatch(16, 2048)
    n = recv.recv(rx.fileno())
    assert n == 8
    assert [bytes(recv.view(i)) for i in range(n)] == [bytes([i]) * (10 + i) for i in range(8)]
    assert [recv.length(i) for i in range(n)] == list(range(10, 18))
    assert recv.lengths(n) == list(range(10, 18))
    assert not any(recv.truncated(i) for i in range(n))
    assert recv.source(0) == tx.getsockname()
    assert recv.buffer[2048 : 2048 + 11] == bytes([1]) * 11
    assert recv.recv(rx.fileno()) == -errno.EAGAIN


def test_partial_and_offset_batches(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    buf = bytearray(b"abcdefgh")
    base = buffer_address(buf)
    send = SendBatch(8)
    for i in range(8):
        send.set(i, base + i, 1)
    assert send.send(tx.fileno(), 0) == 0
    assert send.send(tx.fileno(), 3, start=5) == 3
    assert send.send(tx.fileno(), 1, start=0) == 1
    assert recv_all(RecvBatch(4, 64), rx, 4) == [b"f", b"g", b"h", b"a"]


def test_messages_gathered_from_several_parts(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    header = bytearray(b"HDR:")
    bodies = bytearray(b"onetwo")
    send = SendBatch(2, parts=2)
    for i, (offset, length) in enumerate(((0, 3), (3, 3))):
        send.set_part(i, 0, buffer_address(header), len(header))
        send.set_part(i, 1, buffer_address(bodies) + offset, length)
    assert send.send(tx.fileno(), 2) == 2
    assert recv_all(RecvBatch(2, 64), rx, 2) == [b"HDR:one", b"HDR:two"]
    with pytest.raises(IndexError):
        send.set_part(0, 2, 0, 0)
    with pytest.raises(ValueError):
        SendBatch(1, parts=0)


def test_buffer_changes_are_seen_without_set(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    buf = bytearray(b"old!")
    send = SendBatch(1)
    send.set(0, buffer_address(buf), 4)
    buf[:] = b"new!"
    assert send.send(tx.fileno(), 1) == 1
    assert recv_all(RecvBatch(1, 64), rx, 1) == [b"new!"]


def test_receive_batch_larger_than_capacity_takes_several_calls(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    for i in range(10):
        tx.send(bytes([i]))
    recv = RecvBatch(4, 16)
    assert [recv.recv(rx.fileno()) for _ in range(4)] == [4, 4, 2, -errno.EAGAIN]


def test_long_datagrams_are_truncated_and_flagged(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    tx.send(b"0123456789")
    tx.send(b"0123")
    recv = RecvBatch(2, 4)
    assert recv.recv(rx.fileno()) == 2
    assert (bytes(recv.view(0)), recv.truncated(0), recv.length(0)) == (b"0123", True, 4)
    assert (bytes(recv.view(1)), recv.truncated(1)) == (b"0123", False)


def test_zero_length_datagram(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    buf = bytearray(1)
    send = SendBatch(1)
    send.set(0, buffer_address(buf), 0)
    assert send.send(tx.fileno(), 1) == 1
    assert recv_all(RecvBatch(1, 16), rx, 1) == [b""]


def test_destinations_for_an_unconnected_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, _tx = pair
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx, other:
        other.bind(("127.0.0.1", 0))
        other.setblocking(False)
        buf = bytearray(b"xy")
        send = SendBatch(2)
        send.set(0, buffer_address(buf), 1)
        send.set(1, buffer_address(buf) + 1, 1)
        send.set_destination(0, "127.0.0.1", rx.getsockname()[1])
        send.set_destination(1, other.getsockname()[0], other.getsockname()[1])
        assert send.send(tx.fileno(), 2) == 2
        assert recv_all(RecvBatch(2, 16), rx, 1) == [b"x"]
        assert recv_all(RecvBatch(2, 16), other, 1) == [b"y"]
        send.set_destination(0, None)
        assert send.send(tx.fileno(), 1) == -errno.EDESTADDRREQ


def test_runs_of_messages_written_at_once_each_run_to_its_own_destination(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, _tx = pair
    names = [bytearray(struct.pack("=H2s4s8x", socket.AF_INET, rx.getsockname()[1].to_bytes(2, "big"), bytes(4)))]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        b.bind(("127.0.0.1", 0))
        b.setblocking(False)
        names[0][4:8] = socket.inet_aton("127.0.0.1")
        names.append(bytearray(names[0]))
        names[1][2:4] = b.getsockname()[1].to_bytes(2, "big")
        buf = bytearray(b"abcdefgh")
        base = buffer_address(buf)
        send = SendBatch(8)
        send.set_run(0, [base, 1, base + 1, 2])  # "a", "bc" to rx
        send.set_names(0, [buffer_address(names[0])] * 2, 16)
        send.set_run(2, [base + 3, 3, base + 6, 2, base + 7, 1])  # "def", "gh", "h" to b
        send.set_names(2, [buffer_address(names[1])] * 3, 16)
        assert send.send(tx.fileno(), 5) == 5
        assert recv_all(RecvBatch(4, 16), rx, 2) == [b"a", b"bc"]
        assert recv_all(RecvBatch(4, 16), b, 3) == [b"def", b"gh", b"h"]
        send.set_names(0, [0], 0)  # no destination again
        assert send.send(tx.fileno(), 1) == -errno.EDESTADDRREQ
    with pytest.raises(IndexError):
        send.set_run(7, [base, 1, base, 1])  # two messages from the last slot
    with pytest.raises(IndexError):
        send.set_run(0, [base])  # not (address, length) pairs
    with pytest.raises(IndexError):
        send.set_names(6, [0, 0, 0], 0)
    with pytest.raises(IndexError):
        SendBatch(2, parts=2).set_run(0, [base, 1])


def test_errors_are_negative_errno_not_exceptions() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = sock.fileno()
    sock.close()
    buf = bytearray(4)
    send = SendBatch(2)
    send.set(0, buffer_address(buf), 4)
    assert send.send(fd, 1) == -errno.EBADF
    assert RecvBatch(2, 16).recv(fd) == -errno.EBADF
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unconnected:
        assert send.send(unconnected.fileno(), 1) == -errno.EDESTADDRREQ


@pytest.mark.parametrize(("count", "start"), [(3, 0), (1, 2), (-1, 0), (1, -1), (0, 3)])
def test_out_of_range_sends_raise_before_the_system_call(count: int, start: int) -> None:
    with pytest.raises(IndexError):
        SendBatch(2).send(0, count, start)


def test_index_and_size_checks() -> None:
    with pytest.raises(IndexError):
        SendBatch(2).set(2, 0, 0)
    with pytest.raises(IndexError):
        SendBatch(2).set(-1, 0, 0)
    with pytest.raises(ValueError):
        SendBatch(0)
    with pytest.raises(ValueError):
        SendBatch(1025)
    with pytest.raises(ValueError):
        RecvBatch(1, 0)
    assert (SendBatch(3).capacity, RecvBatch(5, 7).capacity, RecvBatch(5, 7).size) == (3, 5, 7)


def test_buffer_address_accepts_writable_buffers_only() -> None:
    buf = bytearray(b"abc")
    address = buffer_address(buf)
    assert address == buffer_address(memoryview(buf))
    assert buffer_address(memoryview(buf)[1:]) == address + 1
    buf.extend(b"d")  # no export is kept: the caller may resize (and must then fetch the address again)
    with mmap.mmap(-1, 4096) as region:
        assert buffer_address(region) != 0
    with pytest.raises(TypeError):
        buffer_address(b"read-only")
    with pytest.raises(ValueError):
        buffer_address(bytearray())


def test_ipv6_sources_fit_their_slots() -> None:
    """recvmmsg writes the source address's full length (28 for IPv6) back into msg_namelen, and the batch reuses
    it as the buffer size of the next call: every slot must hold a sockaddr_in6, or the next call overruns it."""
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        try:
            rx.bind(("::1", 0))
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback here: {exc}")
        rx.setblocking(False)
        tx.connect(rx.getsockname()[:2])
        batch = RecvBatch(4, 64)
        for _ in range(3):
            for k in range(4):
                tx.send(bytes([k]) * 10)
            assert recv_all(batch, rx, 4) == [bytes([k]) * 10 for k in range(4)]
        names = [batch._msgs[i].msg_hdr for i in range(4)]  # what the kernel left for the next call
        assert all(hdr.msg_namelen == 28 for hdr in names)
        assert [hdr.msg_name - names[0].msg_name for hdr in names] == [0, 28, 56, 84]  # slots 28 bytes apart
    finally:
        rx.close()
        tx.close()
