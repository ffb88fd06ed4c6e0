"""Properties of the packet layer: the parser is total and its fast path agrees with the general one, frames
round-trip through build and parse, and the capture filter decides exactly as a plain reference decision."""

import random
from dataclasses import dataclass
from functools import cache
from ipaddress import IPv4Address, IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st

from mcr.packet.build import build_esp_frame, build_udp6_frame, build_udp_frame, ipv6_extension
from mcr.packet.cbpf import ACCEPT, Insn, PacketType, build_capture_filter, run_program
from mcr.packet.parse import ESP_KEY_TAG, IPV6_KEY_TAG, DropReason, _parse_general, parse_frame, src_ipv4

ipv4s = st.integers(min_value=0, max_value=0xFFFFFFFF)
groups = st.integers(min_value=0xE0000000, max_value=0xEFFFFFFF)
ports = st.integers(min_value=0, max_value=0xFFFF)
options = st.integers(min_value=0, max_value=10).map(lambda words: bytes(range(4 * words)))


def assert_result_within(buf: bytes, offset: int, caplen: int, result: tuple[int, int, int, int]) -> None:
    reason, key, payload_offset, length = result
    assert 0 <= reason <= max(DropReason) and reason != DropReason.NO_RULE
    assert 0 <= key < 1 << 48 or IPV6_KEY_TAG <= key < IPV6_KEY_TAG << 1 or (reason == 0 and key >> 48 == 1)
    if reason == 0:
        header = 34 if ESP_KEY_TAG <= key < IPV6_KEY_TAG else 42  # an ESP payload starts with its header
        assert offset + header <= payload_offset <= payload_offset + length <= min(offset + caplen, len(buf))
    else:
        assert (payload_offset, length) == (0, 0)


# ---------------------------------------------------------------------------------------------- parser


@given(st.binary(max_size=200), st.integers(min_value=-4, max_value=210), st.integers(min_value=-4, max_value=300))
def test_parser_never_raises(buf: bytes, offset: int, caplen: int) -> None:
    assert_result_within(buf, offset, caplen, parse_frame(buf, offset, caplen))


