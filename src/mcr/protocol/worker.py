"""Messages between the supervisor and its data-plane workers.

Commands and acknowledgements travel over a SOCK_SEQPACKET socketpair (one JSON document per
datagram, capture sockets and raw ESP output sockets attached with SCM_RIGHTS). Counters travel the other
way over a pipe as newline-delimited JSON, so a slow supervisor never blocks a worker (the worker counts failed pushes).
"""

from __future__ import annotations

import json
import json.encoder
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, assert_never

from mcr.model.errors import ProtocolError, ValidationError
from mcr.model.ratelimit import RateLimit, decode_rate_limit, encode_rate_limit
from mcr.model.rules import (
    InputProtocol,
    IPAddress,
    SourcePrefix,
    address_text,
    parse_group,
    parse_source,
    source_text,
)
from mcr.protocol.jsondoc import load_json, load_json_streaming

MAX_CHANNEL_MESSAGE = 16 << 20
MAX_FDS_PER_MESSAGE = 64  # file descriptors a worker takes with one command (SCM_RIGHTS allows 253)
TEST_WORKER_VARIANT_ENV = "MCR_TEST_WORKER_VARIANT"


def worker_version(version: str, env: Mapping[str, str]) -> str:
    """What identifies a worker's code: the package version, plus MCR_TEST_WORKER_VARIANT when set (tests
    start a supervisor whose workers count as another version). Workers inherit it from their supervisor."""
    variant = env.get(TEST_WORKER_VARIANT_ENV, "")
    return f"{version}+{variant}" if variant else version


# A new supervisor takes a running worker over by sending this datagram to the worker's handover socket with
# two descriptors attached (SCM_RIGHTS): its end of a new command channel and the write end of a new stats
# pipe. The worker answers `Ready` on the new channel, naming the capture sockets it holds.
HANDOVER_MESSAGE = b'"Handover"'


@dataclass(frozen=True, slots=True)
class WorkerOutput:
    """One output of a rule, resolved by the supervisor to what a socket needs."""

    index: int
    group: IPAddress
    port: int
    ifindex: int
    source: IPAddress  # the output interface's address of the group's family
    ttl: int | None  # the hop limit for an IPv6 group; None: the kernel's default (a unicast output)
    protocol: InputProtocol = InputProtocol.UDP  # ESP: sent by a raw socket the supervisor opens (port 0)

    @property
    def raw_egress(self) -> RawEgress:
        """What an ESP output's raw socket is opened for."""
        return RawEgress(self.group, self.ifindex, self.source, self.ttl)


@dataclass(frozen=True, slots=True)
class RawEgress:
    """A raw IPPROTO_ESP socket sending to `group` out of `ifindex` from `source` with `ttl` (None: the
    kernel's default). A worker has no CAP_NET_RAW: the supervisor opens these and passes them
    (`OpenEgress`); outputs that agree on all four share one."""

    group: IPAddress
    ifindex: int
    source: IPAddress
    ttl: int | None


@dataclass(frozen=True, slots=True)
class WorkerRule:
    rule_id: str
    ifindex: int
    group: IPAddress
    port: int
    outputs: tuple[WorkerOutput, ...]
    rate_limit: RateLimit | None = None
    source: SourcePrefix | None = None  # only packets from this host or prefix match
    epoch: int = 0  # the generation the rule was (re)added in: when it changes, the rule's counters restart
    protocol: InputProtocol = InputProtocol.UDP  # ESP: port 0, every output ESP


# supervisor -> worker


@dataclass(frozen=True, slots=True)
class Sync:
    """The full rule set; replaces whatever the worker had."""

    generation: int
    rules: tuple[WorkerRule, ...]


