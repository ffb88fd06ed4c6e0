"""Who may do what on the control socket, and whether the socket's directory is safe (pure).

The model (docs/operations.md, "Access"): file permissions cannot express two groups, so they only
keep out whom they can; the supervisor decides every request from the peer's credentials, taken
with SO_PEERCRED/SO_PEERGROUPS when the client connected:

- root, the supervisor's own user and members of the control group may send anything;
- members of the read-only group may send the read-only requests (every `Query`: ListRules,
  GetStats, ListWorkers, Ping, GetVersion, GetLogLevels, GetConfig, GetControlPlaneConfig, GetKernelStatus; CheckConfig;
  and the control-plane requests that only look, Get*/List*/Query*) and nothing else;
- SaveConfig to a path of the client's choosing writes a file as the supervisor (root): only root and
  the supervisor's own user may ask that; the control group may save to the file the supervisor was
  started with;
- anyone else is refused before the request is decoded.

Everything here is a function of numbers and requests, so it is tested without root.
"""

from __future__ import annotations

import stat
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from typing import assert_never

from mcr.protocol.control import (
    AddRule,
    CheckConfig,
    LoadConfig,
    Query,
    RemoveRule,
    RemoveRuleByName,
    Request,
    SaveConfig,
    SetFacilityLogLevel,
    SetGlobalLogLevel,
    SetQuerier,
    SetQuerierTimers,
)
from mcr.protocol.controlplane import ControlPlaneRequest
from mcr.protocol.routing import (
    AddMsdpPeer,
    DisablePim,
    EnablePim,
    RemoveMsdpPeer,
    RoutingQuery,
    SetRpAddress,
    SetStaticRp,
    is_routing_read_only,
)

# The socket and its directory: only the control group when that is all there is; open to every
# local user (then SO_PEERCRED alone decides) when a read-only group must be able to connect too.
PRIVATE_MODES = (0o750, 0o660)  # (directory the supervisor creates, socket)
SHARED_MODES = (0o755, 0o666)


class Role(Enum):
    NONE = "none"
    READ_ONLY = "read-only"
    CONTROL = "control"


def request_name(req: Request) -> str:
    match req:
        case Query():
            return req.value
        case RoutingQuery():
            return str(req.value)
        case ControlPlaneRequest():
            return req.command
        case (
            AddRule()
            | RemoveRule()
            | RemoveRuleByName()
            | SetGlobalLogLevel()
            | SetFacilityLogLevel()
            | LoadConfig()
            | CheckConfig()
            | SaveConfig()
            | EnablePim()
            | DisablePim()
            | SetStaticRp()
            | SetRpAddress()
            | AddMsdpPeer()
            | RemoveMsdpPeer()
        ):
            return type(req).__name__
        case SetQuerier():
            return req.command
        case SetQuerierTimers():
            return "SetQuerierTimers"
        case _:
            assert_never(req)


def is_read_only(req: Request) -> bool:
    """Whether a request only looks: a new request type must be classified here to type-check."""
    match req:
        case Query() | CheckConfig():
            return True
        case RoutingQuery():
            return is_routing_read_only(req)
        case ControlPlaneRequest():
            return req.read_only
        case (
            AddRule()
            | RemoveRule()
            | RemoveRuleByName()
            | SetGlobalLogLevel()
            | SetFacilityLogLevel()
            | LoadConfig()
            | SaveConfig()
            | SetQuerier()
            | SetQuerierTimers()
            | EnablePim()
            | DisablePim()
            | SetStaticRp()
            | SetRpAddress()
            | AddMsdpPeer()
            | RemoveMsdpPeer()
        ):
            return False
        case _:
            assert_never(req)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    own_uid: int
    control_gid: int | None = None
    read_only_gid: int | None = None
    control_group: str | None = None  # the names, for the messages
    read_only_group: str | None = None

    @property
    def modes(self) -> tuple[int, int]:
        """(directory mode, socket mode) for the files the supervisor creates."""
        return SHARED_MODES if self.read_only_gid is not None else PRIVATE_MODES

    def role(self, uid: int, gids: Collection[int]) -> Role:
        """`gids` holds the peer's primary and supplementary groups."""
        if uid in (0, self.own_uid) or (self.control_gid is not None and self.control_gid in gids):
            return Role.CONTROL
        if self.read_only_gid is not None and self.read_only_gid in gids:
            return Role.READ_ONLY
        return Role.NONE

    def who_may_write(self) -> str:
        group = f" or members of the control group '{self.control_group}'" if self.control_group else ""
        return f"root, the supervisor's user{group}"

    def refusal(self, uid: int, gids: Collection[int], req: Request | None) -> str | None:
        """Why this peer may not send `req` (None: it may). With `req` None, whether it may connect at all."""
        role = self.role(uid, gids)
        if role is Role.NONE:
            also = f" or the read-only group '{self.read_only_group}'" if self.read_only_group else ""
            return f"permission denied: uid {uid} is not {self.who_may_write()}{also}"
        if role is Role.READ_ONLY and req is not None and not is_read_only(req):
            return (
                f"permission denied: uid {uid} has read-only access (group '{self.read_only_group}'); "
                f"{request_name(req)} is reserved to {self.who_may_write()}"
            )
        if isinstance(req, SaveConfig) and req.path is not None and uid not in (0, self.own_uid):
            return (
                f"permission denied: uid {uid} may not choose where the supervisor writes; SaveConfig with a "
                "path is reserved to root and the supervisor's user (without one it saves to its config file)"
            )
        return None


@dataclass(frozen=True, slots=True)
class DirEntry:
    """What lstat says about one directory on the way to the socket."""

    path: str
    uid: int
    mode: int


def directory_problem(chain: Collection[DirEntry], own_uid: int) -> str | None:
    """Why the socket may not live under these directories (the socket's own directory last), or None.

    Every directory must be owned by root or the supervisor's user and must not let anyone else
    replace what is in it: the socket's own directory may not be writable by its group or others at
    all, the ones above only with the sticky bit (like /tmp). Anything else could swap the socket
    for a symbolic link or a file between our checks and our use of it.
    """
    last = len(chain) - 1
    for i, d in enumerate(chain):
        if not stat.S_ISDIR(d.mode):
            return f"control socket directory {d.path} is not a directory"
        if d.uid not in (0, own_uid):
            return (
                f"control socket directory {d.path} is owned by uid {d.uid}, not by root or the supervisor's "
                "user; refusing to use it"
            )
        writable = d.mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and (i == last or not d.mode & stat.S_ISVTX):
            perms = f"{stat.S_IMODE(d.mode):04o}"
            return (
                f"control socket directory {d.path} is writable by its group or others (mode {perms}); "
                "refusing to use it: choose a directory only root can write to, such as /run/mcr"
            )
    return None
