"""Frame builders for tests, fuzzing and benchmarks: valid frames by default, malformed on request."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100


def multicast_mac(group: IPv4Address) -> bytes:
    """01:00:5e followed by the low 23 bits of the group (RFC 1112)."""
    low = int(group) & 0x7FFFFF
    return bytes((0x01, 0x00, 0x5E)) + low.to_bytes(3, "big")


def ipv4_checksum(data: bytes) -> int:
    """The ones' complement sum used by the IPv4 header and (over a pseudo-header) UDP."""
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_checksum(src: IPv4Address, dst: IPv4Address, udp: bytes) -> int:
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 17, len(udp))
    value = ipv4_checksum(pseudo + udp)
    return value or 0xFFFF


def build_udp_frame(
    *,
    src_mac: bytes = b"\x02\x00\x00\x00\x00\x01",
    dst_mac: bytes | None = None,
    src_ip: IPv4Address | str,
    dst_ip: IPv4Address | str,
    src_port: int = 40000,
    dst_port: int,
    payload: bytes,
    ttl: int = 1,
    ip_options: bytes = b"",
    ident: int = 0,
    more_fragments: bool = False,
    fragment_offset: int = 0,
    protocol: int = 17,
    ihl: int | None = None,
    version: int = 4,
    total_length: int | None = None,
    udp_length: int | None = None,
    ethertype: int = ETH_P_IP,
    vlan: int | None = None,
) -> bytes:
    """An Ethernet/IPv4/UDP frame with correct checksums; the keyword overrides make it malformed."""
    src, dst = IPv4Address(src_ip), IPv4Address(dst_ip)
    if len(ip_options) % 4:
        raise ValueError("IP options must be a multiple of 4 bytes")
    udp_len = 8 + len(payload) if udp_length is None else udp_length
    udp = struct.pack("!HHHH", src_port, dst_port, udp_len & 0xFFFF, 0) + payload
    if protocol == 17 and udp_length is None:
        udp = udp[:6] + struct.pack("!H", udp_checksum(src, dst, udp)) + udp[8:]
    header_words = (20 + len(ip_options)) // 4 if ihl is None else ihl
    total = 20 + len(ip_options) + len(udp) if total_length is None else total_length
    flags_frag = (0x2000 if more_fragments else 0) | (fragment_offset & 0x1FFF)
    header = (
        struct.pack(
            "!BBHHHBBH4s4s",
            (version << 4) | (header_words & 0x0F),
            0,
            total & 0xFFFF,
            ident,
            flags_frag,
            ttl,
            protocol,
            0,
            src.packed,
            dst.packed,
        )
        + ip_options
    )
    header = header[:10] + struct.pack("!H", ipv4_checksum(header)) + header[12:]
    eth = (dst_mac if dst_mac is not None else multicast_mac(dst)) + src_mac
    if vlan is not None:
        eth += struct.pack("!HH", ETH_P_8021Q, vlan & 0x0FFF)
    return eth + struct.pack("!H", ethertype) + header + udp
