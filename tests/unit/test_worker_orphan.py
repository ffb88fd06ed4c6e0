"""A worker outlives its supervisor's death however the channel ends: closed, or reset because the supervisor
was killed with a reply of ours unread (a SIGKILL in the middle of a rule change). Either way the worker
relays on as an orphan (kept data plane) or exits cleanly, and never dies of the error. And the channel's
commands are read whole whatever their size."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from mcr.protocol.worker import Sync, SyncAck, Update, WorkerOutput, WorkerRule, decode_reply, encode_command
from mcr.worker.loop import DataPlane


@pytest.fixture
def plane() -> Iterator[tuple[DataPlane, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_fd, write_fd = os.pipe()
    yield DataPlane(0, ours, write_fd), theirs
    for sock in (ours, theirs):
        sock.close()
    os.close(read_fd)
    os.close(write_fd)


@pytest.mark.parametrize("unread_reply", [False, True], ids=["closed", "reset"])
def test_a_worker_with_a_handover_is_orphaned_when_its_supervisor_dies(
    plane: tuple[DataPlane, socket.socket], unread_reply: bool
) -> None:
    dp, supervisor = plane
    handover, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dp.enable_handover(handover, orphan_timeout=30.0, supervisor_uid=0, version="test")
    if unread_reply:
        dp.send_reply(SyncAck(3))  # the supervisor dies before reading it: the worker's next read is reset
    supervisor.close()
    dp.handle_channel()
    assert dp.running and dp.orphaned_at is not None
    dp.send_reply(SyncAck(4))  # a reply after the supervisor went is dropped, not raised
    handover.close()
    other.close()


def test_a_worker_without_a_handover_exits_cleanly_on_a_reset(plane: tuple[DataPlane, socket.socket]) -> None:
    dp, supervisor = plane
    dp.send_reply(SyncAck(3))
    supervisor.close()
    dp.handle_channel()
    assert not dp.running


def test_commands_of_any_size_are_read_whole(plane: tuple[DataPlane, socket.socket]) -> None:
    """The channel's messages are read at their own size: a one-rule Update and a Sync of 2,000 rules."""
    dp, supervisor = plane
    supervisor.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    dp.channel.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rules = tuple(
        WorkerRule(f"r{i}", 1, IPv4Address(0xEF010000 + i), 5000, (WorkerOutput(0, IPv4Address("239.9.9.9"), 6000, 1,
                   IPv4Address("127.0.0.1"), 1),))
        for i in range(2000)
    )  # fmt: skip
    for cmd in (Update(1, rules[:1]), Sync(2, rules)):
        supervisor.send(encode_command(cmd))
        dp.handle_channel()
        assert decode_reply(supervisor.recv(4096)) == SyncAck(cmd.generation)
    assert len(encode_command(Sync(2, rules))) > 200_000
    assert sorted(dp.slots) == sorted(r.rule_id for r in rules)
    for lane in dp.lanes.values():
        lane.sock.close()
