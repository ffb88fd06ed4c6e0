"""Properties of every decoder that reads a peer's or an operator's input: the control codec (both directions),
the worker channel and stats pipe, the state file and the TOML config. Each one, fed anything, returns a value
or raises its own precise error, never another exception; and what the encoders write decodes to what went in."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from mcr.membership.querier import INTEGER_TIMERS, TimerChanges
from mcr.membership.wire import Family
from mcr.model.config import Config, parse_config
from mcr.model.errors import ConfigError, ProtocolError
from mcr.model.levels import Facility, Severity
from mcr.model.ratelimit import RateLimit, RateUnit
from mcr.model.rules import Engine, ForwardingRule, InputProtocol, Limits, OutputDestination, RuleSource
from mcr.model.status import (
    ConfigView,
    Counted,
    FlowCounts,
    FlowStats,
    LogLevels,
    OutputStats,
    RuleState,
    RuleView,
    VersionInfo,
    WorkerInfo,
    flow_stats,
)
from mcr.protocol import control, worker
from mcr.supervisor.state import StateError, decode_state, encode_state

ipv4s = st.integers(min_value=0, max_value=0xFFFFFFFF).map(IPv4Address)
v4_sources = st.tuples(st.integers(min_value=0, max_value=0xFFFFFFFF), st.integers(min_value=0, max_value=32)).map(
    lambda t: IPv4Network(t, strict=False)
)
ints = st.integers(min_value=-(2**63), max_value=2**64)
counts = st.integers(min_value=0, max_value=2**64)
texts = st.text(max_size=20)
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=16)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)

# -------------------------------------------------------------------------------------- JSON-ish input

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["Ping", "AddRule", "239.1.1.1", "eth0", "Sync", "Ready", "rules", "outputs"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20,
)

# keys the decoders look for, so that generated objects reach past the first check
REQUEST_KEYS = ["AddRule", "RemoveRule", "SetGlobalLogLevel", "SetFacilityLogLevel", "Ping", "ListRules"]
RESPONSE_KEYS = ["Success", "Error", "Rules", "Stats", "Workers", "LogLevels", "Version", "Config"]
COMMAND_KEYS = ["Sync", "OpenSockets", "CloseSockets", "SetLogLevels", "Shutdown", "Ready", "SyncAck"]
FIELDS = [
    "rule_id", "input_interface", "input_group", "input_port", "outputs", "input_source", "group", "port",
    "interface", "ttl", "level", "facility", "generation", "rules", "ifindex", "index", "source", "ifindexes",
    "global", "overrides", "pid", "uid", "limits", "settings", "path", "protocol_version", "drops",
    "facility_overrides", "packets_relayed", "bytes_relayed", "w", "kp", "kd", "pe", "g",
]  # fmt: skip
field_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(FIELDS), inner, max_size=6),
    ),
    max_leaves=30,
)


def tagged(keys: list[str]) -> st.SearchStrategy[object]:
    """`{"Command": {...fields...}}` with fields the decoders know and values of any type."""
    return st.one_of(
        st.sampled_from(keys),
        st.dictionaries(st.sampled_from(keys), field_values, min_size=1, max_size=2),
    )


def documents(keys: list[str]) -> st.SearchStrategy[bytes]:
    """Bytes that are JSON of the right shape, JSON of any shape, or not JSON at all."""
    as_json = st.one_of(tagged(keys), json_values).map(lambda d: json.dumps(d).encode())
    return st.one_of(
        as_json, as_json.flatmap(truncations), st.binary(max_size=64), st.text(max_size=40).map(str.encode)
    )


def truncations(data: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, len(data)).map(lambda n: data[:n])


# payloads that Python's json module turns into something other than JSONDecodeError
HOSTILE = [
    b"[" * 100_000,
    b'{"a":' * 50_000,
    b"9" * 5000,
    b'{"AddRule": {"input_port": ' + b"1" * 5000 + b"}}",
    b"NaN",
    b'{"Ready": {"pid": Infinity, "uid": -Infinity}}',
    b"\xef\xbb\xbf" + b'"Ping"',
    b"\xff\xfe\x00",
    b'{"Version": {"protocol_version": "x"}}',
    b'{"Config": {"rules": 5}}',
    b'{"Config": {"limits": {"zz": 1}}}',
    b'{"LogLevels": {"facility_overrides": []}}',
]


def assert_total(decode: Callable[[bytes], object], data: bytes, error: type[Exception]) -> None:
    """`decode` returns, or raises `error` with a message; nothing else escapes."""
    try:
        decode(data)
    except error as e:
        assert str(e), "an error without a message"


def hostile(f: Callable[..., None]) -> Callable[..., None]:
    for data in HOSTILE:
        f = example(data)(f)
    return f


# ------------------------------------------------------------------------------------ control: decoders


@hostile
@given(documents(REQUEST_KEYS))
def test_decode_request_returns_a_request_or_a_protocol_error(data: bytes) -> None:
    assert_total(control.decode_request, data, ProtocolError)


@hostile
@given(documents(RESPONSE_KEYS))
def test_decode_response_returns_a_response_or_a_protocol_error(data: bytes) -> None:
    assert_total(control.decode_response, data, ProtocolError)


@given(st.lists(st.binary(max_size=40), max_size=6), st.integers(8, 64))
def test_request_framer_yields_the_first_line_or_refuses(chunks: list[bytes], limit: int) -> None:
    framer = control.RequestFramer(limit)
    stream = b""
    try:
        for chunk in chunks:
            stream += chunk
            done = framer.feed(chunk)
            if done is not None:
                assert done == stream.split(b"\n", 1)[0] and len(done) <= limit
                return
        assert framer.eof() == stream and len(stream) <= limit
    except ProtocolError as e:
        assert f"(max_request_bytes = {limit})" in str(e)
        assert len(stream.split(b"\n", 1)[0]) > limit


# ------------------------------------------------------------------------------- control: round trips

outputs = st.builds(OutputDestination, ipv4s, ints, names, ints)
requests = st.one_of(
    st.sampled_from(list(control.Query)),
    st.builds(
        control.AddRule,
        rule_id=st.one_of(st.none(), names),
        input_interface=names,
        input_group=ipv4s,
        input_port=ints,
        outputs=st.lists(outputs, max_size=4).map(tuple),
        input_source=st.one_of(st.none(), v4_sources),
    ),
    st.builds(control.RemoveRule, texts),
    st.builds(control.SetGlobalLogLevel, st.sampled_from(list(Severity))),
    st.builds(control.SetFacilityLogLevel, st.sampled_from(list(Facility)), st.sampled_from(list(Severity))),
    st.builds(
        control.SetQuerierTimers,
        st.sampled_from(list(Family)),
        st.one_of(st.none(), names),
        st.builds(
            TimerChanges,
            **{
                f.name: st.one_of(st.none(), ints if f.name in INTEGER_TIMERS else finite_floats)
                for f in fields(TimerChanges)
            },
        ).filter(lambda c: bool(c.given())),
    ),
)


@given(requests)
def test_every_request_round_trips(req: control.Request) -> None:
    data = control.encode_request(req)
    assert data.endswith(b"\n") and b"\n" not in data[:-1], "one request is one line"
    assert control.decode_request(data[:-1]) == req


rules = st.builds(
    ForwardingRule,
    rule_id=texts,
    input_interface=texts,
    input_group=ipv4s,
    input_port=ints,
    outputs=st.lists(outputs, max_size=3).map(tuple),
    input_source=st.one_of(st.none(), st.just(IPv4Network("10.0.0.1/32")), v4_sources),
    source=st.sampled_from(list(RuleSource)),
)
floats = st.floats(allow_nan=False, allow_infinity=False)
drops = st.dictionaries(texts, counts, max_size=3)
responses = st.one_of(
    st.builds(control.Success, texts),
    st.builds(control.Error, texts),
    st.builds(
        control.Rules,
        st.lists(
            st.builds(RuleView, rules, st.sampled_from(list(Engine)), st.sampled_from(list(RuleState)), texts),
            max_size=3,
        ).map(tuple),
    ),
    st.builds(
        control.Stats,
        st.lists(
            st.builds(
                FlowStats,
                texts,
                ints,
                counts,
                counts,
                floats,
                floats,
                texts,
                texts,
                st.lists(st.builds(OutputStats, texts, ints, texts, counts, counts, counts), max_size=3).map(tuple),
                drops,
            ),
            max_size=3,
        ).map(tuple),
    ),
    st.builds(
        control.Workers,
        st.lists(
            st.builds(
                WorkerInfo,
                ints,
                texts,
                st.one_of(st.none(), ints),
                ints,
                texts,
                st.one_of(st.none(), ints),
                counts,
                drops,
                counts,
                counts,
                counts,
                counts,
            ),
            max_size=3,
        ).map(tuple),
    ),
    st.builds(control.LogLevelsResponse, st.builds(LogLevels, texts, st.dictionaries(texts, texts, max_size=3))),
    st.builds(control.Version, st.builds(VersionInfo, texts, ints, texts)),
    st.builds(
        control.ConfigResponse,
        st.builds(
            ConfigView,
            st.one_of(st.none(), texts),
            st.lists(
                st.tuples(texts, st.one_of(st.none(), texts, ints, st.booleans())), max_size=4, unique_by=lambda t: t[0]
            ).map(tuple),
            st.builds(Limits, counts, counts, counts, counts),
            st.lists(rules, max_size=3).map(tuple),
        ),
    ),
)


def comparable(resp: control.Response) -> Any:
    """Responses compare by their JSON (a rule's `source` is not part of its equality)."""
    return control.response_json(resp)


@given(responses)
def test_every_response_round_trips(resp: control.Response) -> None:
    data = control.encode_response(resp)
    assert data.endswith(b"\n") and b"\n" not in data[:-1]
    decoded = control.decode_response(data)
    assert type(decoded) is type(resp)
    assert comparable(decoded) == comparable(resp)


ipv6s = st.integers(min_value=0, max_value=2**128 - 1).map(IPv6Address)
rich_outputs = st.builds(
    OutputDestination,
    st.one_of(ipv4s, ipv6s),
    ints,
    names,
    st.one_of(st.none(), ints),
    st.one_of(st.none(), ipv4s, ipv6s),
    st.booleans(),
)
rich_rules = st.builds(
    ForwardingRule,
    rule_id=names,
    input_interface=names,
    input_group=st.one_of(ipv4s, ipv6s),
    input_port=ints,
    outputs=st.lists(rich_outputs, max_size=4).map(tuple),
    input_source=st.one_of(
        st.none(),
        v4_sources,
        st.tuples(st.integers(min_value=0, max_value=2**128 - 1), st.integers(0, 128)).map(
            lambda t: IPv6Network(t, strict=False)
        ),
    ),
    source=st.sampled_from(list(RuleSource)),
    rate_limit=st.one_of(st.none(), st.builds(RateLimit, counts, st.sampled_from(list(RateUnit)), counts)),
    name=st.one_of(st.none(), names),
    input_protocol=st.sampled_from(list(InputProtocol)),
)
any_floats = st.one_of(st.floats(), st.integers(min_value=0, max_value=2**70))


@given(
    st.lists(st.builds(RuleView, rich_rules, st.sampled_from(list(Engine)), st.sampled_from(list(RuleState)), names))
)
def test_listings_written_as_text_are_the_bytes_json_dumps_writes(views: list[RuleView]) -> None:
    """ListRules is written directly as text (`rule_text`); what it writes is exactly `encode_response`'s
    `json.dumps` of the JSON objects: escapes, IPv6 texts, optional fields."""
    encoder = control.ResponseEncoder()
    assert encoder.encode(control.Rules(tuple(views))) == control.encode_response(control.Rules(tuple(views)))


@st.composite
def counted_flows(draw: st.DrawFn) -> Counted:
    """A rule (IPv4 or IPv6, sources, any texts with `%` in them) and counts that fit it."""
    rule = draw(rich_rules)
    outputs = draw(st.lists(counts, min_size=3 * len(rule.outputs), max_size=3 * len(rule.outputs)))
    rates = draw(any_floats), draw(any_floats)
    return rule, FlowCounts(draw(counts), draw(counts), *rates, tuple(outputs), tuple(draw(drops).items()))


@given(st.lists(counted_flows(), max_size=4), st.lists(counted_flows(), max_size=4))
@example([], [(ForwardingRule("100%d %s", "eth0", IPv4Address("239.1.1.1"), 5000, ()), FlowCounts(1, 2, 0.5, 4.0))])
def test_stats_written_from_templates_are_the_bytes_json_dumps_writes(
    first: list[Counted], then: list[Counted]
) -> None:
    """The supervisor's GetStats is its rules' counts written into each rule's template (`CountedStats`):
    the bytes are `json.dumps` of the `FlowStats` they make, also for a second answer that reuses the
    templates of the rules it shares with the first and has new counts for them."""
    encoder = control.ResponseEncoder()
    moved = [(rule, c._replace(packets=c.packets + 1, outputs=tuple(n + 1 for n in c.outputs))) for rule, c in first]
    again = moved + then
    for flows in (first, again):
        made = control.Stats(tuple(flow_stats(rule, counts) for rule, counts in flows))
        assert encoder.encode(control.CountedStats(tuple(flows))) == control.encode_response(made)


# ---------------------------------------------------------------------------------------- worker channel

worker_outputs = st.builds(worker.WorkerOutput, ints, ipv4s, ints, ints, ipv4s, ints)
worker_rules = st.builds(worker.WorkerRule, texts, ints, ipv4s, ints, st.lists(worker_outputs, max_size=3).map(tuple))
commands = st.one_of(
    st.builds(worker.Sync, ints, st.lists(worker_rules, max_size=3).map(tuple)),
    st.builds(worker.OpenSockets, st.lists(ints, max_size=4).map(tuple)),
    st.builds(worker.CloseSockets, st.lists(ints, max_size=4).map(tuple)),
    st.builds(
        worker.SetLogLevels,
        ints,
        st.dictionaries(texts, ints, max_size=3).map(lambda d: tuple(d.items())),
    ),
    st.just(worker.Shutdown()),
)
replies = st.one_of(st.builds(worker.Ready, ints, ints), st.builds(worker.SyncAck, ints))
pairs = st.dictionaries(texts, counts, max_size=3).map(lambda d: tuple(d.items()))


def stats_reports(
    ids: st.SearchStrategy[int], number: st.SearchStrategy[int], amount: st.SearchStrategy[int]
) -> st.SearchStrategy[worker.StatsReport]:
    """Reports whose worker and pid are drawn from `ids`, indexes and generations from `number`, counts from
    `amount`."""
    named = st.dictionaries(texts, amount, max_size=3).map(lambda d: tuple(d.items()))
    return st.builds(
        worker.StatsReport,
        ids,
        ids,
        st.dictionaries(
            texts,
            st.builds(
                worker.RuleCounters,
                amount,
                amount,
                st.lists(st.tuples(number, amount, amount, amount), max_size=3).map(tuple),
                named,
            ),
            max_size=3,
        ).map(lambda d: tuple(d.items())),
        named,
        amount,
        amount,
        amount,
        number,
        amount,
        st.booleans(),
        st.lists(texts, max_size=3).map(tuple),
        taken_at=st.one_of(st.none(), finite_floats),
    ).map(lambda r: r if r.delta else replace(r, gone=()))  # ids gone come with a delta only


#: every report a worker can send: a worker slot and pid, 64-bit counters and generations
reports = stats_reports(
    st.integers(0, 2**31 - 1), st.integers(-(2**63), 2**63 - 1), st.integers(min_value=0, max_value=2**63 - 1)
)
#: what an older worker's JSON line could carry (no width limits)
json_reports = stats_reports(ints, ints, counts)


@given(commands)
def test_every_worker_command_round_trips(cmd: worker.Command) -> None:
    assert worker.decode_command(worker.encode_command(cmd)) == cmd


rich_worker_outputs = st.builds(
    worker.WorkerOutput,
    ints,
    st.one_of(ipv4s, ipv6s),
    ints,
    ints,
    st.one_of(ipv4s, ipv6s),
    st.one_of(st.none(), ints),
    st.sampled_from(list(InputProtocol)),
)
rich_worker_rules = st.builds(
    worker.WorkerRule,
    names | texts,
    ints,
    st.one_of(ipv4s, ipv6s),
    ints,
    st.lists(rich_worker_outputs, max_size=4).map(tuple),
    st.one_of(st.none(), st.builds(RateLimit, counts, st.sampled_from(list(RateUnit)), counts)),
    rich_rules.map(lambda rule: rule.input_source),
    ints,
    st.sampled_from(list(InputProtocol)),
)


@given(st.lists(rich_worker_rules, max_size=4).map(tuple), ints, st.lists(names, max_size=3).map(tuple))
def test_rules_written_as_text_to_a_worker_are_the_bytes_json_dumps_writes(
    rules: tuple[worker.WorkerRule, ...], generation: int, removed: tuple[str, ...]
) -> None:
    """A Sync and an Update are written directly as text (`_rule_text`); the bytes are those of json.dumps of
    the JSON objects (IPv6 addresses, sources, rate limits, no TTL, ESP, escaped ids)."""
    compact = {"separators": (",", ":")}
    rule_docs = [worker._rule_json(r) for r in rules]
    sync = worker.Sync(generation, rules)
    assert (
        worker.encode_command(sync)
        == json.dumps({"Sync": {"generation": generation, "rules": rule_docs}}, **compact).encode()
    )
    update = worker.Update(generation, rules, removed)
    expected = {"Update": {"generation": generation, "rules": rule_docs, "removed": list(removed)}}
    assert worker.encode_command(update) == json.dumps(expected, **compact).encode()


@given(replies)
def test_every_worker_reply_round_trips(reply: worker.Reply) -> None:
    assert worker.decode_reply(worker.encode_reply(reply)) == reply


@given(reports)
def test_every_stats_report_round_trips(report: worker.StatsReport) -> None:
    frame = worker.encode_stats(report)
    decoded = worker.decode_stats(frame)
    plain = replace(decoded, rules=tuple((rid, worker.counters_of(c)) for rid, c in decoded.rules))
    assert plain == report
    assert all(
        isinstance(c, bytes) == (not r.drops) for (_, c), (_, r) in zip(decoded.rules, report.rules, strict=True)
    )
    buf = bytearray(frame + frame)
    assert worker.take_stats(buf) == ([frame, frame], None) and not buf, "one report is one frame of the pipe"


@given(json_reports)
def test_an_older_workers_report_still_reads(report: worker.StatsReport) -> None:
    """A worker of the version before frames wrote a line of JSON: its reports read as they did."""
    line = json_stats(report)
    assert worker.decode_stats(line) == report
    buf = bytearray(line)
    assert worker.take_stats(buf) == ([line], None) and not buf


def json_stats(report: worker.StatsReport) -> bytes:
    """A stats report as `json.dumps` writes it from lists and dicts (what `encode_stats` writes as text)."""
    doc: dict[str, object] = {
        "w": report.worker_id,
        "pid": report.pid,
        "rules": {rid: [c.packets, c.bytes, [list(o) for o in c.outputs], dict(c.drops)] for rid, c in report.rules},
        "drops": dict(report.drops),
        "kp": report.kernel_packets,
        "kd": report.kernel_drops,
        "pe": report.pipe_errors,
        "g": report.generation,
        "rr": report.ring_resyncs,
    }
    if report.delta:
        doc["d"] = 1
        doc["gone"] = list(report.gone)
    if report.taken_at is not None:
        doc["t"] = report.taken_at
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


@given(reports, st.binary(max_size=8), st.integers(0, 200))
def test_a_damaged_stats_frame_is_a_protocol_error(report: worker.StatsReport, junk: bytes, cut: int) -> None:
    """A frame cut short, with bytes put in, or its length changed: decoded or refused, nothing else."""
    frame = worker.encode_stats(report)
    at = min(cut, len(frame))
    for data in (frame[:at], frame[:at] + junk + frame[at:], frame[:1] + junk[:4].ljust(4, b"\0") + frame[5:]):
        assert_total(worker.decode_stats, data, ProtocolError)
        buf = bytearray(data)
        taken, _problem = worker.take_stats(buf)
        for one in taken:
            assert_total(worker.decode_stats, one, ProtocolError)


@hostile
@given(documents(COMMAND_KEYS))
def test_worker_decoders_return_a_message_or_a_protocol_error(data: bytes) -> None:
    assert_total(worker.decode_command, data, ProtocolError)
    assert_total(worker.decode_reply, data, ProtocolError)
    assert_total(worker.decode_stats, data, ProtocolError)


@hostile
@given(
    st.one_of(
        documents(["version", "rules"]),
        st.builds(
            lambda rules, version: json.dumps({"version": version, "rules": rules}).encode(),
            st.lists(st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=6), max_size=3),
            st.sampled_from([1, 1, 2, "1"]),
        ),
    )
)
def test_state_file_decodes_or_names_the_problem(data: bytes) -> None:
    assert_total(decode_state, data, StateError)


