"""The DR's side of Register against FRR's pimd as the RP: a source directly connected to us is registered.

    SRC src0 10.230.0.2 <-> rin 10.230.0.1  MCR (DR on rin)  pim0 10.210.0.1 <-> frr0 10.210.0.2  FRR (the RP)

A rule for the source's group with `--input-source` on rin (a PIM interface where we are the only router,
so the DR) makes us register that source with the RP: its packets go to FRR in Registers, FRR answers
with a Register-Stop, and we stop (then probe with Null-Registers).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.frr import FrrRouter, frr_skip_reason
from tests.e2e.netns import NetLab, wait_for
from tests.e2e.relay import Supervisor, generator_argv
from tests.e2e.test_pim_frr import FRR_IF, OUR_IF, OURS, THEIRS, _pair

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
