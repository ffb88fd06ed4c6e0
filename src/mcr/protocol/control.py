"""The control-socket protocol: JSON <-> typed requests and responses (DESIGN §5).

Shapes follow the original MCR's serde encoding (externally tagged enums: unit variants are bare
strings, struct variants `{"Variant": {...}}`), so its clients keep working. Everything here is pure:
bytes in, typed values out, with a precise `ProtocolError` for anything malformed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any, assert_never

from mcr.model.errors import ProtocolError, ValidationError
from mcr.model.levels import Facility, Severity
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
    parse_group,
    parse_source,
    source_text,
)
from mcr.model.status import (
    ConfigView,
    FlowStats,
    KernelStatus,
    LogLevels,
    OutputStats,
    RuleState,
    RuleView,
    VersionInfo,
    WorkerInfo,
)
from mcr.protocol.jsondoc import load_json
from mcr.protocol.routing import (
    ROUTING_RESPONSES,
    ROUTING_STRUCT_COMMANDS,
    AddMsdpPeer,
    DisablePim,
    EnablePim,
    Mroutes,
    MsdpPeers,
    MsdpSaCache,
    PimNeighbors,
    RemoveMsdpPeer,
    RoutingCounters,
    RoutingQuery,
    RoutingRequest,
    RoutingResponse,
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


@dataclass(frozen=True, slots=True)
class RemoveRule:
    rule_id: str


@dataclass(frozen=True, slots=True)
class SetGlobalLogLevel:
    level: Severity


@dataclass(frozen=True, slots=True)
class SetFacilityLogLevel:
    facility: Facility
    level: Severity


Request = Query | AddRule | RemoveRule | SetGlobalLogLevel | SetFacilityLogLevel | RoutingRequest

READ_ONLY_QUERIES = frozenset(Query)

_STRUCT_COMMANDS = ("AddRule", "RemoveRule", "SetGlobalLogLevel", "SetFacilityLogLevel", *ROUTING_STRUCT_COMMANDS)
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
        """An integer field that may be absent or null (None then)."""
        if self.obj.get(name) is None:
            return None
        return self.integer(name)

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

    def array(self, name: str) -> list[object]:
        value = self._get(name, True)
        if not isinstance(value, list):
            raise ProtocolError(f"field '{name}' in {self.where} must be an array, got {_type_name(value)}")
        return value


_ADD_FIELDS = frozenset(
    {"rule_id", "input_interface", "input_group", "input_port", "outputs", "input_source", "rate_limit"}
)
_OUTPUT_FIELDS = frozenset({"group", "port", "interface", "ttl"})


def _decode_output(i: int, obj: object) -> OutputDestination:
    f = _Fields(f"AddRule.outputs[{i}]", obj, _OUTPUT_FIELDS)
    return OutputDestination(
        group=f.address("group"),
        port=f.integer("port"),
        interface=f.req_string("interface"),
        ttl=f.optional_integer("ttl"),
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
    )


def _decode_rate_limit(obj: object) -> RateLimit | None:
    """An absent or null `rate_limit` is no limit; a bad one is a ProtocolError naming the field."""
    if obj is None:
        return None
    try:
        return decode_rate_limit(obj)
    except ValidationError as e:
        raise ProtocolError(f"AddRule: {e}") from None


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
    if name in ROUTING_STRUCT_COMMANDS:
        return decode_routing_struct(name, body)
    raise ProtocolError(f"unknown command '{name}'; expected one of {_ALL_COMMANDS}")


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
        if name in {q.value for q in Query}:
            return Query(name)
        if name in _ROUTING_QUERIES:
            return RoutingQuery(name)
        return _decode_struct(name, body)
    raise ProtocolError(f"a request must be a JSON string or object, got {_type_name(doc)}")


def _output_json(out: OutputDestination) -> dict[str, object]:
    """An output as the originals encode it: `ttl` only when the output sets one (it then overrides
    the supervisor's multicast_ttl)."""
    doc: dict[str, object] = {"group": str(out.group), "port": out.port, "interface": out.interface}
    if out.ttl is not None:
        doc["ttl"] = out.ttl
    if out.source_ip is not None:
        doc["source_ip"] = str(out.source_ip)
    return doc


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
            doc = {"AddRule": body}
        case RemoveRule():
            doc = {"RemoveRule": {"rule_id": req.rule_id}}
        case SetGlobalLogLevel():
            doc = {"SetGlobalLogLevel": {"level": req.level.name}}
        case SetFacilityLogLevel():
            doc = {"SetFacilityLogLevel": {"facility": req.facility.name, "level": req.level.name}}
        case RoutingQuery() | EnablePim() | DisablePim() | SetStaticRp() | AddMsdpPeer() | RemoveMsdpPeer():
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
class KernelStatusResponse:
    status: KernelStatus


Response = (
    Success
    | Error
    | Rules
    | Stats
    | Workers
    | LogLevelsResponse
    | Version
    | ConfigResponse
    | KernelStatusResponse
    | RoutingResponse
)


def encode_rule(r: ForwardingRule) -> dict[str, object]:
    """A rule as JSON: the original's fields, plus input_source and source."""
    return {
        "rule_id": r.rule_id,
        "name": r.name,
        "input_interface": r.input_interface,
        "input_group": str(r.input_group),
        "input_port": r.input_port,
        "input_protocol": int(r.input_protocol),
        "input_source": None if r.input_source is None else source_text(r.input_source),
        "outputs": [_output_json(o) for o in r.outputs],
        "source": r.source.value,
        "rate_limit": None if r.rate_limit is None else encode_rate_limit(r.rate_limit),
    }


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
    return {
        "pid": w.pid,
        "worker_type": w.worker_type,
        "core_id": w.core_id,
        "worker_id": w.worker_id,
        "status": w.status,
        "uid": w.uid,
        "restarts": w.restarts,
        "drops": dict(w.drops),
        "kernel_packets": w.kernel_packets,
        "kernel_drops": w.kernel_drops,
        "stats_pipe_errors": w.stats_pipe_errors,
        "ring_resyncs": w.ring_resyncs,
    }


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
        case Workers():
            return {"Workers": [_worker_json(w) for w in resp.workers]}
        case LogLevelsResponse():
            return {
                "LogLevels": {
                    "global": resp.levels.global_level,
                    "facility_overrides": dict(resp.levels.facility_overrides),
                }
            }
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
            v = resp.view
            return {
                "Config": {
                    "path": v.path,
                    "settings": dict(v.settings),
                    "limits": {f: getattr(v.limits, f) for f in Limits.__dataclass_fields__},
                    "rules": [encode_rule(r) for r in v.rules],
                }
            }
        case PimNeighbors() | Mroutes() | MsdpPeers() | MsdpSaCache() | RoutingCounters():
            return routing_response_json(resp)
        case _:
            assert_never(resp)


def encode_response(resp: Response) -> bytes:
    return json.dumps(response_json(resp)).encode() + b"\n"


# ----------------------------------------------------------------------------- response decoding (client)


def _obj(where: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object, got {_type_name(value)}")
    return value


def decode_rule(o: object) -> ForwardingRule:
    """The inverse of encode_rule; raises ProtocolError on anything malformed."""
    d = _obj("rule", o)
    try:
        outputs = tuple(_decode_rule_output(x) for x in d.get("outputs", []))
        name = d.get("name")
        return ForwardingRule(
            rule_id=str(d["rule_id"]),
            input_interface=str(d["input_interface"]),
            input_group=parse_group(d["input_group"]),
            input_port=int(d["input_port"]),
            outputs=outputs,
            input_source=parse_source(d["input_source"]) if d.get("input_source") else None,
            source=RuleSource(d.get("source", "runtime")),
            rate_limit=None if d.get("rate_limit") is None else decode_rate_limit(d["rate_limit"]),
            name=None if name is None else str(name),
            input_protocol=InputProtocol(int(d.get("input_protocol", InputProtocol.UDP))),
        )
    except (KeyError, TypeError, ValueError, ValidationError) as e:
        raise ProtocolError(f"malformed rule: {e!r}") from None


def _decode_rule_output(x: dict[str, Any]) -> OutputDestination:
    ttl, source_ip = x.get("ttl"), x.get("source_ip")
    return OutputDestination(
        parse_group(x["group"]),
        int(x["port"]),
        str(x["interface"]),
        None if ttl is None else int(ttl),
        None if source_ip is None else parse_group(source_ip),
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
    return RuleView(rule=rule, engine=engine, state=state, state_reason=reason)


def _decode_flow(o: object) -> FlowStats:
    d = _obj("stats entry", o)
    try:
        return FlowStats(
            input_group=str(d["input_group"]),
            input_port=int(d["input_port"]),
            packets_relayed=int(d["packets_relayed"]),
            bytes_relayed=int(d["bytes_relayed"]),
            packets_per_second=float(d["packets_per_second"]),
            bits_per_second=float(d["bits_per_second"]),
            rule_id=str(d.get("rule_id", "")),
            input_interface=str(d.get("input_interface", "")),
            outputs=tuple(
                OutputStats(
                    str(x["group"]),
                    int(x["port"]),
                    str(x["interface"]),
                    int(x.get("packets_sent", 0)),
                    int(x.get("bytes_sent", 0)),
                    int(x.get("send_errors", 0)),
                )
                for x in d.get("outputs", [])
            ),
            drops={str(k): int(v) for k, v in d.get("drops", {}).items()},
            input_source=str(d.get("input_source") or ""),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"malformed stats entry in response: {e!r}") from None


def _decode_worker(o: object) -> WorkerInfo:
    d = _obj("worker entry", o)
    try:
        return WorkerInfo(
            pid=int(d["pid"]),
            worker_type=str(d["worker_type"]),
            core_id=None if d.get("core_id") is None else int(d["core_id"]),
            worker_id=int(d.get("worker_id", 0)),
            status=str(d.get("status", "Running")),
            uid=None if d.get("uid") is None else int(d["uid"]),
            restarts=int(d.get("restarts", 0)),
            drops={str(k): int(v) for k, v in d.get("drops", {}).items()},
            kernel_packets=int(d.get("kernel_packets", 0)),
            kernel_drops=int(d.get("kernel_drops", 0)),
            stats_pipe_errors=int(d.get("stats_pipe_errors", 0)),
            ring_resyncs=int(d.get("ring_resyncs", 0)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"malformed worker entry in response: {e!r}") from None


def decode_response(data: bytes) -> Response:
    doc = load_json(data, "the supervisor's response is not valid JSON")
    d = _obj("response", doc)
    if len(d) != 1:
        raise ProtocolError(f"a response must have exactly one key, got {sorted(d)}")
    ((name, body),) = d.items()
    if name in ("Success", "Error"):
        if not isinstance(body, str):
            raise ProtocolError(f"{name} response must carry a string")
        return Success(body) if name == "Success" else Error(body)
    if name in ("Rules", "Stats", "Workers"):
        if not isinstance(body, list):
            raise ProtocolError(f"{name} response must carry an array")
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


def _decode_other(name: str, body: object) -> Response:
    """The responses that carry one object; KeyError, TypeError and ValueError mean malformed."""
    if name == "LogLevels":
        b = _obj("LogLevels", body)
        overrides = _obj("facility_overrides", b.get("facility_overrides", {}))
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
        b = _obj("Config", body)
        try:
            known = Limits.__dataclass_fields__  # a newer supervisor's other limits are not shown
            raw_limits = _obj("limits", b.get("limits", {}))
            limits = Limits(**{str(k): int(v) for k, v in raw_limits.items() if k in known})
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"malformed limits in response: {e}") from None
        settings = tuple((str(k), v) for k, v in _obj("settings", b.get("settings", {})).items())
        path = b.get("path")
        rules = tuple(decode_rule(r) for r in b.get("rules", []))
        return ConfigResponse(ConfigView(None if path is None else str(path), settings, limits, rules))
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
