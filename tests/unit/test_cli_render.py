"""control_client's human-readable views, rendered to plain text without a socket or a terminal."""

from __future__ import annotations

import io
from ipaddress import IPv4Address, IPv4Network

import pytest
from rich.console import Console, RenderableType

from mcr.cli.render import (
    format_bit_rate,
    format_bytes,
    format_counters,
    format_pps,
    render_log_levels,
    render_response,
    render_rules,
    render_stats,
    render_version,
    render_workers,
)
from mcr.model.rules import Engine, ForwardingRule, OutputDestination
from mcr.model.status import FlowStats, LogLevels, OutputStats, RuleState, RuleView, VersionInfo, WorkerInfo
from mcr.protocol.control import Error, LogLevelsResponse, Rules, Stats, Success, Version, Workers


def text(renderable: RenderableType) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None, highlight=False).print(renderable, markup=False)
    return out.getvalue()


def lines(renderable: RenderableType) -> list[str]:
    """Non-blank lines with runs of spaces squeezed, without the rule under a table's header."""
    return [" ".join(line.split()) for line in text(renderable).splitlines() if line.strip(" ─")]


RULE = RuleView(
    rule=ForwardingRule(
        rule_id="r1",
        input_interface="eth0",
        input_group=IPv4Address("239.1.1.1"),
        input_port=5000,
        outputs=(
            OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1", 1),
            OutputDestination(IPv4Address("239.3.3.3"), 7000, "eth2", 8),
        ),
    ),
    engine=Engine.USERSPACE,
    state=RuleState.ACTIVE,
)
WAITING = RuleView(
    rule=ForwardingRule(
        rule_id="r2",
        input_interface="eth9",
        input_group=IPv4Address("239.9.9.9"),
        input_port=9000,
        outputs=(),
        input_source=IPv4Network("10.0.0.5/32"),
    ),
    engine=Engine.KERNEL,
    state=RuleState.WAITING,
    state_reason="interface eth9 [missing]",
)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.0, "0 bit/s"), (999.0, "999 bit/s"), (1500.0, "1.5 kbit/s"), (12_345_678.0, "12.3 Mbit/s"),
     (9.87e9, "9.9 Gbit/s"), (2e12, "2.0 Tbit/s")],
)  # fmt: skip
def test_bit_rate_in_si_units(value: float, shown: str) -> None:
    assert format_bit_rate(value) == shown


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 << 20, "5.0 MiB"), (3 << 30, "3.0 GiB"), (1 << 41, "2.0 TiB")],
)
def test_bytes_in_iec_units(value: int, shown: str) -> None:
    assert format_bytes(value) == shown


def test_small_counters() -> None:
    assert format_pps(0.5) == "0.5"
    assert format_pps(123456.7) == "123457"
    assert format_counters({}) == "-"
    assert format_counters({"truncated": 0}) == "-"
    assert format_counters({"b": 2, "a": 1, "c": 0}) == "a=1, b=2"


def test_rules_table() -> None:
    shown = lines(render_rules([WAITING, RULE]))
    assert shown[0].split() == ["ID", "Input", "Outputs", "Engine", "State"]
    # Sorted by id; one output per line with its TTL; the reason shown verbatim (no markup eaten).
    assert shown[1] == "r1 eth0 239.1.1.1:5000 239.2.2.2:6000:eth1 ttl 1 userspace active"
    assert shown[2] == "239.3.3.3:7000:eth2 ttl 8"
    assert shown[3] == "r2 eth9 239.9.9.9:9000 from 10.0.0.5 (none) kernel waiting (interface eth9 [missing])"
    assert lines(render_rules([])) == ["no rules"]


def test_a_rate_limit_is_shown_under_the_input() -> None:
    from dataclasses import replace

    from mcr.cli.render import render_config
    from mcr.model.ratelimit import RateLimit, RateUnit
    from mcr.model.rules import Limits
    from mcr.model.status import ConfigView

    limited = replace(RULE.rule, rate_limit=RateLimit(50_000_000, RateUnit.BPS, 65_535))
    shown = lines(render_rules([RuleView(limited, Engine.KERNEL, RuleState.ACTIVE)]))
    assert shown[2].startswith("limit 50000000 bps, burst 65535 B")
    assert "limit 50000000 bps, burst 65535 B" in text(render_config(ConfigView(None, (), Limits(), (limited,))))


def test_an_active_rule_shows_its_reason_too() -> None:
    degraded = RuleView(RULE.rule, Engine.USERSPACE, RuleState.ACTIVE, "output[0] eth1 does not exist")
    assert lines(render_rules([degraded]))[1].endswith("active (output[0] eth1 does not exist)")


def test_a_pending_rule_says_what_it_waits_for() -> None:
    pending = RuleView(
        RULE.rule, Engine.USERSPACE, RuleState.PENDING, "workers are applying the rule set (generation 4)"
    )
    shown = " ".join(" ".join(line.split()) for line in lines(render_rules([pending])))
    assert "pending (workers are applying the rule set (generation 4))" in shown


