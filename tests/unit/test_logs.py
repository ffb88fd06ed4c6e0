import json
import logging

from mcr.logs import JsonFormatter, RateLimitFilter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("mcr.worker", logging.WARNING, __file__, 1, msg, args, None)


def test_repeated_messages_are_rate_limited_and_counted() -> None:
    clock = Clock()
    f = RateLimitFilter(burst=3, window=10, clock=clock)
    passed = [f.filter(record("send error on %s", i)) for i in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert f.filter(record("another message"))  # other templates are independent
    clock.now = 10.5
    later = record("send error on %s", 99)
    assert f.filter(later)
    assert later.getMessage() == "send error on 99 (7 similar messages suppressed)"
    assert f.filter(record("send error on %s", 100))


def test_json_lines() -> None:
    line = json.loads(JsonFormatter("worker-0").format(record("hello %s", "world")))
    assert (line["level"], line["logger"], line["process"], line["message"]) == (
        "warning",
        "mcr.worker",
        "worker-0",
        "hello world",
    )
    assert line["timestamp"].endswith("Z")
