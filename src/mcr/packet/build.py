"""Frame builders for tests, fuzzing and the benchmark: valid Ethernet/IPv4/UDP (IPv4/ESP, IPv6/UDP) frames by default,
malformed on request through keyword overrides (lengths, header length, version, fragments, protocol, ethertype,
VLAN tag, IPv6 extension headers).
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

__all__ = [
    "ETH_P_8021Q",
    "ETH_P_IP",
    "IPPROTO_ESP",
    "build_esp_frame",
    "build_udp6_frame",
    "build_udp_frame",
    "ipv4_checksum",
    "ipv6_extension",
    "multicast_mac",
    "multicast_mac6",
    "udp6_pseudo_header",
    "udp_checksum",
]

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
IPPROTO_UDP = 17
IPPROTO_ESP = 50

_IP_FLAG_DF = 0x4000
_IP_FLAG_MF = 0x2000
_IP_MAX_OPTIONS = 40
_IP_HEADER = struct.Struct("!BBHHHBBH4s4s")  # checksum at bytes 10..11
_UDP_HEADER = struct.Struct("!HHHH")  # source port, destination port, length, checksum
_PSEUDO_HEADER = struct.Struct("!4s4sxBH")  # source, destination, zero, protocol, UDP length

DEFAULT_SRC_MAC = bytes.fromhex("020000000001")  # locally administered


def multicast_mac(group: IPv4Address) -> bytes:
    """The Ethernet address of an IPv4 multicast group: 01:00:5e and the group's low 23 bits (RFC 1112)."""
    return b"\x01\x00\x5e" + (int(group) & 0x7FFFFF).to_bytes(3, "big")


