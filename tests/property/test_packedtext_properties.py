"""Runs of kept texts hold the texts of their own rules, whatever answers came before (mcr.protocol.packedtext)."""

from collections.abc import Sequence
from ipaddress import IPv4Address
from operator import attrgetter

from hypothesis import given
from hypothesis import strategies as st

from mcr.model.rules import ForwardingRule
from mcr.protocol.packedtext import RunTexts


def _texts(rules: Sequence[ForwardingRule]) -> tuple[str, str]:
    return "".join(f"{r.rule_id}\0" for r in rules), "".join(f"{r.input_port}," for r in rules)


@given(
    st.lists(st.lists(st.integers(0, 600), max_size=500, unique=True), min_size=1, max_size=4),
    st.sets(st.integers(0, 600)),
)
def test_the_runs_of_any_answers_hold_the_texts_of_their_own_rules(answers: list[list[int]], changed: set[int]) -> None:
    """Answers one after the other over any tables (rules added, removed, moved, and the `changed` ones new
    objects from the second answer on): each answer's runs cover its rules in order, each with the texts of
    its own rules, whatever was kept from the answer before."""
    base = {i: ForwardingRule(f"id-{i}", "eth0", IPv4Address("239.1.1.1"), i, ()) for i in range(601)}
    renewed = {i: ForwardingRule(f"id-{i}", "eth0", IPv4Address("239.1.1.1"), i + 1000, ()) for i in changed}
    texts = RunTexts(_texts, attrgetter("rule_id"))
    for k, ids in enumerate(answers):
        rules = [(renewed if k and i in renewed else base)[i] for i in ids]
        runs = list(texts.runs(rules))
        assert [r for _t, where in runs for r in rules[where]] == rules
        for run_texts, where in runs:
            assert run_texts == _texts(rules[where])
            assert 0 < len(rules[where]) <= 256
