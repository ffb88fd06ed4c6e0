"""PIM-SM against FRR's pimd on one link: adjacency seen from both sides, DR election, neighbour loss.

    MCR  pim0 10.210.0.1/24  <->  frr0 10.210.0.2/24  FRR (zebra + pimd)

Our side is the real supervisor driven by `control_client pim ...`; FRR's side is read with vtysh.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.frr import FrrRouter, frr_skip_reason
from tests.e2e.netns import NetLab, Proc, wait_for
from tests.e2e.relay import Supervisor, generator_argv, socket_dir, start_sink

pytestmark = pytest.mark.slow
PIM_PEER = Path(__file__).with_name("pim_peer.py")

OURS, THEIRS = "10.210.0.1", "10.210.0.2"
OUR_IF, FRR_IF = "pim0", "frr0"


@dataclass
class Link:
    lab: NetLab
    mcr_ns: str
    frr_ns: str
    sup: Supervisor

    def frr(self, pim_lines: str = "") -> FrrRouter:
        return FrrRouter.start(self.lab, self.frr_ns, f"interface {FRR_IF}\n ip pim\n{pim_lines}!\n")

    def our_neighbors(self) -> list[dict[str, Any]]:
        return list(self.sup.ctl("pim", "neighbors").doc["PimNeighbors"])

    def our_neighbor(self, address: str) -> dict[str, Any] | None:
        return next((n for n in self.our_neighbors() if n["address"] == address), None)


@pytest.fixture
def link(netlab: NetLab) -> Iterator[Link]:
    reason = frr_skip_reason()
    if reason:
        pytest.skip(reason)
    mcr_ns, frr_ns = netlab.add_netns("mcr"), netlab.add_netns("frr")
    netlab.run(mcr_ns, "ip", "link", "add", OUR_IF, "type", "veth", "peer", "name", FRR_IF, "netns", frr_ns)
    for ns, name, ip in ((mcr_ns, OUR_IF, OURS), (frr_ns, FRR_IF, THEIRS)):
        netlab.run(ns, "ip", "addr", "add", f"{ip}/24", "dev", name)
        netlab.run(ns, "ip", "link", "set", "dev", name, "up")
    sup = Supervisor.start(netlab, mcr_ns)
    yield Link(netlab, mcr_ns, frr_ns, sup)


def test_adjacency_from_both_sides_and_dr_by_address_then_priority(link: Link) -> None:
    frr = link.frr()
    out = link.sup.ctl("pim", "enable", "--interface", OUR_IF).doc
    assert out == {"Success": f"PIM enabled on {OUR_IF} with DR priority 1"}

    theirs = wait_for(lambda: link.our_neighbor(THEIRS), 40.0, "FRR as our PIM neighbour")
    assert theirs["interface"] == OUR_IF and theirs["dr_priority"] == 1 and theirs["source"] == "PimHello"
    assert isinstance(theirs["generation_id"], int) and 90 <= theirs["expires_in_secs"] <= 105
    ours = wait_for(lambda: frr.pim_neighbors(FRR_IF).get(OURS), 40.0, "us as FRR's PIM neighbour")
    assert ours["drPriority"] == 1 and ours["holdTimeMax"] == 105

    # equal priorities: the higher address (FRR's) is DR, on both sides
    assert frr.pim_dr(FRR_IF) == THEIRS
    assert wait_for(lambda: link.our_neighbor(THEIRS), 5.0, "neighbour")["is_dr"] is True

    # a higher priority wins over the higher address; the change goes out at once (no 30 s wait)
    link.sup.ctl("pim", "enable", "--interface", OUR_IF, "--dr-priority", "10")
    wait_for(lambda: frr.pim_dr(FRR_IF) == OURS, 5.0, "FRR to elect us DR by priority")
    assert frr.pim_neighbors(FRR_IF)[OURS]["drPriority"] == 10
    assert link.our_neighbor(THEIRS)["is_dr"] is False  # type: ignore[index]

    human = link.sup.ctl("pim", "neighbors", json_out=False).stdout
    assert THEIRS in human and OUR_IF in human

    # our own interfaces: this one running and DR; one that does not exist waits
    link.sup.ctl("pim", "enable", "--interface", "pimx0")
    running, waiting = sorted(link.sup.ctl("pim", "interfaces").doc["PimInterfaces"], key=lambda i: i["name"])
    assert (running["name"], running["state"], running["address"], running["dr"]) == (OUR_IF, "running", OURS, OURS)
    assert running["is_dr"] is True and running["dr_priority"] == 10 and running["neighbors"] == 1
    assert (waiting["name"], waiting["state"], waiting["address"]) == ("pimx0", "waiting", None)


def test_frr_priority_wins_and_pim_comes_from_the_config_file(netlab: NetLab, link: Link) -> None:
    frr = link.frr(" ip pim drpriority 50\n")
    config = netlab.workdir / "mcr.toml"
    config.write_text(f'[pim]\ninterfaces = [{{ name = "{OUR_IF}", dr_priority = 7 }}]\n')
    link.sup.terminate()
    link.sup = Supervisor.start(netlab, link.mcr_ns, extra=["--config", str(config)])
    theirs = wait_for(lambda: link.our_neighbor(THEIRS), 40.0, "FRR as our PIM neighbour")
    assert theirs["dr_priority"] == 50 and theirs["is_dr"] is True
    ours = wait_for(lambda: frr.pim_neighbors(FRR_IF).get(OURS), 40.0, "us as FRR's neighbour")
    assert ours["drPriority"] == 7 and frr.pim_dr(FRR_IF) == THEIRS


def test_goodbye_and_neighbour_expiry(link: Link) -> None:
    frr = link.frr(" ip pim hello 1 4\n")  # Hellos every second, holdtime 4 s
    link.sup.ctl("pim", "enable", "--interface", OUR_IF)
    wait_for(lambda: link.our_neighbor(THEIRS), 40.0, "FRR as our PIM neighbour")
    wait_for(lambda: frr.pim_neighbors(FRR_IF).get(OURS), 40.0, "us as FRR's neighbour")

    # our Goodbye (holdtime 0) takes us off FRR's table at once, not after our 105 s holdtime
    assert link.sup.ctl("pim", "disable", "--interface", OUR_IF).doc == {"Success": f"PIM disabled on {OUR_IF}"}
    wait_for(lambda: OURS not in frr.pim_neighbors(FRR_IF), 5.0, "FRR to drop us on our Goodbye")
    assert link.our_neighbors() == []
    err = link.sup.ctl("pim", "disable", "--interface", OUR_IF, check=False)
    assert err.returncode == 1 and f"PIM is not enabled on {OUR_IF}" in err.stderr

    # FRR dies without a Goodbye: its neighbour entry expires after the 4 s it announced
    link.sup.ctl("pim", "enable", "--interface", OUR_IF)
    wait_for(lambda: link.our_neighbor(THEIRS), 40.0, "FRR as our PIM neighbour again")
    frr.pimd.signal(signal.SIGKILL)
    wait_for(lambda: link.our_neighbor(THEIRS) is None, 8.0, "FRR's neighbour entry to expire")


_GARBAGE = """
import socket, struct, sys
from mcr.routing.pim_wire import Hello, build_pim, ones_complement_sum
def fix(raw):
    b = bytearray(raw); b[2:4] = b"\\0\\0"
    struct.pack_into("!H", b, 2, 0xFFFF - ones_complement_sum(bytes(b)))
    return bytes(b)
