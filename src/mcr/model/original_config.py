"""The original MCR's JSON5 configuration file (pure: text or a decoded document in, a `Config` out).

The shape is the original's (HEAD fced3ed, src/config.rs), so that its files load unchanged:

    {
      multicast_ttl: 4,                   // TTL of multicast outputs that set none (1 when absent)
      pinning: { eth0: [0, 1] },          // the CPUs the workers are pinned to (every interface's joined)
      rules: [
        {
          name: "feed-a",                 // optional; `remove --name` finds the rule by it
          input: { interface: "eth0", group: "239.1.1.1", port: 5000, protocol: "esp" },  // protocol optional
          outputs: [ { group: "239.10.1.1", port: 6000, interface: "eth1", ttl: 8 } ],
        },
      ],
      igmp: { ... },                                                  // the querier (mcr.membership.settings)
      pim: { ... }, msdp: { ... }, control_plane: { ... },            // accepted; not served yet
    }

Our own additions, which the original would ignore: `rule_id` and `rate_limit` in a rule, `source` (a host or
prefix) in its `input`. The original ignores keys it does not know without a word; we accept them too, so that
its files keep loading, but each one gets a warning naming it. Everything else is validated like the TOML file:
every error names the file, the rule and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import json5

from mcr.model.cpus import checked_cpus, union_of
from mcr.model.errors import ConfigError, ValidationError
from mcr.model.ratelimit import decode_rate_limit, encode_rate_limit
from mcr.model.rules import (
    ForwardingRule,
    InputProtocol,
    OutputDestination,
    RuleSource,
    check_rule_shape,
    check_rule_unique,
    generated_rule_id,
    interface_name_problem,
    parse_source,
    source_text,
)

UDP = InputProtocol.UDP
ESP = InputProtocol.ESP
PROTOCOL_NAMES = {"udp": UDP, "esp": ESP}

#: The sections the original serves with its control plane; we accept and check them and say they are not
#: served yet (IGMP querier, PIM-SM, MSDP and the control-plane integration are later work).
PROTOCOL_SECTIONS = ("pim", "igmp", "msdp", "control_plane")
SERVED_SECTIONS = ("igmp", "pim", "msdp")  # igmp: the querier (mcr.membership); pim, msdp: PimConfig, MsdpConfig

_TOP_KEYS = frozenset({"multicast_ttl", "pinning", "rules", *PROTOCOL_SECTIONS})
_RULE_KEYS = frozenset({"name", "input", "outputs", "rule_id", "rate_limit"})
_INPUT_KEYS = frozenset({"interface", "group", "port", "protocol", "source"})
_OUTPUT_KEYS = frozenset({"group", "port", "interface", "ttl", "source_ip"})
# each protocol section's keys and the JSON type each must have
_SECTION_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "pim": {"enabled": bool, "router_id": str, "interfaces": list, "static_rp": list, "rp_address": str},
    "igmp": {"querier_interfaces": list, "query_interval": int, "robustness": int, "query_response_interval": int},
    "msdp": {"enabled": bool, "local_address": str, "peers": list, "keepalive_interval": int, "hold_time": int},
    "control_plane": {"rpf_provider": str, "external_neighbors_enabled": bool, "event_buffer_size": int},
}


@dataclass(frozen=True, slots=True)
class ControlPlaneSettings:
    """The original's `control_plane` section with its defaults (what GetControlPlaneConfig reports)."""

    rpf_provider: str = "disabled"
    external_neighbors_enabled: bool = True
    event_buffer_size: int = 256


@dataclass(frozen=True, slots=True)
class OriginalSections:
    """What a JSON5 file says beyond rules: kept so that `GetConfig` and `config save` give it back."""

    multicast_ttl: int | None = None
    pinning: tuple[tuple[str, tuple[int, ...]], ...] = ()
    sections: tuple[tuple[str, str], ...] = ()  # protocol section name -> its JSON text, as given
    control_plane: ControlPlaneSettings = ControlPlaneSettings()

    @property
    def unserved(self) -> tuple[str, ...]:
        """The protocol sections present in the file, which this supervisor does not serve yet (igmp, pim
        and msdp are served)."""
        return tuple(name for name, _ in self.sections if name not in SERVED_SECTIONS)

    @property
    def pinned_cpus(self) -> tuple[int, ...]:
        """The workers' CPUs `pinning` asks for: every interface's list joined, in the order first named (every
        worker here serves every input), () without pinning."""
        return union_of(cores for _, cores in self.pinning)

    @property
    def pinning_joined(self) -> bool:
        """Whether `pinning` names different CPUs per interface, which `pinned_cpus` joins into one list."""
        return len({cores for _, cores in self.pinning}) > 1

    def section(self, name: str) -> object:
        for key, text in self.sections:
            if key == name:
                return json.loads(text)
        return None


