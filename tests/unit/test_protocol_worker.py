from ipaddress import IPv4Address

import pytest

from mcr.model.errors import ProtocolError
from mcr.model.rules import InputProtocol
from mcr.protocol.worker import (
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
    decode_command,
    decode_reply,
    decode_stats,
    encode_command,
    encode_reply,
    encode_stats,
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


def test_stats_round_trip() -> None:
    report = StatsReport(
        1,
        99,
        (("r1", RuleCounters(5, 500, ((0, 5, 500, 0),), (("fragment", 2),))),),
        (("no_rule", 1),),
        10,
        1,
        0,
        generation=4,
        ring_resyncs=2,
    )
    line = encode_stats(report)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_stats(line) == report


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
        (b"", "Expecting '{'"),
        (b"{}", "KeyError"),
        (b'{"w":1}', "KeyError"),
        (b"null", "Expecting"),
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
def test_malformed_stats(raw: bytes, why: str) -> None:
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
