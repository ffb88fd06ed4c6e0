import struct
from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from mcr.model.errors import ProtocolError
from mcr.model.rules import InputProtocol
from mcr.protocol.worker import (
    MAX_STATS_FRAME,
    CloseEgress,
    CloseSockets,
    HoldSockets,
    OpenEgress,
    OpenSockets,
    RawEgress,
    Ready,
    Released,
    ReleaseSockets,
    RuleCounters,
    SetLogLevels,
    Shutdown,
    StatsReport,
    Sync,
    SyncAck,
    WorkerOutput,
    WorkerRule,
    counters_of,
    counts_layout,
    decode_command,
    decode_reply,
    decode_stats,
    encode_command,
    encode_reply,
    encode_stats,
    take_stats,
    worker_version,
)

RULE = WorkerRule(
    "r1",
    2,
    IPv4Address("239.1.1.1"),
    5000,
    (WorkerOutput(0, IPv4Address("239.2.2.2"), 6000, 3, IPv4Address("10.0.0.1"), 1),),
)
ESP_OUT = WorkerOutput(0, IPv4Address("10.9.9.9"), 0, 3, IPv4Address("10.0.0.1"), None, InputProtocol.ESP)
ESP_RULE = WorkerRule("e1", 2, IPv4Address("239.1.1.1"), 0, (ESP_OUT,), protocol=InputProtocol.ESP)


@pytest.mark.parametrize(
    "cmd",
    [
        Sync(7, (RULE,)),
        Sync(0, ()),
        Sync(8, (RULE, ESP_RULE)),
        OpenSockets((2, 5)),
        OpenSockets((2, 5), (17, 0)),
        OpenEgress((ESP_OUT.raw_egress, RawEgress(IPv4Address("239.5.5.5"), 4, IPv4Address("10.0.0.2"), 7))),
        CloseEgress((ESP_OUT.raw_egress,)),
        CloseSockets((2,)),
        SetLogLevels(20, (("mcr.worker", 10),)),
        Shutdown(),
        ReleaseSockets(),
        HoldSockets(3),
        HoldSockets(64, append=True),
    ],
)
def test_command_round_trip(cmd: object) -> None:
    assert decode_command(encode_command(cmd)) == cmd  # type: ignore[arg-type]


def test_a_sync_from_an_older_supervisor_is_udp() -> None:
    raw = encode_command(Sync(7, (RULE,))).replace(b',"protocol":17', b"")
    assert b"protocol" not in raw
    assert decode_command(raw) == Sync(7, (RULE,))


@pytest.mark.parametrize(
    "reply",
    [
        Ready(12, 65534),
        Ready(12, 65534, ((2, 17), (5, -1)), "0.1.0+1"),
        SyncAck(3),
        Released((2, 5), (100, 0)),
        Released((), ()),
    ],
)
def test_reply_round_trip(reply: object) -> None:
    assert decode_reply(encode_reply(reply)) == reply  # type: ignore[arg-type]


def _plain(report: StatsReport) -> StatsReport:
    """`report` with every rule's counts as `RuleCounters` (a decoded report holds packed ones as bytes)."""
    return replace(report, rules=tuple((rid, counters_of(c)) for rid, c in report.rules))


_REPORT = StatsReport(
    1,
    99,
    (
        ("r1", RuleCounters(5, 500, ((0, 5, 500, 0),), (("fragment", 2),))),
        ("r2", RuleCounters(7, 9800, ((0, 7, 9800, 0), (3, 6, 8400, 1)))),
        ("idle", RuleCounters(0, 0, ((0, 0, 0, 0),))),
    ),
    (("no_rule", 1), ("not_udp", 0)),
    10,
    1,
    0,
    generation=4,
    ring_resyncs=2,
    delta=True,
    gone=("old", "\u00e9t\u00e9"),
    taken_at=12.25,
)


