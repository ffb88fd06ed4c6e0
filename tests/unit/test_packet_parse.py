"""The hot-path frame parser and the frame builder: valid frames, every drop reason, and the bytes returned."""

import mmap
import struct
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

import pytest

from mcr.packet.build import build_esp_frame, build_udp_frame, ipv4_checksum, multicast_mac, udp_checksum
from mcr.packet.parse import DROP_KEYS, ESP_KEY_TAG, IPV6_KEY_TAG, DropReason, parse_frame, src_ipv4

SRC = IPv4Address("10.0.0.1")
GROUP = IPv4Address("239.1.2.3")
PORT = 5001
KEY = (int(GROUP) << 16) | PORT
GROUP_KEY = int(GROUP) << 16


def frame(payload: bytes = b"hello", **kw: Any) -> bytes:
    args: dict[str, Any] = {"src_ip": SRC, "dst_ip": GROUP, "dst_port": PORT, "payload": payload}
    args.update(kw)
    return build_udp_frame(**args)


def parse(raw: bytes) -> tuple[int, int, int, int]:
    return parse_frame(raw, 0, len(raw))


# ------------------------------------------------------------------------------------------------ valid


@pytest.mark.parametrize("size", [0, 1, 18, 1472, 8972])
def test_payload_is_returned_exactly(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    raw = frame(payload)
    reason, key, offset, length = parse(raw)
    assert (reason, key, offset, length) == (DropReason.OK, KEY, 42, size)
    assert raw[offset : offset + length] == payload


@pytest.mark.parametrize(
    ("options", "ihl"),
    [(b"\x01\x01\x01\x00", 6), (b"\x94\x04\x00\x00" * 2, 7), (b"\x01" * 40, 15)],
    ids=["ihl6", "ihl7-router-alert", "ihl15"],
)
def test_ip_options_are_skipped(options: bytes, ihl: int) -> None:
    raw = frame(b"data", ip_options=options)
    assert raw[14] == 0x40 | ihl
    reason, key, offset, length = parse(raw)
    assert (reason, key, offset) == (DropReason.OK, KEY, 14 + ihl * 4 + 8)
    assert raw[offset : offset + length] == b"data"


@pytest.mark.parametrize("padding", [1, 13, 200])
def test_ethernet_padding_is_ignored(padding: int) -> None:
    raw = frame(b"x") + b"\0" * padding
    reason, key, offset, length = parse(raw)
    assert (reason, key, raw[offset : offset + length]) == (DropReason.OK, KEY, b"x")


def test_udp_length_below_the_ip_payload_bounds_the_payload() -> None:
    raw = frame(b"abcd", total_length=20 + 8 + 4 + 6) + b"TRAILR"
    reason, _key, offset, length = parse(raw)
    assert (reason, raw[offset : offset + length]) == (DropReason.OK, b"abcd")


def test_dont_fragment_is_not_a_fragment() -> None:
    assert parse(frame(dont_fragment=True))[0] == DropReason.OK


@pytest.mark.parametrize(
    "wrap",
    [bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b))],
    ids=["bytes", "bytearray", "memoryview", "memoryview-of-bytearray"],
)
@pytest.mark.parametrize("at", [0, 3, 4096])
def test_frame_inside_a_larger_buffer(wrap: Callable[[bytes], Any], at: int) -> None:
    raw = frame(b"payload", ip_options=b"\x01" * 8)
    buf = wrap(b"\xee" * at + raw + b"\xee" * 64)
    reason, key, offset, length = parse_frame(buf, at, len(raw))
    assert (reason, key, bytes(buf[offset : offset + length])) == (DropReason.OK, KEY, b"payload")
    assert src_ipv4(buf, at) == int(SRC)


def test_frame_in_an_mmap_ring() -> None:
    raw = frame(b"ring")
    with mmap.mmap(-1, 8192) as ring:
        ring[5000 : 5000 + len(raw)] = raw
        reason, key, offset, length = parse_frame(ring, 5000, len(raw))
        assert (reason, key, ring[offset : offset + length]) == (DropReason.OK, KEY, b"ring")
        assert src_ipv4(ring, 5000) == int(SRC)


