"""`make demo`'s own command, run as a user would with its output piped (a CI log, `| tee`)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_relays_everything_and_prints_cleanly_off_a_terminal(root_with_netns: None) -> None:
    argv = [sys.executable, "-m", "mcr", "demo", "--count", "20000", "--rate", "20000"]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # the verdict lines stand alone, after the table's last border
    verdict = lines.index("sink: received 20000 of 20000 sent, lost 0, duplicated 0, corrupted 0")
    assert lines[verdict - 1].startswith("└") and lines[verdict + 1] == "relay OK", result.stdout
    # the last table shows the final counters, none of its cells cut ("…") at 80 columns
    row = next(line for line in lines[:verdict] if line.startswith("│ demo"))
    assert "20000/20000" in row and "28000000" in row and "239.2.2.2:6001@rout 20000/0" in row, row
    assert "…" not in result.stdout
    assert lines[-1] == "namespaces removed"
