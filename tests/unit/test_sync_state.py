"""A rule is active only when the data plane has it: SyncTracker's pending/active logic, the rule epoch that
makes a changed rule's counters restart, and how both reach the worker and the stats book. No root needed."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from mcr.model.links import Link
from mcr.model.rules import Engine, Limits, OutputDestination
from mcr.model.status import RuleState
from mcr.protocol.control import AddRule
from mcr.protocol.worker import (
    RuleCounters,
    StatsReport,
    Sync,
    WorkerOutput,
    WorkerRule,
    decode_command,
    encode_command,
)
from mcr.supervisor.core import RuleTable, StatsBook, SyncTracker, resolve
from mcr.worker.loop import DataPlane

MAC0, MAC1 = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
LINKS = {
    "eth0": Link("eth0", 2, True, 1500, (IPv4Address("10.0.0.1"),), MAC0),
    "eth1": Link("eth1", 3, True, 1500, (IPv4Address("10.0.1.1"),), MAC1),
}
OUT = OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1", 1)
PENDING = "workers are applying the rule set (generation {})"


def table_with(*ids: str) -> RuleTable:
    table = RuleTable(Limits())
    for i, rule_id in enumerate(ids):
        table.add(AddRule(rule_id, "eth0", IPv4Address("239.1.1.1") + i, 5000, (OUT,)))
    return table


class Plane:
    """The supervisor's side of the bookkeeping, without processes: resolve, then apply a generation."""

    def __init__(self, table: RuleTable, kernel: int | None = None) -> None:
        self.table, self.kernel = table, kernel
        self.tracker = SyncTracker()
        self.res = resolve((), {})
        self.generation = 0

    def apply(self, links: dict[str, Link] = LINKS) -> int:
        after = resolve(self.table.rules.values(), links, self.kernel)
        self.generation += 1
        self.tracker.on_apply(self.res, after, self.generation)
        self.res = after
        return self.generation

    def states(self, *acked: int) -> dict[str, tuple[str, str]]:
        return {v.rule.rule_id: (v.state.value, v.state_reason) for v in self.tracker.views(self.res.views, acked)}


def test_a_rule_is_pending_until_every_worker_confirmed_its_generation() -> None:
    plane = Plane(table_with("a"))
    assert plane.apply() == 1
    assert plane.states(-1) == {"a": ("pending", PENDING.format(1))}, "a worker still starting has nothing"
    assert plane.states(0) == {"a": ("pending", PENDING.format(1))}
    assert plane.states(1, 0) == {"a": ("pending", PENDING.format(1))}, "one of two workers is behind"
    assert plane.states(1) == {"a": ("active", "")}
    assert plane.states(2, 1) == {"a": ("active", "")}


def test_confirmed_generations_are_forgotten_and_the_states_stay_as_they_were() -> None:
    plane = Plane(table_with("a", "b"))
    plane.apply()
    plane.table.add(AddRule("c", "eth0", IPv4Address("239.1.1.9"), 5000, (OUT,)))
    plane.apply()
    seen = {acked: plane.states(acked) for acked in (1, 2, 3)}
    plane.tracker.settle([2, 1])  # one worker has not confirmed generation 2: c's is kept
    assert plane.tracker.changed_in == {"c": 2}
    plane.tracker.settle([2, 2])
    assert plane.tracker.changed_in == {}
    assert {acked: plane.states(acked) for acked in (2, 3)} == {a: seen[a] for a in (2, 3)}
    assert plane.states(-1) == {r: ("pending", PENDING.format(2)) for r in "abc"}, "a worker restarts"
    plane.table.remove("a")
    plane.table.add(AddRule("a", "eth0", IPv4Address("239.1.1.1"), 5000, (OUT, replace(OUT, port=6001))))
    plane.apply()  # a changed, b and c did not: only a is pending
    assert plane.states(2) == {"b": ("active", ""), "c": ("active", ""), "a": ("pending", PENDING.format(3))}


