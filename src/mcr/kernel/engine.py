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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import TracebackType
from typing import Final

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
    changed: frozenset[int] = frozenset()  # slots whose counters may differ from the previous read's


@dataclass(frozen=True, slots=True)
class _Rule:
    ifindex: int
    group: IPv4Address | IPv6Address
    port: int
    outputs: tuple[OutputEntry, ...]  # position i of the slot's output counters counts what outputs[i] sends
    rate_limit: RateLimit | None = None


def _index(i: int) -> bytes:
    return i.to_bytes(4, sys.byteorder)


_RUN: Final = 64  # slots whose raw rule counters are compared at once with the previous read's


def _summer(layout: struct.Struct, ncpu: int) -> Callable[[bytes], tuple[int, ...]]:
    """A function summing, field by field, the per-CPU values of one per-CPU array entry (as the kernel
    lays them out: one value per possible CPU, each 8-byte aligned; an empty entry sums to zeros)."""
    width = len(layout.unpack(bytes(layout.size)))
    stride = (layout.size + 7) & ~7
    pad = stride - layout.size
    whole = struct.Struct("=" + (layout.format.lstrip("=<>!@") + (f"{pad}x" if pad else "")) * ncpu)

    def total(raw: bytes) -> tuple[int, ...]:
        if len(raw) != whole.size:
            return (0,) * width
        v = whole.unpack(raw)
        return tuple(sum(v[k::width]) for k in range(width))

    return total


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
        # what the previous counters() read, by slot: the raw per-CPU rule counters and the totals, and the
        # slots whose outputs are read again at the next one
        self._raw: dict[int, bytes] = {}
        self._counted: dict[int, RuleCounters] = {}
        self._recheck: set[int] = set()
        self._prev_raw = b""  # every slot's raw rule counters at the previous read
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
        self._forget(slot)

    def remove_rule(self, slot: int) -> None:
        """Stop relaying the rule in `slot`. Its counters are no longer reported: read them first."""
        rule = self._rules.pop(slot, None)
        if rule is None:
            return
        del self._slot_of[(rule.ifindex, rule.group, rule.port)]
        self._forget(slot)
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
        """Per-rule and per-output totals, summed over CPUs, and the drop counters.

        A few system calls whatever the size of the table: the rule counters of every slot in one batch
        lookup, the drop counters in another, and the output counters only of the slots whose rule
        counters moved since the previous read or the one before (the program counts a frame for its rule
        before its outputs, so the read after the rule goes quiet catches the last frame's outputs) and of
        slots set since. Every other slot's outputs are as they were last read. `changed` names the slots
        whose counts may differ from the previous read's."""
        fd = self.map_fd(MapName.RULE_STATS)
        ncpu = bpf.possible_cpus()
        end = max(self._rules, default=-1) + 1
        raw = bpf.lookup_percpu_range(fd, 0, end, RULE_STATS.size)
        stride = len(raw) // end if end else 0
        rule_sum = _summer(RULE_STATS, ncpu)
        out_sum = _summer(OUTPUT_STATS, ncpu)
        out_fd = self.map_fd(MapName.OUTPUT_STATS)
        # the slots to look at: those set or moving lately, and those of every run of _RUN slots whose raw
        # counters differ from the previous read's (most runs are the same: a few comparisons of bytes)
        todo = set(self._recheck)
        prev = self._prev_raw
        for first in range(0, end, _RUN):
            last = min(end, first + _RUN)
            if raw[first * stride : last * stride] != prev[first * stride : last * stride]:
                todo.update(s for s in range(first, last) if s in self._rules)
        self._prev_raw = raw
        changed: set[int] = set()
        recheck: set[int] = set()
        for slot in todo:
            rule = self._rules.get(slot)
            if rule is None:
                continue
            mine = raw[slot * stride : (slot + 1) * stride]
            held = self._counted.get(slot)
            fresh = mine != self._raw.get(slot)
            if held is not None and not fresh and slot not in self._recheck:
                continue
            if fresh:  # read once more next time, for the outputs of a frame counted between the two lookups
                recheck.add(slot)
                self._raw[slot] = mine
            packets, nbytes, limited = rule_sum(mine)
            n = len(rule.outputs)
            outs = bpf.lookup_percpu_range(out_fd, slot * self.max_outputs, n, OUTPUT_STATS.size) if n else b""
            width = len(outs) // n if n else 0
            outputs = tuple(OutputCounters(*out_sum(outs[i * width : (i + 1) * width])) for i in range(n))
            counted = RuleCounters(packets, nbytes, outputs, limited)
            if counted != held:
                self._counted[slot] = counted
                changed.add(slot)
        self._recheck = recheck
        reasons = [r for r in DropReason if r not in (DropReason.OK, DropReason.NOT_IPV4)]  # the kernel counts these
        drops_raw = bpf.lookup_percpu_range(self.map_fd(MapName.DROPS), 0, max(reasons) + 1, DROP_STATS.size)
        dstride = len(drops_raw) // (max(reasons) + 1)
        drop_sum = _summer(DROP_STATS, ncpu)
        drops = {r.key: drop_sum(drops_raw[int(r) * dstride : (int(r) + 1) * dstride])[0] for r in reasons}
        return KernelCounters(dict(self._counted), drops, frozenset(changed))

    def _forget(self, slot: int) -> None:
        """The slot's counters are read in full (outputs too) at the next read, and reported as changed."""
        self._counted.pop(slot, None)
        self._raw.pop(slot, None)
        self._recheck.add(slot)

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
        self._raw.clear()
        self._counted.clear()
        self._recheck.clear()
        self._prev_raw = b""

    def __enter__(self) -> KernelRelay:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
