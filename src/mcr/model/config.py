"""The TOML configuration file: supervisor settings and static rules (pure: text in, values out).

    [supervisor]                      # every key optional; command-line flags win
    num_workers = 2
    worker_cpus = "2-3"               # pin worker k to the k-th CPU (or [2, 3]); absent: not pinned
    control_socket_path = "/run/mcr/control.sock"
    control_group = "mcr"
    read_only_group = "mcr-ro"           # may list, stats, ping; nothing that changes anything
    user = "nobody"
    group = "nogroup"
    log_level = "info"
    log_json = false
    multicast_ttl = 1                 # TTL of multicast outputs that name none (unicast ones: the kernel's)
    state_file = "/var/lib/mcr/rules.json"

    [limits]
    max_rules = 10000
    max_outputs_per_rule = 256
    max_total_outputs = 40000
    max_request_bytes = 1048576
    max_connections = 64              # control connections served at once
    max_connection_seconds = 5        # to send a complete request and take the answer

    [[rule]]
    id = "feed-a"
    input_interface = "eth0"
    input_group = "239.1.1.1"
    input_port = 5000
    ttl = 4                            # TTL of this rule's outputs (absent: multicast_ttl, or the kernel's for unicast)
    rate_limit = { pps = 10000 }       # optional: { pps = N, burst = packets } or { bps = N, burst_bytes = B }
    outputs = ["239.10.1.1:6000:eth1", { group = "239.10.1.2", port = 6000, interface = "eth2", ttl = 8 }]
    # an output table may say follow_receivers = true: it sends only while eth2 has receivers (IGMP/MLD)

    [igmp]                             # and [mld]: the querier; keys in mcr.membership.settings
    querier_interfaces = ["eth1"]

    [[rule]]
    id = "tunnel"
    protocol = "esp"                   # IPsec ESP (IP protocol 50): no ports; "udp" when absent
    input_interface = "eth0"
    input_group = "239.1.1.2"          # or the host's own unicast address on input_interface
    outputs = ["239.10.1.3:0:eth1"]

    [pim]                              # PIM-SM (mcr.routing.config)
    interfaces = [{ name = "eth1", dr_priority = 10 }]
    static_rp = [{ group = "239.0.0.0/8", rp = "10.0.0.1" }]

    [msdp]                             # MSDP peers (mcr.routing.config)
    peers = [{ address = "10.0.0.9", mesh_group = "core" }]

Every error names the file, the rule and the field.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

import tomli

from mcr.membership.settings import MembershipSettings, membership_from_original, parse_membership_table
from mcr.model.cpus import checked_cpus, cpu_list_text, parse_cpu_list
from mcr.model.errors import ConfigError, ValidationError
from mcr.model.original_config import OriginalSections, decode_original_config, load_json5
from mcr.model.ratelimit import decode_rate_limit
from mcr.model.rules import (
    FlowIndex,
    ForwardingRule,
    InputProtocol,
    Limits,
    OutputDestination,
    RuleSource,
    check_rule_shape,
    generated_rule_id,
    parse_group,
    parse_output_spec,
    parse_source,
    ttl_problem,
)
from mcr.routing.config import MsdpConfig, PimConfig, parse_msdp_section, parse_pim_section


@dataclass(frozen=True, slots=True)
class Settings:
    """Supervisor settings a config file may set; None means "not set here"."""

    num_workers: int | None = None
    control_socket_path: str | None = None
    control_group: str | None = None
    read_only_group: str | None = None
    user: str | None = None
    group: str | None = None
    log_level: str | None = None
    log_json: bool | None = None
    state_file: str | None = None
    metrics_addr: str | None = None
    engine: str | None = None
    multicast_ttl: int | None = None  # the TTL of multicast outputs that name none (default 1)
    keep_data_plane: bool | None = None
    worker_cpus: tuple[int, ...] | None = None  # the CPUs workers are pinned to, in order (see mcr.model.cpus)


class ConfigDialect(Enum):
    TOML = "toml"  # ours: [supervisor], [limits], [[rule]]
    JSON5 = "json5"  # the original's (mcr.model.original_config)


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    settings: Settings = Settings()
    limits: Limits = field(default_factory=Limits)
    rules: tuple[ForwardingRule, ...] = ()
    igmp: MembershipSettings = field(default_factory=MembershipSettings)
    mld: MembershipSettings = field(default_factory=MembershipSettings)
    pim: PimConfig = field(default_factory=PimConfig)
    msdp: MsdpConfig = field(default_factory=MsdpConfig)
    dialect: ConfigDialect = ConfigDialect.TOML
    original: OriginalSections = field(default_factory=OriginalSections)  # a JSON5 file's other sections
    warnings: tuple[str, ...] = ()  # keys accepted but ignored, each named (JSON5 only: TOML refuses them)
    # each [[rule]] table (a digest of its text) -> the rule it made: a reload reuses those it finds unchanged
    parsed: Mapping[bytes, ForwardingRule] = field(default_factory=dict, compare=False, repr=False)


_SETTING_TYPES: dict[str, type] = {"num_workers": int, "log_json": bool, "multicast_ttl": int, "keep_data_plane": bool}
_RULE_KEYS = {
    "id",
    "protocol",
    "input_interface",
    "input_group",
    "input_port",
    "input_source",
    "outputs",
    "ttl",
    "rate_limit",
}
_PROTOCOLS = {"udp": InputProtocol.UDP, "esp": InputProtocol.ESP}
_OUTPUT_KEYS = {"group", "port", "interface", "ttl", "follow_receivers"}


def _kind(expected: type) -> str:
    return {int: "an integer", bool: "a boolean", str: "a string"}.get(expected, expected.__name__)


def _type_ok(value: object, expected: type) -> bool:
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _table(path: str, doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return value


def _settings(path: str, table: dict[str, Any]) -> Settings:
    known = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(
                f"{path}: [supervisor]: unknown setting '{key}'; expected one of {', '.join(sorted(known))}"
            )
        if key == "worker_cpus":
            values[key] = _worker_cpus(path, value)
            continue
        expected = _SETTING_TYPES.get(key, str)
        if not _type_ok(value, expected):
            raise ConfigError(
                f"{path}: [supervisor]: '{key}' must be {'an integer' if expected is int else 'a ' + expected.__name__}"
            )
        values[key] = value
    problem = ttl_problem("multicast_ttl", values.get("multicast_ttl"))
    if problem:
        raise ConfigError(f"{path}: [supervisor]: {problem}")
    if values.get("engine") not in (None, "auto", "userspace", "kernel"):
        raise ConfigError(f"{path}: [supervisor]: 'engine' must be auto, userspace or kernel")
    if values.get("num_workers") is not None and values["num_workers"] < 1:
        raise ConfigError(f"{path}: [supervisor]: 'num_workers' must be at least 1")
    return Settings(**values)


def _worker_cpus(path: str, value: object) -> tuple[int, ...]:
    """`worker_cpus = "1-3"` (the kernel's list form) or `[1, 2, 3]`."""
    try:
        if isinstance(value, str):
            return parse_cpu_list(value)
        if isinstance(value, list):
            return checked_cpus(value)
    except ValueError as e:
        raise ConfigError(f"{path}: [supervisor]: 'worker_cpus': {e}") from None
    raise ConfigError(f"{path}: [supervisor]: 'worker_cpus' must be a CPU list like \"1-3\" or an array like [1, 2]")


def _limits(path: str, table: dict[str, Any]) -> Limits:
    known = {f.name for f in fields(Limits)}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{path}: [limits]: unknown limit '{key}'; expected one of {', '.join(sorted(known))}")
        if not _type_ok(value, int) or value < 1:
            raise ConfigError(f"{path}: [limits]: '{key}' must be a positive integer")
    return Limits(**table)


def _output(where: str, i: int, item: object, ttl: int | None) -> OutputDestination:
    if isinstance(item, str):
        try:
            return parse_output_spec(item, ttl)
        except ValidationError as e:
            raise ConfigError(f"{where}: outputs[{i}]: {e}") from None
    if not isinstance(item, dict):
        raise ConfigError(f'{where}: outputs[{i}] must be "group:port:interface" or a table')
    unknown = set(item) - _OUTPUT_KEYS
    if unknown:
        raise ConfigError(f"{where}: outputs[{i}]: unknown key '{sorted(unknown)[0]}'")
    for key, kind in (("group", str), ("port", int), ("interface", str)):
        if key not in item:
            raise ConfigError(f"{where}: outputs[{i}]: missing '{key}'")
        if not _type_ok(item[key], kind):
            raise ConfigError(f"{where}: outputs[{i}].{key} must be {_kind(kind)}")
    out_ttl = item.get("ttl", ttl)
    if out_ttl is not None and not _type_ok(out_ttl, int):
        raise ConfigError(f"{where}: outputs[{i}].ttl must be an integer")
    try:
        group = parse_group(item["group"])
    except ValueError as e:
        raise ConfigError(f"{where}: outputs[{i}].group: {e}") from None
    follow = item.get("follow_receivers", False)
    if not isinstance(follow, bool):
        raise ConfigError(f"{where}: outputs[{i}].follow_receivers must be a boolean")
    return OutputDestination(group, item["port"], item["interface"], out_ttl, follow_receivers=follow)


def _rule(path: str, index: int, item: object) -> ForwardingRule:
    where = f"{path}: rule[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a table ([[rule]])")
    if isinstance(item.get("id"), str):
        where += f" '{item['id']}'"
    unknown = set(item) - _RULE_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{sorted(unknown)[0]}'; expected one of {', '.join(sorted(_RULE_KEYS))}"
        )
    protocol = _PROTOCOLS.get(item.get("protocol", "udp"))
    if protocol is None:
        raise ConfigError(f'{where}: \'protocol\' must be "udp" or "esp"')
    if protocol is InputProtocol.ESP:
        item = {"input_port": 0, **item}  # ESP has no ports
    for key, kind in (("input_interface", str), ("input_group", str), ("input_port", int)):
        if key not in item:
            raise ConfigError(f"{where}: missing '{key}'")
        if not _type_ok(item[key], kind):
            raise ConfigError(f"{where}: '{key}' must be {_kind(kind)}")
    for key, kind in (("id", str), ("input_source", str), ("ttl", int)):
        if key in item and not _type_ok(item[key], kind):
            raise ConfigError(f"{where}: '{key}' must be {_kind(kind)}")
    outputs_raw = item.get("outputs", [])
    if not isinstance(outputs_raw, list):
        raise ConfigError(f"{where}: 'outputs' must be an array")
    ttl = item.get("ttl")
    outputs = tuple(_output(where, i, o, ttl) for i, o in enumerate(outputs_raw))
    try:
        group = parse_group(item["input_group"])
        source = parse_source(item["input_source"]) if "input_source" in item else None
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    try:
        rate_limit = decode_rate_limit(item["rate_limit"]) if "rate_limit" in item else None
    except ValidationError as e:
        raise ConfigError(f"{where}: {e}") from None
    rule_id = item.get("id") or generated_rule_id(item["input_interface"], group, item["input_port"], source, protocol)
    return ForwardingRule(
        rule_id,
        item["input_interface"],
        group,
        item["input_port"],
        outputs,
        source,
        RuleSource.CONFIG,
        rate_limit,
        input_protocol=protocol,
    )


