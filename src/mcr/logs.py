"""Logging set-up shared by every MCR process: text or JSON lines on stderr, facilities as loggers."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

from mcr.model.levels import NOTICE, TRACE


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process_name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class RateLimitFilter(logging.Filter):
    """Lets through at most `burst` records of one message template per `window` seconds; the first
    record after a quiet spell says how many were suppressed. The clock is injectable for tests."""

    def __init__(self, burst: int = 5, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self.clock = clock
        self.state: dict[tuple[str, str], list[float | int]] = {}  # key -> [window start, passed, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        entry = self.state.get(key)
        if entry is None or now - entry[0] >= self.window:
            suppressed = int(entry[2]) if entry is not None else 0
            self.state[key] = [now, 1, 0]
            if suppressed:
                record.msg = f"{record.msg} ({suppressed} similar messages suppressed)"
            if len(self.state) > 4096:  # bounded memory: forget quiet templates
                self.state = {k: v for k, v in self.state.items() if now - v[0] < self.window}
            return True
        if entry[1] < self.burst:
            entry[1] = int(entry[1]) + 1
            return True
        entry[2] = int(entry[2]) + 1
        return False


def configure_logging(level: str | int, as_json: bool, prefix: str) -> None:
    logging.addLevelName(TRACE, "TRACE")
    logging.addLevelName(NOTICE, "NOTICE")
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter(prefix))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{prefix}] %(name)s: %(message)s"))
    handler.addFilter(RateLimitFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
