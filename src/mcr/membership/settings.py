"""What the configuration says about the queriers of one family: where to query, where only to listen, and the
timers. Filled from our TOML (`[igmp]`, `[mld]`) by `parse_membership_table`, and by the loader of the original's
JSON5 (`igmp {querier_interfaces, query_interval, robustness, query_response_interval}`), which builds a
`MembershipSettings` directly.

    [igmp]                              # [mld] takes the same keys; every key optional
    querier_interfaces = ["eth1"]       # query there (and take part in the election)
    passive_interfaces = ["eth2"]       # only track memberships there, never query
    robustness = 2
    query_interval = 125                # seconds
    query_response_interval = 10
    last_member_query_interval = 1
    last_member_query_count = 0         # 0: the robustness
    startup_query_interval = 0          # 0: query_interval / 4
    startup_query_count = 0             # 0: the robustness
    version = 3                         # the highest version spoken: IGMP 1-3, MLD 1-2 (0: the highest)
    other_querier_present_interval = 0  # 0: robustness * query_interval + query_response_interval / 2

The timers can also be changed at run time (SetQuerierTimers); a reload that changes a family's timers here
drops the run-time changes of that family.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from mcr.membership.querier import INTEGER_TIMERS, Timers
from mcr.membership.wire import Family
from mcr.model.errors import ConfigError
from mcr.model.rules import interface_name_problem

__all__ = ["MembershipSettings", "check_membership", "parse_membership_table"]


@dataclass(frozen=True, slots=True)
class MembershipSettings:
    querier_interfaces: tuple[str, ...] = ()
    passive_interfaces: tuple[str, ...] = ()
    timers: Timers = field(default_factory=Timers)


_TIMER_KEYS = {f.name: f.type for f in fields(Timers)}


def check_membership(where: str, family: Family, settings: MembershipSettings) -> None:
    """Raise ConfigError naming `where` when the settings cannot work."""
    problems = settings.timers.problems(family)
    for name in settings.querier_interfaces + settings.passive_interfaces:
        problem = interface_name_problem(name)
        if problem:
            problems.append(problem)
    both = set(settings.querier_interfaces) & set(settings.passive_interfaces)
    if both:
        problems.append(f"interface {sorted(both)[0]} is both a querier and a passive interface")
    if problems:
        raise ConfigError(f"{where}: {problems[0]}")


def parse_membership_table(path: str, section: str, table: dict[str, Any]) -> MembershipSettings:
    """The `[igmp]` or `[mld]` table of a TOML file."""
    where = f"{path}: [{section}]"
    known = {"querier_interfaces", "passive_interfaces", *_TIMER_KEYS}
    timers: dict[str, Any] = {}
    lists: dict[str, tuple[str, ...]] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}'; expected one of {', '.join(sorted(known))}")
        if key in ("querier_interfaces", "passive_interfaces"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: '{key}' must be an array of interface names")
            lists[key] = tuple(value)
        elif key in INTEGER_TIMERS:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{where}: '{key}' must be an integer")
            timers[key] = value
        else:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(f"{where}: '{key}' must be a number of seconds")
            timers[key] = float(value)
    settings = MembershipSettings(timers=Timers(**timers), **lists)
    check_membership(where, Family.IPV4 if section == "igmp" else Family.IPV6, settings)
    return settings


def membership_from_original(path: str, section: object) -> MembershipSettings:
    """The original's JSON5 `igmp {querier_interfaces, query_interval, robustness, query_response_interval}`
    (already checked for keys and types by its reader); None or absent keys take the original's defaults."""
    if not isinstance(section, dict):
        return MembershipSettings()
    timers: dict[str, Any] = {}
    for key in ("query_interval", "query_response_interval"):
        if section.get(key) is not None:
            timers[key] = float(section[key])
    if section.get("robustness") is not None:
        timers["robustness"] = int(section["robustness"])
    names = tuple(str(n) for n in section.get("querier_interfaces") or ())
    settings = MembershipSettings(querier_interfaces=names, timers=Timers(**timers))
    check_membership(f"{path}: igmp", Family.IPV4, settings)
    return settings
