from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fake_supervisor import FakeSupervisor, Respond


@pytest.fixture
def fake_supervisor(tmp_path: Path) -> Iterator[Callable[[Respond], FakeSupervisor]]:
    """Starts fake supervisors on sockets in `tmp_path` (see tests/fake_supervisor.py); all stop after the test."""
    started: list[FakeSupervisor] = []

    def start(respond: Respond) -> FakeSupervisor:
        started.append(FakeSupervisor(tmp_path / f"s{len(started)}.sock", respond))
        return started[-1]

    yield start
    for fake in started:
        fake.close()
