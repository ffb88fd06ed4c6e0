"""IGMPv1/v2/v3 (RFC 1112, 2236, 3376) and MLDv1/v2 (RFC 2710, 3810) messages: parse and build.

Parsing takes a whole IP packet (what an `AF_PACKET` `SOCK_DGRAM` socket reads: no link header) and returns an
`Inbound` message or a `Drop` reason, never an exception. Checksums are verified: IGMP's over the message, MLD's
over the IPv6 pseudo-header too. Queries and reports of every version come out as one typed value each, so the
state machine in `mcr.membership.querier` sees versions only as a number:

- IGMPv1 and v2 reports, MLDv1 reports: a `Report` with one MODE_IS_EXCLUDE record and no sources (RFC 3376 7.3.2,
  RFC 3810 8.3.2); IGMPv2 leaves and MLDv1 dones: a `Leave`.
- A query's version comes from its length (RFC 3376 7.1, RFC 3810 8.1): IGMP 8 bytes with code 0 is v1, 8 bytes
  with a code is v2, 12 or more is v3 (9 to 11 are ignored); MLD 24 bytes is v1, 28 or more v2.

Building gives the whole IP packet, with a Router Alert option, TTL/hop limit 1 and (IPv4) TOS 0xc0, ready to
send on a packet socket.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum, IntEnum
from ipaddress import IPv4Address, IPv6Address

from mcr.packet.build import ipv4_checksum

__all__ = [
    "ALL_NODES",
    "ALL_ROUTERS",
    "MLDV2_REPORTS",
    "Drop",
    "Family",
    "Inbound",
    "Leave",
    "Message",
    "Query",
    "Record",
    "RecordType",
    "Report",
    "build_message",
    "build_packet",
    "decode_code8",
    "decode_code16",
    "encode_code8",
    "encode_code16",
    "parse_igmp",
    "parse_mld",
    "parse_packet",
]

IPAddress = IPv4Address | IPv6Address


class Family(Enum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"

    @property
    def protocol(self) -> str:
        return "igmp" if self is Family.IPV4 else "mld"


ALL_NODES: dict[Family, IPAddress] = {Family.IPV4: IPv4Address("224.0.0.1"), Family.IPV6: IPv6Address("ff02::1")}
ALL_ROUTERS: dict[Family, IPAddress] = {Family.IPV4: IPv4Address("224.0.0.2"), Family.IPV6: IPv6Address("ff02::2")}
MLDV2_REPORTS: dict[Family, IPAddress] = {Family.IPV4: IPv4Address("224.0.0.22"), Family.IPV6: IPv6Address("ff02::16")}
UNSPECIFIED: dict[Family, IPAddress] = {Family.IPV4: IPv4Address(0), Family.IPV6: IPv6Address(0)}


class Drop(Enum):
    """Why a received packet was not used. The values are the counter names."""

    TRUNCATED = "truncated"  # shorter than its headers or than a length field says
    BAD_IP_HEADER = "bad_ip_header"  # version, header length, total length, or an IPv4 header checksum
    FRAGMENT = "fragment"
    NOT_MEMBERSHIP = "not_membership"  # another protocol, or an ICMPv6 type that is not MLD (not an error)
    BAD_CHECKSUM = "bad_checksum"
    BAD_LENGTH = "bad_length"  # a length no version has (IGMP 9-11 bytes, MLD 25-27)
    UNKNOWN_TYPE = "unknown_type"  # an IGMP type this module does not know (DVMRP, mtrace, ...)
    BAD_TTL = "bad_ttl"  # TTL / hop limit other than 1
    NO_ROUTER_ALERT = "no_router_alert"  # IGMPv3 report or any MLD message without one (RFC 3376 9.1, 3810 5)
    BAD_SOURCE = "bad_source"  # MLD from an address that is neither link-local nor (for reports) unspecified
    BAD_GROUP = "bad_group"  # a group that is not multicast, or a source that is


class RecordType(IntEnum):
    """Group record types (RFC 3376 4.2.12, RFC 3810 5.2.12)."""

    MODE_IS_INCLUDE = 1
    MODE_IS_EXCLUDE = 2
    CHANGE_TO_INCLUDE = 3
    CHANGE_TO_EXCLUDE = 4
    ALLOW_NEW_SOURCES = 5
    BLOCK_OLD_SOURCES = 6


@dataclass(frozen=True, slots=True)
class Query:
    """A membership query. `group` is unspecified for a general query. `max_response` is in seconds."""

    family: Family
    version: int
    group: IPAddress
    max_response: float
    sources: tuple[IPAddress, ...] = ()
    suppress: bool = False  # the S flag (v3/MLDv2): routers do not lower their timers
    robustness: int = 0  # QRV (v3/MLDv2), 0 when absent or above 7
    query_interval: float = 0.0  # QQIC decoded, seconds (v3/MLDv2)

    @property
    def general(self) -> bool:
        return int(self.group) == 0


@dataclass(frozen=True, slots=True)
class Record:
    type: RecordType
    group: IPAddress
    sources: tuple[IPAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class Report:
    """A membership report; older versions' reports are one MODE_IS_EXCLUDE record with no sources."""

    family: Family
    version: int
    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class Leave:
    """An IGMPv2 leave or an MLDv1 done."""

    family: Family
    group: IPAddress


