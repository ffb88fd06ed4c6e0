"""The control socket: a Unix stream server with peer-credential checks and per-connection limits.

Who may do what is decided in `mcr.supervisor.access` (pure); this module only gathers the facts
(lstat, SO_PEERCRED, SO_PEERGROUPS) and acts on the answers.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from mcr.linux import heap
from mcr.model.errors import ConfigError, ProtocolError
from mcr.model.rules import Limits
from mcr.protocol.control import Error, Request, RequestFramer, Response, ResponseEncoder, decode_request
from mcr.supervisor.access import AccessPolicy, DirEntry, directory_problem

log = logging.getLogger("mcr.supervisor.control")

_UCRED = struct.Struct("=iII")
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+; not every Python build names it

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def peer_credentials(sock: socket.socket) -> tuple[int, int, frozenset[int]]:
    """(pid, uid, every gid) of the peer, as they were when it connected (not re-read from /proc)."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    gids = {gid}
    for size in (4 * 64, 4 * 65536):  # NGROUPS_MAX is 65536
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
        except OSError as e:
            if e.errno == errno.ERANGE:
                continue
            log.warning("SO_PEERGROUPS unavailable (%s): only the primary group of pid %d counts", e, pid)
            break
        gids.update(struct.unpack(f"={len(raw) // 4}I", raw))
        break
    return pid, uid, frozenset(gids)


def resolve_group(name: str | None, what: str = "control group") -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise ConfigError(f"{what} '{name}' does not exist") from None


def _directory_chain(directory: Path) -> list[DirEntry]:
    chain = []
    for d in (*reversed(directory.parents), directory):
        st = os.lstat(d)
        chain.append(DirEntry(str(d), st.st_uid, st.st_mode))
    return chain


def prepare_socket_path(path: Path, policy: AccessPolicy) -> Path:
    """Check (and create) the socket's directory, clear our own stale socket, refuse anything else.

    Returns the path to bind: the directory with its symbolic links resolved (they are checked
    there), the socket's own name never followed. Refuses with a ConfigError naming the problem:
    a symbolic link, a file that is not a socket, a socket owned by someone else or one a live
    process listens on, a directory that someone other than root or us could write to.
    """
    parent = Path(os.path.abspath(path)).parent
    if not parent.exists():
        dir_mode, _ = policy.modes
        try:
            parent.mkdir(mode=dir_mode, parents=True)
            os.chmod(parent, dir_mode)  # mkdir's mode went through the umask
            gid = policy.control_gid if policy.control_gid is not None else -1
            os.chown(parent, 0 if os.geteuid() == 0 else -1, gid)
        except OSError as e:
            raise ConfigError(f"cannot create the control socket directory {parent}: {e.strerror}") from None
    parent = Path(os.path.realpath(parent))
    path = parent / path.name
    problem = directory_problem(_directory_chain(parent), os.geteuid())
    if problem:
        raise ConfigError(problem)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"control socket path {path} is a symbolic link; refusing to follow or replace it")
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"control socket path {path} exists and is not a socket; refusing to replace it")
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"control socket path {path} is a socket owned by uid {st.st_uid}, not by us; refusing to replace it"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink()  # our own, and nobody listens: left by a crash
        log.info("removed the stale control socket %s", path)
    except OSError as e:
        raise ConfigError(f"control socket path {path} cannot be probed ({e.strerror}); not replacing it") from None
    else:
        raise ConfigError(f"another process is already listening on {path}")
    finally:
        probe.close()
    return path


def _refused(pid: int, refusal: str) -> Error:
    log.warning("refused control client pid %d: %s", pid, refusal)
    return Error(refusal)


class ControlServer:
    def __init__(self, path: Path, handler: Handler, policy: AccessPolicy, limits: Limits) -> None:
        self.path = path
        self.handler = handler
        self.policy = policy
        self.limits = limits
        self.active = 0
        self.encoder = ResponseEncoder()  # ListRules and GetStats written as text, not built as JSON objects
        self.server: asyncio.Server | None = None
        self.handling: set[asyncio.Task[Response]] = set()  # the requests being handled (held until done)
        self._inode: tuple[int, int] | None = None

    async def start(self) -> None:
        self.path = prepare_socket_path(self.path, self.policy)
        _, sock_mode = self.policy.modes
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o777 & ~sock_mode)  # the socket is born with its mode: no chmod on a path
        try:
            sock.bind(str(self.path))
        except OSError as e:
            sock.close()
            raise ConfigError(f"cannot create the control socket {self.path}: {e.strerror}") from None
        finally:
            os.umask(old)
        if self.policy.control_gid is not None:
            os.chown(self.path, -1, self.policy.control_gid, follow_symlinks=False)
        st = os.lstat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        sock.listen(128)
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(lambda: _Connection(self, loop), sock=sock)
        log.info("control socket listening on %s (mode %04o)", self.path, sock_mode)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            except TimeoutError:
                pass
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:  # only the socket we made
                self.path.unlink()
        except FileNotFoundError:
            pass


