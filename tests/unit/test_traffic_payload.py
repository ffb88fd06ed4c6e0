"""The self-checking payload: round trips, corruption of any byte, unnumbered sizes, the in-place ring."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcr.traffic.payload import (
    BODY_PHASES,
    DIGEST_OFFSET,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    RESIDUE,
    Corrupt,
    Numbered,
    PayloadRing,
    Unnumbered,
    Verdict,
    body_bytes,
    build_payload,
    check_payload,
    filler,
    inspect_payload,
    raw_payload,
)

SIZES = [HEADER_SIZE, HEADER_SIZE + 1, 64, 100, 1400, 9000, MAX_PAYLOAD]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("run_id", "seq", "now_ns"), [(0, 0, 0), (7, 1, 123), (2**32 - 1, 2**64 - 1, 2**64 - 1)])
def test_build_then_check_round_trips(size: int, run_id: int, seq: int, now_ns: int) -> None:
    data = build_payload(run_id, seq, size, now_ns)
    assert len(data) == size
    assert check_payload(data) == Numbered(run_id=run_id, seq=seq, sent_ns=now_ns, size=size)
    assert inspect_payload(memoryview(data)) == (Verdict.NUMBERED, run_id, seq, now_ns)


@pytest.mark.parametrize("size", SIZES)
def test_header_layout_is_the_documented_one(size: int) -> None:
    data = build_payload(0x01020304, 0x1122334455667788, size, 0x0A0B0C0D0E0F1011)
    magic, run_id, size_field, seq, sent_ns, _digest = struct.unpack_from("<4sIIQQI", data)
    assert (magic, run_id, size_field, seq, sent_ns) == (
        MAGIC,
        0x01020304,
        size,
        0x1122334455667788,
        0x0A0B0C0D0E0F1011,
    )
    assert zlib.crc32(data) == RESIDUE  # the digest makes the CRC-32 of the whole payload a constant
    assert data[HEADER_SIZE:] == body_bytes(0x01020304, 0x1122334455667788, size - HEADER_SIZE)
    assert DIGEST_OFFSET == 28


@pytest.mark.parametrize("size", [HEADER_SIZE, HEADER_SIZE + 1, 64, 100])
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipping_any_byte_is_detected_as_corrupt(size: int, mask: int) -> None:
    original = build_payload(42, 1000, size, 5_000_000)
    for position in range(size):
        damaged = bytearray(original)
        damaged[position] ^= mask
        result = check_payload(damaged)
        assert isinstance(result, Corrupt), (position, result)
        assert inspect_payload(memoryview(damaged))[0] is Verdict.CORRUPT


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[:-1], "size field"),
        (lambda b: b + b"\0", "size field"),
        (lambda b: b"X" + b[1:], "magic"),
        (lambda b: b[:40] + bytes([b[40] ^ 4]) + b[41:], "digest"),
    ],
)
def test_corrupt_reasons_say_what_was_wrong(mutate: Callable[[bytes], bytes], reason: str) -> None:
    data = build_payload(1, 2, 64, 3)
    result = check_payload(mutate(data))
    assert isinstance(result, Corrupt)
    assert reason in result.reason


@pytest.mark.parametrize("size", range(HEADER_SIZE))
def test_sizes_below_the_header_are_unnumbered_filler(size: int) -> None:
    data = build_payload(9, 9, size, 9)
    assert data == filler(size)
    assert len(data) == size
    assert check_payload(data) == Unnumbered(size)
    assert inspect_payload(data)[0] is Verdict.UNNUMBERED


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", bytes(64), b"A" * 1400, raw_payload(b"MCR looks like a header", 64), bytes(range(256))],
)
def test_foreign_and_raw_payloads_are_unnumbered(data: bytes) -> None:
    assert check_payload(data) == Unnumbered(len(data))


def test_junk_behind_the_exact_magic_is_corrupt() -> None:
    # The magic ends in the non-printable version byte, so typed --payload strings never carry it.
    assert isinstance(check_payload(raw_payload(MAGIC + b" and junk", 64)), Corrupt)


def test_raw_payload_is_zero_padded_or_truncated() -> None:
    assert raw_payload(b"abc", 6) == b"abc\0\0\0"
    assert raw_payload(b"abcdef", 4) == b"abcd"
    assert raw_payload(b"abc", 0) == b""


def test_body_depends_on_run_and_sequence_phase() -> None:
    n = 200
    assert body_bytes(1, 0, n) != body_bytes(1, 1, n)
    assert body_bytes(1, 0, n) != body_bytes(2, 0, n)
    assert body_bytes(1, 3, n) == body_bytes(1, 3 + BODY_PHASES, n)
    assert len(body_bytes(1, 5, MAX_PAYLOAD)) == MAX_PAYLOAD
    assert body_bytes(1, 5, 0) == b""


@pytest.mark.parametrize(
    ("run_id", "seq", "size", "now_ns"),
    [(-1, 0, 64, 0), (2**32, 0, 64, 0), (0, -1, 64, 0), (0, 2**64, 64, 0), (0, 0, -1, 0), (0, 0, 65508, 0)],
)
def test_build_rejects_out_of_range_fields(run_id: int, seq: int, size: int, now_ns: int) -> None:
    with pytest.raises(ValueError):
        build_payload(run_id, seq, size, now_ns)


@pytest.mark.parametrize("size", [HEADER_SIZE, 64, 1400])
def test_ring_stamps_the_same_bytes_as_build_payload(size: int) -> None:
    ring = PayloadRing(run_id=77, size=size, slots=32)
    assert ring.numbered
    for first, count, now in [(0, 32, 1), (5, 20, 99), (31, 3, 2**40), (1000, 32, 7)]:
        ring.stamp(first, count, now)
        for seq in range(first, first + count):
            assert ring.payload(seq % 32) == build_payload(77, seq, size, now)


def test_ring_buffer_is_slots_back_to_back() -> None:
    ring = PayloadRing(run_id=1, size=100, slots=16)
    assert len(ring.buffer) == 1600
    assert [ring.offset(k) for k in (0, 1, 15)] == [0, 100, 1500]


def test_raw_and_short_rings_are_written_once() -> None:
    raw = PayloadRing(run_id=1, size=8, slots=3, raw=b"hi")
    raw.stamp(0, 3, 123)
    assert not raw.numbered
    assert [raw.payload(k) for k in range(3)] == [b"hi\0\0\0\0\0\0"] * 3
    short = PayloadRing(run_id=1, size=5, slots=16)
    short.stamp(0, 16, 5)
    assert not short.numbered
    assert short.payload(3) == filler(5)


def test_ring_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="multiple of"):
        PayloadRing(run_id=1, size=64, slots=10)
    with pytest.raises(ValueError, match="slots"):
        PayloadRing(run_id=1, size=64, slots=0)
    ring = PayloadRing(run_id=1, size=64, slots=16)
    with pytest.raises(ValueError, match="cannot stamp"):
        ring.stamp(0, 17, 0)


def test_ring_in_a_caller_buffer_keeps_to_its_slots() -> None:
    buf = bytearray(b"\xee" * (8 + 16 * 200))
    ring = PayloadRing(run_id=5, size=100, slots=16, buffer=buf, stride=200, start=8)
    assert ring.buffer is buf
    assert [ring.offset(k) for k in (0, 1, 15)] == [8, 208, 3008]
    ring.stamp(40, 16, 9)
    for seq in range(40, 56):
        off = ring.offset(seq % 16)
        assert bytes(buf[off : off + 100]) == build_payload(5, seq, 100, 9)
        assert buf[off - 8 : off] == b"\xee" * 8 and buf[off + 100 : off + 192] == b"\xee" * 92  # untouched
    with pytest.raises(ValueError, match="buffer holds"):
        PayloadRing(run_id=5, size=100, slots=16, buffer=bytearray(3000), stride=200)
    with pytest.raises(ValueError, match="stride"):
        PayloadRing(run_id=5, size=100, slots=16, stride=99)


def ones_complement_checksum(data: bytes) -> int:
    """RFC 768/1071, written out plainly: fold the 16-bit big-endian sum, complement, 0 sent as 0xFFFF."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF) or 0xFFFF


