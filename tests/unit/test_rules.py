from ipaddress import IPv4Address, IPv6Address

import pytest

from mcr.model.errors import ValidationError
from mcr.model.rules import (
    ForwardingRule,
    InputProtocol,
    Limits,
    OutputDestination,
    check_rule_fits,
    check_rule_shape,
    effective_ttl,
    generated_rule_id,
    input_groups,
    interface_name_problem,
    parse_output_spec,
)


def rule(**kw: object) -> ForwardingRule:
    base: dict[str, object] = {
        "rule_id": "r1",
        "input_interface": "eth0",
        "input_group": IPv4Address("239.1.1.1"),
        "input_port": 5000,
        "outputs": (OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1"),),
    }
    base.update(kw)
    return ForwardingRule(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["eth0", "eth0.100", "br-lan", "a" * 15, "_x", "veth_1"])
def test_valid_interface_names(name: str) -> None:
    assert interface_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "cannot be empty"),
        ("a" * 16, "exceeds maximum length of 15"),
        ("eth 0", "invalid character ' ' at position 3"),
        ("eth0/1", "invalid character '/' at position 4"),
        ("-eth", "cannot start with '-'"),
        (".eth", "cannot start with '.'"),
        ("ethé", "invalid character 'é'"),
    ],
)
def test_invalid_interface_names(name: str, fragment: str) -> None:
    problem = interface_name_problem(name)
    assert problem is not None and fragment in problem


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"input_interface": "bad/if"},
            "Invalid input_interface: interface name 'bad/if' contains invalid character",
        ),
        ({"input_port": 0}, "input_port cannot be 0; valid port range is 1-65535"),
        ({"input_port": 70000}, "input_port 70000 is out of range"),
        ({"input_group": IPv4Address("0.0.0.0")}, "input_group 0.0.0.0 is neither an IPv4 multicast address"),
        ({"input_group": IPv4Address("255.255.255.255")}, "is neither an IPv4 multicast address (224.0.0.0/4) nor"),
        ({"input_group": IPv4Address("240.0.0.1")}, "nor a usable unicast address"),
        ({"input_group": IPv4Address("127.0.0.1")}, "input_group 127.0.0.1 is a loopback address"),
        ({"input_group": IPv6Address("fd00::1")}, "not an IPv6 multicast address (ff00::/8); unicast input is IPv4"),
        (
            {"outputs": (OutputDestination(IPv4Address("239.2.2.2"), 0, "eth1"),)},
            "output[0].port cannot be 0; valid port range is 1-65535",
        ),
        (
            {"outputs": (OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth0"),)},
            "cannot be the same. This creates packet loops",
        ),
        (
            {"outputs": (OutputDestination(IPv4Address("0.0.0.0"), 6000, "eth1"),)},
            "output[0].group 0.0.0.0 is not a valid destination",
        ),
        (
            {"outputs": (OutputDestination(IPv4Address("255.255.255.255"), 6000, "eth1"),)},
            "is not a valid destination",
        ),
        (
            {"outputs": (OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1", ttl=0),)},
            "output[0].ttl 0 is out of range",
        ),
        (
            {"outputs": (OutputDestination(IPv4Address("239.2.2.2"), 6000, "x" * 16),)},
            "Invalid output_interface in output[0]: interface name",
        ),
        (
            {
                "outputs": (
                    OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1"),
                    OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1"),
                )
            },
            "output[1] duplicates output[0]",
        ),
        ({"rule_id": "has space"}, "Invalid rule_id 'has space'"),
        ({"name": " "}, "Invalid name: a rule name cannot be empty"),
        ({"name": "n" * 65}, "longer than 64 characters"),
        ({"name": "a\nb"}, "control characters are not allowed"),
        ({"input_protocol": InputProtocol.ESP}, "input_port must be 0 for ESP (input_protocol 50), which has no"),
        (
            {
                "input_protocol": InputProtocol.ESP,
                "input_port": 0,
                "input_group": IPv6Address("ff3e::1"),
                "outputs": (OutputDestination(IPv6Address("ff3e::2"), 0, "eth1"),),
            },
            "ESP (input_protocol 50) is relayed over IPv4 only; input_group ff3e::1",
        ),
        (
            {
                "input_protocol": InputProtocol.ESP,
                "input_port": 0,
                "outputs": (OutputDestination(IPv6Address("ff3e::2"), 0, "eth1"),),
            },
            "ESP (input_protocol 50) is relayed over IPv4 only; output[0].group ff3e::2",
        ),
        (
            {
                "input_protocol": InputProtocol.ESP,
                "input_port": 0,
                "outputs": (OutputDestination(IPv4Address("239.2.2.2"), 70000, "eth1"),),
            },
            "output[0].port 70000 is out of range; valid port range is 0-65535",
        ),
        (
            {
                "outputs": (
                    OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1", source_ip=IPv6Address("2001:db8::1")),
                )
            },
            "output[0].source_ip 2001:db8::1 is IPv6 but the output group 239.2.2.2 is IPv4",
        ),
        (
            {
                "outputs": (
                    OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1", source_ip=IPv4Address("239.0.0.1")),
                )
            },
            "output[0].source_ip 239.0.0.1 must be a unicast address",
        ),
    ],
)
def test_shape_errors(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        check_rule_shape(rule(**changes))
    assert message in str(info.value)


def test_esp_rules_have_port_0_and_any_output_port() -> None:
    """ESP has no ports: the input port is 0; outputs' ports are not used (the original's files carry one)."""
    outs = (OutputDestination(IPv4Address("239.2.2.2"), 0, "eth1"), OutputDestination(IPv4Address("10.9.9.9"), 5, "e2"))
    check_rule_shape(rule(input_protocol=InputProtocol.ESP, input_port=0, outputs=outs))
    esp = rule(input_protocol=InputProtocol.ESP, input_port=0, rule_id="esp")
    check_rule_fits(esp, {"r1": rule()}, Limits())  # beside a UDP rule on the same group
    with pytest.raises(ValidationError, match="already relayed by rule 'esp'"):
        check_rule_fits(rule(input_protocol=InputProtocol.ESP, input_port=0, rule_id="esp2"), {"esp": esp}, Limits())


def test_generated_ids_tell_the_protocols_apart() -> None:
    group = IPv4Address("239.1.1.1")
    assert generated_rule_id("eth0", group, 0, None, InputProtocol.ESP) != generated_rule_id("eth0", group, 0, None)
    assert generated_rule_id("eth0", group, 5000, None) == generated_rule_id("eth0", group, 5000, None)


@pytest.mark.parametrize("address", ["10.1.1.1", "192.0.2.7", "100.64.0.1"])
def test_unicast_input_is_allowed_and_joins_nothing(address: str) -> None:
    unicast = rule(input_group=IPv4Address(address))
    check_rule_shape(unicast)
    assert input_groups([unicast, rule(rule_id="m", input_interface="eth2")]) == {"eth2": {IPv4Address("239.1.1.1")}}


def test_unicast_output_and_no_outputs_are_allowed() -> None:
    check_rule_shape(rule(outputs=(OutputDestination(IPv4Address("10.9.9.9"), 7000, "eth1"),)))
    check_rule_shape(rule(outputs=()))


def test_outputs_per_rule_limit_names_the_limit() -> None:
    outs = tuple(OutputDestination(IPv4Address("239.2.2.2"), 6000 + i, "eth1") for i in range(3))
    with pytest.raises(ValidationError) as info:
        check_rule_fits(rule(outputs=outs), {}, Limits(max_outputs_per_rule=2))
    assert str(info.value) == ("Rule rejected: 3 outputs exceed the per-rule output limit (max_outputs_per_rule = 2)")


def test_duplicates_and_table_limits() -> None:
    existing = {"r1": rule()}
    with pytest.raises(ValidationError, match="rule_id 'r1' already exists"):
        check_rule_fits(rule(), existing, Limits())
    with pytest.raises(ValidationError, match="already relayed by rule 'r1'"):
        check_rule_fits(rule(rule_id="r2"), existing, Limits())
    with pytest.raises(ValidationError, match=r"^Rule rejected: rule limit reached \(max_rules = 1\)$"):
        check_rule_fits(rule(rule_id="r2", input_port=5001), existing, Limits(max_rules=1))
    with pytest.raises(
        ValidationError,
        match=r"^Rule rejected: 2 outputs in all would exceed the total output limit \(max_total_outputs = 1\)$",
    ):
        check_rule_fits(rule(rule_id="r2", input_port=5001), existing, Limits(max_total_outputs=1))
    check_rule_fits(rule(rule_id="r2", input_port=5001), existing, Limits())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("239.2.2.2:6000:eth1", OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1")),
        (" 10.0.0.5:53:lo ", OutputDestination(IPv4Address("10.0.0.5"), 53, "lo")),
    ],
)
def test_output_spec(spec: str, expected: OutputDestination) -> None:
    assert parse_output_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("239.2.2.2:6000", "Invalid format. Expected group:port:interface"),
        ("239.2.2.2:6000:eth1:x", "Invalid format. Expected group:port:interface"),
        ("239.2.2:6000:eth1", "Invalid group IP: '239.2.2'"),
        ("239.2.2.2:http:eth1", "Invalid port: 'http'"),
    ],
)
def test_output_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace(".", r"\.")):
        parse_output_spec(spec)


