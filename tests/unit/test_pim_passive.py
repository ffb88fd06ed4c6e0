"""A passive PIM interface: no socket and no Hellos, we are the DR of its directly connected sources, and
nothing is joined through it; the mode can be switched both ways at run time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, ip_network

import pytest

from mcr.model.links import Link
from mcr.model.rules import ForwardingRule
from mcr.protocol.routing import DisablePim, EnablePim
from mcr.routing.pim_dr_register import LocalSource, could_register
from mcr.routing.pim_joins import RpTable
from mcr.routing.pim_upstream import Wanted
from mcr.supervisor.pim import PimService

G, S, RP = IPv4Address("239.6.6.6"), IPv4Address("10.230.0.2"), IPv4Address("10.210.0.2")
SRC_LINK = Link("src0", 7, True, 1500, (IPv4Address("10.230.0.1"),), ipv4_networks=(IPv4Network("10.230.0.0/24"),))


@pytest.fixture
def pim() -> Iterator[PimService]:
    loop = asyncio.new_event_loop()
    service = PimService(loop)
    service.on_links({"src0": SRC_LINK})
    try:
        yield service
    finally:
        service.close(goodbye=False)
        loop.close()


def registered(pim: PimService) -> dict[tuple[object, object], LocalSource]:
    rps = RpTable()
    rps.set(ip_network("239.0.0.0/8"), RP)
    return could_register(pim.wanted_trees, pim._connected, pim._is_dr, rps, pim._ours())


def test_a_passive_interface_runs_without_a_socket_and_we_are_the_dr_of_its_sources(pim: PimService) -> None:
    text = pim.enable(EnablePim("src0", passive=True))
    assert text == "PIM enabled on src0, passive (no Hellos; its connected sources only)"
    assert pim.sockets == {} and pim.core.interfaces == {} and pim.passive == {"src0": IPv4Address("10.230.0.1")}
    (info,) = pim.interface_infos()
    assert (info.state, info.address, info.dr, info.is_dr, info.neighbors) == (
        "passive",
        IPv4Address("10.230.0.1"),
        IPv4Address("10.230.0.1"),
        True,
        0,
    )
    rule = ForwardingRule("r", "src0", G, 5000, (), input_source=ip_network(f"{S}/32"))
    pim.set_rules([rule])
    assert pim.wanted_trees == {Wanted("src0", G, S)}
    assert registered(pim) == {(S, G): LocalSource("src0", S, G, RP)}
    # a source that is not on the link's subnet is not ours to register, and nothing is joined toward it
    far = ForwardingRule("f", "src0", G, 5001, (), input_source=ip_network("10.9.9.9/32"))
    pim.set_rules([far])
    assert registered(pim) == {} and pim.upstream.entries == set() and pim.upstream.unresolved == []


def test_an_any_source_rule_on_a_passive_interface_joins_nothing(pim: PimService) -> None:
    pim.enable(EnablePim("src0", passive=True))
    pim.rps.set(ip_network("239.0.0.0/8"), RP)
    pim.set_rules([ForwardingRule("r", "src0", G, 5000, ())])
    assert pim.wanted_trees == {Wanted("src0", G, None)}
    assert pim.upstream.entries == set() and pim.upstream.unresolved == []  # no "PIM cannot join" either


def test_the_mode_follows_enable_and_the_interface(pim: PimService) -> None:
    pim.enable(EnablePim("src0", passive=True))
    pim.enable(EnablePim("src0", dr_priority=5))  # passive kept when not said
    assert pim.wanted["src0"].passive and pim.wanted["src0"].dr_priority == 5 and "src0" in pim.passive
    pim.on_links({})  # the interface goes: passive waits
    assert pim.passive == {} and pim.interface_infos()[0].state == "waiting"
    assert pim.enable(EnablePim("src0")).endswith("(waiting: the interface is missing, down or has no IPv4)")
    pim.on_links({"src0": SRC_LINK})
    assert "src0" in pim.passive
    pim.disable(DisablePim("src0"))
    assert pim.passive == {} and pim.interface_infos() == ()
