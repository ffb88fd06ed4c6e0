"""The control-socket protocol: JSON <-> typed requests and responses (DESIGN §5).

Shapes follow the original MCR's serde encoding (externally tagged enums: unit variants are bare
strings, struct variants `{"Variant": {...}}`), so its clients keep working. Everything here is pure:
bytes in, typed values out, with a precise `ProtocolError` for anything malformed.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import Enum
from ipaddress import IPv4Address
from json.encoder import encode_basestring_ascii as _quote
from operator import attrgetter
from typing import Any, assert_never

from mcr.membership.querier import INTEGER_TIMERS, FilterMode, GroupView, QuerierView, SourceView, TimerChanges, Timers
from mcr.membership.wire import Family
from mcr.model.errors import ConfigError, ProtocolError, ValidationError
from mcr.model.levels import ORIGINAL_FACILITIES, Facility, Severity
from mcr.model.original_config import (
    UDP,
    ControlPlaneSettings,
    OriginalConfig,
    OriginalSections,
    decode_original_config,
    encode_original_config,
    encode_original_rule,
)
from mcr.model.ratelimit import RateLimit, decode_rate_limit, encode_rate_limit
from mcr.model.rules import (
    Engine,
    ForwardingRule,
    InputProtocol,
    IPAddress,
    Limits,
    OutputDestination,
    RuleSource,
    SourcePrefix,
    address_text,
    parse_group,
    parse_source,
    source_text,
)
from mcr.model.status import (
    ConfigView,
    Counted,
    FlowCounts,
    FlowStats,
    KernelStatus,
    LogLevels,
    OutputStats,
    RuleState,
    RuleView,
    VersionInfo,
    WorkerInfo,
    flow_stats,
    template_literal,
)
from mcr.protocol.controlplane import ControlPlaneRequest, decode_control_plane
from mcr.protocol.jsondoc import load_json
from mcr.protocol.packedtext import RunTexts
from mcr.protocol.routing import (
    ROUTING_RESPONSES,
    ROUTING_STRUCT_COMMANDS,
    AddMsdpPeer,
    DisablePim,
    EnablePim,
    Mroutes,
    MsdpPeers,
    MsdpSaCache,
    PimInterfaces,
    PimNeighbors,
    PimUpstream,
    RemoveMsdpPeer,
    RoutingCounters,
    RoutingQuery,
    RoutingRequest,
    RoutingResponse,
    SetRpAddress,
    SetStaticRp,
    decode_routing_response,
    decode_routing_struct,
    encode_routing_request,
    routing_response_json,
)

MAX_REQUEST_BYTES = Limits().max_request_bytes  # the default; the supervisor passes its own
DEFAULT_SOCKET = "/run/mcr/control.sock"
SOCKET_ENV = "MCR_CONTROL_SOCKET"  # overrides the default on both sides


# ---------------------------------------------------------------------------------------------- requests


class Query(Enum):
    """Requests without arguments; encoded as bare JSON strings."""

    LIST_RULES = "ListRules"
    GET_STATS = "GetStats"
    LIST_WORKERS = "ListWorkers"
    PING = "Ping"
    GET_VERSION = "GetVersion"
    GET_LOG_LEVELS = "GetLogLevels"
    GET_CONFIG = "GetConfig"
    GET_IGMP_GROUPS = "GetIgmpGroups"
    GET_MLD_GROUPS = "GetMldGroups"
    GET_QUERIERS = "GetQueriers"
    GET_CONTROL_PLANE_CONFIG = "GetControlPlaneConfig"
    GET_KERNEL_STATUS = "GetKernelStatus"  # ours: the eBPF engine's state and drops


@dataclass(frozen=True, slots=True)
class AddRule:
    rule_id: str | None
    input_interface: str
    input_group: IPAddress
    input_port: int
    outputs: tuple[OutputDestination, ...]
    input_source: SourcePrefix | None = None
    rate_limit: RateLimit | None = None
    name: str | None = None  # today's original: a second handle on the rule (RemoveRuleByName)
    input_protocol: InputProtocol = InputProtocol.UDP  # today's original: 17 UDP, 50 ESP


@dataclass(frozen=True, slots=True)
class RemoveRule:
    rule_id: str


@dataclass(frozen=True, slots=True)
class RemoveRuleByName:
    name: str


@dataclass(frozen=True, slots=True)
class ConfigDocument:
    """A configuration in the original's schema, as LoadConfig and CheckConfig carry it: decoded and
    checked, or the reason it is invalid (which is an answer, not a malformed request)."""

    config: OriginalConfig | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class LoadConfig:
    document: ConfigDocument
    replace: bool  # True: the loaded rules replace the runtime rules; False: they are merged in


@dataclass(frozen=True, slots=True)
class CheckConfig:
    document: ConfigDocument


@dataclass(frozen=True, slots=True)
class SaveConfig:
    path: str | None  # None: the file the supervisor was started with


@dataclass(frozen=True, slots=True)
class SetGlobalLogLevel:
    level: Severity


@dataclass(frozen=True, slots=True)
class SetFacilityLogLevel:
    facility: Facility
    level: Severity


@dataclass(frozen=True, slots=True)
class SetQuerier:
    """EnableIgmpQuerier / DisableIgmpQuerier (the original's) and EnableMldQuerier / DisableMldQuerier."""

    family: Family
    interface: str
    enabled: bool

    @property
    def command(self) -> str:
        return f"{'Enable' if self.enabled else 'Disable'}{'Igmp' if self.family is Family.IPV4 else 'Mld'}Querier"


@dataclass(frozen=True, slots=True)
class SetQuerierTimers:
    """Ours: change querier timers at run time, on one interface or (`interface` None) for every interface of the
    family that has no change of its own for a field."""

    family: Family
    interface: str | None
    changes: TimerChanges


Request = (
    Query
    | AddRule
    | RemoveRule
    | RemoveRuleByName
    | SetGlobalLogLevel
    | SetFacilityLogLevel
    | LoadConfig
    | CheckConfig
    | SaveConfig
    | ControlPlaneRequest
    | SetQuerier
    | SetQuerierTimers
    | RoutingRequest
)

READ_ONLY_QUERIES = frozenset(Query)

_QUERIER_COMMANDS = {
    SetQuerier(family, "", enabled).command: (family, enabled) for family in Family for enabled in (True, False)
}
_STRUCT_COMMANDS = (
    "AddRule",
    "RemoveRule",
    "RemoveRuleByName",
    "SetGlobalLogLevel",
    "SetFacilityLogLevel",
    "LoadConfig",
    "SaveConfig",
    "CheckConfig",
    *_QUERIER_COMMANDS,
    "SetQuerierTimers",
    *ROUTING_STRUCT_COMMANDS,
)
_ALL_COMMANDS = ", ".join([q.value for q in Query] + [q.value for q in RoutingQuery] + list(_STRUCT_COMMANDS))


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _Fields:
    """Typed access to one JSON object with precise errors naming the command and field."""

    def __init__(self, where: str, obj: object, allowed: frozenset[str]) -> None:
        if not isinstance(obj, dict):
            raise ProtocolError(f"{where} must be a JSON object, got {_type_name(obj)}")
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise ProtocolError(f"unknown field '{unknown[0]}' in {where}; expected {', '.join(sorted(allowed))}")
        self.where = where
        self.obj: dict[str, object] = obj

    def _get(self, name: str, required: bool) -> object:
        if name not in self.obj:
            if required:
                raise ProtocolError(f"missing field '{name}' in {self.where}")
            return None
        return self.obj[name]

    def string(self, name: str, required: bool = True) -> str | None:
        value = self._get(name, required)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise ProtocolError(f"field '{name}' in {self.where} must be a string, got {_type_name(value)}")
        return value

    def req_string(self, name: str) -> str:
        value = self.string(name)
        assert value is not None
        return value

    def integer(self, name: str, required: bool = True, default: int = 0) -> int:
        value = self._get(name, required)
        if value is None and not required:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"field '{name}' in {self.where} must be an integer, got {_type_name(value)}")
        return value

    def optional_integer(self, name: str) -> int | None:
        """An integer that may be absent or null."""
        if self.obj.get(name) is None:
            return None
        return self.integer(name)

    def protocol(self, name: str) -> InputProtocol:
        value = self.integer(name, required=False, default=InputProtocol.UDP)
        try:
            return InputProtocol(value)
        except ValueError:
            known = ", ".join(f"{int(p)} ({p.name})" for p in InputProtocol)
            raise ProtocolError(
                f"field '{name}' in {self.where}: IP protocol {value} is not relayed; expected {known}"
            ) from None

    def optional_boolean(self, name: str) -> bool:
        """A boolean that may be absent or null (false then)."""
        value = self.obj.get(name)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise ProtocolError(f"field '{name}' in {self.where} must be a boolean, got {_type_name(value)}")
        return value

    def boolean(self, name: str) -> bool:
        value = self._get(name, True)
        if not isinstance(value, bool):
            raise ProtocolError(f"field '{name}' in {self.where} must be a boolean, got {_type_name(value)}")
        return value

    def address(self, name: str) -> IPAddress:
        text = self.req_string(name)
        try:
            return parse_group(text)
        except ValueError as e:
            raise ProtocolError(f"field '{name}' in {self.where}: {e}") from None

    def source(self, name: str) -> SourcePrefix | None:
        text = self.string(name, required=False)
        if text is None:
            return None
        try:
            return parse_source(text)
        except ValueError as e:
            raise ProtocolError(f"field '{name}' in {self.where}: {e}") from None

    def optional_number(self, name: str) -> float | None:
        """A number that may be absent or null."""
        value = self.obj.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProtocolError(f"field '{name}' in {self.where} must be a number, got {_type_name(value)}")
        return float(value)

    def array(self, name: str) -> list[object]:
        value = self._get(name, True)
        if not isinstance(value, list):
            raise ProtocolError(f"field '{name}' in {self.where} must be an array, got {_type_name(value)}")
        return value


