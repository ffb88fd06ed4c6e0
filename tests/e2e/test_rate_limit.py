"""Per-rule rate limits with real packets, in both engines: a flow offered above its limit is cut to about
the limit, and every frame is accounted for (relayed + rate_limited == offered); an unlimited rule beside it
is untouched; a limit changed or removed at run time (remove, add again) takes effect at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mcr.lab import Lab
from tests.e2e.harness import Relay, send, start_sink, wait_for


def accounted(relay: Relay, rule_id: str, offered: int) -> dict[str, Any]:
    """The rule's stats once every offered frame is counted, relayed or rate-limited (reports lag a little)."""

    def settled() -> dict[str, Any] | None:
        flow = relay.flow(rule_id)
        done = flow["packets_relayed"] + flow["drops"].get("rate_limited", 0) >= offered
        return flow if done else None

    flow = wait_for(settled, 15, what=f"rule {rule_id} to account for {offered} frames")
    assert flow is not None
    return flow


def expected_relayed(report: dict[str, Any], rate: float, burst: float) -> float:
    """What a token bucket lets through while the generator sent: the burst plus the rate."""
    return burst + rate * float(report["elapsed_s"])


def assert_about(relayed: int, expected: float) -> None:
    # generous: the clocks are read per ring block (userspace) and the machine may be loaded
    assert 0.6 * expected <= relayed <= 1.25 * expected + 20, (relayed, expected)


@pytest.mark.slow
def test_limit_cuts_the_flow_to_the_rate_and_counts_every_drop(
    lab: Lab, workdir: Path, relay: Relay, engine: str
) -> None:
    relay.add("lim", "239.2.2.2:6001:rout", port=5001, extra=["--rate-limit", "500pps", "--burst", "50"])
    relay.add("free", "239.2.2.3:6002:rout", port=5002)
    rules = {r["rule_id"]: r for r in relay.rules()}
    assert rules["lim"]["rate_limit"] == {"pps": 500, "burst": 50}
    assert rules["free"]["rate_limit"] is None
    assert {r["engine"] for r in rules.values()} == {engine}
    assert "limit 500 pps, burst 50" in relay.ctl("list").stdout

    sink = start_sink(lab, workdir, "239.2.2.2,239.2.2.3", "6001,6002", idle=3, duration=60)
    offered = 5000
    report = send(lab, count=offered, rate=2500, size=600, port=5001)  # 5x the limit for 2 s
    send(lab, count=2000, rate=2500, size=600, port=5002)
    flow = accounted(relay, "lim", offered)
    relayed, limited = flow["packets_relayed"], flow["drops"]["rate_limited"]
    assert relayed + limited == offered
    assert_about(relayed, expected_relayed(report, 500, 50))
    assert flow["bytes_relayed"] == relayed * 600
    assert flow["outputs"][0]["packets_sent"] == relayed
    free = relay.wait_relayed("free", 2000)
    assert free["packets_relayed"] == 2000 and free["drops"].get("rate_limited", 0) == 0

    received = sink.result()
    assert received["received"] == relayed + 2000, received
    assert received["corrupted"] == 0 and received["duplicated"] == 0
    stats_text = relay.ctl("stats").stdout
    assert "rate_limited" in stats_text


@pytest.mark.slow
def test_limit_changed_and_removed_at_run_time(lab: Lab, workdir: Path, relay: Relay, engine: str) -> None:
    relay.add("lim", "239.2.2.2:6001:rout", extra=["--rate-limit", "200pps", "--burst", "10"])
    report = send(lab, count=2000, rate=1000, size=500)
    flow = accounted(relay, "lim", 2000)
    assert flow["packets_relayed"] + flow["drops"]["rate_limited"] == 2000
    assert_about(flow["packets_relayed"], expected_relayed(report, 200, 10))

    # a payload bit rate instead: 4 Mbit/s of 1000-byte payloads is 500 packets per second
    relay.ctl("remove", "--rule-id", "lim")
    relay.add("lim", "239.2.2.2:6001:rout", extra=["--rate-limit", "4mbps"])
    assert relay.rules()[0]["rate_limit"] == {"bps": 4_000_000, "burst_bytes": 65_535}
    report = send(lab, count=3000, rate=1500, size=1000)
    flow = accounted(relay, "lim", 3000)
    assert flow["packets_relayed"] + flow["drops"]["rate_limited"] == 3000
    assert_about(flow["packets_relayed"], expected_relayed(report, 500, 65))

    # no limit any more: everything goes through
    relay.ctl("remove", "--rule-id", "lim")
    relay.add("lim", "239.2.2.2:6001:rout")
    assert relay.rules()[0]["rate_limit"] is None
    send(lab, count=2000, rate=2500, size=500)
    flow = relay.wait_relayed("lim", 2000)
    assert flow["packets_relayed"] == 2000 and flow["drops"].get("rate_limited", 0) == 0


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["kernel"])
def test_kernel_bucket_is_one_for_every_sender(lab: Lab, workdir: Path, relay: Relay, engine: str) -> None:
    """Two senders at once (two flows, each sent from its own process, so their frames are usually
    processed on different CPUs) share the rule's one bucket: together they get the limit, not twice it."""
    relay.add("lim", "239.2.2.2:6001:rout", extra=["--rate-limit", "400pps", "--burst", "40"])
    assert relay.rules()[0]["engine"] == "kernel"
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: send(lab, count=3000, rate=1500, size=300), range(2)))
    flow = accounted(relay, "lim", 6000)
    assert flow["packets_relayed"] + flow["drops"]["rate_limited"] == 6000
    longest = max(reports, key=lambda r: float(r["elapsed_s"]))
    assert_about(flow["packets_relayed"], expected_relayed(longest, 400, 40))
