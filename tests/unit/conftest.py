from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mcr.worker.loop import DataPlane
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


@pytest.fixture
def data_plane() -> Iterator[DataPlane]:
    """A worker's data plane with a real channel and stats pipe but no capture: for `sync` and its tables."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_fd, write_fd = os.pipe()
    plane = DataPlane(0, ours, write_fd)
    yield plane
    for sock in (*(lane.sock for lane in plane.lanes.values()), ours, theirs):
        sock.close()
    os.close(read_fd)
    os.close(write_fd)
