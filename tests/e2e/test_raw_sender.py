"""The generator's --raw sender end to end: PACKET_TX_RING (and sendmmsg) frames, IPv4 and IPv6, into a plain
UDP sink over one veth pair (the sink's own kernel checks every IPv6 UDP checksum), and through the relay."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcr.lab import RELAY_OUT_IP, RELAY_OUT_IP6, SRC_IP6, Lab
from tests.e2e.harness import Relay, mcr, send, start_sink


def udp_counters(lab: Lab, ipv6: bool) -> dict[str, int]:
    """The sink namespace's UDP MIB: Udp6* from /proc/net/snmp6, Udp* from /proc/net/snmp, keys without prefix."""
    if ipv6:
        text = lab.netns(lab.sink, "cat", "/proc/net/snmp6").stdout
        pairs = (line.split() for line in text.splitlines() if line.startswith("Udp6"))
        return {k.removeprefix("Udp6"): int(v) for k, v in pairs}
    lines = [line.split()[1:] for line in lab.netns(lab.sink, "cat", "/proc/net/snmp").stdout.splitlines()
             if line.startswith("Udp:")]  # fmt: skip
    return {k: int(v) for k, v in zip(lines[0], lines[1], strict=True)}


@pytest.mark.parametrize("mode", ["ring", "mmsg"])
@pytest.mark.parametrize(
    ("group", "source"), [("239.3.3.3", RELAY_OUT_IP), ("ff3e::3:3", RELAY_OUT_IP6)], ids=["ipv4", "ipv6"]
)
@pytest.mark.parametrize("size", [64, 1400])
def test_raw_frames_reach_a_udp_sink_intact(
    lab: Lab, workdir: Path, mode: str, group: str, source: str, size: int
) -> None:
    """From the relay namespace's `rout` straight to the sink on `snk0`: no relay, just the frames."""
    ipv6 = ":" in group
    count = 20_000
    before = udp_counters(lab, ipv6)
    sink = start_sink(lab, workdir, group, "7001", expect=count)
    report = send(
        lab, count=count, rate=20_000, size=size, group=group, port=7001, source=source, ns=lab.relay,
        extra=("--raw", "rout", "--raw-mode", mode, "--batch", "128"),
    )  # fmt: skip
    got = sink.result()
    assert got["received"] == count and got["bytes"] == count * size, got
    assert (got["lost"], got["duplicated"], got["corrupted"]) == (0, 0, 0), got
    assert report["numbered"] and report["sent"] == count
    after = udp_counters(lab, ipv6)
    assert after["InCsumErrors"] == before["InCsumErrors"]  # every checksum right (IPv4: 0, which is allowed)
    assert after["InDatagrams"] - before["InDatagrams"] >= count


@pytest.mark.parametrize(
    ("mode", "message"),
    [("ring", "Message too long (the kernel marked the frame TP_STATUS_WRONG_FORMAT"), ("mmsg", "Message too long")],
)
def test_raw_frames_too_long_for_the_link_end_the_run(lab: Lab, mode: str, message: str) -> None:
    """A frame beyond the MTU: refused (in ring mode the kernel marks it TP_STATUS_WRONG_FORMAT), exit 1."""
    argv = ["--group", "239.3.3.3", "--port", "7001", "--interface", RELAY_OUT_IP, "--size", "1473"]
    argv += ["--count", "10", "--raw", "rout", "--raw-mode", mode, "--quiet"]
    result = lab.netns(lab.relay, *mcr("generate", *argv), check=False)
    assert result.returncode == 1, result
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("mode", ["ring", "mmsg"])
def test_ipv6_raw_frames_through_the_relay(lab: Lab, workdir: Path, relay: Relay, mode: str) -> None:
    relay.add("v6raw", "[ff3e::2:7]:6007:rout", group="ff3e::1:7")
    count = 20_000
    sink = start_sink(lab, workdir, "ff3e::2:7", "6007", expect=count)
    extra = ("--raw", "src0", "--raw-mode", mode)
    send(lab, count=count, rate=10_000, size=1000, group="ff3e::1:7", source=SRC_IP6, extra=extra)
    got = sink.result()
    assert (got["received"], got["lost"], got["duplicated"], got["corrupted"]) == (count, 0, 0, 0), got
    flow = relay.wait_relayed("v6raw", count)
    assert (flow["packets_relayed"], flow["bytes_relayed"]) == (count, count * 1000)
