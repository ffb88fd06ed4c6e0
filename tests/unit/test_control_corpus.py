"""The corpus of malformed control requests against the pure parts: framing, codec, rule table. The same corpus
runs against a real supervisor in tests/e2e/test_control.py."""

from __future__ import annotations

import pytest

from mcr.model.rules import Limits
from mcr.protocol.control import AddRule, decode_request
from mcr.supervisor.core import RuleTable
from tests.control_corpus import Case, load_corpus, pure_answer

CASES = load_corpus()
VALID = (
    b'{"AddRule": {"rule_id": "ok", "input_interface": "rin", "input_group": "239.1.1.1", "input_port": 5001,'
    b' "outputs": [{"group": "239.2.2.2", "port": 6001, "interface": "rout"}]}}'
)


def test_the_corpus_covers_what_the_issue_lists() -> None:
    names = " ".join(c.name for c in CASES)
    for kind in ("truncated", "as a string", "unknown field", "nested", "NaN", "huge number", "negative port",
                 "rule_id not a string", "empty body", "whitespace", "binary", "BOM", "many outputs",
                 "interface name"):  # fmt: skip
        assert kind in names, kind
    assert len({c.name for c in CASES}) == len(CASES) >= 50


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_malformed_request_gets_its_precise_error(case: Case) -> None:
    table = RuleTable(Limits())
    table.add(decode_request(VALID))
    before = dict(table.rules)
    answer = pure_answer(case.request, table)
    assert answer is not None, f"{case.name}: accepted"
    assert case.error and case.error in answer, f"{case.name}: {answer!r}"
    assert table.rules == before, "a refused request changed the rule table"


def test_a_valid_request_is_not_refused() -> None:
    """The oracle itself: a well-formed request gets no error, so every error above is the input's fault."""
    request = b'{"AddRule": {"input_interface": "rin", "input_group": "239.1.1.1", "input_port": 5001, "outputs": []}}'
    assert isinstance(decode_request(request), AddRule)
    assert pure_answer(request) is None
