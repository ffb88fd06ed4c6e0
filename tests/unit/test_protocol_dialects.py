"""Both originals' control dialects on one codec: what today's mcrctl sends is understood, what we answer it
decodes, what its supervisor answers our client reads (pure; the requests are the bytes its mcrctl sends)."""

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from mcr.model.errors import ProtocolError, ValidationError
from mcr.model.levels import Facility, Severity
from mcr.model.original_config import ControlPlaneSettings, OriginalSections
from mcr.model.rules import ForwardingRule, InputProtocol, Limits, OutputDestination, RuleSource
from mcr.model.status import ConfigView, LogLevels, RuleState, WorkerInfo
from mcr.protocol.control import (
    AddRule,
    CheckConfig,
    ConfigResponse,
    ConfigValidation,
    ControlPlaneConfig,
    LoadConfig,
    LogLevelsResponse,
    Query,
    RemoveRuleByName,
    Rules,
    SaveConfig,
    SetFacilityLogLevel,
    Version,
    Workers,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    response_json,
)
from mcr.protocol.controlplane import NOT_SERVED, ControlPlaneRequest
from mcr.supervisor.access import AccessPolicy, is_read_only
from mcr.supervisor.core import RuleTable

# what today's mcrctl (fced3ed) writes, byte for byte
HEAD_ADD = (
    b'{"AddRule":{"rule_id":"","input_interface":"a","input_group":"239.1.1.1","input_port":5000,'
    b'"input_protocol":17,"outputs":[{"group":"239.2.2.2","port":6000,"interface":"b"}]}}'
)
HEAD_ADD_NAMED = (
    b'{"AddRule":{"rule_id":"r1","name":"n1","input_interface":"a","input_group":"239.1.1.1","input_port":5000,'
    b'"input_protocol":17,"outputs":[{"group":"239.2.2.2","port":6000,"interface":"b"},'
    b'{"group":"239.2.2.3","port":6000,"interface":"c"}]}}'
)
HEAD_LOAD = (
    b'{"LoadConfig":{"config":{"pinning":{"eth0":[0,1]},"rules":[{"name":"feed","input":{"interface":"eth0",'
    b'"group":"239.1.1.1","port":5000,"protocol":null},"outputs":[{"group":"239.2.2.2","port":6000,'
    b'"interface":"eth1","ttl":8}]}],"igmp":{"querier_interfaces":["eth1"],"query_interval":125,"robustness":2,'
    b'"query_response_interval":10},"multicast_ttl":4},"replace":true}}'
)


def test_todays_add_is_understood_with_and_without_id_and_name() -> None:
    add = decode_request(HEAD_ADD)
    assert isinstance(add, AddRule)
    assert (add.rule_id, add.name, add.input_protocol, add.outputs[0].ttl) == (None, None, InputProtocol.UDP, None)
    named = decode_request(HEAD_ADD_NAMED)
    assert isinstance(named, AddRule) and (named.rule_id, named.name, len(named.outputs)) == ("r1", "n1", 2)
    with_source = HEAD_ADD.replace(b'"interface":"b"}', b'"interface":"b","ttl":3,"source_ip":"10.0.0.1"}')
    out = decode_request(with_source).outputs[0]  # type: ignore[union-attr]
    assert (out.ttl, out.source_ip) == (3, IPv4Address("10.0.0.1"))
    assert decode_request(encode_request(named)) == named


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (HEAD_ADD.replace(b'"input_protocol":17', b'"input_protocol":6'), "IP protocol 6 is not relayed"),
        (HEAD_ADD.replace(b'"input_protocol":17', b'"input_protocol":"udp"'), "must be an integer"),
        (HEAD_ADD.replace(b'"interface":"b"}', b'"interface":"b","source_ip":"x"}'), "'source_ip'"),
        (b'{"RemoveRuleByName":{}}', "missing field 'name' in RemoveRuleByName"),
        (b'{"LoadConfig":{"config":{}}}', "missing field 'replace' in LoadConfig"),
        (b'{"LoadConfig":{"config":{},"replace":"yes"}}', "field 'replace' in LoadConfig must be a boolean"),
        (b'{"SaveConfig":{"path":5}}', "field 'path' in SaveConfig must be a string"),
        (b'{"CheckConfig":{}}', "missing field 'config' in CheckConfig"),
    ],
)
def test_malformed_new_requests_get_precise_errors(body: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error.replace("(", r"\(")):
        decode_request(body)


