"""`StatsBook`'s shortcuts over generated reports, worker exits, re-adds and retirements: `counted` sums a rule's
packed counters directly in the common case (`_packed_sum`), and a report checks a rule's counters for going
back only where they did not all grow (`_advanced`); neither changes what is counted."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address
from unittest.mock import patch

from hypothesis import example, given
from hypothesis import strategies as st

from mcr.model.rules import ForwardingRule, OutputDestination
from mcr.model.status import FlowCounts
from mcr.protocol.worker import RuleCounters, StatsReport, decode_stats, encode_stats
from mcr.supervisor import core
from mcr.supervisor.core import StatsBook

IDS = ("a", "b", "c")
OUTPUTS = {"a": 0, "b": 1, "c": 3}  # outputs per rule
RULES = {
    rule_id: ForwardingRule(
        rule_id,
        "eth0",
        IPv4Address("239.1.1.1") + i,
        5000,
        tuple(OutputDestination(IPv4Address("239.2.2.2") + k, 6000, "eth1") for k in range(n)),
    )
    for i, (rule_id, n) in enumerate(OUTPUTS.items())
}

# counts that pack, often a few apart so that the next report's are as many or more, now and then one past
# 64 bits (held unpacked)
numbers = st.one_of(st.integers(0, 3), st.integers(0, 10**6), st.integers(2**63, 2**64))


@st.composite
def counters(draw: st.DrawFn, rule_id: str) -> RuleCounters:
    """A rule's counters: its outputs in order, or some missing, out of order or unknown; sometimes drops."""
    n = OUTPUTS[rule_id]
    indexes = draw(st.one_of(st.just(list(range(n))), st.lists(st.integers(0, n + 1), unique=True, max_size=n + 1)))
    outputs = tuple((i, draw(numbers), draw(numbers), draw(st.integers(0, 9))) for i in indexes)
    drops = draw(st.one_of(st.just(()), st.lists(st.tuples(st.sampled_from(["fragment", "rate_limited"]), numbers),
                                                 max_size=2, unique_by=lambda d: d[0]).map(tuple)))  # fmt: skip
    return RuleCounters(draw(numbers), draw(numbers), outputs, drops)


@st.composite
def events(draw: st.DrawFn) -> tuple[object, ...]:
    kind = draw(st.sampled_from(["report", "report", "report", "exit", "track", "retire", "tick"]))
    # a worker slot's next incarnation reports only after the supervisor booked the exit of the one before
    # (`on_worker_exit`), so a slot's reports all carry one pid here
    worker = draw(st.integers(0, 2))
    if kind == "report":
        ids = draw(st.lists(st.sampled_from(IDS), unique=True))
        rules = tuple((rule_id, draw(counters(rule_id))) for rule_id in ids)
        delta = draw(st.booleans())
        gone = tuple(draw(st.lists(st.sampled_from(IDS), unique=True))) if delta else ()
        return (kind, StatsReport(worker, 1000 + worker, rules, (), 0, 0, 0, draw(st.integers(0, 4)),
                                  delta=delta, gone=gone))  # fmt: skip
    if kind == "exit":
        return (kind, worker)
    if kind == "track":
        return (kind, draw(st.sampled_from(IDS)), draw(st.integers(0, 4)))
    if kind == "retire":
        return (kind, draw(st.sampled_from(IDS)), draw(counters("c")))
    return (kind, draw(st.floats(0.5, 3.0)))


def expected(book: StatsBook, rule: ForwardingRule) -> FlowCounts:
    t = book.totals(rule.rule_id)
    pps, bps = book.rates.get(rule.rule_id, (0.0, 0.0))
    outputs = tuple(v for i in range(len(rule.outputs)) for v in t.outputs.get(i, (0, 0, 0)))
    return FlowCounts(t.packets, t.bytes, round(pps, 1), round(bps, 1), outputs, tuple(t.drops.items()))


