"""Ethernet/IPv4/UDP, Ethernet/IPv4/ESP and Ethernet/IPv6/UDP frame parsing for the data-plane hot path.

`parse_frame` runs once per captured packet, so it works on plain ints: one precompiled `struct.Struct.unpack_from`
call for the common frame (no IP options), two otherwise; no objects besides the returned tuple, and no exceptions
for any input. A bad frame is a drop reason, which the caller counts.

Checksums are not verified (the relay re-sends the payload and the kernel computes new ones); IP options
are skipped; Ethernet padding after the IP packet is ignored because every bound comes from the IP total
length. The drop reasons are the ones the kernel engine (`mcr.kernel.program`) counts, with the same
meaning, so both engines report alike.

IPv4 ESP (IP protocol 50) takes the general path: ESP has no ports, so its key is the group's alone, tagged
``ESP_KEY_TAG | (ipv4_destination << 16)`` so that no UDP key (not even to port 0) can equal it, and its
payload is everything after the IP header (SPI, sequence number, encrypted data, ICV), which is what an ESP
output re-sends. An ESP packet shorter than its 8-byte header (SPI and sequence number) is TRUNCATED.

IPv6 frames take the general path: the extension headers hop-by-hop (0), routing (43) and destination
options (60) are walked, at most `MAX_EXT_HEADERS` of them and never past the payload length; a fragment
header (44) is a FRAGMENT drop; an extension header that is not walked (ESP, AH, mobility, HIP, shim6,
experimental) or too many of them is an EXT_HEADER drop; any other upper layer is NOT_UDP; a UDP checksum
of 0 ("none", which IPv6 does not allow: RFC 8200 8.1) is a ZERO_UDP_CHECKSUM drop. Their keys are
``IPV6_KEY_TAG | (ipv6_destination << 16) | port``, which no IPv4 key can equal.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sized
    from typing import Protocol

    from typing_extensions import Buffer

    class FrameBuffer(Buffer, Sized, Protocol):
        """What `struct.unpack_from` reads and `len` measures in bytes: bytes, bytearray, a byte
        memoryview, an mmap'd ring."""


__all__ = [
    "DROP_KEYS",
    "ESP_HLEN",
    "ESP_KEY_TAG",
    "ETH_HLEN",
    "ETH_P_IP",
    "ETH_P_IPV6",
    "IPPROTO_ESP",
    "IPPROTO_UDP",
    "IPV6_KEY_TAG",
    "DropReason",
    "ParseResult",
    "parse_frame",
    "src_address",
    "src_ipv4",
]

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPV6_HLEN = 40
IPV6_KEY_TAG = 1 << 160  # above every IPv6 (group << 16 | port), so IPv4 and IPv6 keys never meet
MAX_EXT_HEADERS = 8
EXT_WALKED = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options: (length + 1) * 8 bytes
EXT_FRAGMENT = 44
EXT_NOT_WALKED = frozenset({50, 51, 135, 139, 140, 253, 254})  # ESP, AH, mobility, HIP, shim6, experiments
IPPROTO_UDP = 17
IPPROTO_ESP = 50
UDP_HLEN = 8
ESP_HLEN = 8  # SPI and sequence number
ESP_KEY_TAG = 1 << 48  # above every IPv4 (group << 16 | port), below IPV6_KEY_TAG: ESP keys meet neither


class DropReason(IntEnum):
    """Why a frame was not relayed. The values index per-reason counter lists (see `DROP_KEYS`)."""

    OK = 0
    NOT_IPV4 = 1  # ethertype is neither IPv4 nor IPv6 (802.1Q-tagged frames included)
    TRUNCATED = 2  # shorter than Ethernet + IP headers, than the IP length, or than IP (+ extensions) + UDP/ESP
    BAD_IP_HEADER = 3  # version != 4, IHL < 5, or total length < IHL * 4; IPv6: version != 6
    FRAGMENT = 4  # MF set or fragment offset != 0; IPv6: a fragment header
    NOT_UDP = 5  # neither UDP nor (IPv4) ESP
    BAD_UDP_LENGTH = 6  # UDP length < 8, or beyond the IP total length
    NO_RULE = 7  # never returned by the parser: the worker found no rule for the key (or for the source)
    RATE_LIMITED = 8  # never returned by the parser: over the rule's rate limit (counted per rule too)
    EXT_HEADER = 9  # IPv6: an extension header that is not walked, or more than MAX_EXT_HEADERS
    ZERO_UDP_CHECKSUM = 10  # IPv6: UDP checksum 0, which IPv6 receivers must discard (RFC 8200 8.1)

    @property
    def key(self) -> str:
        """The stable stats key, e.g. ``"fragment"``."""
        return DROP_KEYS[self]


#: Stats keys indexed by drop reason value: ``DROP_KEYS[DropReason.FRAGMENT] == "fragment"``.
DROP_KEYS: tuple[str, ...] = tuple(reason.name.lower() for reason in DropReason)

