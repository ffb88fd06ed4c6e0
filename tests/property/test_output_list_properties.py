"""A rule's outputs come back as they were given, packed or not (mcr.model.rules.OutputList)."""

import sys
from ipaddress import IPv4Address, IPv6Address

from hypothesis import given
from hypothesis import strategies as st

from mcr.model.rules import ForwardingRule, OutputDestination, OutputList

V4 = st.integers(0, 2**32 - 1).map(IPv4Address)
V6 = st.integers(0, 2**128 - 1).map(IPv6Address)
ADDRESS = V4 | V6


def outputs(
    port: st.SearchStrategy[int], interface: st.SearchStrategy[str], ttl: st.SearchStrategy[int | None]
) -> st.SearchStrategy[OutputDestination]:
    return st.builds(
        OutputDestination,
        group=ADDRESS,
        port=port,
        interface=interface,
        ttl=ttl,
        source_ip=st.none() | ADDRESS,
        follow_receivers=st.booleans(),
    )


NAMES = st.sampled_from(["eth0", "veth-out1", "a" * 15])
# what validation refuses must still come back as given: ports and TTLs out of range, names of any text
OUTPUT = outputs(
    st.integers(0, 65535) | st.integers(-(2**40), 2**40),
    NAMES | st.text(max_size=300),
    st.none() | st.integers(0, 255) | st.integers(-1000, 1000),
)
# and outputs as validation takes them, which are all held packed
PACKABLE = outputs(st.integers(0, 65535), NAMES, st.none() | st.integers(0, 255))


@given(st.lists(PACKABLE, max_size=8) | st.lists(OUTPUT, max_size=8))
def test_outputs_read_back_equal_and_in_order(given_outputs: list[OutputDestination]) -> None:
    held = OutputList(given_outputs)
    packable = all(type(o.port) is int and 0 <= o.port <= 65535 and o.interface.isascii() and len(o.interface) < 256
                   and (o.ttl is None or 0 <= o.ttl <= 255) for o in given_outputs)  # fmt: skip
    assert isinstance(held._held, bytes) == packable
    assert tuple(held) == tuple(given_outputs)
    assert len(held) == len(given_outputs)
    assert [held[i] for i in range(len(held))] == given_outputs
    assert held == tuple(given_outputs) and held == OutputList(given_outputs)
    assert held.follow_receivers() == any(out.follow_receivers for out in given_outputs)
    for got, want in zip(held, given_outputs, strict=True):
        assert type(got.group) is type(want.group) and type(got.ttl) is type(want.ttl)


@given(st.lists(OUTPUT, min_size=1, max_size=4), st.lists(OUTPUT, min_size=1, max_size=4))
def test_lists_are_equal_exactly_when_their_outputs_are(a: list[OutputDestination], b: list[OutputDestination]) -> None:
    assert (OutputList(a) == OutputList(b)) == (tuple(a) == tuple(b))
    if tuple(a) == tuple(b):
        assert hash(OutputList(a)) == hash(OutputList(b))


def test_a_rule_holds_its_outputs_packed_and_shares_their_names() -> None:
    outs = (
        OutputDestination(IPv4Address("239.100.0.1"), 5001, "out1"),
        OutputDestination(IPv6Address("ff3e::100:1"), 5001, "out2", ttl=8, follow_receivers=True),
    )
    rule = ForwardingRule("r1", "in0", IPv4Address("239.0.0.1"), 5000, outs)
    assert isinstance(rule.outputs, OutputList) and rule.outputs == outs
    assert rule.outputs[1].interface is sys.intern("out2")
    # one bytes object for both, instead of two objects with an address and a port each
    assert sys.getsizeof(rule.outputs._held) < 100


def test_outputs_validation_refuses_are_kept_as_given() -> None:
    odd = OutputDestination(IPv4Address("239.1.1.1"), 70_000, "ethé")
    held = OutputList([odd])
    assert held[0] is odd and held == (odd,)
