"""The control socket: a Unix stream server with peer-credential checks and per-connection limits."""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from mcr.model.errors import ConfigError, ProtocolError
from mcr.protocol.control import Error, Request, RequestFramer, Response, decode_request, encode_response

log = logging.getLogger("mcr.supervisor.control")

_UCRED = struct.Struct("=iII")

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Access:
    """Who may talk to the supervisor: root, its own user, and members of the control group."""

    own_uid: int
    group_gid: int | None

    def allows(self, pid: int, uid: int, gid: int) -> bool:
        if uid in (0, self.own_uid):
            return True
        if self.group_gid is None:
            return False
        return gid == self.group_gid or self.group_gid in _supplementary_groups(pid)


def _supplementary_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def resolve_group(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise ConfigError(f"control group '{name}' does not exist") from None


def prepare_socket_path(path: Path, gid: int | None) -> None:
    """Create the socket's directory (0750) and clear a stale socket; refuse anything suspicious."""
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o750, parents=True)
        os.chown(parent, 0 if os.geteuid() == 0 else -1, gid if gid is not None else -1)
    if path.is_symlink():
        raise ConfigError(f"control socket path {path} is a symbolic link; refusing to use it")
    if path.exists():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ConfigError(f"control socket path {path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: nobody is listening
        else:
            raise ConfigError(f"another supervisor is already listening on {path}")
        finally:
            probe.close()


class ControlServer:
    def __init__(
        self,
        path: Path,
        handler: Handler,
        access: Access,
        *,
        max_request: int = 1 << 20,
        timeout_s: float = 5.0,
        max_connections: int = 64,
    ) -> None:
        self.path = path
        self.handler = handler
        self.access = access
        self.max_request = max_request
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.active = 0
        self.server: asyncio.Server | None = None

    async def start(self, gid: int | None) -> None:
        prepare_socket_path(self.path, gid)
        old = os.umask(0o117)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=1 << 16)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        if gid is not None:
            os.chown(self.path, -1, gid)
        log.info("control socket listening on %s", self.path)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            except TimeoutError:
                pass
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            response = await self._respond(reader, writer)
            writer.write(encode_response(response))
            await asyncio.wait_for(writer.drain(), self.timeout_s)
        except (TimeoutError, ConnectionError, OSError) as e:
            log.debug("control client dropped: %s", e)
        finally:
            self.active -= 1
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Response:
        sock = writer.get_extra_info("socket")
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if self.active > self.max_connections:
            return Error(f"too many concurrent control connections (limit {self.max_connections})")
        try:
            data = await asyncio.wait_for(self._read_request(reader), self.timeout_s)
        except TimeoutError:
            return Error(f"timed out after {self.timeout_s:g} s waiting for a complete request")
        except ProtocolError as e:
            return Error(str(e))
        # The request is read before an unauthorized peer is refused, so that closing the
        # connection never discards unread data (which would reset it and lose the answer).
        if not self.access.allows(pid, uid, gid):
            log.warning("refused control client pid %d uid %d gid %d", pid, uid, gid)
            return Error(f"permission denied: uid {uid} is not root, the supervisor's user or in the control group")
        try:
            request = decode_request(data)
        except ProtocolError as e:
            return Error(str(e))
        return await self.handler(request)

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        framer = RequestFramer(self.max_request)
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return framer.eof()
            done = framer.feed(chunk)
            if done is not None:
                return done
