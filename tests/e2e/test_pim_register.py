"""The DR's side of Register against FRR's pimd as the RP: a source directly connected to us is registered.

    SRC src0 10.230.0.2 <-> rin 10.230.0.1  MCR (DR on rin)  pim0 10.210.0.1 <-> frr0 10.210.0.2  FRR (the RP)

A rule for the source's group with `--input-source` on rin (a PIM interface where we are the only router,
so the DR) makes us register that source with the RP: its packets go to FRR in Registers, FRR answers
with a Register-Stop, and we stop (then probe with Null-Registers).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.frr import FrrRouter, frr_skip_reason
from tests.e2e.netns import NetLab, wait_for
from tests.e2e.relay import Supervisor, generator_argv, start_sink
from tests.e2e.test_pim_frr import FRR_IF, OUR_IF, OURS, PIM_PEER, THEIRS, _pair

pytestmark = pytest.mark.slow

SRC_IP, RIN_IP = "10.230.0.2", "10.230.0.1"
GROUP, PORT = "239.6.6.6", 5000


@dataclass
class DrLab:
    lab: NetLab
    src: str
    mcr: str
    frr_ns: str
    sup: Supervisor
    frr: FrrRouter

    def counters(self) -> dict[str, int]:
        return dict(self.sup.ctl("pim", "counters").doc["RoutingCounters"])

    def send(self, count: int, rate: int = 50) -> None:
        argv = generator_argv(GROUP, PORT, source=SRC_IP, rate=rate, size=200, count=count)
        self.lab.popen(self.src, *argv, name="traffic_generator").json(timeout=30)

    def frr_traffic(self) -> dict[str, Any]:
        return dict(self.frr.json("show ip pim interface traffic json").get(FRR_IF, {}))


@pytest.fixture
def drlab(netlab: NetLab) -> Iterator[DrLab]:
    reason = frr_skip_reason()
    if reason:
        pytest.skip(reason)
    src, mcr, frr_ns = (netlab.add_netns(r) for r in ("src", "mcr", "frr"))
    _pair(netlab, src, "src0", SRC_IP, mcr, "rin", RIN_IP)
    _pair(netlab, mcr, OUR_IF, OURS, frr_ns, FRR_IF, THEIRS)
    netlab.run(frr_ns, "ip", "route", "add", "10.230.0.0/24", "via", OURS)  # FRR's route back to the source
    frr = FrrRouter.start(netlab, frr_ns, f"ip pim rp {THEIRS} 239.0.0.0/8\ninterface {FRR_IF}\n ip pim\n!\n")
    sup = Supervisor.start(netlab, mcr)
    yield DrLab(netlab, src, mcr, frr_ns, sup, frr)


def test_a_directly_connected_source_is_registered_with_frr_as_rp_and_its_register_stop_obeyed(drlab: DrLab) -> None:
    d = drlab
    for interface in ("rin", OUR_IF):
        d.sup.ctl("pim", "enable", "--interface", interface)
    d.sup.ctl("pim", "set-rp", "--group", "239.0.0.0/8", "--rp", THEIRS)
    d.sup.ctl(
        "add", "--rule-id", "local", "--input-interface", "rin", "--input-group", GROUP, "--input-port", str(PORT),
        "--input-source", SRC_IP,
    )  # fmt: skip
    wait_for(lambda: d.counters().get("pim.dr_register_tunnels") == 1, 10.0, "the register tunnel for the source")

    d.send(count=100)
    got = wait_for(lambda: (c := d.counters()).get("pim.dr_register_stops", 0) >= 1 and c, 20.0, "FRR's Register-Stop")
    assert got["pim.tx_register"] >= 1 and got["pim.rx_register_stop_for_dr"] >= 1
    assert got["pim.dr_register_tunnels"] == 0 and got["pim.dr_register_sources"] == 1  # Prune: suppressed
    (reg,) = [e for e in d.sup.ctl("pim", "upstream").doc["PimUpstream"] if e["kind"] == "register"]
    assert (reg["source"], reg["group"], reg["interface"], reg["toward"]) == (SRC_IP, GROUP, "rin", THEIRS)
    assert reg["state"] == "Prune" and 20 <= reg["next_secs"] <= 85

    # FRR, the RP, counted our Registers and its Register-Stop, and made an (S,G) entry for the source
    wait_for(lambda: d.frr_traffic().get("registerRx") == got["pim.tx_register"], 10.0, "FRR to count our Registers")
    assert d.frr_traffic()["registerStopTx"] >= 1
    upstream = d.frr.json("show ip pim upstream json").get(GROUP, {}).get(SRC_IP)
    assert upstream is not None, d.frr.vtysh("show ip pim upstream")

    # suppressed: more data from the source sends no more Registers (until the Register-Stop timer, 25-85 s)
    d.send(count=50)
    after = d.counters()
    assert after["pim.tx_register"] == got["pim.tx_register"] and after.get("pim.tx_null_register", 0) == 0
    assert d.frr_traffic()["registerRx"] == got["pim.tx_register"]

    # the rule goes: nothing to register any more
    d.sup.ctl("remove", "--rule-id", "local")
    wait_for(lambda: d.counters().get("pim.dr_register_sources") == 0, 10.0, "the source to be forgotten")


def test_with_the_rp_unreachable_registers_keep_going_out_rate_limited(drlab: DrLab) -> None:
    d = drlab
    d.sup.ctl("pim", "enable", "--interface", "rin")
    d.sup.ctl("pim", "set-rp", "--group", "239.0.0.0/8", "--rp", "10.210.0.77")  # no such router: no Register-Stop
    d.sup.ctl(
        "add", "--rule-id", "local", "--input-interface", "rin", "--input-group", GROUP, "--input-port", str(PORT),
        "--input-source", SRC_IP,
    )  # fmt: skip
    wait_for(lambda: d.counters().get("pim.dr_register_tunnels") == 1, 10.0, "the register tunnel for the source")
    d.send(count=300, rate=1000)  # faster than the Register rate: the excess is counted, not sent
    got = wait_for(
        lambda: (c := d.counters()).get("pim.tx_register", 0) >= 50 and c["pim.dr_register_rate_limited"] > 0 and c,
        10.0,
        "Registers sent and the excess counted",
    )
    assert got["pim.dr_register_tunnels"] == 1 and got["pim.dr_register_stops"] == 0
    assert got["pim.tx_register"] < 300  # about the burst plus 100 a second over the 0.3 s the source sends
    # every packet is accounted for: sent in a Register, refused by the rate, or dropped unread by the kernel
    done = wait_for(
        lambda: (c := d.counters())["pim.tx_register"] + c["pim.dr_register_rate_limited"]
        + c.get("pim.register_capture_drops", 0) == 300 and c,
        5.0,
        "every packet sent, limited or dropped",
    )  # fmt: skip
    assert done.get("pim.tx_register_errors", 0) == 0  # the RP's address is on the link: the kernel takes them


def test_after_the_register_stop_timer_a_null_register_probes_and_frr_stops_it_again(drlab: DrLab) -> None:
    """Slow (the Register-Stop timer is 25 to 85 s): the probe is a Null-Register, FRR answers it with
    another Register-Stop, and no data Register goes out in between."""
    d = drlab
    d.sup.ctl("pim", "enable", "--interface", "rin")
    d.sup.ctl("pim", "set-rp", "--group", "239.0.0.0/8", "--rp", THEIRS)
    d.sup.ctl(
        "add", "--rule-id", "local", "--input-interface", "rin", "--input-group", GROUP, "--input-port", str(PORT),
        "--input-source", SRC_IP,
    )  # fmt: skip
    wait_for(lambda: d.counters().get("pim.dr_register_tunnels") == 1, 10.0, "the register tunnel for the source")
    d.send(count=20)
    first = wait_for(lambda: (c := d.counters()).get("pim.dr_register_stops", 0) >= 1 and c, 20.0, "a Register-Stop")
    probed = wait_for(
        lambda: (c := d.counters()).get("pim.dr_register_stops", 0) >= 2 and c, 100.0, "the probe's Register-Stop"
    )
    assert probed["pim.tx_null_register"] == 1 and probed["pim.tx_register"] == first["pim.tx_register"]
    assert probed["pim.dr_register_tunnels"] == 0  # suppressed again
    assert d.frr_traffic()["registerRx"] == first["pim.tx_register"] + 1


def test_a_local_source_found_by_an_any_source_rule_is_registered(drlab: DrLab) -> None:
    d = drlab
    d.sup.ctl("pim", "enable", "--interface", "rin")
    d.sup.ctl("pim", "set-rp", "--group", "239.0.0.0/8", "--rp", THEIRS)
    d.sup.ctl("add", "--rule-id", "any", "--input-interface", "rin", "--input-group", GROUP, "--input-port", str(PORT))
    assert d.counters().get("pim.dr_register_sources") == 0  # no source known yet
    d.send(count=100)  # the first packet makes the source known (directly connected, we are DR): registered
    got = wait_for(lambda: (c := d.counters()).get("pim.dr_register_stops", 0) >= 1 and c, 20.0, "FRR's Register-Stop")
    assert got["pim.dr_register_sources"] == 1 and got["pim.spt_sources"] == 1 and got["pim.tx_register"] >= 1
    wait_for(lambda: d.frr_traffic().get("registerRx") == got["pim.tx_register"], 10.0, "FRR to count our Registers")


# a PIM listener on the source's link: counts every PIM packet heard there for a while (bounded), as JSON
_PIM_LISTENER = """
import json, select, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 103)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
mreq = socket.inet_aton("224.0.0.13") + socket.inet_aton(sys.argv[2])
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
open(sys.argv[4], "w").close()
end, heard = time.monotonic() + float(sys.argv[3]), 0
while heard < 1000 and (left := end - time.monotonic()) > 0:
    if select.select([s], [], [], left)[0]:
        s.recv(65535)
        heard += 1
