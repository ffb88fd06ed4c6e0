import struct
from ipaddress import IPv4Address

import pytest

from mcr.packet.build import build_udp_frame
from mcr.packet.parse import parse_frame
from mcr.protocol.worker import WorkerOutput, WorkerRule
from mcr.worker.table import RuleSlot, filter_groups, flow_key, index_rules, wire_key, wire_key_from_flow_key


@pytest.mark.parametrize(("group", "port"), [("239.1.1.1", 5001), ("224.0.0.251", 5353), ("239.255.255.255", 65535)])
def test_wire_key_is_the_wire_bytes_read_little_endian(group: str, port: int) -> None:
    f = build_udp_frame(src_ip="10.0.0.1", dst_ip=group, dst_port=port, payload=b"x")
    dst, dport = struct.unpack_from("<I2xH", f, 30)
    assert wire_key(int(IPv4Address(group)), port) == (dst << 16) | dport
    _reason, key, _off, _len = parse_frame(f, 0, len(f))
    assert key == flow_key(int(IPv4Address(group)), port)
    assert wire_key_from_flow_key(key) == (dst << 16) | dport


def rule(rule_id: str, ifindex: int, group: str, port: int) -> WorkerRule:
    out = WorkerOutput(0, IPv4Address("239.9.9.9"), 9, 3, IPv4Address("10.0.0.1"), 1)
    return WorkerRule(rule_id, ifindex, IPv4Address(group), port, (out,))


def test_index_and_filter_groups_per_interface() -> None:
    rules = [rule("a", 2, "239.1.1.1", 1), rule("b", 2, "239.1.1.1", 2), rule("c", 5, "239.1.1.2", 1)]
    slots = [RuleSlot(r, []) for r in rules]
    table = index_rules(slots)
    assert set(table) == {2, 5}
    assert table[2][wire_key(int(IPv4Address("239.1.1.1")), 2)].rule.rule_id == "b"
    assert filter_groups(rules, 2) == {int(IPv4Address("239.1.1.1")): {1, 2}}
    assert filter_groups(rules, 7) == {}
