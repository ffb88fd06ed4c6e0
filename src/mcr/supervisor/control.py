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
from collections.abc import Awaitable, Callable
from pathlib import Path

from mcr.linux import heap
from mcr.model.errors import ConfigError, ProtocolError
from mcr.model.rules import Limits
from mcr.protocol.control import Error, Request, RequestFramer, Response, ResponseEncoder, decode_request
from mcr.supervisor.access import AccessPolicy, DirEntry, directory_problem

log = logging.getLogger("mcr.supervisor.control")

_UCRED = struct.Struct("=iII")
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+; not every Python build names it

Handler = Callable[[Request], Awaitable[Response]]


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
        self.server = await asyncio.start_unix_server(self._serve, sock=sock, limit=1 << 16)
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pid, uid, gids = peer_credentials(writer.get_extra_info("socket"))
        # A peer with no access is answered at once, before it sends anything: it holds no
        # connection slot and no time (the client reads an answer that arrives before its request).
        stranger = self.policy.refusal(uid, gids, None)
        if stranger is None:
            self.active += 1
        try:
            response = _refused(pid, stranger) if stranger is not None else await self._respond(reader, pid, uid, gids)
            answer = self.encoder.encode(response)
            heap.note_large(len(answer))
            writer.write(answer)
            del answer  # the transport holds what it has not sent yet
            await asyncio.wait_for(writer.drain(), self.limits.max_connection_seconds)
        except (TimeoutError, ConnectionError, OSError) as e:
            log.debug("control client dropped: %s", e)
        finally:
            if stranger is None:
                self.active -= 1
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader, pid: int, uid: int, gids: frozenset[int]) -> Response:
        limits = self.limits
        if self.active > limits.max_connections:
            log.warning("refused a control connection from pid %d: %d are being served", pid, self.active - 1)
            return Error(f"too many concurrent control connections {limits.named('max_connections')}")
        try:
            data = await asyncio.wait_for(self._read_request(reader), limits.max_connection_seconds)
        except TimeoutError:
            return Error(f"timed out waiting for a complete request {limits.named('max_connection_seconds')}")
        except ProtocolError as e:
            return Error(str(e))
        try:
            request = decode_request(data, limits.max_request_bytes)
        except ProtocolError as e:
            return Error(str(e))
        refusal = self.policy.refusal(uid, gids, request)
        if refusal is not None:
            return _refused(pid, refusal)
        return await self.handler(request)

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        framer = RequestFramer(self.limits.max_request_bytes)
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return framer.eof()
            done = framer.feed(chunk)
            if done is not None:
                return done
