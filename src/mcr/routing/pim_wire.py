"""PIM-SM messages (RFC 7761 §4.9) <-> typed values. Pure: bytes in, a message or a drop reason out.

The input of `parse_pim` is the PIM message itself (the IP payload); the shell strips the IP header. For
IPv4 the checksum covers the message; for IPv6 it also covers a pseudo-header, whose one's-complement sum
the caller passes in (`pseudo_header_sum`), or `parse_pim6`/`build_pim6` compute it from the addresses. A
Register's checksum covers only its first 8 bytes; one computed over the whole message is accepted too, as
the RFC asks for interoperability. Over IPv6 the pseudo-header's length is then that of what the checksum
covers: 8 for a Register (as Linux's ip6mr and FRR's pim6d do), the message's length otherwise.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum, IntEnum
from ipaddress import IPv4Address, IPv6Address
from typing import assert_never

IPAddress = IPv4Address | IPv6Address

PIM_VERSION = 2
IPPROTO_PIM = 103
ALL_PIM_ROUTERS_V4 = IPv4Address("224.0.0.13")
ALL_PIM_ROUTERS_V6 = IPv6Address("ff02::d")

DEFAULT_HELLO_PERIOD = 30
DEFAULT_HOLDTIME = 105  # 3.5 x the Hello period (RFC 7761 §4.11)
DEFAULT_JP_HOLDTIME = 210  # 3.5 x t_periodic (60 s)


class MessageType(IntEnum):
    HELLO = 0
    REGISTER = 1
    REGISTER_STOP = 2
    JOIN_PRUNE = 3
    BOOTSTRAP = 4
    ASSERT = 5
    GRAFT = 6
    GRAFT_ACK = 7
    CANDIDATE_RP_ADV = 8


class HelloOption(IntEnum):
    HOLDTIME = 1
    LAN_PRUNE_DELAY = 2
    DR_PRIORITY = 19
    GENERATION_ID = 20
    ADDRESS_LIST = 24


class AddressFamily(IntEnum):
    IPV4 = 1
    IPV6 = 2


class PimDrop(Enum):
    """Why a PIM message was not accepted; counted by the shell, never raised."""

    TRUNCATED = "truncated"
    BAD_VERSION = "bad_version"
    BAD_CHECKSUM = "bad_checksum"
    UNSUPPORTED_TYPE = "unsupported_type"
    BAD_ADDRESS = "bad_address"
    BAD_OPTION = "bad_option"
    BAD_LENGTH = "bad_length"


# ------------------------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class EncodedGroup:
    address: IPAddress
    mask_len: int
    bidir: bool = False
    admin_scope: bool = False


@dataclass(frozen=True, slots=True)
class EncodedSource:
    """A source in a Join/Prune: S (sparse, always set in PIM-SM), W (wildcard: the RP) and R (RPT) bits."""

    address: IPAddress
    mask_len: int
    sparse: bool = True
    wildcard: bool = False
    rpt: bool = False


@dataclass(frozen=True, slots=True)
class LanPruneDelay:
    tracking_disabled: bool
    propagation_delay_ms: int
    override_interval_ms: int


@dataclass(frozen=True, slots=True)
class Hello:
    holdtime: int | None = DEFAULT_HOLDTIME
    dr_priority: int | None = None
    generation_id: int | None = None
    lan_prune_delay: LanPruneDelay | None = None
    secondary_addresses: tuple[IPAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class JoinPruneGroup:
    group: EncodedGroup
    joins: tuple[EncodedSource, ...] = ()
    prunes: tuple[EncodedSource, ...] = ()


@dataclass(frozen=True, slots=True)
class JoinPrune:
    upstream_neighbor: IPAddress
    holdtime: int
    groups: tuple[JoinPruneGroup, ...]


@dataclass(frozen=True, slots=True)
class Register:
    border: bool
    null_register: bool
    data: bytes  # the encapsulated multicast packet (its IP header first)


@dataclass(frozen=True, slots=True)
class RegisterStop:
    group: EncodedGroup
    source: IPAddress


@dataclass(frozen=True, slots=True)
class Assert:
    group: EncodedGroup
    source: IPAddress
    rpt: bool
    metric_preference: int
    metric: int


PimMessage = Hello | JoinPrune | Register | RegisterStop | Assert


# --------------------------------------------------------------------------------------------- checksum


def ones_complement_sum(data: bytes | memoryview, start: int = 0) -> int:
    """The 16-bit one's-complement sum of `data` (odd length padded with a zero byte), folded."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    total: int = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo_header_sum(source: IPv6Address, destination: IPv6Address, length: int) -> int:
    """The sum of the IPv6 pseudo-header (RFC 8200 §8.1) that PIM over IPv6 checksums include."""
    return ones_complement_sum(source.packed + destination.packed + struct.pack("!IxxxB", length, IPPROTO_PIM))


