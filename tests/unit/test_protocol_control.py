import json
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from mcr.model.errors import ProtocolError
from mcr.model.levels import Facility, Severity
from mcr.model.rules import Engine, ForwardingRule, Limits, OutputDestination
from mcr.model.status import (
    ConfigView,
    FlowCounts,
    FlowStats,
    KernelStatus,
    LogLevels,
    OutputStats,
    RuleState,
    RuleView,
    VersionInfo,
    WorkerInfo,
)
from mcr.protocol import control
from mcr.protocol.control import (
    AddRule,
    ConfigResponse,
    CountedStats,
    Error,
    KernelStatusResponse,
    LogLevelsResponse,
    Query,
    RemoveRule,
    RequestFramer,
    ResponseEncoder,
    Rules,
    SetFacilityLogLevel,
    SetGlobalLogLevel,
    Stats,
    Success,
    Version,
    Workers,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

ORIGINAL_ADD = (
    b'{"AddRule":{"rule_id":"r1","input_interface":"eth0","input_group":"239.1.1.1","input_port":5000,'
    b'"outputs":[{"group":"239.2.2.2","port":6000,"interface":"eth1"}]}}'
)


def test_original_add_rule_shape() -> None:
    req = decode_request(ORIGINAL_ADD)
    assert req == AddRule(
        rule_id="r1",
        input_interface="eth0",
        input_group=IPv4Address("239.1.1.1"),
        input_port=5000,
        outputs=(OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1"),),
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'"ListRules"', Query.LIST_RULES),
        (b'"GetStats"', Query.GET_STATS),
        (b'"ListWorkers"', Query.LIST_WORKERS),
        (b'"Ping"', Query.PING),
        (b'"GetVersion"', Query.GET_VERSION),
        (b'"GetLogLevels"', Query.GET_LOG_LEVELS),
        (b'"GetConfig"', Query.GET_CONFIG),
        (b'{"RemoveRule":{"rule_id":"r1"}}', RemoveRule("r1")),
        (b'{"SetGlobalLogLevel":{"level":"Warning"}}', SetGlobalLogLevel(Severity.Warning)),
        (
            b'{"SetFacilityLogLevel":{"facility":"Ingress","level":"debug"}}',
            SetFacilityLogLevel(Facility.Ingress, Severity.Debug),
        ),
    ],
)
def test_decode_simple(raw: bytes, expected: object) -> None:
    assert decode_request(raw) == expected


