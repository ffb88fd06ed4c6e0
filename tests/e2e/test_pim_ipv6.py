"""PIM over IPv6 beyond Hellos: Register and Register-Stop, and the (S,G) tree they lead to, between two of
our supervisors; and against FRR's pim6d where the installed FRR has one (Debian's 8.4 does not).

    SRC src0 fd00:30::2 <-> rin fd00:30::1  A (DR)  pa0 fd00:20::1 <-> pb0 fd00:20::2  B (the RP)
        out0 fd00:40::1 <-> rcv0 fd00:40::2  RCV

A has a rule for the source's group on rin limited to the source: it registers the source with B. B, the
RP, answers with a Register-Stop (checksums over the pseudo-header and the Register's first 8 bytes,
computed by us on both sides), and its rule for any source of G on pb0 joins the registered source's tree:
an (S,G) Join to A, whose rule then sends the stream onto pa0, and B relays it to RCV.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.frr import FRR_LIBDIR
from tests.e2e.netns import NetLab, wait_for
from tests.e2e.relay import Supervisor, generator_argv, start_sink

pytestmark = pytest.mark.slow

SRC, RIN = "fd00:30::2", "fd00:30::1"
A_IP, B_IP = "fd00:20::1", "fd00:20::2"
OUT, RCV = "fd00:40::1", "fd00:40::2"
GROUP, PORT = "ff1e::6:6", 5000  # transient, global scope: not SSM (ff3x::/32), so PIM-SM with an RP


@dataclass
class Lab6:
    lab: NetLab
    src: str
    rcv: str
    a: Supervisor
    b: Supervisor

    @staticmethod
    def counters(sup: Supervisor) -> dict[str, int]:
        return dict(sup.ctl("pim", "counters").doc["RoutingCounters"])

    def send(self, count: int, rate: int = 50) -> None:
        argv = generator_argv(GROUP, PORT, source=SRC, rate=rate, size=200, count=count)
        self.lab.popen(self.src, *argv, name="traffic_generator").json(timeout=30)


def _ipv6_netns(lab: NetLab, name: str) -> str:
    ns = lab.add_netns(name)
    for key in ("all", "default"):
        lab.run(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=0")
        lab.run(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0")
    return ns


def _pair6(lab: NetLab, ns_a: str, if_a: str, ip_a: str, ns_b: str, if_b: str, ip_b: str) -> None:
    lab.run(ns_a, "ip", "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
    for ns, name, ip in ((ns_a, if_a, ip_a), (ns_b, if_b, ip_b)):
        lab.run(ns, "ip", "-6", "addr", "add", f"{ip}/64", "dev", name, "nodad")
        lab.run(ns, "ip", "link", "set", "dev", name, "up")


@pytest.fixture
def lab6(netlab: NetLab) -> Iterator[Lab6]:
    src, a_ns, b_ns, rcv = (_ipv6_netns(netlab, n) for n in ("src6", "pa", "pb", "rcv6"))
    _pair6(netlab, src, "src0", SRC, a_ns, "rin", RIN)
    _pair6(netlab, a_ns, "pa0", A_IP, b_ns, "pb0", B_IP)
    _pair6(netlab, b_ns, "out0", OUT, rcv, "rcv0", RCV)
    netlab.run(src, "ip", "-6", "route", "add", "default", "via", RIN)
    netlab.run(b_ns, "ip", "-6", "route", "add", "fd00:30::/64", "via", A_IP)  # B's route back to the source
    a, b = Supervisor.start(netlab, a_ns), Supervisor.start(netlab, b_ns)
    for sup, interfaces in ((a, ("rin", "pa0")), (b, ("pb0", "out0"))):
        for interface in interfaces:
            sup.ctl("pim", "enable", "--interface", interface)
        sup.ctl("pim", "set-rp", "--group", "ff1e::/16", "--rp", B_IP)
    yield Lab6(netlab, src, rcv, a, b)


def _v6_neighbour(sup: Supervisor) -> dict[str, Any] | None:
    return next((n for n in sup.ctl("pim", "neighbors").doc["PimNeighbors"] if ":" in n["address"]), None)


@pytest.mark.parametrize("mode", ["pim", "passive"])
def test_a_source_registered_over_ipv6_is_stopped_and_its_tree_joined_by_the_rp(lab6: Lab6, mode: str) -> None:
    """With PIM on the source's link (A its only router, so the DR) or passive there (no Hellos at all)."""
    d = lab6
    if mode == "passive":
        d.a.ctl("pim", "enable", "--interface", "rin", "--passive")
        assert "rin" not in {n["interface"] for n in d.a.ctl("pim", "neighbors").doc["PimNeighbors"]}
    wait_for(lambda: _v6_neighbour(d.a) and _v6_neighbour(d.b), 20.0, "A and B as IPv6 PIM neighbours")
    d.b.ctl(
        "add", "--rule-id", "rp", "--input-interface", "pb0", "--input-group", GROUP, "--input-port", str(PORT),
        "--outputs", f"[{GROUP}]:{PORT}:out0",
    )  # fmt: skip
    d.a.ctl(
        "add", "--rule-id", "local", "--input-interface", "rin", "--input-group", GROUP, "--input-port", str(PORT),
        "--input-source", SRC,
    )  # fmt: skip
    wait_for(lambda: d.counters(d.a).get("pim6.dr_register_tunnels") == 1, 10.0, "A's register tunnel")
    (reg,) = [e for e in d.a.ctl("pim", "upstream").doc["PimUpstream"] if e["kind"] == "register"]
    assert (reg["source"], reg["group"], reg["interface"], reg["toward"], reg["state"]) == (
        SRC,
        GROUP,
        "rin",
        B_IP,
        "Join",
    )

    sink = start_sink(d.lab, d.rcv, [(GROUP, PORT)], interface="rcv0", duration=40.0, idle_timeout=30.0)
    d.send(count=20, rate=20)
    a_got = wait_for(
        lambda: (c := d.counters(d.a)).get("pim6.dr_register_stops", 0) >= 1 and c, 20.0, "B's Register-Stop at A"
    )
    assert a_got["pim6.tx_register"] >= 1 and a_got["pim6.dr_register_tunnels"] == 0
    assert a_got.get("pim6.drop_bad_checksum", 0) == 0 and a_got.get("pim6.tx_register_errors", 0) == 0
    b_got = d.counters(d.b)
    assert b_got["pim6.rx_register"] >= 1 and b_got["pim6.tx_register_stop"] == b_got["pim6.rx_register"]
    assert b_got.get("pim6.drop_bad_checksum", 0) == 0
    (reg,) = [e for e in d.a.ctl("pim", "upstream").doc["PimUpstream"] if e["kind"] == "register"]
    assert reg["state"] == "Prune" and 20 <= reg["next_secs"] <= 85

    # B, the RP, joins the registered source's tree toward A; A forwards the stream onto the link to B
    join = wait_for(
        lambda: next(
            (e for e in d.b.ctl("pim", "upstream").doc["PimUpstream"] if e["kind"] == "join" and e["source"] == SRC),
            None,
        ),
        10.0,
        "B's (S,G) Join toward A",
    )
    assert join["interface"] == "pb0" and join["toward"].startswith("fe80:")
    sg = wait_for(
        lambda: next((m for m in d.a.ctl("mroute").doc["Mroute"] if m["entry_type"] == "SG"), None),
        10.0,
        "the (S,G) entry at A from B's Join",
    )
    assert (sg["source"], sg["group"], sg["input_interface"], sg["output_interfaces"]) == (SRC, GROUP, "rin", ["pa0"])
    d.send(count=200, rate=200)
    got = sink.stop()
    stream = got.stream(GROUP, PORT)
    assert stream["unique"] >= 200 and stream["corrupted"] == 0