@pytest.mark.parametrize(
    ("group", "ttl", "multicast_ttl", "expected"),
    [
        ("239.2.2.2", None, 1, 1),  # a group that sets none: the supervisor's multicast_ttl
        ("239.2.2.2", None, 8, 8),
        ("239.2.2.2", 3, 8, 3),  # its own wins
        ("10.0.0.9", None, 8, None),  # unicast that sets none: the kernel's default (routed hops survive)
        ("10.0.0.9", 5, 8, 5),
        ("ff3e::10", None, 4, 4),
        ("2001:db8::9", None, 4, None),
    ],
)
def test_effective_ttl(group: str, ttl: int | None, multicast_ttl: int, expected: int | None) -> None:
    out = parse_output_spec(f"[{group}]:6000:eth1" if ":" in group else f"{group}:6000:eth1", ttl)
    assert effective_ttl(out, multicast_ttl) == expected


def test_a_name_is_unique_like_an_id() -> None:
    existing = {"r1": rule(name="feed-a")}
    check_rule_fits(rule(rule_id="r2", input_port=5001, name="feed-b"), existing, Limits())
    with pytest.raises(ValidationError, match="name 'feed-a' is already used by rule 'r1'"):
        check_rule_fits(rule(rule_id="r2", input_port=5001, name="feed-a"), existing, Limits())


def test_rules_share_their_port_numbers() -> None:
    """Ports decoded apart (each an int object of its own above 256) are one object once in a rule."""
    a, b = (int(text) for text in ("5000", "5000"))
    assert a is not b
    out_a = OutputDestination(IPv4Address("239.2.2.2"), a, "eth1")
    out_b = OutputDestination(IPv4Address("239.2.2.3"), b, "eth1")
    assert out_a.port is out_b.port
    rule = ForwardingRule("r", "eth0", IPv4Address("239.1.1.1"), int("5000"), (out_a,))
    assert rule.input_port is out_a.port
    assert OutputDestination(IPv4Address("239.2.2.2"), 70000, "eth1").port == 70000, "left to validation"


def test_a_rules_flow_key_follows_its_input_and_is_not_compared() -> None:
    from dataclasses import replace

    r = rule()
    assert r.flow == ("eth0", IPv4Address("239.1.1.1"), r.input_port)
    moved = replace(r, input_port=r.input_port + 1)
    assert moved.flow == ("eth0", IPv4Address("239.1.1.1"), r.input_port + 1)
    assert replace(r) == r and replace(r).flow is not r.flow, "made per rule, left out of equality"
