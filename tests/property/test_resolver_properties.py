"""The incremental Resolver agrees with the full `resolve` after any sequence of rule changes and link
changes: the same resolution (views, data-plane forms, captures, memberships), the memberships it asked
to join and leave add up to the wanted set, the workers' updates rebuild the full rule set, and the
SyncTracker marks the same rules pending as the full comparison does; the table's index of flows finds the
same rules as a scan of the table."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st

from mcr.model.links import Link
from mcr.model.rules import ForwardingRule, Limits, OutputDestination
from mcr.supervisor.core import Resolver, RuleTable, SyncTracker, resolve

MAC = b"\x02\x00\x00\x00\x00\x01"
ALL_LINKS = {
    "eth0": Link("eth0", 2, True, 1500, (IPv4Address("10.0.0.1"),), MAC, ipv6=(IPv6Address("fd00::1"),)),
    "eth1": Link("eth1", 3, True, 1500, (IPv4Address("10.0.1.1"),), MAC, ipv6=(IPv6Address("fd00:1::1"),)),
    "eth2": Link("eth2", 4, True, 1500, (IPv4Address("10.0.2.1"),), b""),
}
GROUPS = [
    IPv4Address("239.1.1.1"),
    IPv4Address("239.1.1.1"),
    IPv4Address("239.1.1.2"),
    IPv6Address("ff3e::1"),
    IPv4Address("10.0.0.1"),  # a unicast input: nothing to join
]
SOURCES = [None, IPv4Network("10.9.0.1/32"), IPv4Network("10.9.0.2/32"), IPv4Network("10.8.0.0/16")]


@st.composite
def rules(draw: st.DrawFn, rule_id: str) -> ForwardingRule:
    group = draw(st.sampled_from(GROUPS))
    source = draw(st.sampled_from(SOURCES)) if group.version == 4 else None
    ins = draw(st.sampled_from(["eth0", "eth0", "eth1", "eth9"]))
    outs = draw(st.lists(st.sampled_from(["eth0", "eth1", "eth2", "eth8"]), min_size=1, max_size=3))
    outputs = tuple(
        OutputDestination(IPv4Address("239.5.5.5") if group.version == 4 else IPv6Address("ff3e::5"), 6000 + i, o, 1)
        for i, o in enumerate(outs)
        if o != ins
    ) or (
        OutputDestination(IPv4Address("239.5.5.5") if group.version == 4 else IPv6Address("ff3e::5"), 6000, "eth8", 1),
    )
    port = draw(st.sampled_from([5000, 5000, 5001]))
    return ForwardingRule(rule_id, ins, group, port, outputs, input_source=source)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abcdefg")),
        st.tuples(st.just("remove"), st.sampled_from("abcdefg")),
        st.tuples(st.just("links"), st.sets(st.sampled_from(sorted(ALL_LINKS)))),
        st.tuples(st.just("down"), st.sampled_from(sorted(ALL_LINKS))),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), steps=ops, kernel=st.sampled_from([None, 16]))
def test_incremental_resolution_matches_the_full_one(
    data: st.DataObject, steps: list[tuple[str, object]], kernel: int | None
) -> None:
    table = RuleTable(Limits())
    links = dict(ALL_LINKS)
    resolver = Resolver(kernel)
    tracker, full_tracker = SyncTracker(), SyncTracker()
    previous = resolve((), {}, kernel)
    joined: set[tuple[object, ...]] = set()
    worker_rules: dict[str, object] = {}
    epochs = {"a": 3}
    changes = resolver.update(table.rules, (), links, epochs)
    for generation, (op, arg) in enumerate(steps, start=1):
        if op == "add":
            rule = data.draw(rules(str(arg)))
            try:
                if rule.rule_id in table.rules:
                    table.remove(rule.rule_id)
                table.insert(rule)
            except Exception:  # a refused rule (an overlap): the table is unchanged
                pass
            changes = resolver.update(table.rules, [str(arg), str(arg)], epochs=epochs)  # an id named twice: once
        elif op == "remove":
            if str(arg) in table.rules:
                table.remove(str(arg))
            changes = resolver.update(table.rules, [str(arg)], epochs=epochs)
        else:
            if op == "links":
                links = {name: ALL_LINKS[name] for name in arg}  # type: ignore[union-attr]
            elif str(arg) in links:
                links[str(arg)] = replace(links[str(arg)], up=not links[str(arg)].up)
            # every id, as the supervisor names them after a change of links: those in both lists twice
            changes = resolver.update(table.rules, [*table.rules, *resolver.parts], links, epochs)
        full = resolve(table.rules.values(), links, kernel, epochs)
        for rule in table.rules.values():  # the table's index of flows: one rule held as itself, several by id
            assert table.index.same_flow(rule) == {r.rule_id: r for r in table.rules.values() if r.flow == rule.flow}
        assert table.index.outputs == sum(len(r.outputs) for r in table.rules.values())
        assert resolver.resolution(table.rules) == full
        assert resolver.views(table.rules) == full.views
        assert resolver.worker_rules(table.rules) == full.worker_rules
        assert resolver.captures == full.captures
        assert resolver.memberships() == {k: v for k, v in full.memberships.items() if v}
        joined -= changes.leave
        assert not joined & changes.join
        joined |= changes.join
        assert joined == {(i, g, s) for i, members in full.memberships.items() for g, s in members}
        upserts, removed = changes.worker_update()
        for rule_id in removed:
            del worker_rules[rule_id]
        worker_rules.update((r.rule_id, r) for r in upserts)
        assert worker_rules == {r.rule_id: r for r in full.worker_rules}
        tracker.on_changes(changes, generation)
        full_tracker.on_apply(previous, full, generation)
        previous = full
        assert tracker.changed_in == full_tracker.changed_in


def test_a_rule_that_changed_only_where_it_comes_from_is_listed_as_it_is_now() -> None:
    from mcr.model.rules import RuleSource

    table = RuleTable(Limits())
    out = (OutputDestination(IPv4Address("239.5.5.5"), 6000, "eth1", 1),)
    table.insert(ForwardingRule("a", "eth0", IPv4Address("239.1.1.1"), 5000, out))
    resolver = Resolver()
    resolver.update(table.rules, ["a"], ALL_LINKS)
    table.remove("a")
    table.insert(ForwardingRule("a", "eth0", IPv4Address("239.1.1.1"), 5000, out, source=RuleSource.CONFIG))
    changes = resolver.update(table.rules, ["a"])
    assert changes.rules == (), "the data plane has nothing to do"
    (view,) = resolver.resolution(table.rules).views
    assert view.rule.source is RuleSource.CONFIG
