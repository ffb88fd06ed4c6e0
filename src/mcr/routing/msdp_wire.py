"""MSDP messages (RFC 3618 §12) <-> typed values, and the TCP stream framer. Pure.

Every message is a TLV: type (1 byte), length (2 bytes, counting the 3-byte header), value. We speak
IPv4 Source-Active (1) and Keepalive (4); SA-Request/SA-Response (2, 3) and anything else are framed
and reported as unsupported so the session can go on (RFC 3618 §12.4: unknown TLVs are ignored). A
length that cannot be right (under 3, over 9192, or a Keepalive that is not 3) is a framing error that
ends the session, since the stream can no longer be followed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum, IntEnum
from ipaddress import IPv4Address
from typing import assert_never

MSDP_PORT = 639
MAX_MESSAGE = 9192  # RFC 3618 §12: the largest MSDP message
HEADER = 3
SA_ENTRY = 12  # reserved (3), sprefix length (1), group (4), source (4)
MAX_SA_ENTRIES = 255


class TlvType(IntEnum):
    SOURCE_ACTIVE = 1
    SA_REQUEST = 2
    SA_RESPONSE = 3
    KEEPALIVE = 4


class MsdpDrop(Enum):
    """Why a message was not accepted; the session goes on and the reason is counted."""

    UNSUPPORTED_TYPE = "unsupported_type"
    BAD_SA = "bad_sa"


class FramingError(Exception):
    """The byte stream cannot be split into messages any more: the session must close."""


@dataclass(frozen=True, slots=True)
class SaEntry:
    source: IPv4Address
    group: IPv4Address


@dataclass(frozen=True, slots=True)
class SourceActive:
    rp: IPv4Address
    entries: tuple[SaEntry, ...]
    data: bytes = b""  # an encapsulated data packet (optional)


@dataclass(frozen=True, slots=True)
class Keepalive:
    pass


MsdpMessage = SourceActive | Keepalive


def parse_msdp(kind: int, value: bytes) -> MsdpMessage | MsdpDrop:
    """One message's value (after the 3-byte header), by its type."""
    if kind == TlvType.KEEPALIVE:
        return Keepalive()
    if kind != TlvType.SOURCE_ACTIVE:
        return MsdpDrop.UNSUPPORTED_TYPE
    if len(value) < 5:
        return MsdpDrop.BAD_SA
    count = value[0]
    rp = IPv4Address(value[1:5])
    end = 5 + count * SA_ENTRY
    if count == 0 or len(value) < end:
        return MsdpDrop.BAD_SA
    entries: list[SaEntry] = []
    for off in range(5, end, SA_ENTRY):
        prefix_len = value[off + 3]
        group = IPv4Address(value[off + 4 : off + 8])
        source = IPv4Address(value[off + 8 : off + 12])
        if prefix_len != 32 or not group.is_multicast:
            return MsdpDrop.BAD_SA
        entries.append(SaEntry(source, group))
    return SourceActive(rp, tuple(entries), bytes(value[end:]))


def build_msdp(msg: MsdpMessage) -> bytes:
    match msg:
        case Keepalive():
            return struct.pack("!BH", TlvType.KEEPALIVE, HEADER)
        case SourceActive():
            if not 1 <= len(msg.entries) <= MAX_SA_ENTRIES:
                raise ValueError(f"an SA carries 1 to {MAX_SA_ENTRIES} entries, not {len(msg.entries)}")
            body = bytes((len(msg.entries),)) + msg.rp.packed
            body += b"".join(b"\0\0\0\x20" + e.group.packed + e.source.packed for e in msg.entries)
            body += msg.data
            if HEADER + len(body) > MAX_MESSAGE:
                raise ValueError(f"an MSDP message is at most {MAX_MESSAGE} bytes")
            return struct.pack("!BH", TlvType.SOURCE_ACTIVE, HEADER + len(body)) + body
        case _:
            assert_never(msg)


def max_entries_per_sa() -> int:
    return min(MAX_SA_ENTRIES, (MAX_MESSAGE - HEADER - 5) // SA_ENTRY)


class MsdpFramer:
    """Splits a TCP byte stream into messages; `feed` returns what is complete so far."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[MsdpMessage | MsdpDrop]:
        self._buf += data
        out: list[MsdpMessage | MsdpDrop] = []
        while len(self._buf) >= HEADER:
            kind, length = struct.unpack_from("!BH", self._buf)
            if length < HEADER or length > MAX_MESSAGE or (kind == TlvType.KEEPALIVE and length != HEADER):
                raise FramingError(f"MSDP message type {kind} with impossible length {length}")
            if len(self._buf) < length:
                break
            value = bytes(self._buf[HEADER:length])
            del self._buf[:length]
            out.append(parse_msdp(kind, value))
        return out
