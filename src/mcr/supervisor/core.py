"""The supervisor's pure core: the rule table, resolution against the host's links, restart backoff
and statistics aggregation. No sockets, no processes, no clock of its own: time is passed in.
"""

from __future__ import annotations

import functools
import operator
import struct
from collections import Counter
from collections.abc import Collection, Container, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network
from typing import TypeVar, cast

from mcr.membership.querier import Listeners
from mcr.model.errors import ValidationError
from mcr.model.links import Link
from mcr.model.ratelimit import RateLimit
from mcr.model.rules import (
    DEFAULT_MULTICAST_TTL,
    Engine,
    FlowIndex,
    ForwardingRule,
    InputProtocol,
    IPAddress,
    Limits,
    RuleSource,
    check_rule_shape,
    effective_ttl,
    generated_rule_id,
    is_multicast,
    limits_exceeded,
)
from mcr.model.status import Counted, FlowCounts, FlowStats, RuleState, RuleView, flow_stats, zero_counts
from mcr.protocol.control import AddRule
from mcr.protocol.worker import (
    Counts,
    RawEgress,
    RuleCounters,
    StatsReport,
    WorkerOutput,
    WorkerRule,
    counters_of,
    unpack_counts,
)


class RuleTable:
    """The authoritative rules, in the order they were added. `index` keeps them by input group too, so
    that checking a new rule costs the same whatever the size of the table."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.index = FlowIndex()

    @property
    def rules(self) -> Mapping[str, ForwardingRule]:
        return self.index.by_id

    def build(self, req: AddRule, source: RuleSource = RuleSource.RUNTIME) -> ForwardingRule:
        rule_id = req.rule_id or generated_rule_id(
            req.input_interface, req.input_group, req.input_port, req.input_source, req.input_protocol
        )
        return ForwardingRule(
            rule_id=rule_id,
            input_interface=req.input_interface,
            input_group=req.input_group,
            input_port=req.input_port,
            outputs=req.outputs,
            input_source=req.input_source,
            source=source,
            rate_limit=req.rate_limit,
            name=req.name,
            input_protocol=req.input_protocol,
        )

    def add(self, req: AddRule, source: RuleSource = RuleSource.RUNTIME) -> ForwardingRule:
        """Validate and insert; raises ValidationError and changes nothing when the rule is refused."""
        return self.insert(self.build(req, source))

    def insert(self, rule: ForwardingRule, shaped: bool = False) -> ForwardingRule:
        """Insert `rule` if it fits the limits and the other rules; `shaped`: its own checks
        (`check_rule_shape`) were passed already, as a config file's rules pass them as the file is read."""
        if not shaped:
            check_rule_shape(rule)
        self.index.check_fits(rule, self.limits)
        self.index.add(rule)
        return rule

    def restore(self, saved: Iterable[ForwardingRule]) -> tuple[list[str], list[str]]:
        """Put back the rules of a state file, even past limits that were lowered since it was saved:
        they were accepted once and are never dropped for a limit. Returns (refusals, excesses): a
        text per rule that is invalid or a duplicate (not restored), and a text per limit the table
        is now over. While over a limit, every new rule is refused by that limit.
        """
        refusals: list[str] = []
        for rule in saved:
            try:
                check_rule_shape(rule)
                self.index.check_unique(rule)
            except ValidationError as e:
                refusals.append(f"saved rule {rule.rule_id} not restored: {e}")
                continue
            self.index.add(rule)
        return refusals, limits_exceeded(list(self.rules.values()), self.limits)

    def runtime_rules(self) -> list[ForwardingRule]:
        return [r for r in self.rules.values() if r.source is RuleSource.RUNTIME]

    def replace_config_rules(self, new: Iterable[ForwardingRule]) -> tuple[list[str], list[str], list[str]]:
        """Swap the config file's rules for `new`, all or nothing; returns (added, changed, removed) ids.

        Rules that did not change are not touched, so they keep forwarding and keep their counters.
        """
        wanted = {r.rule_id: r for r in new}
        old = {rid: r for rid, r in self.rules.items() if r.source is RuleSource.CONFIG}
        removed = [rid for rid in old if rid not in wanted]
        changed = [rid for rid, r in wanted.items() if rid in old and old[rid] != r]
        added = [rid for rid in wanted if rid not in old]
        trial = RuleTable(self.limits)
        trial.index = FlowIndex(r for rid, r in self.rules.items() if rid not in removed and rid not in changed)
        for rid in changed + added:
            try:
                trial.insert(wanted[rid], shaped=True)  # the file's rules are checked as it is read
            except ValidationError as e:
                raise ValidationError(f"rule '{rid}': {e}") from None
        kept = FlowIndex(trial.rules[rid] for rid in self.rules if rid in trial.rules)  # changed ones in place
        for rid in added:
            kept.add(trial.rules[rid])
        self.index = kept
        return added, changed, removed

    def remove(self, rule_id: str) -> ForwardingRule:
        rule = self.rules.get(rule_id)
        if rule is None:
            raise ValidationError(f"Rule {rule_id} not found")
        self.index.discard(rule_id)
        return rule

    def named(self, name: str) -> ForwardingRule | None:
        """The rule with this name (today's original's second handle on a rule), if any."""
        rule_id = self.index.names.get(name)
        return None if rule_id is None else self.rules[rule_id]

    def load(self, new: Iterable[ForwardingRule], replace_runtime: bool) -> tuple[list[str], list[str], list[str]]:
        """LoadConfig: add `new` as runtime rules, all or nothing; returns (added, removed, skipped) ids.

        `replace_runtime`: the runtime rules not in `new` go (a rule that is in `new` unchanged stays, counters
        and all); the config file's rules are never touched (they belong to the file). Otherwise a rule whose
        id or input (interface, group, port) is taken is skipped, as the original merges.
        """
        wanted = [replace(r, source=RuleSource.RUNTIME) for r in new]
        wanted_ids = {r.rule_id for r in wanted}
        trial = RuleTable(self.limits)
        trial.index = FlowIndex(
            r
            for rid, r in self.rules.items()
            if r.source is RuleSource.CONFIG or not replace_runtime or rid in wanted_ids
        )
        added: list[str] = []
        skipped: list[str] = []
        for rule in wanted:
            held = trial.rules.get(rule.rule_id)
            if replace_runtime and held is not None and held.source is RuleSource.RUNTIME:
                if held == rule:
                    continue  # unchanged: untouched
                trial.index.discard(rule.rule_id)
            elif not replace_runtime and (held is not None or trial.index.same_flow(rule)):
                skipped.append(rule.rule_id)
                continue
            try:
                trial.insert(rule)
            except ValidationError as e:
                label = f"'{rule.name}' ({rule.rule_id})" if rule.name else f"'{rule.rule_id}'"
                raise ValidationError(f"rule {label}: {e}") from None
            added.append(rule.rule_id)
        removed = [rid for rid, r in self.rules.items() if trial.rules.get(rid) is not r]
        self.index = trial.index
        return added, [rid for rid in removed if rid not in added], skipped


