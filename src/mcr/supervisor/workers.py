"""Data-plane worker processes: spawning, the command channel, the stats pipe, reaping."""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

from mcr.linux import heap
from mcr.model.errors import ProtocolError, WorkerError
from mcr.protocol.worker import (
    HANDOVER_MESSAGE,
    Command,
    RawEgress,
    Released,
    Reply,
    StatsReport,
    decode_reply,
    decode_stats,
    encode_command,
    take_stats,
)
from mcr.supervisor.core import Backoff

log = logging.getLogger("mcr.supervisor")

F_SETPIPE_SZ = 1031
STATS_PIPE_SIZE = 1 << 20
CHANNEL_BUFFER = 16 << 20


class Process(Protocol):
    """What the supervisor needs of a worker process: a child it started, or one it took over."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class AdoptedProcess:
    """A worker started by an earlier supervisor (not our child: its exit status is not ours to read;
    -1 stands for it). Watched and signalled through a pidfd, so a reused pid is never hit."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.pidfd], [], [], 0)[0]:
            self.returncode = -1
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        ready = select.select([self.pidfd], [], [], timeout)[0]
        if not ready:
            raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0.0)
        self.returncode = -1
        return -1

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


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
    proc: subprocess.Popen[bytes] | AdoptedProcess | None = None
    pidfd: int = -1
    channel: socket.socket | None = None
    stats_fd: int = -1
    stats_buf: bytearray = field(default_factory=bytearray)
    uid: int | None = None
    cpu: int | None = None  # the CPU it is pinned to (--worker-cpus), None: not pinned
    restarts: int = 0
    acked_generation: int = -1
    captures: set[int] = field(default_factory=set)
    egress: set[RawEgress] = field(default_factory=set)  # raw ESP output sockets the worker holds
    held: tuple[socket.socket, ...] | None = None  # the join sockets last sent to hold (HoldSockets)
    restart_at: float = 0.0
    adopt_deadline: float = 0.0  # a worker being taken over must answer Ready by then, or a new one starts
    # Replacing a taken-over worker of another version: the new worker (started beside it, given the rules but
    # no capture socket until the old one released them), and the descriptors a Released reply brought.
    successor: WorkerHandle | None = None
    replacing: bool = False  # this is such a successor, still waiting for its capture sockets
    release_asked: bool = False
    released_fds: list[int] = field(default_factory=list)

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
            fds: list[int] = []
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.channel, 65536, 64)
            except BlockingIOError:
                return replies, False
            except OSError:
                data = b""
            if not data:
                for fd in fds:
                    os.close(fd)
                return replies, True
            try:
                reply = decode_reply(data)
            except ProtocolError as e:
                log.warning("worker %d sent a malformed reply: %s", self.worker_id, e)
                reply = None
            if isinstance(reply, Released) and len(fds) == len(reply.ifindexes):
                self.released_fds += fds
            else:
                for fd in fds:
                    os.close(fd)
            if reply is not None:
                replies.append(reply)

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
        taken, problem = take_stats(self.stats_buf)
        if problem is not None:
            log.warning("worker %d sent %s; what it sent with it is dropped", self.worker_id, problem)
        for data in taken:
            heap.note_large(len(data))  # a full report at 10,000 rules: about 1 MB, decoded, then freed
            try:
                reports.append(decode_stats(data))
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
        self.held = None
        self.acked_generation = -1
        if isinstance(self.proc, AdoptedProcess):
            self.proc.pidfd = -1  # it was self.pidfd, closed above


def handover_path(control_socket_path: Path, worker_id: int) -> Path:
    """Where worker `worker_id` of the supervisor on `control_socket_path` can be taken over (next to the
    control socket, which is in a directory only the supervisor writes)."""
    return control_socket_path.with_name(f"{control_socket_path.name}.worker{worker_id}")


def open_handover_socket(path: Path) -> socket.socket:
    """A datagram socket bound at `path` (mode 0600) that passes senders' credentials: the worker's."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        sock.bind(str(path))
        os.chmod(path, 0o600)
    except OSError:
        sock.close()
        raise
    return sock


def _channel() -> tuple[socket.socket, socket.socket, int, int]:
    sup_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (sup_end, worker_end):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_BUFFER)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CHANNEL_BUFFER)
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, STATS_PIPE_SIZE)
    except OSError:
        pass  # the default 64 KiB still works; large reports are then written in pieces
    return sup_end, worker_end, read_fd, write_fd


def take_over_worker(handle: WorkerHandle, path: Path, now: float, answer_within: float = 2.0) -> bool:
    """Offer a new channel and stats pipe to the worker an earlier supervisor left at `path`. True when the
    offer was delivered (the worker then answers Ready on the channel); False when nobody is there (the
    stale path is removed)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        log.warning("%s is not a handover socket of this user; ignored", path)
        return False
    sup_end, worker_end, read_fd, write_fd = _channel()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendmsg(
                [HANDOVER_MESSAGE],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("2i", worker_end.fileno(), write_fd))],
                0,
                str(path),
            )
    except OSError as e:
        sup_end.close()
        os.close(read_fd)
        if not isinstance(e, FileNotFoundError):
            log.info("no worker to take over at %s (%s); starting a new one", path, e.strerror)
            try:
                path.unlink()
            except OSError:
                pass
        return False
    finally:
        worker_end.close()
        os.close(write_fd)
    sup_end.setblocking(False)
    os.set_blocking(read_fd, False)
    handle.proc = None
    handle.channel = sup_end
    handle.stats_fd = read_fd
    handle.status = WorkerStatus.STARTING
    handle.adopt_deadline = now + answer_within
    log.info("offered worker %d's handover at %s to the running worker", handle.worker_id, path)
    return True


def spawn_worker(
    handle: WorkerHandle,
    uid: int,
    gid: int,
    log_level: str,
    log_json: bool,
    seccomp: bool,
    handover: Path | None = None,
    orphan_timeout: float = 0.0,
) -> None:
    """Start the worker process of `handle` with its channel and stats pipe; with `handover`, also a socket
    bound there through which a later supervisor can take it over, and the time it relays on without one."""
    sup_end, worker_end, read_fd, write_fd = _channel()
    env = dict(os.environ, MCR_CHANNEL_FD=str(worker_end.fileno()), MCR_STATS_PIPE_FD=str(write_fd))
    argv = [sys.executable, "-m", "mcr", "worker", "--worker-id", str(handle.worker_id)]
    argv += ["--uid", str(uid), "--gid", str(gid), "--log-level", log_level]
    if log_json:
        argv.append("--log-json")
    if not seccomp:
        argv.append("--no-seccomp")
    passed = [worker_end.fileno(), write_fd]
    handover_sock = None
    try:
        if handover is not None:
            handover_sock = open_handover_socket(handover)
            passed.append(handover_sock.fileno())
            env["MCR_HANDOVER_FD"] = str(handover_sock.fileno())
            argv += ["--orphan-timeout", str(orphan_timeout)]
        proc = subprocess.Popen(
            argv,
            pass_fds=passed,
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        sup_end.close()
        os.close(read_fd)
        raise
    finally:
        worker_end.close()
        os.close(write_fd)
        if handover_sock is not None:
            handover_sock.close()
    sup_end.setblocking(False)
    os.set_blocking(read_fd, False)
    handle.proc = proc
    handle.channel = sup_end
    handle.stats_fd = read_fd
    handle.pidfd = os.pidfd_open(proc.pid)
    handle.status = WorkerStatus.STARTING
    log.info("started worker %d (pid %d)", handle.worker_id, proc.pid)