def test_only_rules_whose_data_plane_form_changed_go_back_to_pending() -> None:
    plane = Plane(table_with("a"))
    plane.apply()
    plane.table.add(AddRule("b", "eth0", IPv4Address("239.1.1.9"), 5000, (OUT,)))
    plane.apply()  # generation 2 adds b; a's form is the same as in generation 1
    assert plane.states(1) == {"a": ("active", ""), "b": ("pending", PENDING.format(2))}
    assert plane.states(2) == {"a": ("active", ""), "b": ("active", "")}
    plane.apply()  # nothing changed: nothing pending while the workers confirm generation 3
    assert plane.states(2) == {"a": ("active", ""), "b": ("active", "")}
    # a link change that re-resolves both rules: the output is gone, its note stays beside the pending one
    plane.apply({"eth0": LINKS["eth0"]})
    note = "output[0] eth1 does not exist"
    assert plane.states(3) == {r: ("pending", f"{PENDING.format(4)}; {note}") for r in "ab"}
    assert plane.states(4) == {r: ("active", note) for r in "ab"}


def test_a_changed_rule_is_pending_again() -> None:
    plane = Plane(table_with("a"))
    plane.apply()
    rule = plane.table.rules["a"]
    plane.table.index.add(replace(rule, outputs=(replace(OUT, port=6001),)))
    plane.apply()
    assert plane.states(1) == {"a": ("pending", PENDING.format(2))}
    assert plane.states(2) == {"a": ("active", "")}


def test_waiting_rules_stay_waiting_and_kernel_rules_are_active_at_once() -> None:
    plane = Plane(table_with("a"))
    plane.apply({"eth1": LINKS["eth1"]})
    assert plane.states(-1) == {"a": ("waiting", "input interface eth0 does not exist")}
    kernel = Plane(table_with("k"), kernel=16)
    kernel.apply()
    (view,) = kernel.tracker.views(kernel.res.views, [-1])
    assert (view.engine, view.state, view.state_reason) == (Engine.KERNEL, RuleState.ACTIVE, "")
    # moved to userspace (the output lost its Ethernet address): pending until the workers have it
    kernel.apply({**LINKS, "eth1": replace(LINKS["eth1"], mac=b"")})
    (view,) = kernel.tracker.views(kernel.res.views, [1])
    assert (view.engine, view.state) == (Engine.USERSPACE, RuleState.PENDING)
    assert view.state_reason.startswith(PENDING.format(2) + "; userspace: output[0] eth1 is not an Ethernet")


def test_without_workers_the_resolution_is_shown_as_it_is() -> None:
    plane = Plane(table_with("a"))
    plane.apply()
    assert plane.tracker.views(plane.res.views, []) == plane.res.views


def test_the_epoch_reaches_both_engines_and_survives_the_channel() -> None:
    table = table_with("a")
    res = resolve(table.rules.values(), LINKS, None, {"a": 7})
    (wr,) = res.worker_rules
    assert wr.epoch == 7
    assert decode_command(encode_command(Sync(9, res.worker_rules))) == Sync(9, res.worker_rules)
    (kr,) = resolve(table.rules.values(), LINKS, 16, {"a": 7}).kernel_rules
    assert kr.epoch == 7
    assert resolve(table.rules.values(), LINKS).worker_rules[0].epoch == 0, "a rule never re-added"


