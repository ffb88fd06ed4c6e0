"""Data-plane worker processes: spawning, the command channel, the stats pipe, reaping."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from enum import Enum

from mcr.model.errors import ProtocolError, WorkerError
from mcr.protocol.worker import (
    Command,
    RawEgress,
    Reply,
    StatsReport,
    decode_reply,
    decode_stats,
    encode_command,
)
from mcr.supervisor.core import Backoff

log = logging.getLogger("mcr.supervisor")

F_SETPIPE_SZ = 1031
STATS_PIPE_SIZE = 1 << 20
CHANNEL_BUFFER = 16 << 20


class WorkerStatus(Enum):
    STARTING = "Starting"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    STOPPED = "Stopped"


@dataclass(slots=True)
class WorkerHandle:
    """One worker slot. The process in it changes on every restart; the slot and its backoff stay."""

    worker_id: int
    backoff: Backoff = field(default_factory=Backoff)
    status: WorkerStatus = WorkerStatus.STARTING
    proc: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    channel: socket.socket | None = None
    stats_fd: int = -1
    stats_buf: bytearray = field(default_factory=bytearray)
    uid: int | None = None
    restarts: int = 0
    acked_generation: int = -1
    captures: set[int] = field(default_factory=set)
    egress: set[RawEgress] = field(default_factory=set)  # raw ESP output sockets the worker holds
    restart_at: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def ready(self) -> bool:
        return self.status is WorkerStatus.RUNNING

    def send(self, cmd: Command, fds: list[int] | None = None) -> None:
        """Send without blocking; a worker that cannot take a command is broken and gets killed."""
        if self.channel is None:
            raise WorkerError(f"worker {self.worker_id} has no channel")
        data = encode_command(cmd)
        try:
            if fds:
                socket.send_fds(self.channel, [data], fds)
            else:
                self.channel.send(data)
        except OSError as e:
            raise WorkerError(f"worker {self.worker_id} (pid {self.pid}): cannot send {type(cmd).__name__}: {e}") from e

    def read_replies(self) -> tuple[list[Reply], bool]:
        """Replies waiting on the channel, and whether the worker closed it."""
        replies: list[Reply] = []
        if self.channel is None:
            return replies, True
        while True:
            try:
                data = self.channel.recv(65536)
            except BlockingIOError:
                return replies, False
            except OSError:
                data = b""
            if not data:
                return replies, True
            try:
                replies.append(decode_reply(data))
            except ProtocolError as e:
                log.warning("worker %d sent a malformed reply: %s", self.worker_id, e)

    def read_stats(self) -> list[StatsReport]:
        reports: list[StatsReport] = []
        while self.stats_fd >= 0:
            try:
                chunk = os.read(self.stats_fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.stats_buf += chunk
        while True:
            nl = self.stats_buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(self.stats_buf[:nl])
            del self.stats_buf[: nl + 1]
            try:
                reports.append(decode_stats(line))
            except ProtocolError as e:
                log.warning("worker %d sent a malformed stats report: %s", self.worker_id, e)
        return reports

    def close_io(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        for fd in (self.stats_fd, self.pidfd):
            if fd >= 0:
                os.close(fd)
        self.stats_fd = self.pidfd = -1
        self.stats_buf.clear()
        self.captures.clear()
        self.egress.clear()
        self.acked_generation = -1


def spawn_worker(handle: WorkerHandle, uid: int, gid: int, log_level: str, log_json: bool, seccomp: bool) -> None:
    """Start the worker process of `handle` with its channel and stats pipe."""
    sup_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (sup_end, worker_end):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_BUFFER)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CHANNEL_BUFFER)
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, STATS_PIPE_SIZE)
    except OSError:
        pass  # the default 64 KiB still works; large reports are then written in pieces
    env = dict(os.environ, MCR_CHANNEL_FD=str(worker_end.fileno()), MCR_STATS_PIPE_FD=str(write_fd))
    argv = [sys.executable, "-m", "mcr", "worker", "--worker-id", str(handle.worker_id)]
    argv += ["--uid", str(uid), "--gid", str(gid), "--log-level", log_level]
    if log_json:
        argv.append("--log-json")
    if not seccomp:
        argv.append("--no-seccomp")
    try:
        proc = subprocess.Popen(
            argv,
            pass_fds=(worker_end.fileno(), write_fd),
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        worker_end.close()
        os.close(write_fd)
    sup_end.setblocking(False)
    os.set_blocking(read_fd, False)
    handle.proc = proc
    handle.channel = sup_end
    handle.stats_fd = read_fd
    handle.pidfd = os.pidfd_open(proc.pid)
    handle.status = WorkerStatus.STARTING
    log.info("started worker %d (pid %d)", handle.worker_id, proc.pid)
