"""IPv6 and source-specific rules end to end: real generator, relay and sink in namespaces with unique-local
IPv6 addressing (mcr.lab); v6->v6, v4->v6, v6->v4, fan-out, extension headers and fragments counted, a source
rule, two sources on one group split into two rules, an unlisted source ignored, memberships.

Rules that keep the family (v6->v6 included) run on both engines (the `engine` fixture) and must be served by
the one asked for; rules that change the family, and flows split by source, stay in userspace and say why.
The source computes full UDP checksums (transmit checksum offload off) and the sink's kernel drops any
datagram whose checksum is wrong (and counts it), so intact payloads and no checksum errors prove them."""

from __future__ import annotations

import socket
import subprocess
import sys
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

import pytest

from mcr.lab import SRC_IP, SRC_IP6, Lab
from tests.e2e.harness import Relay, send, start_sink, wait_for

G6_IN = "ff3e::1:5"
G6_OUT = "ff3e::2:6"
FAMILY_CHANGE = "userspace: rules that change the address family are served in userspace"


@pytest.fixture(autouse=True)
def full_checksums(lab: Lab) -> None:
    """With offload on, the source's datagrams would carry only the pseudo-header sum (CHECKSUM_PARTIAL)
    and reach the sink unchecked."""
    lab.netns(lab.src, "ethtool", "-K", "src0", "tx", "off")


def assert_intact(report: dict[str, Any], count: int) -> None:
    assert report["received"] == count, report
    assert (report["lost"], report["duplicated"], report["corrupted"]) == (0, 0, 0), report


def checksum_errors(lab: Lab) -> int:
    """UDP and UDP6 InCsumErrors at the sink."""
    lines = lab.netns(lab.sink, "cat", "/proc/net/snmp", "/proc/net/snmp6").stdout.splitlines()
    udp = [line.split() for line in lines if line.startswith("Udp:")]
    v4 = int(dict(zip(udp[0], udp[1], strict=True))["InCsumErrors"])
    v6 = next(int(line.split()[1]) for line in lines if line.startswith("Udp6InCsumErrors"))
    return v4 + v6


@pytest.mark.parametrize(
    ("group_in", "source", "spec", "group_out"),
    [
        pytest.param(G6_IN, SRC_IP6, f"[{G6_OUT}]:6001:rout", G6_OUT, id="v6-to-v6"),
        pytest.param("239.1.1.1", SRC_IP, f"[{G6_OUT}]:6001:rout", G6_OUT, id="v4-to-v6"),
        pytest.param(G6_IN, SRC_IP6, "239.2.2.2:6001:rout", "239.2.2.2", id="v6-to-v4"),
    ],
)
def test_relay_across_families_keeps_every_payload(
    lab: Lab, workdir: Path, relay: Relay, engine: str, group_in: str, source: str, spec: str, group_out: str
) -> None:
    relay.add("x", spec, group=group_in)
    count, size = 3000, 1400
    sink = start_sink(lab, workdir, group_out, "6001", expect=count)
    send(lab, count=count, rate=3000, size=size, group=group_in, source=source)
    assert_intact(sink.result(), count)
    assert checksum_errors(lab) == 0
    flow = relay.wait_relayed("x", count)
    assert (flow["packets_relayed"], flow["bytes_relayed"]) == (count, count * size)
    (out,) = flow["outputs"]
    assert (out["packets_sent"], out["send_errors"]) == (count, 0)
    (rule,) = relay.rules()
    same_family = (":" in group_in) == (":" in group_out)
    assert (rule["state"], rule["engine"]) == ("active", engine if same_family else "userspace")
    if engine == "kernel" and not same_family:
        assert rule["state_reason"] == FAMILY_CHANGE
    if ":" in group_in:  # MLD membership on the input, whichever engine serves the rule
        assert G6_IN in lab.netns(lab.relay, "ip", "-6", "maddr", "show", "dev", "rin").stdout


