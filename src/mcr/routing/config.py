"""The routing protocols' configuration (pure): the `[pim]` and `[msdp]` sections of the TOML file.

    [pim]
    enabled = true                     # default true when the section is present
    interfaces = [{ name = "eth1", dr_priority = 10, hello_period = 30 }, { name = "eth2" },
                  { name = "eth3", passive = true }]   # passive: no Hellos; its connected sources only
    static_rp = [{ group = "239.0.0.0/8", rp = "10.0.0.1" }]
    spt_switchover = "immediate"       # or "never": stay on the shared tree (FRR's infinity-and-beyond)

    [msdp]
    enabled = true                     # default true when the section is present
    keepalive_interval = 60            # seconds; below hold_time
    hold_time = 75
    peers = [{ address = "10.0.0.9", description = "east", mesh_group = "core", default_peer = false,
               sa_filter = ["239.255.0.0/16"] }]   # sa_filter: ours (groups never taken from or sent to it)

The keys and defaults are the original's (its JSON5 `pim` and `msdp` sections, less `msdp.local_address`:
each peering runs from the address the kernel uses toward the peer), so that its loader can fill the same
`PimConfig` and `MsdpConfig`. Errors name the file, the section, the entry and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_address
from typing import Any

from mcr.model.errors import ConfigError
from mcr.model.rules import interface_name_problem
from mcr.routing.pim_joins import StaticRp, parse_group_prefix
from mcr.routing.pim_neighbors import DEFAULT_DR_PRIORITY
from mcr.routing.pim_spt import SptPolicy
from mcr.routing.pim_wire import DEFAULT_HELLO_PERIOD

MAX_DR_PRIORITY = 0xFFFFFFFF
MIN_HELLO_PERIOD, MAX_HELLO_PERIOD = 1, 18724  # 3.5 x the period must fit the 16-bit holdtime


@dataclass(frozen=True, slots=True)
class PimInterfaceConfig:
    """What the operator asked for on one interface (EnablePim or the config file)."""

    name: str
    dr_priority: int = DEFAULT_DR_PRIORITY
    hello_period: int = DEFAULT_HELLO_PERIOD
    passive: bool = False  # no Hellos sent or taken: PIM serves the interface's directly connected sources only


@dataclass(frozen=True, slots=True)
class PimConfig:
    enabled: bool = False
    interfaces: tuple[PimInterfaceConfig, ...] = ()
    static_rps: tuple[StaticRp, ...] = ()
    spt_switchover: SptPolicy = SptPolicy.IMMEDIATE


@dataclass(frozen=True, slots=True)
class MsdpPeerEntry:
    address: IPv4Address
    description: str | None = None
    mesh_group: str | None = None
    default_peer: bool = False
    sa_filter: tuple[IPv4Network, ...] = ()  # ours: groups whose SAs are never taken from or sent to the peer


@dataclass(frozen=True, slots=True)
class MsdpConfig:
    enabled: bool = False
    peers: tuple[MsdpPeerEntry, ...] = ()
    keepalive_interval: int = 60
    hold_time: int = 75


def _optional_text(where: str, item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    if value is not None and (not isinstance(value, str) or len(value) > 255):
        raise ConfigError(f"{where}: '{key}' must be a string of at most 255 characters")
    return value


def parse_msdp_section(path: str, table: dict[str, Any]) -> MsdpConfig:
    unknown = sorted(set(table) - {"enabled", "peers", "keepalive_interval", "hold_time"})
    if unknown:
        raise ConfigError(
            f"{path}: [msdp]: unknown key '{unknown[0]}'; expected enabled, peers, keepalive_interval, hold_time"
        )
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{path}: [msdp]: 'enabled' must be a boolean")
    keepalive = _int(f"{path}: [msdp]", table, "keepalive_interval", 60, 1, 65535)
    hold = _int(f"{path}: [msdp]", table, "hold_time", 75, 3, 65535)
    if keepalive >= hold:
        raise ConfigError(f"{path}: [msdp]: 'keepalive_interval' ({keepalive}) must be below 'hold_time' ({hold})")
    peers: dict[IPv4Address, MsdpPeerEntry] = {}
    for i, item in enumerate(_entries(path, table, "peers", "msdp")):
        where = f"{path}: [msdp] peers[{i}]"
        extra = sorted(set(item) - {"address", "description", "mesh_group", "default_peer", "sa_filter"})
        if extra:
            raise ConfigError(
                f"{where}: unknown key '{extra[0]}'; expected address, description, mesh_group, default_peer, sa_filter"
            )
        filters = item.get("sa_filter", [])
        if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
            raise ConfigError(f"{where}: 'sa_filter' must be an array of group prefixes")
        sa_filter: list[IPv4Network] = []
        for text in filters:
            try:
                prefix = parse_group_prefix(text)
            except ValueError as e:
                raise ConfigError(f"{where}: sa_filter: {e}") from None
            if not isinstance(prefix, IPv4Network):
                raise ConfigError(f"{where}: sa_filter: MSDP carries IPv4 groups only, not {prefix}")
            sa_filter.append(prefix)
        try:
            address = IPv4Address(item.get("address"))
        except ValueError:
            raise ConfigError(f"{where}: 'address' must be an IPv4 address") from None
        if address.is_multicast or address.is_unspecified or address.is_loopback:
            raise ConfigError(f"{where}: {address} is not a unicast peer address")
        if address in peers:
            raise ConfigError(f"{where}: peer {address} is listed twice")
        default_peer = item.get("default_peer", False)
        if not isinstance(default_peer, bool):
            raise ConfigError(f"{where}: 'default_peer' must be a boolean")
        peers[address] = MsdpPeerEntry(
            address,
            _optional_text(where, item, "description"),
            _optional_text(where, item, "mesh_group"),
            default_peer,
            tuple(sa_filter),
        )
    return MsdpConfig(enabled, tuple(peers.values()), keepalive, hold)


def _int(where: str, item: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: '{key}' must be an integer from {low} to {high}")
    return value


def _entries(path: str, table: dict[str, Any], key: str, section: str = "pim") -> list[dict[str, Any]]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{path}: [{section}]: '{key}' must be an array of tables")
    return value


def parse_pim_section(path: str, table: dict[str, Any]) -> PimConfig:
    unknown = sorted(set(table) - {"enabled", "interfaces", "static_rp", "spt_switchover"})
    if unknown:
        raise ConfigError(
            f"{path}: [pim]: unknown key '{unknown[0]}'; expected enabled, interfaces, static_rp, spt_switchover"
        )
    policies = {p.value: p for p in SptPolicy}
    spt = table.get("spt_switchover", SptPolicy.IMMEDIATE.value)
    if not isinstance(spt, str) or spt not in policies:
        raise ConfigError(f"{path}: [pim]: 'spt_switchover' must be one of {', '.join(policies)}")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{path}: [pim]: 'enabled' must be a boolean")
    interfaces: dict[str, PimInterfaceConfig] = {}
    for i, item in enumerate(_entries(path, table, "interfaces")):
        where = f"{path}: [pim] interfaces[{i}]"
        extra = sorted(set(item) - {"name", "dr_priority", "hello_period", "passive"})
        if extra:
            raise ConfigError(f"{where}: unknown key '{extra[0]}'; expected name, dr_priority, hello_period, passive")
        name = item.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{where}: 'name' must be a string")
        problem = interface_name_problem(name)
        if problem:
            raise ConfigError(f"{where}: {problem}")
        if name in interfaces:
            raise ConfigError(f"{where}: interface '{name}' is listed twice")
        passive = item.get("passive", False)
        if not isinstance(passive, bool):
            raise ConfigError(f"{where}: 'passive' must be a boolean")
        interfaces[name] = PimInterfaceConfig(
            name,
            _int(where, item, "dr_priority", DEFAULT_DR_PRIORITY, 0, MAX_DR_PRIORITY),
            _int(where, item, "hello_period", DEFAULT_HELLO_PERIOD, MIN_HELLO_PERIOD, MAX_HELLO_PERIOD),
            passive,
        )
    rps: list[StaticRp] = []
    for i, item in enumerate(_entries(path, table, "static_rp")):
        where = f"{path}: [pim] static_rp[{i}]"
        if set(item) != {"group", "rp"} or not all(isinstance(v, str) for v in item.values()):
            raise ConfigError(f"{where}: needs exactly 'group' (a prefix) and 'rp' (an address), as strings")
        try:
            prefix = parse_group_prefix(item["group"])
            rp = ip_address(item["rp"])
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        if rp.is_multicast or rp.is_unspecified or rp.version != prefix.version:
            raise ConfigError(f"{where}: RP {rp} must be a unicast address of the family of {prefix}")
        rps.append(StaticRp(prefix, rp))
    return PimConfig(enabled, tuple(interfaces.values()), tuple(rps), policies[spt])