# ------------------------------------------------------------------------------------------------ drops

VALID = frame(b"x" * 20)


@pytest.mark.parametrize(
    ("raw", "reason", "key"),
    [
        pytest.param(b"", DropReason.TRUNCATED, 0, id="empty"),
        pytest.param(VALID[:13], DropReason.TRUNCATED, 0, id="13-bytes"),
        pytest.param(VALID[:20], DropReason.TRUNCATED, 0, id="ip-header-cut"),
        pytest.param(VALID[:33], DropReason.TRUNCATED, 0, id="33-bytes"),
        pytest.param(VALID[:41], DropReason.TRUNCATED, GROUP_KEY, id="udp-header-cut"),
        pytest.param(VALID[:-1], DropReason.TRUNCATED, GROUP_KEY, id="payload-cut"),
        pytest.param(VALID[:12] + b"\x08\x06" + b"\0" * 6, DropReason.NOT_IPV4, 0, id="short-arp"),
        pytest.param(frame(ethertype=0x86DD), DropReason.TRUNCATED, 0, id="ipv4-header-as-ipv6"),
        pytest.param(frame(ethertype=0x0806), DropReason.NOT_IPV4, 0, id="arp"),
        pytest.param(frame(vlan=5), DropReason.NOT_IPV4, 0, id="802.1q"),
        pytest.param(frame(ihl=4), DropReason.BAD_IP_HEADER, 0, id="ihl4"),
        pytest.param(frame(ihl=0), DropReason.BAD_IP_HEADER, 0, id="ihl0"),
        pytest.param(frame(version=6), DropReason.BAD_IP_HEADER, 0, id="version6"),
        pytest.param(frame(version=5), DropReason.BAD_IP_HEADER, 0, id="version5"),
        pytest.param(frame(total_length=19), DropReason.BAD_IP_HEADER, 0, id="total-below-ihl"),
        pytest.param(frame(ip_options=b"\0" * 4, total_length=23), DropReason.BAD_IP_HEADER, 0, id="total-in-options"),
        pytest.param(frame(total_length=20 + 8 + 20 + 1), DropReason.TRUNCATED, GROUP_KEY, id="total-too-big"),
        pytest.param(frame(total_length=0xFFFF), DropReason.TRUNCATED, GROUP_KEY, id="total-65535"),
        pytest.param(frame(total_length=20), DropReason.TRUNCATED, GROUP_KEY, id="no-room-for-udp"),
        pytest.param(frame(total_length=27), DropReason.TRUNCATED, GROUP_KEY, id="udp-header-beyond-total"),
        pytest.param(frame(more_fragments=True), DropReason.FRAGMENT, GROUP_KEY, id="mf"),
        pytest.param(frame(fragment_offset=1), DropReason.FRAGMENT, GROUP_KEY, id="offset1"),
        pytest.param(frame(fragment_offset=0x1FFF), DropReason.FRAGMENT, GROUP_KEY, id="offset-max"),
        pytest.param(frame(protocol=6), DropReason.NOT_UDP, GROUP_KEY, id="tcp"),
        pytest.param(frame(protocol=1), DropReason.NOT_UDP, GROUP_KEY, id="icmp"),
        pytest.param(frame(protocol=2, ip_options=b"\x94\x04\0\0"), DropReason.NOT_UDP, GROUP_KEY, id="igmp"),
        pytest.param(frame(udp_length=7), DropReason.BAD_UDP_LENGTH, KEY, id="udp-length7"),
        pytest.param(frame(udp_length=0), DropReason.BAD_UDP_LENGTH, KEY, id="udp-length0"),
        pytest.param(frame(udp_length=8 + 20 + 1), DropReason.BAD_UDP_LENGTH, KEY, id="udp-length-too-long"),
        pytest.param(frame(udp_length=0xFFFF), DropReason.BAD_UDP_LENGTH, KEY, id="udp-length-65535"),
        # the first failing check wins
        pytest.param(frame(vlan=1, ihl=4), DropReason.NOT_IPV4, 0, id="vlan-before-header"),
        pytest.param(frame(ihl=4, more_fragments=True), DropReason.BAD_IP_HEADER, 0, id="header-before-fragment"),
        pytest.param(frame(total_length=999, protocol=6), DropReason.TRUNCATED, GROUP_KEY, id="length-before-proto"),
        pytest.param(frame(more_fragments=True, protocol=6), DropReason.FRAGMENT, GROUP_KEY, id="fragment-first"),
    ],
)
def test_drop_reasons(raw: bytes, reason: DropReason, key: int) -> None:
    assert parse(raw) == (reason, key, 0, 0)