def _checksum_ok(data: bytes, covered: int, pseudo: int) -> bool:
    return ones_complement_sum(data[:covered], pseudo) == 0xFFFF


REGISTER_CHECKSUMMED = 8  # a Register's checksum covers its PIM header and flags only


def _checksum6_ok(data: bytes, source: IPv6Address, destination: IPv6Address) -> bool:
    if len(data) >= REGISTER_CHECKSUMMED and data[0] & 0x0F == MessageType.REGISTER:
        short = pseudo_header_sum(source, destination, REGISTER_CHECKSUMMED)
        if _checksum_ok(data, REGISTER_CHECKSUMMED, short):
            return True
    return _checksum_ok(data, len(data), pseudo_header_sum(source, destination, len(data)))


# ---------------------------------------------------------------------------------------------- parsing


class _Short(Exception):
    """Internal: the message ended inside a field."""


class _Bad(Exception):
    def __init__(self, reason: PimDrop) -> None:
        self.reason = reason


def _take(data: bytes, off: int, n: int) -> bytes:
    if off + n > len(data):
        raise _Short
    return data[off : off + n]


def _address(family: int, raw_after: bytes, off: int) -> tuple[IPAddress, int]:
    if family == AddressFamily.IPV4:
        return IPv4Address(_take(raw_after, off, 4)), off + 4
    if family == AddressFamily.IPV6:
        return IPv6Address(_take(raw_after, off, 16)), off + 16
    raise _Bad(PimDrop.BAD_ADDRESS)


def _family_and_encoding(data: bytes, off: int) -> int:
    family, encoding = _take(data, off, 2)
    if encoding != 0:
        raise _Bad(PimDrop.BAD_ADDRESS)
    return family


def _max_mask(address: IPAddress) -> int:
    return 32 if address.version == 4 else 128


def parse_encoded_unicast(data: bytes, off: int) -> tuple[IPAddress, int]:
    family = _family_and_encoding(data, off)
    return _address(family, data, off + 2)


def parse_encoded_group(data: bytes, off: int) -> tuple[EncodedGroup, int]:
    family = _family_and_encoding(data, off)
    flags, mask_len = _take(data, off + 2, 2)
    address, end = _address(family, data, off + 4)
    if mask_len > _max_mask(address):
        raise _Bad(PimDrop.BAD_ADDRESS)
    return EncodedGroup(address, mask_len, bool(flags & 0x80), bool(flags & 0x01)), end


def parse_encoded_source(data: bytes, off: int) -> tuple[EncodedSource, int]:
    family = _family_and_encoding(data, off)
    flags, mask_len = _take(data, off + 2, 2)
    address, end = _address(family, data, off + 4)
    if mask_len > _max_mask(address):
        raise _Bad(PimDrop.BAD_ADDRESS)
    return EncodedSource(address, mask_len, bool(flags & 0x04), bool(flags & 0x02), bool(flags & 0x01)), end


def _parse_hello(data: bytes) -> Hello:
    off = 4
    holdtime: int | None = None
    priority: int | None = None
    genid: int | None = None
    delay: LanPruneDelay | None = None
    secondary: list[IPAddress] = []
    while off < len(data):
        kind, length = struct.unpack("!HH", _take(data, off, 4))
        value = _take(data, off + 4, length)
        off += 4 + length
        if kind == HelloOption.HOLDTIME:
            if length != 2:
                raise _Bad(PimDrop.BAD_OPTION)
            (holdtime,) = struct.unpack("!H", value)
        elif kind == HelloOption.DR_PRIORITY:
            if length != 4:
                raise _Bad(PimDrop.BAD_OPTION)
            (priority,) = struct.unpack("!I", value)
        elif kind == HelloOption.GENERATION_ID:
            if length != 4:
                raise _Bad(PimDrop.BAD_OPTION)
            (genid,) = struct.unpack("!I", value)
        elif kind == HelloOption.LAN_PRUNE_DELAY:
            if length != 4:
                raise _Bad(PimDrop.BAD_OPTION)
            first, override = struct.unpack("!HH", value)
            delay = LanPruneDelay(bool(first & 0x8000), first & 0x7FFF, override)
        elif kind == HelloOption.ADDRESS_LIST:
            at = 0
            try:
                while at < length:
                    address, at = parse_encoded_unicast(value, at)
                    secondary.append(address)
            except _Short:
                raise _Bad(PimDrop.BAD_OPTION) from None
        # any other option is skipped (RFC 7761 §4.9.2: unknown options are ignored)
    return Hello(holdtime, priority, genid, delay, tuple(secondary))


