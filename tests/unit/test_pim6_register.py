"""PIM Register and Register-Stop over IPv6 (RFC 7761 §4.9, §4.9.3-4.9.4; the pseudo-header of RFC 8200 §8.1):
checksums computed by hand here, and the DR's pieces for an IPv6 source."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

import pytest

from mcr.packet.cbpf import ACCEPT, DROP, check_program, run_program
from mcr.routing.pim_dr_register import null_register_header, register6_filter, source_group_filter
from mcr.routing.pim_register import inner_addresses
from mcr.routing.pim_wire import (
    EncodedGroup,
    PimDrop,
    Register,
    RegisterStop,
    build_pim,
    build_pim6,
    parse_pim6,
)

DR, RP = IPv6Address("fd00:20::1"), IPv6Address("fd00:20::2")
S, G = IPv6Address("fd00:30::2"), IPv6Address("ff1e::6:6")


def by_hand(pseudo_length: int, covered: bytes) -> int:
    """The Internet checksum over the IPv6 pseudo-header (src, dst, length, 3 zero bytes, next header 103)
    and `covered` (its checksum field zero), written out independently of the codec."""
    words = DR.packed + RP.packed + struct.pack("!I", pseudo_length) + bytes((0, 0, 0, 103)) + covered
    if len(words) % 2:
        words += b"\0"
    total = sum(int.from_bytes(words[i : i + 2], "big") for i in range(0, len(words), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_a_registers_checksum_covers_the_pseudo_header_with_length_8_and_its_first_8_bytes() -> None:
    inner = struct.pack("!IHBB16s16s", 6 << 28, 8, 17, 64, S.packed, G.packed) + bytes(8)
    raw = build_pim6(Register(False, False, inner), DR, RP)
    assert raw[0] == 0x21 and raw[4:8] == bytes(4) and raw[8:] == inner
    assert int.from_bytes(raw[2:4], "big") == by_hand(8, bytes((0x21, 0, 0, 0, 0, 0, 0, 0)))
    assert parse_pim6(raw, DR, RP) == Register(False, False, inner)
    assert parse_pim6(raw, IPv6Address("fd00:20::3"), RP) == PimDrop.BAD_CHECKSUM  # the addresses are in the sum


def test_a_register_checksummed_over_all_of_it_is_accepted_too() -> None:
    """RFC 7761 §4.9.3: for interoperability, a checksum over the whole Register is taken as well."""
    body = bytes((0x21, 0, 0, 0, 0x40, 0, 0, 0)) + null_register_header(S, G)
    whole = body[:2] + struct.pack("!H", by_hand(len(body), body)) + body[4:]
    assert parse_pim6(whole, DR, RP) == Register(False, True, null_register_header(S, G))


def test_a_register_stops_checksum_covers_all_of_it_with_its_length() -> None:
    stop = RegisterStop(EncodedGroup(G, 128), S)
    raw = build_pim6(stop, RP, DR)
    zeroed = raw[:2] + b"\0\0" + raw[4:]
    swapped = by_hand(len(raw), zeroed)  # by_hand sums DR then RP: the same sum either way round
    assert int.from_bytes(raw[2:4], "big") == swapped
    assert parse_pim6(raw, RP, DR) == stop
    assert raw[4:] == build_pim(stop)[4:]  # only the checksum differs from IPv4's way


def test_the_null_register_carries_an_ipv6_header_from_s_to_g() -> None:
    header = null_register_header(S, G)
    assert len(header) == 40 and header[0] >> 4 == 6 and header[6] == 103 and header[4:6] == b"\0\0"
    assert inner_addresses(header) == (S, G)


def _packet(source: IPv6Address, group: IPv6Address) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, 8, 17, 64, source.packed, group.packed) + bytes(8)


@pytest.mark.parametrize(
    ("source", "group", "verdict"),
    [
        (S, G, ACCEPT),
        (IPv6Address("fd00:30::3"), G, DROP),
        (S, IPv6Address("ff1e::6:7"), DROP),
        (IPv6Address("fd01:30::2"), G, DROP),
    ],
)
def test_the_capture_filter_of_an_ipv6_source(source: IPv6Address, group: IPv6Address, verdict: int) -> None:
    program = source_group_filter(S, G)
    check_program(program)
    assert run_program(program, _packet(source, group)) == verdict


@pytest.mark.parametrize(("first", "verdict"), [(0x21, ACCEPT), (0x22, ACCEPT), (0x20, DROP), (0x23, DROP)])
def test_the_ipv6_register_socket_takes_registers_and_register_stops_only(first: int, verdict: int) -> None:
    program = register6_filter()
    check_program(program)
    assert run_program(program, bytes((first, 0, 0, 0))) == verdict
