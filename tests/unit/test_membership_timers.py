"""SetQuerierTimers in the supervisor's querier shell: the timers in force per interface (config, then the
family's run-time changes, then the interface's), validation of what would be in force everywhere, and a reload
that changes the config's timers dropping the run-time ones. Sockets are fakes; the clock is the loop's."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import cast

import pytest

from mcr.membership.querier import TimerChanges, Timers
from mcr.membership.settings import MembershipSettings
from mcr.membership.wire import Family
from mcr.model.errors import ValidationError
from mcr.model.links import Link
from mcr.supervisor.queriers import Queriers

V4, V6 = Family.IPV4, Family.IPV6


class FakeSocket:
    """Readable never (an idle socketpair end for the loop's reader); what is sent is kept."""

    def __init__(self) -> None:
        self.pair = socket.socketpair()
        self.sent: list[bytes] = []

    def fileno(self) -> int:
        return self.pair[0].fileno()

    def sendto(self, data: bytes, address: object) -> int:
        self.sent.append(data)
        return len(data)

    def recvfrom(self, size: int) -> tuple[bytes, object]:
        raise BlockingIOError

    def close(self) -> None:
        for s in self.pair:
            s.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def queriers(loop: asyncio.AbstractEventLoop, igmp: MembershipSettings) -> Queriers:
    made: list[FakeSocket] = []

    def open_socket(link: Link, family: Family) -> socket.socket:
        made.append(FakeSocket())
        return cast(socket.socket, made[-1])

    q = Queriers(loop, igmp, MembershipSettings(), lambda: None, open_socket)
    links = {n: Link(n, i, True, 1500, (IPv4Address(f"10.0.{i}.1"),)) for i, n in ((1, "eth1"), (2, "eth2"))}
    q.on_links(links)
    return q


CONFIG = MembershipSettings(querier_interfaces=("eth1", "eth2"), timers=Timers(query_interval=60.0))


def timers_of(q: Queriers) -> dict[str, Timers | None]:
    return {v.interface: v.timers for v in q.views()}


def test_family_then_interface_changes_are_in_force(loop: asyncio.AbstractEventLoop) -> None:
    q = queriers(loop, CONFIG)
    text = q.set_timers(V4, None, TimerChanges(query_response_interval=5.0))
    assert text == "IGMP timers set on every interface: query_response_interval 5"
    assert q.set_timers(V4, "eth2", TimerChanges(query_interval=20.0, robustness=3)) == (
        "IGMP timers set on eth2: robustness 3, query_interval 20"
    )
    assert timers_of(q) == {
        "eth1": Timers(query_interval=60.0, query_response_interval=5.0),
        "eth2": Timers(query_interval=20.0, query_response_interval=5.0, robustness=3),
    }
    assert q.cores["eth2", V4].timers == Timers(query_interval=20.0, query_response_interval=5.0, robustness=3)
    q.close()


@pytest.mark.parametrize(
    ("interface", "changes", "message"),
    [
        ("eth1", TimerChanges(query_response_interval=60.0), "Invalid IGMP timers on eth1: query_response_interval "),
        (None, TimerChanges(robustness=9), "Invalid IGMP timers: robustness must be 1 to 7, got 9"),
        # fine on its own, but eth2 has its own query interval of 20
        (None, TimerChanges(query_response_interval=30.0), "Invalid IGMP timers on eth2: query_response_interval"),
        ("eth1", TimerChanges(query_interval=0.5), "query_interval must be 1 to 31744 seconds, got 0.5"),
        ("eth1", TimerChanges(other_querier_present_interval=10.0), "other_querier_present_interval must be more"),
        ("eth1/x", TimerChanges(robustness=3), "Invalid interface: interface name 'eth1/x' contains invalid"),
    ],
)
def test_refused_changes_change_nothing(
    loop: asyncio.AbstractEventLoop, interface: str | None, changes: TimerChanges, message: str
) -> None:
    q = queriers(loop, CONFIG)
    q.set_timers(V4, "eth2", TimerChanges(query_interval=20.0))
    before = timers_of(q)
    with pytest.raises(ValidationError) as e:
        q.set_timers(V4, interface, changes)
    assert str(e.value).startswith(message) or message in str(e.value)
    assert timers_of(q) == before
    q.close()


def test_mld_refuses_version_3(loop: asyncio.AbstractEventLoop) -> None:
    q = queriers(loop, CONFIG)
    with pytest.raises(ValidationError, match=r"^Invalid MLD timers: version must be 1 or 2 for MLD"):
        q.set_timers(V6, None, TimerChanges(version=3))
    q.close()


def test_an_interface_not_up_yet_takes_its_timers_when_it_starts(loop: asyncio.AbstractEventLoop) -> None:
    q = queriers(loop, CONFIG)
    text = q.set_timers(V4, "eth3", TimerChanges(query_interval=30.0))
    assert text.endswith("; eth3 has no IGMP querier or tracking yet, they apply when it starts")
    q.set_querier(V4, "eth3", True)
    q.on_links({**q.links, "eth3": Link("eth3", 3, True, 1500, (IPv4Address("10.0.3.1"),))})
    assert timers_of(q)["eth3"] == Timers(query_interval=30.0)
    q.close()


def test_a_reload_keeps_run_time_timers_unless_the_configs_timers_change(loop: asyncio.AbstractEventLoop) -> None:
    q = queriers(loop, CONFIG)
    q.set_timers(V4, "eth1", TimerChanges(query_interval=30.0))
    q.configure(MembershipSettings(querier_interfaces=("eth1",), timers=CONFIG.timers), MembershipSettings())
    assert timers_of(q) == {"eth1": Timers(query_interval=30.0)}
    q.configure(
        MembershipSettings(querier_interfaces=("eth1",), timers=Timers(query_interval=90.0)), MembershipSettings()
    )
    assert timers_of(q) == {"eth1": Timers(query_interval=90.0)} and q.changes == {}
    q.close()