@pytest.mark.parametrize("mixed", [False, True], ids=["v6-outputs", "both-families"])
def test_ipv6_fan_out_with_hop_limits(lab: Lab, workdir: Path, relay: Relay, engine: str, mixed: bool) -> None:
    groups = ["ff3e::10:1", "ff3e::10:2", "ff3e::10:3"] + (["239.10.0.1"] if mixed else [])
    specs = [f"[{g}]:7000:rout" if ":" in g else f"{g}:7000:rout" for g in groups]
    relay.add("fan", ",".join(specs), group=G6_IN, extra=["--ttl", "9"])
    count = 2000
    sink = start_sink(lab, workdir, ",".join(groups), "7000", expect=count * len(groups))
    capture = subprocess.Popen(
        lab.exec_argv(lab.sink, ["tcpdump", "-ni", "snk0", "-c", "1", "-v", "ip6 and udp dst port 7000"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        send(lab, count=count, rate=4000, size=1000, group=G6_IN, source=SRC_IP6)
        assert_intact(sink.result(), count * len(groups))
        assert checksum_errors(lab) == 0
        header, _ = capture.communicate(timeout=10)
    finally:
        if capture.poll() is None:
            capture.kill()
            capture.wait()
    assert "hlim 9" in header, header
    flow = relay.wait_relayed("fan", count)
    assert (flow["packets_relayed"], flow["bytes_relayed"]) == (count, count * 1000)
    assert [o["packets_sent"] for o in flow["outputs"]] == [count] * len(groups)
    assert [o["send_errors"] for o in flow["outputs"]] == [0] * len(groups)
    (rule,) = relay.rules()
    assert rule["engine"] == ("userspace" if mixed else engine), rule
    if mixed and engine == "kernel":
        assert rule["state_reason"] == FAMILY_CHANGE


_INJECT = r"""
import socket, sys
from mcr.packet.build import build_udp6_frame, ipv6_extension
group, src, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
common = dict(src_ip=src, dst_ip=group, dst_port=5001, payload=b"x" * 100)
kinds = {
    "hop_by_hop": ((0, ipv6_extension(60, b"\x01\x04" + bytes(4))), (60, ipv6_extension(17))),
    "fragment": ((44, ipv6_extension(17)),),
    "auth_header": ((51, ipv6_extension(17)),),
}
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("src0", 0))
for name in sys.argv[4:]:
    frame = build_udp6_frame(**common, extensions=kinds[name])
    for _ in range(count):
        s.send(frame)
"""


def test_extension_headers_are_walked_and_fragments_counted(lab: Lab, relay: Relay, engine: str) -> None:
    relay.add("ext", f"[{G6_OUT}]:6001:rout", group=G6_IN)
    n = 300
    argv = [sys.executable, "-c", _INJECT, G6_IN, SRC_IP6, str(n), "hop_by_hop", "fragment", "auth_header"]
    subprocess.run(lab.exec_argv(lab.src, argv), check=True, timeout=30)
    relay.wait_relayed("ext", n)

    def drops() -> dict[str, int]:  # the workers', and the kernel engine's
        totals = relay.drops("userspace")
        for reason, count in relay.drops("kernel").items():
            totals[reason] = totals.get(reason, 0) + count
        return totals

    counted = wait_for(lambda: (d := drops()).get("ext_header", 0) >= n and d, 10, what="ext_header drops")
    flow = relay.flow("ext")
    assert flow["packets_relayed"] == n  # the hop-by-hop and destination options headers were walked
    assert flow["bytes_relayed"] == n * 100
    assert (counted["fragment"], counted["ext_header"]) == (n, n)
    assert relay.rules()[0]["engine"] == engine


def _mcfilter6(lab: Lab) -> str:
    return lab.netns(lab.relay, "cat", "/proc/net/mcfilter6").stdout


def test_ipv6_source_rule_joins_with_mldv2_and_filters_by_prefix(
    lab: Lab, workdir: Path, relay: Relay, engine: str
) -> None:
    """Both engines: an IPv6 rule with a source host (joined source-specifically) relays that source's
    datagrams; a rule whose prefix excludes the sender relays nothing and counts them as no_rule."""
    relay.add(
        "elsewhere6", f"[{G6_OUT}]:6002:rout", group="ff3e::1:6", port=5002, extra=["--input-source", "fd00:9::/64"]
    )
    relay.add("ssm6", f"[{G6_OUT}]:6001:rout", group=G6_IN, extra=["--input-source", SRC_IP6])
    wait_for(lambda: IPv6Address(SRC_IP6).packed.hex() in _mcfilter6(lab), 5, what="a source-specific MLDv2 membership")
    sink = start_sink(lab, workdir, G6_OUT, "6001", expect=800)
    send(lab, count=800, rate=2000, size=700, group=G6_IN, source=SRC_IP6)
    send(lab, count=300, rate=2000, group="ff3e::1:6", port=5002, source=SRC_IP6)  # outside fd00:9::/64
    assert_intact(sink.result(), 800)
    assert checksum_errors(lab) == 0
    flow = relay.wait_relayed("ssm6", 800)
    assert (flow["packets_relayed"], flow["bytes_relayed"]) == (800, 800 * 700)
    assert flow["outputs"][0]["packets_sent"] == 800
    no_rule = wait_for(lambda: (n := relay.drops(engine).get("no_rule", 0)) >= 300 and n, 10, what="no_rule")
    assert no_rule == 300
    assert relay.flow("elsewhere6")["packets_relayed"] == 0
    views = {r["rule_id"]: r for r in relay.rules()}
    assert {r["engine"] for r in views.values()} == {engine}, views
    assert views["elsewhere6"]["input_source_prefix"] == "fd00:9::/64"  # input_source: hosts only


def test_two_sources_on_one_group_split_and_an_unlisted_source_is_ignored(
    lab: Lab, workdir: Path, relay: Relay
) -> None:
    others = ["fd00:200:1::3", "fd00:200:1::4"]
    for address in others:
        lab.netns(lab.src, "ip", "-6", "addr", "add", f"{address}/64", "dev", "src0", "nodad")
    relay.add("from2", f"[{G6_OUT}]:6002:rout", group=G6_IN, extra=["--input-source", SRC_IP6])
    relay.add("from3", f"[{G6_OUT}]:6003:rout", group=G6_IN, extra=["--input-source", others[0]])
    refused = relay.ctl(
        "add", "--input-interface", "rin", "--input-group", G6_IN, "--input-port", "5001",
        "--input-source", "fd00:200:1::/64", "--outputs", f"[{G6_OUT}]:6004:rout", check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "overlaps rule 'from2'" in refused.stderr + refused.stdout

    # source-specific MLDv2 joins, one per source
    def joined() -> str:
        text = _mcfilter6(lab)
        return text if IPv6Address(SRC_IP6).packed.hex() in text and IPv6Address(others[0]).packed.hex() in text else ""

    text = wait_for(joined, 5, what="source-specific MLD memberships")
    assert IPv6Address(G6_IN).packed.hex() in text and IPv6Address(others[1]).packed.hex() not in text

    sink2 = start_sink(lab, workdir, G6_OUT, "6002", expect=1000)
    sink3 = start_sink(lab, workdir, G6_OUT, "6003", expect=700)
    send(lab, count=1000, rate=2000, group=G6_IN, source=SRC_IP6)
    send(lab, count=700, rate=2000, group=G6_IN, source=others[0])
    send(lab, count=500, rate=2000, group=G6_IN, source=others[1])  # no rule for this source
    assert_intact(sink2.result(), 1000)
    assert_intact(sink3.result(), 700)
    assert relay.wait_relayed("from2", 1000)["packets_relayed"] == 1000
    assert relay.wait_relayed("from3", 700)["packets_relayed"] == 700
    no_rule = wait_for(
        lambda: (n := sum(w["drops"].get("no_rule", 0) for w in relay.workers())) >= 500 and n, 10, what="no_rule"
    )
    assert no_rule >= 500
    listed = {r["rule_id"]: r["input_source"] for r in relay.rules()}
    assert listed == {"from2": SRC_IP6, "from3": others[0]}
    stats = {f["rule_id"]: f["input_source"] for f in relay.json("stats")["Stats"]}
    assert stats == listed
    relay.ctl("remove", "--rule-id", "from3")
    wait_for(lambda: IPv6Address(others[0]).packed.hex() not in _mcfilter6(lab), 5, what="the source to be left")


def test_ipv4_source_specific_rule_joins_with_igmpv3_and_filters_by_prefix(
    lab: Lab, workdir: Path, relay: Relay, engine: str
) -> None:
    """Both engines: the kernel engine serves an IPv4 rule with a source when it is alone on its flow."""
    # added first: /proc/net/mcfilter lists an interface's sources only when its newest group has some
    relay.add("elsewhere", "239.2.2.2:6002:rout", group="232.1.1.2", port=5002, extra=["--input-source", "10.9.0.0/16"])
    relay.add("ssm", "239.2.2.2:6001:rout", group="232.1.1.1", extra=["--input-source", SRC_IP])
    group_hex = socket.inet_aton("232.1.1.1").hex().upper()
    source_hex = socket.inet_aton(SRC_IP).hex().upper()

    def joined() -> str:
        text = lab.netns(lab.relay, "cat", "/proc/net/mcfilter").stdout.upper()
        return text if group_hex in text and source_hex in text else ""

    wait_for(joined, 5, what="an IGMPv3 source-specific membership")
    sink = start_sink(lab, workdir, "239.2.2.2", "6001", expect=800)
    send(lab, count=800, rate=2000, group="232.1.1.1")
    send(lab, count=300, rate=2000, group="232.1.1.2", port=5002)  # from outside 10.9.0.0/16
    assert_intact(sink.result(), 800)
    assert relay.wait_relayed("ssm", 800)["packets_relayed"] == 800
    assert relay.flow("elsewhere")["packets_relayed"] == 0
    views = {r["rule_id"]: r for r in relay.rules()}
    assert views["elsewhere"]["input_source_prefix"] == "10.9.0.0/16"  # input_source: hosts only
    assert {r["engine"] for r in views.values()} == {engine}, views
