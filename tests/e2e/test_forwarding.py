"""Real packets through the real relay: integrity, fan-out, sizes, dynamic rules, workers, wire format."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mcr.lab import RELAY_OUT_IP, SINK_IP, Lab
from tests.e2e.harness import Relay, send, start_sink, wait_for


def assert_intact(report: dict[str, object], count: int) -> None:
    assert report["received"] == count, report
    assert (report["lost"], report["duplicated"], report["corrupted"]) == (0, 0, 0), report


def test_kernel_alone_drops_the_source(lab: Lab, workdir: Path) -> None:
    """Without MCR, the relay host itself never receives the source's multicast: strict rp_filter."""
    assert lab.netns(lab.relay, "sysctl", "-n", "net.ipv4.conf.rin.rp_filter").stdout.strip() == "1"
    assert "10.200.1.0" not in lab.netns(lab.relay, "ip", "route").stdout
    sink = start_sink(lab, workdir, "239.1.1.1", "5001", ns=lab.relay, iface="rin", idle=1, duration=3)
    send(lab, count=200, rate=2000)
    assert sink.result()["received"] == 0


@pytest.mark.slow
def test_relay_is_lossless_and_counters_match(lab: Lab, workdir: Path, relay: Relay, engine: str) -> None:
    relay.add("r1", "239.2.2.2:6001:rout")
    count = 100_000  # 20k pps x 1400 B for 5 s
    sink = start_sink(lab, workdir, "239.2.2.2", "6001", expect=count)
    send(lab, count=count, rate=20_000, size=1400)
    assert_intact(sink.result(), count)
    flow = relay.wait_relayed("r1", count)
    assert flow["packets_relayed"] == count
    assert flow["bytes_relayed"] == count * 1400
    (out,) = flow["outputs"]
    assert (out["packets_sent"], out["bytes_sent"], out["send_errors"]) == (count, count * 1400, 0)
    (rule,) = relay.rules()
    assert (rule["state"], rule["engine"]) == ("active", engine)


def test_frames_sent_raw_without_udp_checksum(lab: Lab, workdir: Path, relay: Relay, engine: str) -> None:
    """The benchmark's fast sender: prebuilt frames on an AF_PACKET socket, UDP checksum 0, relayed intact."""
    relay.add("raw", "239.2.2.9:6009:rout")
    count = 20_000
    sink = start_sink(lab, workdir, "239.2.2.9", "6009", expect=count)
    send(lab, count=count, rate=10_000, size=1000, extra=("--raw", "src0"))
    assert_intact(sink.result(), count)
    assert relay.wait_relayed("raw", count)["packets_relayed"] == count


def test_input_groups_are_joined_on_the_input_interface(lab: Lab, relay: Relay) -> None:
    """IGMP membership, so that real NICs and snooping switches deliver the input groups."""
    relay.add("j1", "239.2.2.2:6001:rout", group="239.1.1.7")
    relay.add("j2", "239.2.2.3:6001:rout", group="239.1.1.8", port=5002)
    joined = wait_for(lambda: lab.netns(lab.relay, "ip", "maddr", "show", "dev", "rin").stdout, 5)
    assert "239.1.1.7" in joined and "239.1.1.8" in joined
    relay.ctl("remove", "--rule-id", "j1")
    left = lab.netns(lab.relay, "ip", "maddr", "show", "dev", "rin").stdout
    assert "239.1.1.7" not in left and "239.1.1.8" in left


@pytest.mark.parametrize("fanout", [3, 50])
def test_fan_out(lab: Lab, workdir: Path, relay: Relay, fanout: int, engine: str) -> None:
    groups = [f"239.10.0.{i}" for i in range(1, fanout + 1)]
    ports = [str(6000 + i) for i in range(1, fanout + 1)]
    relay.add("fan", ",".join(f"{g}:{p}:rout" for g, p in zip(groups, ports, strict=True)))
    count = 2000
    sink = start_sink(lab, workdir, ",".join(groups), ",".join(ports), expect=count * fanout)
    send(lab, count=count, rate=1000 if fanout > 3 else 5000, size=512)
    report = sink.result()
    assert len(report["streams"]) == fanout
    for stream in report["streams"]:
        assert (stream["received"], stream["lost"], stream["corrupted"]) == (count, 0, 0), stream
    flow = relay.wait_relayed("fan", count)
    assert [o["packets_sent"] for o in flow["outputs"]] == [count] * fanout


