"""The DR's side of Register: which sources we register, the Join/Prune/Join-Pending states, Null-Registers."""

import struct
from ipaddress import IPv4Address, IPv4Network, ip_address

import pytest

from mcr.packet.cbpf import ACCEPT, DROP, PacketType, check_program, run_program
from mcr.routing.pim_dr_register import (
    REGISTER_DATA_BURST,
    REGISTER_DATA_RATE,
    REGISTER_PROBE_TIME,
    DrRegisters,
    LocalSource,
    RegisterState,
    SendRegister,
    could_register,
    null_register_header,
    register_stop_filter,
    source_group_filter,
)
from mcr.routing.pim_joins import RpTable
from mcr.routing.pim_register import inner_addresses
from mcr.routing.pim_upstream import Wanted
from mcr.routing.pim_wire import EncodedGroup, Register, RegisterStop, build_pim, ones_complement_sum, parse_pim

US = IPv4Address("10.1.0.1")
RP = IPv4Address("10.9.0.9")
RP2 = IPv4Address("10.9.0.10")
S = IPv4Address("10.1.0.5")
G = IPv4Address("239.3.3.3")
LOCAL = LocalSource("eth1", S, G, RP)
KEY = (S, G)
SUBNET = IPv4Network("10.1.0.0/24")


def rps(rp: IPv4Address = RP) -> RpTable:
    table = RpTable()
    table.set(IPv4Network("239.0.0.0/8"), rp)
    return table


def connected(interface: str, source: object) -> bool:
    return interface == "eth1" and isinstance(source, IPv4Address) and source in SUBNET


@pytest.mark.parametrize(
    ("wanted", "dr", "rp", "expected"),
    [
        (Wanted("eth1", G, S), True, RP, {KEY: LOCAL}),
        (Wanted("eth1", G, None), True, RP, {}),  # any source: nothing to register
        (Wanted("eth1", G, S), False, RP, {}),  # another router is the DR
        (Wanted("eth1", G, IPv4Address("10.7.0.5")), True, RP, {}),  # not on the link
        (Wanted("eth2", G, S), True, RP, {}),  # not connected on that interface
        (Wanted("eth1", G, S), True, US, {}),  # we are the RP
        (Wanted("eth1", IPv4Address("238.1.1.1"), S), True, RP, {}),  # no RP for the group
    ],
)
def test_could_register(wanted: Wanted, dr: bool, rp: IPv4Address, expected: dict[object, LocalSource]) -> None:
    assert could_register([wanted], connected, lambda _i: dr, rps(rp), frozenset({US})) == expected


def test_a_new_source_starts_in_join_and_its_data_is_encapsulated_to_the_rp() -> None:
    drs = DrRegisters()
    assert drs.update({KEY: LOCAL}) is True
    assert drs.tunnels() == {LOCAL} and drs.next_deadline() is None
    packet = bytes(28)
    assert drs.encapsulate(S, G, packet, 0.0) == SendRegister(RP, Register(False, False, packet))
    assert drs.encapsulate(IPv4Address("10.1.0.6"), G, packet, 0.0) is None  # not ours
    assert drs.update({KEY: LOCAL}) is False  # unchanged


def test_a_register_stop_not_from_the_rp_changes_nothing() -> None:
    drs = DrRegisters()
    drs.update({KEY: LOCAL})
    stop = RegisterStop(EncodedGroup(G, 32), S)
    assert drs.on_register_stop(stop, 10.0, 40.0, IPv4Address("10.9.0.66")) is False
    assert drs.tunnels() == frozenset({LOCAL}) and (drs.stops_received, drs.stops_unmatched) == (0, 1)
    assert drs.on_register_stop(stop, 11.0, 40.0, RP) is True


def test_register_stop_prunes_then_null_register_probe_then_join_again() -> None:
    drs = DrRegisters()
    drs.update({KEY: LOCAL})
    drs.encapsulate(S, G, bytes(28), 9.0)  # the source sends
    assert drs.on_register_stop(RegisterStop(EncodedGroup(G, 32), S), now=10.0, timer=40.0, sender=RP) is True
    (entry,) = drs.entries()
    assert entry.state is RegisterState.PRUNE and entry.timer_at == 50.0
    assert drs.tunnels() == frozenset() and drs.encapsulate(S, G, bytes(28), 11.0) is None
    assert drs.on_timer(49.9) == ([], False)
    sends, changed = drs.on_timer(50.0)
    assert not changed
    (probe,) = sends
    assert probe.rp == RP and probe.message.null_register and not probe.message.border
    assert inner_addresses(probe.message.data) == (S, G)
    (entry,) = drs.entries()
    assert entry.state is RegisterState.JOIN_PENDING and entry.timer_at == 50.0 + REGISTER_PROBE_TIME
    # no Register-Stop within the probe time: the tunnel comes back
    assert drs.on_timer(55.0) == ([], True)
    assert drs.tunnels() == {LOCAL}


