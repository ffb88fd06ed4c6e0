"""IPv6 rules and source-specific rules, in the pure parts: model, validation, protocol, config, parser,
capture filter, worker table, memberships and resolution."""

import hashlib
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path

import pytest

from mcr.model.config import parse_config
from mcr.model.errors import ConfigError, ProtocolError, ValidationError
from mcr.model.links import Link
from mcr.model.rules import (
    Engine,
    ForwardingRule,
    Limits,
    OutputDestination,
    check_rule_fits,
    check_rule_shape,
    generated_rule_id,
    parse_output_spec,
    parse_source,
)
from mcr.packet.build import build_udp6_frame, build_udp_frame, ipv6_extension
from mcr.packet.cbpf import ACCEPT, MAX_IPV6_GROUPS, PacketType, build_capture_filter, check_program, run_program
from mcr.packet.parse import DropReason, parse_frame, src_address
from mcr.protocol.control import AddRule, decode_request, decode_rule, encode_request, encode_rule
from mcr.protocol.worker import Sync, WorkerOutput, WorkerRule, decode_command, encode_command
from mcr.supervisor.core import RuleTable, resolve, wanted_memberships
from mcr.supervisor.memberships import MCAST_JOIN_SOURCE_GROUP, membership_option
from mcr.supervisor.state import decode_state, encode_state, load_state, save_state
from mcr.worker.table import RuleSlot, filter_groups, filter_groups6, flow_key, index_rules, index_sources, rule_key

G6 = IPv6Address("ff3e::1:5")
SRC6 = IPv6Address("fd00:200:1::2")
OUT6 = OutputDestination(IPv6Address("ff3e::10"), 6000, "eth1", 7)
OUT4 = OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1", 3)


def validate_rule(rule: ForwardingRule, existing: dict[str, ForwardingRule], limits: Limits) -> None:
    check_rule_shape(rule)
    check_rule_fits(rule, existing, limits)


def rule(group: str = "ff3e::1:5", source: str | None = None, rule_id: str = "r1", port: int = 5000) -> ForwardingRule:
    return ForwardingRule(
        rule_id, "eth0", ip_address(group), port, (OUT6, OUT4), None if source is None else parse_source(source)
    )


# -------------------------------------------------------------------------------------- model, validation


def test_output_spec_brackets_ipv6_and_keeps_ipv4() -> None:
    assert parse_output_spec("[ff3e::1]:6000:eth1", 9) == OutputDestination(IPv6Address("ff3e::1"), 6000, "eth1", 9)
    assert parse_output_spec("239.1.1.1:6000:eth1").group == IPv4Address("239.1.1.1")
    assert OUT6.spec == "[ff3e::10]:6000:eth1"
    with pytest.raises(ValidationError, match=r"write an IPv6 group in brackets"):
        parse_output_spec("ff3e::1:6000:eth1")
    with pytest.raises(ValidationError, match=r"Invalid group IP: '239.1.1.1' in"):
        parse_output_spec("[239.1.1.1]:6000:eth1")
    with pytest.raises(ValidationError, match=r"Expected \[ipv6-group\]:port:interface"):
        parse_output_spec("[ff3e::1]6000:eth1")


