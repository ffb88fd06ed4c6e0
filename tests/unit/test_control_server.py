"""The control server in-process: a real Unix socket, the event loop's connection callbacks, a handler."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mcr.model.rules import Limits
from mcr.protocol.control import Error, Query, Request, Response, Success
from mcr.supervisor.access import AccessPolicy
from mcr.supervisor.control import ControlServer

LIMITS = replace(Limits(), max_request_bytes=600, max_connections=2, max_connection_seconds=1)


async def handler(req: Request) -> Response:
    if req is Query.GET_VERSION:
        raise RuntimeError("a bug")
    if req is Query.LIST_WORKERS:
        await asyncio.sleep(0.3)  # a handler that waits (as AddRule waits for the workers)
    return Success(f"handled {req}")


def ask(path: str, data: bytes, half_close: bool = True, read: bool = True) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while read and (chunk := s.recv(65536)):
            chunks.append(chunk)
    return json.loads(b"".join(chunks)) if read else None


def serve(tmp_path: Path, client: Callable[[str, ControlServer], Any], limits: Limits = LIMITS) -> Any:
    """Run `client(socket path, server)` in a thread while the server answers on the loop."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)

    async def main() -> Any:
        server = ControlServer(run_dir / "control.sock", handler, AccessPolicy(os.geteuid()), limits)
        await server.start()
        try:
            return await asyncio.wait_for(asyncio.to_thread(client, str(server.path), server), 20)
        finally:
            await server.stop()

    return asyncio.run(main())


def test_a_request_is_answered_whether_ended_by_half_close_or_newline(tmp_path: Path) -> None:
    def client(path: str, server: ControlServer) -> list[Any]:
        return [ask(path, b'"Ping"'), ask(path, b'"Ping"\n', half_close=False), ask(path, b'"ListWorkers"')]

    assert serve(tmp_path, client) == [
        {"Success": "handled Query.PING"},
        {"Success": "handled Query.PING"},
        {"Success": "handled Query.LIST_WORKERS"},
    ]


def test_bad_requests_get_their_error_and_the_slots_come_back(tmp_path: Path) -> None:
    def client(path: str, server: ControlServer) -> tuple[list[Any], int]:
        answers = [
            ask(path, b" " * (1 << 20) + b'"Ping"'),  # answered before it is all sent: the rest is read and dropped
            ask(path, b'{"NoSuchThing": 1}'),
            ask(path, b""),
            ask(path, b'"GetVersion"'),  # the handler fails
        ]
        return answers, server.active

    answers, active = serve(tmp_path, client)
    assert answers[0] == {"Error": "request exceeds the size limit (max_request_bytes = 600)"}
    assert "NoSuchThing" in answers[1]["Error"]
    assert "empty request" in answers[2]["Error"]
    assert answers[3]["Error"].startswith("internal error: RuntimeError('a bug')")
    assert active == 0


def test_a_silent_client_times_out_and_the_cap_refuses_the_extra_one(tmp_path: Path) -> None:
    def client(path: str, server: ControlServer) -> tuple[Any, Any, Any, int]:
        silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
        try:
            for s in silent:
                s.settimeout(5)
                s.connect(path)
            extra = ask(path, b'"Ping"')  # both slots are held
            timed_out = [json.loads(s.recv(65536)) for s in silent]
        finally:
            for s in silent:
                s.close()
        return extra, timed_out[0], ask(path, b'"Ping"'), server.active

    extra, timed_out, after, active = serve(tmp_path, client)
    assert extra == {"Error": "too many concurrent control connections (max_connections = 2)"}
    assert timed_out == {"Error": "timed out waiting for a complete request (max_connection_seconds = 1)"}
    assert after == {"Success": "handled Query.PING"}
    assert active == 0


def test_a_client_gone_before_its_answer_leaves_nothing_behind(tmp_path: Path) -> None:
    def client(path: str, server: ControlServer) -> tuple[int, int, Any]:
        ask(path, b'"ListWorkers"', read=False)  # closes while the handler waits
        time.sleep(0.1)
        waiting = len(server.handling)
        time.sleep(0.5)
        return waiting, server.active + len(server.handling), ask(path, b'"Ping"')

    waiting, left, after = serve(tmp_path, client)
    assert waiting == 1, "the request is handled all the same"
    assert left == 0
    assert after == {"Success": "handled Query.PING"}


@pytest.mark.parametrize("size", [64 << 10, 4 << 20])
def test_a_large_answer_arrives_whole(tmp_path: Path, size: int) -> None:
    async def big(req: Request) -> Response:
        return Error("x" * size)

    def client(path: str, server: ControlServer) -> Any:
        server.handler = big
        return ask(path, b'"Ping"')

    assert serve(tmp_path, client) == {"Error": "x" * size}