def test_stats_table() -> None:
    flow = FlowStats(
        input_group="239.1.1.1",
        input_port=5000,
        packets_relayed=1000,
        bytes_relayed=1_400_000,
        packets_per_second=250.0,
        bits_per_second=2_800_000.0,
        rule_id="r1",
        input_interface="eth0",
        outputs=(
            OutputStats("239.2.2.2", 6000, "eth1", 1000, 1_400_000, 0),
            OutputStats("239.3.3.3", 7000, "eth2", 990, 1_386_000, 10),
        ),
        drops={"truncated": 3, "no_rule": 0, "fragment": 2},
    )
    original = FlowStats("239.5.5.5", 5555, 7, 700, 0.5, 4.0)  # the original's six fields only
    esp = FlowStats("239.6.6.6", 0, 2, 100, 0.1, 1.0, rule_id="s", input_interface="eth0", input_protocol=50)
    shown = lines(render_stats([flow, original, esp]))
    assert shown[0].split() == ["Rule", "Flow", "Packets", "Bytes", "Pkt/s", "Bit", "rate", "Errors"]
    assert shown[1:] == [
        "- 239.5.5.5:5555 7 700 B 0.5 4 bit/s",
        "r1 eth0 239.1.1.1:5000 1000 1.3 MiB 250 2.8 Mbit/s",
        "-> 239.2.2.2:6000:eth1 1000 1.3 MiB 0",
        "-> 239.3.3.3:7000:eth2 990 1.3 MiB 10",
        "drops: fragment=2, truncated=3",
        "s eth0 239.6.6.6:0 esp 2 100 B 0.1 1 bit/s",
    ]
    assert lines(render_stats([])) == ["no statistics yet"]


def test_stats_without_drops_has_no_drop_row() -> None:
    flow = FlowStats("239.1.1.1", 5000, 1, 1, 0.0, 0.0, rule_id="r1", drops={"truncated": 0})
    assert not any("drops" in line for line in lines(render_stats([flow])))


def test_workers_table() -> None:
    workers = [
        WorkerInfo(pid=4321, worker_type="DataPlane", core_id=1, worker_id=1, uid=65534, restarts=2,
                   drops={"truncated": 4}, kernel_packets=10_000, kernel_drops=5, stats_pipe_errors=1,
                   ring_resyncs=3),
        WorkerInfo(pid=4320, worker_type="DataPlane", core_id=0, worker_id=0, status="Restarting"),
    ]  # fmt: skip
    shown = lines(render_workers(workers))
    assert shown[0].split() == [
        "PID", "Type", "ID", "Core", "Status", "UID", "Restarts", "Kernel", "pkts", "Kernel", "drops", "Ring",
        "resyncs", "Drops",
    ]  # fmt: skip
    assert shown[1] == "4320 DataPlane 0 0 Restarting - 0 0 0 0 -"
    assert shown[2] == "4321 DataPlane 1 1 Running 65534 2 10000 5 3 stats_pipe_errors=1, truncated=4"
    assert lines(render_workers([])) == ["no workers"]


def test_log_levels() -> None:
    shown = lines(render_log_levels(LogLevels("Info", {"Ingress": "Debug", "Egress": "Warning"})))
    assert shown == ["global: Info", "facility overrides:", "Facility Level", "Egress Warning", "Ingress Debug"]
    assert lines(render_log_levels(LogLevels("Notice", {}))) == ["global: Notice", "facility overrides: none"]


def test_version() -> None:
    assert render_version(VersionInfo("0.1.0", 1, "mcr-python")) == (
        "version 0.1.0\nprotocol 1\nimplementation mcr-python"
    )


@pytest.mark.parametrize(
    ("response", "first_line"),
    [
        (Success("Rule r1 added"), "Rule r1 added"),
        (Success("pong: 2/2 workers ready [ok]"), "pong: 2/2 workers ready [ok]"),
        (Error("Rule r9 not found"), "error: Rule r9 not found"),
        (Rules((RULE,)), "ID Input Outputs Engine State"),
        (Stats(()), "no statistics yet"),
        (Workers(()), "no workers"),
        (LogLevelsResponse(LogLevels("Info", {})), "global: Info"),
        (Version(VersionInfo("0.1.0", 1)), "version 0.1.0"),
    ],
)
def test_every_response_type_renders(response: object, first_line: str) -> None:
    from mcr.protocol.control import Response

    assert isinstance(response, Response)
    assert lines(render_response(response))[0] == first_line


def test_ipv6_flows_and_sources_are_shown_with_brackets() -> None:
    flow = FlowStats(
        "ff3e::1:5",
        5000,
        10,
        1000,
        0.0,
        0.0,
        rule_id="v6",
        input_interface="eth0",
        outputs=(OutputStats("ff3e::10", 6000, "eth1", 10, 1000, 0), OutputStats("239.1.1.1", 6000, "eth2")),
        input_source="fd00:200::/32",
    )
    shown = "\n".join(lines(render_stats([flow])))
    assert "eth0 [ff3e::1:5]:5000 from fd00:200::/32" in shown
    assert "-> [ff3e::10]:6000:eth1" in shown and "-> 239.1.1.1:6000:eth2" in shown
