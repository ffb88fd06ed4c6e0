from ipaddress import IPv4Address, IPv6Address, IPv6Network

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from mcr.model.errors import ConfigError
from mcr.model.ratelimit import RateLimit, RateUnit
from mcr.model.rules import Engine, ForwardingRule, OutputDestination
from mcr.model.status import Counted, FlowCounts, KernelStatus, RuleState, RuleView, WorkerInfo
from mcr.supervisor.metrics import Snapshot, metric_families, parse_listen_address

LIMIT = RateLimit(500, RateUnit.PPS, 50)
R1 = ForwardingRule(
    "r1",
    "eth0",
    IPv4Address("239.1.1.1"),
    5000,
    (OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1"),),
    rate_limit=LIMIT,
)
SNAP = Snapshot(
    flows=((R1, FlowCounts(10, 1000, 0.0, 0.0, (9, 900, 1), (("fragment", 2), ("rate_limited", 7)))),),
    rules=(
        RuleView(R1, Engine.USERSPACE, RuleState.ACTIVE),
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


def _flows(n: int) -> tuple[Counted, ...]:
    """Flows with every shape the text has to carry: no outputs or several, drops, escaped label values (and
    a % that must not be read as a placeholder), counters past the point where the text format switches to
    an exponent, an IPv6 group and a source prefix."""
    flows: list[Counted] = []
    for i in range(n):
        outputs = tuple(
            OutputDestination(IPv4Address(f"239.2.{i % 250}.{k}"), 6000 + k, f"eth{k}") for k in range(i % 4)
        )
        counts = tuple(n for k in range(i % 4) for n in (i * 7 * 10**k, i * 1400 * 10**k, k))
        drops = (("rate_limited", 2), ("fragment", i)) if i % 3 == 0 else ()
        rule_id = 'odd "id" \\ with\nnewline and 100%s' if i == 5 else f"rule-{i}"
        if i == 7:
            group, source = IPv6Address("ff3e::8000:7"), IPv6Network("2001:db8::/64")
            rule = ForwardingRule(rule_id, "eth0", group, 5000 + i, outputs, source)
        else:
            rule = ForwardingRule(rule_id, "eth0", IPv4Address(f"239.1.{i % 250}.1"), 5000 + i, outputs)
        flows.append((rule, FlowCounts(i * 10**6, i * 10**9, 0.5 * i, 8.0 * i, counts, drops)))
    return tuple(flows)


def _normal(text: str) -> list[tuple[str, object]]:
    """A scrape's lines, each sample's value read as a number (the comments as they are)."""
    lines: list[tuple[str, object]] = []
    for line in text.splitlines():
        if line.startswith("#"):
            lines.append((line, None))
        else:
            sample, _, value = line.rpartition(" ")
            lines.append((sample, float(value)))
    return lines


@pytest.mark.parametrize("openmetrics", [False, True])
def test_flow_text_is_what_prometheus_client_writes(openmetrics: bool) -> None:
    """The per-flow families are written without prometheus_client's objects: the library's lines, in its
    order, each counter written as the integer it is (the library writes its float, `1e+09`); the library's
    own parser reads them back."""
    from prometheus_client.openmetrics import exposition as om
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as read_openmetrics
    from prometheus_client.parser import text_string_to_metric_families as read_text

    from mcr.supervisor.metrics import flow_families, flow_text

    snap = Snapshot(flows=_flows(40))

    class Flows(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return flow_families(snap)

    library = (om.generate_latest(Flows()) if openmetrics else generate_latest(Flows())).decode()
    ours = flow_text(snap.flows, openmetrics=openmetrics)
    assert _normal(ours) == _normal(library.removesuffix("# EOF\n"))
    assert "e+" in library and "e+" not in ours and "} 39000000000\n" in ours
    assert r"odd \"id\" \\ with\nnewline and 100%s" in ours
    read = list(read_openmetrics(ours + "# EOF\n")) if openmetrics else list(read_text(ours))
    assert sum(len(family.samples) for family in read) == len(_normal(ours)) - 2 * 6


def test_a_count_past_what_a_float_holds_is_written_exactly() -> None:
    from mcr.supervisor.metrics import flow_text

    rule, counts = _flows(2)[1]
    text = flow_text([(rule, counts._replace(packets=2**53 + 1))])
    assert f'rule_id="rule-1"}} {2**53 + 1}\n' in text


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("", "text/plain; version=0.0.4; charset=utf-8"),
        ("application/openmetrics-text; version=1.0.0", "application/openmetrics-text; version=1.0.0"),
    ],
)
def test_exposition_holds_every_family_in_the_format_asked(accept: str, content_type: str) -> None:
    from prometheus_client.openmetrics import exposition as om

    from mcr.supervisor.metrics import exposition

    body, ctype = exposition(SNAP, accept)
    assert ctype.startswith(content_type)
    registry = CollectorRegistry()
    registry.register(_Fixed())
    library = om.generate_latest(registry) if accept else generate_latest(registry)
    assert sorted(_normal(body.decode()), key=str) == sorted(_normal(library.decode()), key=str)
    if accept:
        assert body.endswith(b"# EOF\n")


def test_flow_text_keeps_the_templates_of_the_same_rule_objects() -> None:
    """Between scrapes the exporter keeps the line templates of each run of the same rule objects: a scrape
    of new counts writes them into the kept templates, and a changed rule has its run's templates made again."""
    from dataclasses import replace
    from operator import attrgetter

    from mcr.protocol.packedtext import RunTexts
    from mcr.supervisor import metrics

    made: list[str] = []

    def lines(rules):  # type: ignore[no-untyped-def]
        made.extend(r.rule_id for r in rules)
        return metrics.flow_lines(rules)

    flows = _flows(6)
    cache = RunTexts(lines, attrgetter("rule_id"))
    assert metrics.flow_text(flows, cache=cache) == metrics.flow_text(flows)
    assert sorted(made) == sorted(r.rule_id for r, _c in flows)
    made.clear()
    counted = (flows[1][0], flows[1][1]._replace(packets=123))
    text = metrics.flow_text((flows[0], counted, *flows[2:]), cache=cache)
    assert text == metrics.flow_text((flows[0], counted, *flows[2:]))
    assert 'rule_id="rule-1"} 123\n' in text and made == [], "new counts, the same rules: the templates kept"
    moved = (replace(flows[2][0], input_port=7000), flows[2][1])
    text = metrics.flow_text((flows[0], moved), cache=cache)
    assert 'input_port="7000",input_source="",rule_id="rule-2"} 2000000\n' in text
    assert text == metrics.flow_text((flows[0], moved)) and "rule-2" in made