def ipv4_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum of 16-bit words.

    Over an IPv4 header whose checksum field is zero it gives the field's value; over a header with a correct
    checksum it gives 0. An odd-length input is padded with a zero byte.
    """
    if len(data) % 2:
        data += b"\0"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = sum(words)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_checksum(src: IPv4Address, dst: IPv4Address, udp: bytes, length: int | None = None) -> int:
    """The UDP checksum of segment `udp` (its checksum field zero) with the IPv4 pseudo-header.

    `length` is the pseudo-header's UDP length, by default ``len(udp)``. A computed 0 is sent as 0xFFFF, because
    0 means "no checksum".
    """
    return _udp_sum(_pseudo_header(src, dst, len(udp) if length is None else length), udp)


def _pseudo_header(src: IPv4Address, dst: IPv4Address, udp_len: int) -> bytes:
    return _PSEUDO_HEADER.pack(src.packed, dst.packed, IPPROTO_UDP, udp_len)


def _udp_sum(pseudo: bytes, segment: bytes) -> int:
    """The UDP checksum over a pseudo-header (IPv4 or IPv6) and the segment; a computed 0 is sent as 0xFFFF."""
    return ipv4_checksum(pseudo + segment) or 0xFFFF


def _udp_segment(src_port: int, dst_port: int, udp_len: int, payload: bytes, pseudo: bytes | None) -> bytes:
    """A UDP header with length field `udp_len`, then `payload`. The checksum covers the pseudo-header `pseudo`
    and the segment (a computed 0 is sent as 0xFFFF); without a pseudo-header it is 0 ("no checksum")."""
    segment = _UDP_HEADER.pack(src_port, dst_port, udp_len, 0) + payload
    if pseudo is None:
        return segment
    return _UDP_HEADER.pack(src_port, dst_port, udp_len, _udp_sum(pseudo, segment)) + payload


def build_udp_frame(
    *,
    src_mac: bytes = DEFAULT_SRC_MAC,
    dst_mac: bytes | None = None,
    src_ip: IPv4Address | str,
    dst_ip: IPv4Address | str,
    src_port: int = 40000,
    dst_port: int,
    payload: bytes,
    ttl: int = 1,
    ip_options: bytes = b"",
    ident: int = 0,
    dont_fragment: bool = False,
    more_fragments: bool = False,
    fragment_offset: int = 0,
    protocol: int = IPPROTO_UDP,
    version: int = 4,
    ihl: int | None = None,
    total_length: int | None = None,
    udp_length: int | None = None,
    ethertype: int = ETH_P_IP,
    vlan: int | None = None,
    with_udp_checksum: bool = True,
) -> bytes:
    """An Ethernet / IPv4 / UDP frame carrying `payload`, with correct IPv4 header and UDP checksums.

    `dst_mac` defaults to the multicast MAC of `dst_ip`. `fragment_offset` is the header field, in units of
    8 bytes. The overrides write a field as given instead of the computed value, to build malformed frames:
    `version`, `ihl` (header length in 32-bit words; the bytes sent are still 20 + options), `total_length`,
    `udp_length`, `protocol` (the UDP header and payload are still sent), `ethertype`. `vlan` inserts an
    802.1Q tag with that VLAN id before the ethertype. Checksums are computed over the fields as written; with
    `with_udp_checksum=False` the UDP checksum field is 0 ("no checksum", allowed for IPv4). No Ethernet padding
    is added.
    """
    src, dst = IPv4Address(src_ip), IPv4Address(dst_ip)
    udp_len = _UDP_HEADER.size + len(payload) if udp_length is None else udp_length
    pseudo = _pseudo_header(src, dst, udp_len) if with_udp_checksum else None
    segment = _udp_segment(src_port, dst_port, udp_len, payload, pseudo)

    return _ipv4_frame(
        src_mac=src_mac,
        dst_mac=dst_mac,
        src=src,
        dst=dst,
        body=segment,
        ttl=ttl,
        ip_options=ip_options,
        ident=ident,
        flags=(_IP_FLAG_DF if dont_fragment else 0) | (_IP_FLAG_MF if more_fragments else 0),
        fragment_offset=fragment_offset,
        protocol=protocol,
        version=version,
        ihl=ihl,
        total_length=total_length,
        ethertype=ethertype,
        vlan=vlan,
    )


def _ipv4_frame(
    *,
    src_mac: bytes,
    dst_mac: bytes | None,
    src: IPv4Address,
    dst: IPv4Address,
    body: bytes,
    ttl: int,
    ip_options: bytes,
    ident: int,
    flags: int,
    fragment_offset: int,
    protocol: int,
    version: int,
    ihl: int | None,
    total_length: int | None,
    ethertype: int,
    vlan: int | None,
) -> bytes:
    """Ethernet and IPv4 headers (checksum over the fields as written) in front of `body`."""
    if len(ip_options) % 4 or len(ip_options) > _IP_MAX_OPTIONS:
        raise ValueError(f"IP options must be a multiple of 4 bytes, at most {_IP_MAX_OPTIONS}: {len(ip_options)}")
    if not 0 <= fragment_offset <= 0x1FFF:
        raise ValueError(f"fragment offset is a 13-bit field: {fragment_offset}")
    header_len = 20 + len(ip_options)
    ihl_field = header_len // 4 if ihl is None else ihl
    if not (0 <= version <= 15 and 0 <= ihl_field <= 15):
        raise ValueError(f"version and IHL are 4-bit fields: {version}, {ihl_field}")
    total = header_len + len(body) if total_length is None else total_length
    fields = [(version << 4) | ihl_field, 0, total, ident, flags | fragment_offset, ttl, protocol]
    header = _IP_HEADER.pack(*fields, 0, src.packed, dst.packed) + ip_options
    header = _IP_HEADER.pack(*fields, ipv4_checksum(header), src.packed, dst.packed) + ip_options

    ethernet = (multicast_mac(dst) if dst_mac is None else dst_mac) + src_mac
    if vlan is not None:
        ethernet += struct.pack("!HH", ETH_P_8021Q, vlan)
    return ethernet + struct.pack("!H", ethertype) + header + body


def build_esp_frame(
    *,
    src_mac: bytes = DEFAULT_SRC_MAC,
    dst_mac: bytes | None = None,
    src_ip: IPv4Address | str,
    dst_ip: IPv4Address | str,
    spi: int = 0x1000,
    seq: int = 1,
    payload: bytes,
    ttl: int = 1,
    ip_options: bytes = b"",
    ident: int = 0,
    more_fragments: bool = False,
    fragment_offset: int = 0,
    total_length: int | None = None,
    ethertype: int = ETH_P_IP,
    vlan: int | None = None,
) -> bytes:
    """An Ethernet / IPv4 / ESP frame: the ESP header (`spi`, `seq`) then `payload`, which stands for the
    encrypted data and ICV (the relay never looks inside). The IPv4 header checksum is correct; the overrides
    (`total_length`, fragments, `ethertype`, `vlan`) build malformed frames as in `build_udp_frame`."""
    return _ipv4_frame(
        src_mac=src_mac,
        dst_mac=dst_mac,
        src=IPv4Address(src_ip),
        dst=IPv4Address(dst_ip),
        body=struct.pack("!II", spi, seq) + payload,
        ttl=ttl,
        ip_options=ip_options,
        ident=ident,
        flags=_IP_FLAG_MF if more_fragments else 0,
        fragment_offset=fragment_offset,
        protocol=IPPROTO_ESP,
        version=4,
        ihl=None,
        total_length=total_length,
        ethertype=ethertype,
        vlan=vlan,
    )


def multicast_mac6(group: IPv6Address) -> bytes:
    """The Ethernet address of an IPv6 multicast group: 33:33 and the group's low 32 bits (RFC 2464)."""
    return b"\x33\x33" + group.packed[12:]


