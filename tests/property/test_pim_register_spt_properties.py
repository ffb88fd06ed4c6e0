"""Properties of the DR's Register and SPT cores and the route parser: total on any input, and the
kernel filters they build pass exactly what they should."""

import struct
from ipaddress import IPv4Address, IPv6Address

from hypothesis import example, given
from hypothesis import strategies as st

from mcr.packet.cbpf import ACCEPT, DROP, check_program, run_program
from mcr.routing.pim_dr_register import DrRegisters, LocalSource, source_group_filter
from mcr.routing.pim_spt import MAX_SOURCES_PER_GROUP, SptSwitch, new_source_filter
from mcr.routing.pim_wire import EncodedGroup, RegisterStop
from mcr.routing.unicast import next_hop, parse_proc_net_ipv6_route, parse_proc_net_route

v4 = st.integers(0, 0xFFFFFFFF).map(IPv4Address)
G = IPv4Address("239.1.1.1")


def packet(src: IPv4Address, dst: IPv4Address) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, src.packed, dst.packed) + bytes(8)


@given(st.text(), v4)
def test_route_parser_is_total(text: str, target: IPv4Address) -> None:
    next_hop(parse_proc_net_route(text), target)


@given(st.lists(v4, max_size=MAX_SOURCES_PER_GROUP, unique=True), v4)
def test_new_source_filter_drops_exactly_the_known(known: list[IPv4Address], source: IPv4Address) -> None:
    program = new_source_filter(G, known)
    check_program(program)
    assert run_program(program, packet(source, G)) == (DROP if source in known else ACCEPT)


@given(v4, v4, v4)
def test_source_group_filter(source: IPv4Address, other: IPv4Address, group: IPv4Address) -> None:
    program = source_group_filter(source, G)
    assert run_program(program, packet(other, group)) == (ACCEPT if (other, group) == (source, G) else DROP)


events = st.lists(st.tuples(st.sampled_from(["stop", "timer", "data", "rp"]), v4, st.floats(0, 100)), max_size=40)


@given(events)
@example([("stop", IPv4Address(0), 0.0), ("stop", IPv4Address(0), 31.0), ("stop", IPv4Address(0), 100.0)])
@example([("stop", IPv4Address(0), 0.0), ("stop", IPv4Address(0), 131.0), ("timer", IPv4Address(0), 0.0)])
def test_dr_register_core_keeps_its_invariants(steps: list[tuple[str, IPv4Address, float]]) -> None:
    drs, now = DrRegisters(), 0.0
    source, rp = IPv4Address("10.0.0.5"), IPv4Address("10.0.0.9")
    drs.update({(source, G): LocalSource("eth0", source, G, rp)})
    for kind, address, dt in steps:
        now += dt
        if kind == "stop":
            drs.on_register_stop(RegisterStop(EncodedGroup(G, 32), address), now, 30.0, rp)
        elif kind == "timer":
            drs.on_timer(now)
        elif kind == "data":
            drs.encapsulate(source, G, bytes(28), now)
        else:
            drs.update({(source, G): LocalSource("eth0", source, G, address)})
        (entry,) = drs.entries()
        assert (entry.timer_at is None) == (entry.local in drs.tunnels())
        deadline = drs.next_deadline()
        if kind == "timer":  # what was due has run: the next deadline is later (overdue ones wait for a timer)
            assert deadline is None or deadline > now


@given(st.lists(st.tuples(v4, st.binary(min_size=6, max_size=6), st.booleans(), st.floats(0, 300)), max_size=50))
def test_spt_core_settled_sources_are_known(steps: list[tuple[IPv4Address, bytes, bool, float]]) -> None:
    spt, now = SptSwitch(), 0.0
    for source, sender, same, dt in steps:
        now += dt
        spt.on_timer(now)
        new = source not in {s.source for s in spt.sources()}
        spt.on_data("eth0", G, source, sender, same, now)
        settled = spt.settled("eth0", G)
        assert set(settled) <= {s.source for s in spt.sources()}
        if new and same:  # one router carries both trees: on the SPT at once
            assert [s.spt_bit for s in spt.sources() if s.source == source] == [True]


v6 = st.integers(0, (1 << 128) - 1).map(IPv6Address)
G6 = IPv6Address("ff1e::6:6")


def packet6(src: IPv6Address, dst: IPv6Address) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, 8, 17, 64, src.packed, dst.packed) + bytes(8)


@given(st.lists(v6, max_size=MAX_SOURCES_PER_GROUP, unique=True), st.data())
def test_ipv6_new_source_filter_drops_exactly_the_known(known: list[IPv6Address], data: st.DataObject) -> None:
    program = new_source_filter(G6, known)
    check_program(program)
    source = data.draw(st.sampled_from(known) | v6) if known else data.draw(v6)
    group = data.draw(st.just(G6) | v6)
    expected = ACCEPT if group == G6 and source not in known else DROP
    assert run_program(program, packet6(source, group)) == expected


@given(v6, v6, st.data())
def test_ipv6_source_group_filter(source: IPv6Address, group: IPv6Address, data: st.DataObject) -> None:
    program = source_group_filter(source, group)
    other = data.draw(st.just(source) | v6)
    to = data.draw(st.just(group) | v6)
    assert run_program(program, packet6(other, to)) == (ACCEPT if (other, to) == (source, group) else DROP)


@given(st.text(), v6)
def test_ipv6_route_parser_is_total(text: str, target: IPv6Address) -> None:
    next_hop(parse_proc_net_ipv6_route(text), target)


@given(st.lists(st.tuples(st.sampled_from(["0", "1", "ff", "zz", "80"]), st.binary(min_size=16, max_size=16),
                          st.integers(0, 0xFFFFFFFF)), max_size=20), v6)  # fmt: skip
def test_ipv6_route_parser_takes_near_valid_lines(rows: list[tuple[str, bytes, int]], target: IPv6Address) -> None:
    text = "".join(f"{d.hex()} {p} {bytes(16).hex()} 00 {d[::-1].hex()} {f:08x} 0 0 {f:08x} eth0\n" for p, d, f in rows)
    next_hop(parse_proc_net_ipv6_route(text), target)