#: ``(reason, key, payload_offset, payload_length)``; see `parse_frame`.
ParseResult = tuple[int, int, int, int]

# The common frame, no IP options: Ethernet, IPv4 and UDP headers in one unpack, needed fields only.
#   MACs 12x | ethertype H | version+IHL B | TOS x | total length H | ident 2x | flags+fragment offset H
#   | TTL x | protocol B | header checksum 2x | source 4x | destination I | UDP source port 2x
#   | UDP destination port H | UDP length H
_PLAIN = struct.Struct("!12xHBxH2xHxB2x4xI2xHH")
_PLAIN_LEN = ETH_HLEN + 20 + UDP_HLEN  # 42, where the payload starts; the unpack skips the UDP checksum
_ETH_IP = struct.Struct("!12xHBxH2xHxB2x4xI")  # the same fields up to the IPv4 destination
_ETH_IP_LEN = _ETH_IP.size  # 34
_UDP = struct.Struct("!2xHH")  # destination port, length (read at the UDP header)
_UDP6 = struct.Struct("!2xHHH")  # destination port, length, checksum
_ETHERTYPE = struct.Struct("!H")
_SRC = struct.Struct("!I")
_SRC_OFFSET = ETH_HLEN + 12
_IPV6 = struct.Struct("!12xHIHB")  # ethertype, version + class + flow label, payload length, next header
_IPV6_DST = struct.Struct("!QQ")
_IPV6_DST_OFFSET = ETH_HLEN + 24
_IPV6_SRC_OFFSET = ETH_HLEN + 8
_EXT = struct.Struct("!BB")  # next header, length
_EXT_HEADER = int(DropReason.EXT_HEADER)
_ZERO_UDP_CHECKSUM = int(DropReason.ZERO_UDP_CHECKSUM)

_unpack_plain = _PLAIN.unpack_from
_unpack_eth_ip = _ETH_IP.unpack_from
_unpack_udp = _UDP.unpack_from

# Preallocated results of the drops that carry no key, and the reasons as plain ints.
_NOT_IPV4: ParseResult = (int(DropReason.NOT_IPV4), 0, 0, 0)
_SHORT: ParseResult = (int(DropReason.TRUNCATED), 0, 0, 0)
_BAD_IP_HEADER: ParseResult = (int(DropReason.BAD_IP_HEADER), 0, 0, 0)
_TRUNCATED = int(DropReason.TRUNCATED)
_FRAGMENT = int(DropReason.FRAGMENT)
_NOT_UDP = int(DropReason.NOT_UDP)
_BAD_UDP_LENGTH = int(DropReason.BAD_UDP_LENGTH)


def parse_frame(buf: FrameBuffer, offset: int, caplen: int) -> ParseResult:
    """Classify one captured Ethernet frame and locate its UDP payload.

    `offset` is where the Ethernet header starts in `buf`, `caplen` how many bytes were captured from
    there (clamped to what `buf` holds). Returns ``(reason, key, payload_offset, payload_length)``:

    - `reason`: 0 (`DropReason.OK`) or another `DropReason` value, as a plain int;
    - `key`: ``(ipv4_destination << 16) | udp_destination_port`` when OK or BAD_UDP_LENGTH;
      ``ESP_KEY_TAG | (ipv4_destination << 16)`` for ESP (OK only);
      ``ipv4_destination << 16`` (port 0) for the drops found after the IPv4 header was read and checked
      (TRUNCATED by the total length, FRAGMENT, NOT_UDP), so they can be attributed to a group; 0 when the
      IPv4 header was missing or bad (NOT_IPV4, BAD_IP_HEADER, a frame shorter than 34 bytes);
    - `payload_offset`: absolute in `buf`; `payload_length` from the UDP length field, for ESP the IP
      payload (both 0 unless OK).

    Never raises, whatever the buffer contents, offset or caplen.
    """
    avail = len(buf) - offset
    if caplen > avail:
        caplen = avail
    if caplen >= _PLAIN_LEN and offset >= 0:
        # Fast path: a valid frame without IP options passes every check at once. Anything else (IP
        # options included) is classified by `_parse_general`, which gives the same answer for these.
        ethertype, ver_ihl, total, frag, proto, dst, port, udp_len = _unpack_plain(buf, offset)
        if (
            ver_ihl == 0x45
            and ethertype == ETH_P_IP
            and proto == IPPROTO_UDP
            and not frag & 0x3FFF
            and UDP_HLEN <= udp_len <= total - 20
            and ETH_HLEN + total <= caplen
        ):
            return (0, (dst << 16) | port, offset + _PLAIN_LEN, udp_len - UDP_HLEN)
    return _parse_general(buf, offset, caplen)


