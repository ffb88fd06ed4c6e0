"""The control requests and responses of the routing protocols (PIM), in the original's shapes.

`mcr.protocol.control` dispatches here for these commands, so that the PIM (and later MSDP) vocabulary
stays in one module:

- `"GetPimNeighbors"` -> `{"PimNeighbors": [{interface, address, dr_priority, is_dr, expires_in_secs,
  generation_id, source}]}` (`source` is `"PimHello"`, as the original encodes it; ours adds `uptime_secs`
  and `dr_priority_advertised`).
- `{"EnablePim": {interface, dr_priority?}}` (ours also takes `hello_period` and `passive`: no Hellos sent or
  taken on the interface, PIM serves its directly connected sources only) and
  `{"DisablePim": {interface}}` -> `Success`/`Error`.
- `{"SetStaticRp": {group_prefix, rp_address}}` -> `Success`/`Error`.
- `"GetMroute"` -> `{"Mroute": [{source, group, input_interface, output_interfaces, entry_type, age_secs}]}`
  with `entry_type` `Static`, `StarG` or `SG`, as the original.
- MSDP: `{"AddMsdpPeer": {address, description?, mesh_group?, default_peer}}`,
  `{"RemoveMsdpPeer": {address}}`, `"ClearMsdpSaCache"` -> `Success`/`Error`; `"GetMsdpPeers"` ->
  `{"MsdpPeers": [{address, state, description, mesh_group, default_peer, uptime_secs, sa_received, sa_sent,
  is_active}]}` (ours adds `rpf_failures`); `"GetMsdpSaCache"` -> `{"MsdpSaCache": [{source, group,
  origin_rp, learned_from, age_secs, expires_in_secs, is_local}]}`.
- Ours: `"GetPimUpstream"` -> `{"PimUpstream": [{kind, source, group, interface, toward, state,
  next_secs}]}`: what PIM asks of routers upstream: `join` ((*,G) when `source` is null, or (S,G)) and
  `rpt_prune` ((S,G,rpt)) toward the neighbour `toward`, with `next_secs` to the next periodic message;
  `register` (a source we are the DR of) toward its RP, `state` `Join`, `Prune` or `JoinPending`,
  `next_secs` to the Register-Stop timer (null in Join); `spt` (a source found on the shared tree), state
  `switching` (SPT joined, its data awaited), `settled` or `probing`, `next_secs` to its next check.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, assert_never

from mcr.model.errors import ProtocolError
from mcr.routing.config import MAX_DR_PRIORITY, MAX_HELLO_PERIOD, MIN_HELLO_PERIOD
from mcr.routing.pim_joins import parse_group_prefix


class RoutingQuery(Enum):
    GET_PIM_NEIGHBORS = "GetPimNeighbors"
    GET_MROUTE = "GetMroute"
    GET_MSDP_PEERS = "GetMsdpPeers"
    GET_MSDP_SA_CACHE = "GetMsdpSaCache"
    CLEAR_MSDP_SA_CACHE = "ClearMsdpSaCache"  # changes state: not a read-only request
    GET_ROUTING_COUNTERS = "GetRoutingCounters"  # ours: PIM and MSDP message and drop counters
    GET_PIM_INTERFACES = "GetPimInterfaces"  # ours: the interfaces PIM was asked to run on, and their state
    GET_PIM_UPSTREAM = "GetPimUpstream"  # ours: Joins, Prunes and Registers we send upstream, SPT sources


@dataclass(frozen=True, slots=True)
class EnablePim:
    interface: str
    dr_priority: int | None = None
    hello_period: int | None = None
    passive: bool | None = None  # None: as before (a new interface: not passive)


@dataclass(frozen=True, slots=True)
class DisablePim:
    interface: str


@dataclass(frozen=True, slots=True)
class SetStaticRp:
    group_prefix: IPv4Network | IPv6Network
    rp_address: IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class AddMsdpPeer:
    address: IPv4Address
    description: str | None = None
    mesh_group: str | None = None
    default_peer: bool = False
    sa_filter: tuple[IPv4Network, ...] = ()  # ours: groups whose SAs are never taken from or sent to the peer


@dataclass(frozen=True, slots=True)
class RemoveMsdpPeer:
    address: IPv4Address


@dataclass(frozen=True, slots=True)
class SetRpAddress:
    """Make this router the RP (at one of its own addresses) for every group that no more specific static RP
    maps elsewhere: a static RP for 224.0.0.0/4 at `address`."""

    address: IPv4Address


RoutingRequest = RoutingQuery | EnablePim | DisablePim | SetStaticRp | SetRpAddress | AddMsdpPeer | RemoveMsdpPeer
ROUTING_STRUCT_COMMANDS = (
    "EnablePim",
    "DisablePim",
    "SetStaticRp",
    "SetRpAddress",
    "AddMsdpPeer",
    "RemoveMsdpPeer",
)


@dataclass(frozen=True, slots=True)
class PimNeighborInfo:
    interface: str
    address: IPv4Address | IPv6Address
    dr_priority: int  # as the original shows it: 1 when the neighbour advertises none
    dr_priority_advertised: bool
    is_dr: bool
    expires_in_secs: int | None  # None: holdtime 0xFFFF
    generation_id: int | None
    uptime_secs: int


@dataclass(frozen=True, slots=True)
class PimNeighbors:
    neighbors: tuple[PimNeighborInfo, ...]


@dataclass(frozen=True, slots=True)
class MrouteInfo:
    source: IPv4Address | IPv6Address | None
    group: IPv4Address | IPv6Address
    input_interface: str
    output_interfaces: tuple[str, ...]
    entry_type: str  # Static, StarG, SG
    age_secs: int


@dataclass(frozen=True, slots=True)
class Mroutes:
    entries: tuple[MrouteInfo, ...]


@dataclass(frozen=True, slots=True)
class MsdpPeerInfo:
    address: IPv4Address
    state: str
    description: str | None
    mesh_group: str | None
    default_peer: bool
    uptime_secs: int | None
    sa_received: int
    sa_sent: int
    is_active: bool
    rpf_failures: int = 0
    sa_filter: tuple[IPv4Network, ...] = ()
    sa_filtered: int = 0


@dataclass(frozen=True, slots=True)
class MsdpPeers:
    peers: tuple[MsdpPeerInfo, ...]


@dataclass(frozen=True, slots=True)
class MsdpSaInfo:
    source: IPv4Address
    group: IPv4Address
    origin_rp: IPv4Address
    learned_from: IPv4Address | None
    age_secs: int
    expires_in_secs: int
    is_local: bool


@dataclass(frozen=True, slots=True)
class MsdpSaCache:
    entries: tuple[MsdpSaInfo, ...]


@dataclass(frozen=True, slots=True)
class PimInterfaceInfo:
    name: str
    state: str  # running, passive (running without Hellos), or waiting (missing, down or without an address)
    address: IPv4Address | IPv6Address | None
    dr_priority: int
    hello_period: int
    dr: IPv4Address | IPv6Address | None
    is_dr: bool
    generation_id: int | None
    neighbors: int


@dataclass(frozen=True, slots=True)
class PimInterfaces:
    interfaces: tuple[PimInterfaceInfo, ...]


UPSTREAM_KINDS = ("join", "rpt_prune", "register", "spt")


@dataclass(frozen=True, slots=True)
class PimUpstreamInfo:
    kind: str  # one of UPSTREAM_KINDS
    source: IPv4Address | IPv6Address | None  # None: (*,G)
    group: IPv4Address | IPv6Address
    interface: str
    toward: IPv4Address | IPv6Address | None  # the upstream neighbour, or the RP (register); None for spt
    state: str
    next_secs: int | None


@dataclass(frozen=True, slots=True)
class PimUpstream:
    entries: tuple[PimUpstreamInfo, ...]


@dataclass(frozen=True, slots=True)
class RoutingCounters:
    """`pim.rx_hello`, `pim.drop_bad_checksum`, `msdp.rpf_failures`, ...: name -> count."""

    counters: tuple[tuple[str, int], ...]


RoutingResponse = PimNeighbors | Mroutes | MsdpPeers | MsdpSaCache | RoutingCounters | PimInterfaces | PimUpstream
ROUTING_RESPONSES = (
    "PimNeighbors",
    "Mroute",
    "MsdpPeers",
    "MsdpSaCache",
    "RoutingCounters",
    "PimInterfaces",
    "PimUpstream",
)
MROUTE_TYPES = ("Static", "StarG", "SG", "Igmp")


# ---------------------------------------------------------------------------------------------- requests


def _fields(where: str, body: object, allowed: frozenset[str], required: frozenset[str]) -> dict[str, object]:
    if not isinstance(body, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ProtocolError(f"unknown field '{unknown[0]}' in {where}; expected {', '.join(sorted(allowed))}")
    missing = sorted(required - set(body))
    if missing:
        raise ProtocolError(f"missing field '{missing[0]}' in {where}")
    return body


def _string(where: str, body: dict[str, object], name: str) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise ProtocolError(f"field '{name}' in {where} must be a string")
    return value


def _optional_int(where: str, body: dict[str, object], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"field '{name}' in {where} must be an integer")
    if not low <= value <= high:
        raise ProtocolError(f"field '{name}' in {where} must be between {low} and {high}, got {value}")
    return value


def _optional_str(where: str, body: dict[str, object], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 255:
        raise ProtocolError(f"field '{name}' in {where} must be a string of at most 255 characters")
    return value


def _sa_filter(where: str, value: object) -> tuple[IPv4Network, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"field 'sa_filter' in {where} must be an array of group prefixes")
    prefixes: list[IPv4Network] = []
    for text in value:
        try:
            prefix = parse_group_prefix(text)
        except ValueError as e:
            raise ProtocolError(f"field 'sa_filter' in {where}: {e}") from None
        if not isinstance(prefix, IPv4Network):
            raise ProtocolError(f"field 'sa_filter' in {where}: MSDP carries IPv4 groups only, not {prefix}")
        prefixes.append(prefix)
    return tuple(prefixes)


def _ipv4(where: str, body: dict[str, object], name: str) -> IPv4Address:
    text = _string(where, body, name)
    try:
        address = IPv4Address(text)
    except ValueError:
        raise ProtocolError(f"field '{name}' in {where}: '{text}' is not an IPv4 address") from None
    if address.is_multicast or address.is_unspecified or address.is_loopback:
        raise ProtocolError(f"field '{name}' in {where}: {address} is not a unicast peer address")
    return address


def decode_routing_struct(name: str, body: object) -> RoutingRequest:
    if name == "EnablePim":
        allowed = frozenset({"interface", "dr_priority", "hello_period", "passive"})
        f = _fields(name, body, allowed, frozenset({"interface"}))
        passive = f.get("passive")
        if passive is not None and not isinstance(passive, bool):
            raise ProtocolError(f"field 'passive' in {name} must be a boolean")
        return EnablePim(
            _string(name, f, "interface"),
            _optional_int(name, f, "dr_priority", 0, MAX_DR_PRIORITY),
            _optional_int(name, f, "hello_period", MIN_HELLO_PERIOD, MAX_HELLO_PERIOD),
            passive,
        )
    if name == "DisablePim":
        f = _fields(name, body, frozenset({"interface"}), frozenset({"interface"}))
        return DisablePim(_string(name, f, "interface"))
    if name == "SetStaticRp":
        fields = frozenset({"group_prefix", "rp_address"})
        f = _fields(name, body, fields, fields)
        try:
            prefix = parse_group_prefix(_string(name, f, "group_prefix"))
        except ValueError as e:
            raise ProtocolError(f"field 'group_prefix' in {name}: {e}") from None
        try:
            rp = ip_address(_string(name, f, "rp_address"))
        except ValueError as e:
            raise ProtocolError(f"field 'rp_address' in {name}: {e}") from None
        if rp.is_multicast or rp.is_unspecified:
            raise ProtocolError(f"field 'rp_address' in {name}: {rp} is not a unicast address")
        if rp.version != prefix.version:
            raise ProtocolError(f"{name}: RP {rp} is not of the family of {prefix}")
        return SetStaticRp(prefix, rp)
    if name == "AddMsdpPeer":
        allowed = frozenset({"address", "description", "mesh_group", "default_peer", "sa_filter"})
        f = _fields(name, body, allowed, frozenset({"address"}))
        default_peer = f.get("default_peer", False)
        if not isinstance(default_peer, bool):
            raise ProtocolError(f"field 'default_peer' in {name} must be a boolean")
        return AddMsdpPeer(
            _ipv4(name, f, "address"),
            _optional_str(name, f, "description"),
            _optional_str(name, f, "mesh_group"),
            default_peer,
            _sa_filter(name, f.get("sa_filter")),
        )
    if name == "RemoveMsdpPeer":
        f = _fields(name, body, frozenset({"address"}), frozenset({"address"}))
        return RemoveMsdpPeer(_ipv4(name, f, "address"))
    if name == "SetRpAddress":
        f = _fields(name, body, frozenset({"address"}), frozenset({"address"}))
        return SetRpAddress(_ipv4(name, f, "address"))
    raise ProtocolError(f"unknown command '{name}'")


def encode_routing_request(req: RoutingRequest) -> object:
    match req:
        case RoutingQuery():
            return req.value
        case EnablePim():
            body: dict[str, object] = {"interface": req.interface, "dr_priority": req.dr_priority}
            if req.hello_period is not None:
                body["hello_period"] = req.hello_period
            if req.passive is not None:
                body["passive"] = req.passive
            return {"EnablePim": body}
        case DisablePim():
            return {"DisablePim": {"interface": req.interface}}
        case SetStaticRp():
            return {"SetStaticRp": {"group_prefix": str(req.group_prefix), "rp_address": str(req.rp_address)}}
        case AddMsdpPeer():
            return {
                "AddMsdpPeer": {
                    "address": str(req.address),
                    "description": req.description,
                    "mesh_group": req.mesh_group,
                    "default_peer": req.default_peer,
                    **({"sa_filter": [str(p) for p in req.sa_filter]} if req.sa_filter else {}),
                }
            }
        case RemoveMsdpPeer():
            return {"RemoveMsdpPeer": {"address": str(req.address)}}
        case SetRpAddress():
            return {"SetRpAddress": {"address": str(req.address)}}
        case _:
            assert_never(req)


def is_routing_read_only(req: RoutingRequest) -> bool:
    return isinstance(req, RoutingQuery) and req is not RoutingQuery.CLEAR_MSDP_SA_CACHE


def routing_request_name(req: RoutingRequest) -> str:
    return req.value if isinstance(req, RoutingQuery) else type(req).__name__


# --------------------------------------------------------------------------------------------- responses


def _neighbor_json(n: PimNeighborInfo) -> dict[str, object]:
    return {
        "interface": n.interface,
        "address": str(n.address),
        "dr_priority": n.dr_priority,
        "is_dr": n.is_dr,
        "expires_in_secs": n.expires_in_secs,
        "generation_id": n.generation_id,
        "source": "PimHello",
        "uptime_secs": n.uptime_secs,
        "dr_priority_advertised": n.dr_priority_advertised,
    }


def routing_response_json(resp: RoutingResponse) -> object:
    match resp:
        case PimNeighbors():
            return {"PimNeighbors": [_neighbor_json(n) for n in resp.neighbors]}
        case Mroutes():
            return {
                "Mroute": [
                    {
                        "source": None if m.source is None else str(m.source),
                        "group": str(m.group),
                        "input_interface": m.input_interface,
                        "output_interfaces": list(m.output_interfaces),
                        "entry_type": m.entry_type,
                        "age_secs": m.age_secs,
                    }
                    for m in resp.entries
                ]
            }
        case MsdpPeers():
            return {
                "MsdpPeers": [
                    {
                        "address": str(p.address),
                        "state": p.state,
                        "description": p.description,
                        "mesh_group": p.mesh_group,
                        "default_peer": p.default_peer,
                        "uptime_secs": p.uptime_secs,
                        "sa_received": p.sa_received,
                        "sa_sent": p.sa_sent,
                        "is_active": p.is_active,
                        "rpf_failures": p.rpf_failures,
                        "sa_filter": [str(f) for f in p.sa_filter],
                        "sa_filtered": p.sa_filtered,
                    }
                    for p in resp.peers
                ]
            }
        case RoutingCounters():
            return {"RoutingCounters": dict(resp.counters)}
        case PimInterfaces():
            return {
                "PimInterfaces": [
                    {
                        "name": i.name,
                        "state": i.state,
                        "address": None if i.address is None else str(i.address),
                        "dr_priority": i.dr_priority,
                        "hello_period": i.hello_period,
                        "dr": None if i.dr is None else str(i.dr),
                        "is_dr": i.is_dr,
                        "generation_id": i.generation_id,
                        "neighbors": i.neighbors,
                    }
                    for i in resp.interfaces
                ]
            }
        case PimUpstream():
            return {
                "PimUpstream": [
                    {
                        "kind": e.kind,
                        "source": None if e.source is None else str(e.source),
                        "group": str(e.group),
                        "interface": e.interface,
                        "toward": None if e.toward is None else str(e.toward),
                        "state": e.state,
                        "next_secs": e.next_secs,
                    }
                    for e in resp.entries
                ]
            }
        case MsdpSaCache():
            return {
                "MsdpSaCache": [
                    {
                        "source": str(e.source),
                        "group": str(e.group),
                        "origin_rp": str(e.origin_rp),
                        "learned_from": None if e.learned_from is None else str(e.learned_from),
                        "age_secs": e.age_secs,
                        "expires_in_secs": e.expires_in_secs,
                        "is_local": e.is_local,
                    }
                    for e in resp.entries
                ]
            }
        case _:
            assert_never(resp)


def _optional(d: dict[str, Any], key: str) -> int | None:
    value = d.get(key)
    return None if value is None else int(value)


def decode_routing_response(name: str, body: object) -> RoutingResponse:
    """The inverse of routing_response_json; a ProtocolError for anything malformed."""
    if name == "PimNeighbors":
        if not isinstance(body, list):
            raise ProtocolError("PimNeighbors response must carry an array")
        try:
            return PimNeighbors(
                tuple(
                    PimNeighborInfo(
                        interface=str(d["interface"]),
                        address=ip_address(d["address"]),
                        dr_priority=int(d["dr_priority"]),
                        dr_priority_advertised=bool(d.get("dr_priority_advertised", True)),
                        is_dr=bool(d["is_dr"]),
                        expires_in_secs=_optional(d, "expires_in_secs"),
                        generation_id=_optional(d, "generation_id"),
                        uptime_secs=int(d.get("uptime_secs", 0)),
                    )
                    for d in body
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProtocolError(f"malformed PimNeighbors response: {e!r}") from None
    if name == "Mroute":
        if not isinstance(body, list):
            raise ProtocolError("Mroute response must carry an array")
        try:
            return Mroutes(
                tuple(
                    MrouteInfo(
                        source=None if d.get("source") is None else ip_address(d["source"]),
                        group=ip_address(d["group"]),
                        input_interface=str(d["input_interface"]),
                        output_interfaces=tuple(str(i) for i in d["output_interfaces"]),
                        entry_type=str(d["entry_type"]),
                        age_secs=int(d["age_secs"]),
                    )
                    for d in body
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProtocolError(f"malformed Mroute response: {e!r}") from None
    if name == "PimInterfaces":
        if not isinstance(body, list):
            raise ProtocolError("PimInterfaces response must carry an array")
        try:
            return PimInterfaces(
                tuple(
                    PimInterfaceInfo(
                        name=str(d["name"]),
                        state=str(d["state"]),
                        address=None if d.get("address") is None else ip_address(d["address"]),
                        dr_priority=int(d["dr_priority"]),
                        hello_period=int(d["hello_period"]),
                        dr=None if d.get("dr") is None else ip_address(d["dr"]),
                        is_dr=bool(d["is_dr"]),
                        generation_id=_optional(d, "generation_id"),
                        neighbors=int(d["neighbors"]),
                    )
                    for d in body
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProtocolError(f"malformed PimInterfaces response: {e!r}") from None
    if name == "PimUpstream":
        if not isinstance(body, list):
            raise ProtocolError("PimUpstream response must carry an array")
        try:
            entries = tuple(
                PimUpstreamInfo(
                    kind=str(d["kind"]),
                    source=None if d.get("source") is None else ip_address(d["source"]),
                    group=ip_address(d["group"]),
                    interface=str(d["interface"]),
                    toward=None if d.get("toward") is None else ip_address(d["toward"]),
                    state=str(d["state"]),
                    next_secs=_optional(d, "next_secs"),
                )
                for d in body
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProtocolError(f"malformed PimUpstream response: {e!r}") from None
        bad = next((e.kind for e in entries if e.kind not in UPSTREAM_KINDS), None)
        if bad is not None:
            raise ProtocolError(f"malformed PimUpstream response: unknown kind {bad!r}")
        return PimUpstream(entries)
    if name == "RoutingCounters":
        if not isinstance(body, dict):
            raise ProtocolError("RoutingCounters response must carry an object")
        try:
            return RoutingCounters(tuple((str(k), int(v)) for k, v in body.items()))
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"malformed RoutingCounters response: {e!r}") from None
    if name in ("MsdpPeers", "MsdpSaCache"):
        if not isinstance(body, list):
            raise ProtocolError(f"{name} response must carry an array")
        try:
            if name == "MsdpPeers":
                return MsdpPeers(tuple(_decode_msdp_peer(d) for d in body))
            return MsdpSaCache(tuple(_decode_sa(d) for d in body))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProtocolError(f"malformed {name} response: {e!r}") from None
    raise ProtocolError(f"unknown response type '{name}'")


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    value = d.get(key)
    return None if value is None else str(value)


def _decode_msdp_peer(d: dict[str, Any]) -> MsdpPeerInfo:
    return MsdpPeerInfo(
        address=IPv4Address(d["address"]),
        state=str(d["state"]),
        description=_opt_str(d, "description"),
        mesh_group=_opt_str(d, "mesh_group"),
        default_peer=bool(d["default_peer"]),
        uptime_secs=_optional(d, "uptime_secs"),
        sa_received=int(d["sa_received"]),
        sa_sent=int(d["sa_sent"]),
        is_active=bool(d["is_active"]),
        rpf_failures=int(d.get("rpf_failures", 0)),
        sa_filter=tuple(IPv4Network(f) for f in d.get("sa_filter", [])),
        sa_filtered=int(d.get("sa_filtered", 0)),
    )


def _decode_sa(d: dict[str, Any]) -> MsdpSaInfo:
    learned = d.get("learned_from")
    return MsdpSaInfo(
        source=IPv4Address(d["source"]),
        group=IPv4Address(d["group"]),
        origin_rp=IPv4Address(d["origin_rp"]),
        learned_from=None if learned is None else IPv4Address(learned),
        age_secs=int(d["age_secs"]),
        expires_in_secs=int(d["expires_in_secs"]),
        is_local=bool(d["is_local"]),
    )
