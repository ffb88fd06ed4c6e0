"""Real traffic through the real relay: integrity, counters, fan-out, payload sizes, jumbo frames, workers."""

from __future__ import annotations

from typing import Any

import pytest

from .netns import SRC_IP, Chain, NetLab, build_chain
from .relay import SinkReport, Supervisor, generate, start_generator, start_sink

pytestmark = pytest.mark.netns

IN_GROUP = "239.1.1.1"
IN_PORT = 5000


def assert_intact(
    entry: dict[str, Any],
    count: int,
    *,
    size: int | None = None,
    in_order: bool = False,
    relay: Supervisor | None = None,
) -> None:
    """Every packet once, none corrupted or foreign (and in order, when asked).

    On failure the message shows the sink's counts and, with `relay`, the relay's own stats and workers, so
    that a loss can be placed (relay input, relay output or sink).
    """
    got = {k: entry[k] for k in ("received", "unique", "lost", "duplicated", "corrupted", "unnumbered")}
    want = {"received": count, "unique": count, "lost": 0, "duplicated": 0, "corrupted": 0, "unnumbered": 0}
    if size is not None:
        got["bytes"], want["bytes"] = entry["bytes"], count * size
    if in_order:
        got["reordered"], want["reordered"] = entry["reordered"], 0
    if got != want:
        context = relay.snapshot() if relay is not None else {}
        ring = sum(int(w.get("kernel_drops", 0)) for w in context.get("workers", []))
        where = f"the relay's capture ring dropped {ring} frames (kernel_drops); " if ring else ""
        raise AssertionError(f"{where}sink got {got}, expected {want}; relay: {context}")


def assert_counters(flow: dict[str, Any], count: int, size: int, outputs: int = 1) -> None:
    assert (flow["packets_relayed"], flow["bytes_relayed"]) == (count, count * size), flow
    assert len(flow["outputs"]) == outputs, flow
    for out in flow["outputs"]:
        assert (out["packets_sent"], out["bytes_sent"], out["send_errors"]) == (count, count * size, 0), out


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_one_to_one_relay_is_lossless_and_counted(chain: Chain) -> None:
    """20k pps x 1400 B for 5 s across a source the relay's kernel cannot route back to (strict rp_filter)."""
    lab = chain.lab
    assert chain.sysctl(chain.relay, "net.ipv4.conf.all.rp_filter") == "1"
    assert chain.sysctl(chain.relay, "net.ipv4.conf.rin.rp_filter") == "1"
    assert lab.run(chain.relay, "ip", "route", "get", SRC_IP, check=False).returncode != 0
    sup = Supervisor.start(lab, chain.relay)
    sup.add_rule(rule_id="r1", group=IN_GROUP, port=IN_PORT, outputs=["239.2.2.2:6000:rout"])
    (rule,) = sup.rules()
    assert (rule["rule_id"], rule["state"]) == ("r1", "active"), rule
    count, size = 100_000, 1400
    sink = start_sink(lab, chain.sink, [("239.2.2.2", 6000)], expect=count, duration=60)
    generate(chain, IN_GROUP, IN_PORT, rate=20_000, size=size, count=count)
    report = sink.report(timeout=60)
    assert_intact(report.doc, count, size=size, in_order=True, relay=sup)
    assert_counters(sup.wait_relayed("r1", count), count, size)


