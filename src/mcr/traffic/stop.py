"""The stop flag shared by the generator and the sink."""

from __future__ import annotations

import signal
from types import FrameType


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop polls it (the handler does nothing else)."""

    __slots__ = ("signum",)

    def __init__(self) -> None:
        self.signum = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def catch_stop_signals() -> StopFlag:
    """Route SIGINT and SIGTERM to a new flag; `hold_stop_signals` ends this once the report is out."""
    stop = StopFlag()
    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    return stop


def hold_stop_signals() -> None:
    """Block SIGINT and SIGTERM until the process exits (a pending one is dropped with it).

    Called once the report is printed. A caller that stops the tool just as it reaches --expect/--count sends its
    signal while the tool is on its way out, and Python puts the default handlers back while it shuts down: without
    this, a process whose report is complete would die of the signal (exit status -15 instead of 0)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
