"""The IGMP/MLD codec on known bytes: versions told apart by length, response codes, and each drop reason."""

from ipaddress import IPv4Address, IPv6Address

import pytest

from mcr.membership.wire import (
    Drop,
    Family,
    Inbound,
    Leave,
    Query,
    Record,
    RecordType,
    Report,
    build_packet,
    decode_code8,
    decode_code16,
    encode_code8,
    encode_code16,
    parse_igmp,
    parse_packet,
)
from mcr.packet.build import ipv4_checksum

G = IPv4Address("239.1.1.1")
H = IPv4Address("10.0.0.2")


def igmp(text: str) -> bytes:
    """IGMP bytes from hex, the checksum field (bytes 2-3) filled in."""
    data = bytes.fromhex(text)
    return data[:2] + ipv4_checksum(data[:2] + b"\0\0" + data[4:]).to_bytes(2, "big") + data[4:]


def ipv4(igmp: bytes, *, ttl: int = 1, router_alert: bool = True, protocol: int = 2) -> bytes:
    options = bytes([0x94, 4, 0, 0]) if router_alert else b""
    ihl = (20 + len(options)) // 4
    header = bytes([0x40 | ihl, 0xC0]) + (ihl * 4 + len(igmp)).to_bytes(2, "big") + bytes(4)
    header += bytes([ttl, protocol, 0, 0]) + H.packed + IPv4Address("224.0.0.22").packed + options
    header = header[:10] + ipv4_checksum(header).to_bytes(2, "big") + header[12:]
    return header + igmp


def test_a_v2_report_known_bytes() -> None:
    assert parse_igmp(igmp("16000000ef010101")) == Report(Family.IPV4, 2, (Record(RecordType.MODE_IS_EXCLUDE, G),))


def test_a_v3_report_with_two_records_and_aux_data() -> None:
    body = bytes.fromhex("2200000000000002")
    body += bytes.fromhex("01010001") + G.packed + H.packed + bytes(4)  # IS_IN {H}, one aux word
    body += bytes.fromhex("04000000") + IPv4Address("239.2.2.2").packed  # TO_EX {}
    body = body[:2] + ipv4_checksum(body).to_bytes(2, "big") + body[4:]
    got = parse_packet(ipv4(body))
    assert isinstance(got, Inbound)
    assert got.message == Report(
        Family.IPV4,
        3,
        (
            Record(RecordType.MODE_IS_INCLUDE, G, (H,)),
            Record(RecordType.CHANGE_TO_EXCLUDE, IPv4Address("239.2.2.2")),
        ),
    )


@pytest.mark.parametrize(
    ("igmp", "version", "max_response"),
    [
        (bytes.fromhex("11000000") + bytes(4), 1, 10.0),
        (bytes.fromhex("11640000") + bytes(4), 2, 10.0),
        (bytes.fromhex("11640000") + bytes(4) + bytes.fromhex("027d0000"), 3, 10.0),
        (bytes.fromhex("11ff0000") + bytes(4) + bytes.fromhex("00000000"), 3, 3174.4),
    ],
)
def test_query_version_from_length(igmp: bytes, version: int, max_response: float) -> None:
    igmp = igmp[:2] + ipv4_checksum(igmp).to_bytes(2, "big") + igmp[4:]
    got = parse_igmp(igmp)
    assert isinstance(got, Query)
    assert (got.version, got.max_response, got.general) == (version, max_response, True)


