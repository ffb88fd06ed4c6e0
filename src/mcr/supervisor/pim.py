"""The PIM shell: raw IP protocol 103 sockets on the PIM interfaces, around the pure neighbour core.

The supervisor owns these sockets (they need CAP_NET_RAW); workers never see PIM. One socket per
interface, bound to it (SO_BINDTODEVICE), joined to ALL-PIM-ROUTERS (224.0.0.13) there, sending with
TTL 1, TOS 0xc0 and loop off. What arrives is parsed by `mcr.routing.pim_wire`; a bad message is
counted by its drop reason. Timers run on the event loop's clock (monotonic), at the core's
`next_deadline()`.

An interface is enabled by name (EnablePim, or the config); it runs while it exists, is up and has an
IPv4 address, and waits otherwise, like a rule whose interface is missing. A passive interface (FRR's
`ip pim passive`) has no socket: no Hellos go out or are taken there, nothing is joined through it, and we
are the DR of its directly connected sources, which are registered and forwarded as on a PIM interface.

Join/Prunes addressed to us build downstream state (`mcr.routing.pim_joins`); whenever the outgoing
interface lists change, `on_routes` (the supervisor) recomputes the data plane, where they are merged
into the rules for those groups (`merge_pim_outputs`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

from mcr.linux.packet_socket import SOL_PACKET, attach_filter, read_statistics
from mcr.model.errors import ValidationError
from mcr.model.links import Link
from mcr.model.rules import ForwardingRule, OutputDestination, interface_name_problem
from mcr.packet.cbpf import pack_program
from mcr.protocol.routing import (
    DisablePim,
    EnablePim,
    MrouteInfo,
    PimInterfaceInfo,
    PimNeighborInfo,
    PimUpstreamInfo,
    SetStaticRp,
)
from mcr.routing.config import PimConfig, PimInterfaceConfig
from mcr.routing.msdp_wire import SaEntry
from mcr.routing.pim_assert import AssertState, our_metric
from mcr.routing.pim_dr_register import (
    REGISTER_STOP_TIMER,
    DrRegisters,
    LocalSource,
    SendRegister,
    could_register,
    register6_filter,
    register_stop_filter,
    source_group_filter,
)
from mcr.routing.pim_joins import JoinState, RpTable
from mcr.routing.pim_neighbors import (
    DEFAULT_DR_PRIORITY,
    TRIGGERED_HELLO_DELAY,
    Action,
    DrChanged,
    InterfaceSettings,
    NeighborDown,
    NeighborRestarted,
    NeighborUp,
    PimNeighbors,
    SendHello,
)
from mcr.routing.pim_register import RpRegisters, inner_addresses
from mcr.routing.pim_spt import SptPolicy, SptSwitch, new_source_filter, rpt_prunes, stale_spt_bits
from mcr.routing.pim_upstream import (
    T_OVERRIDE,
    T_SUPPRESSED,
    SendJoinPrune,
    Upstream,
    Wanted,
    resolve_upstream,
)
from mcr.routing.pim_wire import (
    ALL_PIM_ROUTERS_V4,
    ALL_PIM_ROUTERS_V6,
    DEFAULT_HELLO_PERIOD,
    IPPROTO_PIM,
    Assert,
    Hello,
    IPAddress,
    JoinPrune,
    PimDrop,
    PimMessage,
    Register,
    RegisterStop,
    build_pim,
    build_pim6,
    parse_pim,
    parse_pim6,
)
from mcr.routing.unicast import UnicastRoute, next_hop, parse_proc_net_ipv6_route, parse_proc_net_route

log = logging.getLogger("mcr.controlplane.pim")  # facility ControlPlane

_MREQN = struct.Struct("=4s4si")
IPV6_CHECKSUM = 7  # <linux/in6.h>: the kernel fills in (and checks) the checksum at this offset
TOS_INTERNETWORK_CONTROL = 0xC0
RECV_BATCH = 64
PIM_OUTPUT_TTL = 16  # TTL of what we send down a PIM-joined interface: routers downstream decrement it
PACKET_IGNORE_OUTGOING = 23
IP_MULTICAST_ALL = 49
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
IPV6_MULTICAST_ALL = 29
_PKTINFO6 = struct.Struct("=16sI")  # struct in6_pktinfo
SOURCE_ADDRESS_MAX_AGE = 1.0  # seconds the source address the kernel picks toward an RP is reused
PROC_NET_ROUTE, PROC_NET_IPV6_ROUTE = "/proc/net/route", "/proc/net/ipv6_route"
ROUTES_MAX_AGE = 1.0  # seconds a read of the kernel's unicast routes is used for RPF lookups
RPF_RECHECK = 5.0  # seconds between RPF' recomputations while something is joined (routes may have moved)
REGISTER_PAUSE = 0.1  # seconds a data capture stops being read once the Register rate is reached


def merge_pim_outputs(
    rules: Iterable[ForwardingRule], joins: JoinState, asserts: AssertState | None = None
) -> list[ForwardingRule]:
    """The rules with PIM's outgoing interfaces for their group added as outputs (same group and port),
    except the rule's input interface and interfaces it already sends that group and port to. A rule
    with a single input source takes that source's (S,G) interfaces too."""
    if joins.empty:
        return list(rules)  # no PIM downstream state: nothing to merge (the usual case, kept cheap)
    merged: list[ForwardingRule] = []
    for rule in rules:
        source = rule.input_source
        host = source.network_address if source is not None and source.prefixlen == source.max_prefixlen else None
        oifs = joins.outputs_for(rule.input_group, host)
        if asserts is not None:
            oifs = tuple(o for o in oifs if not asserts.is_lost(o, rule.input_group))
        have = {(o.group, o.port, o.interface) for o in rule.outputs}
        extra = tuple(
            OutputDestination(rule.input_group, rule.input_port, oif, PIM_OUTPUT_TTL)
            for oif in oifs
            if oif != rule.input_interface and (rule.input_group, rule.input_port, oif) not in have
        )
        merged.append(replace(rule, outputs=(*rule.outputs, *extra)) if extra else rule)
    return merged


