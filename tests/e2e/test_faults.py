"""Faults and bad frames: malformed input on the wire, killed workers, shutdown, worker privileges."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcr.lab import SRC_IP, Lab
from tests.e2e.harness import Relay, alive, mcr, proc_status, send, start_sink, wait_for

_MALFORMED = """
import errno, json, socket, sys
from ipaddress import IPv4Address
from mcr.packet.build import build_udp_frame
per_kind, src_ip = int(sys.argv[1]), sys.argv[2]
common = dict(src_ip=src_ip, dst_ip=IPv4Address("239.1.1.1"), dst_port=5001, payload=b"x" * 200)
kinds = {
    "truncated_total_length": build_udp_frame(**common, total_length=1400),
    "truncated_udp_header": build_udp_frame(**common | {"payload": b""}, total_length=24)[:38],
    "bad_udp_length_long": build_udp_frame(**common, udp_length=4000),
    "bad_udp_length_short": build_udp_frame(**common, udp_length=4),
    "fragment_more": build_udp_frame(**common, more_fragments=True),
    "fragment_offset": build_udp_frame(**common, fragment_offset=100),
    "not_udp_tcp": build_udp_frame(**common, protocol=6),
    "not_udp_sctp": build_udp_frame(**common, protocol=132),
    # IHL 0: the capture filter reads the UDP port at the IP total length, so it is set to the port
    "bad_ihl": build_udp_frame(**common, ihl=0, total_length=5001),
    "bad_version": build_udp_frame(**common, version=6),
    "total_below_header": build_udp_frame(**common, total_length=12),
    "vlan_tagged": build_udp_frame(**common, vlan=5),
    "not_ipv4_ethertype": build_udp_frame(**common, ethertype=0x86DD),
    "runt": build_udp_frame(**common)[:20],
    "oversize": build_udp_frame(**common | {"payload": b"x" * 1600}),
}
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("src0", 0))
sent = dict.fromkeys(kinds, 0)
refused = {}
for _ in range(per_kind):  # round robin, so every kind is spread over the valid flow
    for kind, frame in kinds.items():
        try:
            s.send(frame)
            sent[kind] += 1
        except OSError as e:
            refused[kind] = errno.errorcode[e.errno]
print(json.dumps({"sent": sent, "refused": refused}))
"""

# What each kind must be counted as, by engine. The userspace engine's capture filter rejects in the kernel
# every frame that is not IPv4 to a configured group (no copy, no count); the kernel engine lets frames
# that are not IPv4 (VLAN-tagged ones included) go on to the host untouched and counts nothing for them.
_COUNTED_AS = {
    "truncated_total_length": ("truncated", "truncated"),
    "truncated_udp_header": ("truncated", "truncated"),
    "bad_udp_length_long": ("bad_udp_length", "bad_udp_length"),
    "bad_udp_length_short": ("bad_udp_length", "bad_udp_length"),
    "fragment_more": ("fragment", "fragment"),
    "fragment_offset": ("fragment", "fragment"),
    "not_udp_tcp": ("not_udp", "not_udp"),
    "not_udp_sctp": ("not_udp", "not_udp"),
    "bad_ihl": ("bad_ip_header", "bad_ip_header"),
    "bad_version": ("bad_ip_header", "bad_ip_header"),
    "total_below_header": ("bad_ip_header", "bad_ip_header"),
    "vlan_tagged": ("not_ipv4", None),
    "not_ipv4_ethertype": (None, None),
    "runt": (None, None),
}


@pytest.mark.timeout(120)
def test_malformed_frames_are_counted_and_the_valid_flow_is_intact(
    lab: Lab, workdir: Path, engine: str, relay: Relay
) -> None:
    """3000 valid packets while 15 kinds x 200 malformed frames to the same flow are injected at layer 2: the
    sink gets the valid flow intact and nothing else, and each bad frame is counted under its reason."""
    per_kind = 200
    relay.add("ok", "239.2.2.2:6001:rout")
    wait_for(lambda: relay.rules()[0]["engine"] == engine, 5, what=f"the rule on the {engine} engine")
    sink = start_sink(lab, workdir, "239.2.2.2", "6001", expect=3000)
    generator = subprocess.Popen(
        lab.exec_argv(lab.src, mcr("generate", "--group", "239.1.1.1", "--port", "5001", "--interface", SRC_IP,
                                   "--rate", "3000", "--count", "3000", "--size", "1000", "--quiet")),
    )  # fmt: skip
    time.sleep(0.2)  # inject while the valid flow runs
    argv = lab.exec_argv(lab.src, [sys.executable, "-c", _MALFORMED, str(per_kind), SRC_IP])
    injected = json.loads(subprocess.run(argv, check=True, timeout=60, capture_output=True, text=True).stdout)
    assert generator.wait(30) == 0
    # the one kind the sender's kernel refuses: a frame longer than the interface MTU never reaches the wire
    assert injected["refused"] == {"oversize": "EMSGSIZE"} and injected["sent"]["oversize"] == 0, injected
    assert all(injected["sent"][kind] == per_kind for kind in _COUNTED_AS), injected

    report = sink.result()
    assert (report["received"], report["lost"], report["corrupted"]) == (3000, 0, 0), report
    assert (report["duplicated"], report["unnumbered"]) == (0, 0), "a malformed frame was relayed"

    column = 0 if engine == "userspace" else 1
    expected: dict[str, int] = {}
    for reasons in _COUNTED_AS.values():
        if reasons[column] is not None:
            expected[reasons[column]] = expected.get(reasons[column], 0) + per_kind

    def drops() -> dict[str, int]:
        return relay.drops(engine)

    counted = wait_for(lambda: (d := drops()) and all(d.get(r, 0) >= n for r, n in expected.items()) and d, 5,
                       what=f"drop counters {expected}")  # fmt: skip
    time.sleep(1.2)  # one more push: nothing counted twice, nothing late
    counted = drops()
    assert {r: n for r, n in counted.items() if n} == expected, counted
    flow = relay.flow("ok")
    assert flow["packets_relayed"] == 3000
    if engine == "userspace":
        assert flow["drops"] == {"bad_udp_length": 2 * per_kind}, "the drops of the rule's own flow are its own"
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