@pytest.mark.parametrize(
    ("at", "caplen", "buffer_len", "reason"),
    [
        pytest.param(0, len(VALID) - 1, len(VALID), DropReason.TRUNCATED, id="caplen-short-of-frame"),
        pytest.param(0, len(VALID) + 100, len(VALID) - 1, DropReason.TRUNCATED, id="caplen-beyond-buffer"),
        pytest.param(0, len(VALID) + 100, len(VALID), DropReason.OK, id="caplen-clamped-to-buffer"),
        pytest.param(-1, len(VALID), len(VALID), DropReason.TRUNCATED, id="negative-offset"),
        pytest.param(len(VALID) + 5, 60, len(VALID), DropReason.TRUNCATED, id="offset-beyond-buffer"),
        pytest.param(0, -3, len(VALID), DropReason.TRUNCATED, id="negative-caplen"),
    ],
)
def test_bounds_never_raise(at: int, caplen: int, buffer_len: int, reason: DropReason) -> None:
    assert parse_frame(VALID[:buffer_len], at, caplen)[0] == reason


def test_drop_reasons_and_keys_are_stable() -> None:
    assert [(int(r), r.key) for r in DropReason] == list(enumerate(DROP_KEYS))
    assert DROP_KEYS == (
        "ok",
        "not_ipv4",
        "truncated",
        "bad_ip_header",
        "fragment",
        "not_udp",
        "bad_udp_length",
        "no_rule",
        "rate_limited",
        "ext_header",
        "zero_udp_checksum",
    )
    assert DropReason.FRAGMENT.key == "fragment"


# ---------------------------------------------------------------------------------------------- builder


def test_ipv4_checksum_known_header() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert ipv4_checksum(header) == 0xB861
    assert ipv4_checksum(header[:10] + b"\xb8\x61" + header[12:]) == 0
    assert ipv4_checksum(b"\x01") == ~0x0100 & 0xFFFF  # odd length: padded with a zero byte


def test_built_frame_layout_and_checksums() -> None:
    raw = frame(b"abc", src_mac=b"\x02\0\0\0\0\x09", ttl=7, ident=0x1234, src_port=1234)
    assert raw[:6] == multicast_mac(GROUP) and raw[6:12] == b"\x02\0\0\0\0\x09" and raw[12:14] == b"\x08\x00"
    version_ihl, _tos, total, ident, frag, ttl, proto = struct.unpack_from("!BBHHHBB", raw, 14)
    assert (version_ihl, total, ident, frag, ttl, proto) == (0x45, 20 + 8 + 3, 0x1234, 0, 7, 17)
    assert raw[26:34] == SRC.packed + GROUP.packed
    assert ipv4_checksum(raw[14:34]) == 0
    sport, dport, udp_len, checksum = struct.unpack_from("!HHHH", raw, 34)
    assert (sport, dport, udp_len) == (1234, PORT, 11)
    assert checksum == udp_checksum(SRC, GROUP, raw[34:40] + b"\0\0" + raw[42:])
    pseudo = SRC.packed + GROUP.packed + struct.pack("!xBH", 17, udp_len)
    assert ipv4_checksum(pseudo + raw[34:]) == 0


