"""Texts the supervisor's large answers are made of, kept compressed between answers.

At 10,000 rules these texts were most of what the supervisor held. The texts of one table differ in a few
addresses, names and numbers, so they deflate well:

- `Packer`: a rule's `ListRules` JSON, kept with its view, deflated against a preset dictionary of what such
  texts usually say: one in a sixth of its size, given back in under a microsecond (a compression costs
  about 5 µs, paid once per rule and change).
- `RunTexts`: the templates of the `GetStats` entries and of the metrics lines, which an answer fills with
  each flow's counts, kept per run of consecutive flows and deflated a run at a time.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from ipaddress import IPv4Address, IPv6Address
from operator import is_
from typing import NamedTuple

from mcr.model.rules import ForwardingRule, OutputDestination
from mcr.model.status import Counted

_WBITS = -12  # raw deflate (no header or checksum: the bytes never leave the process), 4 KiB window


def typical_rule() -> ForwardingRule:
    """A rule as most are (an IPv4 input, an IPv4 and an IPv6 output): the texts made for it are what the
    texts of other rules are compressed against."""
    outputs = (
        OutputDestination(IPv4Address("239.0.0.1"), 5000, "eth1", 1),
        OutputDestination(IPv6Address("ff3e::1"), 5000, "eth2", 1),
    )
    return ForwardingRule("", "eth0", IPv4Address("239.0.0.1"), 5000, outputs)


class Packer:
    """Packs and unpacks texts against one dictionary (ASCII or UTF-8 bytes; what goes in comes out)."""

    __slots__ = ("dictionary",)

    def __init__(self, dictionary: bytes) -> None:
        self.dictionary = dictionary

    def pack(self, text: bytes) -> bytes:
        packer = zlib.compressobj(6, zlib.DEFLATED, _WBITS, 4, zlib.Z_DEFAULT_STRATEGY, self.dictionary)
        return packer.compress(text) + packer.flush()

    def unpack(self, packed: bytes) -> bytes:
        return zlib.decompressobj(_WBITS, self.dictionary).decompress(packed)


#: A run of flows ends after a flow whose rule id hashes to 0 modulo 32 (about 32 flows a run), or at 256.
_RUN_END = 31
_RUN_MAX = 256


class _Run(NamedTuple):
    rules: tuple[ForwardingRule, ...]  # the very objects the texts were made from
    packed: bytes  # the texts joined, UTF-8, deflated
    lengths: tuple[int, ...]  # of each text, in characters


class RunTexts:
    """Texts made from the rules of runs of consecutive flows, kept deflated from one answer to the next.

    A `GetStats` or a scrape writes each flow's counts into texts made from its rule (templates). Kept per
    rule, as objects of their own, they were most of what the supervisor held after its first queries at
    10,000 rules (about 1.1 kB a rule at 2.5 outputs, and the allocator kept as much again around them);
    made afresh for each answer they cost more than the rest of it. Here `make` writes the texts of a whole
    run of rules (say, the run's `GetStats` entries joined, with a placeholder for each count), and they are
    kept deflated together: the texts of 32 rules share most of their words, so this takes 25-90 bytes a
    rule, and an answer fills a run's template with the counts of all its flows in one %-format.

    Where a run ends depends on the rule that ends it, not on its position in the table: a rule added,
    changed or removed has only its own run made again. A run is kept while it is made of the very rule
    objects its texts were made from (a changed rule is a new object)."""

    __slots__ = ("_held", "_make")

    def __init__(self, make: Callable[[Sequence[ForwardingRule]], tuple[str, ...]]) -> None:
        self._make = make
        self._held: dict[str, _Run] = {}  # by the id of a run's first rule

    def runs(self, flows: Sequence[Counted]) -> Iterator[tuple[tuple[str, ...], Sequence[Counted]]]:
        """The texts of each run of `flows` (in order, each with the run's flows). The runs are cut, and
        the texts of new ones made and kept, before the first is given; only these runs are kept after."""
        held: dict[str, _Run] = {}
        cut: list[tuple[_Run, Sequence[Counted]]] = []
        start, last = 0, len(flows)
        for end, (rule, _counts) in enumerate(flows, 1):
            if hash(rule.rule_id) & _RUN_END and end - start < _RUN_MAX and end < last:
                continue
            run_flows = flows[start:end]
            rules = tuple([r for r, _c in run_flows])
            run = self._held.get(rules[0].rule_id)
            if run is None or len(run.rules) != len(rules) or not all(map(is_, run.rules, rules)):
                run = self._pack(rules)
            held[rules[0].rule_id] = run
            cut.append((run, run_flows))
            start = end
        self._held = held
        return ((_unpack(run), run_flows) for run, run_flows in cut)

    def _pack(self, rules: tuple[ForwardingRule, ...]) -> _Run:
        texts = self._make(rules)
        return _Run(rules, zlib.compress("".join(texts).encode(), 1), tuple(map(len, texts)))


def _unpack(run: _Run) -> tuple[str, ...]:
    joined = zlib.decompress(run.packed).decode()
    texts, at = [], 0
    for n in run.lengths:
        texts.append(joined[at : at + n])
        at += n
    return tuple(texts)