@pytest.mark.parametrize("size", [1, 46, 64, 1472])
def test_payload_sizes(lab: Lab, workdir: Path, relay: Relay, size: int, engine: str) -> None:
    relay.add("sz", "239.2.2.2:6001:rout")
    sink = start_sink(lab, workdir, "239.2.2.2", "6001", expect=500)
    send(lab, count=500, rate=5000, size=size)
    report = sink.result()
    assert report["received"] == 500 and report["bytes"] == 500 * size
    assert report["corrupted"] == 0 and report["duplicated"] == 0
    assert relay.wait_relayed("sz", 500)["bytes_relayed"] == 500 * size


def test_jumbo_payload(jumbo_lab: Lab, workdir: Path, engine: str) -> None:
    relay = Relay(jumbo_lab, workdir, extra=["--engine", engine]).start()
    try:
        relay.add("jumbo", "239.2.2.2:6001:rout")
        sink = start_sink(jumbo_lab, workdir, "239.2.2.2", "6001", expect=300)
        send(jumbo_lab, count=300, rate=2000, size=8972)
        report = sink.result()
        assert_intact(report, 300)
        assert report["bytes"] == 300 * 8972
    finally:
        relay.stop()


def test_rules_added_and_removed_while_traffic_flows(lab: Lab, workdir: Path, relay: Relay, engine: str) -> None:
    sink = start_sink(lab, workdir, "239.2.2.2", "6001", idle=30, duration=60)
    send(lab, count=1000, rate=5000)  # no rule yet: nothing may come out
    relay.add("dyn", "239.2.2.2:6001:rout")
    send(lab, count=2000, rate=5000)
    relay.wait_relayed("dyn", 2000)
    assert relay.ctl("remove", "--rule-id", "dyn").stdout.strip() == "Rule dyn removed"
    send(lab, count=1000, rate=5000)  # removed: nothing more may come out
    relay.add("dyn", "239.2.2.2:6001:rout")
    flow = relay.flow("dyn")
    assert flow["packets_relayed"] == 0, "a re-added rule starts from zero"
    sink.proc.terminate()
    report = sink.result()
    assert report["received"] == 2000 and report["duplicated"] == 0 and report["corrupted"] == 0


@pytest.mark.workers(2)
def test_list_workers_lists_worker_processes_only(lab: Lab, workdir: Path, relay: Relay, engine: str) -> None:
    """With the kernel engine on, list-workers still lists only the unprivileged worker processes (a script
    that restarts the listed pids must never hit the supervisor); the engine has its own request."""
    relay.add("k1", "239.2.2.2:6001:rout")
    assert relay.proc is not None
    workers = relay.workers()
    assert len(workers) == 2
    for w in workers:
        assert w["worker_type"] == "DataPlane" and w["pid"] != relay.proc.pid and w["uid"] != 0
    kernel = relay.kernel()
    assert (kernel["loaded"], kernel["mode"]) == (engine == "kernel", engine)
    if engine == "kernel":
        assert (kernel["rules"], kernel["interfaces"]) == (1, ["rin"])
        assert kernel["instructions"] > 0 and set(kernel["drops"]) >= {"fragment", "no_rule"}
        assert "kernel engine drops:" in relay.ctl("stats").stdout
    else:
        assert kernel["reason"] == "--engine userspace"
        assert "kernel engine" not in relay.ctl("stats").stdout


@pytest.mark.workers(2)
def test_two_workers_share_without_duplicates(lab: Lab, workdir: Path, relay: Relay) -> None:
    workers = relay.workers()
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
    assert all(w["worker_type"] == "DataPlane" and w["status"] == "Running" for w in workers)
    # several flows, so the fan-out hash spreads them over both workers
    for i in range(4):
        relay.add(f"w{i}", f"239.2.2.{i + 1}:{6001 + i}:rout", port=5001 + i)
    sink = start_sink(lab, workdir, "239.2.2.1,239.2.2.2,239.2.2.3,239.2.2.4", "6001,6002,6003,6004", expect=8000)
    for i in range(4):
        send(lab, count=2000, rate=10_000, port=5001 + i)
    report = sink.result()
    assert_intact(report, 8000)
    for i in range(4):
        relay.wait_relayed(f"w{i}", 2000)
    assert sum(w["kernel_packets"] for w in relay.workers()) >= 8000


