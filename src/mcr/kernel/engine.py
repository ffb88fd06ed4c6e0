"""`KernelRelay`: the kernel engine's maps, its program and its tcx links, owned by one process.

Rules change by map updates only; the program is loaded once. Without a pin directory every bpf object is a
file descriptor of this process: `close()` (or the process's death, SIGKILL included) detaches the program
from every interface and frees the maps.

With a pin directory (in a bpf file system) the maps, the program and one link per interface are pinned
there, so they outlive the process: the interfaces keep relaying while no supervisor runs. The next
`KernelRelay` on that directory adopts them: maps of the same layout are taken as they are (rules, counters,
rate-limit state), a program that differs (an upgrade) replaces the old one on each link in one step
(BPF_LINK_UPDATE), and maps of another layout are replaced by new ones, filled before the links switch.
Pinned rules the new owner does not install again are removed by `settle()`; `unpin()` removes everything.

Pins: `map_<name>`, `prog`, `link_<ifindex>` (a bpf file system refuses dots in names).

The caller (the supervisor) resolves interfaces: it passes ifindexes, each output's source address and
source MAC, and a destination MAC for unicast outputs (multicast ones get 01:00:5e + the group's low 23 bits,
or 33:33 + the low 32 bits for IPv6). A rule is IPv4 or IPv6 throughout: its outputs are of its group's family.
An ESP rule (protocol 50, IPv4, port 0) has ESP outputs (port 0).
"""

from __future__ import annotations

import logging
import os
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from types import TracebackType
from typing import Final

