#!/usr/bin/env python3
"""The supervisor's share of a `GetStats` when every rule's counters moved since the last answer (issue 18).

    python3 bench/statsbuild.py                  # no root, no network: 10,000 rules, 5 answers
    python3 bench/statsbuild.py --rules 1000 --rounds 10

`bench/scale.py` times the queries over a relay with no traffic, whose counters do not move: each answer is
then mostly the entries kept from the one before. Here the supervisor's own `StatsBook` and `ResponseEncoder`
take a full worker report in which every rule counted (the scale run's rules, 2.5 outputs on average), then
build the answer: `counted` (the entries) and the encoding, each timed, for a few rounds of new counts;
and a metrics scrape after the rates moved once more (its entries and their lines built afresh).
The client's decoding of the answer (about 6 MB of JSON at 10,000 rules, `decode_response`) is timed too,
and the sum of the three ("answer, all"): a `GetStats` then takes that plus the socket's copy. The garbage
collector runs as in the supervisor (`collector_settings`: the rules frozen, full passes rare).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import rule_doc, toml_rule

from mcr.model.config import parse_config
from mcr.protocol.control import CountedStats, ResponseEncoder, Stats, decode_response
from mcr.protocol.worker import RuleCounters, StatsReport
from mcr.supervisor.core import StatsBook
from mcr.supervisor.main import collector_settings
from mcr.supervisor.metrics import Snapshot, exposition, flow_line_runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rules", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    rules = parse_config("".join(toml_rule(rule_doc(i)) + "\n" for i in range(a.rules)), "scale.toml").rules
    ids = {r.rule_id: r for r in rules}
    collector_settings()  # as the supervisor collects its garbage, the table frozen as at its start
    book, encoder = StatsBook(), ResponseEncoder()
    lines = flow_line_runs()  # the exporter's line templates, kept between scrapes as it keeps them
    print(
        f"| round ({a.rules:,} rules, all counting) | report booked | counted | encoded | MB | client decoded |"
        " answer, all (ms) | scrape (ms) |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for k in range(1, a.rounds + 1):
        counted = tuple(
            (r.rule_id, RuleCounters(1000 * k + i, 1400 * (1000 * k + i), tuple(
                (j, 1000 * k + i, 1400 * (1000 * k + i), 0) for j in range(len(r.outputs)))))
            for i, r in enumerate(rules)
        )  # fmt: skip
        t0 = time.perf_counter()
        book.on_report(StatsReport(0, 1, counted, (), 0, 0, 0, 1))
        book.tick(ids, float(k))
        t1 = time.perf_counter()
        flows = book.counted(rules)
        t2 = time.perf_counter()
        answer = encoder.encode(CountedStats(flows))
        t3 = time.perf_counter()
        decoded = decode_response(answer[:-1])  # what the client does with it (control_client, top)
        t3d = time.perf_counter()
        assert isinstance(decoded, Stats) and len(decoded.flows) == len(rules)
        del decoded  # a one-shot client's exit, not in the answer's time
        book.tick(ids, k + 0.5)  # the rates moved again: a scrape builds its entries afresh too
        t4 = time.perf_counter()
        exposition(Snapshot(flows=book.counted(rules)), "text/plain", cache=lines)
        t5 = time.perf_counter()
        ms = [f"{(b - a) * 1e3:.0f}" for a, b in ((t0, t1), (t1, t2), (t2, t3))]
        answered = f"{(t3d - t3) * 1e3:.0f} | {(t3d - t1) * 1e3:.0f}"
        print(f"| {k} | {' | '.join(ms)} | {len(answer) / 1e6:.1f} | {answered} | {(t5 - t4) * 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