def test_config_requests() -> None:
    load = decode_request(HEAD_LOAD)
    assert isinstance(load, LoadConfig) and load.replace
    assert load.document.config is not None and load.document.config.rules[0].name == "feed"
    assert load.document.config.sections.multicast_ttl == 4
    bad = decode_request(b'{"CheckConfig":{"config":{"rules":[{"outputs":[]}]}}}')
    assert isinstance(bad, CheckConfig) and bad.document.config is None
    assert bad.document.error == "config: rules[0]: missing 'input'"  # an answer, not a malformed request
    assert decode_request(b'{"SaveConfig":{"path":null}}') == SaveConfig(None)
    assert decode_request(b'{"SaveConfig":{"path":"/x.json5"}}') == SaveConfig("/x.json5")
    assert decode_request(b'{"RemoveRuleByName":{"name":"n1"}}') == RemoveRuleByName("n1")
    assert decode_request(b'"GetControlPlaneConfig"') is Query.GET_CONTROL_PLANE_CONFIG
    assert decode_request(b'{"SetFacilityLogLevel":{"facility":"Ingress","level":"Debug"}}') == SetFacilityLogLevel(
        Facility.Ingress, Severity.Debug
    )
    again = decode_request(encode_request(load))
    assert isinstance(again, LoadConfig) and again.document.config is not None
    assert again.document.config.rules == load.document.config.rules


@pytest.mark.parametrize("command", sorted(NOT_SERVED))
def test_every_control_plane_request_gets_an_error_naming_what_is_missing(command: str) -> None:
    for body in (json.dumps(command).encode(), json.dumps({command: {"interface": "eth0"}}).encode()):
        req = decode_request(body)
        assert isinstance(req, ControlPlaneRequest) and req.command == command
        assert command in req.refusal and NOT_SERVED[command] in req.refusal and "not implemented" in req.refusal
        assert is_read_only(req) == command.startswith(("Get", "List", "Query"))


