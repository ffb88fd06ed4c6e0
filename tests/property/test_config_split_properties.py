"""A TOML file read a [[rule]] table at a time (so that a reload parses only the tables that changed) reads
as the whole file does: the same tables, or a refusal where the whole file is refused, whatever lines it holds
(headers, arrays over several lines, multi-line strings, header-like values and comments)."""

import tomllib
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcr.model.config import rule_items
from mcr.model.errors import ConfigError

HEADERS = ["[[rule]]", "  [[rule]]  # the next rule", "[rule]", "[rule.rate_limit]", "[[rule.outputs]]", "[supervisor]",
           "[limits]", "[[other]]", '["rule"]', "[[ rule ]]"]  # fmt: skip
KEYS = ['id = "a"', 'id = "b"', "pps = 5", "rule = 1", "rule.x = 2", "# [[rule]]", "", "a = { b = 1 }"]
# lines that open or close something a later line is part of, and values that look like headers
SPANS = ["outputs = [", "]", "[1],", "[[1]],", "[[true]],", "[[true]]", "[[rule]],", 'x = """', '"""', "x = \'\'\'",
         "\'\'\'", '"[[rule]]",']  # fmt: skip


def _whole(text: str) -> dict[str, Any] | None:
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):
        return None


# a few lines of each kind, so that the orders that could fool a split (a header inside a string or an array
# that the text on both sides of it closes) come up
lines = st.lists(st.sampled_from(HEADERS[:6]) | st.sampled_from(KEYS[:4]) | st.sampled_from(SPANS), max_size=14)


@settings(max_examples=1500)
@given(lines, st.sampled_from(["\n", "\r\n"]))
# a string that holds a [[rule]] table and a header, closed in the text after it
@example(["[supervisor]", 'x = """', "[[rule]]", 'id = "a"', "[limits]", '"""'], "\n")
# an array that a value like a header closes after a line that is not a value ([[rule]]): refused whole
@example(["x = [", "[[rule]]", 'id = "a"', "[[true]]", "]"], "\n")
# a sub-table after another section still belongs to the last rule
@example(["[[rule]]", 'id = "a"', "[supervisor]", "[rule.rate_limit]", "pps = 5"], "\r\n")
def test_reading_a_table_at_a_time_reads_as_the_whole_file(lines: list[str], newline: str) -> None:
    text = newline.join(lines)
    whole = _whole(text)
    try:
        doc, items = rule_items("f", text, {})
    except ConfigError:
        assert whole is None or not isinstance(whole.get("rule"), list), "refused, but the whole file reads"
        return
    assert whole is not None, "read, but the whole file is refused"
    tables = [item for _key, item in items]
    assert {**doc, "rule": tables} == {"rule": [], **whole}