def test_empty_rule_id_means_generate() -> None:
    body = json.loads(ORIGINAL_ADD)
    body["AddRule"]["rule_id"] = ""
    req = decode_request(json.dumps(body).encode())
    assert isinstance(req, AddRule) and req.rule_id is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty request"),
        (b"{not json", "invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        (b'"\xff"', "not valid UTF-8 (byte 0xff at offset 1)"),
        (b'"Reboot"', "unknown command 'Reboot'"),
        (b'{"Reboot":{}}', "unknown command 'Reboot'"),
        (b'"AddRule"', "command 'AddRule' needs arguments"),
        (b"42", "must be a JSON string or object, got number"),
        (b'{"Ping":1,"ListRules":2}', "exactly one key"),
        (b'{"RemoveRule":{"rule_id":5}}', "field 'rule_id' in RemoveRule must be a string, got number"),
        (b'{"RemoveRule":{}}', "missing field 'rule_id' in RemoveRule"),
        (b'{"RemoveRule":[]}', "RemoveRule must be a JSON object, got array"),
        (
            ORIGINAL_ADD.replace(b'"input_port":5000', b'"input_port":"5000"'),
            "field 'input_port' in AddRule must be an integer, got string",
        ),
        (
            ORIGINAL_ADD.replace(b'"input_port":5000', b'"input_port":true'),
            "field 'input_port' in AddRule must be an integer, got boolean",
        ),
        (
            ORIGINAL_ADD.replace(b'"239.1.1.1"', b'"239.1.1"'),
            "field 'input_group' in AddRule: '239.1.1' is not a valid IPv4 address",
        ),
        (
            ORIGINAL_ADD.replace(b'"port":6000', b'"port":null'),
            "field 'port' in AddRule.outputs[0] must be an integer",
        ),
        (ORIGINAL_ADD.replace(b'"rule_id"', b'"rule_idx"'), "unknown field 'rule_idx' in AddRule"),
        (b'{"SetGlobalLogLevel":{"level":"loud"}}', "invalid log level 'loud'"),
        (b'{"SetFacilityLogLevel":{"facility":"ingress","level":"info"}}', "invalid facility 'ingress'"),
    ],
)
def test_decode_errors_are_precise(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(raw)
    assert message in str(info.value)


def test_oversize_request() -> None:
    with pytest.raises(ProtocolError, match=r"request exceeds the size limit \(max_request_bytes = 1048576\)"):
        decode_request(b" " * ((1 << 20) + 1))
    with pytest.raises(ProtocolError, match=r"\(max_request_bytes = 8\)"):
        decode_request(b'"ListRules"', limit=8)


@pytest.mark.parametrize(
    "req",
    [
        Query.PING,
        RemoveRule("x"),
        SetGlobalLogLevel(Severity.Error),
        SetFacilityLogLevel(Facility.Egress, Severity.Trace),
        AddRule(None, "eth0", IPv4Address("239.1.1.1"), 1, ()),
        AddRule(
            "id",
            "eth0",
            IPv4Address("239.1.1.1"),
            65535,
            (OutputDestination(IPv4Address("10.0.0.1"), 9, "eth1", 64),),
            IPv4Network("10.1.1.1/32"),
        ),
    ],
)
def test_request_round_trip(req: object) -> None:
    assert decode_request(encode_request(req).rstrip(b"\n")) == req  # type: ignore[arg-type]


RULE = ForwardingRule(
    "r1", "eth0", IPv4Address("239.1.1.1"), 5000, (OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1"),)
)


@pytest.mark.parametrize(
    "resp",
    [
        Success("Rule r1 added"),
        Error("Rule r9 not found"),
        Rules((RuleView(RULE, Engine.USERSPACE, RuleState.WAITING, "input interface eth0 does not exist"),)),
        Stats(
            (
                FlowStats(
                    "239.1.1.1",
                    5000,
                    10,
                    14000,
                    1.5,
                    16800.0,
                    "r1",
                    "eth0",
                    (OutputStats("239.2.2.2", 6000, "eth1", 10, 14000, 0),),
                    {"fragment": 2},
                ),
            )
        ),
        Workers((WorkerInfo(42, "DataPlane", None, 0, "Running", 65534, 1, {"no_rule": 3}, 100, 2, 0, 4),)),
        LogLevelsResponse(LogLevels("Info", {"Ingress": "Debug"})),
        Version(VersionInfo("0.1.0", 1)),
        KernelStatusResponse(KernelStatus(True, "auto", "", 1830, ("eth0", "eth1"), 3, 1000, 64, {"fragment": 2})),
        KernelStatusResponse(KernelStatus(False, "kernel", "bpf(BPF_PROG_LOAD): Operation not permitted")),
        ConfigResponse(
            ConfigView("/etc/mcr/mcr.toml", (("num_workers", 2), ("user", None)), Limits(max_rules=5), (RULE,))
        ),
    ],
)
def test_response_round_trip(resp: object) -> None:
    data = encode_response(resp)  # type: ignore[arg-type]
    assert data.endswith(b"\n")
    assert decode_response(data) == resp


def test_original_response_shapes() -> None:
    assert json.loads(encode_response(Success("Rule r1 added"))) == {"Success": "Rule r1 added"}
    assert json.loads(encode_response(Rules(()))) == {"Rules": []}
    doc = json.loads(encode_response(LogLevelsResponse(LogLevels("Info", {}))))
    assert doc == {"LogLevels": {"global": "Info", "facility_overrides": {}}}


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b'"Ping"\n'], b'"Ping"'),
        ([b'"Pi', b'ng"', b"\n", b"trailing"], b'"Ping"'),
    ],
)
def test_framer_newline(chunks: list[bytes], expected: bytes) -> None:
    framer = RequestFramer()
    result = None
    for chunk in chunks:
        result = result or framer.feed(chunk)
    assert result == expected