def rule(**kw: object) -> ForwardingRule:
    base: dict[str, object] = {
        "rule_id": "r1",
        "input_interface": "eth0",
        "input_group": IPv4Address("239.1.1.1"),
        "input_port": 5000,
        "outputs": (OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1"),),
    }
    return ForwardingRule(**{**base, **kw})  # type: ignore[arg-type]


def test_rules_as_both_originals_decode_them() -> None:
    from mcr.model.rules import Engine
    from mcr.model.status import RuleView

    views = (
        RuleView(rule(name="feed", source=RuleSource.CONFIG), Engine.USERSPACE, RuleState.ACTIVE),
        RuleView(rule(rule_id="r2", input_port=5001, input_source=IPv4Network("10.0.0.0/8")), Engine.KERNEL,
                 RuleState.ACTIVE),
    )  # fmt: skip
    first, second = response_json(Rules(views))["Rules"]  # type: ignore[index]
    assert (first["source"], first["origin"], first["name"], first["input_protocol"]) == (
        "Static",
        "config",
        "feed",
        17,
    )
    assert first["outputs"] == [{"group": "239.2.2.2", "port": 6000, "interface": "eth1"}]
    assert (second["source"], second["input_source"], second["input_source_prefix"]) == ("Dynamic", None, "10.0.0.0/8")
    assert "name" not in second  # today's original omits an unset name
    decoded = decode_response(encode_response(Rules(views)))
    assert isinstance(decoded, Rules) and [v.rule for v in decoded.rules] == [v.rule for v in views]


def test_todays_supervisors_rules_are_read_and_what_we_lack_is_shown() -> None:
    answer = {
        "Rules": [
            {"rule_id": "a1", "name": "x", "input_interface": "eth0", "input_group": "239.1.1.1", "input_port": 5000,
             "input_protocol": 17, "outputs": [{"group": "239.2.2.2", "port": 6000, "interface": "eth1"}],
             "source": "Static"},
            {"rule_id": "a2", "input_interface": "eth0", "input_group": "239.1.1.2", "input_port": 0,
             "input_protocol": 17, "outputs": [], "source": {"Pim": {"tree_type": "StarG", "created_at": 1}}},
            {"rule_id": "a3", "input_interface": "eth0", "input_group": "239.1.1.3", "input_port": 1,
             "outputs": [], "source": "Msdp"},
        ]
    }  # fmt: skip
    decoded = decode_response(json.dumps(answer).encode())
    assert isinstance(decoded, Rules)
    a1, a2, a3 = decoded.rules
    assert (a1.rule.name, a1.rule.source) == ("x", RuleSource.CONFIG)
    assert a2.state_reason == "learned by Pim (StarG)"
    assert a3.state_reason == "source 'Msdp' is unknown to this client"


@pytest.mark.parametrize(
    ("status", "backoff", "wire"),
    [
        ("Running", 0, "Running"),
        ("Restarting", 500, {"Restarting": {"backoff_ms": 500}}),
        ("Starting", 0, {"Restarting": {"backoff_ms": 0}}),  # not running yet: a start under way
        ("Stopped", 0, {"Restarting": {"backoff_ms": 0}}),
    ],
)
def test_worker_status_in_both_shapes(status: str, backoff: int, wire: object) -> None:
    info = WorkerInfo(pid=7, worker_type="DataPlane", core_id=None, status=status, backoff_ms=backoff)
    (doc,) = response_json(Workers((info,)))["Workers"]  # type: ignore[index]
    assert (doc["status"], doc["state"], doc["interface"]) == (wire, status, None)
    decoded = decode_response(encode_response(Workers((info,))))
    assert isinstance(decoded, Workers) and decoded.workers[0].status == status


def test_todays_supervisors_workers_are_read() -> None:
    answer = {
        "Workers": [
            {"pid": 1, "worker_type": "DataPlane", "core_id": 0, "interface": "eth0", "status": "Running"},
            {"pid": 2, "worker_type": "DataPlane", "core_id": 1, "interface": "eth0",
             "status": {"Restarting": {"backoff_ms": 2000}}},
            {"pid": 3, "worker_type": "DataPlane", "core_id": None, "interface": None, "status": "Draining"},
        ]
    }  # fmt: skip
    decoded = decode_response(json.dumps(answer).encode())
    assert isinstance(decoded, Workers)
    assert [(w.status, w.backoff_ms, w.interface) for w in decoded.workers] == [
        ("Running", 0, "eth0"),
        ("Restarting", 2000, "eth0"),
        ("Draining", 0, None),  # a variant newer than this client: shown by its name
    ]


def test_log_levels_keep_a_facility_today_s_original_lacks_apart() -> None:
    levels = LogLevels("Info", {"Ingress": "Debug", "ControlPlane": "Trace"})
    doc = response_json(LogLevelsResponse(levels))
    assert doc == {
        "LogLevels": {
            "global": "Info",
            "facility_overrides": {"Ingress": "Debug"},
            "extra_facility_overrides": {"ControlPlane": "Trace"},
        }
    }
    decoded = decode_response(encode_response(LogLevelsResponse(levels)))
    assert isinstance(decoded, LogLevelsResponse) and decoded.levels == levels


def test_config_in_both_schemas() -> None:
    sections = OriginalSections(multicast_ttl=2, pinning=(("eth0", (1,)),), sections=(("igmp", '{"robustness": 2}'),))
    view = ConfigView("/etc/mcr.json5", (("num_workers", 2),), Limits(), (rule(name="feed"),), sections, "json5")
    doc = response_json(ConfigResponse(view))["Config"]  # type: ignore[index]
    (r,) = doc["rules"]
    # today's original reads `input` and `outputs`; the December shape and ours read the flat fields
    assert r["input"] == {"interface": "eth0", "group": "239.1.1.1", "port": 5000, "protocol": None}
    assert (r["input_interface"], r["name"], r["rule_id"]) == ("eth0", "feed", "r1")
    assert (doc["multicast_ttl"], doc["pinning"], doc["igmp"], doc["format"]) == (2, {"eth0": [1]}, {"robustness": 2},
                                                                                  "json5")  # fmt: skip
    decoded = decode_response(encode_response(ConfigResponse(view)))
    assert isinstance(decoded, ConfigResponse) and decoded.view == view


def test_todays_supervisors_config_is_read_without_made_up_ids() -> None:
    answer: dict[str, object] = {
        "Config": {
            "pinning": {},
            "rules": [{"name": "feed", "input": {"interface": "eth0", "group": "239.1.1.1", "port": 5000,
                                                  "protocol": None},
                       "outputs": [{"group": "239.2.2.2", "port": 6000, "interface": "eth1"}]}],
            "multicast_ttl": None,
        }
    }  # fmt: skip
    decoded = decode_response(json.dumps(answer).encode())
    assert isinstance(decoded, ConfigResponse)
    (r,) = decoded.view.rules
    assert (r.rule_id, r.name, r.input_port) == ("", "feed", 5000)


def test_validation_control_plane_and_version_answers() -> None:
    assert response_json(ConfigValidation(False, ("bad",))) == {
        "ConfigValidation": {"valid": False, "errors": ["bad"], "warnings": []}
    }
    assert decode_response(b'{"ConfigValidation":{"valid":true,"errors":[]}}') == ConfigValidation(True)
    cp = {"rpf_provider": "static", "external_neighbors_enabled": False, "event_buffer_size": 9}
    decoded = decode_response(json.dumps({"ControlPlaneConfig": cp}).encode())
    assert decoded == ControlPlaneConfig(ControlPlaneSettings("static", False, 9))
    assert response_json(decoded)["ControlPlaneConfig"] == {**cp, "served": False}  # type: ignore[index]
    only = decode_response(b'{"Version":{"protocol_version":1}}')
    assert isinstance(only, Version) and only.info.protocol_version == 1


def test_save_config_to_a_chosen_path_is_reserved_to_root_and_the_supervisor() -> None:
    policy = AccessPolicy(990, 1000, 2000, "mcr", "mcr-ro")
    assert policy.refusal(5001, {1000}, SaveConfig(None)) is None
    refusal = policy.refusal(5001, {1000}, SaveConfig("/etc/cron.d/x"))
    assert refusal is not None and "may not choose where the supervisor writes" in refusal
    assert policy.refusal(0, {0}, SaveConfig("/etc/mcr/mcr.json5")) is None
    assert policy.refusal(990, {990}, SaveConfig("/var/lib/mcr/x.json5")) is None
    assert policy.refusal(5001, {2000}, SaveConfig(None)) is not None  # read-only
    load = decode_request(HEAD_LOAD)
    assert policy.refusal(5001, {2000}, load) is not None
    assert policy.refusal(5001, {2000}, decode_request(b'{"CheckConfig":{"config":{}}}')) is None


def runtime(rule_id: str, port: int, name: str | None = None) -> ForwardingRule:
    return rule(rule_id=rule_id, input_port=port, name=name)


def test_load_merges_skipping_what_is_taken_and_replaces_only_runtime_rules() -> None:
    table = RuleTable(Limits())
    table.insert(rule(rule_id="static", input_port=4000, source=RuleSource.CONFIG))
    kept = table.insert(runtime("keep", 5000))
    table.insert(runtime("old", 5001))
    added, removed, skipped = table.load([runtime("keep", 5000), runtime("new", 5002, "n")], replace_runtime=False)
    assert (added, removed, skipped) == (["new"], [], ["keep"])
    added, removed, skipped = table.load(
        [runtime("keep", 5000), runtime("other", 5003), rule(rule_id="c", input_port=5004, source=RuleSource.CONFIG)],
        replace_runtime=True,
    )
    assert (sorted(added), sorted(removed), skipped) == (["c", "other"], ["new", "old"], [])
    assert table.rules["keep"] is kept, "an unchanged rule is left as it was (its counters too)"
    assert table.rules["c"].source is RuleSource.RUNTIME and table.rules["static"].source is RuleSource.CONFIG
    before = dict(table.rules)
    with pytest.raises(ValidationError, match="rule 'bad'"):
        table.load([runtime("fine", 6000), runtime("bad", 0)], replace_runtime=True)
    assert table.rules == before, "all or nothing"
    assert table.named("n") is None and table.named("zzz") is None