@dataclass(frozen=True, slots=True)
class KernelOutput:
    index: int  # position in the rule's outputs
    ifindex: int
    group: IPAddress  # of the rule's family
    port: int
    source: IPAddress
    src_mac: bytes
    ttl: int
    protocol: InputProtocol = InputProtocol.UDP  # ESP: port 0


@dataclass(frozen=True, slots=True)
class KernelRule:
    rule_id: str
    ifindex: int
    group: IPAddress
    port: int
    outputs: tuple[KernelOutput, ...]
    rate_limit: RateLimit | None = None
    source: IPv4Network | IPv6Network | None = None
    epoch: int = 0  # as WorkerRule.epoch: a new one puts the rule in a fresh slot, counting from zero
    protocol: InputProtocol = InputProtocol.UDP


@dataclass(frozen=True, slots=True)
class Resolution:
    """What the data plane should be doing, given the rules and the links that exist now."""

    views: tuple[RuleView, ...]
    worker_rules: tuple[WorkerRule, ...]
    captures: Mapping[int, str]  # ifindex -> name of every input interface with a userspace rule
    memberships: Mapping[int, frozenset[Membership]]  # ifindex -> input groups (and sources) to join there
    kernel_rules: tuple[KernelRule, ...] = ()
    raw_egress: frozenset[RawEgress] = frozenset()  # the raw ESP output sockets the workers need


#: A membership to hold on an input interface: (group, None) joins any source (IGMPv2/MLDv1 style
#: exclude-nothing), (group, S) joins only source S (IGMPv3/MLDv2 source-specific, as SSM needs).
Membership = tuple[IPAddress, IPAddress | None]


def wanted_memberships(rules: Iterable[ForwardingRule]) -> frozenset[Membership]:
    """The memberships for the rules of one input interface: a group is joined source-specifically
    for each source when every rule on it names one source host, and for any source otherwise (a
    rule without a source, or with a prefix, wants them all; the worker filters by prefix)."""
    sources: dict[IPAddress, set[IPAddress] | None] = {}
    for rule in rules:
        if not is_multicast(rule.input_group):
            continue  # a unicast input: the host's own address, nothing to join
        src = rule.input_source
        host = src.network_address if src is not None and src.prefixlen == src.max_prefixlen else None
        if rule.input_group in sources and sources[rule.input_group] is None:
            continue
        if host is None:
            sources[rule.input_group] = None
        else:
            sources.setdefault(rule.input_group, set()).add(host)  # type: ignore[union-attr]
    wanted: set[Membership] = set()
    for group, hosts in sources.items():
        if hosts is None:
            wanted.add((group, None))
        else:
            wanted.update((group, h) for h in hosts)
    return frozenset(wanted)


def output_address(link: Link, group: IPAddress) -> IPAddress | None:
    """The address an output sends from: the link's first address of the group's family (for IPv6 a
    global or unique-local one before a link-local one)."""
    addresses: tuple[IPAddress, ...] = link.ipv4 if group.version == 4 else link.ipv6
    return addresses[0] if addresses else None


def kernel_problem(
    rule: ForwardingRule,
    link: Link,
    outputs: Sequence[WorkerOutput],
    links: Mapping[str, Link],
    max_outputs: int,
    shared_flow: bool = False,
) -> str:
    """Why the kernel engine cannot serve this rule (empty when it can). `shared_flow`: other rules (with
    other sources) take the same input interface, group and port."""
    if not link.mac:
        return f"input {link.name} is not an Ethernet interface"
    if any(out.group.version != rule.input_group.version for out in outputs):
        return "rules that change the address family are served in userspace"
    if shared_flow:
        return "several sources on one group and port are served in userspace"
    if len(outputs) > max_outputs:
        return f"more than {max_outputs} outputs"
    declared = tuple(rule.outputs)  # read once, then indexed
    for out in outputs:
        if not is_multicast(out.group):
            return f"output[{out.index}] is unicast (needs neighbour resolution)"
        if not links[declared[out.index].interface].mac:
            return f"output[{out.index}] {declared[out.index].interface} is not an Ethernet interface"
    return ""


def _kernel_rule(
    rule: ForwardingRule, link: Link, outputs: Sequence[WorkerOutput], links: Mapping[str, Link], epoch: int
) -> KernelRule:
    """The kernel engine's form of a rule `kernel_problem` passed (its outputs of its group's family)."""
    kouts: list[KernelOutput] = []
    declared = tuple(rule.outputs)
    for o in outputs:
        assert o.ttl is not None, "kernel outputs are multicast (kernel_problem): their TTL is always set"
        mac = links[declared[o.index].interface].mac
        kouts.append(KernelOutput(o.index, o.ifindex, o.group, o.port, o.source, mac, o.ttl, o.protocol))
    return KernelRule(
        rule.rule_id,
        link.ifindex,
        rule.input_group,
        rule.input_port,
        tuple(kouts),
        rule.rate_limit,
        rule.input_source,
        epoch,
        rule.input_protocol,
    )


def _usable(link: Link | None) -> str:
    if link is None:
        return "does not exist"
    if not link.up:
        return "is down"
    return ""


#: A served output of a userspace rule as resolved: (its index in the rule, ifindex, the address it is sent
#: from, TTL or None). The rest of its `WorkerOutput` is the rule's.
ResolvedOutput = tuple[int, int, IPAddress, int | None]

_Value = TypeVar("_Value", bound=Hashable)


def _shared(table: dict[_Value, _Value], value: _Value, most: int) -> _Value:
    """`value`, or the equal one `table` holds: one object for every holder of equal immutable values. Past
    `most` entries the table starts again (the objects held stay valid, they are only not shared)."""
    held = table.get(value)
    if held is not None:
        return held
    if len(table) >= most:
        table.clear()
    table[value] = value
    return value


#: One tuple for every rule whose outputs resolve alike (the same interfaces, addresses and TTLs, in the same
#: places), as `shared_port` does for ports: rules fan out to a few interfaces, so 10,000 rules hold a few of
#: these instead of 10,000 (and their `WorkerOutput`s, about 90 bytes each, are made when sent).
_RESOLVED_OUTPUTS: dict[tuple[ResolvedOutput, ...], tuple[ResolvedOutput, ...]] = {}
_RESOLVED_OUTPUTS_MAX = 65_536


def _worker_outputs(rule: ForwardingRule, outs: Iterable[ResolvedOutput]) -> tuple[WorkerOutput, ...]:
    """The rule's resolved outputs as the workers (and the kernel engine's checks) take them: an ESP rule's
    have no ports."""
    protocol = rule.input_protocol
    esp = protocol is InputProtocol.ESP
    declared = tuple(rule.outputs)  # read once, then indexed
    return tuple(
        WorkerOutput(i, declared[i].group, 0 if esp else declared[i].port, ifindex, address, ttl, protocol)
        for i, ifindex, address, ttl in outs
    )