def config_dialect(text: str, path: str) -> ConfigDialect:
    """Which of the two formats a file is in: by its extension, else by its first significant character
    (a JSON5 document is an object, `{`; a TOML file starts with a table, a key or a comment)."""
    lower = path.lower()
    if lower.endswith((".json5", ".json")):
        return ConfigDialect.JSON5
    if lower.endswith(".toml"):
        return ConfigDialect.TOML
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        return ConfigDialect.JSON5 if stripped.startswith(("{", "//", "/*")) else ConfigDialect.TOML
    return ConfigDialect.TOML


def parse_config(text: str, path: str, previous: Config | None = None) -> Config:
    """Parse and validate a whole file, TOML or the original's JSON5 (`config_dialect`); raises
    ConfigError naming the file, rule and field. `previous`: the file as last loaded, whose unchanged TOML
    rules are taken as they are instead of being converted and checked again (a reload of 10,000 rules)."""
    if config_dialect(text, path) is ConfigDialect.JSON5:
        return parse_json5_config(text, path)
    return parse_toml_config(text, path, previous.parsed if previous is not None else None)


def parse_json5_config(text: str, path: str) -> Config:
    """The original's JSON5 file: its rules, and its other sections kept for GetConfig and `config save`."""
    found = decode_original_config(load_json5(text, path), path)
    pim, msdp, notes = _original_routing(path, found.sections)
    return Config(
        path=path,
        settings=Settings(
            multicast_ttl=found.sections.multicast_ttl,
            worker_cpus=found.sections.pinned_cpus or None,
        ),
        rules=found.rules,
        igmp=membership_from_original(path, found.sections.section("igmp")),
        dialect=ConfigDialect.JSON5,
        original=found.sections,
        warnings=found.warnings + notes,
        pim=pim,
        msdp=msdp,
    )


