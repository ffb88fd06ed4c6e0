"""What the supervisor reports: rule views, per-flow and per-output counters, workers."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from mcr.model.original_config import OriginalSections
from mcr.model.rules import Engine, ForwardingRule, Limits, address_text, source_text

IMPLEMENTATION = "mcr-python"  # GetVersion's `implementation`: the originals send none


class RuleState(Enum):
    ACTIVE = "active"  # the data plane has the rule: its kernel maps, or every worker confirmed it
    PENDING = "pending"  # servable, but not every worker has confirmed the rule set that holds it yet
    WAITING = "waiting"  # cannot be served: its input interface is missing or down


@dataclass(frozen=True, slots=True)
class RuleView:
    """A rule as `ListRules` shows it: the rule plus how it is being served."""

    rule: ForwardingRule
    engine: Engine
    state: RuleState
    state_reason: str = ""


class OutputStats(NamedTuple):
    """One output's counters in a `FlowStats`. A named tuple, not a dataclass: a client makes 25,000 of them
    from a `GetStats` at 10,000 rules, and a frozen dataclass takes four times as long to make."""

    group: str
    port: int
    interface: str
    packets_sent: int = 0
    bytes_sent: int = 0
    send_errors: int = 0


@dataclass(frozen=True, slots=True)
class FlowStats:
    """One entry of `GetStats`; the first six fields are the original's."""

    input_group: str
    input_port: int
    packets_relayed: int
    bytes_relayed: int
    packets_per_second: float
    bits_per_second: float
    rule_id: str = ""
    input_interface: str = ""
    outputs: tuple[OutputStats, ...] = ()
    drops: dict[str, int] = field(default_factory=dict)
    input_source: str = ""  # the rule's source host or prefix, empty when any source matches
    input_protocol: int = 17  # 17 UDP, 50 ESP (the stats of the original are per group, port and protocol)


class FlowCounts(NamedTuple):
    """A rule's counters and rates as `GetStats` and the metrics show them: its `FlowStats` without what the
    rule itself says (addresses, ports, interfaces). The supervisor keeps one per rule and writes the answer
    and a scrape from it and the rule, without building a `FlowStats` and an `OutputStats` per output."""

    packets: int
    bytes: int
    packets_per_second: float
    bits_per_second: float
    outputs: tuple[int, ...] = ()  # packets sent, bytes sent and send errors of each of the rule's outputs in turn
    drops: tuple[tuple[str, int], ...] = ()  # (reason, frames) in the order the counts were summed


@functools.cache
def zero_counts(outputs: int) -> FlowCounts:
    """The counts of a rule with this many outputs that has counted nothing: one object, shared by them all."""
    return FlowCounts(0, 0, 0.0, 0.0, (0, 0, 0) * outputs)


#: A rule and its counts: one entry of GetStats (or of a scrape's per-flow samples) as the supervisor has it.
Counted = tuple[ForwardingRule, FlowCounts]


def template_literal(text: str) -> str:
    """`text` as a literal part of a %-template."""
    return text.replace("%", "%%")


def flow_stats(rule: ForwardingRule, counts: FlowCounts) -> FlowStats:
    """The `FlowStats` entry of a rule with these counts."""
    c = counts.outputs
    return FlowStats(
        input_group=address_text(rule.input_group),
        input_port=rule.input_port,
        packets_relayed=counts.packets,
        bytes_relayed=counts.bytes,
        packets_per_second=counts.packets_per_second,
        bits_per_second=counts.bits_per_second,
        rule_id=rule.rule_id,
        input_interface=rule.input_interface,
        outputs=tuple(
            OutputStats(address_text(o.group), o.port, o.interface, c[3 * i], c[3 * i + 1], c[3 * i + 2])
            for i, o in enumerate(rule.outputs)
        ),
        drops=dict(counts.drops),
        input_source="" if rule.input_source is None else source_text(rule.input_source),
        input_protocol=int(rule.input_protocol),
    )


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    pid: int
    worker_type: str
    core_id: int | None
    worker_id: int = 0
    status: str = "Running"
    uid: int | None = None
    restarts: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    kernel_packets: int = 0
    kernel_drops: int = 0
    stats_pipe_errors: int = 0
    ring_resyncs: int = 0  # times a capture ring was found out of step with the kernel and resynchronised
    interface: str | None = None  # today's original runs workers per input interface; ours serve them all
    backoff_ms: int = 0  # while restarting: how long until the next start


@dataclass(frozen=True, slots=True)
class KernelStatus:
    """The eBPF kernel engine as `GetKernelStatus` reports it. It runs inside the kernel on the supervisor's
    behalf, so it is no worker process: `ListWorkers` does not list it."""

    loaded: bool
    mode: str  # the --engine setting: auto, kernel or userspace
    reason: str = ""  # why it is not loaded (empty when it is)
    instructions: int = 0  # of the loaded program
    interfaces: tuple[str, ...] = ()  # where its program is attached (input interfaces of kernel rules)
    rules: int = 0  # rules it serves
    max_rules: int = 0
    max_outputs: int = 0  # per rule
    drops: dict[str, int] = field(default_factory=dict)  # frames to a configured (interface, group) not relayed


@dataclass(frozen=True, slots=True)
class LogLevels:
    global_level: str
    facility_overrides: dict[str, str]


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: str
    protocol_version: int
    implementation: str = IMPLEMENTATION


@dataclass(frozen=True, slots=True)
class ConfigView:
    """The supervisor's effective configuration: settings after flags, file and defaults, and every rule."""

    path: str | None
    settings: tuple[tuple[str, str | int | bool | None], ...]
    limits: Limits
    rules: tuple[ForwardingRule, ...]
    original: OriginalSections = field(default_factory=OriginalSections)  # a JSON5 file's other sections
    dialect: str = "toml"  # the config file's format