Message = Query | Report | Leave


@dataclass(frozen=True, slots=True)
class Inbound:
    """A parsed message with what the IP header said about it."""

    source: IPAddress
    destination: IPAddress
    message: Message
    router_alert: bool


# IGMP types
IGMP_QUERY = 0x11
IGMP_V1_REPORT = 0x12
IGMP_V2_REPORT = 0x16
IGMP_V2_LEAVE = 0x17
IGMP_V3_REPORT = 0x22
IGMP_KNOWN_OTHER = frozenset({0x13, 0x1E, 0x1F})  # DVMRP, mtrace response and request: not ours, not bad
# MLD (ICMPv6) types
MLD_QUERY = 130
MLD_V1_REPORT = 131
MLD_V1_DONE = 132
MLD_V2_REPORT = 143

IPPROTO_HOPOPTS = 0
IPPROTO_IGMP = 2
IPPROTO_ICMPV6 = 58
IPV4_OPT_ROUTER_ALERT = 0x94
IPV6_OPT_ROUTER_ALERT = 5

_IGMP_HEADER = struct.Struct("!BBH4s")
_IGMP_V3_QUERY = struct.Struct("!BBH4sBBH")
_MLD_HEADER = struct.Struct("!BBHHH16s")
_MLD_V2_QUERY = struct.Struct("!BBHHH16sBBH")
_REPORT_HEADER = struct.Struct("!BBHHH")  # type, reserved, checksum, reserved, record count (both families)


def decode_code8(code: int) -> int:
    """RFC 3376 4.1.1/4.1.7: an 8-bit Max Resp Code or QQIC; below 128 the value, above a float."""
    if code < 128:
        return code
    return ((code & 0x0F) | 0x10) << (((code >> 4) & 0x07) + 3)


def encode_code8(value: int) -> int:
    """The 8-bit code for `value` (rounded down to what the code can say; 31744 at most)."""
    value = max(0, min(value, 31744))
    if value < 128:
        return value
    exp = value.bit_length() - 5 - 3
    return 0x80 | (exp << 4) | ((value >> (exp + 3)) & 0x0F)


def decode_code16(code: int) -> int:
    """RFC 3810 5.1.3: the 16-bit MLDv2 Maximum Response Code, in milliseconds."""
    if code < 32768:
        return code
    return ((code & 0x0FFF) | 0x1000) << (((code >> 12) & 0x07) + 3)


def encode_code16(value: int) -> int:
    """The 16-bit code for `value` milliseconds (rounded down; 8,387,584 at most)."""
    value = max(0, min(value, 8387584))
    if value < 32768:
        return value
    exp = value.bit_length() - 13 - 3
    return 0x8000 | (exp << 12) | ((value >> (exp + 3)) & 0x0FFF)


def _mld_checksum(src: IPv6Address, dst: IPv6Address, message: bytes) -> int:
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6)
    return ipv4_checksum(pseudo + message)


# ---------------------------------------------------------------------------------------------------- parsing


def parse_packet(packet: bytes) -> Inbound | Drop:
    """An IPv4 or IPv6 packet (by its version nibble) carrying IGMP or MLD, parsed; any other input is a `Drop`."""
    if not packet:
        return Drop.TRUNCATED
    version = packet[0] >> 4
    if version == 4:
        return _parse_ipv4(packet)
    if version == 6:
        return _parse_ipv6(packet)
    return Drop.BAD_IP_HEADER