def _capture(lab: Lab, port: int, count: int) -> subprocess.Popen[str]:
    argv = ["timeout", "15", "tcpdump", "-l", "-i", "snk0", "-c", str(count), "-nn", "-v", "udp", "port", str(port)]
    return subprocess.Popen(lab.exec_argv(lab.sink, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("ttl", [None, 5])
def test_ttl_and_source_on_the_wire(lab: Lab, workdir: Path, relay: Relay, ttl: int | None, engine: str) -> None:
    extra = ["--ttl", str(ttl)] if ttl else []
    relay.add("wire", "239.2.2.2:6001:rout", extra=extra)
    assert relay.rules()[0]["engine"] == engine
    capture = _capture(lab, 6001, 5)
    wait_for(lambda: "listening" in (capture.stderr.readline() if capture.stderr else ""), 10, what="tcpdump")
    send(lab, count=5, rate=100, size=100)
    out, _ = capture.communicate(timeout=20)
    headers = re.findall(r"ttl (\d+),.*?\n\s+(\d+\.\d+\.\d+\.\d+)\.\d+ > (\d+\.\d+\.\d+\.\d+)\.(\d+)", out)
    assert len(headers) == 5, out
    for got_ttl, src, dst, port in headers:
        assert int(got_ttl) == (ttl or 1)
        assert (src, dst, port) == (RELAY_OUT_IP, "239.2.2.2", "6001")


def test_default_ttls_multicast_from_the_supervisor_unicast_from_the_kernel(
    lab: Lab, workdir: Path, engine: str
) -> None:
    """Outputs that set no TTL: a group gets --multicast-ttl, a unicast destination the kernel's default
    (so a routed unicast output crosses routers), never 1."""
    relay = Relay(lab, workdir, extra=["--engine", engine, "--multicast-ttl", "7"]).start()
    try:
        relay.add("mc", "239.2.2.2:6001:rout")
        relay.add("uc", f"{SINK_IP}:6002:rout", port=5002)
        # a listener, so that no ICMP port-unreachable makes the connected output socket refuse a send
        listener = subprocess.Popen(
            lab.exec_argv(lab.sink, ["timeout", "20", "socat", "-u", "UDP-RECV:6002", "/dev/null"])
        )
        capture = _capture_ports(lab, (6001, 6002), 6)
        wait_for(lambda: "listening" in (capture.stderr.readline() if capture.stderr else ""), 10, what="tcpdump")
        send(lab, count=3, rate=100, size=100)
        send(lab, count=3, rate=100, size=100, port=5002)
        out, _ = capture.communicate(timeout=20)
        listener.terminate()
        listener.wait(5)
    finally:
        relay.stop()
    default = int(lab.netns(lab.relay, "sysctl", "-n", "net.ipv4.ip_default_ttl").stdout)
    headers = re.findall(r"ttl (\d+),.*?\n\s+\S+ > (\d+\.\d+\.\d+\.\d+)\.(\d+)", out)
    assert sorted(headers) == sorted([("7", "239.2.2.2", "6001")] * 3 + [(str(default), SINK_IP, "6002")] * 3), out


def _capture_ports(lab: Lab, ports: tuple[int, ...], count: int) -> subprocess.Popen[str]:
    expr = " or ".join(f"udp port {p}" for p in ports)
    argv = ["timeout", "15", "tcpdump", "-l", "-i", "snk0", "-c", str(count), "-nn", "-v", expr]
    return subprocess.Popen(lab.exec_argv(lab.sink, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_output_follows_an_address_change(lab: Lab, workdir: Path, relay: Relay, engine: str) -> None:
    relay.add("addr", "239.2.2.2:6001:rout")
    lab.netns(lab.relay, "ip", "addr", "del", f"{RELAY_OUT_IP}/24", "dev", "rout")
    wait_for(lambda: "no IPv4 address" in relay.rules()[0]["state_reason"], 10, what="the output to wait")
    lab.netns(lab.relay, "ip", "addr", "add", "10.200.3.9/24", "dev", "rout")
    wait_for(lambda: relay.rules()[0]["state_reason"] == "", 10, what="the output to resume")
    capture = _capture(lab, 6001, 3)
    wait_for(lambda: "listening" in (capture.stderr.readline() if capture.stderr else ""), 10, what="tcpdump")
    send(lab, count=3, rate=100, size=100)
    out, _ = capture.communicate(timeout=20)
    sources = re.findall(r"\n\s+(\d+\.\d+\.\d+\.\d+)\.\d+ > 239\.2\.2\.2\.6001", out)
    assert sources == ["10.200.3.9"] * 3, out
