from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from mcr.model.errors import ValidationError
from mcr.model.links import Link
from mcr.model.rules import ForwardingRule, InputProtocol, Limits, OutputDestination
from mcr.model.status import RuleState
from mcr.protocol.control import AddRule
from mcr.protocol.worker import RawEgress, RuleCounters, StatsReport, WorkerOutput
from mcr.supervisor.core import Backoff, RuleTable, StatsBook, resolve, resolve_rule

G1 = IPv4Address("239.1.1.1")
OUT = OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1", 3)


def add(table: RuleTable, rule_id: str | None = "r1", port: int = 5000, outputs: tuple = (OUT,)) -> None:  # type: ignore[type-arg]
    table.add(AddRule(rule_id, "eth0", G1, port, outputs))


def test_add_generates_stable_ids_and_rejects_duplicates_without_change() -> None:
    table = RuleTable(Limits())
    add(table, None)
    (generated,) = table.rules
    assert len(generated) == 16
    with pytest.raises(ValidationError, match="already relayed"):
        add(table, "other")
    with pytest.raises(ValidationError, match="already exists"):
        add(table, generated, port=5001)
    assert list(table.rules) == [generated]


def test_remove_unknown_rule() -> None:
    table = RuleTable(Limits())
    with pytest.raises(ValidationError, match="Rule nope not found"):
        table.remove("nope")


LINKS = {
    "eth0": Link("eth0", 2, True, 1500, (IPv4Address("10.0.0.1"),)),
    "eth1": Link("eth1", 3, True, 1500, (IPv4Address("10.0.1.1"),)),
}


def test_rules_on_one_input_share_its_identity() -> None:
    """Each resolution names its input (ifindex, name): one tuple per link, not one per rule."""
    table = RuleTable(Limits())
    add(table, "a", port=5000)
    add(table, "b", port=5001)
    a, b = (resolve_rule(rule, LINKS) for rule in table.rules.values())
    assert a.input_link == (2, "eth0")
    assert a.input_link is b.input_link
    assert replace(LINKS["eth0"], up=False).ident == (2, "eth0")
    assert Link("eth0", 2, True, 1500) == replace(Link("eth0", 2, True, 1500)), "not compared"


