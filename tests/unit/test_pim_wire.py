"""PIM-SM codec: messages as RFC 7761 §4.9 lays them out, byte for byte, and precise drop reasons."""

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from mcr.routing.pim_wire import (
    Assert,
    EncodedGroup,
    EncodedSource,
    Hello,
    JoinPrune,
    JoinPruneGroup,
    LanPruneDelay,
    PimDrop,
    Register,
    RegisterStop,
    build_pim,
    ones_complement_sum,
    parse_pim,
    pseudo_header_sum,
)

G = EncodedGroup(IPv4Address("239.1.1.1"), 32)
S = IPv4Address("10.0.0.5")
RP = IPv4Address("10.9.9.9")


def with_checksum(raw: bytes, covered: int | None = None) -> bytes:
    b = bytearray(raw)
    end = len(b) if covered is None else covered
    struct.pack_into("!H", b, 2, 0xFFFF - ones_complement_sum(bytes(b[:end])))
    return bytes(b)


def test_hello_bytes_as_a_router_sends_them() -> None:
    # what FRR sends: holdtime 105, LAN prune delay, DR priority 1, GenID, then an option it knows and we do not
    raw = with_checksum(
        b"\x20\x00\x00\x00"
        + b"\x00\x01\x00\x02\x00\x69"
        + b"\x00\x02\x00\x04\x01\xf4\x09\xc4"
        + b"\x00\x13\x00\x04\x00\x00\x00\x01"
        + b"\x00\x14\x00\x04\x12\x34\x56\x78"
        + b"\x00\x15\x00\x04\x00\x00\x00\x00"  # state refresh capable (RFC 3973): skipped
        + b"\x00\x18\x00\x06\x01\x00\x0a\x00\x00\x07"
    )
    assert parse_pim(raw) == Hello(105, 1, 0x12345678, LanPruneDelay(False, 500, 2500), (IPv4Address("10.0.0.7"),))


def test_hello_without_priority_parses_as_none() -> None:
    assert parse_pim(build_pim(Hello(holdtime=35))) == Hello(holdtime=35)


def test_goodbye_is_a_hello_with_holdtime_zero() -> None:
    raw = build_pim(Hello(holdtime=0, dr_priority=1, generation_id=7))
    assert raw[4:10] == b"\x00\x01\x00\x02\x00\x00"
    assert parse_pim(raw) == Hello(0, 1, 7)


def test_join_prune_bytes() -> None:
    msg = JoinPrune(
        RP,
        210,
        (
            JoinPruneGroup(G, joins=(EncodedSource(RP, 32, wildcard=True, rpt=True),)),
            JoinPruneGroup(G, joins=(EncodedSource(S, 32),), prunes=(EncodedSource(S, 32, rpt=True),)),
        ),
    )
    raw = build_pim(msg)
    assert raw[:4] == bytes((0x23, 0)) + raw[2:4]
    assert raw[4:10] == b"\x01\x00\x0a\x09\x09\x09"
    assert raw[10:14] == b"\x00\x02\x00\xd2"
    assert raw[14:22] == b"\x01\x00\x00\x20\xef\x01\x01\x01"
    assert raw[22:26] == b"\x00\x01\x00\x00"
    assert raw[26:34] == b"\x01\x00\x07\x20\x0a\x09\x09\x09"  # S, W and R set: the (*,G) join
    assert parse_pim(raw) == msg


def test_register_checksum_covers_8_bytes_and_whole_message_accepted() -> None:
    inner = b"\x45" + bytes(27)
    raw = build_pim(Register(False, False, inner))
    assert ones_complement_sum(raw[:8]) == 0xFFFF
    assert parse_pim(raw) == Register(False, False, inner)
    whole = with_checksum(b"\x21\x00\x00\x00\x40\x00\x00\x00" + inner)
    assert parse_pim(whole) == Register(False, True, inner)


def test_register_stop_and_assert_round_trip() -> None:
    for msg in (
        RegisterStop(G, S),
        Assert(G, S, rpt=True, metric_preference=101, metric=20),
        Assert(EncodedGroup(IPv6Address("ff3e::1"), 128), IPv6Address("2001:db8::1"), False, 0, 0),
    ):
        assert parse_pim(build_pim(msg)) == msg


def test_ipv6_checksum_includes_the_pseudo_header() -> None:
    src, dst = IPv6Address("fe80::1"), IPv6Address("ff02::d")
    msg = Hello(105, 1, 9)
    length = len(build_pim(msg))
    pseudo = pseudo_header_sum(src, dst, length)
    raw = build_pim(msg, pseudo)
    assert parse_pim(raw, pseudo) == msg
    assert parse_pim(raw) == PimDrop.BAD_CHECKSUM


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", PimDrop.TRUNCATED),
        (b"\x20\x00", PimDrop.TRUNCATED),
        (with_checksum(b"\x10\x00\x00\x00"), PimDrop.BAD_VERSION),
        (b"\x20\x00\x00\x01", PimDrop.BAD_CHECKSUM),
        (with_checksum(b"\x24\x00\x00\x00"), PimDrop.UNSUPPORTED_TYPE),  # Bootstrap: not served
        (with_checksum(b"\x20\x00\x00\x00\x00\x01\x00\x04\x00\x00\x00\x69"), PimDrop.BAD_OPTION),
        (with_checksum(b"\x20\x00\x00\x00\x00\x01\x00\x04\x00\x69"), PimDrop.TRUNCATED),
        (with_checksum(b"\x23\x00\x00\x00\x03\x00\x0a\x09\x09\x09\x00\x00\x00\xd2"), PimDrop.BAD_ADDRESS),
        (with_checksum(b"\x23\x00\x00\x00\x01\x01\x0a\x09\x09\x09\x00\x00\x00\xd2"), PimDrop.BAD_ADDRESS),
        (with_checksum(b"\x23\x00\x00\x00\x01\x00\x0a\x09\x09\x09\x00\x01\x00\xd2"), PimDrop.TRUNCATED),
        (with_checksum(b"\x23\x00\x00\x00\x01\x00\x0a\x09\x09\x09\x00\x00\x00\xd2\x00\x00"), PimDrop.BAD_LENGTH),
        (
            with_checksum(b"\x23\x00\x00\x00\x01\x00\x0a\x09\x09\x09\x00\x01\x00\xd2\x01\x00\x00\x21\xef\x01\x01\x01"),
            PimDrop.BAD_ADDRESS,
        ),  # group mask length 33
        (with_checksum(b"\x21\x00\x00\x00\x00\x00"), PimDrop.TRUNCATED),
    ],
)
def test_bad_messages_have_precise_drop_reasons(raw: bytes, reason: PimDrop) -> None:
    assert parse_pim(raw) == reason
