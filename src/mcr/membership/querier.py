"""The querier and membership table of one interface and one family (IGMP RFC 2236/3376, MLD RFC 2710/3810).

Pure: no sockets and no clock. `Querier.start`, `receive`, `tick`, `set_active` and `set_address` take `now`
(seconds, monotonic) and return actions: `Send` a query to an address, or `Changed` when a group's forwarding state
(who wants which sources) changed. `deadline()` says when `tick` must run next; the shell calls it then.

Versions are handled as "levels", the same for both families: 1 = any-source, no leaves (IGMPv1); 2 = any-source
with leaves (IGMPv2, MLDv1); 3 = source filtering (IGMPv3, MLDv2). A group's compatibility level is the lowest level
of a host heard in the last Older Host Present Interval; the querier's own sending level is the lowest of its
configured version and any older querier heard in the last Older Version Querier Present Interval (RFC 3376 7.3,
RFC 3810 8.3).

Router state per group follows RFC 3376 6.2-6.6 (the same tables as RFC 3810 7.2-7.6): filter mode, a group timer
(EXCLUDE mode only), source records with timers (a source whose timer is 0 in EXCLUDE mode is on the exclude list),
and the group-specific and group-and-source-specific query retransmissions of the querier, with the S flag set when
a timer is above the Last Member Query Time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from mcr.membership.wire import (
    ALL_NODES,
    UNSPECIFIED,
    Family,
    Inbound,
    Leave,
    Query,
    Record,
    RecordType,
    Report,
)

__all__ = [
    "INTEGER_TIMERS",
    "Action",
    "Changed",
    "FilterMode",
    "GroupView",
    "Listeners",
    "Querier",
    "QuerierView",
    "Send",
    "SourceView",
    "TimerChanges",
    "Timers",
    "level_of",
    "version_of",
]

IPAddress = IPv4Address | IPv6Address


def level_of(family: Family, version: int) -> int:
    """The common level of a protocol version: IGMPv1/v2/v3 are 1/2/3, MLDv1/v2 are 2/3."""
    return version if family is Family.IPV4 else version + 1


def version_of(family: Family, level: int) -> int:
    return level if family is Family.IPV4 else max(1, level - 1)


@dataclass(frozen=True, slots=True)
class Timers:
    """The querier's configuration (RFC 3376 8, RFC 3810 9). Zero for the startup and last-member values means
    "the RFC default" (startup interval QI/4, counts equal to the robustness). `version` is the highest version
    spoken (0: IGMPv3 / MLDv2). `other_querier_present_interval` 0 is the RFC's robustness * query_interval +
    query_response_interval / 2 (with the values the elected querier announces)."""

    robustness: int = 2
    query_interval: float = 125.0
    query_response_interval: float = 10.0
    last_member_query_interval: float = 1.0
    last_member_query_count: int = 0
    startup_query_interval: float = 0.0
    startup_query_count: int = 0
    version: int = 0
    other_querier_present_interval: float = 0.0

    def problems(self, family: Family = Family.IPV4) -> list[str]:
        """What is wrong with these values for `family`, as sentences for a validation error (empty when they
        are fine)."""
        out: list[str] = []
        if not 1 <= self.robustness <= 7:
            out.append(f"robustness must be 1 to 7, got {self.robustness}")
        if not 1 <= self.query_interval <= 31744:
            out.append(f"query_interval must be 1 to 31744 seconds, got {self.query_interval:g}")
        if not 0.1 <= self.query_response_interval <= 3174.4:
            out.append(f"query_response_interval must be 0.1 to 3174.4 seconds, got {self.query_response_interval:g}")
        elif self.query_response_interval >= self.query_interval:
            out.append("query_response_interval must be less than query_interval")
        if not 0.1 <= self.last_member_query_interval <= 25.5:
            out.append(
                f"last_member_query_interval must be 0.1 to 25.5 seconds, got {self.last_member_query_interval:g}"
            )
        if not 0 <= self.last_member_query_count <= 7:
            out.append(f"last_member_query_count must be 1 to 7 (0: robustness), got {self.last_member_query_count}")
        if self.startup_query_interval < 0 or self.startup_query_interval > self.query_interval:
            out.append("startup_query_interval must be between 0 (query_interval / 4) and query_interval")
        if not 0 <= self.startup_query_count <= 7:
            out.append(f"startup_query_count must be 1 to 7 (0: robustness), got {self.startup_query_count}")
        if self.version not in (0, 1, 2, 3):
            out.append(f"version must be 1, 2 or 3 (0: the highest), got {self.version}")
        elif family is Family.IPV6 and self.version == 3:
            out.append("version must be 1 or 2 for MLD (0: the highest)")
        oqpi = self.other_querier_present_interval
        if oqpi and not self.query_interval < oqpi <= 250000:
            out.append(
                "other_querier_present_interval must be more than query_interval and at most 250000 seconds "
                f"(0: robustness * query_interval + query_response_interval / 2), got {oqpi:g}"
            )
        return out


#: the `Timers` fields that are whole numbers (the others are seconds)
INTEGER_TIMERS = frozenset(f.name for f in fields(Timers) if isinstance(f.default, int))


@dataclass(frozen=True, slots=True)
class TimerChanges:
    """Some of the `Timers` fields, changed at run time (SetQuerierTimers): None leaves a field as it is."""

    robustness: int | None = None
    query_interval: float | None = None
    query_response_interval: float | None = None
    last_member_query_interval: float | None = None
    last_member_query_count: int | None = None
    startup_query_interval: float | None = None
    startup_query_count: int | None = None
    version: int | None = None
    other_querier_present_interval: float | None = None

    def given(self) -> dict[str, Any]:
        """The fields set, by name, in the order of `Timers` (an int or a float each)."""
        values = ((f.name, getattr(self, f.name)) for f in fields(self))
        return {name: value for name, value in values if value is not None}

    def merged(self, later: TimerChanges) -> TimerChanges:
        """These changes, then `later` on top of them."""
        return replace(self, **later.given())

    def applied(self, timers: Timers) -> Timers:
        return replace(timers, **self.given())


class FilterMode(Enum):
    INCLUDE = "include"
    EXCLUDE = "exclude"


@dataclass(frozen=True, slots=True)
class Send:
    """Send `message` to `destination` on this querier's interface."""

    message: Query
    destination: IPAddress