@dataclass(frozen=True, slots=True)
class Update:
    """A change to the rule set the worker has: `rules` are added or replace the rule of the same id,
    `removed` ids are dropped; everything else stays as it is. It takes the worker to `generation`, which
    it acknowledges like a Sync. The supervisor sends it only to a worker that has every generation before
    (a worker that starts or restarts gets a whole Sync first), so a change costs the same at 10 rules and
    at 10,000."""

    generation: int
    rules: tuple[WorkerRule, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OpenSockets:
    """Capture sockets for these input interfaces follow as SCM_RIGHTS, in this order. With `positions`, the
    sockets come from another worker (`Released`) with their rings set up: read on from these blocks."""

    ifindexes: tuple[int, ...]
    positions: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class CloseSockets:
    ifindexes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class OpenEgress:
    """Raw ESP output sockets for these keys follow as SCM_RIGHTS, in this order (sent before the Sync
    that uses them)."""

    keys: tuple[RawEgress, ...]


@dataclass(frozen=True, slots=True)
class CloseEgress:
    keys: tuple[RawEgress, ...]


@dataclass(frozen=True, slots=True)
class SetLogLevels:
    global_level: int
    overrides: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


@dataclass(frozen=True, slots=True)
class ReleaseSockets:
    """Stop reading the capture sockets, relay what they hold, send them back (`Released`) and exit: a
    worker of another version is replaced by a new one that reads on from the same rings."""


@dataclass(frozen=True, slots=True)
class HoldSockets:
    """The supervisor's membership (IGMP/MLD join) sockets follow as SCM_RIGHTS, `count` of them: hold them,
    in place of those held before (`append`: in addition to those of the previous HoldSockets, for a set sent
    in several messages of at most MAX_FDS_PER_MESSAGE), and never use them. They keep the memberships while
    no supervisor runs, so that a restart never makes the host leave an input group."""

    count: int
    append: bool = False


Command = (
    Sync
    | Update
    | OpenSockets
    | CloseSockets
    | OpenEgress
    | CloseEgress
    | SetLogLevels
    | Shutdown
    | ReleaseSockets
    | HoldSockets
)


# worker -> supervisor


@dataclass(frozen=True, slots=True)
class Ready:
    pid: int
    uid: int
    # A worker taken over by a new supervisor: the capture sockets it already holds, as (ifindex, fanout
    # group id, -1 for none). A freshly started worker holds none.
    captures: tuple[tuple[int, int], ...] = ()
    version: str = ""  # the worker's code (a taken-over worker of another version is replaced)


@dataclass(frozen=True, slots=True)
class SyncAck:
    generation: int


@dataclass(frozen=True, slots=True)
class Released:
    """The capture sockets of these interfaces follow as SCM_RIGHTS; `positions`: the block each ring's
    reader is to read next."""

    ifindexes: tuple[int, ...]
    positions: tuple[int, ...]


Reply = Ready | SyncAck | Released


def _rule_json(r: WorkerRule) -> dict[str, object]:
    return {
        "rule_id": r.rule_id,
        "ifindex": r.ifindex,
        "group": address_text(r.group),
        "port": r.port,
        "source": None if r.source is None else source_text(r.source),
        "outputs": [
            {
                "index": o.index,
                "group": address_text(o.group),
                "port": o.port,
                "ifindex": o.ifindex,
                "source": address_text(o.source),
                "ttl": o.ttl,
                "protocol": int(o.protocol),
            }
            for o in r.outputs
        ],
        "rate_limit": None if r.rate_limit is None else encode_rate_limit(r.rate_limit),
        "epoch": r.epoch,
        "protocol": int(r.protocol),
    }


def _egress_json(key: RawEgress) -> list[object]:
    return [str(key.group), key.ifindex, str(key.source), key.ttl]


def _egress(item: Any) -> RawEgress:
    group, ifindex, source, ttl = item
    return RawEgress(parse_group(group), int(ifindex), parse_group(source), None if ttl is None else int(ttl))


def encode_command(cmd: Command) -> bytes:
    doc: object
    match cmd:
        case Sync():
            doc = {"Sync": {"generation": cmd.generation, "rules": [_rule_json(r) for r in cmd.rules]}}
        case Update():
            doc = {
                "Update": {
                    "generation": cmd.generation,
                    "rules": [_rule_json(r) for r in cmd.rules],
                    "removed": list(cmd.removed),
                }
            }
        case OpenSockets():
            sockets: dict[str, object] = {"ifindexes": list(cmd.ifindexes)}
            if cmd.positions:
                sockets["positions"] = list(cmd.positions)
            doc = {"OpenSockets": sockets}
        case CloseSockets():
            doc = {"CloseSockets": {"ifindexes": list(cmd.ifindexes)}}
        case OpenEgress():
            doc = {"OpenEgress": {"keys": [_egress_json(k) for k in cmd.keys]}}
        case CloseEgress():
            doc = {"CloseEgress": {"keys": [_egress_json(k) for k in cmd.keys]}}
        case SetLogLevels():
            doc = {"SetLogLevels": {"global": cmd.global_level, "overrides": dict(cmd.overrides)}}
        case Shutdown():
            doc = "Shutdown"
        case ReleaseSockets():
            doc = "ReleaseSockets"
        case HoldSockets():
            doc = {"HoldSockets": {"count": cmd.count, "append": cmd.append}}
        case _:
            assert_never(cmd)
    return json.dumps(doc, separators=(",", ":")).encode()


def _load(data: bytes) -> tuple[str, Any]:
    doc = load_json(data, "malformed channel message")
    if isinstance(doc, str):
        return doc, None
    if isinstance(doc, dict) and len(doc) == 1:
        ((name, body),) = doc.items()
        return str(name), body
    raise ProtocolError("malformed channel message: expected a string or a one-key object")


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


_SOURCES: dict[str, IPAddress] = {}  # output source addresses decoded so far: one object per interface address
_MAX_SOURCES = 4096


def _source(text: str) -> IPAddress:
    """An output's source address (its interface's): few distinct ones whatever the number of outputs, so
    every output shares the one object (about 90 bytes an output otherwise)."""
    found = _SOURCES.get(text)
    if found is None:
        if len(_SOURCES) >= _MAX_SOURCES:
            _SOURCES.clear()
        found = _SOURCES[text] = parse_group(text)
    return found


_PORTS: dict[int, int] = {}  # port numbers decoded so far: rules share a few ports, each an int of 28 bytes


def _port(value: Any) -> int:
    """A port number, as the object every rule and output with that port shares."""
    port = int(value)
    return _PORTS.setdefault(port, port) if 0 <= port <= 0xFFFF else port


def _decode_rule(r: Any) -> WorkerRule:
    return WorkerRule(
        rule_id=str(r["rule_id"]),
        ifindex=int(r["ifindex"]),
        group=parse_group(r["group"]),
        port=_port(r["port"]),
        source=parse_source(r["source"]) if r.get("source") else None,
        outputs=tuple(
            WorkerOutput(
                index=int(o["index"]),
                group=parse_group(o["group"]),
                port=_port(o["port"]),
                ifindex=int(o["ifindex"]),
                source=_source(o["source"]),
                ttl=None if o.get("ttl") is None else int(o["ttl"]),
                protocol=InputProtocol(int(o.get("protocol", InputProtocol.UDP))),
            )
            for o in r["outputs"]
        ),
        rate_limit=None if r.get("rate_limit") is None else decode_rate_limit(r["rate_limit"]),
        epoch=int(r.get("epoch", 0)),
        protocol=InputProtocol(int(r.get("protocol", InputProtocol.UDP))),
    )


def decode_command(data: bytes) -> Command:
    name, body = _load(data)
    try:
        if name == "Sync":
            return Sync(generation=int(body["generation"]), rules=tuple(_decode_rule(r) for r in body["rules"]))
        if name == "Update":
            return Update(
                generation=int(body["generation"]),
                rules=tuple(_decode_rule(r) for r in body["rules"]),
                removed=tuple(_text(rid) for rid in body["removed"]),
            )
        if name == "OpenSockets":
            positions = tuple(int(i) for i in body.get("positions", []))
            return OpenSockets(tuple(int(i) for i in body["ifindexes"]), positions)
        if name == "CloseSockets":
            return CloseSockets(tuple(int(i) for i in body["ifindexes"]))
        if name == "OpenEgress":
            return OpenEgress(tuple(_egress(k) for k in body["keys"]))
        if name == "CloseEgress":
            return CloseEgress(tuple(_egress(k) for k in body["keys"]))
        if name == "SetLogLevels":
            overrides = tuple((str(k), int(v)) for k, v in body["overrides"].items())
            return SetLogLevels(global_level=int(body["global"]), overrides=overrides)
        if name == "Shutdown":
            return Shutdown()
        if name == "ReleaseSockets":
            return ReleaseSockets()
        if name == "HoldSockets":
            return HoldSockets(int(body["count"]), bool(body.get("append", False)))
    except (KeyError, TypeError, ValueError, AttributeError, ValidationError) as e:
        raise ProtocolError(f"malformed {name} command: {e!r}") from None
    raise ProtocolError(f"unknown worker command '{name}'")


def encode_reply(reply: Reply) -> bytes:
    doc: object
    match reply:
        case Ready():
            body: dict[str, object] = {"pid": reply.pid, "uid": reply.uid}
            if reply.captures:
                body["captures"] = [list(c) for c in reply.captures]
            if reply.version:
                body["version"] = reply.version
            doc = {"Ready": body}
        case Released():
            doc = {"Released": {"ifindexes": list(reply.ifindexes), "positions": list(reply.positions)}}
        case SyncAck():
            doc = {"SyncAck": {"generation": reply.generation}}
        case _:
            assert_never(reply)
    return json.dumps(doc).encode()


def decode_reply(data: bytes) -> Reply:
    name, body = _load(data)
    try:
        if name == "Ready":
            captures = tuple((int(i), int(f)) for i, f in body.get("captures", []))
            version = str(body.get("version", ""))
            return Ready(pid=int(body["pid"]), uid=int(body["uid"]), captures=captures, version=version)
        if name == "Released":
            ifindexes = tuple(int(i) for i in body["ifindexes"])
            positions = tuple(int(i) for i in body["positions"])
            if len(ifindexes) != len(positions):
                raise ValueError("one position per interface")
            return Released(ifindexes, positions)
        if name == "SyncAck":
            return SyncAck(generation=int(body["generation"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ProtocolError(f"malformed {name} reply: {e!r}") from None
    raise ProtocolError(f"unknown worker reply '{name}'")


# ------------------------------------------------------------------------------------------ stats report


@dataclass(frozen=True, slots=True)
class RuleCounters:
    packets: int
    bytes: int
    outputs: tuple[tuple[int, int, int, int], ...]  # (output index, packets, bytes, errors)
    drops: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class StatsReport:
    """Cumulative counters of one worker incarnation since it started."""

    worker_id: int
    pid: int
    rules: tuple[tuple[str, RuleCounters], ...]
    drops: tuple[tuple[str, int], ...]
    kernel_packets: int
    kernel_drops: int
    pipe_errors: int
    generation: int = 0  # the rule generation the counters were taken under
    ring_resyncs: int = 0  # times a capture ring was found out of step with the kernel and resynchronised
    delta: bool = False  # `rules` holds only the rules whose counters changed since the worker's last report
    gone: tuple[str, ...] = ()  # with `delta`: rules the worker dropped since its last report
    # the worker's CLOCK_MONOTONIC (the host's, the supervisor's too) when it took the counters; None from a
    # worker of an older version: the supervisor then takes the report's arrival instead (rates, `StatsBook`)
    taken_at: float | None = None


def encode_stats(report: StatsReport) -> bytes:
    """One line of JSON. A full report carries every rule, so each rule's counts are written as text
    straight away rather than as lists and dicts for `json.dumps` (about 0.7 kB a rule that a worker of
    10,000 rules would hold at once); the line is the same `json.dumps` would write."""
    rest: dict[str, object] = {
        "drops": dict(report.drops),
        "kp": report.kernel_packets,
        "kd": report.kernel_drops,
        "pe": report.pipe_errors,
        "g": report.generation,
        "rr": report.ring_resyncs,
    }
    if report.delta:
        rest["d"] = 1
        rest["gone"] = list(report.gone)
    if report.taken_at is not None:
        rest["t"] = report.taken_at
    idle: dict[tuple[tuple[int, int, int, int], ...], str] = {}  # the text of all-zero counts, per layout
    rules = []
    for rid, c in report.rules:
        if c.packets or c.drops:
            text = _counts_json(c)
        else:
            text = idle.get(c.outputs) or idle.setdefault(c.outputs, _counts_json(c))
        rules.append(f"{_json_str(rid)}:{text}")
    tail = json.dumps(rest, separators=(",", ":"))
    return f'{{"w":{int(report.worker_id)},"pid":{int(report.pid)},"rules":{{{",".join(rules)}}},{tail[1:]}\n'.encode()


_json_str = json.encoder.encode_basestring_ascii  # a JSON string, as json.dumps writes it


def _counts_json(c: RuleCounters) -> str:
    outputs = ",".join([f"[{i},{p},{b},{e}]" for i, p, b, e in c.outputs])
    drops = ",".join([f"{_json_str(k)}:{n}" for k, n in c.drops]) if c.drops else ""
    return f"[{c.packets},{c.bytes},[{outputs}],{{{drops}}}]"


def _seconds(value: object) -> float | None:
    """A clock reading: a JSON number (not a boolean), or None where the report has none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"t must be a number, got {type(value).__name__}")
    return float(value)


def decode_stats(line: bytes) -> StatsReport:
    """A report, its rules read one at a time (`load_json_streaming`): a full report at 10,000 rules is about
    5 MB of lists decoded at once otherwise, and the allocator keeps such a peak (RSS) long after. Rules whose
    counts are written alike (idle ones, of the same outputs) share one `RuleCounters`."""
    alike: dict[str, RuleCounters] = {}

    def rule(rid: str, text: str, v: Any) -> tuple[str, RuleCounters]:
        counters = alike.get(text)
        if counters is None:
            drops = v[3]
            if type(drops) is not dict:
                raise TypeError(f"drops must be an object, got {type(drops).__name__}")
            counters = RuleCounters(
                int(v[0]),
                int(v[1]),
                tuple([(int(i), int(p), int(b), int(e)) for i, p, b, e in v[2]]),
                tuple([(str(k), int(n)) for k, n in drops.items()]) if drops else (),
            )
            if not counters.packets and len(alike) < 64:
                alike[text] = counters
        # the table's own id string (ForwardingRule interns it), not a copy per report
        return sys.intern(str(rid)), counters

    try:
        d, rules = load_json_streaming(line, "malformed stats report", "rules", rule)
        if "rules" not in d:  # (present, it was an object: its members went to `rule`)
            raise KeyError("rules")
        return StatsReport(
            worker_id=int(d["w"]),
            pid=int(d["pid"]),
            rules=tuple(rules),
            drops=tuple((str(k), int(n)) for k, n in d["drops"].items()),
            kernel_packets=int(d["kp"]),
            kernel_drops=int(d["kd"]),
            pipe_errors=int(d["pe"]),
            generation=int(d.get("g", 0)),
            ring_resyncs=int(d.get("rr", 0)),
            delta=bool(d.get("d", 0)),
            gone=tuple(str(rid) for rid in d.get("gone", ())),
            taken_at=_seconds(d.get("t")),
        )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise ProtocolError(f"malformed stats report: {e!r}") from None