_ADD_FIELDS = frozenset(
    {
        "rule_id",
        "input_interface",
        "input_group",
        "input_port",
        "outputs",
        "input_source",
        "rate_limit",
        "name",
        "input_protocol",
    }
)
_OUTPUT_FIELDS = frozenset({"group", "port", "interface", "ttl", "source_ip", "follow_receivers"})


def _decode_output(i: int, obj: object) -> OutputDestination:
    f = _Fields(f"AddRule.outputs[{i}]", obj, _OUTPUT_FIELDS)
    source_ip = f.string("source_ip", required=False)
    try:
        source = None if source_ip is None else IPv4Address(source_ip)
    except ValueError:
        raise ProtocolError(
            f"field 'source_ip' in AddRule.outputs[{i}]: '{source_ip}' is not an IPv4 address"
        ) from None
    return OutputDestination(
        group=f.address("group"),
        port=f.integer("port"),
        interface=f.req_string("interface"),
        ttl=f.optional_integer("ttl"),
        source_ip=source,
        follow_receivers=f.optional_boolean("follow_receivers"),
    )


def _decode_add(body: object) -> AddRule:
    f = _Fields("AddRule", body, _ADD_FIELDS)
    rule_id = f.string("rule_id", required=False)
    group = f.address("input_group")
    outputs = tuple(_decode_output(i, o) for i, o in enumerate(f.array("outputs")))
    return AddRule(
        rule_id=rule_id or None,
        input_interface=f.req_string("input_interface"),
        input_group=group,
        input_port=f.integer("input_port"),
        outputs=outputs,
        input_source=f.source("input_source"),
        rate_limit=_decode_rate_limit(f.obj.get("rate_limit")),
        name=f.string("name", required=False),
        input_protocol=f.protocol("input_protocol"),
    )


def _decode_rate_limit(obj: object) -> RateLimit | None:
    """An absent or null `rate_limit` is no limit; a bad one is a ProtocolError naming the field."""
    if obj is None:
        return None
    try:
        return decode_rate_limit(obj)
    except ValidationError as e:
        raise ProtocolError(f"AddRule: {e}") from None


TIMER_FIELDS = tuple(f.name for f in fields(Timers))


def _decode_timers(body: object) -> SetQuerierTimers:
    f = _Fields("SetQuerierTimers", body, frozenset({"family", "interface", *TIMER_FIELDS}))
    text = f.req_string("family")
    try:
        family = Family(text)
    except ValueError:
        raise ProtocolError(
            f"field 'family' in SetQuerierTimers must be 'ipv4' (IGMP) or 'ipv6' (MLD), got '{text}'"
        ) from None
    values: dict[str, Any] = {
        n: f.optional_integer(n) if n in INTEGER_TIMERS else f.optional_number(n) for n in TIMER_FIELDS
    }
    changes = TimerChanges(**values)
    if not changes.given():
        raise ProtocolError(f"SetQuerierTimers changes nothing; give at least one of {', '.join(TIMER_FIELDS)}")
    return SetQuerierTimers(family, f.string("interface", required=False), changes)