def test_framer_half_close_and_limit() -> None:
    framer = RequestFramer(limit=10)
    assert framer.feed(b'"Ping"') is None
    assert framer.eof() == b'"Ping"'
    with pytest.raises(ProtocolError, match=r"exceeds the size limit \(max_request_bytes = 10\)"):
        RequestFramer(limit=10).feed(b"x" * 11)


def test_config_response_ignores_limits_it_does_not_know() -> None:
    raw = b'{"Config": {"path": null, "settings": {}, "limits": {"max_rules": 5, "max_widgets": 3}, "rules": []}}'
    response = decode_response(raw)
    assert isinstance(response, ConfigResponse) and response.view.limits == Limits(max_rules=5)


def test_rule_state_unknown_to_this_client_is_shown_not_fatal() -> None:
    """A newer supervisor may report a state this client does not know: the rule is listed, as not active,
    with the state named; a state that is not a string is still malformed."""
    view = RuleView(RULE, Engine.USERSPACE, RuleState.ACTIVE)
    doc = json.loads(encode_response(Rules((view,))))
    doc["Rules"][0].update(state="draining", state_reason="link flapped")
    (got,) = decode_response(json.dumps(doc).encode()).rules  # type: ignore[union-attr]
    assert (got.rule, got.state) == (RULE, RuleState.WAITING)
    assert got.state_reason == "state 'draining' is unknown to this client; link flapped"
    doc["Rules"][0]["state"] = 3
    with pytest.raises(ProtocolError, match=r"malformed rule in response: .*state must be a string"):
        decode_response(json.dumps(doc).encode())