def _original_routing(path: str, sections: OriginalSections) -> tuple[PimConfig, MsdpConfig, tuple[str, ...]]:
    """The JSON5 file's `pim` and `msdp` sections as ours (a null value means its default), and a note for
    each key we take but do not use."""
    notes: list[str] = []
    pim, msdp = PimConfig(), MsdpConfig()
    raw = sections.section("pim")
    if isinstance(raw, dict):
        for key in ("router_id", "rp_address"):
            if raw.get(key) is not None:
                notes.append(
                    f"{path}: pim.{key} accepted but not used (the router id is not sent in PIM-SM; "
                    "an RP address of ours is set with static_rp)"
                )
        pim = parse_pim_section(
            path, {k: raw[k] for k in ("enabled", "interfaces", "static_rp") if raw.get(k) is not None}
        )
    raw = sections.section("msdp")
    if isinstance(raw, dict):
        if raw.get("local_address") is not None:
            notes.append(
                f"{path}: msdp.local_address accepted but not used (each peering runs from the address "
                "the kernel uses toward the peer)"
            )
        keys = ("enabled", "peers", "keepalive_interval", "hold_time")
        msdp = parse_msdp_section(path, {k: raw[k] for k in keys if raw.get(k) is not None})
    return pim, msdp, tuple(notes)