@dataclass(frozen=True, slots=True)
class RuleResolution(RuleView):
    """One rule resolved against the links: how ListRules shows it, its data-plane form (userspace or
    kernel, or neither while it waits) and the input it needs captured and joined. A userspace rule keeps
    only what resolving found (`outs`, `epoch`); its `WorkerRule` is made from them and the rule when asked.
    It is its own view (a `RuleView` with what resolving found besides: one object a rule, not two)."""

    outs: tuple[ResolvedOutput, ...] | None = None  # userspace: its served outputs; None: not in userspace
    epoch: int = 0  # userspace: the generation it was (re)added in (the kernel's is in its KernelRule)
    kernel: KernelRule | None = None
    input_link: tuple[int, str] | None = None  # (ifindex, name) of its input when it exists and is up

    @property
    def view(self) -> RuleView:
        """How ListRules shows it: itself."""
        return self

    @property
    def worker(self) -> WorkerRule | None:
        """Its form for the workers; None unless it is served in userspace."""
        outs = self.outs
        if outs is None or self.input_link is None:
            return None
        rule = self.view.rule
        return WorkerRule(
            rule.rule_id,
            self.input_link[0],
            rule.input_group,
            rule.input_port,
            _worker_outputs(rule, outs),
            source=rule.input_source,
            rate_limit=rule.rate_limit,
            epoch=self.epoch,
            protocol=rule.input_protocol,
        )

    @property
    def form(self) -> WorkerRule | KernelRule | None:
        return self.worker if self.outs is not None else self.kernel

    @property
    def in_userspace(self) -> bool:
        """Whether the workers serve it (`worker` is not None), told without making its form."""
        return self.outs is not None and self.input_link is not None

    @property
    def served(self) -> bool:
        """Whether the data plane is given a form of it (`form` is not None), told without making it."""
        return self.kernel is not None if self.outs is None else self.input_link is not None

    def same_form(self, other: RuleResolution) -> bool:
        """Whether `form` is the same for both, told without making either while the rule is the same object
        (a userspace rule's form is made from the rule and what resolving found)."""
        if self.outs is None or other.outs is None:
            return self.outs is None and other.outs is None and self.kernel == other.kernel
        if self.view.rule is not other.view.rule:
            return self.form == other.form
        mine, theirs = self.input_link, other.input_link
        same_input = mine == theirs or (mine is not None and theirs is not None and mine[0] == theirs[0])
        return same_input and self.outs == other.outs and self.epoch == other.epoch

    @property
    def raw_egress(self) -> frozenset[RawEgress]:
        """The raw ESP output sockets the workers need for this rule (none for a kernel or UDP rule)."""
        if self.outs is None or self.view.rule.input_protocol is not InputProtocol.ESP:
            return frozenset()
        return frozenset(o.raw_egress for o in _worker_outputs(self.view.rule, self.outs))


def resolve_rule(
    rule: ForwardingRule,
    links: Mapping[str, Link],
    kernel_max_outputs: int | None = None,
    shared_flow: bool = False,
    epoch: int = 0,
    multicast_ttl: int = DEFAULT_MULTICAST_TTL,
    listeners: Listeners | None = None,
) -> RuleResolution:
    """Resolve one rule (see `resolve`); `shared_flow`: other rules take its input interface, group and port."""
    link = links.get(rule.input_interface)
    problem = _usable(link)
    if problem or link is None:
        reason = f"input interface {rule.input_interface} {problem}"
        return RuleResolution(rule, Engine.USERSPACE, RuleState.WAITING, reason)
    resolved: list[ResolvedOutput] = []
    notes: list[str] = []
    if not is_multicast(rule.input_group) and rule.input_group not in link.ipv4:
        # still served: frames to it arrive only if the interface is promiscuous or the address is added
        notes.append(f"input {rule.input_group} is not an address of {link.name}")
    for i, out in enumerate(rule.outputs):
        olink = links.get(out.interface)
        oproblem = _usable(olink)
        address = out.source_ip or (output_address(olink, out.group) if olink is not None else None)
        if not oproblem and address is None:
            oproblem = f"has no IPv{out.group.version} address"
        if oproblem or olink is None or address is None:
            notes.append(f"output[{i}] {out.interface} {oproblem}")
            continue
        if out.follow_receivers and not (listeners or Listeners()).wants(out.interface, out.group, address):
            notes.append(f"output[{i}] {out.interface} has no receivers for {out.group}")
            continue
        if not olink.carrier:
            # sends still succeed (the kernel drops them at the device), so nothing else would show it
            notes.append(f"output[{i}] {out.interface} has no carrier")
        resolved.append((i, olink.ifindex, address, effective_ttl(out, multicast_ttl)))
    outs = _shared(_RESOLVED_OUTPUTS, tuple(resolved), _RESOLVED_OUTPUTS_MAX)
    if kernel_max_outputs is not None:
        outputs = _worker_outputs(rule, outs)
        why = kernel_problem(rule, link, outputs, links, kernel_max_outputs, shared_flow)
        if not why:
            kernel = _kernel_rule(rule, link, outputs, links, epoch)
            return RuleResolution(
                rule, Engine.KERNEL, RuleState.ACTIVE, "; ".join(notes), kernel=kernel, input_link=link.ident
            )
        notes.append(f"userspace: {why}")
    return RuleResolution(
        rule, Engine.USERSPACE, RuleState.ACTIVE, "; ".join(notes), outs, epoch, input_link=link.ident
    )


def resolve(
    rules: Iterable[ForwardingRule],
    links: Mapping[str, Link],
    kernel_max_outputs: int | None = None,
    epochs: Mapping[str, int] | None = None,
    multicast_ttl: int = DEFAULT_MULTICAST_TTL,
    listeners: Listeners | None = None,
) -> Resolution:
    """Resolve every rule against the links; with `kernel_max_outputs` set, the kernel engine is
    available and serves every rule it can (the others stay in userspace, with the reason). `epochs`:
    the generation each rule was (re)added in (StatsBook.since), carried to the data plane. `multicast_ttl`:
    the TTL of a multicast output that names none (effective_ttl). `listeners`: the membership tables; an
    output that follows receivers is left out while nobody on its interface wants its group from the address
    it is sent from."""
    epochs = epochs or {}
    listeners = listeners or Listeners()
    rules = list(rules)
    flows = Counter(rule.input_key[:3] for rule in rules)
    parts = [
        (
            rule,
            resolve_rule(
                rule,
                links,
                kernel_max_outputs,
                flows[rule.input_key[:3]] > 1,
                epochs.get(rule.rule_id, 0),
                multicast_ttl,
                listeners,
            ),
        )
        for rule in rules
    ]
    return _assemble(parts)