def _parse_join_prune(data: bytes) -> JoinPrune:
    upstream, off = parse_encoded_unicast(data, 4)
    _reserved, num_groups, holdtime = struct.unpack("!BBH", _take(data, off, 4))
    off += 4
    groups: list[JoinPruneGroup] = []
    for _ in range(num_groups):
        group, off = parse_encoded_group(data, off)
        n_join, n_prune = struct.unpack("!HH", _take(data, off, 4))
        off += 4
        joins: list[EncodedSource] = []
        for _ in range(n_join):
            src, off = parse_encoded_source(data, off)
            joins.append(src)
        prunes: list[EncodedSource] = []
        for _ in range(n_prune):
            src, off = parse_encoded_source(data, off)
            prunes.append(src)
        groups.append(JoinPruneGroup(group, tuple(joins), tuple(prunes)))
    if off != len(data):
        raise _Bad(PimDrop.BAD_LENGTH)
    return JoinPrune(upstream, holdtime, tuple(groups))


def _parse_register_stop(data: bytes) -> RegisterStop:
    group, off = parse_encoded_group(data, 4)
    source, off = parse_encoded_unicast(data, off)
    if off != len(data):
        raise _Bad(PimDrop.BAD_LENGTH)
    return RegisterStop(group, source)


def _parse_assert(data: bytes) -> Assert:
    group, off = parse_encoded_group(data, 4)
    source, off = parse_encoded_unicast(data, off)
    pref, metric = struct.unpack("!II", _take(data, off, 8))
    if off + 8 != len(data):
        raise _Bad(PimDrop.BAD_LENGTH)
    return Assert(group, source, bool(pref >> 31), pref & 0x7FFFFFFF, metric)


def parse_pim(data: bytes, pseudo: int = 0, verify: bool = True) -> PimMessage | PimDrop:
    """One PIM message, or why it was dropped. Never raises. `verify=False` when the kernel has checked the
    checksum already (an IPv6 raw socket with IPV6_CHECKSUM, which drops what does not add up)."""
    if len(data) < 4:
        return PimDrop.TRUNCATED
    if data[0] >> 4 != PIM_VERSION:
        return PimDrop.BAD_VERSION
    kind = data[0] & 0x0F
    if kind == MessageType.REGISTER:
        if len(data) < 8:
            return PimDrop.TRUNCATED
        if verify and not (_checksum_ok(data, 8, pseudo) or _checksum_ok(data, len(data), pseudo)):
            return PimDrop.BAD_CHECKSUM
        (flags,) = struct.unpack_from("!I", data, 4)
        return Register(bool(flags & 0x80000000), bool(flags & 0x40000000), bytes(data[8:]))
    if verify and not _checksum_ok(data, len(data), pseudo):
        return PimDrop.BAD_CHECKSUM
    try:
        if kind == MessageType.HELLO:
            return _parse_hello(data)
        if kind == MessageType.JOIN_PRUNE:
            return _parse_join_prune(data)
        if kind == MessageType.REGISTER_STOP:
            return _parse_register_stop(data)
        if kind == MessageType.ASSERT:
            return _parse_assert(data)
    except _Short:
        return PimDrop.TRUNCATED
    except _Bad as e:
        return e.reason
    return PimDrop.UNSUPPORTED_TYPE


def parse_pim6(data: bytes, source: IPv6Address, destination: IPv6Address) -> PimMessage | PimDrop:
    """One PIM message received over IPv6 from `source` to `destination`, its checksum checked with the
    pseudo-header (a Register's over its first 8 bytes, or over all of it). Never raises."""
    if len(data) >= 4 and data[0] >> 4 == PIM_VERSION and not _checksum6_ok(data, source, destination):
        return PimDrop.BAD_CHECKSUM
    return parse_pim(data, verify=False)