@dataclass(frozen=True, slots=True)
class Changed:
    """The forwarding state of `group` changed (it appeared, went, or its wanted sources changed)."""

    group: IPAddress


Action = Send | Changed


@dataclass(frozen=True, slots=True)
class SourceView:
    address: IPAddress
    expires_in: float  # 0 for a source on the exclude list (EXCLUDE mode)


@dataclass(frozen=True, slots=True)
class GroupView:
    """One row of the membership table."""

    interface: str
    family: Family
    group: IPAddress
    filter_mode: FilterMode
    expires_in: float  # the group timer in EXCLUDE mode, the longest source timer in INCLUDE mode
    sources: tuple[SourceView, ...]
    last_reporter: IPAddress | None
    version: int  # the group's compatibility version (the oldest host heard)
    is_querier: bool

    def wants(self, source: IPAddress | None) -> bool:
        """Whether a receiver here wants traffic from `source` (None: any source, i.e. someone listens)."""
        listed = {s.address: s.expires_in for s in self.sources}
        if self.filter_mode is FilterMode.EXCLUDE:
            return source is None or listed.get(source, 1.0) > 0
        if source is None:
            return bool(listed)
        return source in listed


@dataclass(frozen=True, slots=True)
class Listeners:
    """Who listens where, for the outputs that follow receivers: every membership table row by (interface, group)."""

    groups: Mapping[tuple[str, IPAddress], GroupView] = field(default_factory=dict)

    @classmethod
    def of(cls, views: Iterable[GroupView]) -> Listeners:
        return cls({(v.interface, v.group): v for v in views})

    def wants(self, interface: str, group: IPAddress, source: IPAddress | None) -> bool:
        """Whether a receiver on `interface` wants `group` from `source` (None: from any source)."""
        view = self.groups.get((interface, group))
        return view is not None and view.wants(source)


