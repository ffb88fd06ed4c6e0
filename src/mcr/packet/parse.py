"""The frame parser of the hot path: Ethernet / IPv4 / UDP, no allocation but the result tuple.

A bad frame is not an exception: `parse_frame` returns a drop reason and the caller counts it.
"""

from __future__ import annotations

import struct
from enum import IntEnum


class DropReason(IntEnum):
    OK = 0
    NOT_IPV4 = 1
    TRUNCATED = 2
    BAD_IP_HEADER = 3
    FRAGMENT = 4
    NOT_UDP = 5
    BAD_UDP_LENGTH = 6
    NO_RULE = 7

    @property
    def key(self) -> str:
        return self.name.lower()


DROP_KEYS: tuple[str, ...] = tuple(r.key for r in DropReason)

ETH_HLEN = 14
ETHERTYPE_IPV4 = 0x0800
IPPROTO_UDP = 17

_ETH_IP = struct.Struct("!12xHBxHxxHxBxxII")  # ethertype, ver/ihl, total length, frag, proto, src, dst
_U16 = struct.Struct("!H").unpack_from
_UDP = struct.Struct("!xxHH").unpack_from  # destination port, length

_OK = int(DropReason.OK)
_NOT_IPV4 = int(DropReason.NOT_IPV4)
_TRUNCATED = int(DropReason.TRUNCATED)
_BAD_IP = int(DropReason.BAD_IP_HEADER)
_FRAGMENT = int(DropReason.FRAGMENT)
_NOT_UDP = int(DropReason.NOT_UDP)
_BAD_UDP = int(DropReason.BAD_UDP_LENGTH)
_MIN_FRAME = ETH_HLEN + 20


def parse_frame(buf: bytes | bytearray | memoryview, offset: int, caplen: int) -> tuple[int, int, int, int]:
    """Parse one Ethernet frame at `offset` of `buf` (`caplen` bytes captured).

    Returns `(reason, key, payload_offset, payload_length)`: reason 0 for a relayable UDP datagram,
    else a DropReason value; key is `(IPv4 destination << 16) | UDP destination port` (port 0 when the
    UDP header was not read, 0 altogether when the IP header was not readable). IP options are
    skipped; bounds come from the IP total length, so Ethernet padding is ignored. Checksums are not
    verified: the relay re-sends the payload and the kernel computes new ones.
    """
    if caplen < _MIN_FRAME:
        if caplen >= ETH_HLEN and _U16(buf, offset + 12)[0] != ETHERTYPE_IPV4:
            return _NOT_IPV4, 0, 0, 0
        return _TRUNCATED, 0, 0, 0
    ethertype, ver_ihl, total, frag, proto, _src, dst = _ETH_IP.unpack_from(buf, offset)
    if ethertype != ETHERTYPE_IPV4:
        return _NOT_IPV4, 0, 0, 0
    ihl = (ver_ihl & 0x0F) << 2
    if ver_ihl >> 4 != 4 or ihl < 20 or total < ihl:
        return _BAD_IP, 0, 0, 0
    if ETH_HLEN + total > caplen:
        return _TRUNCATED, dst << 16, 0, 0
    if frag & 0x3FFF:
        return _FRAGMENT, dst << 16, 0, 0
    if proto != IPPROTO_UDP:
        return _NOT_UDP, dst << 16, 0, 0
    if ihl + 8 > total:
        return _TRUNCATED, dst << 16, 0, 0
    udp = offset + ETH_HLEN + ihl
    port, length = _UDP(buf, udp)
    key = (dst << 16) | port
    if length < 8 or ihl + length > total:
        return _BAD_UDP, key, 0, 0
    return _OK, key, udp + 8, length - 8


def src_ipv4(buf: bytes | bytearray | memoryview, offset: int) -> int:
    """The IPv4 source address of the frame at `offset` (caller has checked it parses)."""
    return int.from_bytes(buf[offset + 26 : offset + 30], "big")