@given(st.lists(rules, max_size=4))
def test_state_file_round_trips(saved: list[ForwardingRule]) -> None:
    assert decode_state(encode_state(saved)) == saved


# ------------------------------------------------------------------------------------------ TOML config

TOML_KEYS = [
    "num_workers", "control_socket_path", "control_group", "user", "log_level", "log_json", "engine", "max_rules",
    "max_outputs_per_rule", "max_total_outputs", "max_request_bytes", "id", "input_interface", "input_group",
    "input_port", "input_source", "outputs", "ttl", "group", "port", "interface",
]  # fmt: skip
toml_keys = st.one_of(st.sampled_from(TOML_KEYS), st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,8}", fullmatch=True))
toml_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["239.1.1.1", "239.2.2.2:6000:eth1", "eth0", "kernel", "auto", "300.1.1.1", ""]),
)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"


toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(toml_keys, inner, max_size=4)),
    max_leaves=10,
)
tables = st.dictionaries(toml_keys, toml_values, max_size=6)


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    """[supervisor], [limits] and [[rule]] sections (or others) with known or unknown keys, values of any type."""
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        section = draw(st.sampled_from(["[supervisor]", "[limits]", "[[rule]]", "[[rule]]", "[other]", "[[limits]]"]))
        lines.append(section)
        lines += [f"{k} = {toml_value(v)}" for k, v in draw(tables).items()]
    text = "\n".join(lines) + "\n"
    if draw(st.integers(0, 4)) == 0:  # and sometimes broken text
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=8)) + text[cut:]
    return text


@example("a = " + "[" * 5000 + "]" * 5000)
@example("a = " + "9" * 5000)
@example("a = nan\n[limits]\nmax_rules = inf")
@example("[[rule]]\ninput_interface = 'e'\ninput_group = '239.1.1.1'\ninput_port = 9999999999999999999")
@given(st.one_of(toml_documents(), st.text(max_size=80)))
def test_config_parses_or_names_the_file(text: str) -> None:
    try:
        config = parse_config(text, "fuzz.toml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.toml: "), e
    else:
        assert isinstance(config, Config)
        for rule in config.rules:  # what it accepted is valid
            assert 1 <= rule.input_port <= 65535, rule
            assert all(1 <= o.port <= 65535 and 1 <= o.ttl <= 255 for o in rule.outputs), rule
