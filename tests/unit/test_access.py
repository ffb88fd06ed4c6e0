"""Who may do what on the control socket, and which socket directories are safe: pure decisions."""

import stat
from ipaddress import IPv4Address

import pytest

from mcr.model.levels import Facility, Severity
from mcr.protocol.control import AddRule, Query, RemoveRule, Request, SetFacilityLogLevel, SetGlobalLogLevel
from mcr.supervisor.access import (
    PRIVATE_MODES,
    SHARED_MODES,
    AccessPolicy,
    DirEntry,
    Role,
    directory_problem,
    is_read_only,
)

OWN = 990  # the supervisor's user when it is not root
CONTROL, READ = 1000, 2000
POLICY = AccessPolicy(OWN, CONTROL, READ, "mcr", "mcr-ro")
MUTATING: list[Request] = [
    AddRule("r1", "eth0", IPv4Address("239.1.1.1"), 5000, ()),
    RemoveRule("r1"),
    SetGlobalLogLevel(Severity.Debug),
    SetFacilityLogLevel(Facility.Ingress, Severity.Debug),
]


@pytest.mark.parametrize(
    ("uid", "gids", "role"),
    [
        (0, {0}, Role.CONTROL),
        (OWN, {OWN}, Role.CONTROL),
        (5001, {CONTROL}, Role.CONTROL),  # primary group
        (5001, {5001, 7, CONTROL}, Role.CONTROL),  # supplementary group
        (5001, {CONTROL, READ}, Role.CONTROL),  # both: the wider one wins
        (5001, {5001, READ}, Role.READ_ONLY),
        (5001, {5001}, Role.NONE),
        (65534, {65534}, Role.NONE),
    ],
)
def test_roles(uid: int, gids: set[int], role: Role) -> None:
    assert POLICY.role(uid, gids) is role


def test_without_groups_only_root_and_the_own_user() -> None:
    policy = AccessPolicy(OWN)
    assert policy.role(0, {0}) is Role.CONTROL and policy.role(OWN, {OWN}) is Role.CONTROL
    assert policy.role(5001, {CONTROL, READ}) is Role.NONE
    assert policy.refusal(5001, {5001}, None) == "permission denied: uid 5001 is not root, the supervisor's user"


@pytest.mark.parametrize("query", list(Query))
def test_every_query_is_read_only_and_allowed_to_the_read_only_group(query: Query) -> None:
    assert is_read_only(query)
    assert POLICY.refusal(5001, {READ}, query) is None


@pytest.mark.parametrize("request_", MUTATING, ids=lambda r: type(r).__name__)
def test_read_only_members_may_not_change_anything(request_: Request) -> None:
    assert not is_read_only(request_)
    assert POLICY.refusal(5001, {CONTROL}, request_) is None
    assert POLICY.refusal(0, {0}, request_) is None
    refusal = POLICY.refusal(5001, {5001, READ}, request_)
    assert refusal == (
        "permission denied: uid 5001 has read-only access (group 'mcr-ro'); "
        f"{type(request_).__name__} is reserved to root, the supervisor's user or members of the control group 'mcr'"
    )


def test_strangers_are_refused_before_their_request_is_looked_at() -> None:
    for req in [Query.PING, None]:
        assert POLICY.refusal(65534, {65534}, req) == (
            "permission denied: uid 65534 is not root, the supervisor's user or members of the control group "
            "'mcr' or the read-only group 'mcr-ro'"
        )


def test_socket_modes_follow_the_read_only_group() -> None:
    assert AccessPolicy(0, CONTROL).modes == PRIVATE_MODES == (0o750, 0o660)
    assert POLICY.modes == SHARED_MODES == (0o755, 0o666)


def d(path: str, uid: int = 0, mode: int = 0o755) -> DirEntry:
    return DirEntry(path, uid, stat.S_IFDIR | mode)


@pytest.mark.parametrize(
    ("chain", "problem"),
    [
        ([d("/"), d("/run"), d("/run/mcr", mode=0o750)], None),
        ([d("/"), d("/srv", uid=OWN), d("/srv/mcr", uid=OWN)], None),  # the supervisor's own user
        ([d("/"), d("/tmp", mode=0o1777), d("/tmp/mcr", mode=0o700)], None),  # sticky ancestor
        (
            [d("/"), d("/tmp", mode=0o1777)],
            "control socket directory /tmp is writable by its group or others (mode 1777)",
        ),
        ([d("/"), d("/run/mcr", mode=0o770)], "control socket directory /run/mcr is writable by its group or others"),
        ([d("/"), d("/run/mcr", mode=0o757)], "(mode 0757)"),
        ([d("/"), d("/shared", mode=0o777), d("/shared/mcr")], "directory /shared is writable by its group or others"),
        ([d("/"), d("/home/eve", uid=1234)], "directory /home/eve is owned by uid 1234, not by root or the supervisor"),
        ([d("/"), d("/a", uid=1234), d("/a/b")], "directory /a is owned by uid 1234"),
        ([d("/"), DirEntry("/run/x", 0, stat.S_IFLNK | 0o777)], "/run/x is not a directory"),
    ],
)
def test_directory_problem(chain: list[DirEntry], problem: str | None) -> None:
    found = directory_problem(chain, OWN)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_peer_credentials_carry_every_group() -> None:
    import os
    import socket

    from mcr.supervisor.control import peer_credentials

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        pid, uid, gids = peer_credentials(a)
    assert (pid, uid) == (os.getpid(), os.geteuid())
    assert {os.getegid(), *os.getgroups()} <= gids
