"""A worker's rule set changed one rule at a time (`Update`): only the rules named are touched, output
sockets are shared between outputs that are the same socket, and the capture filter is rebuilt only when
what it passes changed (beyond EXACT_FILTER_GROUPS groups it passes any group: the same at any size)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from mcr.model.errors import ProtocolError
from mcr.packet.cbpf import coarse_filter
from mcr.protocol.worker import Sync, Update, WorkerOutput, WorkerRule, decode_command, encode_command
from mcr.worker.egress import lane_key
from mcr.worker.loop import DataPlane
from mcr.worker.table import EXACT_FILTER_GROUPS, FilterSet, RuleIndex, RuleSlot, rule_key

LOCAL = IPv4Address("127.0.0.1")


def out(index: int, group: str = "239.9.9.9", port: int = 6000) -> WorkerOutput:
    return WorkerOutput(index, IPv4Address(group), port, 1, LOCAL, 1)


def rule(rule_id: str, group: str, *outputs: WorkerOutput, port: int = 5000) -> WorkerRule:
    return WorkerRule(rule_id, 1, IPv4Address(group), port, tuple(outputs))


def test_update_round_trips_and_rejects_a_bad_removal() -> None:
    cmd = Update(9, (rule("a", "239.1.1.1", out(0)),), ("b", "c"))
    assert decode_command(encode_command(cmd)) == cmd
    assert decode_command(encode_command(Update(1))) == Update(1)
    with pytest.raises(ProtocolError, match="malformed Update command"):
        decode_command(b'{"Update": {"generation": 2, "rules": [], "removed": [7]}}')


def test_update_touches_only_the_rules_it_names(data_plane: DataPlane) -> None:
    a, b = rule("a", "239.1.1.1", out(0)), rule("b", "239.1.1.2", out(0, port=6001))
    data_plane.sync(Sync(1, (a, b)))
    slot_a = data_plane.slots["a"]
    slot_a.packets = 7
    data_plane.update(Update(2, (rule("c", "239.1.1.3", out(0, port=6002)),), ("b",)))
    assert set(data_plane.slots) == {"a", "c"}
    assert data_plane.slots["a"] is slot_a and slot_a.packets == 7
    plain, _ = data_plane.index.tables(1)
    assert {s.rule.rule_id for s in plain.values()} == {"a", "c"}
    data_plane.update(Update(3, removed=("nope",)))  # an id it does not have: nothing happens
    assert set(data_plane.slots) == {"a", "c"}


def test_outputs_that_leave_the_same_way_share_a_lane_until_the_last_goes(data_plane: DataPlane) -> None:
    same, other = out(0, "239.9.9.9", 6000), out(0, "239.9.9.8", 6001)
    data_plane.update(Update(1, (rule("a", "239.1.1.1", same), rule("b", "239.1.1.2", other))))
    assert len(data_plane.lanes) == 1
    fa, fb = data_plane.slots["a"].outputs[0], data_plane.slots["b"].outputs[0]
    assert fa.fd == fb.fd >= 0 and fa.lane is fb.lane and fa is not fb, "one socket, counters per output"
    assert fa.name != fb.name and fa.lane.namelen == 16, "a destination each"  # type: ignore[union-attr]
    data_plane.update(Update(2, removed=("a",)))
    assert len(data_plane.lanes) == 1 and data_plane.slots["b"].outputs[0].fd == fb.fd
    assert fa.lane is None and fa.fd == -1
    data_plane.update(Update(3, removed=("b",)))
    assert data_plane.lanes == {} and data_plane.destinations.in_use == 0


def test_a_lane_per_way_out(data_plane: DataPlane) -> None:
    """Interface, source address, TTL, multicast or unicast, IP version: any difference is another socket."""
    outs = [
        out(0),
        replace(out(1), ttl=9),
        replace(out(2), group=IPv4Address("127.0.0.1")),
        replace(out(3), group=IPv6Address("ff05::9"), source=IPv6Address("::1")),
    ]
    data_plane.update(Update(1, (rule("a", "239.1.1.1", *outs),)))
    assert len(data_plane.lanes) == 4
    assert [o.lane.namelen for o in data_plane.slots["a"].outputs] == [16, 16, 16, 28]  # type: ignore[union-attr]


def test_a_changed_rule_keeps_the_outputs_that_stay(data_plane: DataPlane) -> None:
    data_plane.update(Update(1, (rule("a", "239.1.1.1", out(0), out(1, port=6001)),)))
    kept = data_plane.slots["a"].outputs[0]
    kept.packets = 5
    data_plane.update(Update(2, (rule("a", "239.1.1.1", out(0), out(1, port=6009)),)))
    outputs = data_plane.slots["a"].outputs
    assert outputs[0] is kept and outputs[0].packets == 5 and outputs[1].spec.port == 6009
    assert len(data_plane.lanes) == 1 and data_plane.lanes[lane_key(kept.spec)].users == 2
    data_plane.update(Update(3, (replace(data_plane.slots["a"].rule, epoch=3),)))  # re-added: from zero
    assert data_plane.slots["a"].outputs[0].packets == 0 and data_plane.lanes[lane_key(kept.spec)].users == 2


def test_the_filter_set_marks_an_interface_only_when_what_passes_changed() -> None:
    fs = FilterSet()
    a, b = rule("a", "239.1.1.1", out(0)), rule("b", "239.1.1.1", out(0))
    fs.add(a)
    assert fs.take_dirty() == {1}
    fs.add(b)  # the same (group, port) again
    assert fs.take_dirty() == set()
    fs.remove(a)
    assert fs.take_dirty() == set()
    fs.remove(b)
    assert fs.take_dirty() == {1}
    six = WorkerRule("s", 1, IPv6Address("ff3e::1"), 5000, ())
    fs.add(six)
    assert fs.take_dirty() == {1}


def test_beyond_the_exact_limit_the_filter_is_the_coarse_one() -> None:
    fs = FilterSet()
    for i in range(EXACT_FILTER_GROUPS + 1):
        fs.add(rule(f"r{i}", str(IPv4Address("239.1.0.0") + i)))
    six = WorkerRule("s", 1, IPv6Address("ff3e::1"), 5000, ())
    fs.add(six)
    assert fs.program(1) == coarse_filter([int(six.group)])
    assert len(fs.program(2)) == 1, "no rule on that interface: a program that drops everything"


def test_the_coarse_filter_passes_the_unicast_inputs_that_have_a_rule() -> None:
    fs = FilterSet()
    for i in range(EXACT_FILTER_GROUPS + 1):
        fs.add(rule(f"r{i}", str(IPv4Address("239.1.0.0") + i)))
    host_a, host_b = rule("u1", "10.0.0.1"), rule("u2", "10.0.0.2")
    second_a = rule("u3", "10.0.0.1", out(0, port=6001))
    for r in (host_a, host_b, second_a):
        fs.add(r)
    assert fs.program(1) == coarse_filter((), [int(IPv4Address("10.0.0.1")), int(IPv4Address("10.0.0.2"))])
    fs.remove(host_a)  # 10.0.0.1 has another rule still
    fs.remove(host_b)
    assert fs.program(1) == coarse_filter((), [int(IPv4Address("10.0.0.1"))])
    fs.remove(second_a)
    assert fs.program(1) == coarse_filter()


def test_the_rule_index_changes_in_place() -> None:
    index = RuleIndex()
    plain, sourced = index.tables(1)
    a = RuleSlot(rule("a", "239.1.1.1"), [])
    index.add(a)
    assert plain == {rule_key(a.rule): a}
    s = RuleSlot(replace(rule("s", "239.1.1.1"), source=IPv4Network("10.0.0.0/24")), [])
    index.add(s)
    assert sourced[rule_key(s.rule)].pick(int(IPv4Address("10.0.0.9"))) is s
    index.discard(a)
    index.discard(s)
    assert plain == {} and sourced == {}


def test_reports_carry_every_rule_now_and_then_and_otherwise_what_changed(
    data_plane: DataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcr.worker import loop
    from mcr.worker.loop import FULL_REPORT_EVERY

    monkeypatch.setattr(loop, "FULL_REPORT_RULES", 1)  # as if the table were large

    data_plane.sync(Sync(1, (rule("a", "239.1.1.1", out(0)), rule("b", "239.1.1.2", out(0, port=6001)))))
    first = data_plane.report()
    assert not first.delta and [rid for rid, _ in first.rules] == ["a", "b"]
    assert data_plane.report().rules == (), "nothing counted, nothing replaced: nothing to say"
    data_plane.slots["a"].packets += 3
    data_plane.update(Update(2, (rule("c", "239.1.1.3", out(0, port=6002)),), ("b",)))
    delta = data_plane.report()
    assert delta.delta and [rid for rid, _ in delta.rules] == ["a", "c"] and delta.gone == ("b",)
    for _ in range(FULL_REPORT_EVERY - 3):
        assert data_plane.report().rules == ()
    full = data_plane.report()
    assert not full.delta and [rid for rid, _ in full.rules] == ["a", "c"] and full.gone == ()


def test_a_small_table_is_reported_whole_every_time(data_plane: DataPlane) -> None:
    data_plane.sync(Sync(1, (rule("a", "239.1.1.1", out(0)), rule("b", "239.1.1.2", out(0, port=6001)))))
    data_plane.report()
    again = data_plane.report()
    assert not again.delta and [rid for rid, _ in again.rules] == ["a", "b"]


def test_a_report_carries_each_rules_counts_packed_unless_it_has_drops(data_plane: DataPlane) -> None:
    """What a worker reports of a rule reads back as its slot's counters: packed as they travel when the rule
    has no drops (idle rules of the same outputs share one object), the counters themselves when it has."""
    from mcr.packet.parse import DROP_KEYS, DropReason
    from mcr.protocol.worker import RuleCounters, counters_of, decode_stats, encode_stats

    data_plane.sync(Sync(1, tuple(rule(f"r{i}", f"239.1.1.{i + 1}", out(0), out(1, port=6001)) for i in range(4))))
    counting, dropping = data_plane.slots["r0"], data_plane.slots["r1"]
    counting.packets, counting.bytes = 3, 4200
    counting.outputs[0].packets, counting.outputs[0].bytes = 3, 4200
    counting.outputs[1].packets, counting.outputs[1].bytes, counting.outputs[1].errors = 2, 2800, 1
    dropping.count_drop(DropReason.FRAGMENT)
    by_id = dict(data_plane.report().rules)
    assert counters_of(by_id["r0"]) == RuleCounters(3, 4200, ((0, 3, 4200, 0), (1, 2, 2800, 1)))
    assert isinstance(by_id["r0"], bytes)
    assert by_id["r1"] == RuleCounters(0, 0, ((0, 0, 0, 0), (1, 0, 0, 0)), ((DROP_KEYS[DropReason.FRAGMENT], 1),))
    assert by_id["r2"] is by_id["r3"], "idle rules share their counts"
    assert counters_of(by_id["r2"]) == RuleCounters(0, 0, ((0, 0, 0, 0), (1, 0, 0, 0)))
    sent = dict(decode_stats(encode_stats(data_plane.report())).rules)
    assert {rid: counters_of(c) for rid, c in sent.items()} == {rid: counters_of(c) for rid, c in by_id.items()}