#: How long a client answered before its request was complete (a refusal, a request too big) may go on
#: sending before the connection is closed: its answer is sent and the rest read and dropped meanwhile, so
#: that closing with its bytes unread does not reset the connection before it reads the answer.
LINGER_S = 1.0


class _Connection(asyncio.Protocol):
    """One control client, as callbacks of the event loop rather than a task reading a stream (half the
    loop's time a request: an add or a remove is mostly this). Its request is collected as it arrives and
    handled once complete, its answer written and the connection closed; one timer at a time bounds both the
    wait for the request and the wait for the client to take its answer (`max_connection_seconds`)."""

    def __init__(self, server: ControlServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.framer = RequestFramer(server.limits.max_request_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer = (0, 0, frozenset[int]())
        self.reading = False  # until the request is complete (or answered without one)
        self.lingering = False  # answered early: dropping what the client still sends (`LINGER_S`)
        self.counted = False  # holds one of the `max_connections` slots
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server, limits = self.server, self.server.limits
        pid, uid, gids = self.peer = peer_credentials(transport.get_extra_info("socket"))
        # A peer with no access is answered at once, before it sends anything: it holds no
        # connection slot and no time (the client reads an answer that arrives before its request).
        stranger = server.policy.refusal(uid, gids, None)
        if stranger is not None:
            self.answer(_refused(pid, stranger), early=True)
            return
        server.active += 1
        self.counted = True
        if server.active > limits.max_connections:
            log.warning("refused a control connection from pid %d: %d are being served", pid, server.active - 1)
            self.answer(Error(f"too many concurrent control connections {limits.named('max_connections')}"), early=True)
            return
        self.reading = True
        self.timer = self.loop.call_later(limits.max_connection_seconds, self.timed_out)

    def data_received(self, data: bytes) -> None:
        if not self.reading:
            return  # answered already: the rest is not read
        try:
            request = self.framer.feed(data)
        except ProtocolError as e:  # too big
            self.answer(Error(str(e)), early=True)
            return
        if request is not None:
            self.dispatch(request)

    def eof_received(self) -> bool:
        if self.lingering:
            return False  # the client has sent all it will: the connection may close
        if self.reading:
            self.dispatch(self.framer.eof())
        return True  # the client only half-closed: the answer is still to be written

    def timed_out(self) -> None:
        self.timer = None
        if self.reading:
            limit = self.server.limits.named("max_connection_seconds")
            self.answer(Error(f"timed out waiting for a complete request {limit}"))
        elif self.transport is not None:
            log.debug("control client took too long to read its answer or to end its request; dropped")
            self.transport.abort()

    def dispatch(self, data: bytes) -> None:
        self.reading = False
        if self.transport is not None:
            self.transport.pause_reading()
        self.stop_timer()
        server = self.server
        try:
            request = decode_request(data, server.limits.max_request_bytes)
        except ProtocolError as e:
            self.answer(Error(str(e)))
            return
        pid, uid, gids = self.peer
        refusal = server.policy.refusal(uid, gids, request)
        if refusal is not None:
            self.answer(_refused(pid, refusal))
            return
        task: asyncio.Task[Response] = self.loop.create_task(server.handler(request))
        server.handling.add(task)
        task.add_done_callback(self.handled)

    def handled(self, task: asyncio.Task[Response]) -> None:
        self.server.handling.discard(task)
        if task.cancelled():  # the supervisor is stopping
            self.close()
            return
        error = task.exception()
        if error is not None:
            log.error("control request failed", exc_info=error)
            self.answer(Error(f"internal error: {error!r}; see the supervisor's log"))
            return
        self.answer(task.result())

    def answer(self, response: Response, early: bool = False) -> None:
        """Send `response` and close; `early`: before the request was complete, which the client may still
        be sending (it is then read and dropped for up to `LINGER_S`)."""
        self.reading = False
        self.stop_timer()
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client has gone
        data = self.server.encoder.encode(response)
        heap.note_large(len(data))
        transport.write(data)
        del data  # the transport holds what it has not sent yet
        limit = self.server.limits.max_connection_seconds
        if early:
            self.lingering = True
            transport.write_eof()
            self.timer = self.loop.call_later(min(LINGER_S, limit), self.timed_out)
            return
        if transport.get_write_buffer_size():
            self.timer = self.loop.call_later(limit, self.timed_out)
        transport.close()  # once what is buffered is sent

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        self.reading = False
        self.stop_timer()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("control client dropped: %s", exc)
        self.reading = False
        self.stop_timer()
        self.transport = None
        if self.counted:
            self.counted = False
            self.server.active -= 1