LAN_SOURCE, X = "fd00:99::5", "fd00:50::9"


def _lan6(netlab: NetLab, *members: tuple[str, str, str]) -> list[str]:
    """A bridge in its own namespace with a member per (namespace, interface, address); the members'
    namespaces, then a receiver's (rcv6), joined to the first member but one (cr0 <-> rcv1)."""
    lan = _ipv6_netns(netlab, "lan6")
    netlab.run(lan, "ip", "link", "add", "br0", "type", "bridge")
    netlab.run(lan, "ip", "link", "set", "br0", "up")
    spaces = []
    for i, (name, ifname, ip) in enumerate(members):
        ns = _ipv6_netns(netlab, name)
        netlab.run(lan, "ip", "link", "add", f"p{i}", "type", "veth", "peer", "name", ifname, "netns", ns)
        netlab.run(lan, "ip", "link", "set", f"p{i}", "master", "br0")
        netlab.run(lan, "ip", "link", "set", f"p{i}", "up")
        netlab.run(ns, "ip", "-6", "addr", "add", f"{ip}/64", "dev", ifname, "nodad")
        netlab.run(ns, "ip", "link", "set", ifname, "up")
        spaces.append(ns)
    rcv = _ipv6_netns(netlab, "rcv6")
    _pair6(netlab, spaces[1], "cr0", "fd00:60::1", rcv, "rcv1", "fd00:60::2")
    return [*spaces, rcv]