class MergedRules(Mapping[str, ForwardingRule]):
    """The rule table as the data plane sees it: each rule with the outputs PIM adds for its group, computed
    per rule on access (so the incremental resolver touches only the rules it asks for). One object for the
    supervisor's life: the resolver's cache is invalidated by every update, which every PIM change makes."""

    def __init__(self, table: HasRules, services: Sequence[PimService]) -> None:
        self._table = table
        self._services = services

    def __getitem__(self, rule_id: str) -> ForwardingRule:
        rule = self._table.rules[rule_id]
        for s in self._services:
            if not s.joins.empty:
                (rule,) = merge_pim_outputs((rule,), s.joins, s.asserts)
        return rule

    def __iter__(self) -> Iterator[str]:
        return iter(self._table.rules)

    def __len__(self) -> int:
        return len(self._table.rules)


class HasRules(Protocol):
    """The rule table (`RuleTable`), read through its `rules`."""

    @property
    def rules(self) -> Mapping[str, ForwardingRule]: ...


@contextmanager
def _raw_pim(family: int) -> Iterator[socket.socket]:
    """A new raw PIM socket (non-blocking, close-on-exec) to set up in the block; closed if that fails."""
    sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, IPPROTO_PIM)
    try:
        yield sock
    except BaseException:
        sock.close()
        raise


def open_pim_socket(link: Link) -> socket.socket:
    """A raw PIM socket that hears and speaks on `link` only."""
    with _raw_pim(socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, link.name.encode())
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _MREQN.pack(b"\0" * 4, b"\0" * 4, link.ifindex))
        sock.setsockopt(
            socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _MREQN.pack(ALL_PIM_ROUTERS_V4.packed, b"\0" * 4, link.ifindex)
        )
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_INTERNETWORK_CONTROL)
    return sock


def open_pim6_socket(link: Link) -> socket.socket:
    """A raw IPv6 PIM socket on `link` only; the kernel computes and checks the checksum (IPV6_CHECKSUM),
    pseudo-header included."""
    with _raw_pim(socket.AF_INET6) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, link.name.encode())
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, 2)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, link.ifindex)
        sock.setsockopt(
            socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, struct.pack("=16sI", ALL_PIM_ROUTERS_V6.packed, link.ifindex)
        )
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, TOS_INTERNETWORK_CONTROL)
    return sock


def open_register_socket(family: int = 4) -> socket.socket:
    """The DR's unicast PIM socket, on no interface: Registers go out where the kernel routes the RP, from the
    address it picks; only Register-Stops (to any of our addresses, on any interface) are let in. IPv6: no
    IPV6_CHECKSUM (a Register's checksum covers 8 bytes only, which the kernel cannot do): we compute and
    check them, with the addresses of each packet (IPV6_PKTINFO); Registers are let in too (we may be the RP:
    the per-interface sockets, whose kernel check covers the whole message, drop them)."""
    if family == 6:
        return open_register6_socket()
    with _raw_pim(socket.AF_INET) as sock:
        attach_filter(sock, pack_program(register_stop_filter()))
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)  # a full-size packet is fragmented
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_INTERNETWORK_CONTROL)
    return sock


def open_register6_socket() -> socket.socket:
    with _raw_pim(socket.AF_INET6) as sock:
        attach_filter(sock, pack_program(register6_filter()))
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, TOS_INTERNETWORK_CONTROL)
    return sock


def source_address_toward(target: IPAddress) -> IPAddress | None:
    """The address the kernel sends from toward `target` (a UDP socket connected, nothing sent), or None."""
    family = socket.AF_INET if target.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
            probe.connect((str(target), 9))
            name = probe.getsockname()[0]
    except OSError:
        return None
    return IPv4Address(name) if target.version == 4 else IPv6Address(str(name).partition("%")[0])