from mcr.kernel import bpf
from mcr.kernel.abi import TC_ACT_UNSPEC
from mcr.kernel.asm import Insn, Reg, mov64_imm
from mcr.kernel.bpf import BpfError
from mcr.kernel.program import (
    DEFAULT_MAX_OUTPUTS,
    DEFAULT_MAX_RULES,
    DROP_STATS,
    IPPROTO_UDP,
    OUTPUT_STATS,
    RULE_STATS,
    MapName,
    MapSpec,
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

__all__ = [
    "Adoption",
    "KernelCounters",
    "KernelRelay",
    "OutputCounters",
    "OutputEntry",
    "RuleCounters",
    "remove_pins",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutputCounters:
    packets: int
    bytes: int
    errors: int


@dataclass(frozen=True, slots=True)
class RuleCounters:
    packets: int
    bytes: int  # UDP payload bytes (ESP: the IP payload)
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
    protocol: int = IPPROTO_UDP

    @property
    def input(self) -> tuple[int, IPv4Address | IPv6Address, int, int]:
        return (self.ifindex, self.group, self.port, self.protocol)

    @property
    def key(self) -> bytes:
        return pack_rule_key(self.ifindex, self.group, self.port, self.protocol)


@dataclass(frozen=True, slots=True)
class Adoption:
    """What a `KernelRelay` found pinned and took over when it started."""

    maps: bool = False  # the pinned maps (same layout): rules, counters and buckets continue
    program: bool = False  # the pinned program is the one this version builds (else the links switch to ours)
    links: tuple[int, ...] = ()  # ifindexes whose pinned link was taken over
    rules: int = 0  # rules found in the pinned maps

    def describe(self) -> str:
        if not (self.maps or self.links):
            return "nothing pinned was adopted"
        maps = "maps adopted" if self.maps else "maps of another layout replaced"
        prog = "same program" if self.program else "program replaced"
        return f"{maps} ({self.rules} rules), {prog}, links on ifindex {list(self.links)}"


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


def output_counts_reset(old: Sequence[object], new: Sequence[object]) -> bool:
    """Whether replacing a rule's outputs `old` by `new` in its slot starts the slot's counters from zero:
    output counters are kept by position, so they restart when a position that stays sends elsewhere."""
    kept = min(len(old), len(new))
    return tuple(old[:kept]) != tuple(new[:kept])


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def remove_pins(pin_dir: Path) -> list[str]:
    """Remove a kernel engine's pins and their directory; the names removed. Once no process holds them, the
    program leaves its interfaces and the maps are freed."""
    removed: list[str] = []
    for path in sorted(pin_dir.iterdir()):
        if path.name == "prog" or path.name.startswith(("map_", "link_")):
            _unlink(path)
            removed.append(path.name)
    try:
        pin_dir.rmdir()
    except OSError as e:
        log.warning("cannot remove %s: %s", pin_dir, e)
    return removed


def _layout_matches(fd: int, spec: MapSpec) -> bool:
    info = bpf.map_info(fd)
    return (info.type, info.key_size, info.value_size, info.max_entries) == (
        spec.type,
        spec.key_size,
        spec.value_size,
        spec.max_entries,
    )


class KernelRelay:
    """Maps + program + one tcx link per input interface. Not thread-safe; one owner."""

    def __init__(
        self,
        *,
        max_rules: int = DEFAULT_MAX_RULES,
        max_outputs: int = DEFAULT_MAX_OUTPUTS,
        pass_verdict: int = TC_ACT_UNSPEC,
        pin_dir: Path | None = None,
        variant: int = 0,
    ) -> None:
        """`pin_dir`: pin everything there and adopt what an earlier owner pinned (see the module docstring).
        `variant` != 0 builds a program that differs by one dead instruction (tests of an upgrade)."""
        self.max_rules = max_rules
        self.max_outputs = max_outputs
        self.pin_dir = pin_dir
        self._maps: dict[str, int] = {}
        self._links: dict[int, int] = {}
        self._rules: dict[int, _Rule] = {}
        self._slot_of: dict[tuple[int, IPv4Address | IPv6Address, int, int], int] = {}  # rule input -> slot
        # slot -> how many of its output counters may be non-zero (those past it are zero), so that a rule
        # put in a slot zeroes what the slot's earlier rules counted, not all max_outputs entries
        self._dirty: dict[int, int] = {}
        # the slots from here on have held no rule since their maps were made (a map is made zeroed), so a rule
        # put in one has nothing to zero: 10,000 rules loaded at a start make 10,000 system calls fewer
        self._clean_from = max_rules
        self._groups: dict[tuple[int, IPv4Address | IPv6Address], int] = {}
        # what the previous counters() read, by slot: the raw per-CPU rule counters and the totals, and the
        # slots whose outputs are read again at the next one
        self._raw: dict[int, bytes] = {}
        self._counted: dict[int, RuleCounters] = {}
        self._recheck: set[int] = set()
        self._prev_raw = b""  # every slot's raw rule counters at the previous read
        self._adopted_links: dict[int, int] = {}  # pinned links not yet claimed by attach()
        # pinned rule key -> (its map, value), not yet claimed by set_rule()
        self._adopted_rules: dict[bytes, tuple[MapName, bytes]] = {}
        self._pinned_prog = -1
        self.prog_fd = -1
        self.adoption = Adoption()
        try:
            specs = map_specs(max_rules, max_outputs)
            maps_adopted = pin_dir is not None and self._adopt_maps(pin_dir, specs)
            if not maps_adopted:
                for spec in specs:
                    self._maps[spec.name] = bpf.create_map(
                        spec.type, spec.key_size, spec.value_size, spec.max_entries, f"mcr_{spec.name}"
                    )
                self._clean_from = 0
            self.insns: list[Insn] = build_relay_program(self._maps, max_outputs, pass_verdict=pass_verdict)
            if variant:
                self.insns = [mov64_imm(Reg.R0, variant), *self.insns]  # r0 is set again before any use
            loaded = bpf.load_program_logged(self.insns, name="mcr_relay")
            self.prog_fd = loaded.fd
            self.verifier_stats = loaded.log.strip()
            if pin_dir is not None:
                self._adopt_pins(pin_dir, maps_adopted)
        except BaseException:
            self.close()
            raise
        log.debug("kernel relay loaded: %d instructions; %s", len(self.insns), self.verifier_stats)

    # ---- pins

    def _adopt_maps(self, pin_dir: Path, specs: Sequence[MapSpec]) -> bool:
        """Open every pinned map; True when all are there with our layout (then they are ours), else none."""
        found: dict[str, int] = {}
        try:
            for spec in specs:
                path = pin_dir / f"map_{spec.name}"
                if not path.exists():
                    break
                found[spec.name] = fd = bpf.obj_get(path)
                if not _layout_matches(fd, spec):
                    log.info("pinned map %s has another layout: the kernel engine starts with new maps", path)
                    break
            else:
                self._maps, found = found, {}
        finally:
            for fd in found.values():
                os.close(fd)
        if not self._maps:
            return False
        for version in (4, 6):
            name = rule_maps(version)[0]
            info = bpf.map_info(self.map_fd(name))
            for key in bpf.map_keys(self.map_fd(name), info.key_size):
                value = bpf.lookup_elem(self.map_fd(name), key, info.value_size)
                if value is not None:
                    self._adopted_rules[key] = (name, value)
        return True

    def _adopt_pins(self, pin_dir: Path, maps_adopted: bool) -> None:
        """Take over the pinned program's links; keep the pinned program when it is the same as ours."""
        pin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        same_program = False
        prog_pin = pin_dir / "prog"
        if prog_pin.exists():
            self._pinned_prog = bpf.obj_get(prog_pin)
            same_program = maps_adopted and bpf.prog_info(self._pinned_prog).tag == bpf.prog_info(self.prog_fd).tag
            if same_program:  # the links run it already: nothing to switch
                os.close(self.prog_fd)
                self.prog_fd, self._pinned_prog = self._pinned_prog, -1
        for path in sorted(pin_dir.glob("link_*")):
            try:
                ifindex = int(path.name.removeprefix("link_"))
                fd = bpf.obj_get(path)
            except (ValueError, BpfError) as e:
                log.warning("removing unusable pin %s: %s", path, e)
                _unlink(path)
                continue
            if bpf.link_info(fd).ifindex != ifindex:  # the interface went away: the link is defunct
                os.close(fd)
                _unlink(path)
                continue
            self._adopted_links[ifindex] = fd
        self.adoption = Adoption(
            maps_adopted, same_program, tuple(sorted(self._adopted_links)), len(self._adopted_rules)
        )
        if not (maps_adopted or self._adopted_links):
            self._pin_all()

    def _pin(self, fd: int, name: str) -> None:
        assert self.pin_dir is not None
        path = self.pin_dir / name
        _unlink(path)  # replaced: the old object lives on while something else holds it
        bpf.obj_pin(fd, path)

    def _pin_all(self) -> None:
        for name, fd in self._maps.items():
            self._pin(fd, f"map_{name}")
        self._pin(self.prog_fd, "prog")

    def settle(self) -> None:
        """After the first full sync: drop what was pinned and not taken over (rules no longer wanted, links
        of interfaces without kernel rules), and pin this relay's own maps and program in place of old ones."""
        if self.pin_dir is None:
            return
        for key, (name, _value) in self._adopted_rules.items():
            bpf.delete_elem(self.map_fd(name), key)
        self._adopted_rules.clear()
        for version in (4, 6):  # groups left by removed rules
            groups_map = self.map_fd(rule_maps(version)[1])
            mine = {pack_group_key(i, g) for (i, g) in self._groups if g.version == version}
            for key in bpf.map_keys(groups_map, bpf.map_info(groups_map).key_size):
                if key not in mine:
                    bpf.delete_elem(groups_map, key)
        for ifindex, fd in list(self._adopted_links.items()):  # no kernel rule on it any more
            os.close(fd)
            _unlink(self.pin_dir / f"link_{ifindex}")
            del self._adopted_links[ifindex]
        self._pin_all()
        if self._pinned_prog >= 0:
            os.close(self._pinned_prog)
            self._pinned_prog = -1

    def unpin(self) -> None:
        """Remove every pin (a full stop): the program leaves the interfaces once this process closes them."""
        if self.pin_dir is not None:
            remove_pins(self.pin_dir)

    # ---- interfaces

    @property
    def attached(self) -> frozenset[int]:
        return frozenset(self._links)

    def attach(self, ifindex: int) -> None:
        """Run the program at tcx ingress of `ifindex` (no-op when it already runs there). A pinned link on it
        is taken over: switched to this relay's program in one step when it ran another."""
        if ifindex in self._links:
            return
        adopted = self._adopted_links.pop(ifindex, None)
        if adopted is not None:
            try:
                if bpf.link_info(adopted).prog_id != bpf.prog_info(self.prog_fd).id:
                    bpf.link_update(adopted, self.prog_fd)
                self._links[ifindex] = adopted
                return
            except BpfError as e:  # never leave the old program running beside a new link: drop it first
                log.warning("cannot take over the pinned link on ifindex %d (%s); attaching anew", ifindex, e)
                os.close(adopted)
                if self.pin_dir is not None:
                    _unlink(self.pin_dir / f"link_{ifindex}")
        fd = bpf.attach_tcx_ingress(self.prog_fd, ifindex)
        self._links[ifindex] = fd
        if self.pin_dir is not None:
            self._pin(fd, f"link_{ifindex}")

    def detach(self, ifindex: int) -> None:
        fd = self._links.pop(ifindex, None)
        if fd is not None:
            if self.pin_dir is not None:
                _unlink(self.pin_dir / f"link_{ifindex}")
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
        *,
        protocol: int = IPPROTO_UDP,
    ) -> None:
        """Install or replace the rule in `slot`: frames to (ifindex, group, port) (from `source`, a host or
        prefix, when given) go to `outputs`, at most at `rate_limit` (None: no limit). `protocol` 50: ESP
        packets to (ifindex, group), port 0, to ESP outputs.

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
        if protocol == IPPROTO_UDP and not 1 <= port <= 65535:
            raise ValueError(f"bad input port {port}")
        pack_rule_key(ifindex, group, port, protocol)  # raises for a protocol, port or family it cannot relay
        for out in outputs:
            if out.group.version != group.version:
                raise ValueError(f"output {out.group} is not of the family of {group}: the program cannot change it")
            if out.protocol != protocol:
                raise ValueError(f"output {out.group} is not of the rule's protocol {protocol}")
        rules_map = self.map_fd(rule_maps(group.version)[0])
        rule = _Rule(ifindex, group, port, tuple(outputs), rate_limit, protocol)
        other_slot = self._slot_of.get(rule.input, slot)
        if other_slot != slot:
            raise ValueError(f"slot {other_slot} already relays {group}:{port} on ifindex {ifindex}")
        old = self._rules.get(slot)
        if old is not None and old.input != rule.input:
            self.remove_rule(slot)
            old = None
        key = rule.key
        value = pack_rule_value(slot, len(outputs), source, group.version)
        pinned = self._adopted_rules.pop(key, None)
        if old is None and pinned is not None and self._same_as_pinned(slot, value, pinned[1], rule):
            self._ref_group(ifindex, group, +1)  # adopted as it is: counters and bucket continue
            self._rules[slot] = rule
            self._slot_of[rule.input] = slot  # so that removing it later finds it
            self._dirty[slot] = len(outputs)
            self._forget(slot)  # its counters are read in full at the next read
            return
        if old is None and slot >= self._clean_from:
            self._clean_from = slot + 1  # its counters are zero
        elif old is None or output_counts_reset(old.outputs, rule.outputs):
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
        bpf.update_elem(rules_map, key, value)
        if old is None:
            self._ref_group(ifindex, group, +1)
        self._rules[slot] = rule
        self._slot_of[rule.input] = slot
        self._forget(slot)

    def adopted_slot(
        self, ifindex: int, group: IPv4Address | IPv6Address, port: int, protocol: int = IPPROTO_UDP
    ) -> int | None:
        """The slot of a pinned rule on (ifindex, group, port, protocol) not yet taken over (to install it there)."""
        pinned = self._adopted_rules.get(pack_rule_key(ifindex, group, port, protocol))
        return None if pinned is None else int.from_bytes(pinned[1][:4], sys.byteorder)

    def _same_as_pinned(self, slot: int, value: bytes, pinned: bytes, rule: _Rule) -> bool:
        """Whether the pinned rule in `slot` is exactly `rule` (value, outputs and rate-limit parameters)."""
        if value != pinned:
            return False
        base = slot * self.max_outputs
        for i, out in enumerate(rule.outputs):
            packed = pack_output(out)
            if bpf.lookup_elem(self.map_fd(MapName.OUTPUTS), _index(base + i), len(packed)) != packed:
                return False
        params = None if rule.rate_limit is None else bucket_params(rule.rate_limit)
        wanted = pack_limit(params)
        held = bpf.lookup_elem(self.map_fd(MapName.LIMITS), _index(slot), len(wanted))
        return held is not None and held[8:] == wanted[8:]  # all but the bucket's state (tat)

    def remove_rule(self, slot: int) -> None:
        """Stop relaying the rule in `slot`. Its counters are no longer reported: read them first."""
        rule = self._rules.pop(slot, None)
        if rule is None:
            return
        del self._slot_of[rule.input]
        self._forget(slot)
        rules_map = self.map_fd(rule_maps(rule.group.version)[0])
        bpf.delete_elem(rules_map, rule.key)
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
        """Close every descriptor. Pinned objects stay (and keep relaying) until `unpin()` removes them."""
        for fd in (*self._links.values(), *self._adopted_links.values()):
            os.close(fd)
        self._links.clear()
        self._adopted_links.clear()
        for fd in (self.prog_fd, self._pinned_prog):
            if fd >= 0:
                os.close(fd)
        self.prog_fd = self._pinned_prog = -1
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
