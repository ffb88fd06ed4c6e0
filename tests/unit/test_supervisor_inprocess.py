"""The supervisor in-process, not started (no worker processes, no links; its real rule table, resolver and
state store). A change is answered Success only once it is on disk; when its record cannot be flushed, the
change is taken back (table, journal and data plane) and the client told why. A change waits until the
ready workers have confirmed it, and no longer than its timeout."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from mcr.protocol.control import Error, Request, Success, decode_request
from mcr.supervisor.main import Supervisor, SupervisorConfig
from mcr.supervisor.state import StateStore
from mcr.supervisor.workers import WorkerStatus


def add(rule_id: str, port: int) -> Request:
    return decode_request(
        (
            f'{{"AddRule":{{"rule_id":"{rule_id}","input_interface":"in0","input_group":"239.1.1.1",'
            f'"input_port":{port},"outputs":[{{"group":"239.2.2.2","port":6000,"interface":"out0"}}]}}}}'
        ).encode(),
        1 << 20,
    )


def remove(rule_id: str) -> Request:
    return decode_request(f'{{"RemoveRule":{{"rule_id":"{rule_id}"}}}}'.encode(), 1 << 20)


def in_supervisor(tmp_path: Path, body: Callable[[Supervisor], Coroutine[Any, Any, Any]]) -> Any:
    config = SupervisorConfig(
        control_socket_path=tmp_path / "control.sock", control_group=None, user="nobody", group=None,
        num_workers=1, log_level="info", log_json=False, state_file=tmp_path / "rules.json",
    )  # fmt: skip

    async def main() -> Any:
        return await body(Supervisor(config))

    return asyncio.run(main())


def failing_fdatasync(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fail)


def test_a_change_whose_record_cannot_be_flushed_is_taken_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def listed(sup: Supervisor) -> tuple[list[str], list[str]]:
        # a rule put back after a refused removal is listed last (as before this change)
        return sorted(sup.table.rules), sorted(v.rule.rule_id for v in sup.rule_views())

    async def body(sup: Supervisor) -> list[object]:
        seen: list[object] = [await sup.handle(add("a", 5000)), await sup.handle(add("b", 5001))]
        failing_fdatasync(monkeypatch)
        seen += [await sup.handle(remove("a")), listed(sup)]
        monkeypatch.undo()
        seen.append(await sup.handle(add("c", 5002)))  # after a failure the next change writes a snapshot
        failing_fdatasync(monkeypatch)
        seen += [await sup.handle(add("d", 5003)), listed(sup)]
        monkeypatch.undo()
        return seen

    seen = in_supervisor(tmp_path, body)
    assert seen[:2] == [Success("Rule a added"), Success("Rule b added")]
    why = f"cannot save state to {tmp_path / 'rules.json'}: Input/output error"
    assert seen[2:4] == [Error(f"Rule a not removed: {why}"), (["a", "b"], ["a", "b"])], "as it was"
    assert seen[4] == Success("Rule c added")
    assert seen[5:] == [Error(f"Rule d not added: {why}"), (["a", "b", "c"], ["a", "b", "c"])], "as it was"
    assert sorted(r.rule_id for r in StateStore(tmp_path / "rules.json").load()) == ["a", "b", "c"]


def test_a_change_waits_for_the_ready_workers_to_confirm_it(tmp_path: Path) -> None:
    async def body(sup: Supervisor) -> list[object]:
        ready, starting = sup.workers[0], type(sup.workers[0])(1)
        sup.workers.append(starting)  # a second worker, still starting: not waited for unless `every`
        ready.status, ready.acked_generation = WorkerStatus.RUNNING, 4
        seen: list[object] = [await sup.wait_synced(4)]  # confirmed already
        waits = [asyncio.ensure_future(sup.wait_synced(g)) for g in (5, 6)]
        every = asyncio.ensure_future(sup.wait_synced(5, every=True, timeout=0.2))
        await asyncio.sleep(0.05)
        seen.append([w.done() for w in waits])
        ready.acked_generation = 5
        sup.wake_synced()  # as a SyncAck does
        await asyncio.sleep(0)
        seen.append([w.done() and w.result() for w in waits])
        seen.append(await every)  # the starting worker never confirms: timed out
        seen.append(await sup.wait_synced(6, timeout=0.05))  # times out; the first wait for 6 goes on
        ready.acked_generation = 6
        sup.wake_synced()
        seen += [await waits[1], sup.sync_waiters]
        return seen

    assert in_supervisor(tmp_path, body) == [True, [False, False], [True, False], False, False, True, []]
