"""Texts the supervisor's large answers are made of, kept compressed between answers (`RunTexts`): the JSON
of `ListRules`, and the templates of the `GetStats` entries and of the metrics lines, which an answer fills
with each flow's counts. At 10,000 rules these texts were most of what the supervisor held."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from operator import is_
from typing import Generic, NamedTuple, TypeVar

#: A run ends after a source whose rule id hashes to 0 modulo 32 (about 32 a run), or at 256 sources.
_RUN_END = 31
_RUN_MAX = 256

S = TypeVar("S")  # what a run's texts are made from: rules, or their views


class _Run(NamedTuple):
    sources: tuple[object, ...]  # the very objects the texts were made from
    packed: bytes  # the texts joined, UTF-8, deflated
    lengths: tuple[int, ...]  # of each text, in characters


class RunTexts(Generic[S]):
    """Texts made from runs of consecutive rules (or their views), kept deflated from one answer to the next.

    A `GetStats` or a scrape writes each flow's counts into texts made from its rule (templates); `ListRules`
    is made of each rule's view's JSON. Kept per rule, as objects of their own, these texts were most of
    what the supervisor held after its first queries at 10,000 rules (about 1.2 kB a rule at 2.5 outputs,
    and the allocator kept as much again around them); made afresh for each answer they cost more than the
    rest of it. Here `make` writes the texts of a whole run (say, the run's `GetStats` entries joined, with a
    placeholder for each count), and they are kept deflated together: the texts of 32 rules share most of
    their words, so this takes 25-60 bytes a rule, and an answer fills a run's template with the counts of
    all its flows in one %-format.

    Where a run ends depends on the rule that ends it (`rule_id`), not on its position in the table: a rule
    added, changed or removed has only its own run made again (and now and then the next: a run cut at 256
    moves with its start). A run is kept while it is made of the very objects its texts were made from (a
    changed rule, or a view in a new state, is a new object)."""

    __slots__ = ("_held", "_make", "_rule_id")

    def __init__(self, make: Callable[[Sequence[S]], tuple[str, ...]], rule_id: Callable[[S], str]) -> None:
        self._make = make
        self._rule_id = rule_id
        self._held: dict[str, _Run] = {}  # by the rule id of a run's first source

    def runs(self, sources: Sequence[S]) -> Iterator[tuple[tuple[str, ...], slice]]:
        """The texts of each run of `sources`, in order, with where the run is in them. The runs are cut, and
        the texts of new ones made and kept, before the first is given; only these runs are kept after."""
        held: dict[str, _Run] = {}
        cut: list[tuple[_Run, slice]] = []
        start, last, rule_id = 0, len(sources), self._rule_id
        for end, source in enumerate(sources, 1):
            if hash(rule_id(source)) & _RUN_END and end - start < _RUN_MAX and end < last:
                continue
            run_sources = tuple(sources[start:end])
            first = rule_id(run_sources[0])
            run = self._held.get(first)
            if run is None or len(run.sources) != len(run_sources) or not all(map(is_, run.sources, run_sources)):
                texts = self._make(run_sources)
                run = _Run(run_sources, zlib.compress("".join(texts).encode(), _LEVEL), tuple(map(len, texts)))
            held[first] = run
            cut.append((run, slice(start, end)))
            start = end
        self._held = held
        return ((_unpack(run), where) for run, where in cut)


_LEVEL = 6  # zlib's default: against level 1, a third smaller, and 0.4 ms more to make a run


def _unpack(run: _Run) -> tuple[str, ...]:
    joined = zlib.decompress(run.packed).decode()
    texts, at = [], 0
    for n in run.lengths:
        texts.append(joined[at : at + n])
        at += n
    return tuple(texts)