bad_sum = bytearray(build_pim(Hello(105, 1, 1))); bad_sum[-1] ^= 0xFF
messages = [bytes(bad_sum), b"\\x20\\x00", fix(b"\\x10\\x00\\x00\\x00"), fix(b"\\x24\\x00\\x00\\x00"),
            fix(b"\\x23\\x00\\x00\\x00\\x09\\x00\\x0a\\x00\\x00\\x01\\x00\\x00\\x00\\xd2")]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 103)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))
for m in messages:
    s.sendto(m, ("224.0.0.13", 0))
"""


def test_malformed_pim_is_counted_by_reason_and_changes_nothing(link: Link) -> None:
    frr = link.frr()
    link.sup.ctl("pim", "enable", "--interface", OUR_IF)
    wait_for(lambda: link.our_neighbor(THEIRS), 40.0, "FRR as our PIM neighbour")
    wait_for(lambda: frr.pim_neighbors(FRR_IF).get(OURS), 40.0, "us as FRR's neighbour")  # both sides, before
    link.lab.run(link.frr_ns, sys.executable, "-c", _GARBAGE, THEIRS)

    def counters() -> dict[str, int]:
        return dict(link.sup.ctl("pim", "counters").doc["RoutingCounters"])

    expected = {
        "pim.drop_bad_checksum": 1,
        "pim.drop_truncated": 1,
        "pim.drop_bad_version": 1,
        "pim.drop_unsupported_type": 1,
        "pim.drop_bad_address": 1,
    }
    got = wait_for(
        lambda: (c := counters()) and all(c.get(k) == v for k, v in expected.items()) and c,
        10.0,
        "the drops counted by reason",
    )
    assert got["pim.rx_hello"] >= 1 and got["pim.neighbors"] == 1
    assert link.our_neighbor(THEIRS) is not None and frr.pim_neighbors(FRR_IF).get(OURS) is not None
    assert "pim.rx_hello" in link.sup.ctl("pim", "counters", json_out=False).stdout


# ------------------------------------------------------------------------------------------ Join/Prune

GROUP, PORT = "239.1.2.3", 5000


@dataclass
class Routed:
    """SRC -> MCR (the RP) -> FRR -> receiver host:

    SRC src0 10.200.1.2 <-> rin 10.200.9.1  MCR  pim0 10.210.0.1 <-> frr0 10.210.0.2  FRR  lan0 10.220.0.1
        <-> rcv0 10.220.0.2  RCV
    """

    lab: NetLab
    src: str
    mcr: str
    frr_ns: str
    rcv: str
    sup: Supervisor
    frr: FrrRouter

    def mroute(self) -> list[dict[str, Any]]:
        return list(self.sup.ctl("mroute").doc["Mroute"])

    def peer(self, action: str, duration: float) -> Proc:
        """A PIM router on FRR's LAN (pim_peer.py) that joins or prunes GROUP toward FRR."""
        argv = [sys.executable, str(PIM_PEER), "--ifname", "rcv0", "--local", "10.220.0.2"]
        argv += ["--upstream", "10.220.0.1", "--group", GROUP, "--rp", OURS, "--action", action]
        return self.lab.popen(self.rcv, *argv, "--duration", str(duration), name=f"pim-peer-{action}")

    def star_g(self) -> dict[str, Any] | None:
        return next((m for m in self.mroute() if m["entry_type"] == "StarG" and m["group"] == GROUP), None)