def _assemble(
    parts: Iterable[tuple[ForwardingRule, RuleResolution]],
    memberships: dict[int, frozenset[Membership]] | None = None,
) -> Resolution:
    """`parts` as one Resolution; `memberships`: theirs when known already (else computed from the parts)."""
    views: list[RuleView] = []
    worker_rules: list[WorkerRule] = []
    kernel_rules: list[KernelRule] = []
    captures: dict[int, str] = {}
    raw_egress: set[RawEgress] = set()
    on_input: dict[int, list[ForwardingRule]] = {}
    for rule, part in parts:
        views.append(part.view)
        if part.input_link is not None:
            if memberships is None:
                on_input.setdefault(part.input_link[0], []).append(rule)
            else:
                memberships.setdefault(part.input_link[0], frozenset())  # an input of unicast rules only
        worker = part.worker
        if worker is not None:
            worker_rules.append(worker)
            assert part.input_link is not None
            captures[part.input_link[0]] = part.input_link[1]
            raw_egress.update(part.raw_egress)
        if part.kernel is not None:
            kernel_rules.append(part.kernel)
    return Resolution(
        views=tuple(views),
        worker_rules=tuple(worker_rules),
        captures=captures,
        memberships={k: wanted_memberships(v) for k, v in on_input.items()} if memberships is None else memberships,
        kernel_rules=tuple(kernel_rules),
        raw_egress=frozenset(raw_egress),
    )


#: A membership the supervisor holds: (input ifindex, group, source or None for any source).
MembershipKey = tuple[int, IPAddress, IPAddress | None]


@dataclass(frozen=True, slots=True)
class Changes:
    """What one `Resolver.update` changed: per rule (id, before, after; None: not in the table), and the
    memberships to join and to leave."""

    rules: tuple[tuple[str, RuleResolution | None, RuleResolution | None], ...] = ()
    join: frozenset[MembershipKey] = frozenset()
    leave: frozenset[MembershipKey] = frozenset()

    def worker_update(self) -> tuple[tuple[WorkerRule, ...], tuple[str, ...]]:
        """The workers' part: rules to add or replace, ids to drop."""
        upserts: list[WorkerRule] = []
        removed: list[str] = []
        for rule_id, before, after in self.rules:
            was = before if before is not None and before.in_userspace else None
            if after is not None and after.in_userspace:
                if was is None or not was.same_form(after):
                    upserts.append(cast(WorkerRule, after.worker))  # in userspace: made
            elif was is not None:
                removed.append(rule_id)  # its form is not made for that
        return tuple(upserts), tuple(removed)