@dataclass(frozen=True, slots=True)
class OriginalConfig:
    rules: tuple[ForwardingRule, ...]
    sections: OriginalSections
    warnings: tuple[str, ...]


def _kind(expected: type | tuple[type, ...]) -> str:
    names = {int: "an integer", bool: "a boolean", str: "a string", list: "an array", dict: "an object"}
    if isinstance(expected, tuple):
        return " or ".join(names.get(t, t.__name__) for t in expected)
    return names.get(expected, expected.__name__)


def _type_ok(value: object, expected: type | tuple[type, ...]) -> bool:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    for kind in kinds:
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is not int and isinstance(value, kind):
            return True
    return False


class _Reader:
    """Collects warnings for unknown keys; raises ConfigError naming the path for anything invalid."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.warnings: list[str] = []

    def fail(self, where: str, text: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {text}" if where else f"{self.path}: {text}")

    def obj(self, where: str, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "must be an object")
        return value

    def known(self, where: str, obj: Mapping[str, object], keys: frozenset[str]) -> None:
        for key in obj:
            if key not in keys:
                place = f" in {where}" if where else ""
                self.warnings.append(
                    f"{self.path}: unknown key '{key}'{place} ignored (expected {', '.join(sorted(keys))})"
                )

    def field(self, where: str, obj: Mapping[str, object], key: str, kind: type | tuple[type, ...]) -> Any:
        if obj.get(key) is None:
            raise self.fail(where, f"missing '{key}'" if key not in obj else f"'{key}' cannot be null")
        return self.optional(where, obj, key, kind)

    def optional(self, where: str, obj: Mapping[str, object], key: str, kind: type | tuple[type, ...]) -> Any:
        value = obj.get(key)
        if value is None:
            return None
        if not _type_ok(value, kind):
            raise self.fail(where, f"'{key}' must be {_kind(kind)}")
        return value

    def ipv4(self, where: str, obj: Mapping[str, object], key: str, required: bool = True) -> IPv4Address | None:
        text = self.field(where, obj, key, str) if required else self.optional(where, obj, key, str)
        if text is None:
            return None
        try:
            return IPv4Address(text.strip())
        except ValueError:
            raise self.fail(where, f"'{key}' '{text}' is not a valid IPv4 address") from None

    def byte(self, where: str, obj: Mapping[str, object], key: str, low: int) -> int | None:
        value = self.optional(where, obj, key, int)
        if value is not None and not low <= value <= 255:
            raise self.fail(where, f"'{key}' {value} is out of range; expected {low}-255")
        return None if value is None else int(value)

    def port(self, where: str, obj: Mapping[str, object], key: str) -> int:
        value = self.field(where, obj, key, int)
        if not 0 <= value <= 65535:
            raise self.fail(where, f"'{key}' {value} is out of range; valid port range is 1-65535")
        return int(value)


def _output(r: _Reader, where: str, item: object) -> OutputDestination:
    o = r.obj(where, item)
    r.known(where, o, _OUTPUT_KEYS)
    group = r.ipv4(where, o, "group")
    assert group is not None
    interface = r.field(where, o, "interface", str)
    return OutputDestination(
        group=group,
        port=r.port(where, o, "port"),
        interface=interface,
        ttl=r.byte(where, o, "ttl", 1),
        source_ip=r.ipv4(where, o, "source_ip", required=False),  # ours: the original's file has none
    )


def _rule(r: _Reader, index: int, item: object, make_id: bool = True) -> ForwardingRule:
    """One rule; without an id of its own it gets the one generated from its input (`make_id`), or none
    (an original supervisor's answer: its ids are not in its config schema)."""
    where = f"rules[{index}]"
    d = r.obj(where, item)
    name = r.optional(where, d, "name", str)
    if name is not None:
        where += f" '{name}'"
    r.known(where, d, _RULE_KEYS)
    inp = r.obj(f"{where}.input", r.field(where, d, "input", dict))
    r.known(f"{where}.input", inp, _INPUT_KEYS)
    interface = r.field(f"{where}.input", inp, "interface", str)
    group = r.ipv4(f"{where}.input", inp, "group")
    assert group is not None
    protocol_name = r.optional(f"{where}.input", inp, "protocol", str)
    protocol = UDP if protocol_name is None else PROTOCOL_NAMES.get(protocol_name.lower())
    if protocol is None:
        raise r.fail(f"{where}.input", f"'protocol' '{protocol_name}' is not known; expected udp or esp")
    port = 0 if protocol == ESP else r.port(f"{where}.input", inp, "port")  # ESP has no ports (the original: 0)
    source_text = r.optional(f"{where}.input", inp, "source", str)
    try:
        source = parse_source(source_text) if source_text is not None else None
    except ValueError as e:
        raise r.fail(f"{where}.input", f"'source': {e}") from None
    outputs_raw = r.field(where, d, "outputs", list)
    outputs = tuple(_output(r, f"{where}.outputs[{i}]", o) for i, o in enumerate(outputs_raw))
    try:
        rate_limit = decode_rate_limit(d["rate_limit"]) if d.get("rate_limit") is not None else None
    except ValidationError as e:
        raise r.fail(where, str(e)) from None
    rule_id = r.optional(where, d, "rule_id", str) or (
        generated_rule_id(interface, group, port, source, protocol) if make_id else ""
    )
    return ForwardingRule(
        rule_id=rule_id,
        input_interface=interface,
        input_group=group,
        input_port=port,
        outputs=outputs,
        input_source=source,
        source=RuleSource.CONFIG,
        rate_limit=rate_limit,
        name=name,
        input_protocol=protocol,
    )


def _pinning(r: _Reader, value: object) -> tuple[tuple[str, tuple[int, ...]], ...]:
    pins = r.obj("pinning", value)
    out = []
    for interface, cores in pins.items():
        problem = interface_name_problem(interface)
        if problem:
            raise r.fail("pinning", problem)
        if not isinstance(cores, list) or not cores or not all(_type_ok(c, int) and c >= 0 for c in cores):
            raise r.fail("pinning", f"'{interface}' must be a non-empty array of core numbers")
        try:
            out.append((interface, checked_cpus(cores)))
        except ValueError as e:
            raise r.fail("pinning", f"'{interface}': {e}") from None
    return tuple(out)


def _value(d: Mapping[str, Any], key: str, default: Any) -> Any:
    """A section's value, its default when absent or null (serde reads null as absent for these)."""
    value = d.get(key)
    return default if value is None else value


def _section(r: _Reader, name: str, value: object) -> str:
    """Check a protocol section's keys and types (and the original's rules for its values); its JSON text."""
    d = r.obj(name, value)
    kinds = _SECTION_KEYS[name]
    r.known(name, d, frozenset(kinds))
    for key, kind in kinds.items():
        r.optional(name, d, key, kind)
    if name == "igmp":
        qi, qri = _value(d, "query_interval", 125), _value(d, "query_response_interval", 10)
        if qi == 0 or _value(d, "robustness", 2) == 0:
            raise r.fail(name, "query_interval and robustness must be greater than 0")
        if qri >= qi:
            raise r.fail(name, f"query_response_interval ({qri}) must be less than query_interval ({qi})")
    if name == "msdp":
        keepalive, hold = _value(d, "keepalive_interval", 60), _value(d, "hold_time", 75)
        if keepalive == 0 or hold <= keepalive:
            raise r.fail(name, f"hold_time ({hold}) must be greater than keepalive_interval ({keepalive}) > 0")
    if name == "control_plane":
        rpf = _value(d, "rpf_provider", "disabled")
        if rpf not in ("disabled", "static") and not rpf.startswith("/"):
            raise r.fail(name, f"'rpf_provider' must be disabled, static or an absolute socket path, got '{rpf}'")
        if not 1 <= _value(d, "event_buffer_size", 256) <= 65536:
            raise r.fail(name, "'event_buffer_size' must be 1-65536")
    return json.dumps(d, sort_keys=True)


def decode_original_config(doc: object, path: str, validate: bool = True) -> OriginalConfig:
    """An already decoded document (a file's or a LoadConfig/CheckConfig request's) to rules and sections.
    `validate=False` only decodes (a supervisor's answer is shown as it is, even what we would refuse).

    Limits are not checked here: a file or a request is checked against the supervisor's own when its rules
    go into the table. Duplicates are, in time linear in the number of rules (a request may hold thousands).
    """
    r = _Reader(path)
    d = r.obj("", doc) if isinstance(doc, dict) else None
    if d is None:
        raise ConfigError(f"{path}: the configuration must be an object ({{ rules: [...] }})")
    r.known("", d, _TOP_KEYS)
    ttl = r.byte("", d, "multicast_ttl", 1)
    pinning = _pinning(r, d["pinning"]) if d.get("pinning") is not None else ()
    sections = tuple((name, _section(r, name, d[name])) for name in PROTOCOL_SECTIONS if d.get(name) is not None)
    cp = r.obj("control_plane", d.get("control_plane") or {})
    control_plane = ControlPlaneSettings(
        rpf_provider=_value(cp, "rpf_provider", "disabled"),
        external_neighbors_enabled=_value(cp, "external_neighbors_enabled", True),
        event_buffer_size=_value(cp, "event_buffer_size", 256),
    )
    raw_rules = r.optional("", d, "rules", list) or []
    if not validate:
        shown = tuple(_rule(r, index, item, make_id=False) for index, item in enumerate(raw_rules))
        return OriginalConfig(shown, OriginalSections(ttl, pinning, sections, control_plane), tuple(r.warnings))
    rules: dict[str, ForwardingRule] = {}
    by_input: dict[tuple[object, ...], dict[str, ForwardingRule]] = {}
    by_name: dict[str, ForwardingRule] = {}
    for index, item in enumerate(raw_rules):
        rule = _rule(r, index, item)
        key = rule.input_key[:3]
        # the rules this one could clash with: the same id, the same name, the same input
        near = dict(by_input.get(key, {}))
        for other in (rules.get(rule.rule_id), by_name.get(rule.name or "")):
            if other is not None:
                near[other.rule_id] = other
        try:
            check_rule_shape(rule)
            check_rule_unique(rule, near)
        except ValidationError as e:
            label = f" '{rule.name}'" if rule.name else ""
            raise ConfigError(f"{path}: rules[{index}]{label} ({rule.rule_id}): {e}") from None
        rules[rule.rule_id] = rule
        by_input.setdefault(key, {})[rule.rule_id] = rule
        if rule.name is not None:
            by_name[rule.name] = rule
    return OriginalConfig(
        rules=tuple(rules.values()),
        sections=OriginalSections(ttl, pinning, sections, control_plane),
        warnings=tuple(r.warnings),
    )


def load_json5(text: str, path: str) -> object:
    """Parse JSON5 text; ConfigError naming the file and the place for anything that is not JSON5."""
    try:
        doc = json5.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON5: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON5: arrays or objects nested too deeply") from None
    if _has_non_finite(doc):
        raise ConfigError(f"{path}: not valid JSON5 for a configuration: Infinity and NaN are not allowed")
    return doc


def _has_non_finite(doc: object) -> bool:
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def encode_original_rule(rule: ForwardingRule) -> dict[str, object]:
    """A rule in the original's config schema, with our additions where the rule has them."""
    inp: dict[str, object] = {
        "interface": rule.input_interface,
        "group": str(rule.input_group),
        "port": rule.input_port,
        "protocol": "esp" if rule.input_protocol == ESP else None,
    }
    if rule.input_source is not None:
        inp["source"] = source_text(rule.input_source)
    outputs = []
    for o in rule.outputs:
        out: dict[str, object] = {"group": str(o.group), "port": o.port, "interface": o.interface}
        if o.ttl is not None:
            out["ttl"] = o.ttl
        if o.source_ip is not None:
            out["source_ip"] = str(o.source_ip)
        outputs.append(out)
    doc: dict[str, object] = {}
    if rule.name is not None:
        doc["name"] = rule.name
    doc.update({"rule_id": rule.rule_id, "input": inp, "outputs": outputs})
    if rule.rate_limit is not None:
        doc["rate_limit"] = encode_rate_limit(rule.rate_limit)
    return doc


def encode_original_config(rules: tuple[ForwardingRule, ...], sections: OriginalSections) -> dict[str, object]:
    """The running configuration in the original's schema (GetConfig, `config save`)."""
    doc: dict[str, object] = {
        "pinning": {name: list(cores) for name, cores in sections.pinning},
        "rules": [encode_original_rule(r) for r in rules],
    }
    for name, text in sections.sections:
        doc[name] = json.loads(text)
    doc["multicast_ttl"] = sections.multicast_ttl
    return doc
