"""The RP's side of Register: Register-Stop always, sources remembered only when we are the RP."""

import struct
from ipaddress import IPv4Address

from mcr.routing.pim_register import KEEPALIVE_PERIOD, RpRegisters, inner_addresses
from mcr.routing.pim_wire import EncodedGroup, Register, RegisterStop

US = IPv4Address("10.0.0.1")
DR = IPv4Address("10.9.0.1")
S = IPv4Address("10.9.0.5")
G = IPv4Address("239.3.3.3")


def ipv4(src: IPv4Address, dst: IPv4Address) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, src.packed, dst.packed) + bytes(8)


def test_inner_addresses() -> None:
    assert inner_addresses(ipv4(S, G)) == (S, G)
    assert inner_addresses(ipv4(S, IPv4Address("10.1.1.1"))) is None  # not to a group
    assert inner_addresses(b"\x45" + bytes(10)) is None


def test_register_for_our_group_remembers_the_source_and_stops_the_dr() -> None:
    regs = RpRegisters()
    stop, changed = regs.on_register(DR, Register(False, False, ipv4(S, G)), US, frozenset({US}), now=0.0)
    assert stop == RegisterStop(EncodedGroup(G, 32), S) and changed
    (src,) = regs.sources()
    assert (src.source, src.group, src.dr, src.rp) == (S, G, DR, US)
    assert regs.on_register(DR, Register(False, True, ipv4(S, G)), US, frozenset({US}), now=60.0)[1] is False
    assert regs.next_deadline() == 60.0 + KEEPALIVE_PERIOD
    assert not regs.on_timer(60.0 + KEEPALIVE_PERIOD - 1)
    assert regs.on_timer(60.0 + KEEPALIVE_PERIOD) and regs.sources() == []


def test_register_when_we_are_not_the_rp_is_stopped_not_remembered() -> None:
    regs = RpRegisters()
    stop, changed = regs.on_register(
        DR, Register(False, False, ipv4(S, G)), IPv4Address("10.0.0.7"), frozenset({US}), 0.0
    )
    assert stop is not None and not changed and regs.sources() == [] and regs.not_rp == 1
    assert regs.on_register(DR, Register(False, False, b"junk"), US, frozenset({US}), 0.0) == (None, False)
    assert regs.bad == 1