def test_stats_round_trip() -> None:
    frame = encode_stats(_REPORT)
    decoded = decode_stats(frame)
    assert _plain(decoded) == _REPORT
    by_id = dict(decoded.rules)
    assert isinstance(by_id["r1"], RuleCounters), "a rule with drops comes as counters"
    assert by_id["r2"] == counts_layout(2).pack(7, 9800, 0, 7, 9800, 0, 3, 6, 8400, 1), "the others packed"
    assert decode_stats(encode_stats(replace(_REPORT, taken_at=None, delta=False, gone=()))).taken_at is None


def test_stats_frames_are_taken_whole_whatever_the_reads() -> None:
    """The pipe is a stream: reports arrive in pieces and several at once; a line of JSON from a worker of
    the previous version may be among them."""
    older = b'{"w":0,"pid":7,"rules":{"r1":[3,300,[[0,3,300,0]],{}]},"drops":{},"kp":3,"kd":1,"pe":0}\n'
    stream = encode_stats(_REPORT) + older + encode_stats(replace(_REPORT, pid=100))
    buf = bytearray()
    taken: list[bytes] = []
    for i in range(0, len(stream), 7):  # 7 bytes at a time
        buf += stream[i : i + 7]
        got, problem = take_stats(buf)
        assert problem is None
        taken += got
    assert not buf
    assert [_plain(decode_stats(t)).pid for t in taken] == [99, 7, 100]
    assert _plain(decode_stats(taken[0])) == _REPORT
    assert decode_stats(taken[1]).rules == (("r1", RuleCounters(3, 300, ((0, 3, 300, 0),))),)


@pytest.mark.parametrize(
    ("stream", "why"),
    [
        (b"\x07garbage", "starting with byte 0x07"),
        (struct.pack("=BI", 0, MAX_STATS_FRAME + 1), f"a stats frame of {MAX_STATS_FRAME + 1} bytes"),
    ],
)
def test_a_stream_out_of_step_is_dropped_with_the_reason(stream: bytes, why: str) -> None:
    """After bytes that are neither a frame nor a line, nothing can be told apart: the reports before them are
    kept, the rest is dropped and named."""
    buf = bytearray(encode_stats(_REPORT) + stream)
    taken, problem = take_stats(buf)
    assert [_plain(decode_stats(t)) for t in taken] == [_REPORT]
    assert problem is not None and why in problem
    assert not buf


def _frame(body: bytes) -> bytes:
    return struct.pack("=BI", 0, len(body)) + body


_GOOD = encode_stats(replace(_REPORT, rules=_REPORT.rules[1:2], gone=()))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "unpack_from requires a buffer"),
        (b"null", "unpack_from requires a buffer"),
        (_GOOD[:-1], "not a whole stats frame"),
        (_frame(_GOOD[5:-1]), "counts run past the end"),
        (_frame(_GOOD[5:] + b"\0"), "1 bytes after the report"),
        (_GOOD.replace(b"r2", b"\xff\xfe"), "a rule id at byte 110 is not UTF-8 (invalid start byte)"),
        (_GOOD.replace(b"no_rule", b"no_rul\xc3"), "a drop reason at byte 73 is not UTF-8 (unexpected end of data)"),
        (b"\x01" + _GOOD[1:], "tag 1"),
    ],
)
def test_malformed_stats_frames(raw: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match="malformed stats report") as e:
        decode_stats(raw)
    assert why in str(e.value)
    assert _plain(decode_stats(_GOOD)).rules == _REPORT.rules[1:2]


