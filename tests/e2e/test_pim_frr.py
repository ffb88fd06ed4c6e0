"""PIM-SM against FRR's pimd on one link: adjacency seen from both sides, DR election, neighbour loss.

    MCR  pim0 10.210.0.1/24  <->  frr0 10.210.0.2/24  FRR (zebra + pimd)

Our side is the real supervisor driven by `control_client pim ...`; FRR's side is read with vtysh.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.frr import FrrRouter, frr_skip_reason
from tests.e2e.netns import NetLab, wait_for
from tests.e2e.relay import Supervisor

pytestmark = pytest.mark.slow

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


def test_frr_priority_wins_over_our_higher_priority_address_rule(link: Link) -> None:
    frr = link.frr(" ip pim drpriority 50\n")
    link.sup.ctl("pim", "enable", "--interface", OUR_IF, "--dr-priority", "7")
    theirs = wait_for(lambda: link.our_neighbor(THEIRS), 40.0, "FRR as our PIM neighbour")
    assert theirs["dr_priority"] == 50 and theirs["is_dr"] is True
    wait_for(lambda: frr.pim_neighbors(FRR_IF).get(OURS), 40.0, "us as FRR's neighbour")
    assert frr.pim_dr(FRR_IF) == THEIRS


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