def _pair(lab: NetLab, ns_a: str, if_a: str, ip_a: str, ns_b: str, if_b: str, ip_b: str) -> None:
    lab.run(ns_a, "ip", "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
    for ns, name, ip in ((ns_a, if_a, ip_a), (ns_b, if_b, ip_b)):
        lab.run(ns, "ip", "addr", "add", f"{ip}/24", "dev", name)
        lab.run(ns, "ip", "link", "set", "dev", name, "up")


@pytest.fixture
def routed(netlab: NetLab) -> Iterator[Routed]:
    reason = frr_skip_reason()
    if reason:
        pytest.skip(reason)
    src, mcr, frr_ns, rcv = (netlab.add_netns(r) for r in ("src", "mcr", "frr", "rcv"))
    _pair(netlab, src, "src0", "10.200.1.2", mcr, "rin", "10.200.9.1")
    _pair(netlab, mcr, OUR_IF, OURS, frr_ns, FRR_IF, THEIRS)
    _pair(netlab, frr_ns, "lan0", "10.220.0.1", rcv, "rcv0", "10.220.0.2")
    netlab.run(rcv, "ip", "route", "add", "default", "via", "10.220.0.1")
    frr = FrrRouter.start(
        netlab,
        frr_ns,
        f"ip pim rp {OURS} 239.0.0.0/8\ninterface {FRR_IF}\n ip pim\n!\ninterface lan0\n ip pim\n ip igmp\n!\n",
    )
    sup = Supervisor.start(netlab, mcr)
    yield Routed(netlab, src, mcr, frr_ns, rcv, sup, frr)


def test_receiver_behind_frr_joins_through_frr_and_gets_the_stream_relayed_to_frr(routed: Routed) -> None:
    r = routed
    r.sup.ctl("pim", "enable", "--interface", OUR_IF)
    assert r.sup.ctl("pim", "set-rp", "--group", "239.0.0.0/8", "--rp", OURS).doc == {
        "Success": f"Static RP {OURS} set for 239.0.0.0/8"
    }
    # the stream enters on rin; the rule has no outputs of its own: PIM gives it its downstream interfaces
    r.sup.ctl("add", "--rule-id", "feed", "--input-interface", "rin", "--input-group", GROUP, "--input-port", str(PORT))
    wait_for(lambda: r.frr.pim_neighbors(FRR_IF).get(OURS), 40.0, "FRR to see us as neighbour")

    # a router behind FRR joins the shared tree; FRR propagates it as a (*,G) Join to us, its RPF neighbour
    # toward the RP (a host's IGMP join cannot be used: FRR reads IGMP through the mroute socket, which
    # this kernel, without CONFIG_IP_MROUTE, does not have)
    joiner = r.peer("join", duration=120.0)
    entry = wait_for(r.star_g, 30.0, "a (*,G) entry from FRR's Join")
    assert entry["output_interfaces"] == [OUR_IF] and entry["input_interface"] == "rin" and entry["source"] is None
    (rule,) = r.sup.rules()
    assert [(o["group"], o["port"], o["interface"]) for o in rule["outputs"]] == [(GROUP, PORT, OUR_IF)]
    assert GROUP in r.frr.json("show ip pim upstream json")

    # the stream is relayed onto the link toward FRR (FRR itself cannot forward on this kernel: no
    # CONFIG_IP_MROUTE, so the host behind it is not checked for data)
    on_link = start_sink(r.lab, r.frr_ns, [(GROUP, PORT)], interface=FRR_IF, expect=200, duration=30.0)
    argv = generator_argv(GROUP, PORT, source="10.200.1.2", rate=200, size=200, count=200)
    r.lab.popen(r.src, *argv, name="traffic_generator").json(timeout=30)
    got = on_link.report()
    assert got.stream(GROUP, PORT)["unique"] == 200 and got.stream(GROUP, PORT)["corrupted"] == 0

    # Asserts on FRR's link: a worse one gets our Assert back (we are the RP: RPT, preference 0, metric 0);
    # a better one (SPT) makes us stop sending there
    def counter(name: str) -> int:
        return int(r.sup.ctl("pim", "counters").doc["RoutingCounters"].get(name, 0))

    def assert_from_lan(*extra: str) -> None:
        argv = [sys.executable, str(PIM_PEER), "--ifname", FRR_IF, "--local", THEIRS, "--upstream", OURS]
        r.lab.run(
            r.frr_ns, *argv, "--group", GROUP, "--rp", OURS, "--action", "assert", "--source", "10.200.1.2", *extra
        )

    assert_from_lan("--rpt", "--preference", "100", "--metric", "10")
    wait_for(lambda: counter("pim.tx_assert") == 1, 10.0, "our Assert in reply to a worse one")
    assert [o["interface"] for o in r.sup.rules()[0]["outputs"]] == [OUR_IF]
    assert_from_lan("--preference", "100", "--metric", "10")
    wait_for(lambda: r.sup.rules()[0]["outputs"] == [], 10.0, "the output to go when we lose the Assert")
    assert counter("pim.asserts_lost") == 1
    assert_from_lan("--rpt", "--preference", str(0x7FFFFFFF), "--metric", str(0xFFFFFFFF))  # AssertCancel
    wait_for(lambda: len(r.sup.rules()[0]["outputs"]) == 1, 10.0, "the output back on the winner's AssertCancel")

    # the router behind FRR prunes: FRR prunes (*,G) toward us and, after the override interval, the output goes
    joiner.stop()
    r.peer("prune", duration=3.0).wait(10)
    wait_for(lambda: r.star_g() is None, 40.0, "the (*,G) entry to go on FRR's Prune")
    (rule,) = r.sup.rules()
    assert rule["outputs"] == []


def test_join_for_another_upstream_neighbour_is_not_acted_on(routed: Routed) -> None:
    r = routed
    r.sup.ctl("pim", "enable", "--interface", OUR_IF)
    wait_for(lambda: r.frr.pim_neighbors(FRR_IF).get(OURS), 40.0, "FRR to see us as neighbour")
    # a Join/Prune on the link addressed to another upstream neighbour changes nothing; one to us does
    for upstream, group in (("10.210.0.99", GROUP), (OURS, "239.7.7.7")):
        argv = [sys.executable, str(PIM_PEER), "--ifname", FRR_IF, "--local", THEIRS, "--upstream", upstream]
        argv += ["--group", group, "--rp", OURS, "--action", "join", "--no-hello", "--duration", "0.2"]
        r.lab.run(r.frr_ns, *argv)
    wait_for(lambda: any(m["group"] == "239.7.7.7" for m in r.mroute()), 10.0, "the Join addressed to us")
    assert not any(m["group"] == GROUP and m["entry_type"] == "StarG" for m in r.mroute())


def test_our_rule_joins_the_shared_tree_toward_frr_as_rp_and_prunes_when_removed(link: Link) -> None:
    frr = link.frr(f"!\nip pim rp {THEIRS} 239.0.0.0/8\n")
    link.sup.ctl("pim", "enable", "--interface", OUR_IF)
    link.sup.ctl("pim", "set-rp", "--group", "239.0.0.0/8", "--rp", THEIRS)
    wait_for(lambda: link.our_neighbor(THEIRS), 40.0, "FRR as our PIM neighbour")
    wait_for(lambda: frr.pim_neighbors(FRR_IF).get(OURS), 40.0, "us as FRR's neighbour")

    # a rule capturing 239.5.5.5 on our PIM interface wants the stream there: a (*,G) Join to FRR, the RP
    link.sup.ctl(
        "add", "--rule-id", "pull", "--input-interface", OUR_IF, "--input-group", "239.5.5.5", "--input-port", "5000"
    )

    def frr_join() -> dict[str, Any] | None:
        return frr.json("show ip pim join json").get(FRR_IF, {}).get("239.5.5.5", {}).get("*")

    joined = wait_for(frr_join, 10.0, "FRR's (*,G) join state from our Join")
    assert joined["channelJoinName"] == "JOIN", joined

    # the rule goes: a Prune, and FRR's join state goes with it (FRR's prune-pending wait included)
    link.sup.ctl("remove", "--rule-id", "pull")

    def pruned() -> bool:
        state = frr_join()
        return state is None or state["channelJoinName"] == "NOINFO"  # FRR keeps the entry a while, with no state

    wait_for(pruned, 10.0, "FRR to drop the (*,G) join on our Prune")


# ----------------------------------------------------------------------------------------------- MSDP


def msdp_peer(link: Link, address: str) -> dict[str, Any] | None:
    return next((p for p in link.sup.ctl("msdp", "peers").doc["MsdpPeers"] if p["address"] == address), None)


def test_msdp_session_with_frr_we_connect_from_the_lower_address_and_our_sa_reaches_frr(link: Link) -> None:
    frr = link.frr(f"!\nip msdp peer {OURS} source {THEIRS}\n")
    out = link.sup.ctl("msdp", "add-peer", "--address", THEIRS, "--description", "frr").doc
    assert out == {"Success": f"MSDP peer {THEIRS} added (connecting from {OURS})"}
    ours = wait_for(
        lambda: (p := msdp_peer(link, THEIRS)) and p["state"] == "established" and p, 45.0, "the MSDP session"
    )
    assert ours["is_active"] is True and ours["description"] == "frr"
    theirs = wait_for(
        lambda: frr.json("show ip msdp peer json").get(OURS, {}).get("state") == "established", 10.0, "FRR's view"
    )
    assert theirs

    # we are RP for 239/8 and a rule declares a source: it goes out as an SA, and FRR caches it
    link.sup.ctl("pim", "set-rp", "--group", "239.0.0.0/8", "--rp", OURS)
    link.sup.ctl(
        "add",
        "--input-interface",
        OUR_IF,
        "--input-group",
        "239.1.2.3",
        "--input-port",
        "5000",
        "--input-source",
        "10.200.1.2",
    )

    def frr_has_sa() -> bool:
        doc = frr.json("show ip msdp sa json")
        entry = doc.get("239.1.2.3", {}).get("10.200.1.2")
        return bool(entry) and entry.get("rp") == OURS

    wait_for(frr_has_sa, 70.0, "our SA in FRR's SA cache")
    (local,) = link.sup.ctl("msdp", "sa-cache").doc["MsdpSaCache"]
    assert local == {
        "source": "10.200.1.2",
        "group": "239.1.2.3",
        "origin_rp": OURS,
        "learned_from": None,
        "age_secs": 0,
        "expires_in_secs": 0,
        "is_local": True,
    }
    assert msdp_peer(link, THEIRS)["sa_sent"] >= 1  # type: ignore[index]

    # removing the peer ends the session on both sides
    link.sup.ctl("msdp", "remove-peer", "--address", THEIRS)
    wait_for(lambda: frr.json("show ip msdp peer json").get(OURS, {}).get("state") != "established", 10.0, "FRR down")
    assert link.sup.ctl("msdp", "peers").doc == {"MsdpPeers": []}


def test_a_source_registered_with_us_as_rp_is_stopped_and_announced_to_frr_by_msdp(link: Link) -> None:
    frr = link.frr(f"!\nip msdp peer {OURS} source {THEIRS}\n")
    link.sup.ctl("pim", "enable", "--interface", OUR_IF)
    link.sup.ctl("pim", "set-rp", "--group", "239.0.0.0/8", "--rp", OURS)
    link.sup.ctl("msdp", "add-peer", "--address", THEIRS)
    wait_for(lambda: (p := msdp_peer(link, THEIRS)) and p["state"] == "established", 45.0, "the MSDP session")

    # a DR on the link registers source 10.77.0.7 sending to 239.4.4.4 with us, the RP
    argv = [sys.executable, str(PIM_PEER), "--ifname", FRR_IF, "--local", THEIRS, "--upstream", OURS]
    argv += ["--group", "239.4.4.4", "--rp", OURS, "--action", "register", "--source", "10.77.0.7", "--duration", "10"]
    reply = link.lab.popen(link.frr_ns, *argv, name="pim-dr").json(timeout=20)
    assert reply == {"register_stop": {"group": "239.4.4.4", "source": "10.77.0.7"}}

    # we announce the registered source by MSDP, as its RP
    local = [e for e in link.sup.ctl("msdp", "sa-cache").doc["MsdpSaCache"] if e["is_local"]]
    assert [(e["source"], e["group"], e["origin_rp"]) for e in local] == [("10.77.0.7", "239.4.4.4", OURS)]

    def frr_has_sa() -> bool:
        entry = frr.json("show ip msdp sa json").get("239.4.4.4", {}).get("10.77.0.7")
        return bool(entry) and entry.get("rp") == OURS

    wait_for(frr_has_sa, 10.0, "the registered source in FRR's SA cache")


def test_msdp_frr_connects_when_its_address_is_lower_peer_from_the_config_file(netlab: NetLab, link: Link) -> None:
    low, high = "10.211.0.3", "10.211.0.9"  # FRR is the lower address here: it connects, we listen
    link.lab.run(link.mcr_ns, "ip", "addr", "add", f"{high}/24", "dev", OUR_IF)
    link.lab.run(link.frr_ns, "ip", "addr", "add", f"{low}/24", "dev", FRR_IF)
    config = netlab.workdir / "mcr.toml"
    config.write_text(f'[msdp]\npeers = [{{ address = "{low}", description = "frr" }}]\n')
    link.sup.terminate()
    link.sup = Supervisor.start(netlab, link.mcr_ns, extra=["--config", str(config)])
    frr = link.frr(f"!\nip msdp timers 30 75 1\nip msdp peer {high} source {low}\n")  # retry every 1 s
    peer = wait_for(lambda: (p := msdp_peer(link, low)) and p["state"] == "established" and p, 45.0, "FRR to connect")
    assert peer["is_active"] is False and peer["description"] == "frr"
    assert frr.json("show ip msdp peer json")[high]["state"] == "established"


# ------------------------------------------------------------------------------ the original's mcrctl

ORIGINAL_BIN = Path(os.environ.get("MCR_ORIGINAL_BIN", "/tmp/rustmcr/bin"))


def test_the_originals_mcrctl_drives_our_pim_and_msdp(link: Link) -> None:
    mcrctl = ORIGINAL_BIN / "mcrctl"
    if not os.access(mcrctl, os.X_OK):
        pytest.skip(f"the original MCR's mcrctl is not built at {mcrctl} (set MCR_ORIGINAL_BIN)")

    def run(*args: str) -> Any:
        r = link.lab.run(None, str(mcrctl), "--socket-path", str(link.sup.socket_path), *args, check=False)
        assert r.returncode == 0, f"mcrctl {' '.join(args)} exited {r.returncode}: {r.stderr} {r.stdout}"
        return json.loads(r.stdout)

    frr = link.frr(f"!\nip msdp peer {OURS} source {THEIRS}\n")
    assert run("pim", "enable", "--interface", OUR_IF, "--dr-priority", "5") == {
        "Success": f"PIM enabled on {OUR_IF} with DR priority 5"
    }
    wait_for(lambda: frr.pim_neighbors(FRR_IF).get(OURS), 40.0, "us as FRR's neighbour")
    theirs = wait_for(lambda: run("pim", "neighbors")["PimNeighbors"], 40.0, "mcrctl pim neighbors")
    assert [(n["address"], n["interface"], n["is_dr"], n["source"]) for n in theirs] == [
        (THEIRS, OUR_IF, False, "PimHello")  # our priority 5 beats FRR's 1: we are DR
    ]
    refused = link.lab.run(
        None,
        str(mcrctl),
        "--socket-path",
        str(link.sup.socket_path),
        "pim",
        "set-rp-address",
        "--address",
        "10.9.9.9",
        check=False,
    )
    assert "10.9.9.9 is not an address of this router" in refused.stdout
    assert run("pim", "set-rp-address", "--address", OURS) == {
        "Success": f"This router is the RP at {OURS} for 224.0.0.0/4 (more specific static RPs win)"
    }
    link.sup.ctl(
        "add",
        "--rule-id",
        "s",
        "--input-interface",
        OUR_IF,
        "--input-group",
        "239.6.6.6",
        "--input-port",
        "5000",
        "--input-source",
        "10.200.1.2",
    )
    (route,) = run("mroute")["Mroute"]
    assert (route["group"], route["source"], route["entry_type"]) == ("239.6.6.6", "10.200.1.2", "Static")

    assert run("msdp", "add-peer", "--address", THEIRS, "--description", "frr") == {
        "Success": f"MSDP peer {THEIRS} added (connecting from {OURS})"
    }
    peer = wait_for(
        lambda: next((p for p in run("msdp", "peers")["MsdpPeers"] if p["state"] == "established"), None),
        45.0,
        "mcrctl msdp peers: established",
    )
    assert (peer["address"], peer["description"], peer["is_active"]) == (THEIRS, "frr", True)
    (sa,) = run("msdp", "sa-cache")["MsdpSaCache"]
    assert (sa["source"], sa["group"], sa["origin_rp"], sa["is_local"]) == ("10.200.1.2", "239.6.6.6", OURS, True)
    assert run("msdp", "clear-sa-cache") == {"Success": "MSDP SA cache cleared (0 entries)"}
    assert run("msdp", "remove-peer", "--address", THEIRS) == {"Success": f"MSDP peer {THEIRS} removed"}
    assert run("pim", "disable", "--interface", OUR_IF) == {"Success": f"PIM disabled on {OUR_IF}"}
    wait_for(lambda: OURS not in frr.pim_neighbors(FRR_IF), 5.0, "FRR to drop us on our Goodbye")


def test_the_originals_mcrd_as_pim_neighbour(link: Link) -> None:
    mcrd = ORIGINAL_BIN / "mcrd"
    if not os.access(mcrd, os.X_OK):
        pytest.skip(f"the original MCR's mcrd is not built at {mcrd} (set MCR_ORIGINAL_BIN)")
    directory = link.lab.track_dir(socket_dir())
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "original.json5"
    interface = f'{{ name: "{FRR_IF}", dr_priority: 3, hello_period: 2 }}'
    config.write_text(f"{{ rules: [], pim: {{ enabled: true, interfaces: [ {interface} ] }} }}")
    sock = directory / "original.sock"
    argv = [str(mcrd), "supervisor", "--config", str(config), "--control-socket-path", str(sock)]
    link.lab.popen(link.frr_ns, *argv, "--interface", FRR_IF, "--num-workers", "1", name="original-mcrd")

    def theirs() -> list[dict[str, Any]]:
        r = link.lab.run(
            None, str(ORIGINAL_BIN / "mcrctl"), "--socket-path", str(sock), "pim", "neighbors", check=False
        )
        return list(json.loads(r.stdout)["PimNeighbors"]) if r.returncode == 0 else []

    link.sup.ctl("pim", "enable", "--interface", OUR_IF)
    ours = wait_for(lambda: link.our_neighbor(THEIRS), 40.0, "the original as our PIM neighbour")
    assert ours["dr_priority"] == 3 and ours["is_dr"] is True  # its priority 3 beats our 1
    (seen,) = wait_for(theirs, 40.0, "us as the original's PIM neighbour")
    assert (seen["address"], seen["dr_priority"], seen["is_dr"]) == (OURS, 1, False)


# ------------------------------------------------------------------------------------------------ IPv6


def test_pim_over_ipv6_between_two_of_ours(netlab: NetLab) -> None:
    """PIM over IPv6 (link-local Hellos to ff02::d, the kernel's checksums) with the same cores: two of our
    supervisors (FRR 8.4 has no pim6d) see each other and elect the same DR."""
    a_ns, b_ns = netlab.add_netns("p6a"), netlab.add_netns("p6b")
    for ns in (a_ns, b_ns):
        for key in ("all", "default"):
            netlab.run(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=0")
            netlab.run(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0")
    netlab.run(a_ns, "ip", "link", "add", "p6a0", "type", "veth", "peer", "name", "p6b0", "netns", b_ns)
    for ns, name in ((a_ns, "p6a0"), (b_ns, "p6b0")):
        netlab.run(ns, "ip", "link", "set", "dev", name, "up")
    a, b = Supervisor.start(netlab, a_ns), Supervisor.start(netlab, b_ns)
    a.ctl("pim", "enable", "--interface", "p6a0")
    b.ctl("pim", "enable", "--interface", "p6b0", "--dr-priority", "5")

    def v6_neighbour(sup: Supervisor) -> dict[str, Any] | None:
        return next((n for n in sup.ctl("pim", "neighbors").doc["PimNeighbors"] if ":" in n["address"]), None)

    seen_by_a = wait_for(lambda: v6_neighbour(a), 20.0, "b as a's IPv6 PIM neighbour")
    seen_by_b = wait_for(lambda: v6_neighbour(b), 20.0, "a as b's IPv6 PIM neighbour")
    assert seen_by_a["address"].startswith("fe80:") and seen_by_a["dr_priority"] == 5 and seen_by_a["is_dr"]
    assert seen_by_b["dr_priority"] == 1 and seen_by_b["is_dr"] is False
    rows = [i for i in b.ctl("pim", "interfaces").doc["PimInterfaces"] if i["state"] == "running"]
    v6 = next(i for i in rows if i["address"] and ":" in i["address"])
    assert v6["is_dr"] is True and v6["neighbors"] == 1
    assert a.ctl("pim", "counters").doc["RoutingCounters"]["pim6.rx_hello"] >= 1