def checksummed_ring(size: int, raw: bytes | None = None) -> tuple[bytearray, PayloadRing, bytes]:
    """Slots of [8-byte UDP header | payload] behind a 40-byte pseudo-header stand-in, the checksum tracked."""
    prefix = bytes(range(1, 41)) + struct.pack("!HHH", 40000, 5001, 8 + size)  # pseudo-header + ports, length
    buf = bytearray(16 * (8 + size + 3))
    ring = PayloadRing(run_id=11, size=size, slots=16, raw=raw, buffer=buf, stride=8 + size + 3, start=8)
    for k in range(16):
        off = ring.offset(k)
        buf[off - 8 : off - 2] = prefix[40:]
    ring.track_udp_checksum(prefix + b"\0\0")
    return buf, ring, prefix


def assert_checksums(buf: bytearray, ring: PayloadRing, prefix: bytes, slots: range) -> None:
    for k in slots:
        off = ring.offset(k)
        segment = prefix[40:] + b"\0\0" + bytes(buf[off : off + ring.size])
        sent = struct.unpack_from("!H", buf, off - 2)[0]
        assert sent == ones_complement_checksum(prefix[:40] + segment), (k, ring.size)
        assert sent != 0  # 0 would mean "no checksum", which IPv6 forbids


@pytest.mark.parametrize("size", [0, 1, 7, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, 64, 1400])
def test_tracked_udp_checksums_are_correct_for_every_stamp(size: int) -> None:
    buf, ring, prefix = checksummed_ring(size)
    assert_checksums(buf, ring, prefix, range(16))  # as laid out, before any stamp
    for first, count, now in [(0, 16, 0), (3, 16, 2**64 - 1), (2**64 - 20, 16, 12345), (99, 5, 1 << 63)]:
        ring.stamp(first, count, now)
        assert_checksums(buf, ring, prefix, range(16))
        if size >= HEADER_SIZE:
            off = ring.offset(first % 16)
            assert bytes(buf[off : off + size]) == build_payload(11, first, size, now)


