"""The routing tables are bounded: a flood of Hellos, Joins, SAs or Registers is counted, not kept."""

from ipaddress import IPv4Address

import pytest

from mcr.routing import msdp as msdp_module
from mcr.routing import pim_joins, pim_neighbors, pim_register
from mcr.routing.msdp import Msdp, PeerConfig
from mcr.routing.msdp_wire import SaEntry, SourceActive
from mcr.routing.pim_joins import JoinState
from mcr.routing.pim_neighbors import InterfaceSettings, PimNeighbors
from mcr.routing.pim_register import RpRegisters
from mcr.routing.pim_wire import EncodedGroup, EncodedSource, Hello, JoinPrune, JoinPruneGroup, Register

US = IPv4Address("10.0.0.1")


def test_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pim_neighbors, "MAX_NEIGHBORS", 3)
    pim = PimNeighbors()
    pim.enable(InterfaceSettings("eth0", US), 1, 0.0)
    for i in range(2, 7):
        pim.on_hello("eth0", IPv4Address(f"10.0.0.{i}"), Hello(105, 1, i), 0.0)
    assert len(pim.neighbors()) == 3 and pim.table_full == 2
    pim.on_hello("eth0", IPv4Address("10.0.0.2"), Hello(105, 1, 2), 1.0)  # a known one is still refreshed
    assert pim.table_full == 2


def test_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pim_joins, "MAX_ENTRIES", 2)
    state = JoinState()
    for i in range(4):
        g = EncodedGroup(IPv4Address(f"239.0.0.{i}"), 32)
        msg = JoinPrune(US, 210, (JoinPruneGroup(g, (EncodedSource(US, 32, wildcard=True, rpt=True),)),))
        state.on_join_prune("eth0", msg, frozenset({US}), 0.0)
    assert len(state.routes()) == 2 and state.table_full == 2


def test_sa_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(msdp_module, "MAX_SA_CACHE", 2)
    m = Msdp()
    peer = IPv4Address("10.0.0.9")
    m.add_peer(PeerConfig(peer, US), 0.0)
    m.on_established(peer, 0.0)
    entries = tuple(SaEntry(IPv4Address(f"10.5.0.{i}"), IPv4Address("239.1.1.1")) for i in range(5))
    m.on_message(peer, SourceActive(peer, entries), 1.0)
    assert len(m.cache()) == 2 and m.counters.sa_cache_full == 3


def test_registered_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    import struct

    monkeypatch.setattr(pim_register, "MAX_SOURCES", 1)
    regs = RpRegisters()
    for i in range(3):
        inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 16, 17, 0, bytes((10, 9, 0, i)), bytes((239, 3, 3, 3)))
        stop, _ = regs.on_register(IPv4Address("10.9.0.1"), Register(False, False, inner), US, frozenset({US}), 0.0)
        assert stop is not None  # stopped all the same
    assert len(regs.sources()) == 1 and regs.table_full == 2
