"""The supervisor's pure core: the rule table, resolution against the host's links, restart backoff
and statistics aggregation. No sockets, no processes, no clock of its own: time is passed in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network

from mcr.membership.querier import Listeners
from mcr.model.errors import ValidationError
from mcr.model.links import Link
from mcr.model.ratelimit import RateLimit
from mcr.model.rules import (
    DEFAULT_MULTICAST_TTL,
    Engine,
    ForwardingRule,
    IPAddress,
    Limits,
    RuleSource,
    check_rule_fits,
    check_rule_shape,
    check_rule_unique,
    effective_ttl,
    generated_rule_id,
    is_multicast,
    limits_exceeded,
    source_text,
)
from mcr.model.status import FlowStats, OutputStats, RuleState, RuleView
from mcr.protocol.control import AddRule
from mcr.protocol.worker import RuleCounters, StatsReport, WorkerOutput, WorkerRule


class RuleTable:
    """The authoritative rules, in the order they were added."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.rules: dict[str, ForwardingRule] = {}

    def build(self, req: AddRule, source: RuleSource = RuleSource.RUNTIME) -> ForwardingRule:
        rule_id = req.rule_id or generated_rule_id(
            req.input_interface, req.input_group, req.input_port, req.input_source
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

    def insert(self, rule: ForwardingRule) -> ForwardingRule:
        check_rule_shape(rule)
        check_rule_fits(rule, self.rules, self.limits)
        self.rules[rule.rule_id] = rule
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
                check_rule_unique(rule, self.rules)
            except ValidationError as e:
                refusals.append(f"saved rule {rule.rule_id} not restored: {e}")
                continue
            self.rules[rule.rule_id] = rule
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
        trial.rules = {rid: r for rid, r in self.rules.items() if rid not in removed and rid not in changed}
        for rid in changed + added:
            try:
                trial.insert(wanted[rid])
            except ValidationError as e:
                raise ValidationError(f"rule '{rid}': {e}") from None
        self.rules = {rid: r for rid, r in self.rules.items() if rid in trial.rules}
        self.rules.update({rid: trial.rules[rid] for rid in changed + added})
        return added, changed, removed

    def remove(self, rule_id: str) -> ForwardingRule:
        try:
            return self.rules.pop(rule_id)
        except KeyError:
            raise ValidationError(f"Rule {rule_id} not found") from None

    def named(self, name: str) -> ForwardingRule | None:
        """The rule with this name (today's original's second handle on a rule), if any."""
        return next((r for r in self.rules.values() if r.name == name), None)

    def load(self, new: Iterable[ForwardingRule], replace_runtime: bool) -> tuple[list[str], list[str], list[str]]:
        """LoadConfig: add `new` as runtime rules, all or nothing; returns (added, removed, skipped) ids.

        `replace_runtime`: the runtime rules not in `new` go (a rule that is in `new` unchanged stays, counters
        and all); the config file's rules are never touched (they belong to the file). Otherwise a rule whose
        id or input (interface, group, port) is taken is skipped, as the original merges.
        """
        wanted = [replace(r, source=RuleSource.RUNTIME) for r in new]
        wanted_ids = {r.rule_id for r in wanted}
        trial = RuleTable(self.limits)
        trial.rules = {
            rid: r
            for rid, r in self.rules.items()
            if r.source is RuleSource.CONFIG or not replace_runtime or rid in wanted_ids
        }
        added: list[str] = []
        skipped: list[str] = []
        for rule in wanted:
            held = trial.rules.get(rule.rule_id)
            if replace_runtime and held is not None and held.source is RuleSource.RUNTIME:
                if held == rule:
                    continue  # unchanged: untouched
                del trial.rules[rule.rule_id]
            elif not replace_runtime and (
                held is not None or any(r.input_key[:3] == rule.input_key[:3] for r in trial.rules.values())
            ):
                skipped.append(rule.rule_id)
                continue
            try:
                trial.insert(rule)
            except ValidationError as e:
                label = f"'{rule.name}' ({rule.rule_id})" if rule.name else f"'{rule.rule_id}'"
                raise ValidationError(f"rule {label}: {e}") from None
            added.append(rule.rule_id)
        removed = [rid for rid, r in self.rules.items() if trial.rules.get(rid) is not r]
        self.rules = trial.rules
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


@dataclass(frozen=True, slots=True)
class Resolution:
    """What the data plane should be doing, given the rules and the links that exist now."""

    views: tuple[RuleView, ...]
    worker_rules: tuple[WorkerRule, ...]
    captures: Mapping[int, str]  # ifindex -> name of every input interface with a userspace rule
    memberships: Mapping[int, frozenset[Membership]]  # ifindex -> input groups (and sources) to join there
    kernel_rules: tuple[KernelRule, ...] = ()


#: A membership to hold on an input interface: (group, None) joins any source (IGMPv2/MLDv1 style
#: exclude-nothing), (group, S) joins only source S (IGMPv3/MLDv2 source-specific, as SSM needs).
Membership = tuple[IPAddress, IPAddress | None]


def wanted_memberships(rules: Iterable[ForwardingRule]) -> frozenset[Membership]:
    """The memberships for the rules of one input interface: a group is joined source-specifically
    for each source when every rule on it names one source host, and for any source otherwise (a
    rule without a source, or with a prefix, wants them all; the worker filters by prefix)."""
    sources: dict[IPAddress, set[IPAddress] | None] = {}
    for rule in rules:
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
    outputs: list[WorkerOutput],
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
    for out in outputs:
        if not is_multicast(out.group):
            return f"output[{out.index}] is unicast (needs neighbour resolution)"
        if not links[rule.outputs[out.index].interface].mac:
            return f"output[{out.index}] {rule.outputs[out.index].interface} is not an Ethernet interface"
    return ""


def _kernel_rule(
    rule: ForwardingRule, link: Link, outputs: list[WorkerOutput], links: Mapping[str, Link], epoch: int
) -> KernelRule:
    """The kernel engine's form of a rule `kernel_problem` passed (its outputs of its group's family)."""
    kouts: list[KernelOutput] = []
    for o in outputs:
        assert o.ttl is not None, "kernel outputs are multicast (kernel_problem): their TTL is always set"
        mac = links[rule.outputs[o.index].interface].mac
        kouts.append(KernelOutput(o.index, o.ifindex, o.group, o.port, o.source, mac, o.ttl))
    return KernelRule(
        rule.rule_id,
        link.ifindex,
        rule.input_group,
        rule.input_port,
        tuple(kouts),
        rule.rate_limit,
        rule.input_source,
        epoch,
    )


def _usable(link: Link | None) -> str:
    if link is None:
        return "does not exist"
    if not link.up:
        return "is down"
    return ""


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
    views: list[RuleView] = []
    worker_rules: list[WorkerRule] = []
    kernel_rules: list[KernelRule] = []
    captures: dict[int, str] = {}
    on_input: dict[int, list[ForwardingRule]] = {}
    rules = list(rules)
    flows = Counter(rule.input_key[:3] for rule in rules)
    for rule in rules:
        link = links.get(rule.input_interface)
        problem = _usable(link)
        if problem or link is None:
            reason = f"input interface {rule.input_interface} {problem}"
            views.append(RuleView(rule, Engine.USERSPACE, RuleState.WAITING, reason))
            continue
        outputs: list[WorkerOutput] = []
        notes: list[str] = []
        for i, out in enumerate(rule.outputs):
            olink = links.get(out.interface)
            oproblem = _usable(olink)
            address = out.source_ip or (output_address(olink, out.group) if olink is not None else None)
            if not oproblem and address is None:
                oproblem = f"has no IPv{out.group.version} address"
            if oproblem or olink is None or address is None:
                notes.append(f"output[{i}] {out.interface} {oproblem}")
                continue
            if out.follow_receivers and not listeners.wants(out.interface, out.group, address):
                notes.append(f"output[{i}] {out.interface} has no receivers for {out.group}")
                continue
            if not olink.carrier:
                # sends still succeed (the kernel drops them at the device), so nothing else would show it
                notes.append(f"output[{i}] {out.interface} has no carrier")
            outputs.append(
                WorkerOutput(i, out.group, out.port, olink.ifindex, address, effective_ttl(out, multicast_ttl))
            )
        on_input.setdefault(link.ifindex, []).append(rule)
        engine = Engine.USERSPACE
        if kernel_max_outputs is not None:
            why = kernel_problem(rule, link, outputs, links, kernel_max_outputs, flows[rule.input_key[:3]] > 1)
            if why:
                notes.append(f"userspace: {why}")
            else:
                engine = Engine.KERNEL
                kernel_rules.append(_kernel_rule(rule, link, outputs, links, epochs.get(rule.rule_id, 0)))
        if engine is Engine.USERSPACE:
            worker_rules.append(
                WorkerRule(
                    rule.rule_id,
                    link.ifindex,
                    rule.input_group,
                    rule.input_port,
                    tuple(outputs),
                    source=rule.input_source,
                    rate_limit=rule.rate_limit,
                    epoch=epochs.get(rule.rule_id, 0),
                )
            )
            captures[link.ifindex] = link.name
        views.append(RuleView(rule, engine, RuleState.ACTIVE, "; ".join(notes)))
    return Resolution(
        views=tuple(views),
        worker_rules=tuple(worker_rules),
        captures=captures,
        memberships={k: wanted_memberships(v) for k, v in on_input.items()},
        kernel_rules=tuple(kernel_rules),
    )


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

    def on_apply(self, before: Resolution, after: Resolution, generation: int) -> None:
        old = dataplane_forms(before)
        self.changed_in = {
            rule_id: self.changed_in.get(rule_id, generation) if old.get(rule_id) == form else generation
            for rule_id, form in dataplane_forms(after).items()
        }

    def views(self, res: Resolution, acked: Iterable[int]) -> tuple[RuleView, ...]:
        """`res.views` with userspace rules the workers have not all confirmed shown as PENDING. `acked`:
        the generation each worker has confirmed, -1 for a worker that is starting or restarting."""
        applied = min(acked, default=None)
        if applied is None:
            return res.views
        views = []
        for view in res.views:
            since = self.changed_in.get(view.rule.rule_id, 0)
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


def _went_back(old: tuple[int, int, int, int], cur: tuple[int, int, int, int]) -> bool:
    """Whether an output's (index, packets, bytes, errors) counters are lower than before."""
    return cur[1] < old[1] or cur[2] < old[2] or cur[3] < old[3]


class StatsBook:
    """Sums the cumulative reports of every worker incarnation per rule, and derives rates."""

    def __init__(self) -> None:
        self.latest: dict[int, StatsReport] = {}  # worker slot -> latest report of the live incarnation
        self._by_rule: dict[int, dict[str, RuleCounters]] = {}  # the same reports indexed by rule id
        self.retired: dict[str, _Totals] = {}  # rule id -> counters of workers that exited
        self.retired_drops: dict[str, int] = {}
        self._rate_base: dict[str, tuple[float, int, int]] = {}
        self.since: dict[str, int] = {}  # rule id -> the generation it was (re)added in
        self.rates: dict[str, tuple[float, float]] = {}

    def track(self, rule_id: str, generation: int) -> None:
        """A rule (re)added in `generation`: counts from reports taken before it are not its own."""
        self.since[rule_id] = generation

    def _counts(self, report: StatsReport, rule_id: str) -> bool:
        return report.generation >= self.since.get(rule_id, 0)

    def on_report(self, report: StatsReport) -> None:
        """Take a worker's (or the kernel engine's) cumulative report. A rule whose counters went
        backwards or vanished was reset at the source (its interface came back with a new index, it
        moved between engines, its kernel slot was reset): what had been counted is kept, so totals
        never go backwards. The same holds for one output of a rule that stays (its interface went
        away, so the output was skipped, and came back)."""
        prev = self.latest.get(report.worker_id)
        now = dict(report.rules)
        if prev is not None and prev.pid == report.pid:
            for rule_id, old in prev.rules:
                if rule_id not in self.since or not self._counts(prev, rule_id):
                    continue
                cur = now.get(rule_id)
                if cur is None or cur.packets < old.packets or cur.bytes < old.bytes:
                    self.retire(rule_id, old)
                    continue
                outputs = {o[0]: o for o in cur.outputs}
                gone = tuple(o for o in old.outputs if o[0] not in outputs or _went_back(o, outputs[o[0]]))
                if gone:
                    self.retire(rule_id, RuleCounters(0, 0, gone))
        self.latest[report.worker_id] = report
        self._by_rule[report.worker_id] = now

    def on_worker_exit(self, worker_id: int, live_rules: Container[str]) -> None:
        """Keep what an exited worker counted for the rules that still exist."""
        report = self.latest.pop(worker_id, None)
        self._by_rule.pop(worker_id, None)
        if report is None:
            return
        for rule_id, counters in report.rules:
            if rule_id in live_rules and self._counts(report, rule_id):
                self.retired.setdefault(rule_id, _Totals()).add(counters)
        for reason, n in report.drops:
            self.retired_drops[reason] = self.retired_drops.get(reason, 0) + n

    def retire(self, rule_id: str, counters: RuleCounters) -> None:
        """Keep counters whose source is going away (a kernel slot that is freed)."""
        self.retired.setdefault(rule_id, _Totals()).add(counters)

    def forget_rule(self, rule_id: str) -> None:
        """A removed rule's counters go with it (a rule added again later starts from zero)."""
        self.retired.pop(rule_id, None)
        self.since.pop(rule_id, None)
        for worker_id, report in list(self.latest.items()):
            rules = tuple((rid, c) for rid, c in report.rules if rid != rule_id)
            self.latest[worker_id] = replace(report, rules=rules)
            self._by_rule[worker_id].pop(rule_id, None)
        self._rate_base.pop(rule_id, None)
        self.rates.pop(rule_id, None)

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
        for worker_id, report in self.latest.items():
            counters = self._by_rule[worker_id].get(rule_id)
            if counters is not None and self._counts(report, rule_id):
                acc.add(counters)
        return acc

    def tick(self, rule_ids: Iterable[str], now: float) -> None:
        """Refresh the per-rule rates from the change since the previous tick."""
        for rule_id in rule_ids:
            t = self.totals(rule_id)
            base = self._rate_base.get(rule_id)
            if base is not None and now > base[0]:
                dt = now - base[0]
                self.rates[rule_id] = (max(0, t.packets - base[1]) / dt, max(0, t.bytes - base[2]) * 8 / dt)
            self._rate_base[rule_id] = (now, t.packets, t.bytes)

    def flow_stats(self, rules: Iterable[ForwardingRule]) -> tuple[FlowStats, ...]:
        flows = []
        for rule in rules:
            t = self.totals(rule.rule_id)
            pps, bps = self.rates.get(rule.rule_id, (0.0, 0.0))
            outputs = tuple(
                OutputStats(str(o.group), o.port, o.interface, *t.outputs.get(i, [0, 0, 0]))
                for i, o in enumerate(rule.outputs)
            )
            flows.append(
                FlowStats(
                    input_group=str(rule.input_group),
                    input_port=rule.input_port,
                    packets_relayed=t.packets,
                    bytes_relayed=t.bytes,
                    packets_per_second=round(pps, 1),
                    bits_per_second=round(bps, 1),
                    rule_id=rule.rule_id,
                    input_interface=rule.input_interface,
                    outputs=outputs,
                    drops=dict(t.drops),
                    input_source="" if rule.input_source is None else source_text(rule.input_source),
                    input_protocol=int(rule.input_protocol),
                )
            )
        return tuple(flows)