def test_response_encoder_writes_the_bytes_of_encode_response_and_reuses_what_did_not_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ListRules and GetStats at 10,000 rules: each rule's JSON is kept while the answer carries the same view,
    and the GetStats templates of a run of flows while it carries the same rules (their counts written into
    them each time);
    the answer is the same bytes as encode_response's (tests/property/test_codec_properties.py
    holds the text encoders to json.dumps for any rule and counts)."""
    views = [RuleView(RULE, Engine.USERSPACE, RuleState.ACTIVE), RuleView(RULE, Engine.KERNEL, RuleState.WAITING, "x")]
    out = OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1")
    rules = [ForwardingRule(f"r{i}", "eth0", IPv4Address("239.1.1.1"), 5000 + i, (out,) * i) for i in range(3)]
    rules.append(ForwardingRule("r\u00e9", "eth0", IPv4Address("239.1.1.1"), 5001, (out,)))
    flows = [(r, FlowCounts(i, 100 * i, 0.5, 4.0, (10, 14000, 0) * len(r.outputs))) for i, r in enumerate(rules)]
    flows[3] = (rules[3], FlowCounts(9, 900, float("nan"), 1e300, (10, 14000, 0), (("fragment", 1),)))
    encoder = ResponseEncoder()
    for resp in (Rules(tuple(views)), CountedStats(tuple(flows)), Rules(()), CountedStats(()), Success("ok")):
        assert encoder.encode(resp) == encode_response(resp)

    templates: list[ForwardingRule] = []
    written: list[FlowCounts] = []
    real_template, real_values = control.rule_flow_template, control._count_values

    def template(rule: ForwardingRule) -> str:
        templates.append(rule)
        return real_template(rule)

    def values(counts: FlowCounts) -> tuple[object, ...]:
        written.append(counts)
        return real_values(counts)

    monkeypatch.setattr(control, "rule_flow_template", template)
    monkeypatch.setattr(control, "_count_values", values)
    assert encoder.encode(CountedStats(tuple(flows))) == encode_response(CountedStats(tuple(flows)))
    assert len(templates) == len(written) == 4
    templates.clear()
    written.clear()
    assert encoder.encode(CountedStats(tuple(flows))) == encode_response(CountedStats(tuple(flows)))
    assert templates == [] and len(written) == 4, "every rule's template was reused, the counts written again"
    written.clear()
    moved = FlowCounts(10, 1000, 1.0, 8.0, (10, 14000, 0))
    fresh = CountedStats((flows[0], (rules[1], moved), (replace(rules[2], input_port=7000), flows[2][1])))
    assert encoder.encode(fresh) == encode_response(fresh)
    assert 7000 in [t.input_port for t in templates], "the run of a new rule is made again"
    assert {id(t) for t in templates} <= {id(rule) for rule, _counts in fresh.flows}, "only the run of this answer"
    assert written == [flows[0][1], moved, flows[2][1]]


@pytest.mark.parametrize("enabled", [True, False])
def test_a_response_is_decoded_with_the_collector_held_off_and_left_as_it_was(
    enabled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    seen: list[bool] = []
    real = control._decode_flow

    def watching(o: object) -> FlowStats:
        seen.append(gc.isenabled())
        return real(o)

    monkeypatch.setattr(control, "_decode_flow", watching)
    answer = b'{"Stats": [{"input_group": "239.1.1.1", "input_port": 5000, "packets_relayed": 1, "bytes_relayed": 2, '
    answer += b'"packets_per_second": 0.0, "bits_per_second": 0.0}]}'
    (gc.enable if enabled else gc.disable)()
    try:
        assert decode_response(answer) == Stats((FlowStats("239.1.1.1", 5000, 1, 2, 0.0, 0.0),))
        assert gc.isenabled() is enabled
        with pytest.raises(ProtocolError, match="malformed stats entry"):
            decode_response(b'{"Stats": [{"input_group": "239.1.1.1"}]}')
        assert gc.isenabled() is enabled, "left as it was after an error too"
    finally:
        gc.enable()
    assert seen == [False, False]


def test_listing_texts_are_kept_per_run_of_views_and_given_back_byte_for_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """ListRules keeps the rules' JSON deflated per run of views (`RunTexts`): a second answer of the same views
    writes none of them again and is the same bytes, also for escaped names and many outputs; a view in a new
    state has its run written again, and the rest is kept."""
    outs = tuple(OutputDestination(IPv6Address(f"ff3e::{k}:1"), 6000 + k, f"out{k}", 4) for k in range(4))
    views = [
        RuleView(ForwardingRule(f"r{i}", "in0", IPv6Address(f"ff3e::7:{i:x}"), 5000, outs[: 1 + i % 4]), *state)
        for i in range(400)
        for state in [(Engine.USERSPACE, RuleState.ACTIVE)]
    ]
    odd = ForwardingRule(
        "\u00e9\u4e2d" * 20,
        "eth9",
        IPv4Address("10.1.2.3"),
        1,
        (OutputDestination(IPv4Address("10.9.9.9"), 7, "x"),) * 40,
    )
    views.append(RuleView(odd, Engine.KERNEL, RuleState.WAITING, "input interface eth9 does not exist " * 5))
    encoder = ResponseEncoder()
    first = encoder.encode(Rules(tuple(views)))
    assert first == encode_response(Rules(tuple(views)))
    made: list[RuleView] = []
    real = control.rule_text
    monkeypatch.setattr(control, "rule_text", lambda view: made.append(view) or real(view))
    assert encoder.encode(Rules(tuple(views))) == first and made == []
    changed = [*views[:5], RuleView(views[5].rule, Engine.USERSPACE, RuleState.PENDING, "workers"), *views[6:]]
    assert encoder.encode(Rules(tuple(changed))) == encode_response(Rules(tuple(changed)))
    assert changed[5] in made and len(made) <= 256 < len(views), "the run of the new view only (at most 256)"
    assert ResponseEncoder().encode(Rules(tuple(views))) == first, "another encoder writes the same"