def test_built_frame_overrides() -> None:
    raw = frame(vlan=42, dst_mac=b"\xff" * 6, more_fragments=True, fragment_offset=3, dont_fragment=True)
    assert raw[:6] == b"\xff" * 6
    assert raw[12:18] == b"\x81\x00\x00\x2a\x08\x00"
    assert struct.unpack_from("!H", raw, 18 + 6)[0] == 0x4000 | 0x2000 | 3
    with pytest.raises(ValueError, match="multiple of 4"):
        frame(ip_options=b"\x01")
    with pytest.raises(ValueError, match="multiple of 4"):
        frame(ip_options=b"\x01" * 44)
    with pytest.raises(ValueError, match="13-bit"):
        frame(fragment_offset=0x2000)


@pytest.mark.parametrize(
    ("group", "mac"),
    [
        ("224.0.0.1", "01005e000001"),
        ("239.1.2.3", "01005e010203"),
        ("239.129.1.2", "01005e010102"),  # the 24th bit is not mapped
        ("224.255.255.255", "01005e7fffff"),
    ],
)
def test_multicast_mac(group: str, mac: str) -> None:
    assert multicast_mac(IPv4Address(group)) == bytes.fromhex(mac)


# -------------------------------------------------------------------------------------------------- ESP

ESP_KEY = ESP_KEY_TAG | GROUP_KEY


def esp(payload: bytes = b"sealed", **kw: Any) -> bytes:
    return build_esp_frame(src_ip=SRC, dst_ip=GROUP, spi=0xABCD0001, seq=7, payload=payload, **kw)


@pytest.mark.parametrize("options", [b"", b"\x94\x04\0\0", b"\x01" * 40], ids=["ihl5", "router-alert", "ihl15"])
@pytest.mark.parametrize("size", [0, 1, 1400])
def test_esp_payload_is_everything_after_the_ip_header(options: bytes, size: int) -> None:
    body = bytes(range(256)) * 6
    raw = esp(body[:size], ip_options=options) + b"\0" * 6  # Ethernet padding is not payload
    reason, key, offset, length = parse(raw)
    assert (reason, key) == (DropReason.OK, ESP_KEY)
    assert raw[offset : offset + length] == struct.pack("!II", 0xABCD0001, 7) + body[:size]
    assert offset == 14 + 20 + len(options)


def test_esp_keys_meet_no_udp_key() -> None:
    """A UDP datagram to port 0 of the group must never match an ESP rule on it (and no ESP key is IPv6's)."""
    assert parse(frame(dst_port=0))[1] == GROUP_KEY
    assert parse(esp())[1] != GROUP_KEY
    assert ESP_KEY < IPV6_KEY_TAG


@pytest.mark.parametrize(
    ("raw", "reason", "key"),
    [
        pytest.param(esp(b"")[:-1], DropReason.TRUNCATED, GROUP_KEY, id="frame-cut"),
        pytest.param(esp(b"", total_length=27), DropReason.TRUNCATED, GROUP_KEY, id="no-room-for-spi-and-seq"),
        pytest.param(esp(b"", total_length=20), DropReason.TRUNCATED, GROUP_KEY, id="no-esp-header"),
        pytest.param(esp(more_fragments=True), DropReason.FRAGMENT, GROUP_KEY, id="first-fragment"),
        pytest.param(esp(fragment_offset=3), DropReason.FRAGMENT, GROUP_KEY, id="later-fragment"),
        pytest.param(esp(vlan=4), DropReason.NOT_IPV4, 0, id="802.1q"),
        pytest.param(esp(total_length=9999), DropReason.TRUNCATED, GROUP_KEY, id="total-too-big"),
    ],
)
def test_esp_drop_reasons(raw: bytes, reason: DropReason, key: int) -> None:
    assert parse(raw) == (reason, key, 0, 0)


def test_esp_with_the_shortest_header_is_relayed() -> None:
    raw = esp(b"")
    assert parse(raw) == (DropReason.OK, ESP_KEY, 34, 8)
