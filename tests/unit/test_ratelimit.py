"""Per-rule rate limits: validation, text and JSON forms, and the token bucket with an injected clock."""

from __future__ import annotations

import json
import re
from ipaddress import IPv4Address

import pytest

from mcr.cli.control_client import ExitCode, main, parse_invocation
from mcr.model.config import parse_config
from mcr.model.errors import ConfigError, ProtocolError, ValidationError
from mcr.model.ratelimit import (
    NS_PER_S,
    RateLimit,
    RateUnit,
    TokenBucket,
    bucket_params,
    decode_rate_limit,
    default_burst,
    encode_rate_limit,
    parse_rate,
)
from mcr.model.rules import ForwardingRule, Limits, OutputDestination, check_rule_shape
from mcr.protocol.control import AddRule, decode_request, decode_rule, encode_request, encode_rule
from mcr.protocol.worker import Sync, WorkerRule, decode_command, encode_command
from mcr.worker.loop import DataPlane

MS = 1_000_000


@pytest.mark.parametrize(
    ("text", "rate", "unit"),
    [
        ("10000pps", 10_000, RateUnit.PPS),
        ("10kpps", 10_000, RateUnit.PPS),
        ("1Mpps", 1_000_000, RateUnit.PPS),
        ("8000bps", 8_000, RateUnit.BPS),
        ("50mbps", 50_000_000, RateUnit.BPS),
        ("2.5Mbps", 2_500_000, RateUnit.BPS),
        ("1gbps", 1_000_000_000, RateUnit.BPS),
        (" 5 kbps ", 5_000, RateUnit.BPS),
    ],
)
def test_parse_rate(text: str, rate: int, unit: RateUnit) -> None:
    assert parse_rate(text) == (rate, unit)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10000", "Invalid rate limit '10000': expected a number and a unit"),
        ("fast", "Invalid rate limit 'fast'"),
        ("-5pps", "Invalid rate limit '-5pps'"),
        ("10 MB/s", "Invalid rate limit '10 MB/s'"),
        ("1.5pps", "1.5 is not a whole number of pps"),
    ],
)
def test_parse_rate_errors(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        parse_rate(text)


def test_default_burst_is_a_tenth_of_a_second_with_floors() -> None:
    assert default_burst(10_000, RateUnit.PPS) == 1_000
    assert default_burst(5, RateUnit.PPS) == 1
    assert default_burst(80_000_000, RateUnit.BPS) == 1_000_000
    assert default_burst(1_000_000, RateUnit.BPS) == 65_535


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"pps": 1000}, RateLimit(1000, RateUnit.PPS, 100)),
        ({"pps": 1000, "burst": 5}, RateLimit(1000, RateUnit.PPS, 5)),
        ({"bps": 8_000_000, "burst_bytes": 20_000}, RateLimit(8_000_000, RateUnit.BPS, 20_000)),
    ],
)
def test_decode_encode_round_trip(obj: dict[str, int], expected: RateLimit) -> None:
    limit = decode_rate_limit(obj)
    assert limit == expected
    assert decode_rate_limit(encode_rate_limit(limit)) == limit


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ("1000pps", 'rate_limit must be an object like {"pps": 1000} or {"bps": 8000000}, got string'),
        ({}, "rate_limit needs exactly one of 'pps' or 'bps'"),
        ({"pps": 1, "bps": 8000}, "rate_limit needs exactly one of 'pps' or 'bps'"),
        ({"pps": 10, "rate": 3}, "unknown field 'rate' in rate_limit; expected bps, burst, burst_bytes, pps"),
        ({"pps": "10"}, "rate_limit.pps must be an integer, got string"),
        ({"pps": True}, "rate_limit.pps must be an integer, got boolean"),
        ({"pps": 10.5}, "rate_limit.pps must be an integer, got number"),
        ({"pps": 10, "burst_bytes": 9000}, "rate_limit.burst_bytes goes with 'bps'; with 'pps' use 'burst'"),
        ({"bps": 8000, "burst": 9}, "rate_limit.burst goes with 'pps'; with 'bps' use 'burst_bytes'"),
        ({"pps": 0}, "rate_limit.pps 0 is out of range; valid range is 1-100000000"),
        ({"pps": -5}, "rate_limit.pps -5 is out of range"),
        ({"pps": 10**9}, "rate_limit.pps 1000000000 is out of range"),
        ({"bps": 999}, "rate_limit.bps 999 is out of range; valid range is 1000-1000000000000"),
        ({"bps": 10**13}, "rate_limit.bps 10000000000000 is out of range"),
        ({"pps": 10, "burst": 0}, "rate_limit.burst 0 is out of range; valid range is 1-100000000"),
        ({"bps": 8000, "burst_bytes": 100}, "rate_limit.burst_bytes 100 is out of range; valid range is 1500-"),
    ],
)
def test_decode_errors_are_precise(obj: object, message: str) -> None:
    with pytest.raises(ValidationError) as e:
        decode_rate_limit(obj)
    assert message in str(e.value)