@dataclass(frozen=True, slots=True)
class QuerierView:
    interface: str
    family: Family
    active: bool  # configured to query (not passive)
    is_querier: bool
    address: IPAddress | None
    querier: IPAddress | None  # the elected querier (us or another router), None when unknown
    other_querier_expires_in: float
    version: int  # the version of the queries we send
    counters: dict[str, int]
    timers: Timers | None = None  # the timers in force (None: from a supervisor that does not say)


@dataclass(slots=True)
class _Group:
    group: IPAddress
    mode: FilterMode = FilterMode.INCLUDE
    timer: float = 0.0  # the group timer's deadline (EXCLUDE mode)
    sources: dict[IPAddress, float] = field(default_factory=dict)  # deadline; 0.0 = timer 0 (exclude list)
    host_until: dict[int, float] = field(default_factory=dict)  # older host present deadline per level
    last_reporter: IPAddress | None = None
    group_queries_left: int = 0
    source_queries_left: dict[IPAddress, int] = field(default_factory=dict)
    next_query: float = 0.0  # when the next retransmission is due (0: none pending)

    def level(self, now: float, top: int) -> int:
        return min([lv for lv, until in self.host_until.items() if until > now], default=top)

    def signature(self) -> tuple[FilterMode, frozenset[IPAddress], frozenset[IPAddress]]:
        wanted = frozenset(s for s, t in self.sources.items() if t > 0)
        return self.mode, wanted, frozenset(self.sources) - wanted


def _top(family: Family, timers: Timers) -> int:
    """The highest level spoken: the configured version's, IGMPv3 / MLDv2 when it is 0."""
    top = level_of(family, timers.version) if timers.version else 3
    return max(top, 2) if family is Family.IPV6 else top


_EXCLUDES = (RecordType.MODE_IS_EXCLUDE, RecordType.CHANGE_TO_EXCLUDE)
MAX_GROUPS = 4096  # per interface and family
MAX_SOURCES = 256  # per group (Linux hosts keep at most 10 by default: net.ipv4.igmp_max_msf)