def test_stats_from_a_worker_without_newer_counters() -> None:
    """A report without the generation and resync counters (an older worker's) decodes them as 0."""
    report = decode_stats(b'{"w":0,"pid":7,"rules":{},"drops":{},"kp":3,"kd":1,"pe":0}')
    assert (report.kernel_packets, report.kernel_drops, report.generation, report.ring_resyncs) == (3, 1, 0, 0)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'"Reboot"',
        b'{"Sync":{"generation":"x"}}',
        b'{"OpenSockets":{}}',
        b'{"OpenEgress":{"keys":[[1]]}}',
        b"[]",
        b'{"Update":{"generation":1,"removed":[],"rules":[{"rule_id":"a","ifindex":1,"group":"239.1.1.1",'
        b'"port":1,"outputs":[{"index":0,"group":"239.2.2.2","port":2,"ifindex":2,"source":["10.0.0.1"]}]}]}}',
    ],
)
def test_malformed_commands(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_command(raw)


def test_outputs_leaving_from_one_address_share_its_decoded_object() -> None:
    outs = [WorkerOutput(i, IPv4Address(f"239.2.2.{i}"), 6000, 2, IPv4Address("10.0.0.1"), None) for i in range(3)]
    rules = tuple(WorkerRule(f"r{i}", 1, IPv4Address(f"239.1.1.{i}"), 5000, (out,)) for i, out in enumerate(outs))
    decoded = decode_command(encode_command(Sync(1, rules)))
    assert decoded == Sync(1, rules)
    assert isinstance(decoded, Sync)
    sources = {id(r.outputs[0].source) for r in decoded.rules}
    assert len(sources) == 1, "one address object for every output from 10.0.0.1"


_RULE_OK = b'"r1":[3,300,[[0,3,300,0]],{}]'


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"{", "Expecting property name"),
        (b"{}", "KeyError"),
        (b'{"w":1}', "KeyError"),
        (b'{"w":0,"pid":7,"rules":{"r1":[3,300,[[0,3,300]],{}]},"drops":{},"kp":0,"kd":0,"pe":0}', "values to unpack"),
        (
            b'{"w":0,"pid":7,"rules":{"r1":[3,300,[[0,3,300,0,9]],{}]},"drops":{},"kp":0,"kd":0,"pe":0}',
            "values to unpack",
        ),
        (b'{"w":0,"pid":7,"rules":{"r1":[3,300,[[0,3,"x",0]],{}]},"drops":{},"kp":0,"kd":0,"pe":0}', "invalid literal"),
        (b'{"w":0,"pid":7,"rules":{"r1":[3,300,[],[]]},"drops":{},"kp":0,"kd":0,"pe":0}', "drops must be an object"),
        (b'{"w":0,"pid":7,"rules":{"r1":[3,300,[],{"x":[]}]},"drops":{},"kp":0,"kd":0,"pe":0}', "int()"),
        (b'{"w":0,"pid":7,"rules":{},"drops":{},"kp":0,"kd":0,"pe":0,"t":"1.5"}', "t must be a number"),
        (b'{"w":0,"pid":7,"rules":{},"drops":{},"kp":0,"kd":0,"pe":0,"t":true}', "t must be a number"),
    ],
)
def test_malformed_stats_lines(raw: bytes, why: str) -> None:
    """A line of JSON from a worker of the previous version, malformed."""
    with pytest.raises(ProtocolError, match="malformed stats report") as e:
        decode_stats(raw)
    assert why in str(e.value)
    good = b'{"w":0,"pid":7,"rules":{' + _RULE_OK + b'},"drops":{},"kp":0,"kd":0,"pe":0}'
    assert decode_stats(good).rules[0][1].outputs == ((0, 3, 300, 0),)
    assert decode_stats(good).taken_at is None  # an older worker's report: no clock reading
    assert decode_stats(good[:-1] + b',"t":12.25}').taken_at == 12.25


def test_a_fresh_workers_ready_is_the_old_shape() -> None:
    """A worker that holds nothing sends the Ready an older supervisor knows (no new keys)."""
    assert encode_reply(Ready(12, 65534)) == b'{"Ready": {"pid": 12, "uid": 65534}}'


@pytest.mark.parametrize(
    "raw",
    [
        b'{"Released": {"ifindexes": [2, 5], "positions": [1]}}',
        b'{"Released": {"ifindexes": [2]}}',
        b'{"Ready": {"pid": 1, "uid": 2, "captures": [[2]]}}',
        b'{"Ready": {"pid": 1, "uid": 2, "captures": 7}}',
    ],
)
def test_malformed_handover_replies_are_protocol_errors(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_reply(raw)


def test_worker_version() -> None:
    assert worker_version("0.1.0", {}) == "0.1.0"
    assert worker_version("0.1.0", {"MCR_TEST_WORKER_VARIANT": "2"}) == "0.1.0+2"