# --------------------------------------------------------------------------------------------- building


def _family(address: IPAddress) -> int:
    return AddressFamily.IPV4 if address.version == 4 else AddressFamily.IPV6


def build_encoded_unicast(address: IPAddress) -> bytes:
    return bytes((_family(address), 0)) + address.packed


def build_encoded_group(group: EncodedGroup) -> bytes:
    flags = (0x80 if group.bidir else 0) | (0x01 if group.admin_scope else 0)
    return bytes((_family(group.address), 0, flags, group.mask_len)) + group.address.packed


def build_encoded_source(source: EncodedSource) -> bytes:
    flags = (0x04 if source.sparse else 0) | (0x02 if source.wildcard else 0) | (0x01 if source.rpt else 0)
    return bytes((_family(source.address), 0, flags, source.mask_len)) + source.address.packed


def _option(kind: HelloOption, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value


def _hello_body(msg: Hello) -> bytes:
    body = b""
    if msg.holdtime is not None:
        body += _option(HelloOption.HOLDTIME, struct.pack("!H", msg.holdtime))
    if msg.lan_prune_delay is not None:
        d = msg.lan_prune_delay
        first = (0x8000 if d.tracking_disabled else 0) | (d.propagation_delay_ms & 0x7FFF)
        body += _option(HelloOption.LAN_PRUNE_DELAY, struct.pack("!HH", first, d.override_interval_ms))
    if msg.dr_priority is not None:
        body += _option(HelloOption.DR_PRIORITY, struct.pack("!I", msg.dr_priority))
    if msg.generation_id is not None:
        body += _option(HelloOption.GENERATION_ID, struct.pack("!I", msg.generation_id))
    if msg.secondary_addresses:
        body += _option(HelloOption.ADDRESS_LIST, b"".join(map(build_encoded_unicast, msg.secondary_addresses)))
    return body


def _join_prune_body(msg: JoinPrune) -> bytes:
    body = build_encoded_unicast(msg.upstream_neighbor) + struct.pack("!BBH", 0, len(msg.groups), msg.holdtime)
    for g in msg.groups:
        body += build_encoded_group(g.group) + struct.pack("!HH", len(g.joins), len(g.prunes))
        body += b"".join(map(build_encoded_source, g.joins)) + b"".join(map(build_encoded_source, g.prunes))
    return body


def _header(kind: MessageType, body: bytes, covered: int | None, pseudo: int) -> bytes:
    raw = bytearray(bytes(((PIM_VERSION << 4) | kind, 0, 0, 0)) + body)
    end = len(raw) if covered is None else covered
    struct.pack_into("!H", raw, 2, 0xFFFF - ones_complement_sum(bytes(raw[:end]), pseudo))
    return bytes(raw)


def build_pim(msg: PimMessage, pseudo: int = 0) -> bytes:
    """The message with its checksum (IPv6: pass the pseudo-header's sum)."""
    match msg:
        case Hello():
            return _header(MessageType.HELLO, _hello_body(msg), None, pseudo)
        case JoinPrune():
            return _header(MessageType.JOIN_PRUNE, _join_prune_body(msg), None, pseudo)
        case Register():
            flags = (0x80000000 if msg.border else 0) | (0x40000000 if msg.null_register else 0)
            return _header(MessageType.REGISTER, struct.pack("!I", flags) + msg.data, 8, pseudo)
        case RegisterStop():
            body = build_encoded_group(msg.group) + build_encoded_unicast(msg.source)
            return _header(MessageType.REGISTER_STOP, body, None, pseudo)
        case Assert():
            pref = (0x80000000 if msg.rpt else 0) | (msg.metric_preference & 0x7FFFFFFF)
            body = build_encoded_group(msg.group) + build_encoded_unicast(msg.source)
            body += struct.pack("!II", pref, msg.metric)
            return _header(MessageType.ASSERT, body, None, pseudo)
        case _:
            assert_never(msg)


def build_pim6(msg: PimMessage, source: IPv6Address, destination: IPv6Address) -> bytes:
    """The message with its IPv6 checksum, pseudo-header included (a Register's over its first 8 bytes, with
    8 as the pseudo-header's length)."""
    if isinstance(msg, Register):
        return build_pim(msg, pseudo_header_sum(source, destination, REGISTER_CHECKSUMMED))
    length = len(build_pim(msg))
    return build_pim(msg, pseudo_header_sum(source, destination, length))
