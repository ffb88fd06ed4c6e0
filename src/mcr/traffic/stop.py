"""The stop flag shared by the generator and the sink."""

from __future__ import annotations

from types import FrameType


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop polls it (the handler does nothing else)."""

    __slots__ = ("signum",)

    def __init__(self) -> None:
        self.signum = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