def open_group_capture(link: Link, program: bytes, rcvbuf: int = 64 << 10, family: int = 4) -> socket.socket:
    """What arrives on `link` for a group (IP header first, the link-layer sender in the address), through
    `program`, a classic BPF filter of the sources not to see."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 0)
    try:
        attach_filter(sock, program)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass  # the filter drops outgoing packets by their type as well
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((link.name, ETH_P_IP if family == 4 else ETH_P_IPV6))
    except OSError:
        sock.close()
        raise
    return sock


def open_source_capture(link: Link, local: LocalSource) -> socket.socket:
    """A copy of what a directly connected source sends to its group on `link`, for the Registers while the
    register tunnel is up."""
    program = pack_program(source_group_filter(local.source, local.group))
    return open_group_capture(link, program, 256 << 10, local.group.version)


def link_local(link: Link) -> IPv6Address | None:
    return next((a for a in link.ipv6 if a.is_link_local), None)


def split_ipv4(datagram: bytes) -> tuple[IPv4Address, bytes] | None:
    """(source, payload) of an IPv4 datagram as a raw socket delivers it, or None when malformed."""
    if len(datagram) < 20 or datagram[0] >> 4 != 4:
        return None
    ihl = (datagram[0] & 0x0F) * 4
    total = int.from_bytes(datagram[2:4], "big")
    if ihl < 20 or total < ihl or len(datagram) < total:
        return None
    return IPv4Address(datagram[12:16]), datagram[ihl:total]


class PimService:
    """PIM on the interfaces the operator enabled: sockets, timers, and the neighbour core."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_routes: Callable[[], None] = lambda: None,
        on_sources: Callable[[], None] = lambda: None,
        family: int = 4,
    ) -> None:
        self.family = family  # 4, or 6: PIM over IPv6 (link-local Hellos to ff02::d), the same cores
        self.loop = loop
        self.on_routes = on_routes
        self.on_sources = on_sources  # the sources registered with us (as RP) changed
        self.registers = RpRegisters()
        self.asserts = AssertState()
        self.core = PimNeighbors()
        self.joins = JoinState()
        self.rps = RpTable()
        self.upstream = Upstream()
        self.dr_registers = DrRegisters()
        self.register_socket: socket.socket | None = None
        self._source_addresses: dict[IPAddress, tuple[IPAddress | None, float]] = {}  # RP -> (ours toward it, when)
        self.captures: dict[LocalSource, socket.socket] = {}  # every source we register
        self.capturing: set[LocalSource] = set()  # of those, the ones read (tunnel up)
        self._rules: Iterable[ForwardingRule] = ()
        self._sa_sources: tuple[SaEntry, ...] = ()
        self.rule_trees: frozenset[Wanted] = frozenset()  # what the rules (and MSDP's sources) want
        self.pim_trees: frozenset[Wanted] = frozenset()  # of those, the ones on interfaces PIM runs on
        self.wanted_trees: frozenset[Wanted] = frozenset()  # those, and the sources switched to their SPT
        self.spt = SptSwitch()
        self._routes: list[UnicastRoute] = []
        self._routes_at: float | None = None
        self._rpf_check_at: float | None = None
        self.discovery: dict[tuple[str, IPAddress], tuple[socket.socket, tuple[IPAddress, ...]]] = {}
        self.wanted: dict[str, PimInterfaceConfig] = {}
        self.passive: dict[str, IPAddress] = {}  # the passive interfaces that run: our address there
        self.links: dict[str, Link] = {}
        self.sockets: dict[str, socket.socket] = {}
        self.counters: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None
        self._rng = random.SystemRandom()

    # ------------------------------------------------------------------------------------- requests

    def enable(self, req: EnablePim) -> str:
        problem = interface_name_problem(req.interface)
        if problem:
            raise ValidationError(problem)
        old = self.wanted.get(req.interface)
        config = PimInterfaceConfig(
            req.interface,
            req.dr_priority if req.dr_priority is not None else (old.dr_priority if old else DEFAULT_DR_PRIORITY),
            req.hello_period if req.hello_period is not None else (old.hello_period if old else DEFAULT_HELLO_PERIOD),
            req.passive if req.passive is not None else (old.passive if old else False),
        )
        self.wanted[req.interface] = config
        self.reconcile()
        running = req.interface in (self.passive if config.passive else self.sockets)
        state = "" if running else " (waiting: the interface is missing, down or has no IPv4)"
        if config.passive:
            return f"PIM enabled on {req.interface}, passive (no Hellos; its connected sources only){state}"
        return f"PIM enabled on {req.interface} with DR priority {config.dr_priority}{state}"

    def disable(self, req: DisablePim) -> str:
        if self.wanted.pop(req.interface, None) is None:
            raise ValidationError(f"PIM is not enabled on {req.interface}")
        self.reconcile()
        return f"PIM disabled on {req.interface}"

    def configure(self, config: PimConfig) -> None:
        """The config file's [pim]: its interfaces enabled, its static RPs set (at start-up)."""
        if not config.enabled:
            return
        for rp in config.static_rps:
            self.rps.set(rp.prefix, rp.rp)
        self.spt.policy = config.spt_switchover
        for i in config.interfaces:
            self.wanted[i.name] = i
        self.reconcile()

    def set_rules(self, rules: Iterable[ForwardingRule], sa_sources: Iterable[SaEntry] = ()) -> None:
        """The rules as they stand (a re-iterable view, kept): each one capturing on a PIM interface wants its
        group's tree there; a rule for any source also wants the (S,G) tree of every source that MSDP learned
        for its group."""
        self._rules = rules
        self._sa_sources = tuple(sa_sources)
        self._rebuild_rule_trees()

    def _rebuild_rule_trees(self) -> None:
        """The trees the rules want, from the rules on interfaces PIM is enabled on (none: no work, so that a
        rule change costs nothing here without PIM); the upstream state follows when they changed."""
        by_group: dict[IPAddress, list[IPAddress]] = {}
        for sa in self._sa_sources:
            by_group.setdefault(sa.group, []).append(sa.source)
        for reg in self.registers.sources():  # sources registered with us (the RP): their trees are joined
            if reg.source not in by_group.get(reg.group, ()):
                by_group.setdefault(reg.group, []).append(reg.source)
        wanted = set()
        enabled = self.wanted
        for r in self._rules if enabled else ():
            if r.input_interface not in enabled or r.input_group.version != self.family:
                continue
            source = r.input_source
            host = source.network_address if source is not None and source.prefixlen == source.max_prefixlen else None
            wanted.add(Wanted(r.input_interface, r.input_group, host))
            if source is None:
                wanted.update(Wanted(r.input_interface, r.input_group, s) for s in by_group.get(r.input_group, ()))
        if frozenset(wanted) != self.rule_trees:
            self.rule_trees = frozenset(wanted)
            self._refresh_upstream()

    def _any_source_groups(self) -> set[tuple[str, IPAddress]]:
        """(interface, group) of the rules for any source of their group on a running PIM interface."""
        return {(w.interface, w.group) for w in self.pim_trees if w.source is None}

    def _connected(self, interface: str, source: IPAddress) -> bool:
        link = self.links.get(interface)
        if link is None:
            return False
        networks = link.ipv4_networks if self.family == 4 else link.ipv6_networks
        return any(source in net for net in networks)

    def _is_dr(self, interface: str) -> bool:
        if interface in self.passive:
            return True  # no other router is heard there: the connected sources are ours
        settings = self.core.interfaces.get(interface)
        return settings is not None and self.core.dr(interface) == settings.address

    def _neighbor_addresses(self) -> dict[str, list[IPAddress]]:
        """The neighbours per interface with Hellos (a passive interface is not there: nothing is joined on it)."""
        return {name: [n.address for n in self.core.neighbors(name)] for name in self.core.interfaces}

    def _connected_pairs(self, wanted: Iterable[Wanted]) -> frozenset[tuple[str, IPAddress]]:
        return frozenset(
            (w.interface, w.source) for w in wanted if w.source is not None and self._connected(w.interface, w.source)
        )

    def _gateway(self, interface: str, target: IPAddress) -> IPAddress | None:
        """The next hop toward `target` when the kernel routes it out of `interface` (RPF'), as the primary
        address of the PIM neighbour that has it when there is one (IPv6: a global next hop, or the target
        itself on the link, is a neighbour's secondary address; its Hellos come from its link-local one)."""
        now = self.loop.time()
        if self._routes_at is None or now - self._routes_at >= ROUTES_MAX_AGE:
            self._routes_at = now
            path, parse = (
                (PROC_NET_ROUTE, parse_proc_net_route)
                if self.family == 4
                else (PROC_NET_IPV6_ROUTE, parse_proc_net_ipv6_route)
            )
            try:
                with open(path, encoding="ascii", errors="replace") as f:
                    self._routes = parse(f.read())
            except OSError as e:
                log.warning("cannot read the unicast routes (%s): RPF uses the link's neighbours only", e)
                self._routes = []
        hop = next_hop(self._routes, target)
        if hop is None or hop[0] != interface:
            return None
        return self.core.primary_address(interface, hop[1]) or hop[1]

    def _refresh_upstream(self) -> None:
        running = self.core.interfaces.keys() | self.passive.keys()
        # only what PIM runs under matters here: with PIM off (or on few interfaces) a rule change costs little
        self.pim_trees = frozenset(w for w in self.rule_trees if w.interface in running)
        self.spt.forget(self._any_source_groups())
        self.wanted_trees = self.pim_trees | {Wanted(s.interface, s.group, s.source) for s in self.spt.sources()}
        ours = self._ours()
        connected = self._connected_pairs(self.wanted_trees)
        entries, unresolved = resolve_upstream(
            self.wanted_trees, self.rps, self._neighbor_addresses(), ours, connected, self._gateway
        )
        self.spt.reconsider(stale_spt_bits(entries, self.spt.sources()), self.loop.time())
        entries |= rpt_prunes(entries, self.spt.sources())
        self._refresh_registers(ours)
        for text in set(unresolved) - set(self.upstream.unresolved):
            log.warning("PIM cannot join %s", text)
        now = self.loop.time()
        self._send_join_prunes(self.upstream.update(entries, unresolved, now))
        joined = self.upstream.join_at or self.upstream.unresolved  # PIM pulls (or would pull) something
        self._rpf_check_at = now + RPF_RECHECK if joined else None
        self._sync_discovery()
        self._schedule()

    # ----------------------------------------------------------------------------- SPT switchover

    def _discovering(self) -> set[tuple[str, IPAddress]]:
        """Where new sources are looked for: an any-source rule's group on a PIM interface where we are on the
        shared tree (a (*,G) Join upstream) and switch to the SPT, or where we are the DR (a directly connected
        source to register)."""
        star = {(e.interface, e.group) for e in self.upstream.entries if e.source is None and not e.rpt}
        if self.spt.policy is SptPolicy.NEVER:
            star = set()
        return {k for k in self._any_source_groups() if k in star or self._is_dr(k[0])}

    def _sync_discovery(self) -> None:
        wanted = self._discovering()
        for key in set(self.discovery) - wanted:
            sock, _ = self.discovery.pop(key)
            self.loop.remove_reader(sock.fileno())
            sock.close()
        for key in wanted:
            interface, group = key
            known = tuple(sorted(self.spt.settled(interface, group)))
            current = self.discovery.get(key)
            if current is not None and current[1] == known:
                continue
            program = pack_program(new_source_filter(group, known))
            if current is not None:
                try:
                    attach_filter(current[0], program)  # replaces the old filter
                except OSError as e:
                    log.warning("cannot update the source filter of %s on %s: %s", group, interface, e)
                    continue
                self.discovery[key] = (current[0], known)
                continue
            link = self.links.get(interface)
            if link is None:
                continue
            try:
                sock = open_group_capture(link, program, family=self.family)
            except OSError as e:
                log.error("cannot look for the sources of %s on %s: %s", group, interface, e)
                continue
            self.discovery[key] = (sock, known)
            self.loop.add_reader(sock.fileno(), self._on_discovery, key)

    def _same_upstream(self, interface: str, group: IPAddress, source: IPAddress) -> bool:
        """Whether our (S,G) Join goes to the neighbour our (*,G) Join goes to (or either is not sent)."""
        star = next(
            (
                e
                for e in self.upstream.entries
                if (e.source, e.group, e.interface, e.rpt) == (None, group, interface, False)
            ),
            None,
        )
        wanted = [Wanted(interface, group, source)]
        entries, _ = resolve_upstream(
            wanted, self.rps, self._neighbor_addresses(), self._ours(), self._connected_pairs(wanted), self._gateway
        )
        own = next(iter(entries), None)
        return star is None or own is None or own.upstream == star.upstream

    def _on_discovery(self, key: tuple[str, IPAddress]) -> None:
        current = self.discovery.get(key)
        if current is None:
            return
        sock = current[0]
        interface, group = key
        now = self.loop.time()
        changed = False
        for _ in range(RECV_BATCH):
            try:
                packet, address = sock.recvfrom(65535)
            except BlockingIOError:
                break
            except OSError as e:
                log.warning("looking for the sources of %s on %s failed: %s", group, interface, e)
                break
            source: IPAddress
            if self.family == 4 and len(packet) >= 20 and packet[0] >> 4 == 4:
                source = IPv4Address(packet[12:16])
            elif self.family == 6 and len(packet) >= 40 and packet[0] >> 4 == 6:
                source = IPv6Address(packet[8:24])
            else:
                self.counters["spt_drop_bad_packet"] += 1  # the filter passes this family only: not expected
                continue
            sender = bytes(address[4]) if len(address) > 4 else b""
            local = self._connected(interface, source)
            same = local or self._same_upstream(interface, group, source)
            if self.spt.on_data(interface, group, source, sender, same, now, local=local):
                changed = True
                entry = next(
                    s for s in self.spt.sources() if (s.interface, s.group, s.source) == (interface, group, source)
                )
                log.info(
                    "PIM source %s for %s on %s: %s",
                    source,
                    group,
                    interface,
                    "on its SPT" if entry.spt_bit else "joining its SPT",
                )
        else:  # a full batch: look again a little later, so that a flood costs the supervisor little
            self.loop.remove_reader(sock.fileno())
            self.loop.call_later(REGISTER_PAUSE, self._resume_discovery, key, sock)
        if changed:
            self._refresh_upstream()

    def _resume_discovery(self, key: tuple[str, IPAddress], sock: socket.socket) -> None:
        current = self.discovery.get(key)
        if current is not None and current[0] is sock:
            self.loop.add_reader(sock.fileno(), self._on_discovery, key)

    # ------------------------------------------------------------------------------- DR's Register

    def _refresh_registers(self, ours: frozenset[IPAddress]) -> None:
        """Register the directly connected sources we are the DR of."""
        could = could_register(self.wanted_trees, self._connected, self._is_dr, self.rps, ours)
        before = {e.local for e in self.dr_registers.entries()}
        self.dr_registers.update(could)
        for local in set(could.values()) - before:
            log.info(
                "PIM registering source %s for %s with RP %s (DR on %s)",
                local.source,
                local.group,
                local.rp,
                local.interface,
            )
        for local in before - set(could.values()):
            log.info("PIM stops registering source %s for %s with RP %s", local.source, local.group, local.rp)
        self._sync_captures()

    def _sync_captures(self) -> None:
        """The register socket while there is anything to register (IPv6: also while PIM runs, for the Registers
        to us as RP); a data capture per tunnel in Join."""
        needed = bool(self.dr_registers.entries()) or (self.family == 6 and bool(self.core.interfaces))
        if needed and self.register_socket is None:
            try:
                self.register_socket = open_register_socket(self.family)
            except OSError as e:
                log.error("cannot open the PIM Register socket: %s", e)
            else:
                self.loop.add_reader(self.register_socket.fileno(), self._on_register_socket)
        elif not needed and self.register_socket is not None:
            self.loop.remove_reader(self.register_socket.fileno())
            self.register_socket.close()
            self.register_socket = None
        # a capture per source we register: read while its tunnel is up (Join); otherwise never read, only
        # its kernel counters looked at (does the source still send?), what arrives dropped by the kernel
        entries = {e.local for e in self.dr_registers.entries()} if self.register_socket is not None else set()
        tunnels = self.dr_registers.tunnels() & entries
        for local in set(self.captures) - entries:
            sock = self.captures.pop(local)
            if local in self.capturing:
                self.capturing.discard(local)
                self.loop.remove_reader(sock.fileno())
                self._count_capture_drops(sock)
            sock.close()
        for local in entries - set(self.captures):
            link = self.links.get(local.interface)
            if link is None:
                continue
            try:
                self.captures[local] = open_source_capture(link, local)
            except OSError as e:
                log.error("cannot capture %s for %s on %s to register it: %s", local.source, local.group, link.name, e)
        for local in self.capturing - tunnels:
            self.capturing.discard(local)
            sock = self.captures[local]
            self.loop.remove_reader(sock.fileno())
            self._count_capture_drops(sock)
            self._stats(sock)  # from now on the counters say whether the source still sends
        for local in (tunnels & set(self.captures)) - self.capturing:
            sock = self.captures[local]
            self._drain(sock)  # what queued while suppressed is old: not registered
            self._stats(sock)
            self.capturing.add(local)
            self.loop.add_reader(sock.fileno(), self._on_capture, local)

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        for _ in range(65536):
            try:
                sock.recv(1)  # truncated: only emptying the queue
            except OSError:
                return

    @staticmethod
    def _stats(sock: socket.socket) -> tuple[int, int]:
        try:
            return read_statistics(sock)
        except OSError:
            return 0, 0

    def _watch_suppressed_sources(self, now: float) -> None:
        """The sources whose tunnel is down: whether each sent since the last look (its Keepalive)."""
        for local, sock in self.captures.items():
            if local not in self.capturing and self._stats(sock)[0]:
                self.dr_registers.saw_data(local.source, local.group, now)

    def _on_capture(self, local: LocalSource) -> None:
        sock = self.captures.get(local)
        if sock is None:
            return
        now = self.loop.time()
        for _ in range(RECV_BATCH):
            try:
                packet = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as e:
                log.warning("capture of %s for %s failed: %s", local.source, local.group, e)
                return
            send = self.dr_registers.encapsulate(local.source, local.group, packet, now)
            if send is None:  # over the rate: stop reading a while (the kernel drops what overflows)
                self.loop.remove_reader(sock.fileno())
                self.loop.call_later(REGISTER_PAUSE, self._resume_capture, local, sock)
                return
            self._send_register(send, "tx_register")

    def _resume_capture(self, local: LocalSource, sock: socket.socket) -> None:
        if local in self.capturing and self.captures.get(local) is sock:
            self._count_capture_drops(sock)
            self.loop.add_reader(sock.fileno(), self._on_capture, local)

    def _count_capture_drops(self, sock: socket.socket) -> None:
        """What the kernel dropped unread while the capture paused: not registered either (rate limit)."""
        self.counters["register_capture_drops"] += self._stats(sock)[1]

    def _our_address_toward(self, target: IPAddress) -> IPAddress | None:
        now = self.loop.time()
        cached = self._source_addresses.get(target)
        if cached is None or now - cached[1] >= SOURCE_ADDRESS_MAX_AGE:
            if len(self._source_addresses) > 1024:
                self._source_addresses.clear()
            cached = (source_address_toward(target), now)
            self._source_addresses[target] = cached
        return cached[0]

    def _send_unicast6(self, msg: PimMessage, destination: IPAddress, source: IPAddress | None = None) -> None:
        """A PIM message to `destination` over IPv6 from `source` (default: the address the kernel picks toward
        it), its checksum computed here with that pseudo-header. Raises OSError."""
        sock = self.register_socket
        assert sock is not None and isinstance(destination, IPv6Address)
        source = source if source is not None else self._our_address_toward(destination)
        if not isinstance(source, IPv6Address):
            raise OSError(f"no route to {destination}")
        pktinfo = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _PKTINFO6.pack(source.packed, 0))
        sock.sendmsg([build_pim6(msg, source, destination)], [pktinfo], 0, (str(destination), 0))

    def _send_register(self, send: SendRegister, counter: str) -> None:
        if self.register_socket is None:
            return
        try:
            if self.family == 6:
                self._send_unicast6(send.message, send.rp)
            else:
                self.register_socket.sendto(build_pim(send.message), (str(send.rp), 0))
        except OSError as e:
            self.counters["tx_register_errors"] += 1
            if self.counters["tx_register_errors"] % 100 == 1:  # the first, then one in a hundred
                log.warning(
                    "PIM Register to RP %s failed: %s (%d so far)", send.rp, e, self.counters["tx_register_errors"]
                )
            return
        self.counters[counter] += 1

    def _on_register_socket(self) -> None:
        if self.family == 6:
            self._on_register_socket6()
            return
        sock = self.register_socket
        if sock is None:
            return
        for _ in range(RECV_BATCH):
            try:
                datagram = sock.recv(65535)
            except BlockingIOError:
                break
            except OSError as e:
                log.warning("PIM Register socket receive failed: %s", e)
                break
            split = split_ipv4(datagram)
            msg = parse_pim(split[1]) if split is not None else PimDrop.TRUNCATED
            if split is None or not isinstance(msg, RegisterStop):
                self.counters["drop_bad_register_stop"] += 1
                continue
            self._on_register_stop(msg, split[0])
        self._schedule()

    def _on_register_stop(self, msg: RegisterStop, sender: IPAddress) -> None:
        self.counters["rx_register_stop_for_dr"] += 1
        timer = self._rng.uniform(*REGISTER_STOP_TIMER)
        if self.dr_registers.on_register_stop(msg, self.loop.time(), timer, sender):
            log.info(
                "PIM Register-Stop from %s for (%s,%s): registering suppressed", sender, msg.source, msg.group.address
            )
            self._sync_captures()

    def _on_register_socket6(self) -> None:
        """Registers (we may be the RP) and Register-Stops (we may be the DR) over IPv6, checksums checked here
        with each packet's addresses."""
        sock = self.register_socket
        if sock is None:
            return
        for _ in range(RECV_BATCH):
            try:
                data, ancillary, _flags, sender = sock.recvmsg(65535, socket.CMSG_SPACE(_PKTINFO6.size))
            except BlockingIOError:
                break
            except OSError as e:
                log.warning("PIM Register socket receive failed: %s", e)
                break
            destination = next(
                (
                    IPv6Address(d[:16])
                    for level, kind, d in ancillary
                    if (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO) and len(d) >= _PKTINFO6.size
                ),
                None,
            )
            source = IPv6Address(str(sender[0]).partition("%")[0])
            if destination is None or destination.is_multicast:
                self.counters["drop_bad_register"] += 1  # Registers and Register-Stops are unicast
                continue
            msg = parse_pim6(data, source, destination)
            if isinstance(msg, PimDrop):
                self.counters[f"drop_{msg.value}"] += 1
            elif isinstance(msg, RegisterStop):
                self._on_register_stop(msg, source)
            elif isinstance(msg, Register):
                self.counters["rx_register"] += 1
                self._on_register("", source, msg, destination)
            else:
                self.counters["drop_bad_register_stop"] += 1  # the filter lets these two types in only
        self._schedule()

    def _send_join_prunes(self, messages: list[SendJoinPrune]) -> None:
        for m in messages:
            self._send(m.interface, build_pim(m.message), "tx_join_prune")

    def set_static_rp(self, req: SetStaticRp) -> str:
        self.rps.set(req.group_prefix, req.rp_address)
        self._refresh_upstream()
        return f"Static RP {req.rp_address} set for {req.group_prefix}"

    def mroutes(self, rules: Iterable[ForwardingRule], static: bool = True) -> tuple[MrouteInfo, ...]:
        """The static rules (unless `static` is False), then PIM's (*,G) and (S,G) entries (input: a rule's for
        that group)."""
        now = self.loop.time()
        rules = list(rules)
        entries = (
            []
            if not static
            else [
                MrouteInfo(
                    None if r.input_source is None else r.input_source.network_address,
                    r.input_group,
                    r.input_interface,
                    tuple(sorted({o.interface for o in r.outputs})),
                    "Static",
                    0,
                )
                for r in rules
            ]
        )
        inputs = {r.input_group: r.input_interface for r in rules}
        entries += [
            MrouteInfo(
                m.source,
                m.group,
                inputs.get(m.group, ""),
                m.output_interfaces,
                m.entry_type.value,
                int(now - m.created_at),
            )
            for m in self.joins.routes()
        ]
        return tuple(entries)

    def core_counters(self) -> dict[str, int]:
        """What the cores count, by name (the supervisor prefixes `pim.` or `pim6.`)."""
        sources = self.spt.sources()
        return {
            "join_prune_not_for_us": self.joins.ignored,
            "join_prune_rp_mismatch": self.joins.rp_mismatch,
            "register_not_rp": self.registers.not_rp,
            "register_bad": self.registers.bad,
            "neighbors": len(self.core.neighbors()),
            "asserts_lost": len(self.asserts.lost()),
            "registers_table_full": self.registers.table_full,
            # the DR's side of Register: sources we register, by state, and what the RP said
            "dr_register_sources": len(self.dr_registers.entries()),
            "dr_register_tunnels": len(self.dr_registers.tunnels()),
            "dr_register_stops": self.dr_registers.stops_received,
            "dr_register_stops_unmatched": self.dr_registers.stops_unmatched,
            "dr_register_rate_limited": self.dr_registers.data_rate_limited,
            "dr_register_silent": self.dr_registers.silent_sources,
            # last-hop SPT switchover: sources joined on their own tree, those pruned off the shared one
            "spt_sources": len(sources),
            "spt_bit_set": sum(1 for s in sources if s.spt_bit),
            "spt_table_full": self.spt.table_full,
            "spt_unconfirmed": self.spt.unconfirmed,
        }

    def upstream_infos(self) -> tuple[PimUpstreamInfo, ...]:
        """What we ask of routers upstream: Joins and (S,G,rpt) Prunes, Registers, and the SPT sources."""
        now = self.loop.time()

        def secs(at: float | None) -> int | None:
            return None if at is None else max(0, math.ceil(at - now))

        infos = [
            PimUpstreamInfo(
                "rpt_prune" if e.rpt else "join", e.source, e.group, e.interface, e.upstream, "sent", secs(at)
            )
            for e, at in sorted(
                self.upstream.join_at.items(), key=lambda i: (i[0].interface, str(i[0].group), str(i[0].source))
            )
        ]
        infos += [
            PimUpstreamInfo(
                "register",
                e.local.source,
                e.local.group,
                e.local.interface,
                e.local.rp,
                e.state.value,
                secs(e.timer_at),
            )
            for e in self.dr_registers.entries()
        ]
        infos += [
            PimUpstreamInfo(
                "spt",
                s.source,
                s.group,
                s.interface,
                None,
                s.state.value + (" (SPT bit)" if s.spt_bit else ""),
                secs(s.deadline),
            )
            for s in self.spt.sources()
        ]
        return tuple(infos)

    def interface_infos(self) -> tuple[PimInterfaceInfo, ...]:
        running = self.core.interfaces
        infos = []
        for name, config in sorted(self.wanted.items()):
            passive = self.passive.get(name)
            if passive is not None:
                infos.append(
                    PimInterfaceInfo(
                        name, "passive", passive, config.dr_priority, config.hello_period, passive, True, None, 0
                    )
                )
                continue
            settings = running.get(name)
            dr = self.core.dr(name)
            infos.append(
                PimInterfaceInfo(
                    name=name,
                    state="running" if settings is not None else "waiting",
                    address=settings.address if settings is not None else None,
                    dr_priority=config.dr_priority,
                    hello_period=config.hello_period,
                    dr=dr,
                    is_dr=settings is not None and dr == settings.address,
                    generation_id=self.core.generation_id(name),
                    neighbors=len(self.core.neighbors(name)),
                )
            )
        return tuple(infos)

    def neighbor_infos(self) -> tuple[PimNeighborInfo, ...]:
        now = self.loop.time()
        return tuple(
            PimNeighborInfo(
                interface=n.interface,
                address=n.address,
                dr_priority=DEFAULT_DR_PRIORITY if n.dr_priority is None else n.dr_priority,
                dr_priority_advertised=n.dr_priority is not None,
                is_dr=self.core.dr(n.interface) == n.address,
                expires_in_secs=None if n.expires_at is None else max(0, math.ceil(n.expires_at - now)),
                generation_id=n.generation_id,
                uptime_secs=int(now - n.up_since),
            )
            for n in self.core.neighbors()
        )

    # ---------------------------------------------------------------------------------------- links

    def on_links(self, links: dict[str, Link]) -> None:
        self.links = links
        self.reconcile()

    def _usable(self, name: str) -> Link | None:
        link = self.links.get(name)
        return link if link is not None and link.up and self._primary(link) is not None else None

    # ---------------------------------------------------------------------------------------- family

    def _primary(self, link: Link) -> IPAddress | None:
        """Our address on the link for this family: the first IPv4 address, or the IPv6 link-local one."""
        if self.family == 4:
            return link.ipv4[0] if link.ipv4 else None
        return link_local(link)

    def _addresses(self, link: Link) -> frozenset[IPAddress]:
        return frozenset(link.ipv4) if self.family == 4 else frozenset(link.ipv6)

    def _ours(self) -> frozenset[IPAddress]:
        return frozenset(a for link in self.links.values() for a in self._addresses(link))

    def _destination(self, name: str, address: IPAddress) -> tuple[str, int] | tuple[str, int, int, int]:
        if self.family == 4:
            return (str(address), 0)
        link = self.links.get(name)
        return (str(address), 0, 0, link.ifindex if link is not None else 0)

    def reconcile(self) -> None:
        """Run PIM on every wanted interface that is usable, and on nothing else."""
        now = self.loop.time()
        actions: list[Action] = []
        running = self.core.interfaces
        active = {name for name, config in self.wanted.items() if not config.passive}
        for name in sorted(set(running) - active):
            actions += self.core.disable(name)  # a Goodbye, also when the interface turns passive
        for name in sorted(set(self.passive) - (set(self.wanted) - active)):
            del self.passive[name]
            log.info("PIM passive on %s stopped", name)
        for name, config in sorted(self.wanted.items()):
            link = self._usable(name)
            if link is None:
                if name in running or name in self.passive:
                    log.warning("PIM on %s waits: the interface is missing, down or has no IPv4 address", name)
                    actions += self.core.disable(name) if name in running else []
                    self.passive.pop(name, None)
                continue
            address = self._primary(link)
            assert address is not None
            if config.passive:
                if self.passive.get(name) != address:
                    log.info("PIM passive on %s (%s): no Hellos; registering its connected sources", name, address)
                    self.passive[name] = address
                continue
            secondary = tuple(a for a in link.ipv6 if not a.is_link_local) if self.family == 6 else ()
            settings = InterfaceSettings(name, address, config.dr_priority, config.hello_period, secondary)
            if running.get(name) == settings:
                continue
            if name not in self.sockets:
                try:
                    self.sockets[name] = open_pim_socket(link) if self.family == 4 else open_pim6_socket(link)
                except OSError as e:
                    log.error("cannot open the PIM socket on %s: %s", name, e)
                    continue
                self.loop.add_reader(self.sockets[name].fileno(), self._on_readable, name)
                log.info("PIM enabled on %s (%s, DR priority %d)", name, address, config.dr_priority)
            actions += self.core.enable(settings, self._rng.getrandbits(32), now, self._rng.uniform(0, 1.0))
        self._execute(actions)
        self._rebuild_rule_trees()  # the interfaces PIM is enabled on may have changed
        self._refresh_upstream()
        routes_changed = False
        for name in sorted(set(self.sockets) - set(self.core.interfaces)):
            sock = self.sockets.pop(name)
            self.loop.remove_reader(sock.fileno())
            sock.close()
            routes_changed |= self.joins.forget_interface(name)
            routes_changed |= self.asserts.forget_interface(name)
        self._schedule()
        if routes_changed:
            self.on_routes()

    def close(self, goodbye: bool = True) -> None:
        """Goodbye (and Prunes) on every interface, then the sockets closed; nothing calls back any more.
        Without `goodbye` (a hitless restart) the sockets just close: neighbours keep us until our holdtime,
        and the next supervisor's new GenID makes them send their state again."""
        self.on_routes = self.on_sources = lambda: None
        if not goodbye:
            for sock in self.sockets.values():
                self.loop.remove_reader(sock.fileno())
                sock.close()
            self.sockets.clear()
        self.wanted.clear()
        self.reconcile()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --------------------------------------------------------------------------------------- events

    def _on_readable(self, name: str) -> None:
        sock = self.sockets.get(name)
        if sock is None:
            return
        for _ in range(RECV_BATCH):
            try:
                datagram, sender = sock.recvfrom(65535)
            except BlockingIOError:
                break
            except OSError as e:
                log.warning("PIM receive on %s failed: %s", name, e)
                break
            if self.family == 4:
                self._on_datagram(name, datagram)
            else:  # an IPv6 raw socket delivers the payload alone, its checksum checked by the kernel
                self._on_message(name, IPv6Address(sender[0].partition("%")[0]), parse_pim(datagram, verify=False))
        self._schedule()

    def _on_datagram(self, name: str, datagram: bytes) -> None:
        split = split_ipv4(datagram)
        if split is None:
            self.counters["drop_bad_ip_header"] += 1
            return
        source, payload = split
        self._on_message(name, source, parse_pim(payload))

    def _on_message(self, name: str, source: IPAddress, msg: PimMessage | PimDrop) -> None:
        if isinstance(msg, PimDrop):
            self.counters[f"drop_{msg.value}"] += 1
            return
        self.counters[f"rx_{type(msg).__name__.lower()}"] += 1
        if isinstance(msg, Hello):
            delay = self._rng.uniform(0, TRIGGERED_HELLO_DELAY)
            self._execute(self.core.on_hello(name, source, msg, self.loop.time(), delay))
        elif isinstance(msg, Register):
            if self.family == 4:  # IPv6: taken by the register socket, where its 8-byte checksum is checked
                self._on_register(name, source, msg)
        elif isinstance(msg, Assert):
            self._on_assert(name, source, msg)
        elif isinstance(msg, JoinPrune):
            link = self.links.get(name)
            ours = self._addresses(link) if link is not None else frozenset()
            now = self.loop.time()
            if self.joins.on_join_prune(name, msg, ours, now, self.rps.lookup):
                self.on_routes()
            if msg.upstream_neighbor not in ours:  # another router's, to its upstream: suppress or override
                self.upstream.on_others_join_prune(
                    name, msg, now, self._rng.uniform(*T_SUPPRESSED), self._rng.uniform(*T_OVERRIDE)
                )
                self._schedule()

    def _on_assert(self, name: str, sender: IPAddress, msg: Assert) -> None:
        link = self.links.get(name)
        group = msg.group.address
        forwarding = name in self.joins.outputs_for(group, msg.source)
        ours = None
        address = self._primary(link) if link is not None else None
        if address is not None and forwarding:
            ours = our_metric(group, self.rps.lookup(group), address, self._ours())
        reply, changed = self.asserts.on_assert(name, sender, msg, ours, self.loop.time())
        if reply is not None:
            self._send(name, build_pim(reply), "tx_assert")
        if changed:
            lost = self.asserts.is_lost(name, group)
            log.info("PIM Assert for %s on %s %s (from %s)", group, name, "lost" if lost else "won back", sender)
            self._schedule()
            self.on_routes()

    def _on_register(self, name: str, dr: IPAddress, reg: Register, to: IPAddress | None = None) -> None:
        """A Register from `dr` (on `name`; IPv6: on the register socket, sent to our address `to`)."""
        inner = inner_addresses(reg.data)
        rp = self.rps.lookup(inner[1]) if inner is not None else None
        ours = self._ours()
        stop, changed = self.registers.on_register(dr, reg, rp, ours, self.loop.time())
        if stop is not None:
            sock = self.sockets.get(name)
            try:
                if to is not None:
                    self._send_unicast6(stop, dr, to)  # from the address the Register came to
                    self.counters["tx_register_stop"] += 1
                elif sock is not None:
                    sock.sendto(build_pim(stop), self._destination(name, dr))
                    self.counters["tx_register_stop"] += 1
            except OSError as e:
                self.counters["tx_errors"] += 1
                log.warning("Register-Stop to %s on %s failed: %s", dr, name, e)
        if changed:
            log.info("PIM source %s for %s registered by DR %s", stop.source if stop else "?", rp, dr)
            self._rebuild_rule_trees()
            self._schedule()
            self.on_sources()

    def _on_timer(self) -> None:
        self._timer = None
        now = self.loop.time()
        self._execute(self.core.on_timer(now))
        self._send_join_prunes(self.upstream.on_timer(now))
        if self.joins.on_timer(now):
            self.on_routes()
        if self.registers.on_timer(now):
            self._rebuild_rule_trees()
            self.on_sources()
        if self.asserts.on_timer(now):
            self.on_routes()
        self._watch_suppressed_sources(now)
        probes, changed = self.dr_registers.on_timer(now)
        for probe in probes:
            self._send_register(probe, "tx_null_register")
        if changed:
            self._sync_captures()
        if self.spt.on_timer(now) or (self._rpf_check_at is not None and self._rpf_check_at <= now):
            self._refresh_upstream()  # a route that moved moves the Joins (a Prune to the old neighbour)
        self._schedule()

    def _schedule(self) -> None:
        candidates = (
            self.core.next_deadline(),
            self.joins.next_deadline(),
            self.upstream.next_deadline(),
            self.registers.next_deadline(),
            self.asserts.next_deadline(),
            self.dr_registers.next_deadline(),
            self.spt.next_deadline(),
            self._rpf_check_at,
        )
        deadlines = [d for d in candidates if d is not None]
        deadline = min(deadlines, default=None)
        if self._timer is not None and (deadline is None or self._timer.when() != deadline):
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case SendHello():
                    self._send(action.interface, build_pim(action.hello), "tx_hello")
                case NeighborUp():
                    n = action.neighbor
                    log.info("PIM neighbour %s up on %s (holdtime %d s)", n.address, n.interface, n.holdtime)
                    self._refresh_upstream()
                case NeighborDown():
                    n = action.neighbor
                    log.info("PIM neighbour %s down on %s: %s", n.address, n.interface, action.reason.value)
                    self._refresh_upstream()
                case NeighborRestarted():
                    n = action.neighbor
                    log.info("PIM neighbour %s on %s restarted (new GenID)", n.address, n.interface)
                    self._send_join_prunes(self.upstream.on_neighbor_restart(n.interface, n.address))
                case DrChanged():
                    who = "we are" if action.we_are_dr else f"{action.dr} is"
                    log.info("PIM DR on %s: %s the DR", action.interface, who)
                    self._refresh_upstream()

    def _send(self, name: str, data: bytes, counter: str) -> None:
        sock = self.sockets.get(name)
        if sock is None:
            return
        try:
            group = ALL_PIM_ROUTERS_V4 if self.family == 4 else ALL_PIM_ROUTERS_V6
            sock.sendto(data, self._destination(name, group))
        except OSError as e:
            self.counters["tx_errors"] += 1
            log.warning("PIM send on %s failed: %s", name, e)
            return
        self.counters[counter] += 1
