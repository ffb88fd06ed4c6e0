"""`control_client top`, the terminal side: poll the supervisor, read single keys, redraw with `rich.live`.

Everything that decides what to show is in `mcr.cli.top`; this module only moves bytes. It works over
a plain ssh session: the alternate screen is used only when stdout is a terminal, keys are read in
termios cbreak mode (no Enter, no echo, Ctrl-C still a signal) with `select` bounded by the refresh
interval, and the terminal settings are restored however the loop ends.
"""

from __future__ import annotations

import io
import os
import select
import termios
import time
import tty
from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.live import Live

from mcr.cli.top import Controls, TopView, on_keys, on_poll, on_poll_error, render_top
from mcr.cli.transport import ask, ask_kernel_status, ask_queriers
from mcr.membership.querier import QuerierView
from mcr.model.errors import McrError
from mcr.model.status import FlowStats, KernelStatus, RuleView, WorkerInfo
from mcr.protocol.control import Query, Rules, Stats, Workers

_READ_CHUNK = 64

Snapshot = tuple[
    Sequence[FlowStats], Sequence[WorkerInfo], Sequence[RuleView], KernelStatus | None, Sequence[QuerierView]
]
Poll = Callable[[], Snapshot]


def poll_supervisor(socket_path: str, timeout_s: float) -> Snapshot:
    """`GetStats`, `ListWorkers`, `ListRules` (for the rules' states) and `GetKernelStatus` (None from a
    supervisor without it), each on its own connection (one request per connection).

    Raises what `ask` raises: `UnreachableError`, `ProtocolError` or `ErrorAnswer`, all `McrError`s.
    """
    stats = ask(socket_path, Query.GET_STATS, Stats, timeout_s)
    workers = ask(socket_path, Query.LIST_WORKERS, Workers, timeout_s)
    rules = ask(socket_path, Query.LIST_RULES, Rules, timeout_s)
    kernel = ask_kernel_status(socket_path, timeout_s)
    return stats.flows, workers.workers, rules.rules, kernel, ask_queriers(socket_path, timeout_s)


def refresh(view: TopView, poll: Poll, now: Callable[[], datetime] = datetime.now) -> TopView:
    try:
        flows, workers, rules, kernel, queriers = poll()
    except McrError as e:
        return on_poll_error(view, str(e), now())
    return on_poll(view, flows, workers, now(), rules, kernel, queriers)


class Keyboard:
    """Key presses from a terminal on stdin, in cbreak mode while inside `with`.

    When stdin is not a terminal (or is closed) there are no keys: `wait` just sleeps, so a redirected
    stdin never turns the loop into a busy one.
    """

    def __init__(self, stream: TextIO) -> None:
        try:
            fd = stream.fileno()
        except (OSError, ValueError, io.UnsupportedOperation):
            fd = -1
        self._fd = fd if fd >= 0 and os.isatty(fd) else -1
        self._saved: list[Any] | None = None  # termios attributes, typed Any by typeshed

    def __enter__(self) -> Keyboard:
        if self._fd >= 0:
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd, termios.TCSANOW)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def wait(self, timeout_s: float) -> str:
        """The keys pressed within `timeout_s` (returns as soon as there are some), or '' when none."""
        if self._fd < 0:
            time.sleep(max(0.0, timeout_s))
            return ""
        ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout_s))
        if not ready:
            return ""
        data = os.read(self._fd, _READ_CHUNK)
        if not data:  # the terminal hung up: stop reading, keep refreshing until interrupted
            self._fd = -1
            return ""
        return data.decode("utf-8", "replace")


def run_live(poll: Poll, console: Console, keyboard: Keyboard, interval_s: float) -> None:
    """Refresh every `interval_s` until `q`; Ctrl-C (KeyboardInterrupt) propagates after the screen is restored."""
    controls = Controls()
    view = TopView()

    def draw() -> RenderableType:
        return render_top(view, controls, interval_s, height=console.size.height)

    with (
        keyboard,
        Live(
            draw(),
            console=console,
            screen=console.is_terminal,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live,
    ):
        while True:
            view = refresh(view, poll)
            live.update(draw(), refresh=True)
            deadline = time.monotonic() + interval_s
            while (left := deadline - time.monotonic()) > 0:
                keys = keyboard.wait(left)
                if not keys:
                    continue
                controls = on_keys(controls, keys)
                if controls.quit:
                    return
                live.update(draw(), refresh=True)  # re-sort at once
