"""Forwarding rules, output destinations and their validation (DESIGN §6).

Error texts follow the original MCR where it had one, so that its users see the same words.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv4Network

from mcr.model.errors import ValidationError
from mcr.model.ratelimit import RateLimit, rate_limit_problem

MULTICAST_V4 = IPv4Network("224.0.0.0/4")
LIMITED_BROADCAST = IPv4Address("255.255.255.255")
UNSPECIFIED = IPv4Address("0.0.0.0")
IFNAMSIZ_MAX = 15
DEFAULT_TTL = 1

_IFNAME_CHARS = re.compile(r"[A-Za-z0-9_.\-]")
_RULE_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


class RuleSource(Enum):
    """Where a rule came from: the config file or a runtime command."""

    RUNTIME = "runtime"
    CONFIG = "config"


class Engine(Enum):
    USERSPACE = "userspace"
    KERNEL = "kernel"


@dataclass(frozen=True, slots=True)
class OutputDestination:
    group: IPv4Address
    port: int
    interface: str
    ttl: int = DEFAULT_TTL

    @property
    def spec(self) -> str:
        return f"{self.group}:{self.port}:{self.interface}"


@dataclass(frozen=True, slots=True)
class ForwardingRule:
    rule_id: str
    input_interface: str
    input_group: IPv4Address
    input_port: int
    outputs: tuple[OutputDestination, ...]
    input_source: IPv4Address | None = None
    source: RuleSource = field(default=RuleSource.RUNTIME, compare=False)
    rate_limit: RateLimit | None = None  # None: unlimited

    @property
    def input_key(self) -> tuple[str, IPv4Address, int, IPv4Address | None]:
        return (self.input_interface, self.input_group, self.input_port, self.input_source)


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps that protect a small host; every refusal names the limit as `(name = value)`.

    This is the one place each limit and its default live: the supervisor's flags, the config
    file's [limits] table, the rule table and the control server all read them from here.
    """

    max_rules: int = 1000
    max_outputs_per_rule: int = 256
    max_total_outputs: int = 10_000
    max_request_bytes: int = 1 << 20
    max_connections: int = 64  # control connections served at once
    max_connection_seconds: int = 5  # to send a complete request and take the answer

    def named(self, name: str) -> str:
        """`(name = value)`: how every refusal names the limit it hit."""
        return f"({name} = {getattr(self, name)})"


def interface_name_problem(name: str) -> str | None:
    """Why `name` is not a valid Linux interface name, or None when it is."""
    if not name:
        return "interface name cannot be empty"
    if len(name.encode()) > IFNAMSIZ_MAX:
        return f"interface name '{name}' exceeds maximum length of {IFNAMSIZ_MAX} characters"
    for i, ch in enumerate(name):
        if not _IFNAME_CHARS.fullmatch(ch):
            return (
                f"interface name '{name}' contains invalid character '{ch}' at position {i}; "
                "only alphanumeric, dash, underscore, and dot are allowed"
            )
    if name[0] in "-.":
        return f"interface name '{name}' cannot start with '{name[0]}'; must start with alphanumeric or underscore"
    return None


def generated_rule_id(interface: str, group: IPv4Address, port: int, source: IPv4Address | None) -> str:
    """A stable id derived from the input key, so re-adding the same flow yields the same id."""
    text = f"{interface}|{group}|{port}|{source or ''}|udp"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def parse_output_spec(spec: str, ttl: int = DEFAULT_TTL) -> OutputDestination:
    """Parse the CLI's `group:port:interface` form (original error texts)."""
    parts = spec.strip().split(":")
    if len(parts) != 3:
        raise ValidationError(f"Invalid format. Expected group:port:interface, got '{spec}'")
    group_text, port_text, interface = parts
    try:
        group = IPv4Address(group_text)
    except ValueError:
        raise ValidationError(f"Invalid group IP: '{group_text}' in '{spec}'") from None
    try:
        port = int(port_text, 10)
    except ValueError:
        raise ValidationError(f"Invalid port: '{port_text}' in '{spec}'") from None
    return OutputDestination(group=group, port=port, interface=interface, ttl=ttl)


def _port_problem(label: str, port: int) -> str | None:
    if port == 0:
        return f"{label} cannot be 0; valid port range is 1-65535"
    if not 1 <= port <= 65535:
        return f"{label} {port} is out of range; valid port range is 1-65535"
    return None


def _ttl_problem(label: str, ttl: int) -> str | None:
    if not 1 <= ttl <= 255:
        return f"{label} {ttl} is out of range; valid TTL range is 1-255"
    return None