def test_a_last_hop_relay_switches_an_ipv6_source_to_its_spt(netlab: NetLab) -> None:
    """SPT switchover over IPv6 at the last hop, on a LAN (a bridge in its own namespace):

        C  c0 fd00:50::3 --+
        B  b0 fd00:50::2 --+-- br0      B: one of ours, the RP; X: a host playing a router that forwards
        X  x0 fd00:50::9 --+            S (fd00:99::5) down the shared tree (our relays re-send from their
                                        own address, so one cannot play it)
    C's rule for any source of G joins the shared tree toward B; S's first packets make C join (S,G), also
    toward B (its only neighbour: the SPT bit at once, nothing pruned), and B takes the Join."""
    b_ns, c_ns, x_ns, rcv = _lan6(netlab, ("sb", "b0", "fd00:50::2"), ("sc", "c0", "fd00:50::3"), ("sx", "x0", X))
    source = LAN_SOURCE
    netlab.run(x_ns, "ip", "-6", "addr", "add", f"{source}/128", "dev", "x0", "nodad")
    rp = "fd00:50::2"
    b, c = Supervisor.start(netlab, b_ns), Supervisor.start(netlab, c_ns)
    for sup, interface in ((b, "b0"), (c, "c0")):
        sup.ctl("pim", "enable", "--interface", interface)
        sup.ctl("pim", "set-rp", "--group", "ff1e::/16", "--rp", rp)
    wait_for(lambda: _v6_neighbour(c), 20.0, "B as C's IPv6 PIM neighbour")
    c.ctl(
        "add", "--rule-id", "last", "--input-interface", "c0", "--input-group", GROUP, "--input-port", str(PORT),
        "--outputs", f"[{GROUP}]:{PORT}:cr0",
    )  # fmt: skip

    def upstream(kind: str, source: str | None) -> dict[str, Any] | None:
        entries = c.ctl("pim", "upstream").doc["PimUpstream"]
        return next((e for e in entries if e["kind"] == kind and e["source"] == source), None)

    def b_entry(kind: str) -> dict[str, Any] | None:
        return next((m for m in b.ctl("mroute").doc["Mroute"] if m["entry_type"] == kind), None)

    star = wait_for(lambda: upstream("join", None), 10.0, "C's (*,G) Join toward the RP")
    assert star["interface"] == "c0" and star["toward"].startswith("fe80:")
    wait_for(lambda: b_entry("StarG"), 10.0, "the (*,G) entry at B, the RP")

    sink = start_sink(netlab, rcv, [(GROUP, PORT)], interface="rcv1", duration=40.0, idle_timeout=30.0)
    argv = generator_argv(GROUP, PORT, source=source, rate=20, size=100, count=20)
    netlab.popen(x_ns, *argv, name="traffic_generator").json(timeout=30)
    spt = wait_for(lambda: upstream("spt", source), 10.0, "C to find the source on the shared tree")
    assert (spt["group"], spt["interface"]) == (GROUP, "c0")
    sg = wait_for(lambda: upstream("join", source), 10.0, "C's (S,G) Join")
    assert sg["interface"] == "c0" and sg["toward"] == star["toward"]  # the same neighbour: B
    settled = wait_for(lambda: (e := upstream("spt", source)) and "SPT bit" in e["state"] and e, 10.0, "the SPT bit")
    assert settled["state"].startswith("settled")
    counters = Lab6.counters(c)
    assert counters["pim6.spt_sources"] == 1 and counters["pim6.spt_bit_set"] == 1
    assert counters.get("pim6.spt_drop_bad_packet", 0) == 0
    entry = wait_for(lambda: b_entry("SG"), 10.0, "C's (S,G) Join at B")
    assert (entry["source"], entry["group"], entry["output_interfaces"]) == (source, GROUP, ["b0"])

    # settled: the source stays on its SPT for the Keepalive period, and the stream is relayed to the receiver
    netlab.popen(x_ns, *generator_argv(GROUP, PORT, source=source, rate=200, size=100, count=200)).json(timeout=30)
    after = upstream("spt", source)
    assert after is not None and after["state"] == settled["state"] and after["next_secs"] > 200  # kept 210 s
    stream = sink.stop().stream(GROUP, PORT)
    assert stream["unique"] == 220 and stream["corrupted"] == 0