def udp6_pseudo_header(src: IPv6Address, dst: IPv6Address, udp_length: int) -> bytes:
    """The IPv6 pseudo-header the UDP checksum covers (RFC 8200 8.1): addresses, UDP length, next header 17."""
    return src.packed + dst.packed + struct.pack("!I3xB", udp_length, IPPROTO_UDP)


def ipv6_extension(next_header: int, body: bytes = b"") -> bytes:
    """An extension header in the (length + 1) * 8 format (hop-by-hop, routing, destination options),
    `body` padded with zeros to fill it; the fragment header (44) is always 8 bytes."""
    size = max(8, -(-(2 + len(body)) // 8) * 8)
    return struct.pack("!BB", next_header, size // 8 - 1) + body.ljust(size - 2, b"\0")


def build_udp6_frame(
    *,
    src_mac: bytes = DEFAULT_SRC_MAC,
    dst_mac: bytes | None = None,
    src_ip: IPv6Address | str,
    dst_ip: IPv6Address | str,
    src_port: int = 40000,
    dst_port: int,
    payload: bytes,
    hop_limit: int = 1,
    extensions: tuple[tuple[int, bytes], ...] = (),
    version: int = 6,
    payload_length: int | None = None,
    udp_length: int | None = None,
    next_header: int = IPPROTO_UDP,
) -> bytes:
    """An Ethernet / IPv6 / [extension headers] / UDP frame with a correct UDP checksum.

    `extensions` are (type, header bytes) in order, e.g. ``((0, ipv6_extension(17)),)`` for a hop-by-hop
    header; each header's own first byte must name what follows it, and the IPv6 header's next header is
    the first one's type (`next_header` when there are none). `version`, `payload_length` and `udp_length`
    write those fields as given, to build malformed frames.
    """
    src, dst = IPv6Address(src_ip), IPv6Address(dst_ip)
    udp_len = _UDP_HEADER.size + len(payload) if udp_length is None else udp_length
    segment = _udp_segment(src_port, dst_port, udp_len, payload, udp6_pseudo_header(src, dst, udp_len))
    ext = b"".join(body for _t, body in extensions)
    first = extensions[0][0] if extensions else next_header
    length = len(ext) + len(segment) if payload_length is None else payload_length
    header = struct.pack("!IHBB", version << 28, length, first, hop_limit) + src.packed + dst.packed
    ethernet = (multicast_mac6(dst) if dst_mac is None else dst_mac) + src_mac + struct.pack("!H", ETH_P_IPV6)
    return ethernet + header + ext + segment
