"""What the atheris harnesses share: the time-bounded run and the one rule every target checks."""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris


def run(target: Callable[[bytes], None]) -> None:
    """libFuzzer's own flags pass through: ``-max_total_time=180``, ``-runs=N``, a corpus directory."""
    args = list(sys.argv)
    if not any(a.startswith(("-max_total_time=", "-runs=")) for a in args[1:]):
        args.append("-max_total_time=60")  # bounded unless told otherwise
    atheris.Setup(args, target)
    atheris.Fuzz()
