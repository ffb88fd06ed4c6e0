"""The queriers' socket shell: one packet socket per (interface, family) that tracks memberships, the pure
`Querier` of each, and its timers on the event loop.

The supervisor owns these sockets; workers never see them. Each is an `AF_PACKET` `SOCK_DGRAM` socket bound to
the interface and the family's ethertype, with a classic BPF filter that passes only IGMP (IPv4) or hop-by-hop +
ICMPv6 (IPv6), ALLMULTI on the interface so reports to any group arrive, and the host's own outgoing packets
ignored. Queries go out on the same socket as whole IP packets (Router Alert, TTL 1) to the group's Ethernet
address. Everything read is parsed by `mcr.membership.wire`; what does not parse is counted by reason.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

from mcr.linux.packet_socket import SOL_PACKET, attach_filter
from mcr.membership.filter import membership_filter
from mcr.membership.querier import Action, Changed, GroupView, Querier, QuerierView, Send, TimerChanges, Timers
from mcr.membership.settings import MembershipSettings
from mcr.membership.wire import Drop, Family, build_packet, parse_packet
from mcr.model.errors import ValidationError
from mcr.model.links import Link
from mcr.model.rules import interface_name_problem
from mcr.packet.build import multicast_mac, multicast_mac6
from mcr.packet.cbpf import pack_program

log = logging.getLogger("mcr.supervisor.queriers")

ETHERTYPE = {Family.IPV4: 0x0800, Family.IPV6: 0x86DD}
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_ALLMULTI = 2
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
READ_BATCH = 64  # packets read per wake-up, so a flood cannot starve the loop
Key = tuple[str, Family]


def _address(link: Link, family: Family) -> IPv4Address | IPv6Address | None:
    if family is Family.IPV4:
        return link.ipv4[0] if link.ipv4 else None
    return next((a for a in link.ipv6 if a.is_link_local), None)  # MLD is sent from the link-local address


def open_membership_socket(link: Link, family: Family) -> socket.socket:
    proto = socket.htons(ETHERTYPE[family])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, proto)
    try:
        attach_filter(sock, pack_program(membership_filter(family)))
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass  # older kernels: outgoing packets are skipped by their packet type when read
        sock.bind((link.name, ETHERTYPE[family]))
        mreq = struct.pack("iHH8s", link.ifindex, PACKET_MR_ALLMULTI, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    except BaseException:
        sock.close()
        raise
    return sock


class Queriers:
    """Every querier and passive tracker of the supervisor, for both families."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        igmp: MembershipSettings,
        mld: MembershipSettings,
        on_change: Callable[[], None],
        open_socket: Callable[[Link, Family], socket.socket] = open_membership_socket,
    ) -> None:
        self.loop = loop
        self.on_change = on_change
        self.open_socket = open_socket
        self.settings = {Family.IPV4: igmp, Family.IPV6: mld}
        self.wanted: dict[Key, bool] = {}  # (interface, family) -> active (query) or passive
        self.followed: set[Key] = set()  # outputs that follow receivers there: tracked passively at least
        self.cores: dict[Key, Querier] = {}
        self.sockets: dict[Key, socket.socket] = {}
        self.bound: dict[Key, int] = {}  # the ifindex each socket is bound to
        self.timers: dict[Key, asyncio.TimerHandle] = {}
        self.drops: dict[Key, Counter[str]] = {}
        self.links: dict[str, Link] = {}
        # timers changed at run time (SetQuerierTimers): per family (interface None) and per interface
        self.changes: dict[tuple[str | None, Family], TimerChanges] = {}
        self.configure(igmp, mld)

    # ------------------------------------------------------------------------------ configuration

    def configure(self, igmp: MembershipSettings, mld: MembershipSettings) -> None:
        """(Re)apply the config: interfaces added or removed, timers changed. Run-time enables stay."""
        old = self.settings
        self.settings = {Family.IPV4: igmp, Family.IPV6: mld}
        for family, s in self.settings.items():
            before = old[family]
            for name in set(before.querier_interfaces + before.passive_interfaces) - set(
                s.querier_interfaces + s.passive_interfaces
            ):
                self.wanted.pop((name, family), None)
            for name in s.querier_interfaces:
                self.wanted[name, family] = True
            for name in s.passive_interfaces:
                self.wanted[name, family] = False
            if s.timers != before.timers and any(k[1] is family for k in self.changes):
                self.changes = {k: v for k, v in self.changes.items() if k[1] is not family}
                log.info("%s: the config's timers changed, so the run-time changes are dropped", family.protocol)
        self._apply_timers()
        self.on_links(self.links)

    def timers_for(self, family: Family, interface: str | None) -> Timers:
        """The timers in force on an interface (None: on one without changes of its own): the config's, then
        the family's run-time changes, then the interface's."""
        none = TimerChanges()
        changes = self.changes.get((None, family), none)
        if interface is not None:
            changes = changes.merged(self.changes.get((interface, family), none))
        return changes.applied(self.settings[family].timers)

    def set_timers(self, family: Family, interface: str | None, changes: TimerChanges) -> str:
        """SetQuerierTimers: the response text; ValidationError (and nothing changed) if the timers that would
        be in force on an interface are not valid together."""
        if interface is not None:
            problem = interface_name_problem(interface)
            if problem:
                raise ValidationError(f"Invalid interface: {problem}")
        name = family.protocol.upper()
        before = self.changes
        key = (interface, family)
        self.changes = {**before, key: before.get(key, TimerChanges()).merged(changes)}
        where: list[str | None] = [interface]
        if interface is None:  # the family's timers, and those of every interface with its own changes or running
            where += sorted({n for n, f in [*self.changes, *self.cores] if f is family and n is not None})
        for place in where:
            problems = self.timers_for(family, place).problems(family)
            if problems:
                self.changes = before
                raise ValidationError(f"Invalid {name} timers{'' if place is None else ' on ' + place}: {problems[0]}")
        self._apply_timers()
        given = ", ".join(f"{k} {v:g}" for k, v in changes.given().items())
        waiting = ""
        if interface is not None and key not in self.cores:
            waiting = f"; {interface} has no {name} querier or tracking yet, they apply when it starts"
        return f"{name} timers set on {interface or 'every interface'}: {given}{waiting}"

    def _apply_timers(self) -> None:
        now = self.loop.time()
        for key, core in list(self.cores.items()):
            timers = self.timers_for(key[1], key[0])
            if core.timers != timers:
                self._execute(key, core.set_timers(timers, now))

    def follow(self, keys: set[Key]) -> None:
        """Track memberships (passively, unless configured to query) where outputs follow receivers."""
        if keys != self.followed:
            self.followed = keys
            self.on_links(self.links)

    def tracked(self) -> dict[Key, bool]:
        """Every (interface, family) to track, and whether to query there."""
        return {**dict.fromkeys(self.followed, False), **self.wanted}

    def set_querier(self, family: Family, interface: str, enabled: bool) -> str:
        """EnableIgmpQuerier / DisableIgmpQuerier (and MLD's): the response text; ValidationError if refused."""
        problem = interface_name_problem(interface)
        if problem:
            raise ValidationError(f"Invalid interface: {problem}")
        name = "IGMP" if family is Family.IPV4 else "MLD"
        key = (interface, family)
        self.wanted[key] = enabled
        core = self.cores.get(key)
        if core is not None:
            self._execute(key, core.set_active(enabled, self.loop.time()))
        else:
            self.on_links(self.links)
        state = "enabled" if enabled else "disabled (memberships still tracked)"
        waiting = "" if key in self.cores else f"; {interface} is not up yet, it starts when it appears"
        return f"{name} querier {state} on {interface}{waiting}"

    # ------------------------------------------------------------------------------ links

    def on_links(self, links: dict[str, Link]) -> None:
        self.links = links
        now = self.loop.time()
        tracked = self.tracked()
        for key in list(self.cores):
            link = links.get(key[0])
            if key not in tracked or link is None or not link.up or link.ifindex != self.bound[key]:
                self._stop(key)  # a link deleted and made again has a new index: its socket is bound to the old
        for key, active in tracked.items():
            name, family = key
            link = links.get(name)
            if link is None or not link.up:
                continue
            address = _address(link, family)
            core = self.cores.get(key)
            if core is None:
                try:
                    sock = self.open_socket(link, family)
                except OSError as e:
                    log.error("%s on %s: cannot open the membership socket: %s", family.protocol, name, e)
                    continue
                core = Querier(name, family, self.timers_for(family, name), address=address, active=active)
                self.cores[key] = core
                self.sockets[key] = sock
                self.bound[key] = link.ifindex
                self.drops.setdefault(key, Counter())
                self.loop.add_reader(sock.fileno(), self._readable, key)
                log.info(
                    "%s %s on %s (address %s)",
                    family.protocol.upper(),
                    "querier" if active else "passive tracking",
                    name,
                    address,
                )
                self._execute(key, core.start(now))
            else:
                if core.active != active:
                    self._execute(key, core.set_active(active, now))
                self._execute(key, core.set_address(address, now))

    def _stop(self, key: Key) -> None:
        core = self.cores.pop(key)
        sock = self.sockets.pop(key)
        self.bound.pop(key, None)
        self.loop.remove_reader(sock.fileno())
        sock.close()
        handle = self.timers.pop(key, None)
        if handle is not None:
            handle.cancel()
        log.info("%s on %s stopped", key[1].protocol.upper(), key[0])
        if core.groups:
            self.on_change()

    def close(self) -> None:
        for key in list(self.cores):
            self._stop(key)

    # ------------------------------------------------------------------------------ events

    def _readable(self, key: Key) -> None:
        sock, core, drops = self.sockets[key], self.cores[key], self.drops[key]
        actions: list[Action] = []
        now = self.loop.time()
        for _ in range(READ_BATCH):
            try:
                data, address = sock.recvfrom(65535)
            except BlockingIOError:
                break
            except OSError as e:
                log.warning("%s on %s: receive failed: %s", key[1].protocol, key[0], e)
                break
            if address[2] == PACKET_OUTGOING:
                continue
            parsed = parse_packet(data)
            if isinstance(parsed, Drop):
                drops[parsed.value] += 1
                continue
            if parsed.message.family is not key[1]:
                drops[Drop.BAD_IP_HEADER.value] += 1
                continue
            actions += core.receive(parsed, now)
        self._execute(key, actions)

    def _tick(self, key: Key) -> None:
        self.timers.pop(key, None)
        core = self.cores.get(key)
        if core is not None:
            self._execute(key, core.tick(self.loop.time()))

    def _execute(self, key: Key, actions: Iterable[Action]) -> None:
        core = self.cores.get(key)
        if core is None:
            return
        changed = False
        for action in actions:
            match action:
                case Send():
                    self._send(key, core, action)
                case Changed():
                    changed = True
        handle = self.timers.pop(key, None)
        if handle is not None:
            handle.cancel()
        deadline = core.deadline()
        if deadline is not None:
            self.timers[key] = self.loop.call_at(deadline, self._tick, key)
        if changed:
            self.on_change()

    def _send(self, key: Key, core: Querier, send: Send) -> None:
        if core.address is None:
            return
        packet = build_packet(send.message, core.address, send.destination)
        dst = send.destination
        mac = multicast_mac(dst) if isinstance(dst, IPv4Address) else multicast_mac6(dst)
        try:
            self.sockets[key].sendto(packet, (key[0], ETHERTYPE[key[1]], 0, 0, mac))
        except OSError as e:
            self.drops[key]["send_errors"] += 1
            log.warning("%s on %s: sending a query failed: %s", key[1].protocol, key[0], e)

    # ------------------------------------------------------------------------------ views

    def groups(self, family: Family) -> list[GroupView]:
        now = self.loop.time()
        out: list[GroupView] = []
        for key in sorted(k for k in self.cores if k[1] is family):
            out += self.cores[key].group_views(now)
        return out

    def views(self) -> list[QuerierView]:
        now = self.loop.time()
        out: list[QuerierView] = []
        for key in sorted(self.cores, key=lambda k: (k[0], k[1].value)):
            view = self.cores[key].view(now)
            counters = dict(view.counters)
            counters.update({f"dropped_{reason}": n for reason, n in sorted(self.drops[key].items())})
            out.append(replace(view, counters=counters))
        return out
