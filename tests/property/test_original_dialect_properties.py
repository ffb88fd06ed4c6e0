"""Properties of the decoders added for today's original: its JSON5 config file, its config and control-plane
requests, its answers. Fed anything, each returns a value or raises its own precise error, nothing else; and
what we write in its config schema reads back the same."""

from __future__ import annotations

import json
from ipaddress import IPv4Address

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcr.model.config import Config, parse_config
from mcr.model.errors import ConfigError, ProtocolError
from mcr.model.original_config import OriginalSections, decode_original_config, encode_original_config
from mcr.model.rules import ForwardingRule, OutputDestination, RuleSource
from mcr.protocol import control
from mcr.protocol.controlplane import NOT_SERVED, ControlPlaneRequest

KEYS = [
    "rules", "name", "input", "outputs", "interface", "group", "port", "protocol", "ttl", "multicast_ttl",
    "pinning", "pim", "igmp", "msdp", "control_plane", "enabled", "interfaces", "querier_interfaces",
    "query_interval", "query_response_interval", "robustness", "keepalive_interval", "hold_time", "peers",
    "rpf_provider", "event_buffer_size", "rule_id", "rate_limit", "source", "source_ip", "eth0",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.sampled_from(["239.1.1.1", "10.0.0.1", "eth0", "eth1", "esp", "udp", "/run/rpf.sock", "static"]),
    st.integers(min_value=0, max_value=70000),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=30,
)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)


@st.composite
def json5_texts(draw: st.DrawFn) -> str:
    text = json.dumps(draw(documents), indent=draw(st.sampled_from([None, 2])))
    if draw(st.booleans()):  # JSON5 spellings: a comment, bare keys
        text = "// config\n" + text.replace('"rules"', "rules").replace('"input"', "input")
    if draw(st.integers(0, 4)) == 0:  # and sometimes broken text
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=6)) + text[cut:]
    return text


@example("[" * 5000 + "]" * 5000)
@example("{ multicast_ttl: " + "9" * 5000 + " }")
@example("{ multicast_ttl: NaN, rules: [ { input: Infinity } ] }")
@example('{ rules: [ { input: { interface: "e", group: "239.1.1.1", port: 1e400 }, outputs: [] } ] }')
@example('{ rules: [ { input: { interface: "e", group: "239.1.1.1", port: 1 }, outputs: [ 5 ] } ] }')
@settings(deadline=None)  # the json5 parser is pure Python: a 5000-digit number takes a few hundred ms
@given(st.one_of(json5_texts(), st.text(max_size=60)))
def test_a_json5_file_parses_or_names_the_file(text: str) -> None:
    try:
        config = parse_config(text, "fuzz.json5")
    except ConfigError as e:
        assert str(e).startswith("fuzz.json5: "), e
    else:
        assert isinstance(config, Config)
        for rule in config.rules:  # what it accepted is valid
            assert 1 <= rule.input_port <= 65535, rule
            assert all(1 <= o.port <= 65535 and (o.ttl is None or 1 <= o.ttl <= 255) for o in rule.outputs), rule


@given(documents)
def test_a_supervisors_config_answer_decodes_or_is_malformed(doc: dict[str, object]) -> None:
    try:
        control.decode_response(json.dumps({"Config": doc}).encode())
    except ProtocolError as e:
        assert str(e)


COMMANDS = ["LoadConfig", "CheckConfig", "SaveConfig", "RemoveRuleByName", *sorted(NOT_SERVED)]
BODY_KEYS = ["config", "replace", "path", "name", "interface", "address"]


@given(
    st.one_of(
        st.sampled_from(COMMANDS).map(json.dumps),
        st.builds(
            lambda c, body: json.dumps({c: body}),
            st.sampled_from(COMMANDS),
            st.one_of(values, st.dictionaries(st.sampled_from(BODY_KEYS), st.one_of(values, documents), max_size=3)),
        ),
    )
)
def test_todays_requests_decode_or_get_a_protocol_error(text: str) -> None:
    try:
        req = control.decode_request(text.encode())
    except ProtocolError as e:
        assert str(e)
    else:
        if isinstance(req, control.LoadConfig | control.CheckConfig):
            assert (req.document.config is None) == bool(req.document.error)


ANSWERS = ["Rules", "Workers", "LogLevels", "ConfigValidation", "ControlPlaneConfig", "Version"]
ANSWER_FIELDS = ["source", "status", "Restarting", "backoff_ms", "Pim", "tree_type", "valid", "errors", "state",
                 "origin", "input_source_prefix", "extra_facility_overrides", "interface", "rpf_provider"]  # fmt: skip
answer_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(ANSWER_FIELDS + KEYS), inner, max_size=5)
    ),
    max_leaves=25,
)


@given(st.sampled_from(ANSWERS), answer_values)
def test_todays_answers_decode_or_are_malformed(name: str, body: object) -> None:
    try:
        control.decode_response(json.dumps({name: body}).encode())
    except ProtocolError as e:
        assert str(e)


ports = st.integers(min_value=1, max_value=65535)
outputs = st.builds(
    OutputDestination,
    st.integers(0xE0000000, 0xEFFFFFFF).map(IPv4Address),
    ports,
    st.sampled_from(["eth1", "eth2", "veth9"]),
    st.one_of(st.none(), st.integers(1, 255)),
)


@given(
    st.lists(
        st.builds(
            lambda i, port, outs, name: ForwardingRule(
                f"r{i}", "eth0", IPv4Address(f"239.1.{i // 250}.{i % 250 + 1}"), port, tuple(outs),
                source=RuleSource.CONFIG, name=name,
            ),
            st.integers(0, 1000),
            ports,
            st.lists(outputs, max_size=3, unique_by=lambda o: (o.group, o.port, o.interface)),
            st.one_of(st.none(), st.text("abcdef-", min_size=1, max_size=8)),
        ),
        max_size=5,
        unique_by=(lambda r: r.rule_id, lambda r: r.input_group, lambda r: r.name or r.rule_id),
    ),
    st.one_of(st.none(), st.integers(1, 255)),
)  # fmt: skip
def test_the_config_schema_round_trips(rules: list[ForwardingRule], ttl: int | None) -> None:
    sections = OriginalSections(multicast_ttl=ttl)
    doc = encode_original_config(tuple(rules), sections)
    again = decode_original_config(json.loads(json.dumps(doc)), "round-trip")
    assert list(again.rules) == rules and again.sections.multicast_ttl == ttl and again.warnings == ()


new_requests = st.one_of(
    st.builds(control.RemoveRuleByName, st.text(min_size=1, max_size=10)),
    st.builds(control.SaveConfig, st.one_of(st.none(), st.text(min_size=1, max_size=10))),
    st.sampled_from(sorted(NOT_SERVED)).map(lambda c: ControlPlaneRequest(c, NOT_SERVED[c])),
    st.just(control.Query.GET_CONTROL_PLANE_CONFIG),
)


@given(new_requests)
def test_todays_requests_round_trip(req: control.Request) -> None:
    assert control.decode_request(control.encode_request(req)) == req


@given(
    st.builds(
        control.ConfigValidation,
        st.booleans(),
        st.lists(st.text(max_size=10), max_size=3).map(tuple),
        st.lists(st.text(max_size=10), max_size=3).map(tuple),
    )
)
def test_validation_answers_round_trip(resp: control.ConfigValidation) -> None:
    assert control.decode_response(control.encode_response(resp)) == resp