def test_register_stop_in_join_pending_goes_back_to_prune() -> None:
    drs = DrRegisters()
    drs.update({KEY: LOCAL})
    drs.saw_data(S, G, 0.0)
    drs.on_register_stop(RegisterStop(EncodedGroup(G, 32), S), 0.0, 30.0, RP)
    drs.on_timer(30.0)
    assert drs.entries()[0].state is RegisterState.JOIN_PENDING
    assert drs.on_register_stop(RegisterStop(EncodedGroup(G, 32), S), 31.0, 60.0, RP) is False
    assert drs.entries()[0].state is RegisterState.PRUNE and drs.entries()[0].timer_at == 91.0
    # in Prune a further Register-Stop changes nothing
    drs.on_register_stop(RegisterStop(EncodedGroup(G, 32), S), 32.0, 30.0, RP)
    assert drs.entries()[0].timer_at == 91.0
    assert drs.stops_received == 3


def test_wildcard_register_stop_covers_every_source_of_the_group_others_are_counted() -> None:
    drs = DrRegisters()
    other = LocalSource("eth1", IPv4Address("10.1.0.6"), G, RP)
    drs.update({KEY: LOCAL, (other.source, G): other})
    drs.on_register_stop(RegisterStop(EncodedGroup(IPv4Address("239.9.9.9"), 32), S), 0.0, 30.0, RP)
    assert drs.stops_unmatched == 1 and len(drs.tunnels()) == 2
    assert drs.on_register_stop(RegisterStop(EncodedGroup(G, 32), IPv4Address("0.0.0.0")), 0.0, 30.0, RP)
    assert drs.tunnels() == frozenset()


def test_rp_change_restarts_the_tunnel_and_losing_could_register_drops_the_entry() -> None:
    drs = DrRegisters()
    drs.update({KEY: LOCAL})
    drs.on_register_stop(RegisterStop(EncodedGroup(G, 32), S), 0.0, 30.0, RP)
    moved = LocalSource("eth1", S, G, RP2)
    assert drs.update({KEY: moved}) is True
    assert drs.tunnels() == {moved} and drs.next_deadline() is None
    assert drs.update({}) is True and drs.entries() == []


def test_data_registers_are_rate_limited_and_counted() -> None:
    drs = DrRegisters()
    drs.update({KEY: LOCAL})
    sent = sum(drs.encapsulate(S, G, bytes(28), 0.0) is not None for _ in range(200))
    assert sent == REGISTER_DATA_BURST and drs.data_rate_limited == 200 - sent
    assert drs.encapsulate(S, G, bytes(28), 1.0 / REGISTER_DATA_RATE) is not None


def test_null_register_header_is_a_valid_ipv4_header_and_the_register_checksum_covers_the_header_only() -> None:
    head = null_register_header(S, G)
    assert len(head) == 20 and ones_complement_sum(head) == 0xFFFF
    assert struct.unpack("!BBH", head[:4]) == (0x45, 0, 20)
    wire = build_pim(Register(False, True, head))
    assert ones_complement_sum(wire[:8]) == 0xFFFF
    assert parse_pim(wire) == Register(False, True, head)


def ipv4(src: str, dst: str) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, ip_address(src).packed, ip_address(dst).packed)


def test_source_group_filter() -> None:
    program = source_group_filter(S, G)
    check_program(program)
    assert run_program(program, ipv4(str(S), str(G)) + bytes(8)) == ACCEPT
    assert run_program(program, ipv4("10.1.0.6", str(G)) + bytes(8)) == DROP
    assert run_program(program, ipv4(str(S), "239.3.3.4") + bytes(8)) == DROP
    assert run_program(program, ipv4(str(S), str(G)) + bytes(8), pkttype=PacketType.OUTGOING) == DROP


def test_register_stop_filter() -> None:
    program = register_stop_filter()
    check_program(program)
    stop = build_pim(RegisterStop(EncodedGroup(G, 32), S))
    head = ipv4(str(RP), str(US))
    assert run_program(program, head + stop) == ACCEPT
    assert run_program(program, head + build_pim(Register(False, True, null_register_header(S, G)))) == DROP
    options = bytes([0x46]) + head[1:] + bytes(4)  # a 24-byte header
    assert run_program(program, options + stop) == ACCEPT


def test_a_silent_source_is_not_probed_for_and_registers_again_when_it_sends() -> None:
    drs = DrRegisters()
    drs.update({KEY: LOCAL})
    drs.encapsulate(S, G, bytes(28), 0.0)
    drs.on_register_stop(RegisterStop(EncodedGroup(G, 32), S), 1.0, 60.0, RP)
    drs.saw_data(S, G, 50.0)  # seen while suppressed
    sends, _ = drs.on_timer(61.0)
    assert len(sends) == 1  # still sending: probed
    drs.on_register_stop(RegisterStop(EncodedGroup(G, 32), S), 62.0, 200.0, RP)
    # then nothing from the source for the Keepalive period: no Null-Register, back to Join
    assert drs.on_timer(262.0) == ([], True)
    assert drs.tunnels() == {LOCAL} and drs.silent_sources == 1
    assert drs.encapsulate(S, G, bytes(28), 300.0) is not None  # its next packet is registered at once