def test_rule_shape_checks_the_limit() -> None:
    out = OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1")
    rule = ForwardingRule("r", "eth0", IPv4Address("239.1.1.1"), 5000, (out,), rate_limit=RateLimit(0, RateUnit.PPS, 1))
    with pytest.raises(ValidationError, match=re.escape("rate_limit.pps 0 is out of range")):
        check_rule_shape(rule)


# ------------------------------------------------------------------------------------------ the bucket


def test_pps_bucket_passes_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(RateLimit(100, RateUnit.PPS, 10))  # 10 ms of credit a packet, 100 ms of burst
    now = 5 * NS_PER_S
    assert [bucket.admit(1000, now) for _ in range(12)] == [True] * 10 + [False] * 2
    assert not bucket.admit(1000, now + 9 * MS)  # refills one packet each 10 ms
    assert bucket.admit(1000, now + 10 * MS)
    assert not bucket.admit(1000, now + 10 * MS)
    assert [bucket.admit(1, now + 2 * NS_PER_S) for _ in range(11)].count(True) == 10  # full again, no more


def test_pps_bucket_holds_the_rate_over_a_long_overload() -> None:
    bucket = TokenBucket(RateLimit(1000, RateUnit.PPS, 50))
    passed = 0
    for i in range(100_000):  # 10 s at 10,000 packets per second, checked in 1 ms blocks of 10 packets
        passed += bucket.admit(100, (i // 10) * MS)
    assert passed == 50 + 1000 * 10 - 1  # the burst, then one packet each millisecond


def test_bps_bucket_charges_payload_bytes() -> None:
    bucket = TokenBucket(RateLimit(8_000_000, RateUnit.BPS, 10_000))  # 1,000,000 bytes/s, 10,000 bytes burst
    assert [bucket.admit(4000, 0) for _ in range(3)] == [True, True, False]
    assert bucket.admit(2000, 0)  # what is left of the burst: exactly 2000 bytes
    assert not bucket.admit(1, 0)
    assert bucket.admit(1000, MS)  # 1 ms refills 1000 bytes
    assert not bucket.admit(1, MS)


def test_bucket_params_fit_the_kernel_arithmetic() -> None:
    p = bucket_params(RateLimit(100_000_000, RateUnit.PPS, 100_000_000))
    assert (p.per_packet, p.per_byte, p.divisor, p.burst_ns) == (NS_PER_S, 0, 100_000_000, NS_PER_S)
    worst = bucket_params(RateLimit(1000, RateUnit.BPS, 1 << 32))
    assert worst.burst_ns < 1 << 63 and 65535 * worst.per_byte < 1 << 63


# ------------------------------------------------------------------------------------------ the wire


def test_add_rule_carries_the_limit_and_old_requests_have_none() -> None:
    base = {"input_interface": "eth0", "input_group": "239.1.1.1", "input_port": 5000, "outputs": []}
    assert decode_request(json.dumps({"AddRule": base}).encode()) == AddRule(
        None, "eth0", IPv4Address("239.1.1.1"), 5000, ()
    )
    req = decode_request(json.dumps({"AddRule": {**base, "rate_limit": {"bps": 8000, "burst_bytes": 2000}}}).encode())
    assert isinstance(req, AddRule)
    assert req.rate_limit == RateLimit(8000, RateUnit.BPS, 2000)
    assert decode_request(encode_request(req)) == req


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ({"pps": 0}, "AddRule: rate_limit.pps 0 is out of range; valid range is 1-100000000"),
        ("fast", "AddRule: rate_limit must be an object"),
    ],
)
def test_add_rule_refuses_a_bad_limit(limit: object, message: str) -> None:
    body = {"input_interface": "eth0", "input_group": "239.1.1.1", "input_port": 5000, "outputs": []}
    with pytest.raises(ProtocolError, match=re.escape(message)):
        decode_request(json.dumps({"AddRule": {**body, "rate_limit": limit}}).encode())


def test_rule_json_and_state_round_trip() -> None:
    rule = ForwardingRule("r", "eth0", IPv4Address("239.1.1.1"), 5000, (), rate_limit=RateLimit(5, RateUnit.PPS, 2))
    doc = encode_rule(rule)
    assert doc["rate_limit"] == {"pps": 5, "burst": 2}
    assert decode_rule(json.loads(json.dumps(doc))) == rule
    assert encode_rule(ForwardingRule("u", "eth0", IPv4Address("239.1.1.1"), 5000, ()))["rate_limit"] is None
    with pytest.raises(ProtocolError, match="malformed rule"):
        decode_rule({**doc, "rate_limit": {"pps": -1}})


