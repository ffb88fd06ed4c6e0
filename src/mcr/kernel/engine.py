"""`KernelRelay`: the kernel engine's maps, its program and its tcx links, owned by one process.

Rules change by map updates only; the program is loaded once. Every bpf object is a file descriptor of this
process: `close()` (or the process's death, SIGKILL included) detaches the program from every interface and
frees the maps, so a crashed supervisor leaves nothing behind in the kernel.

The caller (the supervisor) resolves interfaces: it passes ifindexes, each output's source address and
source MAC, and a destination MAC for unicast outputs (multicast ones get 01:00:5e + the group's low 23 bits,
or 33:33 + the low 32 bits for IPv6). A rule is IPv4 or IPv6 throughout: its outputs are of its group's family.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import TracebackType

from mcr.kernel import bpf
from mcr.kernel.abi import TC_ACT_UNSPEC
from mcr.kernel.asm import Insn
from mcr.kernel.program import (
    DEFAULT_MAX_OUTPUTS,
    DEFAULT_MAX_RULES,
    DROP_STATS,
    OUTPUT_STATS,
    RULE_STATS,
    MapName,
    OutputEntry,
    build_relay_program,
    map_specs,
    pack_group_key,
    pack_limit,
    pack_output,
    pack_rule_key,
    pack_rule_value,
    rule_maps,
)
from mcr.model.ratelimit import RateLimit, bucket_params
from mcr.packet.parse import DropReason

__all__ = ["KernelCounters", "KernelRelay", "OutputCounters", "OutputEntry", "RuleCounters"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutputCounters:
    packets: int
    bytes: int
    errors: int


@dataclass(frozen=True, slots=True)
class RuleCounters:
    packets: int
    bytes: int  # UDP payload bytes
    outputs: tuple[OutputCounters, ...]
    rate_limited: int = 0  # frames over the rule's rate limit (not relayed)


@dataclass(frozen=True, slots=True)
class KernelCounters:
    rules: dict[int, RuleCounters]  # by slot
    drops: dict[str, int]  # by DropReason key, only frames to a configured (interface, group)


@dataclass(frozen=True, slots=True)
class _Rule:
    ifindex: int
    group: IPv4Address | IPv6Address
    port: int
    outputs: tuple[OutputEntry, ...]  # position i of the slot's output counters counts what outputs[i] sends
    rate_limit: RateLimit | None = None


def _index(i: int) -> bytes:
    return i.to_bytes(4, sys.byteorder)


class KernelRelay:
    """Maps + program + one tcx link per input interface. Not thread-safe; one owner."""

    def __init__(
        self,
        *,
        max_rules: int = DEFAULT_MAX_RULES,
        max_outputs: int = DEFAULT_MAX_OUTPUTS,
        pass_verdict: int = TC_ACT_UNSPEC,
    ) -> None:
        self.max_rules = max_rules
        self.max_outputs = max_outputs
        self._maps: dict[str, int] = {}
        self._links: dict[int, int] = {}
        self._rules: dict[int, _Rule] = {}
        self._slot_of: dict[tuple[int, IPv4Address | IPv6Address, int], int] = {}  # (ifindex, group, port) -> slot
        # slot -> how many of its output counters may be non-zero (those past it are zero), so that a rule
        # put in a slot zeroes what the slot's earlier rules counted, not all max_outputs entries
        self._dirty: dict[int, int] = {}
        self._groups: dict[tuple[int, IPv4Address | IPv6Address], int] = {}
        self.prog_fd = -1
        try:
            for spec in map_specs(max_rules, max_outputs):
                self._maps[spec.name] = bpf.create_map(
                    spec.type, spec.key_size, spec.value_size, spec.max_entries, f"mcr_{spec.name}"
                )
            self.insns: list[Insn] = build_relay_program(self._maps, max_outputs, pass_verdict=pass_verdict)
            loaded = bpf.load_program_logged(self.insns, name="mcr_relay")
            self.prog_fd = loaded.fd
            self.verifier_stats = loaded.log.strip()
        except BaseException:
            self.close()
            raise
        log.debug("kernel relay loaded: %d instructions; %s", len(self.insns), self.verifier_stats)

    # ---- interfaces

    @property
    def attached(self) -> frozenset[int]:
        return frozenset(self._links)

    def attach(self, ifindex: int) -> None:
        """Run the program at tcx ingress of `ifindex` (no-op when it already runs there)."""
        if ifindex not in self._links:
            self._links[ifindex] = bpf.attach_tcx_ingress(self.prog_fd, ifindex)

    def detach(self, ifindex: int) -> None:
        fd = self._links.pop(ifindex, None)
        if fd is not None:
            os.close(fd)

    # ---- rules

    def set_rule(
        self,
        slot: int,
        ifindex: int,
        group: IPv4Address | IPv6Address,
        port: int,
        outputs: Sequence[OutputEntry],
        rate_limit: RateLimit | None = None,
        source: IPv4Network | IPv6Network | None = None,
    ) -> None:
        """Install or replace the rule in `slot`: frames to (ifindex, group, port) (from `source`, a host or
        prefix, when given) go to `outputs`, at most at `rate_limit` (None: no limit).

        A slot that was free starts with zero counters; replacing a rule in place keeps them, except that
        outputs dropped off the end start from zero if they come back, and that the whole slot starts from
        zero when a position that stays now sends somewhere else (an output removed or skipped before
        it): output counters are kept by position, so they would otherwise be booked to the wrong output.
        Read the counters first; a reader sees the slot's counts go back and keeps what they were. A new
        or changed limit starts with a full bucket; an unchanged one keeps its state.
        """
        if not 0 <= slot < self.max_rules:
            raise ValueError(f"slot {slot} is out of range 0..{self.max_rules - 1}")
        if len(outputs) > self.max_outputs:
            raise ValueError(f"{len(outputs)} outputs: at most {self.max_outputs} per rule")
        if not 1 <= port <= 65535:
            raise ValueError(f"bad input port {port}")
        for out in outputs:
            if out.group.version != group.version:
                raise ValueError(f"output {out.group} is not of the family of {group}: the program cannot change it")
        rules_map = self.map_fd(rule_maps(group.version)[0])
        rule = _Rule(ifindex, group, port, tuple(outputs), rate_limit)
        other_slot = self._slot_of.get((ifindex, group, port), slot)
        if other_slot != slot:
            raise ValueError(f"slot {other_slot} already relays {group}:{port} on ifindex {ifindex}")
        old = self._rules.get(slot)
        if old is not None and (old.ifindex, old.group, old.port) != (ifindex, group, port):
            self.remove_rule(slot)
            old = None
        kept = min(len(outputs), len(old.outputs)) if old is not None else 0
        if old is None or rule.outputs[:kept] != old.outputs[:kept]:
            self._zero_counters(slot, 0, self._dirty.get(slot, 0))
        elif len(outputs) < len(old.outputs):  # outputs dropped off the end start from zero if they come back
            self._zero_counters(slot, len(outputs), len(old.outputs), rule=False)
        self._dirty[slot] = len(outputs)
        base = slot * self.max_outputs
        for i, out in enumerate(outputs):
            bpf.update_elem(self.map_fd(MapName.OUTPUTS), _index(base + i), pack_output(out))
        if old is None or old.rate_limit != rate_limit:  # before the rule is visible, so it never runs unlimited
            params = None if rate_limit is None else bucket_params(rate_limit)
            bpf.update_elem(self.map_fd(MapName.LIMITS), _index(slot), pack_limit(params))
        value = pack_rule_value(slot, len(outputs), source, group.version)
        bpf.update_elem(rules_map, pack_rule_key(ifindex, group, port), value)
        if old is None:
            self._ref_group(ifindex, group, +1)
        self._rules[slot] = rule
        self._slot_of[(ifindex, group, port)] = slot

    def remove_rule(self, slot: int) -> None:
        """Stop relaying the rule in `slot`. Its counters are no longer reported: read them first."""
        rule = self._rules.pop(slot, None)
        if rule is None:
            return
        del self._slot_of[(rule.ifindex, rule.group, rule.port)]
        rules_map = self.map_fd(rule_maps(rule.group.version)[0])
        bpf.delete_elem(rules_map, pack_rule_key(rule.ifindex, rule.group, rule.port))
        self._ref_group(rule.ifindex, rule.group, -1)

    def _ref_group(self, ifindex: int, group: IPv4Address | IPv6Address, delta: int) -> None:
        key = (ifindex, group)
        refs = self._groups.get(key, 0) + delta
        groups_map = self.map_fd(rule_maps(group.version)[1])
        if refs > 0:
            self._groups[key] = refs
            bpf.update_elem(groups_map, pack_group_key(ifindex, group), refs.to_bytes(4, sys.byteorder))
        else:
            self._groups.pop(key, None)
            bpf.delete_elem(groups_map, pack_group_key(ifindex, group))

    def _zero_counters(self, slot: int, first: int, end: int, *, rule: bool = True) -> None:
        if rule:
            bpf.update_percpu(self.map_fd(MapName.RULE_STATS), _index(slot), [bytes(RULE_STATS.size)])
        base = slot * self.max_outputs
        for i in range(first, end):
            bpf.update_percpu(self.map_fd(MapName.OUTPUT_STATS), _index(base + i), [bytes(OUTPUT_STATS.size)])

    # ---- counters

    def counters(self) -> KernelCounters:
        """Per-rule and per-output totals, summed over CPUs, and the drop counters."""
        rules: dict[int, RuleCounters] = {}
        for slot, rule in self._rules.items():
            packets, nbytes, limited = self._sum(MapName.RULE_STATS, slot, RULE_STATS)
            base = slot * self.max_outputs
            outputs = tuple(
                OutputCounters(*self._sum(MapName.OUTPUT_STATS, base + i, OUTPUT_STATS))
                for i in range(len(rule.outputs))
            )
            rules[slot] = RuleCounters(packets, nbytes, outputs, limited)
        drops = {
            r.key: self._sum(MapName.DROPS, int(r), DROP_STATS)[0]
            for r in DropReason
            if r not in (DropReason.OK, DropReason.NOT_IPV4)  # never counted in the kernel
        }
        return KernelCounters(rules, drops)

    def _sum(self, name: MapName, index: int, layout: struct.Struct) -> tuple[int, ...]:
        """The value at `index` of a per-CPU array of u64 fields, summed field by field over CPUs."""
        values = bpf.lookup_percpu(self.map_fd(name), _index(index), layout.size) or []
        per_cpu = [layout.unpack(v) for v in values]
        width = len(layout.unpack(bytes(layout.size)))
        return tuple(sum(v[k] for v in per_cpu) for k in range(width))

    # ---- lifetime

    def map_fd(self, name: MapName) -> int:
        """The file descriptor of one of the program's maps (for inspection and tests)."""
        return self._maps[name.value]

    def close(self) -> None:
        for ifindex in list(self._links):
            self.detach(ifindex)
        if self.prog_fd >= 0:
            os.close(self.prog_fd)
            self.prog_fd = -1
        for fd in self._maps.values():
            os.close(fd)
        self._maps.clear()
        self._rules.clear()
        self._slot_of.clear()
        self._groups.clear()

    def __enter__(self) -> KernelRelay:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