class Resolver:
    """`resolve`, kept up to date one rule at a time: a change resolves the rules it names and the rules on
    the same input group and port (whose engine may depend on it), and recomputes the memberships of that
    group only, so its cost does not depend on the size of the table. A change of links re-resolves every
    rule (`update` with every id). `resolution()` assembles the whole `Resolution` for a full Sync or a
    listing, in the table's order."""

    def __init__(self, kernel_max_outputs: int | None = None, multicast_ttl: int = DEFAULT_MULTICAST_TTL) -> None:
        self.kernel_max_outputs = kernel_max_outputs
        self.multicast_ttl = multicast_ttl
        self.listeners = Listeners()  # the membership tables (outputs that follow receivers); a change re-resolves all
        self.links: Mapping[str, Link] = {}
        self.parts: dict[str, RuleResolution] = {}
        # input group -> the id of its rule, or a tuple of them when several rules take it (other interfaces or
        # ports, or sources sharing one flow); keyed by the group the rules hold, so that no key is made for it
        # (a rule's group is that of the rule in its resolution)
        self._on_group: dict[IPAddress, str | tuple[str, ...]] = {}
        self._captures: Counter[int] = Counter()  # ifindex -> userspace rules on it
        self._capture_names: dict[int, str] = {}
        self._egress: Counter[RawEgress] = Counter()  # raw ESP output sockets -> userspace outputs using them
        # membership inputs: input ifindex -> group -> its rules' sources (`_GroupSources`); the memberships a
        # group wants are made from them when asked
        self._sources: dict[int, dict[IPAddress, _GroupSources]] = {}
        self._views: tuple[Mapping[str, ForwardingRule], tuple[RuleView, ...]] | None = None

    @property
    def captures(self) -> Mapping[int, str]:
        """ifindex -> name of every input interface with a userspace rule."""
        return {i: self._capture_names[i] for i in self._captures}

    @property
    def raw_egress(self) -> Collection[RawEgress]:
        """The raw ESP output sockets the workers need (what `Resolution.raw_egress` holds, kept by rule)."""
        return self._egress.keys()

    def memberships(self) -> dict[int, frozenset[Membership]]:
        return {
            ifindex: frozenset().union(*(self._group_wanted((ifindex, group)) for group in groups))
            for ifindex, groups in self._sources.items()
        }

    def _group_wanted(self, gkey: tuple[int, IPAddress]) -> frozenset[Membership]:
        """The memberships one input group wants, from its rules' sources."""
        held = self._sources.get(gkey[0], {}).get(gkey[1])
        return frozenset() if held is None else _group_memberships(gkey[1], _by_rule(held).values())

    def update(
        self,
        rules: Mapping[str, ForwardingRule],
        ids: Iterable[str],
        links: Mapping[str, Link] | None = None,
        epochs: Mapping[str, int] | None = None,
    ) -> Changes:
        """Re-resolve the rules `ids` (added, changed or removed from `rules`), against `links` when given
        (then pass every id, old and new)."""
        epochs = epochs or {}
        if links is not None:
            self.links = links
        self._views = None
        touched: dict[str, None] = {}
        for rule_id in dict.fromkeys(ids):  # once each: a rule's old group is the one its resolution names
            touched[rule_id] = None
            held = self.parts.get(rule_id)
            if held is not None:
                old_group = held.view.rule.input_group
                others = tuple(r for r in _ids(self._on_group[old_group]) if r != rule_id)
                touched.update(dict.fromkeys(others))
                if others:
                    self._on_group[old_group] = others if len(others) > 1 else others[0]
                else:
                    del self._on_group[old_group]
            rule = rules.get(rule_id)
            if rule is not None:
                others = _ids(self._on_group.get(rule.input_group, ()))
                touched.update(dict.fromkeys(others))
                self._on_group[rule.input_group] = (*others, rule_id) if others else rule_id
        changed: list[tuple[str, RuleResolution | None, RuleResolution | None]] = []
        groups: dict[tuple[int, IPAddress], frozenset[Membership]] = {}  # touched -> the memberships it wanted
        for rule_id in touched:
            rule = rules.get(rule_id)
            before = self.parts.get(rule_id)
            after = None
            if rule is not None:
                shared = self._shares_flow(rule, rules)
                after = resolve_rule(
                    rule,
                    self.links,
                    self.kernel_max_outputs,
                    shared,
                    epochs.get(rule_id, 0),
                    self.multicast_ttl,
                    self.listeners,
                )
            if after == before:
                if after is not None and before is not None and before.view.rule is not rule:
                    self.parts[rule_id] = after  # equal, but for what does not compare (where the rule comes from)
                continue
            if before is not None:
                self._unbook(rule_id, before, groups)
            if after is not None and rule is not None:
                self._book(rule_id, rule, after, groups)
                self.parts[rule_id] = after
            else:
                self.parts.pop(rule_id, None)
            changed.append((rule_id, before, after))
        join: set[MembershipKey] = set()
        leave: set[MembershipKey] = set()
        for gkey, old in groups.items():
            new = self._group_wanted(gkey)
            join.update((gkey[0], g, src) for g, src in new - old)
            leave.update((gkey[0], g, src) for g, src in old - new)
        return Changes(tuple(changed), frozenset(join), frozenset(leave))

    def _shares_flow(self, rule: ForwardingRule, rules: Mapping[str, ForwardingRule]) -> bool:
        """Whether another rule takes `rule`'s input flow (interface, group and port: sources share it)."""
        on_group = self._on_group[rule.input_group]
        if isinstance(on_group, str):
            return False
        flow = rule.flow
        return any(r != rule.rule_id and rules[r].flow == flow for r in on_group)

    def _book(
        self,
        rule_id: str,
        rule: ForwardingRule,
        part: RuleResolution,
        groups: dict[tuple[int, IPAddress], frozenset[Membership]],
    ) -> None:
        if part.input_link is None:
            return
        ifindex, name = part.input_link
        if part.outs is not None:
            self._captures[ifindex] += 1
            self._capture_names[ifindex] = name
            self._egress.update(part.raw_egress)
        if not is_multicast(rule.input_group):
            return  # a unicast input: the host's own address, nothing to join
        key = (ifindex, rule.input_group)
        src = rule.input_source
        host = src.network_address if src is not None and src.prefixlen == src.max_prefixlen else None
        self._touch(key, groups)
        on_link = self._sources.setdefault(ifindex, {})
        held = on_link.get(rule.input_group)
        if held is None:
            on_link[rule.input_group] = rule_id if host is None else (rule_id, host)
        elif isinstance(held, dict):
            held[rule_id] = host
        else:
            on_link[rule.input_group] = {**_by_rule(held), rule_id: host}

    def _unbook(
        self, rule_id: str, part: RuleResolution, groups: dict[tuple[int, IPAddress], frozenset[Membership]]
    ) -> None:
        if part.input_link is None:
            return
        ifindex = part.input_link[0]
        if part.outs is not None:
            self._captures[ifindex] -= 1
            if self._captures[ifindex] <= 0:
                del self._captures[ifindex]
                self._capture_names.pop(ifindex, None)
            for egress in part.raw_egress:
                self._egress[egress] -= 1
                if self._egress[egress] <= 0:
                    del self._egress[egress]
        group = part.view.rule.input_group
        self._touch((ifindex, group), groups)
        on_link = self._sources.get(ifindex, {})
        held = on_link.get(group)
        if held is None:
            return
        rest = {rid: host for rid, host in _by_rule(held).items() if rid != rule_id}
        if len(rest) > 1:
            on_link[group] = rest
        elif rest:
            ((rid, host),) = rest.items()
            on_link[group] = rid if host is None else (rid, host)
        else:
            del on_link[group]
            if not on_link:
                del self._sources[ifindex]

    def _touch(self, key: tuple[int, IPAddress], groups: dict[tuple[int, IPAddress], frozenset[Membership]]) -> None:
        """Before a change to an input group's sources: what it wanted, kept once per update in `groups`."""
        if key not in groups:
            groups[key] = self._group_wanted(key)

    def resolution(self, rules: Mapping[str, ForwardingRule]) -> Resolution:
        """The whole resolution, in the order of `rules`, for a worker's full Sync: made each time, since its
        `WorkerRule`s are made from the parts (`views` is what a listing takes)."""
        parts = ((rule, self.parts[rule_id]) for rule_id, rule in rules.items() if rule_id in self.parts)
        return _assemble(parts, self.memberships())

    def worker_rules(self, rules: Mapping[str, ForwardingRule]) -> tuple[WorkerRule, ...]:
        """`resolution(rules).worker_rules`, without the rest of it (a worker's full Sync needs only these)."""
        parts = self.parts
        found = (parts.get(rule_id) for rule_id in rules)
        return tuple(worker for part in found if part is not None and (worker := part.worker) is not None)

    def views(self, rules: Mapping[str, ForwardingRule]) -> tuple[RuleView, ...]:
        """`resolution(rules).views` (kept until the next update)."""
        if self._views is not None and self._views[0] is rules:
            return self._views[1]
        parts = self.parts
        views = tuple(parts[rule_id].view for rule_id in rules if rule_id in parts)
        self._views = (rules, views)
        return views


#: An input group's rules' sources, as `Resolver._sources` holds them: the id of its one rule when that rule takes
#: any source (or a prefix: every source is joined), (its id, the source host) when it names a host, or the
#: source host (or None) of each of its rules by id when several share the group. A group almost always has one
#: rule that names no host, and a tuple or a dict for it would cost 56 or 180 bytes more.
_GroupSources = str | tuple[str, IPAddress] | dict[str, IPAddress | None]


def _by_rule(held: _GroupSources) -> dict[str, IPAddress | None]:
    if isinstance(held, str):
        return {held: None}
    if isinstance(held, tuple):
        return {held[0]: held[1]}
    return held


def _ids(held: str | tuple[str, ...]) -> tuple[str, ...]:
    """A group's rule ids as `Resolver._on_group` holds them (one id as itself)."""
    return (held,) if isinstance(held, str) else held


def _group_memberships(group: IPAddress, hosts: Iterable[IPAddress | None]) -> frozenset[Membership]:
    """`wanted_memberships` for one group, given each rule's source host (None: any source or a prefix)."""
    found: set[Membership] = set()
    for host in hosts:
        if host is None:
            return frozenset({(group, None)})
        found.add((group, host))
    return frozenset(found)


def dataplane_forms(res: Resolution) -> dict[str, WorkerRule | KernelRule]:
    """Each servable rule's form in the data plane: what its engine is given."""
    forms: dict[str, WorkerRule | KernelRule] = {r.rule_id: r for r in res.worker_rules}
    forms.update((r.rule_id, r) for r in res.kernel_rules)
    return forms