def _parse_ipv4(packet: bytes) -> Inbound | Drop:
    if len(packet) < 20:
        return Drop.TRUNCATED
    ihl = (packet[0] & 0x0F) * 4
    total = int.from_bytes(packet[2:4], "big")
    if ihl < 20 or total < ihl:
        return Drop.BAD_IP_HEADER
    if len(packet) < total:
        return Drop.TRUNCATED
    if ipv4_checksum(packet[:ihl]) != 0:
        return Drop.BAD_IP_HEADER
    if int.from_bytes(packet[6:8], "big") & 0x3FFF:
        return Drop.FRAGMENT
    if packet[9] != IPPROTO_IGMP:
        return Drop.NOT_MEMBERSHIP
    if packet[8] != 1:
        return Drop.BAD_TTL
    router_alert = _ipv4_router_alert(packet[20:ihl])
    src, dst = IPv4Address(packet[12:16]), IPv4Address(packet[16:20])
    message = parse_igmp(packet[ihl:total])
    if isinstance(message, Drop):
        return message
    if isinstance(message, Report) and message.version == 3 and not router_alert:
        return Drop.NO_ROUTER_ALERT
    return Inbound(src, dst, message, router_alert)


def _ipv4_router_alert(options: bytes) -> bool:
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:  # end of options
            return False
        if kind == 1:  # no-op
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            return False
        if kind == IPV4_OPT_ROUTER_ALERT:
            return True
        i += options[i + 1]
    return False


def parse_igmp(data: bytes) -> Message | Drop:
    """An IGMP message (the IP payload)."""
    if len(data) < 8:
        return Drop.TRUNCATED
    if ipv4_checksum(data) != 0:
        return Drop.BAD_CHECKSUM
    kind, code, _csum, raw_group = _IGMP_HEADER.unpack_from(data)
    group = IPv4Address(raw_group)
    if kind == IGMP_QUERY:
        return _igmp_query(data, code, group)
    if kind in (IGMP_V1_REPORT, IGMP_V2_REPORT, IGMP_V2_LEAVE):
        if not group.is_multicast:
            return Drop.BAD_GROUP
        if kind == IGMP_V2_LEAVE:
            return Leave(Family.IPV4, group)
        version = 1 if kind == IGMP_V1_REPORT else 2
        return Report(Family.IPV4, version, (Record(RecordType.MODE_IS_EXCLUDE, group),))
    if kind == IGMP_V3_REPORT:
        return _report(Family.IPV4, data)
    if kind in IGMP_KNOWN_OTHER:
        return Drop.NOT_MEMBERSHIP
    return Drop.UNKNOWN_TYPE


def _igmp_query(data: bytes, code: int, group: IPv4Address) -> Query | Drop:
    if int(group) and not group.is_multicast:
        return Drop.BAD_GROUP
    if len(data) == 8:
        if code == 0:
            return Query(Family.IPV4, 1, group, 10.0)
        return Query(Family.IPV4, 2, group, code / 10)
    if len(data) < 12:
        return Drop.BAD_LENGTH
    *_, flags, qqic, count = _IGMP_V3_QUERY.unpack_from(data)
    if len(data) < 12 + 4 * count:
        return Drop.TRUNCATED
    sources = tuple(IPv4Address(data[12 + 4 * i : 16 + 4 * i]) for i in range(count))
    if sources and not int(group):
        return Drop.BAD_GROUP  # a general query has no sources (RFC 3376 4.1.8)
    return Query(
        Family.IPV4,
        3,
        group,
        decode_code8(code) / 10,
        sources,
        suppress=bool(flags & 0x08),
        robustness=flags & 0x07,
        query_interval=float(decode_code8(qqic)),
    )


def _report(family: Family, data: bytes) -> Report | Drop:
    """An IGMPv3 or MLDv2 report: records with sources and auxiliary data, each bounded by the message."""
    size = 4 if family is Family.IPV4 else 16
    cls = IPv4Address if family is Family.IPV4 else IPv6Address
    if len(data) < _REPORT_HEADER.size:
        return Drop.TRUNCATED
    count = _REPORT_HEADER.unpack_from(data)[4]
    records: list[Record] = []
    offset = _REPORT_HEADER.size
    for _ in range(count):
        if len(data) < offset + 4 + size:
            return Drop.TRUNCATED
        kind, aux, nsrc = struct.unpack_from("!BBH", data, offset)
        group = cls(data[offset + 4 : offset + 4 + size])
        start = offset + 4 + size
        offset = start + nsrc * size + aux * 4
        if len(data) < offset:
            return Drop.TRUNCATED
        if kind not in RecordType._value2member_map_:
            continue  # RFC 3376 4.2.12: unknown record types are ignored
        if not group.is_multicast:
            return Drop.BAD_GROUP
        sources = tuple(cls(data[start + i * size : start + (i + 1) * size]) for i in range(nsrc))
        if any(s.is_multicast for s in sources):
            return Drop.BAD_GROUP
        records.append(Record(RecordType(kind), group, sources))
    version = 3 if family is Family.IPV4 else 2
    return Report(family, version, tuple(records))