def _severity(where: str, text: str) -> Severity:
    try:
        return Severity.parse(text)
    except ValidationError as e:
        raise ProtocolError(f"{where}: {e}") from None


def _decode_struct(name: str, body: object) -> Request:
    if name == "AddRule":
        return _decode_add(body)
    if name == "RemoveRule":
        return RemoveRule(_Fields("RemoveRule", body, frozenset({"rule_id"})).req_string("rule_id"))
    if name == "RemoveRuleByName":
        return RemoveRuleByName(_Fields("RemoveRuleByName", body, frozenset({"name"})).req_string("name"))
    if name == "LoadConfig":
        f = _Fields("LoadConfig", body, frozenset({"config", "replace"}))
        return LoadConfig(_config_document(f), f.boolean("replace"))
    if name == "CheckConfig":
        return CheckConfig(_config_document(_Fields("CheckConfig", body, frozenset({"config"}))))
    if name == "SaveConfig":
        return SaveConfig(_Fields("SaveConfig", body, frozenset({"path"})).string("path", required=False))
    if name == "SetGlobalLogLevel":
        f = _Fields("SetGlobalLogLevel", body, frozenset({"level"}))
        return SetGlobalLogLevel(_severity("SetGlobalLogLevel", f.req_string("level")))
    if name == "SetFacilityLogLevel":
        f = _Fields("SetFacilityLogLevel", body, frozenset({"facility", "level"}))
        try:
            facility = Facility.parse(f.req_string("facility"))
        except ValidationError as e:
            raise ProtocolError(f"SetFacilityLogLevel: {e}") from None
        return SetFacilityLogLevel(facility, _severity("SetFacilityLogLevel", f.req_string("level")))
    if name in _QUERIER_COMMANDS:
        family, enabled = _QUERIER_COMMANDS[name]
        return SetQuerier(family, _Fields(name, body, frozenset({"interface"})).req_string("interface"), enabled)
    if name == "SetQuerierTimers":
        return _decode_timers(body)
    if name in ROUTING_STRUCT_COMMANDS:
        return decode_routing_struct(name, body)
    raise ProtocolError(f"unknown command '{name}'; expected one of {_ALL_COMMANDS}")


def _config_document(f: _Fields) -> ConfigDocument:
    """The `config` of a LoadConfig or CheckConfig: an invalid configuration is kept as its reason."""
    try:
        return ConfigDocument(decode_original_config(f._get("config", True), "config"))
    except ConfigError as e:
        return ConfigDocument(None, str(e))


_QUERY_NAMES = frozenset(q.value for q in Query)
_ROUTING_QUERIES = frozenset(q.value for q in RoutingQuery)


def request_too_big(limit: int) -> ProtocolError:
    return ProtocolError(f"request exceeds the size limit (max_request_bytes = {limit})")