def test_with_two_routers_on_the_lan_the_spt_goes_by_the_unicast_route_and_the_source_is_pruned_off_the_rpt(
    netlab: NetLab,
) -> None:
    """RPF' over IPv6 from the unicast routes: C's route toward S goes through A (by its global address, which
    A's Hellos list: RFC 7761's Address List), the RP is B. S arrives on the shared tree (X plays B forwarding
    it), C joins (S,G) toward A; once S comes from A's MAC (A's namespace plays A forwarding it), the SPT bit
    is set and S is pruned off the shared tree: an (S,G,rpt) Prune to B.

        B  b0 fd00:50::2 (RP)   C  c0 fd00:50::3   A  a0 fd00:50::4   X  x0 fd00:50::9   on one bridge"""
    b_ns, c_ns, a_ns, x_ns, _rcv = _lan6(
        netlab, ("sb", "b0", "fd00:50::2"), ("sc", "c0", "fd00:50::3"), ("sa", "a0", "fd00:50::4"), ("sx", "x0", X)
    )
    for ns, ifname in ((x_ns, "x0"), (a_ns, "a0")):
        netlab.run(ns, "ip", "-6", "addr", "add", f"{LAN_SOURCE}/128", "dev", ifname, "nodad")
    netlab.run(c_ns, "ip", "-6", "route", "add", "fd00:99::/64", "via", "fd00:50::4")  # C's route to S: via A
    b, c, a = (Supervisor.start(netlab, ns) for ns in (b_ns, c_ns, a_ns))
    for sup, interface in ((b, "b0"), (c, "c0"), (a, "a0")):
        sup.ctl("pim", "enable", "--interface", interface)
        sup.ctl("pim", "set-rp", "--group", "ff1e::/16", "--rp", "fd00:50::2")

    def neighbours(sup: Supervisor) -> set[str]:
        """The IPv6 neighbours' (link-local) addresses."""
        return {n["address"] for n in sup.ctl("pim", "neighbors").doc["PimNeighbors"] if ":" in n["address"]}

    for sup, who in ((c, "A and B as C's"), (a, "B and C as A's")):
        wait_for(lambda sup=sup: len(neighbours(sup)) == 2, 20.0, f"{who} IPv6 neighbours")
    (b_ll,) = neighbours(a) & neighbours(c)  # the one both see (neither sees itself)
    (a_ll,) = neighbours(c) - {b_ll}
    c.ctl(
        "add", "--rule-id", "last", "--input-interface", "c0", "--input-group", GROUP, "--input-port", str(PORT),
        "--outputs", f"[{GROUP}]:{PORT}:cr0",
    )  # fmt: skip

    def upstream(kind: str, source: str | None) -> dict[str, Any] | None:
        entries = c.ctl("pim", "upstream").doc["PimUpstream"]
        return next((e for e in entries if e["kind"] == kind and e["source"] == source), None)

    star = wait_for(lambda: upstream("join", None), 10.0, "C's (*,G) Join toward the RP")
    assert star["toward"] == b_ll  # the RP's global address is B's: matched through B's Address List
    for ns in (x_ns, a_ns):  # first down the shared tree (X's MAC), then down the SPT (A's MAC)
        argv = generator_argv(GROUP, PORT, source=LAN_SOURCE, rate=20, size=100, count=10)
        netlab.popen(ns, *argv, name="traffic_generator").json(timeout=30)
        if ns == x_ns:
            sg = wait_for(lambda: upstream("join", LAN_SOURCE), 10.0, "C's (S,G) Join")
            assert sg["toward"] == a_ll  # the next hop of C's route toward S, by its global address
    prune = wait_for(lambda: upstream("rpt_prune", LAN_SOURCE), 10.0, "C's (S,G,rpt) Prune")
    assert prune["toward"] == b_ll and prune["interface"] == "c0"
    counters = Lab6.counters(c)
    assert counters["pim6.spt_bit_set"] == 1 and counters.get("pim6.spt_unconfirmed", 0) == 0
    entry = wait_for(
        lambda: next((m for m in a.ctl("mroute").doc["Mroute"] if m["entry_type"] == "SG"), None),
        10.0,
        "C's (S,G) Join at A",
    )
    assert (entry["source"], entry["group"]) == (LAN_SOURCE, GROUP)


def test_frr_pim6d_as_the_ipv6_rp() -> None:
    """Against FRR's pim6d (Register, Register-Stop and Joins over IPv6), where the installed FRR ships it."""
    if not (FRR_LIBDIR / "pim6d").exists():
        pytest.skip(
            f"FRR's pim6d is not installed ({FRR_LIBDIR / 'pim6d'} missing: Debian's frr 8.4 package does not ship"
            " it); IPv6 Register and SPT are tested between two of our relays only"
        )
    pytest.skip("an FRR with pim6d is installed, but no test drives it yet")