def test_tracked_checksum_of_raw_payloads_is_set_once() -> None:
    buf, ring, prefix = checksummed_ring(20, raw=b"hello")
    assert_checksums(buf, ring, prefix, range(16))


def test_tracked_checksum_needs_room_and_an_even_prefix() -> None:
    ring = PayloadRing(run_id=1, size=64, slots=16)
    with pytest.raises(ValueError, match="start"):
        ring.track_udp_checksum(bytes(48))
    ring = PayloadRing(run_id=1, size=64, slots=16, stride=70, start=6)
    with pytest.raises(ValueError, match="even"):
        ring.track_udp_checksum(bytes(47))


@given(
    st.integers(HEADER_SIZE, 600),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(min_size=40, max_size=40),
)
def test_tracked_checksum_property(size: int, seq: int, now_ns: int, pseudo: bytes) -> None:
    prefix = pseudo + struct.pack("!HHH", 1, 2, 8 + size)
    buf = bytearray(16 * (8 + size))
    ring = PayloadRing(run_id=seq % 2**32, size=size, slots=16, buffer=buf, stride=8 + size, start=8)
    for k in range(16):
        buf[ring.offset(k) - 8 : ring.offset(k) - 2] = prefix[40:]
    ring.track_udp_checksum(prefix + b"\0\0")
    ring.stamp(seq, 1, now_ns)
    assert_checksums(buf, ring, prefix, range(seq % 16, seq % 16 + 1))


@given(st.binary(max_size=2000))
def test_check_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    assert isinstance(check_payload(data), Numbered | Corrupt | Unnumbered)


@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 3000),
    st.integers(0, 2**64 - 1),
)
def test_build_check_round_trip_property(run_id: int, seq: int, size: int, now_ns: int) -> None:
    result = check_payload(build_payload(run_id, seq, size, now_ns))
    if size < HEADER_SIZE:
        assert result == Unnumbered(size)
    else:
        assert result == Numbered(run_id, seq, now_ns, size)


@given(st.integers(HEADER_SIZE, 300), st.data())
def test_any_single_byte_change_is_caught_property(size: int, data: st.DataObject) -> None:
    payload = bytearray(build_payload(3, 4, size, 5))
    position = data.draw(st.integers(0, size - 1))
    payload[position] ^= data.draw(st.integers(1, 255))
    assert isinstance(check_payload(payload), Corrupt)
