from ipaddress import IPv4Address

import pytest

from mcr.packet.build import build_udp_frame, ipv4_checksum, multicast_mac
from mcr.packet.parse import DROP_KEYS, DropReason, parse_frame

GROUP = IPv4Address("239.1.1.1")
KEY = (int(GROUP) << 16) | 5001


def frame(payload: bytes = b"hello", **kw: object) -> bytes:
    args: dict[str, object] = {"src_ip": "10.0.0.1", "dst_ip": GROUP, "dst_port": 5001, "payload": payload}
    args.update(kw)
    return build_udp_frame(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, 46, 64, 1472, 8972])
def test_valid_payload_returned_exactly(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    f = frame(payload)
    reason, key, off, length = parse_frame(f, 0, len(f))
    assert (reason, key, length) == (0, KEY, size)
    assert f[off : off + length] == payload


@pytest.mark.parametrize("options", [b"\x01\x01\x01\x00", b"\x01" * 40])
def test_ip_options_are_skipped(options: bytes) -> None:
    f = frame(b"data", ip_options=options)
    reason, key, off, length = parse_frame(f, 0, len(f))
    assert (reason, key) == (0, KEY)
    assert f[off : off + length] == b"data"


def test_offset_and_padding() -> None:
    f = b"\xaa" * 10 + frame(b"x") + b"\0" * 30  # Ethernet padding after the IP datagram
    reason, key, off, length = parse_frame(f, 10, len(f) - 10)
    assert (reason, key, f[off : off + length]) == (0, KEY, b"x")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (frame()[:20], DropReason.TRUNCATED),
        (frame()[:13], DropReason.TRUNCATED),
        (frame(ethertype=0x86DD), DropReason.NOT_IPV4),
        (frame(vlan=5), DropReason.NOT_IPV4),
        (frame()[:14] + b"\0" * 5, DropReason.TRUNCATED),
        (frame(ihl=4), DropReason.BAD_IP_HEADER),
        (frame(version=6), DropReason.BAD_IP_HEADER),
        (frame(total_length=10), DropReason.BAD_IP_HEADER),
        (frame(total_length=2000), DropReason.TRUNCATED),
        (frame(more_fragments=True), DropReason.FRAGMENT),
        (frame(fragment_offset=185), DropReason.FRAGMENT),
        (frame(protocol=6), DropReason.NOT_UDP),
        (frame(udp_length=7), DropReason.BAD_UDP_LENGTH),
        (frame(udp_length=200), DropReason.BAD_UDP_LENGTH),
        (frame(total_length=24), DropReason.TRUNCATED),
    ],
)
def test_drop_reasons(raw: bytes, reason: DropReason) -> None:
    assert parse_frame(raw, 0, len(raw))[0] == reason


@pytest.mark.parametrize("kw", [{"more_fragments": True}, {"protocol": 1}])
def test_drops_keep_the_group_for_attribution(kw: dict[str, object]) -> None:
    f = frame(**kw)
    assert parse_frame(f, 0, len(f))[1] == int(GROUP) << 16


def test_drop_keys_are_stable() -> None:
    assert DROP_KEYS[DropReason.FRAGMENT] == "fragment"
    assert DropReason.BAD_UDP_LENGTH.key == "bad_udp_length"
    assert len(DROP_KEYS) == len(DropReason)


def test_builder_checksums_and_mac() -> None:
    f = frame(b"abc")
    assert ipv4_checksum(f[14:34]) == 0
    assert multicast_mac(IPv4Address("239.129.1.2")) == bytes.fromhex("01005e010102")
    assert f[:6] == multicast_mac(GROUP)