def test_v3_query_fields() -> None:
    q = Query(Family.IPV4, 3, G, 1.0, (H,), suppress=True, robustness=3, query_interval=125.0)
    got = parse_packet(build_packet(q, H, G))
    assert isinstance(got, Inbound) and got.message == q


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"", Drop.TRUNCATED),
        (b"\x45" + bytes(10), Drop.TRUNCATED),
        (ipv4(igmp("16000000ef010101")[:-1] + b"\0"), Drop.BAD_CHECKSUM),
        (ipv4(igmp("16000000ef010101"), ttl=2), Drop.BAD_TTL),
        (ipv4(igmp("16000000ef010101"), protocol=17), Drop.NOT_MEMBERSHIP),
        (ipv4(igmp("16000000ef0101")), Drop.TRUNCATED),
        (ipv4(igmp("11000000" + "00" * 5)), Drop.BAD_LENGTH),
        (ipv4(igmp("2200000000000000")), None),  # a v3 report with no records is fine
        (ipv4(igmp("2200000000000000"), router_alert=False), Drop.NO_ROUTER_ALERT),
        (ipv4(igmp("2200000000000001")), Drop.TRUNCATED),
        (ipv4(igmp("160000000a000002")), Drop.BAD_GROUP),
        (ipv4(igmp("4000000000000000")), Drop.UNKNOWN_TYPE),
        (ipv4(igmp("1300000000000000")), Drop.NOT_MEMBERSHIP),
        (b"\x70" + bytes(40), Drop.BAD_IP_HEADER),
    ],
)
def test_drop_reasons(packet: bytes, reason: Drop | None) -> None:
    got = parse_packet(packet)
    if reason is None:
        assert isinstance(got, Inbound)
    else:
        assert got == reason


def mld_packet(src: str, *, hop_limit: int = 1, router_alert: bool = True) -> bytes:
    packet = bytearray(
        build_packet(Leave(Family.IPV6, IPv6Address("ff0e::1")), IPv6Address(src), IPv6Address("ff02::2"))
    )
    packet[7] = hop_limit
    if not router_alert:
        packet[42] = 1  # the option becomes PadN
    return bytes(packet)


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (mld_packet("fe80::1"), Leave(Family.IPV6, IPv6Address("ff0e::1"))),
        (mld_packet("2001:db8::1"), Drop.BAD_SOURCE),
        (mld_packet("fe80::1", hop_limit=64), Drop.BAD_TTL),
        (mld_packet("fe80::1", router_alert=False), Drop.NO_ROUTER_ALERT),
    ],
)
def test_mld_checks(packet: bytes, expected: object) -> None:
    got = parse_packet(packet)
    assert (got.message if isinstance(got, Inbound) else got) == expected


def test_mld_checksum_covers_the_pseudo_header() -> None:
    packet = bytearray(mld_packet("fe80::1"))
    packet[23] ^= 1  # the source address, which only the pseudo-header carries into the sum
    assert parse_packet(bytes(packet)) == Drop.BAD_CHECKSUM


@pytest.mark.parametrize(("value", "code"), [(0, 0), (127, 127), (128, 0x80), (31744, 0xFF), (40000, 0xFF)])
def test_code8(value: int, code: int) -> None:
    assert encode_code8(value) == code
    assert decode_code8(code) == min(value, 31744)


@pytest.mark.parametrize(("value", "code"), [(10000, 10000), (32767, 32767), (32768, 0x8000), (8387584, 0xFFFF)])
def test_code16(value: int, code: int) -> None:
    assert encode_code16(value) == code
    assert decode_code16(code) == value


@pytest.mark.parametrize(
    ("family", "packet", "accepted"),
    [
        (Family.IPV4, ipv4(igmp("16000000ef010101")), True),
        (Family.IPV4, ipv4(igmp("16000000ef010101"), protocol=17), False),
        (Family.IPV6, mld_packet("fe80::1"), True),
        (Family.IPV6, bytes.fromhex("6000000000083a01") + bytes(40), False),  # ICMPv6 without hop-by-hop
        (Family.IPV6, bytes.fromhex("6000000000100001") + bytes(32) + bytes([17]) + bytes(15), False),
    ],
)
def test_socket_filter(family: Family, packet: bytes, accepted: bool) -> None:
    from mcr.membership.filter import membership_filter
    from mcr.packet.cbpf import check_program, run_program

    program = membership_filter(family)
    check_program(program)
    assert (run_program(program, packet) > 0) == accepted
