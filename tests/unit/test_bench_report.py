"""Writing a benchmark's results (bench/report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_modules import BENCH, load

report = load("report")


def test_a_results_file_rendered_again_without_matplotlib_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_matplotlib(*_args: object) -> None:
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(report, "plot", no_matplotlib)
    results = json.loads((BENCH / "results" / "flows-s16-A6.json").read_text())
    results["errors"] = [e for e in results.get("errors", []) if not e.startswith("no plot:")]
    for _ in range(3):
        written = report.write_all(results, tmp_path, "again")
        results = json.loads(written["json"].read_text())
    notes = [e for e in results["errors"] if e.startswith("no plot:")]
    assert notes == ["no plot: No module named 'matplotlib' (pip install -e '.[bench]')"]
    assert notes[0] in written["md"].read_text() and "png1400" not in written