def _reported(rule_id: str, outputs: tuple[tuple[int, int, int, int], ...], packets: int = 7) -> tuple[object, ...]:
    counters = RuleCounters(packets, 100 * packets, outputs)
    return ("report", StatsReport(0, 1000, ((rule_id, counters),), (), 0, 0, 0, 1, delta=True))


def tracked() -> StatsBook:
    """A book that counts for every rule from generation 1 on."""
    book = StatsBook()
    for rule_id in IDS:
        book.track(rule_id, 1)
    return book


def apply(book: StatsBook, step: tuple[object, ...], now: float) -> float:
    match step:
        case ("report", StatsReport() as report):
            book.on_report(report)
        case ("exit", int(worker)):
            book.on_worker_exit(worker, RULES)
        case ("track", str(rule_id), int(generation)):
            book.forget_rule(rule_id)
            book.track(rule_id, generation)
        case ("retire", str(rule_id), RuleCounters() as retired):
            book.retire(rule_id, retired)
        case ("tick", float(dt)):
            now += dt
            book.tick(RULES, now)
    return now


@given(st.lists(events(), max_size=12))
@example([_reported("b", ((0, 5, 500, 0),)), _reported("b", ((1, 6, 600, 0),), packets=8)])  # all grew, moved
def test_a_report_whose_counts_only_grew_keeps_what_checking_it_would(steps: list[tuple[object, ...]]) -> None:
    """`_advanced` lets the book skip `_check` for a rule whose packed counters all grew or stayed: the totals
    are what they are when every report is checked."""
    skipping, checking = tracked(), tracked()
    now = 0.0
    for step in steps:
        apply(skipping, step, now)
        with patch.object(core, "_advanced", lambda old, new: False):
            now = apply(checking, step, now)
        for rule_id in IDS:
            assert skipping.totals(rule_id) == checking.totals(rule_id)


@given(st.lists(events(), max_size=12))
@example([_reported("b", ((1, 5, 500, 0),))])  # its one output's counters under another index
@example([_reported("c", ((2, 5, 500, 0), (0, 6, 600, 0), (1, 7, 700, 1)))])  # out of order
def test_the_counts_of_every_rule_are_what_totals_sums(steps: list[tuple[object, ...]]) -> None:
    book = tracked()
    now = 0.0
    for step in steps:
        now = apply(book, step, now)
        for rule, counts in book.counted(RULES.values()):
            assert counts == expected(book, rule)


def _as_sent(step: tuple[object, ...]) -> tuple[object, ...]:
    """A report step as the supervisor gets it from a worker's stats pipe: through a frame, whose rules without
    drops arrive packed (bytes). Counts past 2**63, which no worker sends and a frame cannot carry, stay."""
    if step[0] != "report":
        return step
    try:
        return ("report", decode_stats(encode_stats(step[1])))  # type: ignore[arg-type]
    except struct.error:
        return step


@given(st.lists(events(), max_size=12))
@example([_reported("b", ((0, 5, 500, 0),)), ("tick", 1.0), _reported("b", ((0, 9, 900, 0),), 9), ("tick", 1.0)])
def test_counts_that_arrive_packed_book_as_counters_do(steps: list[tuple[object, ...]]) -> None:
    """The book keeps a worker's packed counts as they came (`_hold`) and reads a tick's sums from them
    (`_sums`): totals, rates and entries are the same as for the same reports read into counters."""
    packed, plain = tracked(), tracked()
    now = 0.0
    for step in steps:
        apply(packed, _as_sent(step), now)
        now = apply(plain, step, now)
        for rule_id in IDS:
            t = packed.totals(rule_id)
            assert t == plain.totals(rule_id)
            assert packed._sums(rule_id) == (t.packets, t.bytes), "a tick's sums are the totals'"
        assert packed.rates == plain.rates
        assert packed.counted(RULES.values()) == plain.counted(RULES.values())