def check_rule_shape(rule: ForwardingRule) -> None:
    """Checks that need only the rule itself (no limits); raises ValidationError with the response text."""
    if not _RULE_ID.fullmatch(rule.rule_id):
        raise ValidationError(
            f"Invalid rule_id '{rule.rule_id}': must be 1-64 characters of letters, digits, '_', '.', ':' or '-'"
        )
    problem = interface_name_problem(rule.input_interface)
    if problem:
        raise ValidationError(f"Invalid input_interface: {problem}")
    for i, out in enumerate(rule.outputs):
        problem = interface_name_problem(out.interface)
        if problem:
            raise ValidationError(f"Invalid output_interface in output[{i}]: {problem}")
    problem = _port_problem("input_port", rule.input_port)
    if problem:
        raise ValidationError(problem)
    for i, out in enumerate(rule.outputs):
        problem = _port_problem(f"output[{i}].port", out.port) or _ttl_problem(f"output[{i}].ttl", out.ttl)
        if problem:
            raise ValidationError(problem)
    if rule.input_group not in MULTICAST_V4:
        raise ValidationError(f"input_group {rule.input_group} is not an IPv4 multicast address (224.0.0.0/4)")
    if rule.input_source is not None and (
        rule.input_source in MULTICAST_V4 or rule.input_source in (UNSPECIFIED, LIMITED_BROADCAST)
    ):
        raise ValidationError(f"input_source {rule.input_source} must be a unicast address")
    if rule.rate_limit is not None:
        problem = rate_limit_problem(rule.rate_limit)
        if problem:
            raise ValidationError(problem)
    seen: dict[tuple[IPv4Address, int, str], int] = {}
    for i, out in enumerate(rule.outputs):
        if out.group in (UNSPECIFIED, LIMITED_BROADCAST):
            raise ValidationError(f"output[{i}].group {out.group} is not a valid destination")
        if out.interface == rule.input_interface:
            raise ValidationError(
                f"Rule rejected: input_interface '{rule.input_interface}' and output_interface "
                f"'{out.interface}' cannot be the same. This creates packet loops: output[{i}] would be "
                "captured again on the input"
            )
        key = (out.group, out.port, out.interface)
        if key in seen:
            raise ValidationError(f"output[{i}] duplicates output[{seen[key]}] ({out.spec})")
        seen[key] = i


def check_rule_unique(rule: ForwardingRule, existing: Mapping[str, ForwardingRule]) -> None:
    """Checks against the current table: no duplicate id, no second rule on the same input."""
    if rule.rule_id in existing:
        raise ValidationError(f"Rule rejected: rule_id '{rule.rule_id}' already exists")
    for other in existing.values():
        if other.input_key == rule.input_key:
            raise ValidationError(
                f"Rule rejected: input {rule.input_interface} {rule.input_group}:{rule.input_port} "
                f"is already relayed by rule '{other.rule_id}'"
            )


def check_rule_limits(rule: ForwardingRule, existing: Mapping[str, ForwardingRule], limits: Limits) -> None:
    """Would adding `rule` to `existing` cross a limit? The refusal names it."""
    if len(rule.outputs) > limits.max_outputs_per_rule:
        raise ValidationError(
            f"Rule rejected: {len(rule.outputs)} outputs exceed the per-rule output limit "
            f"{limits.named('max_outputs_per_rule')}"
        )
    if len(existing) >= limits.max_rules:
        raise ValidationError(f"Rule rejected: rule limit reached {limits.named('max_rules')}")
    total = sum(len(r.outputs) for r in existing.values()) + len(rule.outputs)
    if total > limits.max_total_outputs:
        raise ValidationError(
            f"Rule rejected: {total} outputs in all would exceed the total output limit "
            f"{limits.named('max_total_outputs')}"
        )


def check_rule_fits(rule: ForwardingRule, existing: Mapping[str, ForwardingRule], limits: Limits) -> None:
    """Checks against the current table: duplicates and every limit."""
    check_rule_unique(rule, existing)
    check_rule_limits(rule, existing, limits)


def limits_exceeded(rules: Collection[ForwardingRule], limits: Limits) -> list[str]:
    """Which limits a whole rule set is over (a state file saved under higher limits), one text each."""
    found = [
        f"rule '{r.rule_id}' has {len(r.outputs)} outputs {limits.named('max_outputs_per_rule')}"
        for r in rules
        if len(r.outputs) > limits.max_outputs_per_rule
    ]
    if len(rules) > limits.max_rules:
        found.append(f"{len(rules)} rules {limits.named('max_rules')}")
    total = sum(len(r.outputs) for r in rules)
    if total > limits.max_total_outputs:
        found.append(f"{total} outputs in all {limits.named('max_total_outputs')}")
    return found


def input_groups(rules: Iterable[ForwardingRule]) -> dict[str, set[IPv4Address]]:
    """Input groups per input interface: what must be joined (IGMP) where."""
    groups: dict[str, set[IPv4Address]] = {}
    for rule in rules:
        groups.setdefault(rule.input_interface, set()).add(rule.input_group)
    return groups