@st.composite
def mutated_frames(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """A valid frame behind a prefix, with a few bytes of its headers overwritten and maybe cut short."""
    raw = bytearray(
        build_udp_frame(
            src_ip="10.0.0.1",
            dst_ip=IPv4Address(draw(groups)),
            dst_port=draw(ports),
            payload=draw(st.binary(max_size=64)),
            ip_options=draw(options),
        )
    )
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        raw[draw(st.integers(min_value=12, max_value=min(len(raw), 100) - 1))] = draw(st.integers(0, 255))
    prefix = draw(st.integers(min_value=0, max_value=8))
    edges = [33, 34, 41, 42, len(raw) - 1, len(raw), len(raw) + 1]
    caplen = draw(st.one_of(st.sampled_from(edges), st.integers(min_value=0, max_value=len(raw) + 8)))
    return b"\xee" * prefix + bytes(raw), prefix, caplen


@st.composite
def mutated_ipv6_frames(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """A valid IPv6 frame with extension headers, a few header bytes overwritten, maybe cut short."""
    kinds = draw(st.lists(st.sampled_from([0, 43, 60, 44, 51]), max_size=10))
    exts = tuple(
        (kind, ipv6_extension([*kinds, 17][i + 1], bytes(draw(st.integers(0, 30))))) for i, kind in enumerate(kinds)
    )
    raw = bytearray(
        build_udp6_frame(
            src_ip="fd00::1",
            dst_ip=IPv6Address((0xFF << 120) | draw(st.integers(0, (1 << 120) - 1))),
            dst_port=draw(ports),
            payload=draw(st.binary(max_size=64)),
            extensions=exts,
        )
    )
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        raw[draw(st.integers(min_value=12, max_value=len(raw) - 1))] = draw(st.integers(0, 255))
    caplen = draw(st.integers(min_value=0, max_value=len(raw) + 8))
    return bytes(raw), 0, caplen


@given(mutated_ipv6_frames())
def test_ipv6_parser_stays_within_the_frame(case: tuple[bytes, int, int]) -> None:
    buf, offset, caplen = case
    result = parse_frame(buf, offset, caplen)
    assert_result_within(buf, offset, caplen, result)
    if result[0] == 0:
        assert result[1] >= IPV6_KEY_TAG or buf[12:14] != b"\x86\xdd"


@given(mutated_frames())
def test_fast_path_agrees_with_the_general_parser(case: tuple[bytes, int, int]) -> None:
    buf, offset, caplen = case
    result = parse_frame(buf, offset, caplen)
    assert result == _parse_general(buf, offset, min(caplen, len(buf) - offset))
    assert_result_within(buf, offset, caplen, result)


@given(
    src=ipv4s,
    dst=ipv4s,
    port=ports,
    payload=st.binary(max_size=2000),
    ip_options=options,
    prefix=st.integers(min_value=0, max_value=16),
    padding=st.integers(min_value=0, max_value=64),
)
def test_build_parse_round_trip(
    src: int, dst: int, port: int, payload: bytes, ip_options: bytes, prefix: int, padding: int
) -> None:
    raw = build_udp_frame(
        src_ip=IPv4Address(src), dst_ip=IPv4Address(dst), dst_port=port, payload=payload, ip_options=ip_options
    )
    buf = b"\xee" * prefix + raw + b"\0" * padding
    reason, key, offset, length = parse_frame(buf, prefix, len(buf) - prefix)
    assert (reason, key >> 16, key & 0xFFFF) == (0, dst, port)
    assert buf[offset : offset + length] == payload
    assert src_ipv4(buf, prefix) == src


@given(
    src=ipv4s,
    dst=ipv4s,
    spi=st.integers(0, 0xFFFFFFFF),
    seq=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=2000),
    ip_options=options,
    prefix=st.integers(min_value=0, max_value=16),
    padding=st.integers(min_value=0, max_value=64),
)
def test_esp_build_parse_round_trip(
    src: int, dst: int, spi: int, seq: int, payload: bytes, ip_options: bytes, prefix: int, padding: int
) -> None:
    raw = build_esp_frame(
        src_ip=IPv4Address(src), dst_ip=IPv4Address(dst), spi=spi, seq=seq, payload=payload, ip_options=ip_options
    )
    buf = b"\xee" * prefix + raw + b"\0" * padding
    reason, key, offset, length = parse_frame(buf, prefix, len(buf) - prefix)
    assert (reason, key) == (0, ESP_KEY_TAG | (dst << 16))
    assert buf[offset : offset + length] == spi.to_bytes(4, "big") + seq.to_bytes(4, "big") + payload
    assert src_ipv4(buf, prefix) == src


@st.composite
def mutated_esp_frames(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """A valid ESP frame behind a prefix, a few header bytes overwritten, maybe cut short."""
    raw = bytearray(
        build_esp_frame(
            src_ip="10.0.0.1",
            dst_ip=IPv4Address(draw(groups)),
            payload=draw(st.binary(max_size=64)),
            ip_options=draw(options),
        )
    )
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        raw[draw(st.integers(min_value=12, max_value=min(len(raw), 80) - 1))] = draw(st.integers(0, 255))
    prefix = draw(st.integers(min_value=0, max_value=8))
    caplen = draw(st.integers(min_value=0, max_value=len(raw) + 8))
    return b"\xee" * prefix + bytes(raw), prefix, caplen


@given(mutated_esp_frames())
def test_esp_parser_stays_within_the_frame(case: tuple[bytes, int, int]) -> None:
    buf, offset, caplen = case
    result = parse_frame(buf, offset, caplen)
    assert result == _parse_general(buf, offset, min(caplen, len(buf) - offset))
    assert_result_within(buf, offset, caplen, result)
    if result[1] >= ESP_KEY_TAG and result[1] < IPV6_KEY_TAG:  # relayed as ESP: an unfragmented IPv4 ESP packet
        ihl = (buf[offset + 14] & 0x0F) * 4
        assert buf[offset + 23] == 50 and result[2] == offset + 14 + ihl and result[3] >= 8


# ---------------------------------------------------------------------------------------------- filter

KINDS = ("udp", "more_fragments", "fragment_offset", "tcp", "igmp", "esp", "ipv6", "vlan")


@dataclass(frozen=True, slots=True)
class Sent:
    group: int
    port: int
    kind: str
    words: int  # of IP options
    pkttype: int

    def frame(self) -> bytes:
        return build_udp_frame(
            src_ip="10.0.0.1",
            dst_ip=IPv4Address(self.group),
            dst_port=self.port,
            payload=b"p" * 8,
            ip_options=b"\x01" * 4 * self.words,
            more_fragments=self.kind == "more_fragments",
            fragment_offset=100 if self.kind == "fragment_offset" else 0,
            protocol={"tcp": 6, "igmp": 2, "esp": 50}.get(self.kind, 17),
            ethertype=0x86DD if self.kind == "ipv6" else 0x0800,
            vlan=3 if self.kind == "vlan" else None,
        )


def reference(mapping: dict[int, set[int]], sent: Sent) -> bool:
    """What the capture filter must pass: frames from another host, IPv4, to a group with ports; UDP to one of
    its ports, fragments and other protocols whatever their port."""
    if sent.pkttype == PacketType.OUTGOING or sent.kind in ("ipv6", "vlan"):
        return False
    if not mapping.get(sent.group):
        return False
    if sent.kind != "udp":
        return True
    return sent.port in mapping[sent.group]


@st.composite
def sent_to(draw: st.DrawFn, mapping: dict[int, set[int]]) -> Sent:
    """A frame to a configured group and port, a neighbour of one, or anywhere."""
    known = sorted(mapping)
    near_group, near_port = draw(st.integers(0, 3)) > 0, draw(st.integers(0, 2)) > 0
    if known and near_group:
        group = draw(st.sampled_from(known)) + draw(st.sampled_from([0, 0, 0, -1, 1]))
    else:
        group = draw(ipv4s)
    group &= 0xFFFFFFFF
    known_ports = sorted(mapping.get(group, ()))
    if known_ports and near_port:
        port = (draw(st.sampled_from(known_ports)) + draw(st.sampled_from([0, 0, 0, -1, 1]))) & 0xFFFF
    else:
        port = draw(ports)
    return Sent(
        group=group,
        port=port,
        kind=draw(st.sampled_from(KINDS)),
        words=draw(st.integers(min_value=0, max_value=10)),
        pkttype=draw(st.sampled_from(list(PacketType))),
    )


small_mappings = st.dictionaries(
    st.one_of(groups, st.integers(0xEF010100, 0xEF010110)),
    st.sets(st.one_of(ports, st.integers(5000, 5010)), max_size=12),
    max_size=40,
)


@given(st.data(), small_mappings)
def test_filter_decides_as_the_reference(data: st.DataObject, mapping: dict[int, set[int]]) -> None:
    program = build_capture_filter(mapping)
    for _ in range(5):
        sent = data.draw(sent_to(mapping))
        raw = sent.frame()
        verdict = run_program(program, raw, sent.pkttype)
        assert verdict in (0, ACCEPT)
        assert (verdict == ACCEPT) is reference(mapping, sent), sent
        # the parser and the filter agree on what a relayable datagram is
        reason, key, _offset, _length = parse_frame(raw, 0, len(raw))
        if reason == 0 and sent.pkttype != PacketType.OUTGOING and key >= ESP_KEY_TAG:  # ESP: the group decides
            assert (verdict == ACCEPT) is bool(mapping.get((key >> 16) & 0xFFFFFFFF)), sent
        elif reason == 0 and sent.pkttype != PacketType.OUTGOING:
            assert (verdict == ACCEPT) is (key & 0xFFFF in mapping.get(key >> 16, ())), sent


LARGE = ((300, 1), (1000, 1), (100, 10), (20, 150), (1, 2000), (200, -300))  # negative: one port set for all


@cache
def large(index: int) -> tuple[dict[int, set[int]], list[Insn]]:
    """Seeded tables large enough for jump trampolines and repeated tails, and their exact programs."""
    count, per_group = LARGE[index]
    rng = random.Random(index)
    shared = {rng.randrange(1, 65536) for _ in range(-per_group)}
    mapping = {
        0xE8000000 + rng.randrange(1 << 20) * 4: shared or {rng.randrange(1, 65536) for _ in range(per_group)}
        for _ in range(count)
    }
    return mapping, build_capture_filter(mapping)


@settings(deadline=None)
@given(st.data(), st.integers(min_value=0, max_value=len(LARGE) - 1))
def test_large_filters_decide_as_the_reference(data: st.DataObject, index: int) -> None:
    mapping, program = large(index)
    for _ in range(10):
        sent = data.draw(sent_to(mapping))
        assert (run_program(program, sent.frame(), sent.pkttype) == ACCEPT) is reference(mapping, sent), sent


# ------------------------------------------------------------------------------- structured mutations


@dataclass(frozen=True, slots=True)
class Mutated:
    """A frame built from chosen header fields, some of them wrong, and how much of it was captured."""

    version: int
    ihl: int  # the IHL field; the header really has 20 + options bytes
    options: int  # bytes of IP options
    total: int  # the IP total length field
    flags: int  # DF 0x4000, MF 0x2000
    offset: int  # fragment offset
    protocol: int
    ethertype: int
    vlan: int | None
    udp_length: int
    payload: int
    cut: int  # bytes removed from the end of the frame
    pad: int  # Ethernet padding after it

    def frame(self) -> bytes:
        raw = build_udp_frame(
            src_ip="10.0.0.1",
            dst_ip="239.1.2.3",
            dst_port=5001,
            payload=bytes(range(256))[: self.payload],
            ip_options=b"\x01" * self.options,
            version=self.version,
            ihl=self.ihl,
            total_length=self.total,
            dont_fragment=bool(self.flags & 0x4000),
            more_fragments=bool(self.flags & 0x2000),
            fragment_offset=self.offset,
            protocol=self.protocol,
            ethertype=self.ethertype,
            vlan=self.vlan,
            udp_length=self.udp_length,
        )
        raw += b"\0" * self.pad
        return raw[: max(0, len(raw) - self.cut)]


def reference_decision(m: Mutated, raw: bytes) -> tuple[int, int]:
    """(reason, key) from the fields as chosen, in the documented order: the first failing check wins."""
    caplen = len(raw)
    group = 0xEF010203 << 16
    if caplen < 14:
        return 2, 0
    if m.vlan is not None or m.ethertype != 0x0800:
        return 1, 0
    if caplen < 34:
        return 2, 0
    if m.version != 4 or m.ihl < 5 or m.total < m.ihl * 4:
        return 3, 0
    if 14 + m.total > caplen:
        return 2, group
    if m.flags & 0x2000 or m.offset:
        return 4, group
    if m.protocol not in (17, 50):
        return 5, group
    if m.total - m.ihl * 4 < 8:
        return 2, group
    if m.protocol == 50:  # ESP: whatever the IP header holds is relayed, keyed by the group alone
        return 0, ESP_KEY_TAG | group
    # the UDP header is where the IHL field says, whatever the header really holds
    port, udp_length = (
        int.from_bytes(raw[16 + m.ihl * 4 : 18 + m.ihl * 4]),
        int.from_bytes(raw[18 + m.ihl * 4 : 20 + m.ihl * 4]),
    )
    if udp_length < 8 or udp_length > m.total - m.ihl * 4:
        return 6, group | port
    return 0, group | port


MUTABLE = ("version", "ihl", "total", "flags", "offset", "protocol", "ethertype", "vlan", "udp_length", "cut")


@st.composite
def structured_frames(draw: st.DrawFn) -> Mutated:
    """A valid frame, then none, one or a few of its fields set wrong (one at a time most often, so that each
    check is reached with every other field right), values near each boundary likely."""
    options = 4 * draw(st.integers(0, 10))
    payload = draw(st.integers(0, 200))
    good_total = 20 + options + 8 + payload
    wrong = draw(
        st.one_of(
            st.just(frozenset()),
            st.sampled_from(MUTABLE).map(lambda name: frozenset({name})),
            st.frozensets(st.sampled_from(MUTABLE), max_size=3),
        )
    )

    def field(name: str, valid: int, bad: st.SearchStrategy[int]) -> int:
        return draw(bad) if name in wrong else valid

    return Mutated(
        version=field("version", 4, st.integers(0, 15)),
        ihl=field("ihl", 5 + options // 4, st.integers(0, 15)),
        options=options,
        total=field(
            "total", good_total, st.one_of(st.integers(0, 0xFFFF), st.integers(good_total - 12, good_total + 12))
        ),
        flags=field("flags", 0, st.sampled_from([0x4000, 0x2000, 0x6000])),
        offset=field("offset", 0, st.integers(0, 0x1FFF)),
        protocol=field("protocol", 17, st.integers(0, 255)),
        ethertype=field("ethertype", 0x0800, st.sampled_from([0x0806, 0x8100, 0x88A8, 0, 0xFFFF])),
        vlan=field("vlan", -1, st.integers(0, 4095)) if "vlan" in wrong else None,
        udp_length=field(
            "udp_length", 8 + payload, st.one_of(st.integers(0, 0xFFFF), st.integers(payload, payload + 16))
        ),
        payload=payload,
        cut=field("cut", 0, st.integers(0, good_total + 14)),
        pad=draw(st.sampled_from([0, 0, 0, 4, 60])),
    )


@given(structured_frames(), st.integers(min_value=0, max_value=8))
def test_parser_decides_as_the_reference_on_mutated_headers(m: Mutated, prefix: int) -> None:
    raw = m.frame()
    buf = b"\xee" * prefix + raw
    reason, key, offset, length = parse_frame(buf, prefix, len(raw))
    assert (reason, key) == reference_decision(m, raw), m
    assert (reason, key, offset, length) == _parse_general(buf, prefix, len(raw)), "fast path disagrees"
    if reason == 0 and m.protocol == 50:
        assert (offset - prefix, length) == (14 + m.ihl * 4, m.total - m.ihl * 4)
    elif reason == 0:
        start = 14 + m.ihl * 4 + 8
        assert (offset - prefix, length) == (start, int.from_bytes(raw[start - 4 : start - 2]) - 8)