@dataclass(slots=True)
class SyncTracker:
    """Whether the workers have each rule yet. A rule's data-plane form last changed in some generation
    (it was added, changed by a reload, moved between engines or re-resolved after a link change); a rule
    the workers serve is active once every worker has confirmed (SyncAck) a generation at least as new.
    The kernel engine's rules are written to its maps synchronously, so they are active at once."""

    changed_in: dict[str, int] = field(default_factory=dict)  # rule id -> generation its form last changed
    settled: int = 0  # what a rule not in `changed_in` stands at: every worker had confirmed it (`settle`)

    def on_apply(self, before: Resolution, after: Resolution, generation: int) -> None:
        old = dataplane_forms(before)
        self.changed_in = {
            rule_id: self.changed_in.get(rule_id, self.settled) if old.get(rule_id) == form else generation
            for rule_id, form in dataplane_forms(after).items()
        }

    def on_changes(self, changes: Changes, generation: int) -> None:
        """`on_apply` for the rules one `Resolver.update` changed (the others keep their generation)."""
        for rule_id, before, after in changes.rules:
            if after is None or not after.served:
                self.changed_in.pop(rule_id, None)
            elif before is None or not before.served or not before.same_form(after):
                self.changed_in[rule_id] = generation

    def settle(self, acked: Iterable[int]) -> None:
        """Forget the generations every worker has confirmed: a rule with none stands at the generation they
        had all confirmed then (`settled`), which is what its own is to a worker that confirms anything (a
        restarted worker is given the current generation whole, so a worker's confirmed generation never goes
        back but to -1, starting). Without this, the table would keep an entry (about 70 bytes) for every rule
        ever changed."""
        applied = min(acked, default=None)
        if applied is not None and applied > self.settled:
            self.settled = applied
            self.changed_in = {rule_id: g for rule_id, g in self.changed_in.items() if g > applied}

    def views(self, listed: tuple[RuleView, ...], acked: Iterable[int]) -> tuple[RuleView, ...]:
        """The views `listed` with userspace rules the workers have not all confirmed shown as PENDING. `acked`:
        the generation each worker has confirmed, -1 for a worker that is starting or restarting."""
        applied = min(acked, default=None)
        if applied is None:
            return listed
        views = []
        for view in listed:
            since = self.changed_in.get(view.rule.rule_id, self.settled)
            if view.state is RuleState.ACTIVE and view.engine is Engine.USERSPACE and applied < since:
                why = f"workers are applying the rule set (generation {since})"
                reason = f"{why}; {view.state_reason}" if view.state_reason else why
                view = replace(view, state=RuleState.PENDING, state_reason=reason)
            views.append(view)
        return tuple(views)


@dataclass(slots=True)
class Backoff:
    """Exponential restart delay: 250 ms doubling to 16 s, back to 250 ms after a stable minute."""

    initial: float = 0.25
    cap: float = 16.0
    stable: float = 60.0
    current: float = 0.25
    started_at: float = 0.0

    def on_start(self, now: float) -> None:
        self.started_at = now

    def on_exit(self, now: float) -> float:
        """The delay before the next start, given that the process exited at `now`."""
        if now - self.started_at >= self.stable:
            self.current = self.initial
        delay = self.current
        self.current = min(self.cap, self.current * 2)
        return delay


@dataclass(slots=True)
class _Totals:
    packets: int = 0
    bytes: int = 0
    outputs: dict[int, list[int]] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)

    def add(self, c: RuleCounters) -> None:
        self.packets += c.packets
        self.bytes += c.bytes
        for index, p, b, e in c.outputs:
            acc = self.outputs.setdefault(index, [0, 0, 0])
            acc[0] += p
            acc[1] += b
            acc[2] += e
        for reason, n in c.drops:
            self.drops[reason] = self.drops.get(reason, 0) + n

    def add_packed(self, values: tuple[int, ...]) -> None:
        """`add` of counters as `_hold` packed them (generation, packets, bytes, then 4 numbers an output)."""
        self.packets += values[1]
        self.bytes += values[2]
        outputs = self.outputs
        for i in range(3, len(values), 4):
            acc = outputs.get(values[i])
            if acc is None:
                outputs[values[i]] = [values[i + 1], values[i + 2], values[i + 3]]
            else:
                acc[0] += values[i + 1]
                acc[1] += values[i + 2]
                acc[2] += values[i + 3]


#: What `StatsBook` holds of a worker's latest counters for one rule, with the generation of the report that
#: carried them: packed into one bytes object (`_hold`), or, when the counters have drops or a value that does
#: not fit 64 bits, the counters themselves and the generation.
Held = bytes | tuple[RuleCounters, int]

_LAYOUTS: dict[int, struct.Struct] = {}


def _layout(outputs: int) -> struct.Struct:
    """The packing of a rule with `outputs` outputs: generation, packets, bytes, then (index, packets, bytes,
    errors) per output, each a signed 64-bit integer."""
    layout = _LAYOUTS.get(outputs)
    if layout is None:
        layout = _LAYOUTS[outputs] = struct.Struct(f"={3 + 4 * outputs}q")
    return layout


_IDLE_HELD: dict[bytes, bytes] = {}
_IDLE_HELD_MAX = 4096


def _hold(counters: Counts, generation: int) -> Held:
    """`counters` as the book keeps them: 8 bytes a number in one object (2.5 outputs: 144 bytes, where the
    counters' tuples and ints cost 600-700), or as they are when they cannot be packed. Rules that have relayed
    nothing share one object per generation and outputs (a full report carries one generation): a quiet table
    holds a few of these instead of one a rule. Counts that came packed (a worker's, `counts_layout`: the
    layout below without the generation) are kept as they came, behind the generation."""
    if isinstance(counters, bytes):
        held = _GENERATION.pack(generation) + counters
        return held if counters[:8] != _ZERO else _shared(_IDLE_HELD, held, _IDLE_HELD_MAX)
    if counters.drops:
        return (counters, generation)
    try:
        held = _layout(len(counters.outputs)).pack(
            generation, counters.packets, counters.bytes, *(n for output in counters.outputs for n in output)
        )
    except struct.error:
        return (counters, generation)
    return held if counters.packets else _shared(_IDLE_HELD, held, _IDLE_HELD_MAX)