def test_rules_whose_outputs_resolve_alike_share_them_and_make_their_worker_rules_when_asked() -> None:
    """A userspace resolution keeps each served output's (index, ifindex, address, TTL), one tuple for every
    rule that resolves alike; its WorkerRule, made from that and the rule, has the rule's own groups and ports."""
    table = RuleTable(Limits())
    add(table, "a", port=5000, outputs=(OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1"),))
    add(table, "b", port=5001, outputs=(OutputDestination(IPv4Address("239.3.3.3"), 7000, "eth1"),))
    a, b = (resolve_rule(rule, LINKS, epoch=4) for rule in table.rules.values())
    assert a.outs == ((0, 3, IPv4Address("10.0.1.1"), 1),) and a.outs is b.outs
    assert b.worker is not None and b.worker.epoch == 4 and b.worker.port == 5001
    assert b.worker.outputs == (WorkerOutput(0, IPv4Address("239.3.3.3"), 7000, 3, IPv4Address("10.0.1.1"), 1),)
    assert b.form == b.worker and a.worker != b.worker


@pytest.mark.parametrize(
    ("links", "state", "reason", "outputs"),
    [
        (LINKS, RuleState.ACTIVE, "", 1),
        ({"eth1": LINKS["eth1"]}, RuleState.WAITING, "input interface eth0 does not exist", None),
        (
            {**LINKS, "eth0": Link("eth0", 2, False, 1500)},
            RuleState.WAITING,
            "input interface eth0 is down",
            None,
        ),
        ({"eth0": LINKS["eth0"]}, RuleState.ACTIVE, "output[0] eth1 does not exist", 0),
        (
            {**LINKS, "eth1": Link("eth1", 3, True, 1500)},
            RuleState.ACTIVE,
            "output[0] eth1 has no IPv4 address",
            0,
        ),
        (
            {**LINKS, "eth1": Link("eth1", 3, True, 1500, (IPv4Address("10.0.1.1"),), carrier=False)},
            RuleState.ACTIVE,
            "output[0] eth1 has no carrier",
            1,  # still served: the relay follows the carrier back without a gap
        ),
    ],
)
def test_resolve(links: dict[str, Link], state: RuleState, reason: str, outputs: int | None) -> None:
    table = RuleTable(Limits())
    add(table)
    res = resolve(table.rules.values(), links)
    (view,) = res.views
    assert (view.state, view.state_reason) == (state, reason)
    if outputs is None:
        assert res.worker_rules == () and dict(res.captures) == {} and dict(res.memberships) == {}
    else:
        (wr,) = res.worker_rules
        assert len(wr.outputs) == outputs
        assert dict(res.captures) == {2: "eth0"}
        assert dict(res.memberships) == {2: frozenset({(G1, None)})}
        if outputs:
            assert wr.outputs[0] == WorkerOutput(0, OUT.group, 6000, 3, IPv4Address("10.0.1.1"), 3)


def test_source_ip_serves_an_unnumbered_output_and_ttls_resolve() -> None:
    """An output with source_ip sends from it (an interface without an address of its own); outputs that
    set no TTL take multicast_ttl (a group) or the kernel's default (None: unicast)."""
    table = RuleTable(Limits())
    unnumbered = OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1", source_ip=IPv4Address("10.9.9.9"))
    unicast = OutputDestination(IPv4Address("10.0.1.7"), 6001, "eth1")
    add(table, outputs=(unnumbered, unicast))
    links = {**LINKS, "eth1": Link("eth1", 3, True, 1500)}
    res = resolve(table.rules.values(), links, multicast_ttl=5)
    (view,) = res.views
    assert (view.state, view.state_reason) == (RuleState.ACTIVE, "output[1] eth1 has no IPv4 address")
    (wr,) = res.worker_rules
    assert wr.outputs == (WorkerOutput(0, unnumbered.group, 6000, 3, IPv4Address("10.9.9.9"), 5),)
    res = resolve(table.rules.values(), LINKS, multicast_ttl=5)
    assert [o.ttl for o in res.worker_rules[0].outputs] == [5, None]


MACS = {
    name: replace(link, mac=bytes([2, 0, 0, 0, 0, link.ifindex]))
    for name, link in {**LINKS, "eth2": Link("eth2", 4, True, 1500, (IPv4Address("10.0.2.1"),))}.items()
}


@pytest.mark.parametrize("kernel", [None, 64], ids=["userspace", "kernel"])
def test_esp_rules_resolve_with_port_0_and_raw_egress(kernel: int | None) -> None:
    """An ESP rule's outputs go out with port 0 whatever their own; in userspace each needs a raw socket
    (one per group, interface, source and TTL, shared by the rules that agree); the kernel engine gets
    the rule's protocol. A UDP rule on the same group stays UDP."""
    table = RuleTable(Limits())
    esp_out = (OutputDestination(IPv4Address("239.5.5.5"), 4500, "eth1"), OutputDestination(G1, 0, "eth2"))
    table.insert(ForwardingRule("esp", "eth0", G1, 0, esp_out, input_protocol=InputProtocol.ESP))
    table.insert(ForwardingRule("esp2", "eth2", G1, 0, esp_out[:1], input_protocol=InputProtocol.ESP))
    add(table, "udp")
    res = resolve(table.rules.values(), MACS, kernel, multicast_ttl=4)
    assert all(v.state is RuleState.ACTIVE for v in res.views)
    if kernel is None:
        esp = {r.rule_id: r for r in res.worker_rules}
        assert esp["esp"].protocol is InputProtocol.ESP and esp["udp"].protocol is InputProtocol.UDP
        assert [(o.port, o.protocol, o.ttl) for o in esp["esp"].outputs] == [(0, InputProtocol.ESP, 4)] * 2
        assert res.raw_egress == {
            RawEgress(IPv4Address("239.5.5.5"), 3, IPv4Address("10.0.1.1"), 4),
            RawEgress(G1, 4, IPv4Address("10.0.2.1"), 4),
        }
    else:
        kr = {r.rule_id: r for r in res.kernel_rules}
        assert (kr["esp"].protocol, kr["esp"].port, kr["udp"].protocol) == (InputProtocol.ESP, 0, InputProtocol.UDP)
        assert [(o.port, o.protocol) for o in kr["esp"].outputs] == [(0, InputProtocol.ESP)] * 2
        assert res.raw_egress == frozenset()


def test_unicast_inputs_join_nothing_and_say_when_the_address_is_not_the_interfaces() -> None:
    table = RuleTable(Limits())
    table.insert(ForwardingRule("mine", "eth0", IPv4Address("10.0.0.1"), 5000, (OUT,)))
    table.insert(ForwardingRule("other", "eth0", IPv4Address("10.0.0.99"), 5000, (OUT,)))
    add(table, "group")
    res = resolve(table.rules.values(), LINKS)
    reasons = {v.rule.rule_id: (v.state, v.state_reason) for v in res.views}
    assert reasons == {
        "mine": (RuleState.ACTIVE, ""),
        "other": (RuleState.ACTIVE, "input 10.0.0.99 is not an address of eth0"),
        "group": (RuleState.ACTIVE, ""),
    }
    assert res.memberships == {2: frozenset({(G1, None)})}
    assert len(res.worker_rules) == 3


@pytest.mark.parametrize(
    ("events", "delays"),
    [
        # (start time, exit time) pairs -> delay chosen at each exit
        ([(0, 1), (1.25, 2), (2.5, 3), (3.9, 4)], [0.25, 0.5, 1.0, 2.0]),
        ([(0, 0.1)] * 9, [0.25, 0.5, 1, 2, 4, 8, 16, 16, 16]),
        ([(0, 1), (2, 3), (10, 100)], [0.25, 0.5, 0.25]),  # a stable minute resets the delay
    ],
)
def test_backoff(events: list[tuple[float, float]], delays: list[float]) -> None:
    b = Backoff()
    got = []
    for start, end in events:
        b.on_start(start)
        got.append(b.on_exit(end))
    assert got == delays


def report(worker: int, packets: int, out_packets: int, errors: int = 0) -> StatsReport:
    counters = RuleCounters(packets, packets * 100, ((0, out_packets, out_packets * 100, errors),), (("fragment", 1),))
    return StatsReport(worker, 1000 + worker, (("r1", counters),), (("no_rule", 2),), 0, 0, 0)


def test_stats_sum_workers_and_keep_counters_of_exited_workers() -> None:
    table = RuleTable(Limits())
    add(table)
    book = StatsBook()
    book.track("r1", 0)
    book.on_report(report(0, 10, 10))
    book.on_report(report(1, 5, 4, errors=1))
    (flow,) = book.flow_stats(table.rules.values())
    assert (flow.packets_relayed, flow.bytes_relayed) == (15, 1500)
    assert flow.outputs[0].packets_sent == 14 and flow.outputs[0].send_errors == 1
    assert flow.drops == {"fragment": 2}
    book.on_worker_exit(1, table.rules)
    book.on_report(report(1, 3, 3))  # the restarted worker counts from zero
    (flow,) = book.flow_stats(table.rules.values())
    assert flow.packets_relayed == 18
    table.remove("r1")
    book.forget_rule("r1")
    book.on_worker_exit(0, table.rules)
    book.on_worker_exit(1, table.rules)
    add(table)
    book.track("r1", 0)
    book.on_report(report(0, 0, 0))
    (flow,) = book.flow_stats(table.rules.values())
    assert flow.packets_relayed == 0


def test_rates_from_deltas() -> None:
    table = RuleTable(Limits())
    add(table)
    book = StatsBook()
    book.on_report(report(0, 100, 100))
    book.tick(table.rules, 10.0)
    book.on_report(report(0, 300, 300))
    book.tick(table.rules, 12.0)
    (flow,) = book.flow_stats(table.rules.values())
    assert flow.packets_per_second == 100.0
    assert flow.bits_per_second == 100.0 * 100 * 8


def test_flow_counts_are_made_again_only_for_rules_whose_counts_or_rates_moved() -> None:
    """GetStats at 10,000 rules sums again only what changed: an unchanged rule's entry is the same object;
    a report, a rate that changes, a worker exit, a replaced rule or a rule removed and added again each
    give the new numbers."""
    table = RuleTable(Limits())
    add(table)
    book = StatsBook()
    book.track("r1", 0)
    book.on_report(report(0, 10, 10))
    (first,) = book.counted(table.rules.values())
    (again,) = book.counted(table.rules.values())
    assert again is first and first[0] is table.rules["r1"] and first[1].packets == 10
    book.tick(table.rules, 1.0)
    book.on_report(report(0, 30, 30))
    (counted,) = book.flow_stats(table.rules.values())
    assert counted.packets_relayed == 30 and counted.packets_per_second == 0.0
    book.tick(table.rules, 2.0)  # 20 packets in one second
    (rated,) = book.flow_stats(table.rules.values())
    assert rated.packets_relayed == 30 and rated.packets_per_second == 20.0
    book.tick(table.rules, 3.0)  # nothing since: the rate goes back to zero
    (quiet,) = book.counted(table.rules.values())
    assert quiet[1].packets_per_second == 0.0 and quiet[1].packets == 30
    book.tick(table.rules, 4.0)
    assert book.counted(table.rules.values())[0] is quiet
    book.on_worker_exit(0, table.rules)
    book.on_report(report(0, 5, 5))  # its next incarnation counts from zero; what the first counted stays
    assert book.flow_stats(table.rules.values())[0].packets_relayed == 35
    rule = table.rules["r1"]
    table.rules["r1"] = replace(rule, input_port=rule.input_port + 1)  # the same id, another rule
    assert book.flow_stats(table.rules.values())[0].input_port == rule.input_port + 1
    book.forget_rule("r1")
    book.track("r1", 1)
    assert book.flow_stats(table.rules.values())[0].packets_relayed == 0


def test_rules_that_relayed_nothing_share_their_held_counters_until_they_count() -> None:
    """A quiet table's book holds one packed counters object per generation and output count, not one a rule;
    a rule that starts counting gets its own, and the sums are each rule's."""
    idle = RuleCounters(0, 0, ((0, 0, 0, 0), (1, 0, 0, 0)))
    moving = RuleCounters(5, 500, ((0, 5, 500, 0), (1, 5, 500, 1)))
    book = StatsBook()
    for rule_id in ("a", "b", "c"):
        book.track(rule_id, 1)
    book.on_report(StatsReport(0, 7, (("a", idle), ("b", idle), ("c", idle)), (), 0, 0, 0, 3))
    held = book._by_rule[0]
    assert held["a"] is held["b"] is held["c"]
    book.on_report(StatsReport(0, 7, (("b", moving),), (), 0, 0, 0, 4, delta=True))
    assert held["a"] is held["c"] and held["b"] is not held["a"]
    assert (book.totals("a").packets, book.totals("b").packets, book.totals("b").outputs[1]) == (0, 5, [5, 500, 1])


def test_counters_that_reset_at_the_source_are_kept() -> None:
    table = RuleTable(Limits())
    add(table)
    book = StatsBook()
    book.track("r1", 0)
    book.on_report(report(0, 100, 100))
    book.on_report(replace(report(0, 0, 0), rules=()))  # the rule left the worker (interface gone)
    book.on_report(report(0, 30, 30))  # and came back, counted from zero
    (flow,) = book.flow_stats(table.rules.values())
    assert flow.packets_relayed == 130 and flow.outputs[0].packets_sent == 130


def fan_out(packets: int, *outputs: tuple[int, int]) -> StatsReport:
    """A report of rule r1 (100-byte payloads) with (output index, packets) for the outputs it serves."""
    counters = RuleCounters(packets, packets * 100, tuple((i, n, n * 100, 0) for i, n in outputs))
    return StatsReport(-1, 1000, (("r1", counters),), (), 0, 0, 0)


@pytest.mark.parametrize(
    ("reports", "expected"),
    [
        pytest.param(
            [
                fan_out(10, (0, 10), (1, 10), (2, 10)),
                fan_out(15, (0, 15), (2, 15)),
                fan_out(20, (0, 20), (1, 5), (2, 20)),
            ],
            (20, [20, 15, 20]),
            id="an output skipped and back from zero, the rule's counters kept (a worker, the kernel's last output)",
        ),
        pytest.param(
            [fan_out(10, (0, 10), (2, 10)), fan_out(0, (0, 0), (1, 0), (2, 0)), fan_out(4, (0, 4), (1, 4), (2, 4))],
            (14, [14, 4, 14]),
            id="an output back in the middle: the kernel slot starts from zero so that positions do not shift",
        ),
        pytest.param(
            [fan_out(10, (0, 10), (1, 10), (2, 10)), fan_out(0, (0, 0), (2, 0)), fan_out(6, (0, 6), (2, 6))],
            (16, [16, 10, 16]),
            id="a middle output skipped in the kernel: slot reset, the skipped output keeps its count",
        ),
        pytest.param(
            [fan_out(10, (0, 10), (1, 10)), fan_out(10, (0, 10), (1, 10)), fan_out(3, (0, 3), (1, 3))],
            (13, [13, 13, 0]),
            id="the same counts again (nothing went back, not checked), then reset: the earlier counts kept",
        ),
    ],
)
def test_output_counters_stay_with_their_output(reports: list[StatsReport], expected: tuple[int, list[int]]) -> None:
    table = RuleTable(Limits())
    add(table, outputs=(OUT, replace(OUT, port=6001), replace(OUT, port=6002)))
    book = StatsBook()
    book.track("r1", 0)
    for r in reports:
        book.on_report(r)
    (flow,) = book.flow_stats(table.rules.values())
    assert (flow.packets_relayed, [o.packets_sent for o in flow.outputs]) == expected
    assert [o.bytes_sent for o in flow.outputs] == [n * 100 for n in expected[1]]


def test_reports_older_than_a_re_added_rule_do_not_count_for_it() -> None:
    table = RuleTable(Limits())
    add(table)
    book = StatsBook()
    book.track("r1", 0)
    book.on_report(replace(report(0, 100, 100), generation=1))
    table.remove("r1")
    book.forget_rule("r1")
    add(table)
    book.track("r1", 3)  # re-added in generation 3
    book.on_report(replace(report(0, 100, 100), generation=2))  # taken before the worker saw it
    (flow,) = book.flow_stats(table.rules.values())
    assert flow.packets_relayed == 0
    book.on_report(replace(report(0, 0, 0), generation=3, rules=()))
    book.on_report(replace(report(0, 7, 7), generation=3))
    (flow,) = book.flow_stats(table.rules.values())
    assert flow.packets_relayed == 7


def test_limits_name_themselves_and_change_nothing() -> None:
    table = RuleTable(Limits(max_rules=2, max_outputs_per_rule=2, max_total_outputs=3))
    add(table, "r1", 5000, (OUT, replace(OUT, port=6001)))
    before = dict(table.rules)
    three = tuple(replace(OUT, port=6000 + i) for i in range(3))
    cases = [
        ("r2", three, "Rule rejected: 3 outputs exceed the per-rule output limit (max_outputs_per_rule = 2)"),
        (
            "r2",
            three[:2],
            "Rule rejected: 4 outputs in all would exceed the total output limit (max_total_outputs = 3)",
        ),
    ]
    for rule_id, outputs, message in cases:
        with pytest.raises(ValidationError) as info:
            add(table, rule_id, 5001, outputs)
        assert str(info.value) == message and table.rules == before
    add(table, "r2", 5001, (OUT,))
    with pytest.raises(ValidationError, match=r"^Rule rejected: rule limit reached \(max_rules = 2\)$"):
        add(table, "r3", 5002, ())


def test_restore_keeps_rules_over_lowered_limits_and_refuses_new_ones() -> None:
    big = RuleTable(Limits())
    for i in range(3):
        add(big, f"r{i}", 5000 + i, (OUT, replace(OUT, port=6001)))
    saved = list(big.rules.values())
    invalid = replace(saved[0], rule_id="bad id")
    duplicate = replace(saved[1], rule_id="dup")
    table = RuleTable(Limits(max_rules=2, max_outputs_per_rule=1, max_total_outputs=4))
    refusals, excesses = table.restore([*saved, invalid, duplicate])
    assert list(table.rules) == ["r0", "r1", "r2"]  # nothing valid is dropped for a limit
    assert [r.split(":")[0] for r in refusals] == ["saved rule bad id not restored", "saved rule dup not restored"]
    assert excesses == [
        "rule 'r0' has 2 outputs (max_outputs_per_rule = 1)",
        "rule 'r1' has 2 outputs (max_outputs_per_rule = 1)",
        "rule 'r2' has 2 outputs (max_outputs_per_rule = 1)",
        "3 rules (max_rules = 2)",
        "6 outputs in all (max_total_outputs = 4)",
    ]
    with pytest.raises(ValidationError, match=r"max_rules = 2"):
        add(table, "r9", 5009, ())
    table.remove("r0")
    table.remove("r1")
    add(table, "r9", 5009, ())  # back under the limit: accepted again
    assert list(table.rules) == ["r2", "r9"]


def test_config_reload_over_a_limit_names_the_rule_and_changes_nothing() -> None:
    table = RuleTable(Limits(max_rules=2))
    add(table, "runtime", 5000)
    before = dict(table.rules)
    config = [replace(table.rules["runtime"], rule_id=f"c{i}", input_port=6000 + i) for i in range(2)]
    with pytest.raises(ValidationError, match=r"^rule 'c1': Rule rejected: rule limit reached \(max_rules = 2\)$"):
        table.replace_config_rules(config)
    assert table.rules == before


def test_the_indexed_table_checks_names_across_groups_and_finds_rules_by_name() -> None:
    out = (OutputDestination(IPv4Address("239.9.9.9"), 6000, "eth1", 1),)
    table = RuleTable(Limits())
    table.insert(ForwardingRule("a", "eth0", IPv4Address("239.1.1.1"), 5000, out, name="feed"))
    other = ForwardingRule("b", "eth0", IPv4Address("239.1.1.2"), 5000, out, name="feed")
    with pytest.raises(ValidationError, match=r"^Rule rejected: name 'feed' is already used by rule 'a'$"):
        table.insert(other)
    assert table.named("feed") is table.rules["a"]
    table.remove("a")
    assert table.named("feed") is None
    table.insert(replace(other, rule_id="c"))
    assert table.named("feed") is table.rules["c"] and table.index.outputs == 1


def test_rules_that_share_a_flow_by_source_are_indexed_and_resolved_together() -> None:
    """A flow of one rule is held as the rule itself, of several as a dict of them; both ways, and back,
    the index finds each rule's flow mates, and the resolver joins each source's group once and leaves it."""
    from mcr.supervisor.core import Resolver

    out = (OutputDestination(IPv4Address("239.9.9.9"), 6000, "eth1", 1),)
    rules = [
        ForwardingRule(rule_id, "eth0", G1, 5000, out, input_source=IPv4Network(f"10.9.0.{n}/32"))
        for n, rule_id in enumerate("abc", start=1)
    ]
    table = RuleTable(Limits())
    resolver = Resolver()
    joined: set[object] = set()
    for rule in rules:
        table.insert(rule)
        changes = resolver.update(table.rules, [rule.rule_id], MACS)
        joined = (joined - changes.leave) | changes.join
    assert dict(table.index.same_flow(rules[0])) == {r.rule_id: r for r in rules}
    assert joined == {(2, G1, IPv4Address(f"10.9.0.{n}")) for n in (1, 2, 3)}
    for gone, left in (("b", "ac"), ("c", "a")):
        table.remove(gone)
        changes = resolver.update(table.rules, [gone])
        joined = (joined - changes.leave) | changes.join
        assert dict(table.index.same_flow(rules[0])) == {r.rule_id: r for r in rules if r.rule_id in left}
    assert joined == {(2, G1, IPv4Address("10.9.0.1"))}
    assert resolver.resolution(table.rules) == resolve(table.rules.values(), MACS)
    table.remove("a")
    resolver.update(table.rules, ["a"])
    assert table.index.same_flow(rules[0]) == {} and resolver.memberships() == {}


def test_the_resolver_keeps_the_raw_egress_keys_by_rule() -> None:
    """Incrementally, as `resolve` has them: a key stays while any ESP rule's output uses it."""
    from mcr.supervisor.core import Resolver

    table = RuleTable(Limits())
    out = (OutputDestination(IPv4Address("239.5.5.5"), 0, "eth1"),)
    table.insert(ForwardingRule("a", "eth0", G1, 0, out, input_protocol=InputProtocol.ESP))
    table.insert(ForwardingRule("b", "eth2", G1, 0, out, input_protocol=InputProtocol.ESP))
    resolver = Resolver(multicast_ttl=4)
    resolver.update(table.rules, list(table.rules), MACS)
    key = RawEgress(IPv4Address("239.5.5.5"), 3, IPv4Address("10.0.1.1"), 4)
    assert set(resolver.raw_egress) == {key} == set(resolve(table.rules.values(), MACS, multicast_ttl=4).raw_egress)
    table.remove("a")
    resolver.update(table.rules, ["a"])
    assert set(resolver.raw_egress) == {key}
    table.remove("b")
    resolver.update(table.rules, ["b"])
    assert not resolver.raw_egress


def test_rules_reported_idle_share_one_counts_object() -> None:
    """A full report names every rule, most with nothing counted: their counts are one shared object, not one
    per rule (memory at 10,000 rules)."""
    table = RuleTable(Limits())
    add(table, "r1", 5000)
    add(table, "r2", 5001)
    book = StatsBook()
    book.track("r1", 0)
    book.track("r2", 0)
    idle = RuleCounters(0, 0, ((0, 0, 0, 0),))
    book.on_report(StatsReport(0, 1000, (("r1", idle), ("r2", idle)), (), 0, 0, 0))
    (_, first), (_, second) = book.counted(table.rules.values())
    assert first is second and first.packets == 0 and first.outputs == (0, 0, 0)


def test_rates_are_taken_over_the_time_between_reports_not_between_ticks() -> None:
    """A worker reports every 0.5 s and the supervisor ticks about every second: a tick that holds three
    reports' counts instead of two must not show a steady flow half as fast again."""
    table = RuleTable(Limits())
    add(table)
    book = StatsBook()
    book.track("r1", 0)

    def reported(at: float) -> None:  # a steady 1,000 packets a second, counted since t=0
        n = int(1000 * at)
        book.on_report(report(0, n, n), at)

    rates = []
    reports = iter((0.1, 0.6, 1.1, 1.6, 2.1, 2.6, 3.1, 3.6))
    for tick in (1.0, 2.2, 3.15, 4.0):  # 2, then 3, 2 and 1 reports in between
        for at in reports:
            reported(at)
            if at + 0.5 > tick:
                break
        book.tick(table.rules, tick)
        rates.append(book.rates.get("r1", (0.0, 0.0))[0])
    assert rates[1:] == [1000.0, 1000.0, 1000.0], rates
    book.tick(table.rules, 5.0)  # no report since: nothing counted, the rate falls to zero
    assert book.rates["r1"] == (0.0, 0.0)
