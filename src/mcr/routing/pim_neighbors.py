"""PIM neighbour discovery and DR election (RFC 7761 §4.3), pure: events and time in, actions out.

One `PimNeighbors` holds every PIM-enabled interface. The shell feeds it Hellos (`on_hello`) and the
clock (`on_timer`, at `next_deadline()`), and carries out the actions: `SendHello` on an interface,
and the neighbour and DR changes it logs and hands on. Randomness (GenID, the triggered-Hello delay)
is chosen by the shell and passed in, so every path here is deterministic under test.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from mcr.routing.pim_wire import DEFAULT_HELLO_PERIOD, Hello, IPAddress

HOLDTIME_INFINITE = 0xFFFF  # a neighbour that never times out (RFC 7761 §4.9.2)
TRIGGERED_HELLO_DELAY = 5.0  # seconds; the shell draws a delay in [0, this)
DEFAULT_DR_PRIORITY = 1
MAX_NEIGHBORS = 256  # per interface: Hellos from more sources (a flood) are counted, not kept


@dataclass(frozen=True, slots=True)
class InterfaceSettings:
    name: str
    address: IPAddress  # our primary address on the link: the Hello source, and our DR candidacy
    dr_priority: int = DEFAULT_DR_PRIORITY
    hello_period: int = DEFAULT_HELLO_PERIOD
    secondary_addresses: tuple[IPAddress, ...] = ()  # our other addresses there (IPv6: the global ones)

    @property
    def holdtime(self) -> int:
        return min(HOLDTIME_INFINITE - 1, int(self.hello_period * 3.5))


@dataclass(frozen=True, slots=True)
class Neighbor:
    interface: str
    address: IPAddress
    holdtime: int
    dr_priority: int | None  # None: its Hellos carry no DR Priority option
    generation_id: int | None
    expires_at: float | None  # None: holdtime 0xFFFF, never expires
    up_since: float
    secondary_addresses: tuple[IPAddress, ...] = ()


class DownReason(Enum):
    EXPIRED = "holdtime expired"
    GOODBYE = "goodbye (holdtime 0)"
    DISABLED = "PIM disabled on the interface"


@dataclass(frozen=True, slots=True)
class SendHello:
    interface: str
    hello: Hello


@dataclass(frozen=True, slots=True)
class NeighborUp:
    neighbor: Neighbor


@dataclass(frozen=True, slots=True)
class NeighborDown:
    neighbor: Neighbor
    reason: DownReason


@dataclass(frozen=True, slots=True)
class NeighborRestarted:
    """Its GenID changed: it rebooted or reset PIM, and lost the state we gave it."""

    neighbor: Neighbor


@dataclass(frozen=True, slots=True)
class DrChanged:
    interface: str
    dr: IPAddress
    we_are_dr: bool


Action = SendHello | NeighborUp | NeighborDown | NeighborRestarted | DrChanged


@dataclass(slots=True)
class _Interface:
    settings: InterfaceSettings
    generation_id: int
    next_hello: float
    dr: IPAddress
    neighbors: dict[IPAddress, Neighbor]

    def hello(self) -> Hello:
        s = self.settings
        return Hello(s.holdtime, s.dr_priority, self.generation_id, secondary_addresses=s.secondary_addresses)


def elect_dr(own: InterfaceSettings, neighbors: list[Neighbor]) -> IPAddress:
    """RFC 7761 §4.3.2: the highest priority wins, the highest address breaks ties; if any router on the
    link does not advertise a priority, priorities are ignored and the highest address wins."""
    candidates: list[tuple[int | None, IPAddress]] = [(own.dr_priority, own.address)]
    candidates += [(n.dr_priority, n.address) for n in neighbors]
    if any(priority is None for priority, _ in candidates):
        return max(address for _, address in candidates)
    return max(candidates, key=lambda c: (c[0] or 0, c[1]))[1]


class PimNeighbors:
    """Every PIM interface: our Hellos, the neighbours heard, and the DR of each link."""

    def __init__(self) -> None:
        self._interfaces: dict[str, _Interface] = {}
        self.table_full = 0  # Hellos from a new neighbour on an interface that has MAX_NEIGHBORS already

    # ---------------------------------------------------------------------------------------- queries

    @property
    def interfaces(self) -> dict[str, InterfaceSettings]:
        return {name: i.settings for name, i in self._interfaces.items()}

    def neighbors(self, interface: str | None = None) -> list[Neighbor]:
        found = [
            n
            for name, i in sorted(self._interfaces.items())
            if interface is None or name == interface
            for n in sorted(i.neighbors.values(), key=lambda n: n.address)
        ]
        return found

    def dr(self, interface: str) -> IPAddress | None:
        i = self._interfaces.get(interface)
        return None if i is None else i.dr

    def generation_id(self, interface: str) -> int | None:
        i = self._interfaces.get(interface)
        return None if i is None else i.generation_id

    def is_neighbor(self, interface: str, address: IPAddress) -> bool:
        """True when `address` is a neighbour on `interface` (its primary or a secondary address)."""
        i = self._interfaces.get(interface)
        if i is None:
            return False
        return address in i.neighbors or any(address in n.secondary_addresses for n in i.neighbors.values())

    def primary_address(self, interface: str, address: IPAddress) -> IPAddress | None:
        """The primary address of the neighbour on `interface` that has `address` (primary or secondary)."""
        i = self._interfaces.get(interface)
        if i is None:
            return None
        if address in i.neighbors:
            return address
        return next((n.address for n in i.neighbors.values() if address in n.secondary_addresses), None)

    def next_deadline(self) -> float | None:
        times = [i.next_hello for i in self._interfaces.values()]
        times += [n.expires_at for i in self._interfaces.values() for n in i.neighbors.values() if n.expires_at]
        return min(times, default=None)

    # ----------------------------------------------------------------------------------------- events

    def enable(self, settings: InterfaceSettings, generation_id: int, now: float, delay: float = 0.0) -> list[Action]:
        """Start PIM on an interface (or change its settings: a new priority is announced at once).
        The first Hello goes out after `delay` (RFC: random in [0, Triggered_Hello_Delay))."""
        old = self._interfaces.get(settings.name)
        if old is not None:
            if settings.address != old.settings.address:
                old.generation_id = generation_id
            old.settings = settings
            old.next_hello = now
            return self._elect(old)
        i = _Interface(settings, generation_id, now + delay, settings.address, {})
        self._interfaces[settings.name] = i
        return [DrChanged(settings.name, settings.address, True)]

    def disable(self, name: str) -> list[Action]:
        """Stop PIM on an interface: a Goodbye (holdtime 0) and every neighbour on it forgotten."""
        i = self._interfaces.pop(name, None)
        if i is None:
            return []
        actions: list[Action] = [SendHello(name, replace(i.hello(), holdtime=0))]
        actions += [NeighborDown(n, DownReason.DISABLED) for n in i.neighbors.values()]
        return actions

    def on_hello(self, interface: str, source: IPAddress, hello: Hello, now: float, delay: float = 0.0) -> list[Action]:
        """A Hello heard on `interface` from `source`. `delay` is the triggered-Hello delay to use when
        the neighbour is new or restarted (so that it learns about us without waiting a period)."""
        i = self._interfaces.get(interface)
        if i is None or source == i.settings.address:
            return []
        holdtime = hello.holdtime if hello.holdtime is not None else i.settings.holdtime
        old = i.neighbors.get(source)
        if holdtime == 0:
            if old is None:
                return []
            del i.neighbors[source]
            return [NeighborDown(old, DownReason.GOODBYE), *self._elect(i)]
        if old is None and len(i.neighbors) >= MAX_NEIGHBORS:
            self.table_full += 1
            return []
        expires = None if holdtime == HOLDTIME_INFINITE else now + holdtime
        actions: list[Action] = []
        up_since = now if old is None else old.up_since
        new = Neighbor(
            interface,
            source,
            holdtime,
            hello.dr_priority,
            hello.generation_id,
            expires,
            up_since,
            hello.secondary_addresses,
        )
        i.neighbors[source] = new
        if old is None:
            actions.append(NeighborUp(new))
            i.next_hello = min(i.next_hello, now + delay)
        elif old.generation_id is not None and hello.generation_id != old.generation_id:
            actions.append(NeighborRestarted(new))
            i.next_hello = min(i.next_hello, now + delay)
        return actions + self._elect(i)

    def on_timer(self, now: float) -> list[Action]:
        """Send the Hellos that are due and expire the neighbours whose holdtime ran out."""
        actions: list[Action] = []
        for name, i in sorted(self._interfaces.items()):
            gone = [n for n in i.neighbors.values() if n.expires_at is not None and n.expires_at <= now]
            for n in gone:
                del i.neighbors[n.address]
                actions.append(NeighborDown(n, DownReason.EXPIRED))
            if gone:
                actions += self._elect(i)
            if i.next_hello <= now:
                actions.append(SendHello(name, i.hello()))
                i.next_hello = now + i.settings.hello_period
        return actions

    def _elect(self, i: _Interface) -> list[Action]:
        dr = elect_dr(i.settings, list(i.neighbors.values()))
        if dr == i.dr:
            return []
        i.dr = dr
        return [DrChanged(i.settings.name, dr, dr == i.settings.address)]
