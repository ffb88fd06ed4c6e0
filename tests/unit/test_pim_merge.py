"""PIM's outgoing interfaces merged into the rules for their group, as the data plane receives them."""

from ipaddress import IPv4Address, ip_network

from mcr.model.rules import ForwardingRule, OutputDestination
from mcr.routing.pim_joins import JoinState
from mcr.routing.pim_wire import EncodedGroup, EncodedSource, JoinPrune, JoinPruneGroup
from mcr.supervisor.pim import PIM_OUTPUT_TTL, merge_pim_outputs

US = IPv4Address("10.1.0.1")
G = IPv4Address("239.1.1.1")
S = IPv4Address("10.5.0.5")


def joined(*items: tuple[str, EncodedSource]) -> JoinState:
    state = JoinState()
    for interface, src in items:
        state.on_join_prune(
            interface, JoinPrune(US, 210, (JoinPruneGroup(EncodedGroup(G, 32), (src,)),)), frozenset({US}), 0.0
        )
    return state


STAR = EncodedSource(IPv4Address("10.9.9.9"), 32, wildcard=True, rpt=True)


def test_star_g_interfaces_become_outputs_except_input_and_existing() -> None:
    rule = ForwardingRule("r", "eth0", G, 5000, (OutputDestination(G, 5000, "eth1", 1),))
    state = joined(("eth0", STAR), ("eth1", STAR), ("eth2", STAR))
    (merged,) = merge_pim_outputs([rule], state)
    assert merged.outputs == (OutputDestination(G, 5000, "eth1", 1), OutputDestination(G, 5000, "eth2", PIM_OUTPUT_TTL))


def test_other_groups_untouched_and_sg_only_for_that_source() -> None:
    other = ForwardingRule("o", "eth0", IPv4Address("239.9.9.9"), 5000, ())
    any_source = ForwardingRule("a", "eth0", G, 5000, ())
    from_s = ForwardingRule("s", "eth0", G, 5001, (), input_source=ip_network(f"{S}/32"))
    state = joined(("eth3", EncodedSource(S, 32)))
    merged = merge_pim_outputs([other, any_source, from_s], state)
    assert merged[0] is other and merged[1] is any_source
    assert merged[2].outputs == (OutputDestination(G, 5001, "eth3", PIM_OUTPUT_TTL),)


def test_rules_for_any_source_want_the_trees_of_sources_msdp_learned() -> None:
    import asyncio

    from mcr.protocol.routing import EnablePim
    from mcr.routing.msdp_wire import SaEntry
    from mcr.routing.pim_upstream import Wanted
    from mcr.supervisor.pim import PimService

    loop = asyncio.new_event_loop()
    try:
        pim = PimService(loop)
        pim.set_rules([ForwardingRule("a", "eth0", G, 5000, ())])
        assert pim.rule_trees == set()  # PIM runs nowhere: the rules are not even looked at
        for name in ("eth0", "eth1"):  # enabled; waiting (no such interface here) is enough
            pim.enable(EnablePim(name))
        any_source = ForwardingRule("a", "eth0", G, 5000, ())
        one_source = ForwardingRule("s", "eth1", G, 5001, (), input_source=ip_network(f"{S}/32"))
        other = IPv4Address("10.6.6.6")
        pim.set_rules([any_source, one_source], [SaEntry(other, G), SaEntry(other, IPv4Address("239.9.9.9"))])
        assert pim.rule_trees == {Wanted("eth0", G, None), Wanted("eth0", G, other), Wanted("eth1", G, S)}
    finally:
        loop.close()


def test_merged_rules_view_adds_pim_outputs_per_rule_and_follows_the_table() -> None:
    import asyncio
    from dataclasses import dataclass, field

    from mcr.supervisor.pim import MergedRules, PimService

    @dataclass
    class Table:
        rules: dict[str, ForwardingRule] = field(default_factory=dict)

    loop = asyncio.new_event_loop()
    try:
        pim = PimService(loop)
        table = Table({"r": ForwardingRule("r", "eth0", G, 5000, ())})
        view = MergedRules(table, (pim,))
        assert view["r"] is table.rules["r"] and list(view) == ["r"] and len(view) == 1  # no PIM state: as is
        pim.joins = joined(("eth1", STAR))
        assert [o.interface for o in view["r"].outputs] == ["eth1"]
        table.rules["s"] = ForwardingRule("s", "eth0", IPv4Address("239.9.9.9"), 1, ())
        assert view["s"].outputs == () and view.get("nope") is None
    finally:
        loop.close()
