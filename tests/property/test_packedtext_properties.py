"""Kept texts come back as they went in, whatever they are (mcr.protocol.packedtext)."""

from collections.abc import Iterable
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from mcr.model.rules import ForwardingRule
from mcr.model.status import zero_counts
from mcr.protocol.packedtext import Packer, RunTexts, typical_rule

PACKER = Packer(repr(typical_rule()).encode())


@given(st.binary(max_size=20_000) | st.text(max_size=5_000).map(str.encode))
def test_what_is_packed_is_unpacked_byte_for_byte(text: bytes) -> None:
    assert PACKER.unpack(PACKER.pack(text)) == text


def test_a_text_like_the_dictionary_is_kept_in_a_fraction_of_its_size() -> None:
    text = repr(typical_rule()).replace("239.0.0.1", "239.7.1.9").encode()
    assert len(PACKER.pack(text)) * 8 < len(text)


def _texts(rules: Iterable[ForwardingRule]) -> tuple[str, str]:
    rules = tuple(rules)
    return "".join(f"{r.rule_id}\0" for r in rules), "".join(f"{r.input_port}," for r in rules)


@given(
    st.lists(st.lists(st.integers(0, 600), max_size=500, unique=True), min_size=1, max_size=4),
    st.sets(st.integers(0, 600)),
)
def test_the_runs_of_any_answers_hold_the_texts_of_their_own_rules(answers: list[list[int]], changed: set[int]) -> None:
    """Answers one after the other over any tables (rules added, removed, moved, and the `changed` ones new
    objects from the second answer on): each answer's runs cover its flows in order, each with the texts of
    its own rules, whatever was kept from the answer before."""
    base = {i: replace(typical_rule(), rule_id=f"id-{i}", input_port=i) for i in range(601)}
    renewed = {i: replace(rule, input_port=rule.input_port + 1000) for i, rule in base.items() if i in changed}
    texts = RunTexts(_texts)
    for k, ids in enumerate(answers):
        rules: list[ForwardingRule] = [(renewed if k and i in renewed else base)[i] for i in ids]
        flows = tuple((rule, zero_counts(len(rule.outputs))) for rule in rules)
        runs = list(texts.runs(flows))
        assert [f for _t, run in runs for f in run] == list(flows)
        for run_texts, run in runs:
            assert run_texts == _texts(r for r, _c in run)
            assert 0 < len(run) <= 256