# A table header on a line of its own: bare key names only (a quoted name or anything else that starts with
# `[` leaves the file to be parsed whole), none that a value could be (`[[true]]` is also an array of arrays)
_HEADER = re.compile(r"[ \t]*(\[\[?)[ \t]*([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)[ \t]*(\]\]?)[ \t]*(?:#.*)?\r?")
_VALUE_WORDS = {"true", "false", "inf", "nan"}


def rule_tables(text: str) -> tuple[str, list[str]] | None:
    """A TOML file split at its header lines into the text outside its [[rule]] tables and each [[rule]]
    table's own text (with its `[rule.x]` sub-tables), so that each table can be parsed, or known unchanged,
    on its own; None when a line could be read two ways (a multi-line string may hold a header-like line, a
    line that starts with `[` may be a value), and the file is parsed whole."""
    if '"""' in text or "'''" in text:
        return None
    rest: list[str] = []
    tables: list[list[str]] = []
    into = rest
    for line in text.split("\n"):
        if line.lstrip(" \t").startswith("["):
            m = _HEADER.fullmatch(line)
            if m is None or len(m[1]) != len(m[3]):
                return None
            first = m[2].split(".", 1)[0]
            if first in _VALUE_WORDS:
                return None
            if m[2] == "rule" and m[1] == "[[":
                tables.append([])
                into = tables[-1]
            elif first == "rule":
                if into is rest:  # `[rule]`, or a sub-table that does not follow its [[rule]]
                    return None
            else:
                into = rest
        into.append(line)
    return "\n".join(rest), ["\n".join(table) for table in tables]


def _toml(path: str, text: str) -> dict[str, Any]:
    try:
        return tomli.loads(text)
    except tomli.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
    except ValueError:  # tomli's only other ValueError: an integer literal with too many digits
        raise ConfigError(
            f"{path}: not valid TOML: a number has more than {sys.get_int_max_str_digits()} digits"
        ) from None