def _parse_ipv6(packet: bytes) -> Inbound | Drop:
    if len(packet) < 40:
        return Drop.TRUNCATED
    length = int.from_bytes(packet[4:6], "big")
    if len(packet) < 40 + length:
        return Drop.TRUNCATED
    next_header, hop_limit = packet[6], packet[7]
    src, dst = IPv6Address(packet[8:24]), IPv6Address(packet[24:40])
    end = 40 + length
    offset = 40
    router_alert = False
    if next_header == IPPROTO_HOPOPTS:
        if end < offset + 8:
            return Drop.TRUNCATED
        size = (packet[offset + 1] + 1) * 8
        if end < offset + size:
            return Drop.TRUNCATED
        router_alert = _ipv6_router_alert(packet[offset + 2 : offset + size])
        next_header = packet[offset]
        offset += size
    if next_header == 44:
        return Drop.FRAGMENT
    if next_header != IPPROTO_ICMPV6:
        return Drop.NOT_MEMBERSHIP
    data = packet[offset:end]
    if len(data) < 4:
        return Drop.TRUNCATED
    if data[0] not in (MLD_QUERY, MLD_V1_REPORT, MLD_V1_DONE, MLD_V2_REPORT):
        return Drop.NOT_MEMBERSHIP
    if _mld_checksum(src, dst, data) != 0:
        return Drop.BAD_CHECKSUM
    if hop_limit != 1:
        return Drop.BAD_TTL
    if not router_alert:
        return Drop.NO_ROUTER_ALERT
    unspecified = int(src) == 0
    if not (src.is_link_local or (unspecified and data[0] in (MLD_V1_REPORT, MLD_V2_REPORT))):
        return Drop.BAD_SOURCE  # RFC 3810 5.1.14, 5.2.13
    message = parse_mld(data)
    if isinstance(message, Drop):
        return message
    return Inbound(src, dst, message, router_alert)


def _ipv6_router_alert(options: bytes) -> bool:
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:  # Pad1
            i += 1
            continue
        if i + 1 >= len(options):
            return False
        size = options[i + 1]
        if kind == IPV6_OPT_ROUTER_ALERT and size == 2 and i + 4 <= len(options):
            return options[i + 2 : i + 4] == b"\0\0"  # value 0: MLD (RFC 2711)
        i += 2 + size
    return False


def parse_mld(data: bytes) -> Message | Drop:
    """An MLD message (the ICMPv6 payload, checksum already checked by the caller against its pseudo-header)."""
    kind = data[0]
    if kind == MLD_V2_REPORT:
        return _report(Family.IPV6, data)
    if len(data) < 24:
        return Drop.TRUNCATED
    _k, _c, _s, delay, _r, raw_group = _MLD_HEADER.unpack_from(data)
    group = IPv6Address(raw_group)
    if kind == MLD_QUERY:
        return _mld_query(data, delay, group)
    if not group.is_multicast:
        return Drop.BAD_GROUP
    if kind == MLD_V1_DONE:
        return Leave(Family.IPV6, group)
    return Report(Family.IPV6, 1, (Record(RecordType.MODE_IS_EXCLUDE, group),))


def _mld_query(data: bytes, delay: int, group: IPv6Address) -> Query | Drop:
    if int(group) and not group.is_multicast:
        return Drop.BAD_GROUP
    if len(data) == 24:
        return Query(Family.IPV6, 1, group, delay / 1000)
    if len(data) < 28:
        return Drop.BAD_LENGTH
    *_, flags, qqic, count = _MLD_V2_QUERY.unpack_from(data)
    if len(data) < 28 + 16 * count:
        return Drop.TRUNCATED
    sources = tuple(IPv6Address(data[28 + 16 * i : 44 + 16 * i]) for i in range(count))
    if sources and not int(group):
        return Drop.BAD_GROUP
    return Query(
        Family.IPV6,
        2,
        group,
        decode_code16(delay) / 1000,
        sources,
        suppress=bool(flags & 0x08),
        robustness=flags & 0x07,
        query_interval=float(decode_code8(qqic)),
    )


# --------------------------------------------------------------------------------------------------- building


