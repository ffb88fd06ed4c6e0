"""Messages between the supervisor and its data-plane workers.

Commands and acknowledgements travel over a SOCK_SEQPACKET socketpair (one JSON document per
datagram, capture sockets and raw ESP output sockets attached with SCM_RIGHTS). Counters travel the other
way over a pipe as packed frames (`encode_stats`), so a slow supervisor never blocks a worker (the worker counts
failed pushes).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote
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


_COMPACT = (",", ":")


def _rule_text(r: WorkerRule) -> str:
    """`_rule_json(r)` as `encode_command` writes it, written directly (a property test holds the two equal): the
    worker's first `Sync` at 10,000 rules in 99 ms where json.dumps of the objects took 154."""
    source = "null" if r.source is None else _quote(source_text(r.source))
    limit = "null" if r.rate_limit is None else json.dumps(encode_rate_limit(r.rate_limit), separators=_COMPACT)
    outputs = ",".join(
        [
            f'{{"index":{o.index},"group":{_quote(address_text(o.group))},"port":{o.port},"ifindex":{o.ifindex},'
            f'"source":{_quote(address_text(o.source))},"ttl":{"null" if o.ttl is None else o.ttl},'
            f'"protocol":{int(o.protocol)}}}'
            for o in r.outputs
        ]
    )
    return (
        f'{{"rule_id":{_quote(r.rule_id)},"ifindex":{r.ifindex},"group":{_quote(address_text(r.group))},'
        f'"port":{r.port},"source":{source},"outputs":[{outputs}],"rate_limit":{limit},"epoch":{r.epoch},'
        f'"protocol":{int(r.protocol)}}}'
    )


def _egress_json(key: RawEgress) -> list[object]:
    return [str(key.group), key.ifindex, str(key.source), key.ttl]


def _egress(item: Any) -> RawEgress:
    group, ifindex, source, ttl = item
    return RawEgress(parse_group(group), int(ifindex), parse_group(source), None if ttl is None else int(ttl))


def encode_command(cmd: Command) -> bytes:
    doc: object
    match cmd:
        case Sync():  # the rules written as text (`_rule_text`); the bytes of json.dumps of `_rule_json`'s
            rules = ",".join(map(_rule_text, cmd.rules))
            return f'{{"Sync":{{"generation":{int(cmd.generation)},"rules":[{rules}]}}}}'.encode()
        case Update():
            rules = ",".join(map(_rule_text, cmd.rules))
            removed = json.dumps(list(cmd.removed), separators=_COMPACT)
            return f'{{"Update":{{"generation":{int(cmd.generation)},"rules":[{rules}],"removed":{removed}}}}}'.encode()
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
    return json.dumps(doc, separators=_COMPACT).encode()


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


_PROTOCOLS = {int(p): p for p in InputProtocol}


def _protocol(item: Any) -> InputProtocol:
    """An item's `protocol` (UDP when absent): a dict look-up, where calling the enum took 0.9 µs an output."""
    number = int(item.get("protocol", InputProtocol.UDP))
    found = _PROTOCOLS.get(number)
    if found is None:
        raise ValueError(f"{number} is not a valid InputProtocol")
    return found


def _decode_output(o: Any) -> WorkerOutput:
    ttl = o.get("ttl")
    return WorkerOutput(  # positional: a quarter faster than by keyword, 25,000 times in a Sync at 10,000 rules
        int(o["index"]),
        parse_group(o["group"]),
        _port(o["port"]),
        int(o["ifindex"]),
        _source(o["source"]),
        None if ttl is None else int(ttl),
        _protocol(o),
    )