def test_worker_restarts_a_rules_counters_only_for_a_new_epoch(data_plane: DataPlane) -> None:
    group = IPv4Address("239.1.1.1")
    out = WorkerOutput(0, IPv4Address("239.2.2.2"), 6000, 1, IPv4Address("127.0.0.1"), 1)
    rule = WorkerRule("a", 1, group, 5000, (out,))
    data_plane.sync(Sync(1, (rule,)))
    slot = data_plane.slots["a"]
    slot.packets, slot.bytes, slot.outputs[0].packets = 10, 1000, 10
    # re-resolved (an output moved, e.g. after a link change) in the same epoch: the counts go on
    moved = replace(rule, outputs=(replace(out, port=6001),))
    data_plane.sync(Sync(2, (moved,)))
    assert (data_plane.slots["a"].packets, data_plane.slots["a"].bytes) == (10, 1000)
    # re-added (a reload changed it): a new epoch, counting from zero, every output too
    data_plane.sync(Sync(3, (replace(moved, epoch=3),)))
    fresh = data_plane.slots["a"]
    assert (fresh.packets, fresh.bytes, [o.packets for o in fresh.outputs]) == (0, 0, [0])


def report(generation: int, packets: int) -> StatsReport:
    counters = RuleCounters(packets, packets * 10, ((0, packets, packets * 10, 0),))
    return StatsReport(0, 100, (("a", counters),), (), 0, 0, 0, generation)


def test_a_reloaded_rule_counts_from_zero_in_the_stats_book() -> None:
    """What the supervisor does on a reload that changes rule a: forget its counters, track it from the next
    generation; the worker then reports it from zero (a new epoch). Reports taken before do not count."""
    table = table_with("a")
    book = StatsBook()
    book.track("a", 0)
    book.on_report(report(1, 500))
    book.forget_rule("a")
    book.track("a", 2)
    book.on_report(report(1, 520))  # the worker had not applied generation 2 yet
    assert book.flow_stats(table.rules.values())[0].packets_relayed == 0
    book.on_report(report(2, 3))
    (flow,) = book.flow_stats(table.rules.values())
    assert (flow.packets_relayed, flow.bytes_relayed, flow.outputs[0].packets_sent) == (3, 30, 3)


def test_delta_reports_merge_with_what_the_book_holds() -> None:
    book = StatsBook()
    book.track("a", 0)
    book.track("b", 0)
    c = RuleCounters

    def rep(rules: tuple[tuple[str, RuleCounters], ...], delta: bool, gone: tuple[str, ...] = ()) -> StatsReport:
        return StatsReport(0, 100, rules, (), 0, 0, 0, 1, delta=delta, gone=gone)

    book.on_report(rep((("a", c(5, 50, ())), ("b", c(7, 70, ()))), delta=False))
    book.on_report(rep((("a", c(6, 60, ())),), delta=True))
    assert (book.totals("a").packets, book.totals("b").packets) == (6, 7), "b is unchanged, so not in the delta"
    book.on_report(rep((), delta=True, gone=("b",)))
    assert book.totals("b").packets == 7, "a rule the worker dropped keeps what it had counted"
    book.on_report(rep((("a", c(2, 20, ())),), delta=True))
    assert book.totals("a").packets == 8, "counters that went back: the earlier ones are kept"


def test_rates_follow_the_rules_that_moved_and_fall_back_to_zero() -> None:
    book = StatsBook()
    book.track("a", 0)
    book.track("b", 0)
    c = RuleCounters

    def rep(a: int, b: int) -> StatsReport:
        return StatsReport(0, 100, (("a", c(a, a * 10, ())), ("b", c(b, b * 10, ()))), (), 0, 0, 0, 1)

    book.on_report(rep(0, 0))
    book.tick({"a", "b"}, 10.0)
    book.on_report(rep(100, 0))
    assert book.moved == {"a"}, "b's counters did not change"
    book.tick({"a", "b"}, 11.0)
    assert book.rates == {"a": (100.0, 8000.0)}, "b was not looked at: no rate is a rate of zero"
    book.on_report(rep(100, 0))
    book.tick({"a", "b"}, 12.0)
    assert book.rates["a"] == (0.0, 0.0), "a flow that stopped reads zero at the next tick"
    book.on_report(rep(100, 50))
    book.tick({"a", "b"}, 14.0)
    assert book.rates["b"] == (25.0, 2000.0), "over the time since the last tick, when b was last looked at"