@pytest.mark.parametrize(
    ("group", "source", "message"),
    [
        ("fd00::1", None, "is not an IPv6 multicast address"),
        ("ff01::1", None, "has scope 1, which never leaves a host"),
        ("ff02::1234", None, "is link-local"),
        ("ff3e::1", "10.0.0.1", "input_source 10.0.0.1 is IPv4 but input_group ff3e::1 is IPv6"),
        ("239.1.1.1", "fd00::1", "is IPv6 but input_group 239.1.1.1 is IPv4"),
        ("239.1.1.1", "239.0.0.1", "must be a unicast address or prefix"),
        ("239.1.1.1", "0.0.0.0/0", "matches every source"),
        ("ff3e::1", "ff00::/8", "must be a unicast address or prefix"),
    ],
)
def test_invalid_inputs_are_named(group: str, source: str | None, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate_rule(rule(group, source), {}, Limits())


def test_invalid_ipv6_outputs() -> None:
    for group, message in (("ff01::1", "scope 1"), ("::", "not a valid destination"), ("fe80::1", "link-local")):
        bad = ForwardingRule("r", "eth0", G6, 5000, (OutputDestination(IPv6Address(group), 1, "eth1"),))
        with pytest.raises(ValidationError, match=rf"output\[0\].group {group} .*{message}"):
            validate_rule(bad, {}, Limits())


def test_sources_on_one_group_must_be_disjoint() -> None:
    existing = {"a": rule(source="fd00:200:1::2", rule_id="a")}
    validate_rule(rule(source="fd00:200:1::3", rule_id="b"), existing, Limits())  # disjoint: fine
    validate_rule(rule(source="fd00:200:2::/64", rule_id="b"), existing, Limits())
    validate_rule(rule(rule_id="b", port=5001), existing, Limits())  # another port: fine
    with pytest.raises(ValidationError, match="is already relayed by rule 'a'"):
        validate_rule(rule(source="fd00:200:1::2", rule_id="b"), existing, Limits())
    with pytest.raises(ValidationError, match=r"overlaps rule 'a' \(eth0 \[ff3e::1:5\]:5000 from fd00:200:1::2\)"):
        validate_rule(rule(source="fd00:200:1::/64", rule_id="b"), existing, Limits())
    with pytest.raises(ValidationError, match="overlaps rule 'a'"):
        validate_rule(rule(rule_id="b"), existing, Limits())  # no source: every source


def test_source_prefix_parsing_and_ids() -> None:
    assert parse_source("10.0.0.5") == IPv4Network("10.0.0.5/32")
    assert parse_source("fd00::/16") == IPv6Network("fd00::/16")
    with pytest.raises(ValueError, match=r"not a valid IPv4 prefix: 10\.0\.0\.5/24 has host bits set"):
        parse_source("10.0.0.5/24")
    # a one-host source keeps the id it had when sources were plain addresses
    old = hashlib.blake2b(b"eth0|239.1.1.1|5000|10.0.0.5|udp", digest_size=8).hexdigest()
    assert generated_rule_id("eth0", IPv4Address("239.1.1.1"), 5000, IPv4Network("10.0.0.5/32")) == old


# ------------------------------------------------------------------------------------ protocol and config


def test_control_round_trip_with_ipv6_and_prefix() -> None:
    req = AddRule("r6", "eth0", G6, 5000, (OUT6, OUT4), IPv6Network("fd00:200::/32"))
    assert decode_request(encode_request(req)) == req
    r = rule(group="239.1.1.1", source="10.0.0.0/24")
    doc = encode_rule(r)
    # today's original reads input_source as one IPv4 host: a prefix goes in a field of our own
    assert doc["input_source"] is None and doc["input_source_prefix"] == "10.0.0.0/24"
    assert decode_rule(doc) == r
    host = rule(group="239.1.1.1", source="10.0.0.7")
    assert encode_rule(host)["input_source"] == "10.0.0.7" and "input_source_prefix" not in encode_rule(host)
    assert decode_rule(encode_rule(host)) == host
    with pytest.raises(ProtocolError, match="'ff3e::zz' is not a valid IPv6 address"):
        decode_request(b'{"AddRule":{"input_interface":"e","input_group":"ff3e::zz","input_port":1,"outputs":[]}}')


def test_worker_sync_carries_sources_and_ipv6() -> None:
    out = WorkerOutput(0, IPv6Address("ff3e::10"), 6000, 3, IPv6Address("fd00::1"), 7)
    sync = Sync(4, (WorkerRule("r", 2, G6, 5000, (out,), source=IPv6Network("fd00:200:1::/48")),))
    assert decode_command(encode_command(sync)) == sync


def test_config_file_rule_with_ipv6_and_source() -> None:
    text = """
[[rule]]
id = "v6"
input_interface = "eth0"
input_group = "ff3e::1:5"
input_port = 5000
input_source = "fd00:200:1::2"
outputs = ["[ff3e::10]:6000:eth1", { group = "239.2.2.2", port = 6000, interface = "eth2", ttl = 4 }]
"""
    (r,) = parse_config(text, "c.toml").rules
    assert (r.input_group, r.input_source) == (G6, IPv6Network("fd00:200:1::2/128"))
    assert [o.spec for o in r.outputs] == ["[ff3e::10]:6000:eth1", "239.2.2.2:6000:eth2"]
    with pytest.raises(ConfigError, match="'fd00::1/8' is not a valid IPv6 prefix"):
        parse_config(text.replace('"fd00:200:1::2"', '"fd00::1/8"'), "c.toml")


# ------------------------------------------------------------------------------------------------ parser

PAYLOAD = b"payload-" * 10


def frame6(**kw: object) -> bytes:
    args: dict[str, object] = {"src_ip": SRC6, "dst_ip": G6, "dst_port": 5000, "payload": PAYLOAD}
    args.update(kw)
    return build_udp6_frame(**args)  # type: ignore[arg-type]


KEY6 = flow_key(int(G6), 5000, 6)
GROUP_KEY6 = flow_key(int(G6), 0, 6)


def parse(raw: bytes) -> tuple[int, int, int, int]:
    return parse_frame(raw, 0, len(raw))


def test_ipv6_payload_located_through_walked_extension_headers() -> None:
    raw = frame6()
    reason, key, offset, length = parse(raw)
    assert (reason, key, raw[offset : offset + length]) == (0, KEY6, PAYLOAD)
    exts = (
        (0, ipv6_extension(60, b"\x01\x04" + bytes(4))),
        (60, ipv6_extension(43, bytes(14))),
        (43, ipv6_extension(17)),
    )
    raw = frame6(extensions=exts)
    reason, key, offset, length = parse(raw)
    assert (reason, key, raw[offset : offset + length]) == (0, KEY6, PAYLOAD)
    assert offset == 14 + 40 + 8 + 16 + 8 + 8
    assert src_address(raw, 0) == int(SRC6)
    assert src_address(build_udp_frame(src_ip="10.1.2.3", dst_ip="239.1.1.1", dst_port=1, payload=b""), 0) == 0x0A010203


@pytest.mark.parametrize(
    ("raw", "reason", "key"),
    [
        pytest.param(frame6(extensions=((44, ipv6_extension(17)),)), DropReason.FRAGMENT, GROUP_KEY6, id="fragment"),
        pytest.param(
            frame6(extensions=((0, ipv6_extension(44)), (44, ipv6_extension(17)))),
            DropReason.FRAGMENT,
            GROUP_KEY6,
            id="fragment-after-hop-by-hop",
        ),
        pytest.param(frame6(extensions=((51, ipv6_extension(17)),)), DropReason.EXT_HEADER, GROUP_KEY6, id="ah"),
        pytest.param(frame6(next_header=50), DropReason.EXT_HEADER, GROUP_KEY6, id="esp"),
        pytest.param(
            frame6(extensions=tuple((60, ipv6_extension(60)) for _ in range(9))),
            DropReason.EXT_HEADER,
            GROUP_KEY6,
            id="too-many-headers",
        ),
        pytest.param(frame6(next_header=6), DropReason.NOT_UDP, GROUP_KEY6, id="tcp"),
        pytest.param(frame6(next_header=59), DropReason.NOT_UDP, GROUP_KEY6, id="no-next-header"),
        pytest.param(frame6(version=4), DropReason.BAD_IP_HEADER, 0, id="version-4"),
        pytest.param(frame6()[:53], DropReason.TRUNCATED, 0, id="header-cut"),
        pytest.param(frame6()[:-1], DropReason.TRUNCATED, GROUP_KEY6, id="payload-cut"),
        pytest.param(frame6(payload_length=4), DropReason.TRUNCATED, GROUP_KEY6, id="no-room-for-udp"),
        pytest.param(
            frame6(extensions=((0, ipv6_extension(17)),), payload_length=6),
            DropReason.TRUNCATED,
            GROUP_KEY6,
            id="extension-cut",
        ),
        pytest.param(frame6(udp_length=7), DropReason.BAD_UDP_LENGTH, KEY6, id="udp-length-7"),
        pytest.param(frame6(udp_length=9 + len(PAYLOAD)), DropReason.BAD_UDP_LENGTH, KEY6, id="udp-length-long"),
        pytest.param(frame6()[:60] + b"\0\0" + frame6()[62:], DropReason.ZERO_UDP_CHECKSUM, KEY6, id="zero-checksum"),
    ],
)
def test_ipv6_drop_reasons(raw: bytes, reason: DropReason, key: int) -> None:
    assert parse(raw) == (reason, key, 0, 0)


# ---------------------------------------------------------------------------------------- capture filter


def test_capture_filter_passes_ipv6_groups_on_any_port_and_keeps_ipv4_exact() -> None:
    program = build_capture_filter({int(IPv4Address("239.1.1.1")): [5000]}, {int(G6), int(IPv6Address("ff3e::9"))})
    check_program(program)

    def verdict(raw: bytes, pkttype: int = PacketType.MULTICAST) -> bool:
        return run_program(program, raw, pkttype) == ACCEPT

    assert verdict(frame6())
    assert verdict(frame6(dst_port=9))  # the worker checks the port
    assert verdict(frame6(extensions=((44, ipv6_extension(17)),)))  # so that the worker counts it
    assert verdict(frame6(dst_ip="ff3e::9"))
    assert not verdict(frame6(dst_ip="ff3e::1:6"))
    assert not verdict(frame6(dst_ip="ff3f::1:5"))
    assert not verdict(frame6(), PacketType.OUTGOING)
    v4 = build_udp_frame(src_ip="10.0.0.1", dst_ip="239.1.1.1", dst_port=5000, payload=b"x")
    assert verdict(v4)
    assert not verdict(build_udp_frame(src_ip="10.0.0.1", dst_ip="239.1.1.1", dst_port=5001, payload=b"x"))

    only6 = build_capture_filter({}, {int(G6)})
    assert run_program(only6, frame6(), PacketType.MULTICAST) == ACCEPT
    assert run_program(only6, v4, PacketType.MULTICAST) == 0

    many = build_capture_filter({}, {int(G6) + i for i in range(MAX_IPV6_GROUPS + 1)})
    check_program(many)
    assert run_program(many, frame6(dst_ip="ff05::77"), PacketType.MULTICAST) == ACCEPT  # ff00::/8
    assert run_program(many, frame6(dst_ip="fd00::77"), PacketType.MULTICAST) == 0


# ----------------------------------------------------------------------------------- worker table, sources


def test_rules_with_sources_split_by_prefix() -> None:
    rules = [
        WorkerRule("any4", 2, IPv4Address("239.1.1.1"), 5000, ()),
        WorkerRule("a", 2, G6, 5000, (), source=IPv6Network("fd00:200:1::2/128")),
        WorkerRule("b", 2, G6, 5000, (), source=IPv6Network("fd00:200:2::/64")),
        WorkerRule("c", 3, G6, 5001, ()),
    ]
    slots = [RuleSlot(r, []) for r in rules]
    plain, sources = index_rules(slots), index_sources(slots)
    assert set(plain) == {2, 3} and set(plain[2]) == {rule_key(rules[0])}
    split = sources[2][KEY6]
    assert split.pick(int(SRC6)).rule.rule_id == "a"  # type: ignore[union-attr]
    assert split.pick(int(IPv6Address("fd00:200:2::99"))).rule.rule_id == "b"  # type: ignore[union-attr]
    assert split.pick(int(IPv6Address("fd00:200:1::3"))) is None
    assert filter_groups(rules, 2) == {int(IPv4Address("239.1.1.1")): {5000}}
    assert filter_groups6(rules, 2) == {int(G6)}


# ---------------------------------------------------------------------------------- memberships, resolve


def test_memberships_are_source_specific_only_when_every_rule_names_a_host() -> None:
    g4 = IPv4Address("232.1.1.1")
    ssm = [rule(source="fd00:200:1::2", rule_id="a"), rule(source="fd00:200:1::3", rule_id="b")]
    assert wanted_memberships(ssm) == {(G6, IPv6Address("fd00:200:1::2")), (G6, IPv6Address("fd00:200:1::3"))}
    mixed = [*ssm, rule(rule_id="c", port=5001)]
    assert wanted_memberships(mixed) == {(G6, None)}
    prefix = [rule(group=str(g4), source="10.1.0.0/16")]
    assert wanted_memberships(prefix) == {(g4, None)}


def test_membership_socket_options() -> None:
    level, option, value = membership_option((7, G6, SRC6), join=True)
    assert (level, option, len(value)) == (socket.IPPROTO_IPV6, MCAST_JOIN_SOURCE_GROUP, 264)
    assert value[:4] == (7).to_bytes(4, "little") and value[8:10] == socket.AF_INET6.to_bytes(2, "little")
    assert value[8 + 8 : 8 + 24] == G6.packed and value[136 + 8 : 136 + 24] == SRC6.packed
    level, option, value = membership_option((7, G6, None), join=False)
    assert (level, option, value) == (
        socket.IPPROTO_IPV6,
        socket.IPV6_LEAVE_GROUP,
        G6.packed + (7).to_bytes(4, "little"),
    )
    level, option, value = membership_option((7, IPv4Address("232.1.1.1"), IPv4Address("10.0.0.1")), join=True)
    assert (level, option) == (socket.IPPROTO_IP, MCAST_JOIN_SOURCE_GROUP)
    assert value[8 + 4 : 8 + 8] == bytes([232, 1, 1, 1]) and value[136 + 4 : 136 + 8] == bytes([10, 0, 0, 1])


LINKS = {
    "eth0": Link("eth0", 2, True, 1500, (IPv4Address("10.0.0.1"),), b"\x02" * 6, ipv6=(IPv6Address("fd00::1"),)),
    "eth1": Link(
        "eth1",
        3,
        True,
        1500,
        (IPv4Address("10.0.1.1"),),
        b"\x02" * 6,
        ipv6=(IPv6Address("fd00:1::1"), IPv6Address("fe80::1")),
    ),
    "eth2": Link("eth2", 4, True, 1500, (IPv4Address("10.0.2.1"),), b"\x02" * 6),
}


def test_resolve_keeps_rules_that_change_the_family_in_userspace() -> None:
    table = RuleTable(Limits())
    table.add(AddRule("v6", "eth0", G6, 5000, (OUT6, OUT4), IPv6Network("fd00:200:1::2/128")))
    table.add(AddRule("no6", "eth0", IPv4Address("239.1.1.1"), 5000, (OutputDestination(G6, 1, "eth2"),)))
    res = resolve(table.rules.values(), LINKS, kernel_max_outputs=16)
    (w6,) = res.worker_rules  # the other has no usable output: the kernel engine holds it
    assert w6.source == IPv6Network("fd00:200:1::2/128")
    assert [(o.group, o.source, o.ttl) for o in w6.outputs] == [
        (OUT6.group, IPv6Address("fd00:1::1"), 7),
        (OUT4.group, IPv4Address("10.0.1.1"), 3),
    ]
    views = {v.rule.rule_id: v for v in res.views}
    assert views["v6"].state_reason == "userspace: rules that change the address family are served in userspace"
    assert views["no6"].state_reason == "output[0] eth2 has no IPv6 address"
    assert dict(res.memberships) == {2: frozenset({(G6, SRC6), (IPv4Address("239.1.1.1"), None)})}
    table.add(AddRule("v4to6", "eth0", IPv4Address("239.1.1.2"), 5000, (OUT6,)))
    res = resolve(table.rules.values(), LINKS, kernel_max_outputs=16)
    reason = {v.rule.rule_id: v.state_reason for v in res.views}["v4to6"]
    assert reason == "userspace: rules that change the address family are served in userspace"


def test_kernel_serves_ipv6_rules_with_ipv6_outputs() -> None:
    table = RuleTable(Limits())
    table.add(AddRule("v6", "eth0", G6, 5000, (OUT6,), IPv6Network("fd00:200:1::/64")))
    res = resolve(table.rules.values(), LINKS, kernel_max_outputs=16)
    assert res.worker_rules == () and res.captures == {}
    (kr,) = res.kernel_rules
    assert (kr.rule_id, kr.ifindex, kr.group, kr.port, kr.source) == ("v6", 2, G6, 5000, IPv6Network("fd00:200:1::/64"))
    (out,) = kr.outputs
    assert (out.group, out.source, out.ifindex, out.ttl, out.src_mac) == (
        OUT6.group,
        IPv6Address("fd00:1::1"),
        3,
        7,
        b"\x02" * 6,
    )
    (view,) = res.views
    assert (view.engine, view.state_reason) == (Engine.KERNEL, "")
    assert dict(res.memberships) == {2: frozenset({(G6, None)})}  # MLD membership for a kernel rule too
    unicast = OutputDestination(IPv6Address("fd00:9::1"), 6000, "eth1")
    table.add(AddRule("uni", "eth0", G6, 5001, (unicast,)))
    res = resolve(table.rules.values(), LINKS, kernel_max_outputs=16)
    reason = {v.rule.rule_id: v.state_reason for v in res.views}["uni"]
    assert reason == "userspace: output[0] is unicast (needs neighbour resolution)"


def test_kernel_serves_an_ipv4_source_rule_alone_on_its_flow() -> None:
    table = RuleTable(Limits())
    g4 = IPv4Address("232.1.1.1")
    table.add(AddRule("a", "eth0", g4, 5000, (OUT4,), IPv4Network("10.0.0.0/24")))
    res = resolve(table.rules.values(), LINKS, kernel_max_outputs=16)
    (kr,) = res.kernel_rules
    assert (kr.rule_id, kr.source) == ("a", IPv4Network("10.0.0.0/24"))
    table.add(AddRule("b", "eth0", g4, 5000, (OUT4,), IPv4Network("10.0.1.0/24")))
    res = resolve(table.rules.values(), LINKS, kernel_max_outputs=16)
    assert res.kernel_rules == ()
    reasons = {v.rule.rule_id: v.state_reason for v in res.views}
    assert reasons == {r: "userspace: several sources on one group and port are served in userspace" for r in "ab"}


def test_state_file_keeps_ipv6_rules_and_sources(tmp_path: Path) -> None:
    rules = [rule(source="fd00:200:1::/48"), rule(group="232.1.1.1", source="10.0.0.7", rule_id="r2")]
    assert decode_state(encode_state(rules)) == rules
    path = tmp_path / "state.json"
    save_state(path, rules)
    assert load_state(path) == rules