def _unpack(held: bytes) -> tuple[int, ...]:
    return _layout((len(held) // 8 - 3) // 4).unpack(held)


def _unhold(held: Held) -> tuple[RuleCounters, int]:
    """The counters and generation that `_hold` packed."""
    if not isinstance(held, bytes):
        return held
    return unpack_counts(held[_GENERATION.size :]), _GENERATION.unpack_from(held)[0]


_GENERATION = struct.Struct("=q")
_SUMS = struct.Struct("=3q")  # the generation, packets and bytes at the head of what `_hold` packed
_ZERO = bytes(8)
_NO_COUNTS = (0, 0)
_NO_RATE = (0.0, 0.0)
_NO_OUTPUT = (0, 0, 0)


@functools.cache
def _indexes(outputs: int) -> tuple[int, ...]:
    return tuple(range(outputs))


def _generation(held: Held) -> int:
    """The generation `held` was taken under, without unpacking the rest."""
    return held[1] if not isinstance(held, bytes) else _GENERATION.unpack_from(held)[0]


def _advanced(old: Held, new: Held) -> bool:
    """Whether every counter of `new` is at least what it was in `old`, both packed with the same outputs in
    the same order: then nothing went back, and `StatsBook._check` has nothing to keep (it unpacks both into
    objects, which cost most of booking a report at 1,000 counting rules). False also when either is not
    packed, so that `_check` decides."""
    if not isinstance(old, bytes) or not isinstance(new, bytes) or len(old) != len(new):
        return False
    if old[8:] == new[8:]:
        return True  # the same counts (idle): the usual case of a full report at 10,000 rules
    was, now = _unpack(old), _unpack(new)
    return was[3::4] == now[3::4] and all(map(operator.ge, now[1:], was[1:]))


def _went_back(old: tuple[int, int, int, int], cur: tuple[int, int, int, int]) -> bool:
    """Whether an output's (index, packets, bytes, errors) counters are lower than before."""
    return cur[1] < old[1] or cur[2] < old[2] or cur[3] < old[3]


class StatsBook:
    """Sums the cumulative reports of every worker incarnation per rule, and derives rates.

    A worker reports every rule in its first report and now and then after that (`delta` False), and in
    between only the rules whose counters changed, with the ids it dropped (`gone`): the book keeps each
    worker's latest counters per rule, with the generation they were taken under, so a report costs time in
    proportion to what changed."""

    def __init__(self) -> None:
        # worker slot -> latest report of the live incarnation, without its rules (they are in _by_rule)
        self.latest: dict[int, StatsReport] = {}
        # worker slot -> rule id -> its latest counters and the generation of the report that carried them
        self._by_rule: dict[int, dict[str, Held]] = {}
        self.retired: dict[str, _Totals] = {}  # rule id -> counters of workers that exited
        self.retired_drops: dict[str, int] = {}
        self._rate_base: dict[str, tuple[int, int]] = {}  # rule id -> (packets, bytes) at the last tick
        self.since: dict[str, int] = {}  # rule id -> the generation it was (re)added in
        self.rates: dict[str, tuple[float, float]] = {}
        self.moved: set[str] = set()  # rules whose totals may have changed since the last tick
        # rule id -> (the rule, its counts) as `counted` last made them, and the rules whose totals or rates may
        # have changed since: GetStats and a scrape make only those again
        self._flows: dict[str, Counted] = {}
        self._stale: set[str] = set()
        self._last_tick: float | None = None  # the time the totals of the previous tick stand for
        self._counted_at: float | None = None  # when the latest report booked since the previous tick arrived

    def track(self, rule_id: str, generation: int) -> None:
        """A rule (re)added in `generation`: counts from reports taken before it are not its own."""
        self.since[rule_id] = generation
        self._mark(rule_id)

    def _mark(self, rule_id: str) -> None:
        self.moved.add(rule_id)
        if rule_id in self._flows:  # an entry not made yet is made when asked: no need to hold its id
            self._stale.add(rule_id)

    def _mark_all(self, rule_ids: Iterable[str]) -> None:
        for rule_id in rule_ids:
            self._mark(rule_id)

    def _counts(self, generation: int, rule_id: str) -> bool:
        return generation >= self.since.get(rule_id, 0)

    def on_report(self, report: StatsReport, at: float | None = None) -> None:
        """Take a worker's (or the kernel engine's) cumulative report, which arrived `at` (the clock `tick` is
        given; None: the tick's own time stands for it). A rule whose counters went
        backwards or vanished was reset at the source (its interface came back with a new index, it
        moved between engines, its kernel slot was reset): what had been counted is kept, so totals
        never go backwards. The same holds for one output of a rule that stays (its interface went
        away, so the output was skipped, and came back)."""
        if at is not None:
            self._counted_at = at
        prev = self.latest.get(report.worker_id)
        known = self._by_rule.get(report.worker_id) if prev is not None and prev.pid == report.pid else None
        if report.delta:
            book = known if known is not None else {}
            for rule_id, cur in report.rules:
                held = book.get(rule_id)
                fresh = _hold(cur, report.generation)
                if held is not None and not _advanced(held, fresh):
                    self._check(rule_id, held, cur)
                book[rule_id] = fresh
                self._mark(rule_id)
            for rule_id in report.gone:
                held = book.pop(rule_id, None)
                if held is not None:
                    self._check(rule_id, held, None)
                self._mark(rule_id)
        else:
            reported = dict(report.rules)
            book = {rule_id: _hold(cur, report.generation) for rule_id, cur in reported.items()}
            old = known if known is not None else {}
            self._mark_all(rule_id for rule_id, held in book.items() if not self._same(rule_id, old.get(rule_id), held))
            self._mark_all(rule_id for rule_id in old if rule_id not in book)
            if known is not None:
                for rule_id, held in known.items():
                    now = book.get(rule_id)
                    if now is not None and _advanced(held, now):
                        continue  # the same counts or more (most rules of a large table): nothing went back
                    self._check(rule_id, held, reported.get(rule_id))
        # the rules are booked above: keeping them in the report too would keep every rule's counters twice
        self.latest[report.worker_id] = replace(report, rules=(), gone=()) if report.rules or report.gone else report
        self._by_rule[report.worker_id] = book

    def _same(self, rule_id: str, old: Held | None, new: Held) -> bool:
        """Whether a rule's totals are as they were when its counters went from `old` to `new`: the same
        counters, taken under generations that both count for it or both not. (A full report's generation is
        the worker's latest, so without the second half every rule would be rebuilt after each one: at 10,000
        rules, a GetStats and a scrape of 200-300 ms every 10 s.)"""
        if old == new:
            return True
        if not isinstance(old, bytes) or not isinstance(new, bytes) or old[8:] != new[8:]:
            return False
        return self._counts(_generation(old), rule_id) == self._counts(_generation(new), rule_id)

    def _check(self, rule_id: str, held: Held, counts: Counts | None) -> None:
        """Keep what `held` counted when `counts`, the same rule's next counters from the same source, went
        back."""
        if rule_id not in self.since or not self._counts(_generation(held), rule_id):
            return
        old = _unhold(held)[0]
        cur = None if counts is None else counters_of(counts)
        if cur is None or cur.packets < old.packets or cur.bytes < old.bytes:
            self.retire(rule_id, old)
            return
        outputs = {o[0]: o for o in cur.outputs}
        gone = tuple(o for o in old.outputs if o[0] not in outputs or _went_back(o, outputs[o[0]]))
        if gone:
            self.retire(rule_id, RuleCounters(0, 0, gone))

    def on_worker_exit(self, worker_id: int, live_rules: Container[str]) -> None:
        """Keep what an exited worker counted for the rules that still exist."""
        report = self.latest.pop(worker_id, None)
        book = self._by_rule.pop(worker_id, {})
        if report is None:
            return
        for rule_id, held in book.items():
            self._mark(rule_id)
            if rule_id in live_rules:
                counters, generation = _unhold(held)
                if self._counts(generation, rule_id):
                    self.retired.setdefault(rule_id, _Totals()).add(counters)
        for reason, n in report.drops:
            self.retired_drops[reason] = self.retired_drops.get(reason, 0) + n

    def retire(self, rule_id: str, counters: RuleCounters) -> None:
        """Keep counters whose source is going away (a kernel slot that is freed)."""
        self.retired.setdefault(rule_id, _Totals()).add(counters)
        self._mark(rule_id)

    def forget_rule(self, rule_id: str) -> None:
        """A removed rule's counters go with it (a rule added again later starts from zero)."""
        self.retired.pop(rule_id, None)
        self.since.pop(rule_id, None)
        for book in self._by_rule.values():
            book.pop(rule_id, None)
        self._rate_base.pop(rule_id, None)
        self.rates.pop(rule_id, None)
        self.moved.discard(rule_id)
        self._flows.pop(rule_id, None)
        self._stale.discard(rule_id)

    def totals(self, rule_id: str) -> _Totals:
        acc = _Totals()
        retired = self.retired.get(rule_id)
        if retired is not None:
            acc.add(
                RuleCounters(
                    retired.packets,
                    retired.bytes,
                    tuple((i, v[0], v[1], v[2]) for i, v in retired.outputs.items()),
                    tuple(retired.drops.items()),
                )
            )
        for book in self._by_rule.values():
            held = book.get(rule_id)
            if held is None:
                continue
            if isinstance(held, bytes):  # summed as packed: no counters made to be added and let go
                values = _unpack(held)
                if self._counts(values[0], rule_id):
                    acc.add_packed(values)
            elif self._counts(held[1], rule_id):
                acc.add(held[0])
        return acc

    def _sums(self, rule_id: str) -> tuple[int, int]:
        """`totals(rule_id)`'s packets and bytes alone (a tick needs no more), read without unpacking the rest."""
        retired = self.retired.get(rule_id)
        packets, octets = (0, 0) if retired is None else (retired.packets, retired.bytes)
        for book in self._by_rule.values():
            held = book.get(rule_id)
            if held is None:
                continue
            if isinstance(held, bytes):
                generation, p, b = _SUMS.unpack_from(held)
            else:
                generation, p, b = held[1], held[0].packets, held[0].bytes
            if self._counts(generation, rule_id):
                packets += p
                octets += b
        return packets, octets

    def tick(self, rule_ids: Container[str], now: float) -> None:
        """Refresh the per-rule rates of `rule_ids` from the change since the previous tick. Only the rules
        whose totals may have moved, or whose rate is not yet back to zero, are looked at: the others' counts
        at the previous tick are still their counts, so a tick costs what changed, not the table.

        The change is divided by the time between the latest reports booked before each tick (`on_report`'s
        `at`), not between the ticks: a worker reports every 0.5 s and the supervisor ticks about every
        second, so between two ticks there are now and then three reports instead of two, and a steady flow
        showed half as much again as its rate. Without a report since the previous tick, `now` stands in
        (the counts did not move: the rates fall to zero)."""
        now, self._counted_at = (now if self._counted_at is None else self._counted_at), None
        last, self._last_tick = self._last_tick, now
        busy = {rule_id for rule_id, rate in self.rates.items() if rate != (0.0, 0.0)}
        for rule_id in self.moved | busy:
            if rule_id not in rule_ids:
                continue
            packets, octets = self._sums(rule_id)
            base = self._rate_base.get(rule_id)
            if base is not None and last is not None and now > last:
                dt = now - last
                rate = (max(0, packets - base[0]) / dt, max(0, octets - base[1]) * 8 / dt)
                if self.rates.get(rule_id) != rate:
                    self.rates[rule_id] = rate if rate != _NO_RATE else _NO_RATE
                    if rule_id in self._flows:
                        self._stale.add(rule_id)
            # an idle rule's (most rules') base and rate are one shared tuple, not two of their own
            self._rate_base[rule_id] = (packets, octets) if packets or octets else _NO_COUNTS
        self.moved = set()

    def counted(self, rules: Iterable[ForwardingRule]) -> tuple[Counted, ...]:
        """Each of `rules` with its counts and rates (the entries of GetStats and of a scrape). An entry whose
        rule, totals and rates are as when it was last made is that same tuple, so what was written from it
        can be reused; a rule that never counted shares one `FlowCounts` of zeros with the others like it."""
        entries = []
        cache, stale = self._flows, self._stale
        for rule in rules:
            held = cache.get(rule.rule_id)
            if held is None or held[0] is not rule or rule.rule_id in stale:
                stale.discard(rule.rule_id)
                held = cache[rule.rule_id] = (rule, self._flow_counts(rule))
            entries.append(held)
        return tuple(entries)

    def _flow_counts(self, rule: ForwardingRule) -> FlowCounts:
        rule_id, n = rule.rule_id, len(rule.outputs)
        pps, bps = self.rates.get(rule_id, _NO_RATE)
        values = self._packed_sum(rule_id, n)
        if values is not None:
            flat = list(values[4:])  # packets, bytes, errors of each output, and the next one's index
            del flat[3::4]
            packets, bytes_ = (values[1], values[2]) if values else (0, 0)
            if not (packets or bytes_ or pps or bps or any(flat)):
                return zero_counts(n)  # idle: reported with nothing counted, or not reported
            return FlowCounts(packets, bytes_, round(pps, 1), round(bps, 1), tuple(flat) or zero_counts(n).outputs)
        t = self.totals(rule_id)
        if not (t.packets or t.bytes or t.outputs or t.drops or pps or bps):
            return zero_counts(n)
        get = t.outputs.get
        outputs = tuple(v for i in range(n) for v in get(i, _NO_OUTPUT))
        return FlowCounts(t.packets, t.bytes, round(pps, 1), round(bps, 1), outputs, tuple(t.drops.items()))

    def _packed_sum(self, rule_id: str, outputs: int) -> tuple[int, ...] | None:
        """`totals` in the common case, as packed values summed (generation, packets, bytes, then index, packets,
        bytes and errors of each output): every worker holds the rule's counters packed, for its outputs 0 to
        `outputs` - 1 in order, and nothing is retired. () when no worker's counters count for the rule; None
        when the case is not that one (`totals` sums it)."""
        if rule_id in self.retired:
            return None
        acc: tuple[int, ...] = ()
        for book in self._by_rule.values():
            held = book.get(rule_id)
            if held is None:
                continue
            if not isinstance(held, bytes) or len(held) != 24 + 32 * outputs:
                return None
            values = _unpack(held)
            if values[3::4] != _indexes(outputs):
                return None
            if self._counts(values[0], rule_id):
                acc = tuple(map(operator.add, acc, values)) if acc else values
        return acc

    def flow_stats(self, rules: Iterable[ForwardingRule]) -> tuple[FlowStats, ...]:
        """The GetStats entries of `rules`, as the client reads them."""
        return tuple(flow_stats(rule, counts) for rule, counts in self.counted(rules))
