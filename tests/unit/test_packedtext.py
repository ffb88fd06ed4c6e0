"""Texts kept per run of rules between answers (mcr.protocol.packedtext.RunTexts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from operator import attrgetter

from mcr.model.rules import ForwardingRule, OutputDestination
from mcr.protocol.packedtext import RunTexts

RULE_ID = attrgetter("rule_id")


def _rules(n: int) -> list[ForwardingRule]:
    out = (
        OutputDestination(IPv4Address("239.9.0.1"), 6000, "out0"),
        OutputDestination(IPv6Address("ff3e::9"), 6000, "out1"),
    )
    return [ForwardingRule(f"r{i}", "in0", IPv4Address(f"239.1.{i // 250}.{i % 250}"), 5000, out) for i in range(n)]


class _Recorder:
    """A `make` that writes each rule's id and repr (two texts a run) and records the runs it was asked for."""

    def __init__(self) -> None:
        self.made: list[tuple[ForwardingRule, ...]] = []

    def __call__(self, rules: Sequence[ForwardingRule]) -> tuple[str, str]:
        self.made.append(tuple(rules))
        return _texts(rules)


def _texts(rules: Sequence[ForwardingRule]) -> tuple[str, str]:
    return "".join(f"<{r.rule_id}>" for r in rules), "".join(repr(r) for r in rules)


def _check(texts: RunTexts[ForwardingRule], rules: Sequence[ForwardingRule]) -> list[tuple[ForwardingRule, ...]]:
    """The runs of `rules` cover them in order, each with the texts of its own rules; the runs."""
    runs = list(texts.runs(rules))
    assert [r for _texts, where in runs for r in rules[where]] == list(rules)
    for run_texts, where in runs:
        assert run_texts == _texts(rules[where])
    return [tuple(rules[where]) for _texts, where in runs]


def test_an_answer_of_the_same_rules_makes_nothing_and_a_change_makes_only_the_runs_it_moves() -> None:
    make = _Recorder()
    texts = RunTexts(make, RULE_ID)
    rules = _rules(1000)
    first = _check(texts, rules)
    assert 10 < len(first) < 100 and max(map(len, first)) <= 256
    assert sum(map(len, make.made)) == 1000
    make.made.clear()
    _check(texts, rules)
    assert make.made == [], "every run kept"

    changed = [*rules]
    changed[500] = replace(rules[500], input_port=7000)  # a changed rule is a new object
    del changed[200]  # a rule removed
    changed.append(replace(rules[0], rule_id="added"))  # one added at the end
    _check(texts, changed)
    assert len(make.made) <= 6
    after = {changed[changed.index(run[-1]) + 1].rule_id for run in make.made if run[-1] is not changed[-1]}
    for run in make.made:  # a run that a change cut anew, or one after it (its start moved)
        ids = {r.rule_id for r in run}
        assert ids & {"r500", "added", "r199", "r201"} or run[0].rule_id in after, "only runs a change moved"
    assert {"r500", "added"} <= {r.rule_id for run in make.made for r in run}


def test_a_run_ends_at_256_rules_when_no_rule_ends_it() -> None:
    ids = [f"q{i}" for i in range(5000) if hash(f"q{i}") & 31][:600]  # no id here ends a run
    rules = [replace(r, rule_id=rule_id) for r, rule_id in zip(_rules(600), ids, strict=True)]
    assert [len(run) for run in _check(RunTexts(_Recorder(), RULE_ID), rules)] == [256, 256, 88]


def test_no_rules_no_runs_and_the_runs_of_before_let_go() -> None:
    make = _Recorder()
    texts = RunTexts(make, RULE_ID)
    _check(texts, _rules(50))
    assert list(texts.runs(())) == []
    make.made.clear()
    _check(texts, _rules(50))
    assert sum(map(len, make.made)) == 50, "nothing was kept from before the empty answer"


def test_the_texts_of_a_run_are_kept_in_a_fraction_of_their_size() -> None:
    """The texts of a table's rules differ in a few addresses and names: a run of them deflates to a tenth."""
    texts = RunTexts(lambda rules: ("".join(repr(r) for r in rules),), RULE_ID)
    rules = _rules(2000)
    list(texts.runs(rules))
    kept = sum(len(run.packed) for run in texts._held.values())
    assert kept * 10 < sum(len(repr(r)) for r in rules), f"{kept / 2000:.0f} bytes a rule"