def decode_request(data: bytes, limit: int = MAX_REQUEST_BYTES) -> Request:
    """Decode one request document (framing already removed)."""
    if len(data) > limit:
        raise request_too_big(limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"request is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    if not text.strip():
        raise ProtocolError("empty request; expected one JSON document")
    doc = load_json(text, "invalid JSON")
    if isinstance(doc, str):
        if doc in _ROUTING_QUERIES:
            return RoutingQuery(doc)
        plane = decode_control_plane(doc)
        if plane is not None:
            return plane
        try:
            return Query(doc)
        except ValueError:
            if doc in _STRUCT_COMMANDS:
                raise ProtocolError(f"command '{doc}' needs arguments: {{\"{doc}\": {{...}}}}") from None
            raise ProtocolError(f"unknown command '{doc}'; expected one of {_ALL_COMMANDS}") from None
    if isinstance(doc, dict):
        if len(doc) != 1:
            raise ProtocolError(f"a request object must have exactly one key (the command), got {len(doc)}")
        ((name, body),) = doc.items()
        if name in _QUERY_NAMES:
            return Query(name)
        if name in _ROUTING_QUERIES:
            return RoutingQuery(name)
        plane = decode_control_plane(name)
        if plane is not None:
            return plane
        return _decode_struct(name, body)
    raise ProtocolError(f"a request must be a JSON string or object, got {_type_name(doc)}")


def _output_json(out: OutputDestination) -> dict[str, object]:
    """An output as both originals read it: `ttl` and `source_ip` only when set (today's original
    omits them then, and reads an absent `ttl` as "the global multicast_ttl")."""
    doc: dict[str, object] = {"group": address_text(out.group), "port": out.port, "interface": out.interface}
    if out.ttl is not None:
        doc["ttl"] = out.ttl
    if out.source_ip is not None:
        doc["source_ip"] = str(out.source_ip)
    if out.follow_receivers:
        doc["follow_receivers"] = True  # ours, only when set
    return doc


def _config_json(document: ConfigDocument) -> dict[str, object]:
    if document.config is None:
        raise ValueError(f"an invalid configuration is not sent: {document.error}")
    return encode_original_config(document.config.rules, document.config.sections)


def encode_request(req: Request) -> bytes:
    doc: object
    match req:
        case Query():
            doc = req.value
        case AddRule():
            body: dict[str, object] = {
                "input_interface": req.input_interface,
                "input_group": str(req.input_group),
                "input_port": req.input_port,
                "outputs": [_output_json(o) for o in req.outputs],
            }
            if req.rule_id:
                body["rule_id"] = req.rule_id
            if req.input_source is not None:
                body["input_source"] = source_text(req.input_source)
            if req.rate_limit is not None:
                body["rate_limit"] = encode_rate_limit(req.rate_limit)
            if req.name is not None:
                body["name"] = req.name
            if req.input_protocol is not InputProtocol.UDP:
                body["input_protocol"] = int(req.input_protocol)
            doc = {"AddRule": body}
        case RemoveRule():
            doc = {"RemoveRule": {"rule_id": req.rule_id}}
        case RemoveRuleByName():
            doc = {"RemoveRuleByName": {"name": req.name}}
        case LoadConfig():
            doc = {"LoadConfig": {"config": _config_json(req.document), "replace": req.replace}}
        case CheckConfig():
            doc = {"CheckConfig": {"config": _config_json(req.document)}}
        case SaveConfig():
            doc = {"SaveConfig": {"path": req.path}}
        case ControlPlaneRequest():
            doc = req.command
        case SetGlobalLogLevel():
            doc = {"SetGlobalLogLevel": {"level": req.level.name}}
        case SetFacilityLogLevel():
            doc = {"SetFacilityLogLevel": {"facility": req.facility.name, "level": req.level.name}}
        case SetQuerier():
            doc = {req.command: {"interface": req.interface}}
        case SetQuerierTimers():
            timers: dict[str, object] = {"family": req.family.value}
            if req.interface is not None:
                timers["interface"] = req.interface
            doc = {"SetQuerierTimers": {**timers, **req.changes.given()}}
        case (
            RoutingQuery()
            | EnablePim()
            | DisablePim()
            | SetStaticRp()
            | SetRpAddress()
            | AddMsdpPeer()
            | RemoveMsdpPeer()
        ):
            doc = encode_routing_request(req)
        case _:
            assert_never(req)
    return json.dumps(doc).encode() + b"\n"


# --------------------------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class Success:
    text: str


@dataclass(frozen=True, slots=True)
class Error:
    text: str


@dataclass(frozen=True, slots=True)
class Rules:
    rules: tuple[RuleView, ...]


@dataclass(frozen=True, slots=True)
class Stats:
    flows: tuple[FlowStats, ...]


@dataclass(frozen=True, slots=True)
class CountedStats:
    """The supervisor's `Stats`: each rule with its counts, encoded to the same bytes as the `Stats` of the
    `FlowStats` they make, without making them (`ResponseEncoder`). Clients decode it as `Stats`."""

    flows: tuple[Counted, ...]


@dataclass(frozen=True, slots=True)
class Workers:
    workers: tuple[WorkerInfo, ...]


@dataclass(frozen=True, slots=True)
class LogLevelsResponse:
    levels: LogLevels


@dataclass(frozen=True, slots=True)
class Version:
    info: VersionInfo


@dataclass(frozen=True, slots=True)
class ConfigResponse:
    view: ConfigView


@dataclass(frozen=True, slots=True)
class MembershipGroups:
    """`{"IgmpGroups": [...]}` (the original's shape, our fields added) or `{"MldGroups": [...]}`."""

    family: Family
    groups: tuple[GroupView, ...]


@dataclass(frozen=True, slots=True)
class QuerierStates:
    queriers: tuple[QuerierView, ...]


@dataclass(frozen=True, slots=True)
class KernelStatusResponse:
    status: KernelStatus


@dataclass(frozen=True, slots=True)
class ConfigValidation:
    """CheckConfig's answer, as today's original gives it (`warnings` is ours: keys it would ignore)."""

    valid: bool
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ControlPlaneConfig:
    """GetControlPlaneConfig's answer: the `control_plane` section in force (not served yet, so `served`
    is false; the field is ours)."""

    settings: ControlPlaneSettings


Response = (
    Success
    | Error
    | Rules
    | Stats
    | CountedStats
    | Workers
    | LogLevelsResponse
    | Version
    | ConfigResponse
    | MembershipGroups
    | QuerierStates
    | ConfigValidation
    | ControlPlaneConfig
    | KernelStatusResponse
    | RoutingResponse
)

GROUPS_KEY = {Family.IPV4: "IgmpGroups", Family.IPV6: "MldGroups"}


def _seconds(value: float) -> int:
    """Whole seconds left, rounded up (the original's `expires_in_secs` is an integer)."""
    return int(-(-value // 1))


def group_json(g: GroupView) -> dict[str, object]:
    return {
        "interface": g.interface,
        "group": str(g.group),
        "expires_in_secs": _seconds(g.expires_in),
        "last_reporter": None if g.last_reporter is None else str(g.last_reporter),
        "is_querier": g.is_querier,
        "family": g.family.value,
        "version": g.version,
        "filter_mode": g.filter_mode.value,
        "sources": [
            {"address": str(s.address), "expires_in_secs": _seconds(s.expires_in), "expires_in": round(s.expires_in, 3)}
            for s in g.sources
        ],
        "expires_in": round(g.expires_in, 3),
    }


def querier_json(q: QuerierView) -> dict[str, object]:
    return {
        "interface": q.interface,
        "family": q.family.value,
        "protocol": q.family.protocol,
        "active": q.active,
        "is_querier": q.is_querier,
        "address": None if q.address is None else str(q.address),
        "querier": None if q.querier is None else str(q.querier),
        "other_querier_expires_in_secs": _seconds(q.other_querier_expires_in),
        "version": q.version,
        "counters": dict(q.counters),
        "timers": None if q.timers is None else timers_json(q.timers),
    }


def timers_json(t: Timers) -> dict[str, object]:
    return {name: getattr(t, name) for name in TIMER_FIELDS}


#: `source` as today's original names it (its RuleSource: Static from the config file, Dynamic at run time);
#: our own word for it is `origin`
_ORIGINAL_SOURCE = {RuleSource.CONFIG: "Static", RuleSource.RUNTIME: "Dynamic"}
_FROM_ORIGINAL_SOURCE = {"Static": RuleSource.CONFIG, "Dynamic": RuleSource.RUNTIME}


def _source_fields(source: SourcePrefix | None) -> dict[str, object]:
    """`input_source` is a host address, as today's original reads it (an IPv4 one; it cannot read an IPv6
    rule at all); a prefix, which it cannot read, goes in our own `input_source_prefix` instead."""
    if source is None:
        return {"input_source": None}
    if source.prefixlen == source.max_prefixlen:
        return {"input_source": str(source.network_address)}
    return {"input_source": None, "input_source_prefix": source_text(source)}


def encode_rule(r: ForwardingRule) -> dict[str, object]:
    """A rule as JSON (ListRules, the state file): the fields of both originals, then ours."""
    doc: dict[str, object] = {"rule_id": r.rule_id}
    if r.name is not None:
        doc["name"] = r.name
    doc.update(
        {
            "input_interface": r.input_interface,
            "input_group": address_text(r.input_group),
            "input_port": r.input_port,
            "input_protocol": int(r.input_protocol),
            **_source_fields(r.input_source),
            "outputs": [_output_json(o) for o in r.outputs],
            "source": _ORIGINAL_SOURCE[r.source],
            "origin": r.source.value,
            "rate_limit": None if r.rate_limit is None else encode_rate_limit(r.rate_limit),
        }
    )
    return doc


def rule_json(view: RuleView) -> dict[str, object]:
    return {
        **encode_rule(view.rule),
        "engine": view.engine.value,
        "state": view.state.value,
        "state_reason": view.state_reason,
    }


def _flow_json(f: FlowStats) -> dict[str, object]:
    return {
        "rule_id": f.rule_id,
        "input_interface": f.input_interface,
        "input_group": f.input_group,
        "input_port": f.input_port,
        "input_protocol": f.input_protocol,
        "input_source": f.input_source or None,
        "packets_relayed": f.packets_relayed,
        "bytes_relayed": f.bytes_relayed,
        "packets_per_second": f.packets_per_second,
        "bits_per_second": f.bits_per_second,
        "outputs": [
            {
                "group": o.group,
                "port": o.port,
                "interface": o.interface,
                "packets_sent": o.packets_sent,
                "bytes_sent": o.bytes_sent,
                "send_errors": o.send_errors,
            }
            for o in f.outputs
        ],
        "drops": dict(f.drops),
    }


def _worker_json(w: WorkerInfo) -> dict[str, object]:
    """Today's original reads `status` as "Running" or {"Restarting": {"backoff_ms": N}} only: a worker that
    is starting (or stopped, at shutdown) is not running, so it is shown restarting, in N ms (0: now).
    Our own word for the state is `state`."""
    status: object = "Running" if w.status == "Running" else {"Restarting": {"backoff_ms": w.backoff_ms}}
    return {
        "pid": w.pid,
        "worker_type": w.worker_type,
        "core_id": w.core_id,
        "interface": w.interface,
        "status": status,
        "state": w.status,
        "worker_id": w.worker_id,
        "uid": w.uid,
        "restarts": w.restarts,
        "drops": dict(w.drops),
        "kernel_packets": w.kernel_packets,
        "kernel_drops": w.kernel_drops,
        "stats_pipe_errors": w.stats_pipe_errors,
        "ring_resyncs": w.ring_resyncs,
    }


def _levels_json(levels: LogLevels) -> dict[str, object]:
    """Today's original fails to read a facility it does not know (ControlPlane is gone from its list);
    those overrides go in our own `extra_facility_overrides`."""
    known = {k: v for k, v in levels.facility_overrides.items() if k in ORIGINAL_FACILITIES}
    extra = {k: v for k, v in levels.facility_overrides.items() if k not in ORIGINAL_FACILITIES}
    doc: dict[str, object] = {"global": levels.global_level, "facility_overrides": known}
    if extra:
        doc["extra_facility_overrides"] = extra
    return doc


def _config_view_json(v: ConfigView) -> dict[str, object]:
    """The running configuration in today's original's schema (`pinning`, `rules` with `input`, the protocol
    sections, `multicast_ttl`); each rule carries our fields too, and `path`, `format`, `settings` and
    `limits` are ours."""
    doc = encode_original_config(v.rules, v.original)
    doc["rules"] = [{**encode_rule(r), **encode_original_rule(r)} for r in v.rules]
    doc.update(
        {
            "path": v.path,
            "format": v.dialect,
            "settings": dict(v.settings),
            "limits": {f: getattr(v.limits, f) for f in Limits.__dataclass_fields__},
        }
    )
    return doc


def response_json(resp: Response) -> object:
    match resp:
        case Success():
            return {"Success": resp.text}
        case Error():
            return {"Error": resp.text}
        case Rules():
            return {"Rules": [rule_json(v) for v in resp.rules]}
        case Stats():
            return {"Stats": [_flow_json(f) for f in resp.flows]}
        case CountedStats():
            return {"Stats": [_flow_json(flow_stats(rule, counts)) for rule, counts in resp.flows]}
        case Workers():
            return {"Workers": [_worker_json(w) for w in resp.workers]}
        case LogLevelsResponse():
            return {"LogLevels": _levels_json(resp.levels)}
        case Version():
            return {
                "Version": {
                    "version": resp.info.version,
                    "protocol_version": resp.info.protocol_version,
                    "implementation": resp.info.implementation,
                }
            }
        case KernelStatusResponse():
            k = resp.status
            return {
                "KernelStatus": {
                    "loaded": k.loaded,
                    "mode": k.mode,
                    "reason": k.reason,
                    "instructions": k.instructions,
                    "interfaces": list(k.interfaces),
                    "rules": k.rules,
                    "max_rules": k.max_rules,
                    "max_outputs": k.max_outputs,
                    "drops": dict(k.drops),
                }
            }
        case ConfigResponse():
            return {"Config": _config_view_json(resp.view)}
        case ConfigValidation():
            return {
                "ConfigValidation": {
                    "valid": resp.valid,
                    "errors": list(resp.errors),
                    "warnings": list(resp.warnings),
                }
            }
        case ControlPlaneConfig():
            return {
                "ControlPlaneConfig": {
                    "rpf_provider": resp.settings.rpf_provider,
                    "external_neighbors_enabled": resp.settings.external_neighbors_enabled,
                    "event_buffer_size": resp.settings.event_buffer_size,
                    "served": False,
                }
            }
        case MembershipGroups():
            return {GROUPS_KEY[resp.family]: [group_json(g) for g in resp.groups]}
        case QuerierStates():
            return {"Queriers": [querier_json(q) for q in resp.queriers]}
        case (
            PimNeighbors()
            | Mroutes()
            | MsdpPeers()
            | MsdpSaCache()
            | RoutingCounters()
            | PimInterfaces()
            | PimUpstream()
        ):
            return routing_response_json(resp)
        case _:
            assert_never(resp)


def encode_response(resp: Response) -> bytes:
    return json.dumps(response_json(resp)).encode() + b"\n"


class ResponseEncoder:
    """`encode_response`, with the `ListRules` JSON of the rules' views and the templates of their `GetStats`
    entries (`rule_flow_template`) kept between answers, deflated per run of rules (`RunTexts`): at 10,000
    rules an answer writes again only the runs that changed since the previous one, and fills the templates
    of a run with the counts of its flows in one %-format. The answer is one join. The bytes are those of
    `encode_response`."""

    def __init__(self) -> None:
        self._views: RunTexts[RuleView] = RunTexts(_listing, _VIEW_RULE_ID)
        self._flows: RunTexts[ForwardingRule] = RunTexts(_flow_templates, _RULE_ID)

    def encode(self, resp: Response) -> bytes:
        match resp:
            case Rules():
                listing = ", ".join([text for (text,), _where in self._views.runs(resp.rules)])
                return ('{"Rules": [' + listing + "]}\n").encode()
            case CountedStats():
                flows = tuple(resp.flows)
                runs = self._flows.runs([rule for rule, _counts in flows])
                body = ", ".join([_filled(text, flows[where]) for (text,), where in runs])
                return ('{"Stats": [' + body + "]}\n").encode()
            case _:
                return encode_response(resp)


_RULE_ID = attrgetter("rule_id")
_VIEW_RULE_ID = attrgetter("rule.rule_id")


def _listing(views: Sequence[RuleView]) -> tuple[str]:
    """The `ListRules` JSON of a run of views, joined by ", " (`rule_text`)."""
    return (", ".join(map(rule_text, views)),)


def _flow_templates(rules: Sequence[ForwardingRule]) -> tuple[str]:
    """The `GetStats` entries of a run of rules, joined by ", ", as one template (`rule_flow_template`)."""
    return (", ".join(map(rule_flow_template, rules)),)


def _filled(template: str, run: Iterable[Counted]) -> str:
    """A run's `_flow_templates` filled with the counts of its flows (`_count_values`, in turn)."""
    values: list[object] = []
    for _rule, counts in run:
        values += _count_values(counts)
    return template % tuple(values)


_ENGINE_TEXT = {e: f'"engine": {_quote(e.value)}, "state": ' for e in Engine}
_STATE_TEXT = {s: f"{_quote(s.value)}, " for s in RuleState}
_SOURCE_TEXT = {s: f'"source": {_quote(_ORIGINAL_SOURCE[s])}, "origin": {_quote(s.value)}, ' for s in RuleSource}


def _output_text(o: OutputDestination) -> str:
    text = f'{{"group": "{address_text(o.group)}", "port": {o.port}, "interface": {_quote(o.interface)}'
    if o.ttl is not None:
        text += f', "ttl": {o.ttl}'
    if o.source_ip is not None:
        text += f', "source_ip": "{o.source_ip}"'
    if o.follow_receivers:
        text += ', "follow_receivers": true'
    return text + "}"


def rule_text(view: RuleView) -> str:
    """`json.dumps(rule_json(view))`, written directly (a property test holds the two equal)."""
    r = view.rule
    name = "" if r.name is None else f'"name": {_quote(r.name)}, '
    source = r.input_source
    if source is None:
        source_text_ = '"input_source": null'
    elif source.prefixlen == source.max_prefixlen:
        source_text_ = f'"input_source": "{source.network_address}"'
    else:
        source_text_ = f'"input_source": null, "input_source_prefix": "{source_text(source)}"'
    limit = "null" if r.rate_limit is None else json.dumps(encode_rate_limit(r.rate_limit))
    return (
        f'{{"rule_id": {_quote(r.rule_id)}, {name}"input_interface": {_quote(r.input_interface)}, '
        f'"input_group": "{address_text(r.input_group)}", "input_port": {r.input_port}, '
        f'"input_protocol": {int(r.input_protocol)}, {source_text_}, '
        f'"outputs": [{", ".join(map(_output_text, r.outputs))}], {_SOURCE_TEXT[r.source]}"rate_limit": {limit}, '
        f'{_ENGINE_TEXT[view.engine]}{_STATE_TEXT[view.state]}"state_reason": {_quote(view.state_reason)}}}'
    )


def _float_text(x: float) -> str:
    """A number as `json.dumps` writes it (`repr`; NaN and the infinities as JavaScript names them)."""
    return repr(x) if x - x == 0 else json.dumps(x)


def _quoted(text: str) -> str:
    """A JSON string, as the literal text of a %-template."""
    return template_literal(_quote(text))


def rule_flow_template(rule: ForwardingRule) -> str:
    """The JSON of a rule's `GetStats` entry with a %-placeholder for each number it counts (`_count_values`):
    packets, bytes, the two rates, the three counters of each output and the drops."""
    outs = ", ".join(
        f'{{"group": "{address_text(o.group)}", "port": {o.port}, "interface": {_quoted(o.interface)}, '
        '"packets_sent": %d, "bytes_sent": %d, "send_errors": %d}'
        for o in rule.outputs
    )
    source = "null" if rule.input_source is None else f'"{source_text(rule.input_source)}"'
    return (
        f'{{"rule_id": {_quoted(rule.rule_id)}, "input_interface": {_quoted(rule.input_interface)}, '
        f'"input_group": "{address_text(rule.input_group)}", "input_port": {rule.input_port}, '
        f'"input_protocol": {int(rule.input_protocol)}, "input_source": {source}, '
        '"packets_relayed": %d, "bytes_relayed": %d, "packets_per_second": %s, "bits_per_second": %s, '
        f'"outputs": [{outs}], "drops": %s}}'
    )


def _count_values(c: FlowCounts) -> tuple[object, ...]:
    """What a `rule_flow_template` is filled with."""
    return (
        c.packets,
        c.bytes,
        _float_text(c.packets_per_second),
        _float_text(c.bits_per_second),
        *c.outputs,
        json.dumps(dict(c.drops)) if c.drops else "{}",
    )


# ----------------------------------------------------------------------------- response decoding (client)


def _obj(where: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object, got {_type_name(value)}")
    return value


def _rule_origin(d: Mapping[str, object]) -> tuple[RuleSource, str]:
    """Where a rule came from: our `origin`, else the original's `source` ("Static", "Dynamic", or a
    protocol's {"Pim": {...}} / {"Igmp": {...}}, which we do not have: shown in a note, not fatal),
    else our older state files' `source` ("runtime", "config")."""
    origin = d.get("origin")
    if isinstance(origin, str):
        return RuleSource(origin), ""
    source = d.get("source", "Dynamic")
    if isinstance(source, str):
        found = _FROM_ORIGINAL_SOURCE.get(source)
        if found is not None:
            return found, ""
        try:
            return RuleSource(source), ""
        except ValueError:
            return RuleSource.RUNTIME, f"source '{source}' is unknown to this client"
    if isinstance(source, dict) and len(source) == 1:
        ((kind, detail),) = source.items()
        tree = detail.get("tree_type") if isinstance(detail, dict) else None
        return RuleSource.RUNTIME, f"learned by {kind}" + (f" ({tree})" if tree else "")
    raise ValueError(f"source must be a string or a one-key object, got {_type_name(source)}")


def decode_rule(o: object) -> ForwardingRule:
    """The inverse of encode_rule, reading either original's shape too; ProtocolError on anything malformed."""
    d = _obj("rule", o)
    try:
        source_text_ = d.get("input_source_prefix") or d.get("input_source")
        name = d.get("name")
        return ForwardingRule(
            rule_id=str(d["rule_id"]),
            input_interface=str(d["input_interface"]),
            input_group=parse_group(d["input_group"]),
            input_port=int(d["input_port"]),
            outputs=tuple(_decode_rule_output(_obj("output", x)) for x in d.get("outputs", [])),
            input_source=parse_source(source_text_) if source_text_ else None,
            source=_rule_origin(d)[0],
            rate_limit=None if d.get("rate_limit") is None else decode_rate_limit(d["rate_limit"]),
            name=None if name is None else str(name),
            input_protocol=InputProtocol(int(d.get("input_protocol", UDP))),
        )
    except (KeyError, TypeError, ValueError, ValidationError, ProtocolError) as e:
        raise ProtocolError(f"malformed rule: {e!r}") from None


def _decode_rule_output(x: dict[str, Any]) -> OutputDestination:
    ttl, source_ip = x.get("ttl"), x.get("source_ip")
    return OutputDestination(
        parse_group(x["group"]),
        int(x["port"]),
        str(x["interface"]),
        None if ttl is None else int(ttl),
        None if source_ip is None else parse_group(source_ip),
        bool(x.get("follow_receivers", False)),
    )


def _decode_rule(o: object) -> RuleView:
    d = _obj("rule", o)
    try:
        rule = decode_rule(d)
    except ProtocolError as e:
        raise ProtocolError(str(e).replace("malformed rule:", "malformed rule in response:", 1)) from None
    try:
        engine = Engine(d.get("engine", "userspace"))
        state_name, reason = d.get("state", "active"), str(d.get("state_reason", ""))
        if not isinstance(state_name, str):
            raise TypeError(f"state must be a string, got {_type_name(state_name)}")
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"malformed rule in response: {e!r}") from None
    try:
        state = RuleState(state_name)
    except ValueError:  # a newer supervisor's state: shown, not fatal (like unknown limits in Config)
        state = RuleState.WAITING
        reason = f"state '{state_name}' is unknown to this client" + (f"; {reason}" if reason else "")
    note = _rule_origin(d)[1]
    if note:
        reason = f"{note}; {reason}" if reason else note
    return RuleView(rule=rule, engine=engine, state=state, state_reason=reason)


def _decode_flow(o: object) -> FlowStats:
    d = _obj("stats entry", o)
    try:
        drops = d.get("drops")
        return FlowStats(
            str(d["input_group"]),
            int(d["input_port"]),
            int(d["packets_relayed"]),
            int(d["bytes_relayed"]),
            float(d["packets_per_second"]),
            float(d["bits_per_second"]),
            str(d.get("rule_id", "")),
            str(d.get("input_interface", "")),
            tuple(
                [
                    OutputStats(
                        str(x["group"]),
                        int(x["port"]),
                        str(x["interface"]),
                        int(x.get("packets_sent", 0)),
                        int(x.get("bytes_sent", 0)),
                        int(x.get("send_errors", 0)),
                    )
                    for x in d.get("outputs", ())
                ]
            ),
            {str(k): int(v) for k, v in drops.items()} if drops else {},
            str(d.get("input_source") or ""),
            int(d.get("input_protocol", UDP)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ProtocolError(f"malformed stats entry in response: {e!r}") from None


def _worker_status(d: Mapping[str, object]) -> tuple[str, int]:
    """(state, backoff in ms): our `state`, else the original's `status` ("Running", {"Restarting":
    {"backoff_ms": N}}, or a newer variant, shown by its name); a December supervisor sends neither."""
    status = d.get("status", "Running")
    backoff = 0
    if isinstance(status, dict) and len(status) == 1:
        ((status, detail),) = status.items()
        if isinstance(detail, dict):
            backoff = int(detail.get("backoff_ms", 0))
    state = d.get("state", status)
    if not isinstance(state, str):
        raise TypeError(f"status must be a string or a one-key object, got {_type_name(state)}")
    return state, backoff


def _decode_worker(o: object) -> WorkerInfo:
    d = _obj("worker entry", o)
    try:
        state, backoff_ms = _worker_status(d)
        interface = d.get("interface")
        return WorkerInfo(
            pid=int(d["pid"]),
            worker_type=str(d["worker_type"]),
            core_id=None if d.get("core_id") is None else int(d["core_id"]),
            worker_id=int(d.get("worker_id", 0)),
            status=state,
            uid=None if d.get("uid") is None else int(d["uid"]),
            restarts=int(d.get("restarts", 0)),
            drops={str(k): int(v) for k, v in d.get("drops", {}).items()},
            kernel_packets=int(d.get("kernel_packets", 0)),
            kernel_drops=int(d.get("kernel_drops", 0)),
            stats_pipe_errors=int(d.get("stats_pipe_errors", 0)),
            ring_resyncs=int(d.get("ring_resyncs", 0)),
            interface=None if interface is None else str(interface),
            backoff_ms=backoff_ms,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"malformed worker entry in response: {e!r}") from None


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's garbage collector held off while a response is decoded (and on again after, if it was): the
    objects of a large answer (`GetStats` at 10,000 rules: ~150,000, all kept) otherwise set off collections
    that walk them again and again, which took half of the client's decoding (bench/statsbuild.py)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def decode_response(data: bytes) -> Response:
    return decode_response_document(load_response(data))


def load_response(data: bytes) -> Any:
    """The response's JSON document, not yet checked (`decode_response_document` does): a client that
    prints the answer as it came parses it once."""
    with _collector_paused():
        return load_json(data, "the supervisor's response is not valid JSON")


def decode_response_document(doc: Any) -> Response:
    with _collector_paused():
        return _decode_response(doc)


def _decode_response(doc: Any) -> Response:
    d = _obj("response", doc)
    if len(d) != 1:
        raise ProtocolError(f"a response must have exactly one key, got {sorted(d)}")
    ((name, body),) = d.items()
    if name in ("Success", "Error"):
        if not isinstance(body, str):
            raise ProtocolError(f"{name} response must carry a string")
        return Success(body) if name == "Success" else Error(body)
    if name in ("Rules", "Stats", "Workers", "IgmpGroups", "MldGroups", "Queriers"):
        if not isinstance(body, list):
            raise ProtocolError(f"{name} response must carry an array")
        if name in ("IgmpGroups", "MldGroups", "Queriers"):
            try:
                if name == "Queriers":
                    return QuerierStates(tuple(_decode_querier(x) for x in body))
                family = Family.IPV4 if name == "IgmpGroups" else Family.IPV6
                return MembershipGroups(family, tuple(_decode_group(family, x) for x in body))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ProtocolError(f"malformed {name} response: {e!r}") from None
        if name == "Rules":
            return Rules(tuple(_decode_rule(x) for x in body))
        if name == "Stats":
            return Stats(tuple(_decode_flow(x) for x in body))
        return Workers(tuple(_decode_worker(x) for x in body))
    if name in ROUTING_RESPONSES:
        return decode_routing_response(name, body)
    try:
        return _decode_other(name, body)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ProtocolError(f"malformed {name} response: {e!r}") from None


def _decode_group(family: Family, o: object) -> GroupView:
    """A group entry: the original's five fields, ours when present (the original sends no sources)."""
    d = _obj("group entry", o)
    reporter = d.get("last_reporter")
    expires = float(d.get("expires_in", d["expires_in_secs"]))
    return GroupView(
        interface=str(d["interface"]),
        family=family,
        group=parse_group(str(d["group"])),
        filter_mode=FilterMode(d.get("filter_mode", "exclude")),
        expires_in=expires,
        sources=tuple(
            SourceView(parse_group(str(s["address"])), float(s.get("expires_in", s["expires_in_secs"])))
            for s in (_obj("source", x) for x in d.get("sources", []))
        ),
        last_reporter=None if reporter is None else parse_group(str(reporter)),
        version=int(d.get("version", 2)),
        is_querier=bool(d["is_querier"]),
    )


def _decode_querier(o: object) -> QuerierView:
    d = _obj("querier entry", o)
    address, querier = d.get("address"), d.get("querier")
    return QuerierView(
        interface=str(d["interface"]),
        family=Family(d["family"]),
        active=bool(d["active"]),
        is_querier=bool(d["is_querier"]),
        address=None if address is None else parse_group(str(address)),
        querier=None if querier is None else parse_group(str(querier)),
        other_querier_expires_in=float(d.get("other_querier_expires_in_secs", 0)),
        version=int(d["version"]),
        counters={str(k): int(v) for k, v in _obj("counters", d.get("counters", {})).items()},
        timers=None if d.get("timers") is None else _decode_timer_values(_obj("timers", d["timers"])),
    )


def _decode_timer_values(d: dict[str, Any]) -> Timers:
    """The timers of a querier entry; fields this client does not know are ignored, missing ones are defaults."""
    values: dict[str, Any] = {n: int(d[n]) if n in INTEGER_TIMERS else float(d[n]) for n in TIMER_FIELDS if n in d}
    return Timers(**values)


def _decode_other(name: str, body: object) -> Response:
    """The responses that carry one object; KeyError, TypeError and ValueError mean malformed."""
    if name == "LogLevels":
        b = _obj("LogLevels", body)
        overrides = {
            **_obj("facility_overrides", b.get("facility_overrides", {})),
            **_obj("extra_facility_overrides", b.get("extra_facility_overrides", {})),
        }
        return LogLevelsResponse(LogLevels(str(b.get("global")), {str(k): str(v) for k, v in overrides.items()}))
    if name == "Version":
        b = _obj("Version", body)
        return Version(
            VersionInfo(
                str(b.get("version")),
                int(b.get("protocol_version", 0)),
                str(b.get("implementation", "unknown")),
            )
        )
    if name == "Config":
        return ConfigResponse(_decode_config_view(_obj("Config", body)))
    if name == "ConfigValidation":
        b = _obj("ConfigValidation", body)
        valid = b["valid"]
        if not isinstance(valid, bool):
            raise TypeError(f"valid must be a boolean, got {_type_name(valid)}")
        return ConfigValidation(
            valid, tuple(str(e) for e in b.get("errors", [])), tuple(str(w) for w in b.get("warnings", []))
        )
    if name == "ControlPlaneConfig":
        b = _obj("ControlPlaneConfig", body)
        return ControlPlaneConfig(
            ControlPlaneSettings(
                str(b["rpf_provider"]), bool(b["external_neighbors_enabled"]), int(b["event_buffer_size"])
            )
        )
    if name == "KernelStatus":
        b = _obj("KernelStatus", body)
        return KernelStatusResponse(
            KernelStatus(
                loaded=bool(b["loaded"]),
                mode=str(b.get("mode", "")),
                reason=str(b.get("reason", "")),
                instructions=int(b.get("instructions", 0)),
                interfaces=tuple(str(i) for i in b.get("interfaces", [])),
                rules=int(b.get("rules", 0)),
                max_rules=int(b.get("max_rules", 0)),
                max_outputs=int(b.get("max_outputs", 0)),
                drops={str(k): int(v) for k, v in _obj("drops", b.get("drops", {})).items()},
            )
        )
    raise ProtocolError(f"unknown response type '{name}'")


def _decode_config_view(b: dict[str, Any]) -> ConfigView:
    """Ours (settings, limits, rules with both shapes) or today's original's (rules in its config schema)."""
    try:
        known = Limits.__dataclass_fields__  # a newer supervisor's other limits are not shown
        raw_limits = _obj("limits", b.get("limits", {}))
        limits = Limits(**{str(k): int(v) for k, v in raw_limits.items() if k in known})
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"malformed limits in response: {e}") from None
    settings = tuple((str(k), v) for k, v in _obj("settings", b.get("settings", {})).items())
    path = b.get("path")
    raw_rules = b.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ProtocolError("malformed Config response: rules must be an array")
    if all(isinstance(r, dict) and "input_interface" in r for r in raw_rules):
        rules = tuple(decode_rule(r) for r in raw_rules)
        sections = OriginalSections()
    else:  # the original's: rules in its config schema
        try:
            doc = {k: v for k, v in b.items() if k in _ORIGINAL_CONFIG_KEYS}
            found = decode_original_config(doc, "Config", validate=False)
        except ConfigError as e:
            raise ProtocolError(f"malformed Config response: {e}") from None
        rules, sections = found.rules, found.sections
    if "limits" in b:  # ours: the sections come with the rules in the original's schema
        try:
            sections = decode_original_config(
                {k: v for k, v in b.items() if k in _ORIGINAL_CONFIG_KEYS and k != "rules"}, "Config", validate=False
            ).sections
        except ConfigError as e:
            raise ProtocolError(f"malformed Config response: {e}") from None
    dialect = str(b.get("format", "json5" if "limits" not in b else "toml"))
    return ConfigView(None if path is None else str(path), settings, limits, rules, sections, dialect)


_ORIGINAL_CONFIG_KEYS = frozenset({"multicast_ttl", "pinning", "rules", "pim", "igmp", "msdp", "control_plane"})


# ---------------------------------------------------------------------------------------------- framing


class RequestFramer:
    """Collects one request from a byte stream: ended by a newline or by the peer's half-close."""

    def __init__(self, limit: int = MAX_REQUEST_BYTES) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> bytes | None:
        """Add bytes; return the request when a newline completes it. Raises ProtocolError when too big."""
        self._buf += data
        nl = self._buf.find(b"\n")
        if nl >= 0:
            if nl > self._limit:
                raise self._too_big()
            return bytes(self._buf[:nl])
        if len(self._buf) > self._limit:
            raise self._too_big()
        return None

    def eof(self) -> bytes:
        """The peer half-closed: what was sent is the request."""
        return bytes(self._buf)

    def _too_big(self) -> ProtocolError:
        return request_too_big(self._limit)