def test_worker_sync_carries_the_limit() -> None:
    rules = (
        WorkerRule("a", 2, IPv4Address("239.1.1.1"), 5000, (), RateLimit(8000, RateUnit.BPS, 1500)),
        WorkerRule("b", 2, IPv4Address("239.1.1.2"), 5000, ()),
    )
    assert decode_command(encode_command(Sync(3, rules))) == Sync(3, rules)


# ------------------------------------------------------------------------------------------ config and CLI

CONFIG = """
[[rule]]
id = "r"
input_interface = "eth0"
input_group = "239.1.1.1"
input_port = 5000
outputs = ["239.2.2.2:6000:eth1"]
"""


def test_config_rule_limit() -> None:
    cfg = parse_config(CONFIG + "rate_limit = { pps = 2000, burst = 50 }\n", "/etc/mcr.toml")
    assert cfg.rules[0].rate_limit == RateLimit(2000, RateUnit.PPS, 50)
    assert parse_config(CONFIG, "/etc/mcr.toml").rules[0].rate_limit is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('rate_limit = "10kpps"', "/etc/mcr.toml: rule[0] 'r': rate_limit must be an object"),
        ("rate_limit = { bps = 10 }", "/etc/mcr.toml: rule[0] 'r': rate_limit.bps 10 is out of range"),
    ],
)
def test_config_limit_errors(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(CONFIG + line + "\n", "/etc/mcr.toml")
    assert message in str(e.value)


ADD = ["add", "--input-interface", "eth0", "--input-group", "239.1.1.1", "--input-port", "5000"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--rate-limit", "10kpps"], {"pps": 10_000, "burst": 1000}),
        (["--rate-limit", "10kpps", "--burst", "7"], {"pps": 10_000, "burst": 7}),
        (["--rate-limit", "80mbps"], {"bps": 80_000_000, "burst_bytes": 1_000_000}),
    ],
)
def test_cli_rate_limit(flags: list[str], expected: dict[str, int]) -> None:
    wire = encode_request(parse_invocation([*ADD, *flags], {}).request)
    assert json.loads(wire)["AddRule"]["rate_limit"] == expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rate-limit", "lots"], "argument --rate-limit: Invalid rate limit 'lots'"),
        (["--rate-limit", "0pps"], "argument --rate-limit: rate_limit.pps 0 is out of range"),
        (["--rate-limit", "10mbps", "--burst", "10"], "rate_limit.burst_bytes 10 is out of range"),
        (["--burst", "10"], "argument --burst: requires --rate-limit RATE"),
        (["--rate-limit", "10pps", "--burst", "-1"], "argument --burst: invalid burst '-1'"),
    ],
)
def test_cli_rate_limit_errors(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ADD, *flags]) == ExitCode.USAGE
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ where it is kept


def test_worker_keeps_a_bucket_across_unrelated_syncs_and_resets_a_changed_one(data_plane: DataPlane) -> None:
    plane = data_plane
    group = IPv4Address("239.1.1.1")
    limited = WorkerRule("a", 2, group, 5000, (), RateLimit(10, RateUnit.PPS, 1))
    other = WorkerRule("b", 2, group, 5001, ())
    plane.sync(Sync(1, (limited,)))
    bucket = plane.slots["a"].bucket
    assert bucket is not None and bucket.admit(100, NS_PER_S) and not bucket.admit(100, NS_PER_S)
    plane.sync(Sync(2, (limited, other)))  # another rule added: this bucket stays empty
    assert plane.slots["a"].bucket is bucket and plane.slots["b"].bucket is None
    plane.sync(Sync(3, (WorkerRule("a", 2, group, 5000, (), RateLimit(10, RateUnit.PPS, 5)), other)))
    changed = plane.slots["a"].bucket
    assert changed is not None and changed is not bucket and changed.admit(100, NS_PER_S)
    plane.sync(Sync(4, (WorkerRule("a", 2, group, 5000, ()), other)))
    assert plane.slots["a"].bucket is None


def test_state_file_and_config_reload_carry_the_limit() -> None:
    from mcr.model.rules import RuleSource
    from mcr.supervisor.core import RuleTable
    from mcr.supervisor.state import decode_state, encode_state

    def rule(bps: int) -> ForwardingRule:
        limit = RateLimit(bps, RateUnit.BPS, 1500)
        return ForwardingRule("r", "eth0", IPv4Address("239.1.1.1"), 5000, (), None, RuleSource.CONFIG, limit)

    assert decode_state(encode_state([rule(8000)])) == [rule(8000)]
    table = RuleTable(Limits())
    table.replace_config_rules([rule(8000)])
    assert table.replace_config_rules([rule(8000)]) == ([], [], [])
    assert table.replace_config_rules([rule(9000)]) == ([], ["r"], [])  # a changed limit is a changed rule
    assert table.rules["r"].rate_limit == RateLimit(9000, RateUnit.BPS, 1500)
