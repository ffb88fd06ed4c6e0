"""`Memberships` over fake sockets: how joins are spread over sockets under the per-socket limit."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address

import pytest

from mcr.supervisor import memberships
from mcr.supervisor.memberships import Key, Memberships


class FakeSocket:
    """A socket that takes every membership option."""

    def __init__(self, family: int, _type: int) -> None:
        self.family = family
        self.closed = False

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def limit(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    value = [20]
    monkeypatch.setattr(memberships.socket, "socket", FakeSocket)
    monkeypatch.setattr(memberships, "_max_per_socket", lambda: value[0])
    return value


def keys(n: int, version: int = 4) -> set[Key]:
    if version == 4:
        return {(7, IPv4Address(f"239.1.{i // 250}.{i % 250 + 1}"), None) for i in range(n)}
    return {(7, IPv6Address(f"ff3e::{i + 1:x}"), None) for i in range(n)}


def test_joins_fill_sockets_up_to_the_limit_and_reuse_the_room_left(limit: list[int]) -> None:
    m = Memberships()
    four, six = keys(45), keys(5, 6)
    m.change(four | six, set())
    assert set(m.joined) == four | six and not m.failed
    counts = sorted((s.family, n) for s, n in m.members.items())  # type: ignore[attr-defined]
    assert counts == [(socket.AF_INET, 5), (socket.AF_INET, 20), (socket.AF_INET, 20), (socket.AF_INET6, 5)]
    left = sorted(four, key=memberships._order)[:10]  # the first socket's
    m.change(set(), set(left))
    assert len(m.members) == 4
    m.change(set(left), set())  # back into the room left: no new socket
    assert len(m.members) == 4 and sorted(m.members.values()) == [5, 10, 15, 20]
    limit[0] = 30  # the operator raised the limit: the sockets that were full take more
    m.change(keys(75) - four, set())
    assert len(m.members) == 4 and sorted(m.members.values()) == [5, 15, 30, 30]
    m.close()
    assert not m.members and not m.joined


def test_sources_of_one_group_go_to_different_sockets(limit: list[int]) -> None:
    m = Memberships()
    group = IPv4Address("239.9.9.9")
    joins = {(7, group, IPv4Address(f"10.0.0.{i}")) for i in range(1, 4)}
    m.change(joins, set())
    assert len({m.joined[k] for k in joins}) == 3


def test_a_group_left_by_some_sources_keeps_them_apart_from_the_rest(limit: list[int]) -> None:
    """Down from three holders of a group to one and back: a new source never shares a socket with the
    group's other source, and nothing is left of the group once every source is gone."""
    m = Memberships()
    group = IPv4Address("239.9.9.9")
    a, b, c = ((7, group, IPv4Address(f"10.0.0.{i}")) for i in range(1, 4))
    m.change({a, b, c}, set())
    m.change(set(), {b, c})
    m.change({b}, set())
    assert m.joined[a] is not m.joined[b]
    m.change(set(), {a, b})
    assert not m.joined and not m.members and not m._held