print(json.dumps({"heard": heard}))
"""


def test_a_source_behind_a_passive_interface_is_registered_and_joined_by_frr_with_no_hellos_there(
    netlab: NetLab,
) -> None:
    """SRC -> rin (passive: no PIM there) MCR pim0 <-> frr0 FRR (the RP) lan0 <-> rcv0 a PIM router joining (S,G).

    The source is registered with FRR; the router behind FRR joins its SPT, FRR passes the (S,G) Join on to
    us (its RPF neighbour toward S), and the stream goes natively onto FRR's link, as for a source on a PIM
    interface. Nothing PIM is ever sent toward the source. (FRR cannot forward on this kernel, which lacks
    CONFIG_IP_MROUTE: its outgoing interface lists stay empty, so a receiver's shared-tree Join alone would
    not make it join toward the source; the (S,G) Join from the router behind it does.)"""
    reason = frr_skip_reason()
    if reason:
        pytest.skip(reason)
    src, mcr, frr_ns, rcv = (netlab.add_netns(r) for r in ("src", "mcr", "frr", "rcv"))
    _pair(netlab, src, "src0", SRC_IP, mcr, "rin", RIN_IP)
    _pair(netlab, mcr, OUR_IF, OURS, frr_ns, FRR_IF, THEIRS)
    _pair(netlab, frr_ns, "lan0", "10.220.0.1", rcv, "rcv0", "10.220.0.2")
    netlab.run(frr_ns, "ip", "route", "add", "10.230.0.0/24", "via", OURS)  # FRR's route back to the source
    frr = FrrRouter.start(
        netlab, frr_ns, f"ip pim rp {THEIRS} 239.0.0.0/8\ninterface {FRR_IF}\n ip pim\n!\ninterface lan0\n ip pim\n!\n"
    )
    sup = Supervisor.start(netlab, mcr)
    d = DrLab(netlab, src, mcr, frr_ns, sup, frr)
    heard_file = netlab.workdir / "listener.ready"
    listener = netlab.popen(
        src, sys.executable, "-c", _PIM_LISTENER, "src0", SRC_IP, "25", str(heard_file), name="pim-listener"
    )
    wait_for(heard_file.exists, 10.0, "the PIM listener on the source's link")

    assert sup.ctl("pim", "enable", "--interface", "rin", "--passive").doc == {
        "Success": "PIM enabled on rin, passive (no Hellos; its connected sources only)"
    }
    sup.ctl("pim", "enable", "--interface", OUR_IF)
    sup.ctl("pim", "set-rp", "--group", "239.0.0.0/8", "--rp", THEIRS)
    interfaces = {i["name"]: i for i in sup.ctl("pim", "interfaces").doc["PimInterfaces"]}
    assert (interfaces["rin"]["state"], interfaces["rin"]["address"], interfaces["rin"]["is_dr"]) == (
        "passive",
        RIN_IP,
        True,
    )
    assert "passive" in sup.ctl("pim", "interfaces", json_out=False).stdout
    sup.ctl(
        "add", "--rule-id", "local", "--input-interface", "rin", "--input-group", GROUP, "--input-port", str(PORT),
        "--input-source", SRC_IP,
    )  # fmt: skip
    wait_for(lambda: d.counters().get("pim.dr_register_tunnels") == 1, 10.0, "the register tunnel for the source")
    wait_for(lambda: frr.pim_neighbors(FRR_IF).get(OURS), 40.0, "FRR to see us as neighbour on the PIM link")
    assert frr.pim_neighbors(FRR_IF).keys() == {OURS}

    # the source sends: registered with FRR, the RP
    d.send(count=20, rate=20)
    wait_for(lambda: d.frr_traffic().get("registerRx", 0) >= 1, 10.0, "FRR to count our Registers")
    wait_for(lambda: SRC_IP in frr.json("show ip pim upstream json").get(GROUP, {}), 10.0, "FRR's (S,G) entry")

    # a router behind FRR joins the source's tree: FRR joins (S,G) toward it through us
    argv = [sys.executable, str(PIM_PEER), "--ifname", "rcv0", "--local", "10.220.0.2", "--upstream", "10.220.0.1"]
    argv += ["--group", GROUP, "--rp", THEIRS, "--source", SRC_IP, "--action", "join", "--duration", "60"]
    netlab.popen(rcv, *argv, name="pim-peer-join")
    on_link = start_sink(netlab, frr_ns, [(GROUP, PORT)], interface=FRR_IF, duration=40.0, idle_timeout=30.0)
    sg = wait_for(
        lambda: next((m for m in sup.ctl("mroute").doc["Mroute"] if m["entry_type"] == "SG"), None),
        20.0,
        "FRR's (S,G) Join toward the source, through us",
    )
    assert (sg["source"], sg["group"], sg["output_interfaces"]) == (SRC_IP, GROUP, [OUR_IF])
    assert sg["input_interface"] == "rin"
    (rule,) = sup.rules()
    assert [(o["group"], o["port"], o["interface"]) for o in rule["outputs"]] == [(GROUP, PORT, OUR_IF)]
    frr_sg = frr.json("show ip pim upstream json")[GROUP][SRC_IP]
    assert frr_sg["joinState"] == "Joined" and frr_sg["inboundInterface"] == FRR_IF, frr_sg
    d.send(count=100, rate=100)
    got = on_link.stop()
    assert got.stream(GROUP, PORT)["unique"] >= 100 and got.stream(GROUP, PORT)["corrupted"] == 0

    # nothing PIM went toward the source: no Hello, Join or anything on the passive link
    assert listener.json(timeout=40)["heard"] == 0
    counters = d.counters()
    assert counters["pim.tx_register"] >= 1 and counters.get("pim.neighbors") == 1
