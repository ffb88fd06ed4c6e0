"""Faults and bad frames: malformed input on the wire, killed workers, shutdown, worker privileges."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcr.lab import SRC_IP, Lab
from tests.e2e.harness import Relay, alive, proc_status, send, start_sink, wait_for

_INJECT = """
import socket, sys
from ipaddress import IPv4Address
from mcr.packet.build import build_udp_frame
kind, count = sys.argv[1], int(sys.argv[2])
common = dict(src_ip=sys.argv[3], dst_ip=IPv4Address("239.1.1.1"), dst_port=5001, payload=b"x" * 200)
variants = {
    "fragment": dict(more_fragments=True),
    "fragment_tail": dict(fragment_offset=100),
    "not_udp": dict(protocol=6),
    "bad_udp_length": dict(udp_length=4000),
    "truncated": dict(total_length=1400),
    "vlan": dict(vlan=5),
}
frame = build_udp_frame(**common, **variants[kind])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("src0", 0))
for _ in range(count):
    s.send(frame)
"""


def inject(lab: Lab, kind: str, count: int) -> None:
    argv = lab.exec_argv(lab.src, [sys.executable, "-c", _INJECT, kind, str(count), SRC_IP])
    subprocess.run(argv, check=True, timeout=30)


def test_malformed_frames_are_counted_and_the_valid_flow_is_intact(lab: Lab, workdir: Path, relay: Relay) -> None:
    relay.add("ok", "239.2.2.2:6001:rout")
    sink = start_sink(lab, workdir, "239.2.2.2", "6001", expect=3000)
    generator = subprocess.Popen(
        lab.exec_argv(
            lab.src,
            [
                sys.executable,
                "-m",
                "mcr",
                "generate",
                "--group",
                "239.1.1.1",
                "--port",
                "5001",
                "--interface",
                SRC_IP,
                "--rate",
                "3000",
                "--count",
                "3000",
                "--size",
                "1000",
                "--quiet",
            ],
        ),
    )
    kinds = ("fragment", "fragment_tail", "not_udp", "bad_udp_length", "truncated", "vlan")
    for kind in kinds:
        inject(lab, kind, 200)
    assert generator.wait(30) == 0
    report = sink.result()
    assert (report["received"], report["lost"], report["corrupted"]) == (3000, 0, 0)

    def drops() -> dict[str, int]:
        totals: dict[str, int] = {}
        for w in relay.workers():
            for reason, n in w["drops"].items():
                totals[reason] = totals.get(reason, 0) + n
        return totals

    wait_for(lambda: drops().get("bad_udp_length", 0) >= 200, 5, what="drop counters")
    counted = drops()
    assert counted["fragment"] == 400, counted
    assert counted["not_udp"] == 200, counted
    assert counted["bad_udp_length"] == 200, counted
    assert counted["truncated"] == 200, counted
    assert counted["not_ipv4"] == 200, "VLAN-tagged frames belong to the VLAN's interface, not to this rule"
    flow = relay.flow("ok")
    assert flow["packets_relayed"] == 3000
    assert flow["drops"] == {"bad_udp_length": 200}, "drops of the rule's own (group, port) are attributed to it"
    assert relay.ctl("ping").returncode == 0


def test_killed_worker_restarts_with_its_rules(lab: Lab, workdir: Path, relay: Relay) -> None:
    relay.add("k", "239.2.2.2:6001:rout")
    (before,) = relay.workers()
    os.kill(before["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    after = wait_for(
        lambda: [w for w in relay.workers() if w["pid"] != before["pid"] and w["status"] == "Running"],
        5,
        what="a restarted worker",
    )[0]
    assert time.monotonic() - killed_at < 2.0
    assert after["restarts"] == 1 and after["uid"] == 65534
    sink = start_sink(lab, workdir, "239.2.2.2", "6001", expect=1000)
    send(lab, count=1000, rate=5000)
    assert sink.result()["received"] == 1000
    assert relay.wait_relayed("k", 1000)["packets_relayed"] == 1000


def test_counters_survive_a_worker_restart(lab: Lab, workdir: Path, relay: Relay) -> None:
    relay.add("c", "239.2.2.2:6001:rout")
    send(lab, count=500, rate=5000)
    relay.wait_relayed("c", 500)
    time.sleep(0.6)  # let the worker push the final count before it dies
    (worker,) = relay.workers()
    os.kill(worker["pid"], signal.SIGKILL)
    wait_for(lambda: relay.workers()[0]["pid"] != worker["pid"] and relay.ctl("ping", check=False).returncode == 0, 5)
    send(lab, count=500, rate=5000)
    assert relay.wait_relayed("c", 1000)["packets_relayed"] == 1000


def test_sigterm_stops_everything_within_five_seconds(relay: Relay) -> None:
    pids = [w["pid"] for w in relay.workers()]
    socket_path = Path(relay.socket_path)
    assert socket_path.exists()
    started = time.monotonic()
    assert relay.stop(timeout=5) == 0
    assert time.monotonic() - started < 5
    assert not socket_path.exists()
    assert not any(alive(pid) for pid in pids)
    assert "shutdown complete" in relay.log()


@pytest.mark.workers(2)
def test_workers_run_without_privileges(relay: Relay) -> None:
    for worker in relay.workers():
        status = proc_status(worker["pid"])
        assert status["Uid"].split() == ["65534"] * 4
        assert status["Gid"].split() == ["65534"] * 4
        assert status["Groups"] == ""
        for caps in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
            assert int(status[caps], 16) == 0, caps
        assert status["NoNewPrivs"] == "1"