def _parse_general(buf: FrameBuffer, offset: int, caplen: int) -> ParseResult:
    """`parse_frame` for any frame, once `caplen` is clamped to the buffer: checks in order, first failure wins."""
    if caplen < _ETH_IP_LEN or offset < 0:
        if offset < 0 or caplen < ETH_HLEN:
            return _SHORT
        (ethertype,) = _ETHERTYPE.unpack_from(buf, offset + 12)
        return _SHORT if ethertype in (ETH_P_IP, ETH_P_IPV6) else _NOT_IPV4
    ethertype, ver_ihl, total, frag, proto, dst = _unpack_eth_ip(buf, offset)
    if ethertype != ETH_P_IP:
        return _parse_ipv6(buf, offset, caplen) if ethertype == ETH_P_IPV6 else _NOT_IPV4
    if ver_ihl < 0x45 or ver_ihl > 0x4F:  # exactly "version != 4 or IHL < 5"
        return _BAD_IP_HEADER
    ip_hlen = (ver_ihl & 0x0F) << 2
    if total < ip_hlen:
        return _BAD_IP_HEADER
    key = dst << 16
    if ETH_HLEN + total > caplen:
        return (_TRUNCATED, key, 0, 0)
    if frag & 0x3FFF:
        return (_FRAGMENT, key, 0, 0)
    ip_payload = total - ip_hlen
    if proto != IPPROTO_UDP:
        if proto != IPPROTO_ESP:
            return (_NOT_UDP, key, 0, 0)
        if ip_payload < ESP_HLEN:
            return (_TRUNCATED, key, 0, 0)
        return (0, ESP_KEY_TAG | key, offset + ETH_HLEN + ip_hlen, ip_payload)
    if ip_payload < UDP_HLEN:
        return (_TRUNCATED, key, 0, 0)
    udp = offset + ETH_HLEN + ip_hlen
    port, udp_len = _unpack_udp(buf, udp)
    if udp_len < UDP_HLEN or udp_len > ip_payload:
        return (_BAD_UDP_LENGTH, key | port, 0, 0)
    return (0, key | port, udp + UDP_HLEN, udp_len - UDP_HLEN)


def _parse_ipv6(buf: FrameBuffer, offset: int, caplen: int) -> ParseResult:
    """`_parse_general` for an IPv6 frame (caplen >= 34 already)."""
    if caplen < ETH_HLEN + IPV6_HLEN:
        return _SHORT
    _eth, vtcfl, payload_len, nxt = _IPV6.unpack_from(buf, offset)
    if vtcfl >> 28 != 6:
        return _BAD_IP_HEADER
    hi, lo = _IPV6_DST.unpack_from(buf, offset + _IPV6_DST_OFFSET)
    key = IPV6_KEY_TAG | (hi << 80) | (lo << 16)
    end = offset + ETH_HLEN + IPV6_HLEN + payload_len
    if end > offset + caplen:
        return (_TRUNCATED, key, 0, 0)
    pos = offset + ETH_HLEN + IPV6_HLEN
    for _ in range(MAX_EXT_HEADERS + 1):
        if nxt == IPPROTO_UDP:
            break
        if nxt in EXT_WALKED:
            if pos + 8 > end:
                return (_TRUNCATED, key, 0, 0)
            nxt, length = _EXT.unpack_from(buf, pos)
            pos += (length + 1) << 3
            continue
        if nxt == EXT_FRAGMENT:
            return (_FRAGMENT, key, 0, 0)
        if nxt in EXT_NOT_WALKED:
            return (_EXT_HEADER, key, 0, 0)
        return (_NOT_UDP, key, 0, 0)
    else:
        return (_EXT_HEADER, key, 0, 0)
    if pos + UDP_HLEN > end:
        return (_TRUNCATED, key, 0, 0)
    port, udp_len, checksum = _UDP6.unpack_from(buf, pos)
    if udp_len < UDP_HLEN or udp_len > end - pos:
        return (_BAD_UDP_LENGTH, key | port, 0, 0)
    if not checksum:
        return (_ZERO_UDP_CHECKSUM, key | port, 0, 0)
    return (0, key | port, pos + UDP_HLEN, udp_len - UDP_HLEN)


def src_address(buf: FrameBuffer, offset: int) -> int:
    """The IPv4 or IPv6 source address of the frame at `offset`, as an int (for frames `parse_frame`
    accepted, whose ethertype tells the family)."""
    if _ETHERTYPE.unpack_from(buf, offset + 12)[0] == ETH_P_IPV6:
        hi, lo = _IPV6_DST.unpack_from(buf, offset + _IPV6_SRC_OFFSET)
        value: int = (hi << 64) | lo
        return value
    return src_ipv4(buf, offset)


def src_ipv4(buf: FrameBuffer, offset: int) -> int:
    """The IPv4 source address of the frame at `offset`, as an int (for frames `parse_frame` accepted)."""
    value: int = _SRC.unpack_from(buf, offset + _SRC_OFFSET)[0]
    return value
