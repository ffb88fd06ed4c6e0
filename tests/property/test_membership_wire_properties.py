"""Properties of the IGMP/MLD codec: parsing is total (bytes in, a message or a drop reason out), every message the
builder can make parses back to itself, a flipped bit is caught by a checksum, and the response codes round-trip."""

from ipaddress import IPv4Address, IPv6Address

from hypothesis import given
from hypothesis import strategies as st

from mcr.membership.wire import (
    Drop,
    Family,
    Inbound,
    Leave,
    Message,
    Query,
    Record,
    RecordType,
    Report,
    build_packet,
    decode_code8,
    decode_code16,
    encode_code8,
    encode_code16,
    parse_packet,
)

groups4 = st.integers(0xE0000100, 0xEFFFFFFF).map(IPv4Address)
groups6 = st.integers(0xFF0E << 112, (0xFF0E << 112) + (1 << 64)).map(IPv6Address)
sources4 = st.integers(0x01000000, 0xDFFFFFFF).map(IPv4Address)
sources6 = st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + (1 << 64)).map(IPv6Address)
link_local = st.integers(0, (1 << 64) - 1).map(lambda n: IPv6Address((0xFE80 << 112) | n))
tenths = st.integers(0, 31744).map(lambda n: decode_code8(encode_code8(n)) / 10)
millis = st.integers(0, 8387584).map(lambda n: decode_code16(encode_code16(n)) / 1000)
seconds8 = st.integers(0, 31744).map(lambda n: float(decode_code8(encode_code8(n))))


@st.composite
def ipv4_messages(draw: st.DrawFn) -> Message:
    group = draw(groups4)
    kind = draw(st.sampled_from(["q1", "q2", "q3", "r1", "r2", "r3", "leave"]))
    if kind == "q1":
        return Query(Family.IPV4, 1, draw(st.sampled_from([IPv4Address(0), group])), 10.0)
    if kind == "q2":
        return Query(Family.IPV4, 2, draw(st.sampled_from([IPv4Address(0), group])), draw(st.integers(1, 255)) / 10)
    if kind == "q3":
        general = draw(st.booleans())
        return Query(
            Family.IPV4,
            3,
            IPv4Address(0) if general else group,
            draw(tenths),
            () if general else tuple(draw(st.lists(sources4, max_size=5))),
            draw(st.booleans()),
            draw(st.integers(0, 7)),
            draw(seconds8),
        )
    if kind == "leave":
        return Leave(Family.IPV4, group)
    if kind == "r3":
        records = st.builds(Record, st.sampled_from(RecordType), groups4, st.lists(sources4, max_size=4).map(tuple))
        return Report(Family.IPV4, 3, tuple(draw(st.lists(records, max_size=4))))
    return Report(Family.IPV4, int(kind[1]), (Record(RecordType.MODE_IS_EXCLUDE, group),))


@st.composite
def ipv6_messages(draw: st.DrawFn) -> Message:
    group = draw(groups6)
    kind = draw(st.sampled_from(["q1", "q2", "r1", "r2", "done"]))
    if kind == "q1":
        return Query(Family.IPV6, 1, draw(st.sampled_from([IPv6Address(0), group])), draw(st.integers(0, 65535)) / 1000)
    if kind == "q2":
        general = draw(st.booleans())
        return Query(
            Family.IPV6,
            2,
            IPv6Address(0) if general else group,
            draw(millis),
            () if general else tuple(draw(st.lists(sources6, max_size=4))),
            draw(st.booleans()),
            draw(st.integers(0, 7)),
            draw(seconds8),
        )
    if kind == "done":
        return Leave(Family.IPV6, group)
    if kind == "r2":
        records = st.builds(Record, st.sampled_from(RecordType), groups6, st.lists(sources6, max_size=3).map(tuple))
        return Report(Family.IPV6, 2, tuple(draw(st.lists(records, max_size=3))))
    return Report(Family.IPV6, 1, (Record(RecordType.MODE_IS_EXCLUDE, group),))


@given(st.binary(max_size=300))
def test_parser_never_raises(data: bytes) -> None:
    assert isinstance(parse_packet(data), (Inbound, Drop))


@given(st.binary(max_size=120), st.sampled_from([0x45, 0x46, 0x60]))
def test_parser_never_raises_on_plausible_headers(tail: bytes, first: int) -> None:
    head = bytes([first, 0, 0, 20 + len(tail)]) + bytes(4) + bytes([1, 2, 0, 0]) + bytes(8)
    if first == 0x60:
        head = bytes([0x60, 0, 0, 0, 0, len(tail), 0, 1]) + bytes(32)
    assert isinstance(parse_packet(head + tail), (Inbound, Drop))


@given(ipv4_messages(), sources4)
def test_ipv4_build_parse_round_trip(message: Message, src: IPv4Address) -> None:
    dst = IPv4Address("224.0.0.22")
    assert parse_packet(build_packet(message, src, dst)) == Inbound(src, dst, message, True)


@given(ipv6_messages(), link_local)
def test_ipv6_build_parse_round_trip(message: Message, src: IPv6Address) -> None:
    dst = IPv6Address("ff02::16")
    assert parse_packet(build_packet(message, src, dst)) == Inbound(src, dst, message, True)


@given(st.one_of(ipv4_messages(), ipv6_messages()), st.data())
def test_a_flipped_bit_in_the_message_is_never_taken_as_it_was(message: Message, data: st.DataObject) -> None:
    src = IPv4Address("10.0.0.1") if message.family is Family.IPV4 else IPv6Address("fe80::1")
    dst = IPv4Address("224.0.0.1") if message.family is Family.IPV4 else IPv6Address("ff02::1")
    packet = bytearray(build_packet(message, src, dst))
    start = 24 if message.family is Family.IPV4 else 48
    bit = data.draw(st.integers(start * 8, len(packet) * 8 - 1))
    packet[bit // 8] ^= 1 << (bit % 8)
    result = parse_packet(bytes(packet))
    assert result in (Drop.BAD_CHECKSUM, Drop.NOT_MEMBERSHIP, Drop.UNKNOWN_TYPE)


@given(st.integers(0, 255))
def test_code8_decodes_to_a_value_that_encodes_back(code: int) -> None:
    assert decode_code8(encode_code8(decode_code8(code))) == decode_code8(code)


@given(st.integers(0, 0xFFFF))
def test_code16_decodes_to_a_value_that_encodes_back(code: int) -> None:
    assert decode_code16(encode_code16(decode_code16(code))) == decode_code16(code)


@given(st.integers(0, 40000))
def test_code8_never_says_more_than_asked(value: int) -> None:
    assert decode_code8(encode_code8(value)) <= value
