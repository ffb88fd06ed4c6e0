from ipaddress import IPv4Address

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from mcr.model.errors import ConfigError
from mcr.model.ratelimit import RateLimit, RateUnit
from mcr.model.rules import Engine, ForwardingRule
from mcr.model.status import FlowStats, KernelStatus, OutputStats, RuleState, RuleView, WorkerInfo
from mcr.supervisor.metrics import Snapshot, metric_families, parse_listen_address

LIMIT = RateLimit(500, RateUnit.PPS, 50)
SNAP = Snapshot(
    flows=(
        FlowStats(
            "239.1.1.1",
            5000,
            10,
            1000,
            0.0,
            0.0,
            "r1",
            "eth0",
            (OutputStats("239.2.2.2", 6000, "eth1", 9, 900, 1),),
            {"fragment": 2, "rate_limited": 7},
        ),
    ),
    rules=(
        RuleView(
            ForwardingRule("r1", "eth0", IPv4Address("239.1.1.1"), 5000, (), rate_limit=LIMIT),
            Engine.USERSPACE,
            RuleState.ACTIVE,
        ),
        RuleView(ForwardingRule("r2", "eth9", IPv4Address("239.1.1.2"), 5000, ()), Engine.USERSPACE, RuleState.WAITING),
    ),
    workers=(WorkerInfo(10, "DataPlane", None, 0, "Running", 65534, 2, {"no_rule": 5}, 100, 3, 0, 4),),
    kernel=KernelStatus(True, "auto", rules=6, drops={"fragment": 8}),
)


class _Fixed(Collector):
    def collect(self):  # type: ignore[no-untyped-def]
        return metric_families(SNAP)


def test_exposition() -> None:
    registry = CollectorRegistry()
    registry.register(_Fixed())
    text = generate_latest(registry).decode()
    expected = [
        'mcr_rule_packets_total{input_group="239.1.1.1",input_interface="eth0",input_port="5000",'
        'input_source="",rule_id="r1"} 10.0',
        'mcr_rule_drops_total{reason="fragment",rule_id="r1"} 2.0',
        'mcr_rule_drops_total{reason="rate_limited",rule_id="r1"} 7.0',
        'mcr_rule_rate_limit{rule_id="r1",unit="pps"} 500.0',
        'mcr_output_errors_total{group="239.2.2.2",interface="eth1",output="0",port="6000",rule_id="r1"} 1.0',
        'mcr_rules{engine="userspace",state="active"} 1.0',
        'mcr_rules{engine="userspace",state="waiting"} 1.0',
        'mcr_worker_restarts_total{worker="0"} 2.0',
        'mcr_kernel_drops_total{worker="0"} 3.0',
        'mcr_ring_resyncs_total{worker="0"} 4.0',
        'mcr_worker_drops_total{reason="no_rule",worker="0"} 5.0',
        'mcr_build_info{implementation="mcr-python",version="0.1.0"} 1.0',
        'mcr_kernel_engine_loaded{mode="auto"} 1.0',
        "mcr_kernel_engine_rules 6.0",
        'mcr_kernel_engine_drops_total{reason="fragment"} 8.0',
    ]
    for line in expected:
        assert line in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9431", ("127.0.0.1", 9431)), (":9000", ("0.0.0.0", 9000)), ("[::1]:80", ("::1", 80))],
)
def test_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["9431", "host:", "host:0", "host:70000", "host:http"])
def test_bad_listen_address(text: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen_address(text)


def test_a_scrape_takes_a_fresh_snapshot_at_most_once_a_second() -> None:
    from mcr.supervisor import metrics

    taken: list[int] = []

    def source() -> Snapshot:
        taken.append(1)
        if len(taken) == 3:
            raise TimeoutError("the loop is busy")
        return Snapshot()

    collector = metrics._SnapshotCollector(source)
    list(collector.collect())
    list(collector.collect())
    assert len(taken) == 1, "a second scrape within FRESH_S is served from the same snapshot"
    collector.taken -= metrics.FRESH_S
    list(collector.collect())
    collector.taken -= metrics.FRESH_S
    assert list(collector.collect()), "a failed snapshot: the last one is served"
    assert len(taken) == 3