@pytest.mark.parametrize(
    "counters",
    [
        RuleCounters(0, 0, ()),
        RuleCounters(3, 300, ((0, 3, 300, 0), (2, 1, 100, 2))),
        RuleCounters(2**63 - 1, 2**63 - 1, ((1, 2**63 - 1, 0, 0),)),
        RuleCounters(2**64, 5, ((0, 1, 2**70, 0),)),  # more than the book packs in 64 bits: kept as it is
        RuleCounters(4, 40, ((0, 4, 40, 0),), (("rate_limited", 9), ("ttl_expired", 1))),
    ],
)
def test_the_book_gives_back_exactly_what_a_worker_counted(counters: RuleCounters) -> None:
    """The book packs a worker's counters per rule; whatever their shape, the totals are what was reported,
    through a later full report, a worker exit, and a rule whose counters went back."""
    book = StatsBook()
    book.track("a", 0)

    def rep(pid: int, c: RuleCounters, delta: bool = False) -> StatsReport:
        return StatsReport(0, pid, (("a", c),), (), 0, 0, 0, 1, delta=delta)

    def seen(c: RuleCounters) -> tuple[object, ...]:
        t = book.totals("a")
        return (t.packets, t.bytes, t.outputs, t.drops)

    book.on_report(rep(100, counters))
    expected = (
        counters.packets,
        counters.bytes,
        {i: [p, b, e] for i, p, b, e in counters.outputs},
        dict(counters.drops),
    )
    assert seen(counters) == expected
    assert book.latest[0].rules == (), "the report's rules are booked, not kept a second time with it"
    book.on_report(rep(100, counters))
    assert seen(counters) == expected, "the same counters again: nothing added"
    book.on_report(rep(100, RuleCounters(0, 0, ()), delta=True))
    assert seen(counters) == expected, "counters that went back to zero: what they had counted is kept"
    book.on_worker_exit(0, {"a"})
    assert seen(counters) == expected, "and kept when the worker exits"


def test_rules_that_went_idle_share_their_zero_rate() -> None:
    book = StatsBook()
    for rule_id in ("a", "b"):
        book.track(rule_id, 0)
    for now, n in ((1.0, 0), (2.0, 10), (3.0, 10)):
        counters = RuleCounters(n, n * 10, ())
        book.on_report(StatsReport(0, 100, (("a", counters), ("b", counters)), (), 0, 0, 0, 1))
        book.tick({"a", "b"}, now)
    assert book.rates == {"a": (0.0, 0.0), "b": (0.0, 0.0)}
    assert book.rates["a"] is book.rates["b"], "one shared tuple, not one per idle rule"


def test_a_rule_whose_counts_moved_is_listed_again_with_its_new_counts() -> None:
    table = table_with("a")
    book = StatsBook()
    book.track("a", 0)
    book.on_report(report(1, 5))
    (before,) = book.counted(table.rules.values())
    assert book.counted(table.rules.values())[0] is before, "nothing moved: the same entry"
    book.on_report(report(1, 8))
    (after,) = book.flow_stats(table.rules.values())
    assert (after.packets_relayed, after.outputs[0].packets_sent) == (8, 8)
    assert (after.input_group, after.outputs[0].group) == ("239.1.1.1", "239.2.2.2")


def test_a_full_report_of_a_newer_generation_rebuilds_only_what_it_changes() -> None:
    table = table_with("a")
    book = StatsBook()
    book.track("a", 2)
    book.on_report(report(1, 5))  # taken before the rule's generation: not its counts
    (before,) = book.flow_stats(table.rules.values())
    assert before.packets_relayed == 0
    book.on_report(report(2, 5))  # the same counters, now counting
    (counted,) = book.counted(table.rules.values())
    assert counted[1].packets == 5
    book.tick({"a"}, 1.0)
    book.on_report(report(3, 5))  # the same counters under a newer generation: nothing changed
    assert book.counted(table.rules.values())[0] is counted
    assert "a" not in book.moved