def _digest(text: str) -> bytes:
    """What a [[rule]] table is known by between loads: 49 bytes instead of its 200-300 of text."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def rule_items(
    path: str, text: str, reuse: Mapping[bytes, ForwardingRule]
) -> tuple[dict[str, Any], list[tuple[bytes, Any]]]:
    """The file's tables other than [[rule]], and per [[rule]] table (in order) its digest and the rule a
    previous load made of the same text, or the table as parsed. A table known unchanged is not parsed
    again: a reload that changes 1% of 10,000 rules parses 1% of them."""
    split = rule_tables(text)
    if split is not None:
        rest, tables = split
        try:
            doc = tomli.loads(rest)
            items: list[tuple[bytes, Any]] = []
            for table in tables:
                key = _digest(table)
                items.append((key, reuse.get(key) or tomli.loads(table)["rule"][0]))
        except (tomli.TOMLDecodeError, RecursionError, ValueError):
            pass  # parsed whole below, which names the line
        else:
            if "rule" not in doc:
                return doc, items
    doc = _toml(path, text)
    raw = doc.pop("rule", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: 'rule' must be an array of tables ([[rule]])")
    # tomli's plain dicts, lists, strings and numbers: the same table, the same digest
    return doc, [(key, reuse.get(key) or item) for item in raw for key in (_digest(repr(item)),)]


def parse_toml_config(text: str, path: str, reuse: Mapping[bytes, ForwardingRule] | None = None) -> Config:
    """Our TOML file; raises ConfigError naming the file, rule and field. `reuse`: rules made before from
    [[rule]] tables of the same text (a previous load's `parsed`), which had passed their own checks."""
    doc, items = rule_items(path, text, reuse or {})
    unknown = set(doc) - {"supervisor", "limits", "igmp", "mld", "pim", "msdp"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown section '{sorted(unknown)[0]}'; expected [supervisor], [limits], [[rule]], [igmp], "
            "[mld], [pim], [msdp]"
        )
    igmp = parse_membership_table(path, "igmp", _table(path, doc, "igmp"))
    mld = parse_membership_table(path, "mld", _table(path, doc, "mld"))
    pim = parse_pim_section(path, _table(path, doc, "pim")) if "pim" in doc else PimConfig()
    msdp = parse_msdp_section(path, _table(path, doc, "msdp")) if "msdp" in doc else MsdpConfig()
    settings = _settings(path, _table(path, doc, "supervisor"))
    limits = _limits(path, _table(path, doc, "limits"))
    rules = FlowIndex()
    parsed: dict[bytes, ForwardingRule] = {}
    for index, (key, item) in enumerate(items):
        known = isinstance(item, ForwardingRule)
        rule = item if known else _rule(path, index, item)
        try:
            if not known:
                check_rule_shape(rule)
            rules.check_fits(rule, limits)
        except ValidationError as e:
            raise ConfigError(f"{path}: rule[{index}] '{rule.rule_id}': {e}") from None
        rules.add(rule)
        parsed[key] = rule
    return Config(
        path=path,
        settings=settings,
        limits=limits,
        rules=tuple(rules.by_id.values()),
        igmp=igmp,
        mld=mld,
        pim=pim,
        msdp=msdp,
        parsed=parsed,
    )


SECTION_PROTOCOLS = {  # igmp is served: mcr.membership
    "pim": "PIM-SM",
    "msdp": "MSDP",
    "control_plane": "the control-plane integration (RPF provider, external neighbours, events)",
}


def unserved_notes(path: str, sections: OriginalSections) -> tuple[str, ...]:
    """What a JSON5 file asks for that this relay accepts but does not do (yet), one line each."""
    notes = [
        f"{path}: section '{name}' accepted but not served: {SECTION_PROTOCOLS[name]} is not implemented "
        "in this relay yet"
        for name in sections.unserved
    ]
    if sections.pinning_joined:
        cpus = cpu_list_text(sections.pinned_cpus)
        notes.append(
            f"{path}: 'pinning' names different CPUs per interface; every worker here serves every input (spread "
            f"by PACKET_FANOUT), so the lists are joined into one, {cpus} (read at start; --worker-cpus wins)"
        )
    return tuple(notes)