def build_message(message: Message, src: IPAddress, dst: IPAddress) -> bytes:
    """The IGMP or ICMPv6 bytes of `message`, checksum filled in (MLD's needs the addresses)."""
    if message.family is Family.IPV4:
        data = _build_igmp(message)
        return data[:2] + ipv4_checksum(data).to_bytes(2, "big") + data[4:]
    assert isinstance(src, IPv6Address) and isinstance(dst, IPv6Address)
    data = _build_mld(message)
    return data[:2] + _mld_checksum(src, dst, data).to_bytes(2, "big") + data[4:]


def _records(records: tuple[Record, ...]) -> bytes:
    return b"".join(
        struct.pack("!BBH", r.type, 0, len(r.sources)) + r.group.packed + b"".join(s.packed for s in r.sources)
        for r in records
    )


def _flags(query: Query) -> int:
    return (0x08 if query.suppress else 0) | (query.robustness if 0 < query.robustness <= 7 else 0)


def _build_igmp(message: Message) -> bytes:
    match message:
        case Query(version=1):
            return _IGMP_HEADER.pack(IGMP_QUERY, 0, 0, message.group.packed)
        case Query(version=2):
            code = max(1, min(255, round(message.max_response * 10)))
            return _IGMP_HEADER.pack(IGMP_QUERY, code, 0, message.group.packed)
        case Query():
            code = encode_code8(round(message.max_response * 10))
            qqic = encode_code8(round(message.query_interval))
            head = _IGMP_V3_QUERY.pack(
                IGMP_QUERY, code, 0, message.group.packed, _flags(message), qqic, len(message.sources)
            )
            return head + b"".join(s.packed for s in message.sources)
        case Leave():
            return _IGMP_HEADER.pack(IGMP_V2_LEAVE, 0, 0, message.group.packed)
        case Report(version=3):
            return _REPORT_HEADER.pack(IGMP_V3_REPORT, 0, 0, 0, len(message.records)) + _records(message.records)
        case Report():
            kind = IGMP_V1_REPORT if message.version == 1 else IGMP_V2_REPORT
            return _IGMP_HEADER.pack(kind, 0, 0, message.records[0].group.packed)
    raise AssertionError(message)


def _build_mld(message: Message) -> bytes:
    match message:
        case Query(version=1):
            delay = max(0, min(0xFFFF, round(message.max_response * 1000)))
            return _MLD_HEADER.pack(MLD_QUERY, 0, 0, delay, 0, message.group.packed)
        case Query():
            code = encode_code16(round(message.max_response * 1000))
            qqic = encode_code8(round(message.query_interval))
            head = _MLD_V2_QUERY.pack(
                MLD_QUERY, 0, 0, code, 0, message.group.packed, _flags(message), qqic, len(message.sources)
            )
            return head + b"".join(s.packed for s in message.sources)
        case Leave():
            return _MLD_HEADER.pack(MLD_V1_DONE, 0, 0, 0, 0, message.group.packed)
        case Report(version=2):
            return _REPORT_HEADER.pack(MLD_V2_REPORT, 0, 0, 0, len(message.records)) + _records(message.records)
        case Report():
            return _MLD_HEADER.pack(MLD_V1_REPORT, 0, 0, 0, 0, message.records[0].group.packed)
    raise AssertionError(message)


def build_packet(message: Message, src: IPAddress, dst: IPAddress) -> bytes:
    """The whole IP packet: IPv4 with TOS 0xc0, TTL 1 and a Router Alert option, or IPv6 with hop limit 1 and a
    hop-by-hop header carrying Router Alert (MLD)."""
    body = build_message(message, src, dst)
    if message.family is Family.IPV4:
        options = bytes([IPV4_OPT_ROUTER_ALERT, 4, 0, 0])
        total = 24 + len(body)
        header = struct.pack("!BBHHHBBH4s4s", 0x46, 0xC0, total, 0, 0, 1, IPPROTO_IGMP, 0, src.packed, dst.packed)
        header += options
        header = header[:10] + ipv4_checksum(header).to_bytes(2, "big") + header[12:]
        return header + body
    hop_by_hop = bytes([IPPROTO_ICMPV6, 0, IPV6_OPT_ROUTER_ALERT, 2, 0, 0, 1, 0])  # RA, then PadN of 2
    payload = hop_by_hop + body
    header = struct.pack("!IHBB", 6 << 28, len(payload), IPPROTO_HOPOPTS, 1) + src.packed + dst.packed
    return header + payload