class Querier:
    """The querier (or passive listener) and membership table of one interface and family."""

    def __init__(
        self,
        interface: str,
        family: Family,
        timers: Timers,
        *,
        address: IPAddress | None,
        active: bool,
        max_groups: int = MAX_GROUPS,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.interface = interface
        self.family = family
        self.max_groups = max_groups  # what a flood of reports can make us hold: the rest is counted, not kept
        self.max_sources = max_sources
        self.timers = timers
        self.address = address
        self.active = active
        self.top = _top(family, timers)
        self.groups: dict[IPAddress, _Group] = {}
        self.counters: Counter[str] = Counter()
        self.is_querier = False
        self.other_querier: IPAddress | None = None
        self.other_until = 0.0
        self.older_querier_until: dict[int, float] = {}
        self.next_general = 0.0
        self.last_general = 0.0
        self.startup_left = 0
        self.robustness = timers.robustness  # adopted from the querier's QRV when we are not querier
        self.query_interval = timers.query_interval  # adopted from its QQIC likewise

    # ---------------------------------------------------------------- derived intervals (RFC 3376 8)

    @property
    def gmi(self) -> float:
        return self.robustness * self.query_interval + self.timers.query_response_interval

    @property
    def other_querier_interval(self) -> float:
        if self.timers.other_querier_present_interval:
            return self.timers.other_querier_present_interval
        return self.robustness * self.query_interval + self.timers.query_response_interval / 2

    @property
    def lmqc(self) -> int:
        return self.timers.last_member_query_count or self.robustness

    @property
    def lmqt(self) -> float:
        return self.timers.last_member_query_interval * self.lmqc

    @property
    def startup_interval(self) -> float:
        return self.timers.startup_query_interval or self.timers.query_interval / 4

    def query_level(self, now: float) -> int:
        return min([lv for lv, until in self.older_querier_until.items() if until > now] + [self.top])

    # ---------------------------------------------------------------- events

    def start(self, now: float) -> list[Action]:
        """Begin: as querier (when active and addressed) with the startup queries, else listening only."""
        if self.active and self.address is not None:
            return self._become_querier(now, startup=True)
        return []

    def set_active(self, active: bool, now: float) -> list[Action]:
        """Enable (query) or disable (passive: keep tracking, never query) the querier at run time."""
        if active == self.active:
            return []
        self.active = active
        if not active:
            self.is_querier = False
            self.startup_left = 0
            for g in self.groups.values():
                g.group_queries_left, g.source_queries_left, g.next_query = 0, {}, 0.0
            return []
        if self._outranked(now):
            return []  # a lower-addressed querier is present; we take over when it goes quiet
        return self.start(now)

    def set_timers(self, timers: Timers, now: float) -> list[Action]:
        """New timers at run time, without a restart: the general query already due comes no later than the new
        interval after the previous one (one query, never a burst), later ones follow the new interval; a GMI
        that grows lengthens the running membership timers by as much, so that no receiver times out while the
        hosts answer within a longer response interval; a GMI that shrinks takes effect at the next report.
        Values learnt from another elected querier (its QRV and QQIC) stay until it goes."""
        old, old_gmi, old_lmqt = self.timers, self.gmi, self.lmqt
        self.timers = timers
        self.top = _top(self.family, timers)
        if self.is_querier or self.robustness == old.robustness:
            self.robustness = timers.robustness
        if self.is_querier or self.query_interval == old.query_interval:
            self.query_interval = timers.query_interval
        if self.is_querier and self.next_general:
            interval = self.startup_interval if self.startup_left else self.query_interval
            self.next_general = min(self.next_general, max(now, self.last_general + interval))
        grow = self.gmi - old_gmi
        if grow > 0:
            running = now + old_lmqt  # timers at or below it are ending (a leave's lowered timers): left alone
            for g in self.groups.values():
                if g.next_query:
                    continue  # group- or source-specific queries pending: a leave is being handled
                if g.mode is FilterMode.EXCLUDE and g.timer > running:
                    g.timer += grow
                g.sources = {s: t + grow if t > running else t for s, t in g.sources.items()}
        return []

    def _outranked(self, now: float) -> bool:
        other, own = self.other_querier, self.address
        return other is not None and self.other_until > now and (own is None or int(other) < int(own))

    def set_address(self, address: IPAddress | None, now: float) -> list[Action]:
        """The interface's address changed (or appeared, or went)."""
        if address == self.address:
            return []
        self.address = address
        if address is None:
            self.is_querier = False
            return []
        if self.is_querier or self._outranked(now):
            return []
        return self.start(now)

    def receive(self, inbound: Inbound, now: float) -> list[Action]:
        """A parsed message from this interface (never one we sent ourselves)."""
        message = inbound.message
        match message:
            case Query():
                self.counters[f"queries_received_v{message.version}"] += 1
                return self._on_query(inbound.source, message, now)
            case Report():
                self.counters[f"reports_v{message.version}"] += 1
                level = level_of(self.family, message.version)
                actions: list[Action] = []
                for record in message.records:
                    actions += self._on_record(record, level, inbound.source, now)
                return actions
            case Leave():
                self.counters["leaves"] += 1
                record = Record(RecordType.CHANGE_TO_INCLUDE, message.group)
                return self._on_record(record, 2, inbound.source, now, leave=True)
        raise AssertionError(message)

    def tick(self, now: float) -> list[Action]:
        """Everything due at `now`: queries, retransmissions, expiries."""
        actions: list[Action] = []
        self.older_querier_until = {lv: t for lv, t in self.older_querier_until.items() if t > now}
        if self.other_querier is not None and self.other_until <= now:
            self.other_querier = None
            self.robustness, self.query_interval = self.timers.robustness, self.timers.query_interval
            if self.active and self.address is not None and not self.is_querier:
                actions += self._become_querier(now, startup=False)
        if self.is_querier and self.next_general and self.next_general <= now:
            actions.append(self._general_query(now))
        for g in list(self.groups.values()):
            actions += self._tick_group(g, now)
        return actions

    def deadline(self) -> float | None:
        """When `tick` must next run (None: nothing is pending)."""
        times = [t for t in self.older_querier_until.values() if t]
        if self.is_querier and self.next_general:
            times.append(self.next_general)
        if self.other_querier is not None:
            times.append(self.other_until)
        for g in self.groups.values():
            if g.next_query:
                times.append(g.next_query)
            if g.mode is FilterMode.EXCLUDE:
                times.append(g.timer)
            times.extend(t for t in g.sources.values() if t > 0)
        return min(times, default=None)

    # ---------------------------------------------------------------- views

    def view(self, now: float) -> QuerierView:
        querier = self.address if self.is_querier else self.other_querier
        return QuerierView(
            interface=self.interface,
            family=self.family,
            active=self.active,
            is_querier=self.is_querier,
            address=self.address,
            querier=querier,
            other_querier_expires_in=max(0.0, self.other_until - now) if self.other_querier is not None else 0.0,
            version=version_of(self.family, self.query_level(now)),
            counters=dict(sorted(self.counters.items())),
            timers=self.timers,
        )

    def group_views(self, now: float) -> list[GroupView]:
        out: list[GroupView] = []
        for g in sorted(self.groups.values(), key=lambda g: int(g.group)):
            sources = tuple(
                SourceView(s, max(0.0, t - now) if t > 0 else 0.0)
                for s, t in sorted(g.sources.items(), key=lambda item: int(item[0]))
            )
            if g.mode is FilterMode.EXCLUDE:
                expires = max(0.0, g.timer - now)
            else:
                expires = max((s.expires_in for s in sources), default=0.0)
            out.append(
                GroupView(
                    interface=self.interface,
                    family=self.family,
                    group=g.group,
                    filter_mode=g.mode,
                    expires_in=expires,
                    sources=sources,
                    last_reporter=g.last_reporter,
                    version=version_of(self.family, g.level(now, self.top)),
                    is_querier=self.is_querier,
                )
            )
        return out

    # ---------------------------------------------------------------- querier role

    def _become_querier(self, now: float, *, startup: bool) -> list[Action]:
        self.is_querier = True
        self.other_querier = None
        self.other_until = 0.0
        self.robustness, self.query_interval = self.timers.robustness, self.timers.query_interval
        self.startup_left = (self.timers.startup_query_count or self.timers.robustness) if startup else 1
        return [self._general_query(now)]

    def _general_query(self, now: float) -> Send:
        self.startup_left = max(0, self.startup_left - 1)
        self.last_general = now
        self.next_general = now + (self.startup_interval if self.startup_left else self.query_interval)
        self.counters["queries_sent"] += 1
        self.counters["general_queries_sent"] += 1
        level = self.query_level(now)
        query = Query(
            self.family,
            version_of(self.family, level),
            UNSPECIFIED[self.family],
            10.0 if level == 1 else self.timers.query_response_interval,
            robustness=self.robustness if level == 3 else 0,
            query_interval=self.query_interval if level == 3 else 0.0,
        )
        return Send(query, ALL_NODES[self.family])

    def _on_query(self, source: IPAddress, query: Query, now: float) -> list[Action]:
        if self.address is not None and source == self.address:
            return []
        level = level_of(self.family, query.version)
        if level < self.top:
            older = self.robustness * self.query_interval + self.timers.query_response_interval
            self.older_querier_until[level] = now + older
        if int(source) == 0:
            return []  # a snooping switch's proxy query takes no part in the election (RFC 4541 2.1.1)
        own = self.address if self.active else None
        if own is None or int(source) < int(own):
            if self.other_querier is not None and self.other_until > now and int(self.other_querier) < int(source):
                return self._lower_timers(query, now)  # a passive listener hears two queriers: the lower counts
            self.is_querier = False
            self.startup_left = 0
            self.other_querier = source
            if query.robustness:
                self.robustness = query.robustness
            if query.query_interval:
                self.query_interval = query.query_interval
            self.other_until = now + self.other_querier_interval
        return self._lower_timers(query, now)

    def _lower_timers(self, query: Query, now: float) -> list[Action]:
        """A group or group-and-source query from the querier lowers our timers (RFC 3376 6.6.1)."""
        if query.general or query.suppress or self.is_querier:
            return []
        g = self.groups.get(query.group)
        if g is None:
            return []
        before = g.signature()
        lowered = now + query.max_response * self.robustness
        if not query.sources:
            if g.mode is FilterMode.EXCLUDE and g.timer > lowered:
                g.timer = lowered
        else:
            for s in query.sources:
                if g.sources.get(s, 0.0) > lowered:
                    g.sources[s] = lowered
        return self._changed(g, before)

    # ---------------------------------------------------------------- reports (RFC 3376 6.4, 7.3.2)

    def _on_record(
        self, record: Record, level: int, reporter: IPAddress, now: float, *, leave: bool = False
    ) -> list[Action]:
        group = record.group
        if group == ALL_NODES[self.family]:
            return []
        g = self.groups.get(group)
        if g is None:
            g = _Group(group)
        if not leave and level < 3:
            g.host_until[level] = now + self.gmi  # the Older Host Present Interval equals the GMI (RFC 3376 8.13)
        compat = g.level(now, self.top)
        kind, sources = record.type, frozenset(record.sources)
        if compat < 3:
            if kind is RecordType.BLOCK_OLD_SOURCES:
                return []
            if kind in (RecordType.CHANGE_TO_EXCLUDE, RecordType.MODE_IS_EXCLUDE):
                sources = frozenset()
            if leave and compat == 1:
                return []
        existed = group in self.groups
        if not existed:
            if kind is RecordType.BLOCK_OLD_SOURCES or (kind not in _EXCLUDES and not sources):
                return []  # nothing to include, nothing to block: no state (RFC 3376 6.4)
            if len(self.groups) >= self.max_groups:
                self.counters["dropped_table_full"] += 1
                return []
            self.groups[group] = g
        room = self.max_sources - len(g.sources.keys() - sources)
        if len(sources) > room:
            self.counters["dropped_table_full"] += 1
            sources = frozenset(sorted(sources, key=int)[: max(0, room)])
        before = g.signature() if existed else None
        g.last_reporter = reporter if int(reporter) else g.last_reporter
        self._apply(g, kind, sources, now)
        actions = self._retransmit(g, now)
        if g.mode is FilterMode.INCLUDE and not g.sources:
            del self.groups[group]
            return [*actions, Changed(group)] if before is not None else actions
        if before is None or before != g.signature():
            actions.append(Changed(group))
        return actions

    def _apply(self, g: _Group, kind: RecordType, b: frozenset[IPAddress], now: float) -> None:
        """Apply one record (RFC 3376 6.4.1, 6.4.2); the queries it calls for are scheduled, not sent."""
        gmi = now + self.gmi
        a = frozenset(g.sources)
        x = frozenset(s for s, t in g.sources.items() if t > 0)
        y = a - x
        include = g.mode is FilterMode.INCLUDE
        if kind in (RecordType.MODE_IS_INCLUDE, RecordType.ALLOW_NEW_SOURCES, RecordType.CHANGE_TO_INCLUDE):
            for s in b:
                g.sources[s] = gmi
            if kind is RecordType.CHANGE_TO_INCLUDE:
                self._query_sources(g, (a if include else x) - b, now)
                if not include:
                    self._query_group(g, now)
        elif kind in (RecordType.MODE_IS_EXCLUDE, RecordType.CHANGE_TO_EXCLUDE):
            change = kind is RecordType.CHANGE_TO_EXCLUDE
            new_time = 0.0 if include else (g.timer if change else gmi)
            g.sources = {s: g.sources[s] if s in a else new_time for s in b}
            g.mode, g.timer = FilterMode.EXCLUDE, gmi
            if change:
                self._query_sources(g, (a & b) if include else (b - y), now)
        elif kind is RecordType.BLOCK_OLD_SOURCES:
            if include:
                self._query_sources(g, a & b, now)
            else:
                for s in b - a:
                    g.sources[s] = g.timer
                self._query_sources(g, b - y, now)

    # ---------------------------------------------------------------- group and source specific queries

    def _query_group(self, g: _Group, now: float) -> None:
        if not self.is_querier or self.query_level(now) == 1:
            return
        if g.mode is FilterMode.EXCLUDE:
            g.timer = min(g.timer, now + self.lmqt)
        g.group_queries_left = self.lmqc
        g.next_query = now

    def _query_sources(self, g: _Group, sources: frozenset[IPAddress], now: float) -> None:
        if not self.is_querier or not sources or self.query_level(now) < 3:
            return
        for s in sources:
            if s in g.sources and g.sources[s] > now + self.lmqt:
                g.sources[s] = now + self.lmqt
            g.source_queries_left[s] = self.lmqc
        g.next_query = now

    def _retransmit(self, g: _Group, now: float) -> list[Action]:
        """Send what is due of the pending group and group-and-source queries (RFC 3376 6.6.3)."""
        if g.next_query == 0.0 or g.next_query > now:
            return []
        actions: list[Action] = []
        level = self.query_level(now)
        version = version_of(self.family, level)
        lmqi = self.timers.last_member_query_interval
        lmqt = now + self.lmqt
        qrv = self.robustness if level == 3 else 0
        qqi = self.query_interval if level == 3 else 0.0
        if g.group_queries_left and self.is_querier:
            g.group_queries_left -= 1
            suppress = level == 3 and g.mode is FilterMode.EXCLUDE and g.timer > lmqt
            query = Query(self.family, version, g.group, lmqi, (), suppress, qrv, qqi)
            actions.append(Send(query, g.group))
        pending = [s for s, left in g.source_queries_left.items() if left > 0]
        if pending and self.is_querier and level == 3:
            above = tuple(sorted((s for s in pending if g.sources.get(s, 0.0) > lmqt), key=int))
            below = tuple(sorted((s for s in pending if g.sources.get(s, 0.0) <= lmqt), key=int))
            for chosen, suppress in ((above, True), (below, False)):
                if chosen:
                    query = Query(self.family, version, g.group, lmqi, chosen, suppress, qrv, qqi)
                    actions.append(Send(query, g.group))
            for s in pending:
                g.source_queries_left[s] -= 1
        g.source_queries_left = {s: n for s, n in g.source_queries_left.items() if n > 0}
        more = self.is_querier and (g.group_queries_left or g.source_queries_left)
        g.next_query = now + lmqi if more else 0.0
        if not more:
            g.group_queries_left, g.source_queries_left = 0, {}
        sent = sum(1 for a in actions if isinstance(a, Send))
        self.counters["queries_sent"] += sent
        self.counters["specific_queries_sent"] += sent
        return actions

    # ---------------------------------------------------------------- expiry (RFC 3376 6.5)

    def _tick_group(self, g: _Group, now: float) -> list[Action]:
        before = g.signature()
        actions = self._retransmit(g, now)
        if g.mode is FilterMode.EXCLUDE:
            for s, t in g.sources.items():
                if 0 < t <= now:
                    g.sources[s] = 0.0  # onto the exclude list
            if g.timer <= now:
                g.mode = FilterMode.INCLUDE
                g.sources = {s: t for s, t in g.sources.items() if t > 0}
        else:
            g.sources = {s: t for s, t in g.sources.items() if t > now}
        g.host_until = {lv: t for lv, t in g.host_until.items() if t > now}
        if g.mode is FilterMode.INCLUDE and not g.sources:
            del self.groups[g.group]
            return [*actions, Changed(g.group)]
        return actions + self._changed(g, before)

    @staticmethod
    def _changed(g: _Group, before: tuple[FilterMode, frozenset[IPAddress], frozenset[IPAddress]]) -> list[Action]:
        return [Changed(g.group)] if g.signature() != before else []
