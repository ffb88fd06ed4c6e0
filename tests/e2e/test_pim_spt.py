"""Last-hop SPT switchover on a shared LAN with two PIM routers (our test peer, pim_peer.py, recording what
it hears):

    MCR lan0 10.240.0.1 --+
    A   a0   10.240.0.2 --+-- br0 (in its own namespace)     A: the RP; B: the next hop toward S
    B   b0   10.240.0.3 --+

Our rule for any source of G on lan0 joins the shared tree toward A. When S (10.99.0.5, routed via B)
shows up on it (A forwards S's packets: they come from A's MAC), we join (S,G) toward B; once S's packets
come from B (the SPT), we prune S off the shared tree with an (S,G,rpt) Prune to A.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.frr import FrrRouter, frr_skip_reason
from tests.e2e.netns import NetLab, Proc, wait_for
from tests.e2e.relay import Supervisor, generator_argv

pytestmark = pytest.mark.slow
PIM_PEER = Path(__file__).with_name("pim_peer.py")

OURS, A, B = "10.240.0.1", "10.240.0.2", "10.240.0.3"
S, GROUP, PORT = "10.99.0.5", "239.8.8.8", 5000


@dataclass
class Lan:
    lab: NetLab
    mcr: str
    a: str
    b: str
    sup: Supervisor
    records: dict[str, Path]
    listeners: dict[str, Proc] = field(default_factory=dict)

    def listen(self, ns: str, ifname: str, local: str, name: str) -> Proc:
        argv = [sys.executable, str(PIM_PEER), "--ifname", ifname, "--local", local, "--upstream", OURS]
        argv += ["--group", GROUP, "--rp", A, "--action", "listen", "--record", str(self.records[name])]
        self.listeners[name] = self.lab.popen(ns, *argv, "--duration", "90", name=f"pim-peer-{name}")
        return self.listeners[name]

    def heard(self, name: str) -> list[dict[str, Any]]:
        path = self.records[name]
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def entries(self, name: str, kind: str, source: str, upstream: str) -> list[dict[str, Any]]:
        """The group records for GROUP heard by `name`, from us, to `upstream`, listing `source` in `kind`."""
        return [
            g
            for m in self.heard(name)
            if m["from"] == OURS and m["upstream"] == upstream
            for g in m["groups"]
            if g["group"] == GROUP and any(s[0] == source for s in g[kind])
        ]

    def send_from(self, ns: str, count: int = 20) -> None:
        argv = generator_argv(GROUP, PORT, source=S, rate=20, size=100, count=count)
        self.lab.popen(ns, *argv, name="traffic_generator").json(timeout=30)

    def counters(self) -> dict[str, int]:
        return dict(self.sup.ctl("pim", "counters").doc["RoutingCounters"])


def start_lan(netlab: NetLab, config: str | None = None, host: str | None = None) -> Lan:
    """The LAN; `host`: a fourth namespace on it, x0 10.240.0.9 (with S's address too)."""
    lan, mcr, a, b = (netlab.add_netns(r) for r in ("lan", "mcr", "a", "b"))
    netlab.run(lan, "ip", "link", "add", "br0", "type", "bridge")
    netlab.run(lan, "ip", "link", "set", "br0", "up")
    members = [(mcr, "lan0", "pm", OURS), (a, "a0", "pa", A), (b, "b0", "pb", B)]
    if host is not None:
        members.append((host, "x0", "px", "10.240.0.9"))
    for ns, ifname, port, ip in members:
        netlab.run(lan, "ip", "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns)
        netlab.run(lan, "ip", "link", "set", port, "master", "br0")
        netlab.run(lan, "ip", "link", "set", port, "up")
        netlab.run(ns, "ip", "addr", "add", f"{ip}/24", "dev", ifname)
        netlab.run(ns, "ip", "link", "set", ifname, "up")
    for ns, ifname in ((a, "a0"), (b, "b0")) if host is None else ((host, "x0"), (b, "b0")):
        netlab.run(ns, "ip", "addr", "add", f"{S}/32", "dev", ifname)  # A (or x) forwarding the RPT, B the SPT
    netlab.run(mcr, "ip", "route", "add", "10.99.0.0/24", "via", B)  # our RPF toward S: B
    extra: list[str] = []
    if config is not None:
        path = netlab.track_dir(Path(netlab.run(mcr, "mktemp", "-d").stdout.strip())) / "mcr.toml"
        path.write_text(config)
        extra = ["--config", str(path)]
    sup = Supervisor.start(netlab, mcr, extra=extra)
    records = {name: netlab.track_dir(Path(netlab.run(None, "mktemp", "-d").stdout.strip())) / f"{name}.jsonl"
               for name in ("a", "b")}  # fmt: skip
    return Lan(netlab, mcr, a, b, sup, records)


@pytest.fixture
def lan(netlab: NetLab) -> Iterator[Lan]:
    yield start_lan(netlab)


def join_shared_tree(lan: Lan) -> None:
    lan.listen(lan.a, "a0", A, "a")
    lan.listen(lan.b, "b0", B, "b")
    lan.sup.ctl("pim", "enable", "--interface", "lan0")
    lan.sup.ctl("pim", "set-rp", "--group", "239.0.0.0/8", "--rp", A)
    neighbours = lambda: {n["address"] for n in lan.sup.ctl("pim", "neighbors").doc["PimNeighbors"]}  # noqa: E731
    wait_for(lambda: neighbours() >= {A, B}, 20.0, "A and B as our neighbours")
    lan.sup.ctl("add", "--rule-id", "rcv", "--input-interface", "lan0", "--input-group", GROUP, "--input-port", "5000")
    wait_for(lambda: lan.entries("a", "joins", A, A), 20.0, "our (*,G) Join to A, the RP")


def test_a_source_on_the_shared_tree_is_joined_on_its_spt_then_pruned_off_the_shared_tree(lan: Lan) -> None:
    join_shared_tree(lan)

    # S's packets come down the shared tree (from A): we join S's own tree toward B, our route's next hop
    lan.send_from(lan.a)
    (joined,) = wait_for(lambda: lan.entries("b", "joins", S, B), 10.0, "our (S,G) Join to B")[:1]
    assert [S, "sg"] in joined["joins"]
    counters = lan.counters()
    assert counters["pim.spt_sources"] == 1 and counters["pim.spt_bit_set"] == 0
    assert lan.entries("a", "prunes", S, A) == []  # not yet: no data from the SPT

    # S's packets now come from B (the SPT): the SPT bit, and S is pruned off the shared tree at A, in the
    # same message as our (*,G) Join
    lan.send_from(lan.b)
    (pruned,) = wait_for(lambda: lan.entries("a", "prunes", S, A), 10.0, "our (S,G,rpt) Prune to A")[:1]
    assert pruned["prunes"] == [[S, "rpt"]] and pruned["joins"] == [[A, "wc"]]
    assert lan.counters()["pim.spt_bit_set"] == 1
    upstream = {
        (e["kind"], e["source"], e["toward"], e["state"]) for e in lan.sup.ctl("pim", "upstream").doc["PimUpstream"]
    }
    assert upstream == {
        ("join", None, A, "sent"),
        ("join", S, B, "sent"),
        ("rpt_prune", S, A, "sent"),
        ("spt", S, None, "settled (SPT bit)"),
    }

    # the rule goes: the (S,G) Join is pruned at B, the shared tree at A
    lan.sup.ctl("remove", "--rule-id", "rcv")
    wait_for(lambda: lan.entries("b", "prunes", S, B), 10.0, "our (S,G) Prune to B")
    wait_for(lambda: lan.entries("a", "prunes", A, A), 10.0, "our (*,G) Prune to A")
    assert lan.counters()["pim.spt_sources"] == 0


def test_policy_never_stays_on_the_shared_tree(netlab: NetLab) -> None:
    lan = start_lan(netlab, '[pim]\nspt_switchover = "never"\n')
    join_shared_tree(lan)
    lan.send_from(lan.a)
    lan.send_from(lan.b)
    wait_for(lambda: len(lan.entries("a", "joins", A, A)) >= 1, 5.0, "the (*,G) Join")
    assert lan.entries("b", "joins", S, B) == [] and lan.counters()["pim.spt_sources"] == 0


def test_rpf_neighbour_lost_or_route_moved_the_join_follows(lan: Lan) -> None:
    join_shared_tree(lan)
    lan.send_from(lan.a)
    wait_for(lambda: lan.entries("b", "joins", S, B), 10.0, "our (S,G) Join to B")

    # the route toward S moves to A: within the RPF re-check our (S,G) Join goes to A and B gets a Prune
    lan.lab.run(lan.mcr, "ip", "route", "replace", "10.99.0.0/24", "via", A)
    wait_for(lambda: lan.entries("a", "joins", S, A), 10.0, "our (S,G) Join to A, the new next hop")
    wait_for(lambda: lan.entries("b", "prunes", S, B), 5.0, "our (S,G) Prune to B, the old one")

    # back via B; then B goes silent: once it expires (holdtime 4 s) A, the link's only neighbour, gets it
    lan.lab.run(lan.mcr, "ip", "route", "replace", "10.99.0.0/24", "via", B)
    joins_at_b = len(lan.entries("b", "joins", S, B))
    wait_for(lambda: len(lan.entries("b", "joins", S, B)) > joins_at_b, 10.0, "our (S,G) Join back to B")
    joins_at_a = len(lan.entries("a", "joins", S, A))
    lan.listeners["b"].stop()
    wait_for(lambda: len(lan.entries("a", "joins", S, A)) > joins_at_a, 15.0, "our (S,G) Join to A after B's loss")
    assert not any(n["address"] == B for n in lan.sup.ctl("pim", "neighbors").doc["PimNeighbors"])


def test_frr_as_the_rp_takes_our_star_g_join_and_our_sg_rpt_prune(netlab: NetLab) -> None:
    """A is FRR, the RP (it cannot forward data here: no kernel multicast routing); a host on the LAN, x,
    plays its forwarding of S down the shared tree, B (our test peer) the SPT."""
    reason = frr_skip_reason()
    if reason:
        pytest.skip(reason)
    x = netlab.add_netns("x")
    lan = start_lan(netlab, host=x)
    frr = FrrRouter.start(netlab, lan.a, f"ip pim rp {A} 239.0.0.0/8\ninterface a0\n ip pim\n!\n")
    lan.listen(lan.b, "b0", B, "b")
    lan.sup.ctl("pim", "enable", "--interface", "lan0")
    lan.sup.ctl("pim", "set-rp", "--group", "239.0.0.0/8", "--rp", A)
    lan.sup.ctl("add", "--rule-id", "rcv", "--input-interface", "lan0", "--input-group", GROUP, "--input-port", "5000")

    def frr_join(source: str) -> dict[str, Any] | None:
        return frr.json("show ip pim join json").get("a0", {}).get(GROUP, {}).get(source)

    assert wait_for(lambda: frr_join("*"), 40.0, "FRR's (*,G) join state")["channelJoinName"] == "JOIN"
    lan.send_from(x)
    wait_for(lambda: lan.entries("b", "joins", S, B), 10.0, "our (S,G) Join to B")
    lan.send_from(lan.b)
    # FRR takes S off the shared tree toward us: (S,G,rpt) prune state, pending and then pruned
    state = wait_for(lambda: (j := frr_join(S)) and j["channelJoinName"].startswith("SGRpt") and j, 15.0, "SGRpt")
    assert state["sgRpt"] == 1, state
    assert frr_join("*")["channelJoinName"] == "JOIN"  # the shared tree stays joined for other sources