@pytest.mark.timeout(60)
def test_fan_out_one_to_three_groups_on_one_interface(chain: Chain) -> None:
    sup = Supervisor.start(chain.lab, chain.relay)
    outs = [("239.3.0.1", 7001), ("239.3.0.2", 7002), ("239.3.0.3", 7003)]
    sup.add_rule(rule_id="fan3", group=IN_GROUP, port=IN_PORT, outputs=[f"{g}:{p}:rout" for g, p in outs])
    count, size = 20_000, 1400
    sink = start_sink(chain.lab, chain.sink, outs, expect=3 * count)
    generate(chain, IN_GROUP, IN_PORT, rate=10_000, size=size, count=count)
    report = sink.report()
    for group, port in outs:
        assert_intact(report.stream(group, port), count, size=size, relay=sup)
    assert_counters(sup.wait_relayed("fan3", count), count, size, outputs=3)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_fan_out_across_interfaces_and_namespaces(netlab: NetLab) -> None:
    """One input to three interfaces: `rout` and `rout2` into SINK, `rout3` into a namespace of its own."""
    chain = build_chain(netlab, extra_outputs=2, separate_sinks={2})
    second, third = chain.outputs[1], chain.outputs[2]
    assert second.sink_ns == chain.sink and third.sink_ns not in (chain.sink, chain.relay)
    sup = Supervisor.start(netlab, chain.relay)
    outputs = ["239.4.0.1:7001:rout", "239.4.0.2:7002:rout2", "239.4.0.3:7003:rout3"]
    sup.add_rule(rule_id="ifs", group=IN_GROUP, port=IN_PORT, outputs=outputs)
    count, size = 5000, 1000
    sinks = [
        start_sink(netlab, chain.sink, [("239.4.0.1", 7001)], interface="snk0", expect=count),
        start_sink(netlab, second.sink_ns, [("239.4.0.2", 7002)], interface=second.sink_if, expect=count),
        start_sink(netlab, third.sink_ns, [("239.4.0.3", 7003)], interface=third.sink_if, expect=count),
    ]
    generate(chain, IN_GROUP, IN_PORT, rate=5000, size=size, count=count)
    for sink in sinks:
        assert_intact(sink.report().doc, count, size=size, relay=sup)
    flow = sup.wait_relayed("ifs", count)
    assert [o["interface"] for o in flow["outputs"]] == ["rout", "rout2", "rout3"]
    assert_counters(flow, count, size, outputs=3)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_fan_out_one_to_fifty(chain: Chain) -> None:
    """50 outputs `239.10.0.i:(6000+i):rout`; one sink receives the 50 streams, each gets everything."""
    sup = Supervisor.start(chain.lab, chain.relay)
    outs = [(f"239.10.0.{i}", 6000 + i) for i in range(1, 51)]
    sup.add_rule(rule_id="fan50", group=IN_GROUP, port=IN_PORT, outputs=[f"{g}:{p}:rout" for g, p in outs])
    count, size = 1000, 512
    sink = start_sink(chain.lab, chain.sink, outs, expect=50 * count, duration=60)
    generate(chain, IN_GROUP, IN_PORT, rate=500, size=size, count=count)
    report: SinkReport = sink.report(timeout=60)
    assert len(report.streams) == 50
    bad = {s["stream"]: report.summary(s) for s in report.streams if s["unique"] != count or s["received"] != count}
    assert not bad, (
        f"{len(bad)} of 50 streams did not get exactly {count} intact packets, e.g. {list(bad.items())[:3]}; "
        f"relay: {sup.snapshot()}"
    )
    assert report["duplicated"] == 0 and report["corrupted"] == 0
    assert_counters(sup.wait_relayed("fan50", count), count, size, outputs=50)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [1, 46, 64, 1472])
def test_payload_sizes(chain: Chain, size: int) -> None:
    """Tiny payloads (below the numbered header: counted as unnumbered) up to a full 1500-MTU datagram."""
    sup = Supervisor.start(chain.lab, chain.relay)
    sup.add_rule(rule_id="sz", group=IN_GROUP, port=IN_PORT, outputs=["239.2.2.2:6000:rout"])
    count = 2000
    sink = start_sink(chain.lab, chain.sink, [("239.2.2.2", 6000)], expect=count)
    generate(chain, IN_GROUP, IN_PORT, rate=5000, size=size, count=count)
    report = sink.report()
    assert (report["received"], report["bytes"], report["duplicated"], report["corrupted"]) == (
        count,
        count * size,
        0,
        0,
    ), report.summary()
    if size >= 46:  # large enough to carry a sequence number: each one exactly once
        assert_intact(report.doc, count, size=size, relay=sup)
    assert_counters(sup.wait_relayed("sz", count), count, size)


@pytest.mark.timeout(60)
def test_jumbo_payload_on_9000_mtu_links(netlab: NetLab) -> None:
    chain = build_chain(netlab, mtu=9000)
    sup = Supervisor.start(netlab, chain.relay)
    sup.add_rule(rule_id="jumbo", group=IN_GROUP, port=IN_PORT, outputs=["239.2.2.2:6000:rout"])
    count, size = 1000, 8972
    sink = start_sink(netlab, chain.sink, [("239.2.2.2", 6000)], expect=count)
    generate(chain, IN_GROUP, IN_PORT, rate=2000, size=size, count=count)
    assert_intact(sink.report().doc, count, size=size, relay=sup)
    assert_counters(sup.wait_relayed("jumbo", count), count, size)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_two_workers_share_the_load_without_duplicates(chain: Chain) -> None:
    lab = chain.lab
    sup = Supervisor.start(lab, chain.relay, num_workers=2)
    workers = sup.workers()
    assert len(workers) == 2, workers
    assert {w["worker_type"] for w in workers} == {"DataPlane"}
    assert len({w["pid"] for w in workers}) == 2, workers
    # several flows, so that the fan-out hash spreads them over both workers
    flows = [(f"239.1.1.{i}", 5000 + i, f"239.5.0.{i}", 7000 + i) for i in range(1, 5)]
    for group, port, out_group, out_port in flows:
        sup.add_rule(rule_id=f"w{port}", group=group, port=port, outputs=[f"{out_group}:{out_port}:rout"])
    count, size = 10_000, 1200
    sink = start_sink(lab, chain.sink, [(g, p) for _, _, g, p in flows], expect=4 * count, duration=60)
    gens = [start_generator(chain, g, p, rate=5000, size=size, count=count) for g, p, _, _ in flows]
    for gen in gens:
        summary = gen.json(timeout=30)
        assert (summary["sent"], summary["errors"]) == (count, 0), summary
    report = sink.report(timeout=60)
    for _, _, out_group, out_port in flows:
        assert_intact(report.stream(out_group, out_port), count, size=size, relay=sup)
    for _, port, _, _ in flows:
        assert_counters(sup.wait_relayed(f"w{port}", count), count, size)
    assert sorted(w["pid"] for w in sup.workers()) == sorted(w["pid"] for w in workers), "no worker restarted"