def _decode_rule(r: Any) -> WorkerRule:
    limit = r.get("rate_limit")
    return WorkerRule(
        str(r["rule_id"]),
        int(r["ifindex"]),
        parse_group(r["group"]),
        _port(r["port"]),
        tuple(map(_decode_output, r["outputs"])),
        None if limit is None else decode_rate_limit(limit),
        parse_source(r["source"]) if r.get("source") else None,
        int(r.get("epoch", 0)),
        _protocol(r),
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


#: A rule's counts in a report: the counters, or (without drops) as `counts_layout` packs them, the form they
#: travel in, which the supervisor keeps without making objects of them.
Counts = RuleCounters | bytes


@dataclass(frozen=True, slots=True)
class StatsReport:
    """Cumulative counters of one worker incarnation since it started."""

    worker_id: int
    pid: int
    rules: tuple[tuple[str, Counts], ...]
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


# A report travels as one frame: the tag STATS_FRAME, the body's length and the body, in native byte order (both
# ends are on one host). The body: `_HEAD`; the worker's drop counters (`_named`); each rule (`_RULE`: the id's
# length in bytes, its outputs, its drop reasons; the id; its counts as `counts_layout` packs them; its drops);
# the ids of the rules gone (`_ID`: the length, then the id). Workers before this format wrote a line of JSON
# (it starts with "{"): `take_stats` and `decode_stats` read both, so that a worker of the previous version,
# taken over at an upgrade, is heard until its successor replaces it.
STATS_FRAME = 0
MAX_STATS_FRAME = 256 << 20  # a worker's full report at 100,000 rules of 4 outputs is about 16 MB
_FRAME = struct.Struct("=BI")
# worker, pid, kernel packets and drops, pipe errors, generation, ring resyncs, delta, taken_at (NaN: none),
# the number of rules, the number of ids gone
_HEAD = struct.Struct("=iIqqqqqBdII")
_RULE = struct.Struct("=HHH")
_ID = struct.Struct("=H")
_NAME = struct.Struct("=B")
_COUNT = struct.Struct("=q")
_LAYOUTS: dict[int, struct.Struct] = {}


def counts_layout(outputs: int) -> struct.Struct:
    """How a rule's counts are packed on the stats pipe (and may be held, `Counts`): packets, bytes, then
    (index, packets, bytes, errors) per output, each a native signed 64-bit integer."""
    layout = _LAYOUTS.get(outputs)
    if layout is None:
        layout = _LAYOUTS[outputs] = struct.Struct(f"={2 + 4 * outputs}q")
    return layout


def _outputs_in(counts: bytes) -> int:
    """How many outputs packed `counts` (`counts_layout`) hold."""
    return (len(counts) // 8 - 2) // 4


def unpack_counts(counts: bytes) -> RuleCounters:
    """The counters packed in `counts` (`counts_layout`; no drops)."""
    values = counts_layout(_outputs_in(counts)).unpack(counts)
    outputs = tuple((values[i], values[i + 1], values[i + 2], values[i + 3]) for i in range(2, len(values), 4))
    return RuleCounters(values[0], values[1], outputs)


def counters_of(counts: Counts) -> RuleCounters:
    return counts if isinstance(counts, RuleCounters) else unpack_counts(counts)


def encode_stats(report: StatsReport) -> bytes:
    """The report as one frame of the stats pipe. Raises struct.error for a count past 2**63 or an id
    over 65,535 bytes, which no rule reaches (validation bounds ids far below). Texts are UTF-8, with lone
    surrogates passed through, so that any string read back is the one written."""
    parts = [
        _HEAD.pack(
            report.worker_id,
            report.pid,
            report.kernel_packets,
            report.kernel_drops,
            report.pipe_errors,
            report.generation,
            report.ring_resyncs,
            report.delta,
            math.nan if report.taken_at is None else report.taken_at,
            len(report.rules),
            len(report.gone),
        ),
        _named(report.drops),
    ]
    for rid, c in report.rules:
        name = rid.encode("utf-8", "surrogatepass")
        if isinstance(c, bytes):
            parts.append(_RULE.pack(len(name), _outputs_in(c), 0) + name + c)
            continue
        flat = [n for output in c.outputs for n in output]
        counts = counts_layout(len(c.outputs)).pack(c.packets, c.bytes, *flat)
        parts.append(_RULE.pack(len(name), len(c.outputs), len(c.drops)) + name + counts)
        for reason, n in c.drops:
            parts.append(_name_count(reason, n))
    parts.extend(_ID.pack(len(name)) + name for name in (rid.encode("utf-8", "surrogatepass") for rid in report.gone))
    body = b"".join(parts)
    return _FRAME.pack(STATS_FRAME, len(body)) + body


def _named(counts: tuple[tuple[str, int], ...]) -> bytes:
    return _ID.pack(len(counts)) + b"".join(_name_count(name, n) for name, n in counts)


def _name_count(name: str, n: int) -> bytes:
    text = name.encode("utf-8", "surrogatepass")
    return _NAME.pack(len(text)) + text + _COUNT.pack(n)


def take_stats(buf: bytearray) -> tuple[list[bytes], str | None]:
    """Take the whole reports out of what a worker wrote so far (`buf`, consumed): frames, and lines of JSON
    from a worker of an older version. What follows something that is neither (or a frame over
    MAX_STATS_FRAME) cannot be told apart any more: it is dropped, with the reason as the second value."""
    reports: list[bytes] = []
    at = 0
    problem = None
    while at < len(buf):
        tag = buf[at]
        if tag == STATS_FRAME:
            if len(buf) - at < _FRAME.size:
                break
            size = _FRAME.unpack_from(buf, at)[1]
            if size > MAX_STATS_FRAME:
                problem = f"a stats frame of {size} bytes (at most {MAX_STATS_FRAME})"
                at = len(buf)
                break
            end = at + _FRAME.size + size
            if end > len(buf):
                break
        elif tag == 0x7B:  # "{": a line of JSON
            nl = buf.find(b"\n", at)
            if nl < 0:
                if len(buf) - at > MAX_STATS_FRAME:
                    problem = f"a stats line of over {MAX_STATS_FRAME} bytes"
                    at = len(buf)
                break
            end = nl + 1
        else:
            problem = f"a stats report starting with byte 0x{tag:02x}"
            at = len(buf)
            break
        reports.append(bytes(buf[at:end]))
        at = end
    del buf[:at]
    return reports, problem


def decode_stats(data: bytes) -> StatsReport:
    """A report as `take_stats` gave it: a frame, or a line of JSON (with or without its newline)."""
    if data[:1] == b"{":
        return _decode_stats_json(data.rstrip(b"\n"))
    try:
        tag, size = _FRAME.unpack_from(data)
        if tag != STATS_FRAME or size != len(data) - _FRAME.size:
            raise ValueError(f"not a whole stats frame (tag {tag}, {size} bytes for {len(data) - _FRAME.size})")
        return _decode_frame(data)
    except (struct.error, ValueError) as e:
        raise ProtocolError(f"malformed stats report: {e!r}") from None


def _decode_frame(data: bytes) -> StatsReport:
    worker, pid, kp, kd, pe, generation, resyncs, delta, taken, nrules, ngone = _HEAD.unpack_from(data, _FRAME.size)
    at = _FRAME.size + _HEAD.size
    drops, at = _read_named(data, at + _ID.size, _ID.unpack_from(data, at)[0])
    rules: list[tuple[str, Counts]] = []
    rule_head, intern, size = _RULE.unpack_from, sys.intern, len(data)
    for _ in range(nrules):
        idlen, outputs, ndrops = rule_head(data, at)
        at += 6
        # the table's own id string (ForwardingRule interns it), not a copy per report
        rid = intern(_utf8(data, at, idlen, "a rule id"))
        at += idlen
        end = at + 16 + 32 * outputs
        if end > size:
            raise ValueError(f"rule {rid!r}: its counts run past the end of the report")
        counts = data[at:end]
        at = end
        if ndrops:
            named, at = _read_named(data, at, ndrops)
            c = unpack_counts(counts)
            rules.append((rid, RuleCounters(c.packets, c.bytes, c.outputs, named)))
        else:
            rules.append((rid, counts))
    gone = []
    for _ in range(ngone):
        (idlen,) = _ID.unpack_from(data, at)
        gone.append(_utf8(data, at + 2, idlen, "an id gone"))
        at += 2 + idlen
    if at != size:
        raise ValueError(f"{size - at} bytes after the report's last field")
    return StatsReport(
        worker_id=worker,
        pid=pid,
        rules=tuple(rules),
        drops=drops,
        kernel_packets=kp,
        kernel_drops=kd,
        pipe_errors=pe,
        generation=generation,
        ring_resyncs=resyncs,
        delta=bool(delta),
        gone=tuple(gone),
        taken_at=None if math.isnan(taken) else taken,
    )


def _utf8(data: bytes, at: int, size: int, what: str) -> str:
    text = data[at : at + size]
    if len(text) != size:
        raise ValueError(f"{what} at byte {at} runs past the end of the report")
    try:
        return text.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} at byte {at} is not UTF-8 ({e.reason})") from None


def _read_named(data: bytes, at: int, count: int) -> tuple[tuple[tuple[str, int], ...], int]:
    """`count` (name, number) pairs from `at` on, and the index after them."""
    found = []
    for _ in range(count):
        (n,) = _NAME.unpack_from(data, at)
        name = _utf8(data, at + 1, n, "a drop reason")
        found.append((name, _COUNT.unpack_from(data, at + 1 + n)[0]))
        at += 9 + n
    return tuple(found), at


def _seconds(value: object) -> float | None:
    """A clock reading: a JSON number (not a boolean), or None where the report has none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"t must be a number, got {type(value).__name__}")
    return float(value)


def _decode_stats_json(line: bytes) -> StatsReport:
    """A report of an older worker (a line of JSON), its rules read one at a time (`load_json_streaming`): a
    full report at 10,000 rules is about 5 MB of lists decoded at once otherwise, and the allocator keeps such
    a peak (RSS) long after. Rules whose counts are written alike (idle ones, of the same outputs) share one
    `RuleCounters`."""
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
