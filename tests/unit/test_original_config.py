"""The original's JSON5 configuration file: what loads, what is warned about, what is refused (pure)."""

from ipaddress import IPv4Address, IPv4Network

import pytest

from mcr.model.config import ConfigDialect, config_dialect, parse_config, unserved_notes
from mcr.model.errors import ConfigError
from mcr.model.original_config import decode_original_config, encode_original_config
from mcr.model.rules import InputProtocol, RuleSource, generated_rule_id

# the original's own example shape (its docs write JSON5 like this): comments, bare keys, trailing commas
FILE = """\
// relay config
{
  multicast_ttl: 4,
  pinning: { eth0: [0, 1], },
  rules: [
    {
      name: "feed-a",
      input: { interface: "eth0", group: "239.1.1.1", port: 5000 },
      outputs: [
        { group: "239.10.1.1", port: 6000, interface: "eth1", ttl: 8 },
        { group: "10.0.0.9", port: 6001, interface: "eth2" },
      ],
    },
    /* a second, unnamed */
    { input: { interface: "eth0", group: "239.1.1.2", port: 5001, protocol: "udp" },
      outputs: [ { group: "239.10.1.2", port: 6000, interface: "eth1" } ] },
  ],
  pim: { enabled: true, interfaces: [ { name: "eth1", dr_priority: 10 } ], static_rp: [] },
  igmp: { querier_interfaces: ["eth1"], query_interval: 60 },
}
"""


def test_the_originals_file_loads_with_its_sections_kept() -> None:
    config = parse_config(FILE, "/etc/mcr/mcr.json5")
    assert config.dialect is ConfigDialect.JSON5 and config.warnings == ()
    first, second = config.rules
    assert (first.name, first.input_interface, first.input_group, first.input_port) == (
        "feed-a",
        "eth0",
        IPv4Address("239.1.1.1"),
        5000,
    )
    assert first.rule_id == generated_rule_id("eth0", IPv4Address("239.1.1.1"), 5000, None)
    assert [(str(o.group), o.port, o.interface, o.ttl) for o in first.outputs] == [
        ("239.10.1.1", 6000, "eth1", 8),
        ("10.0.0.9", 6001, "eth2", None),  # no ttl: multicast_ttl for groups, the kernel's for unicast
    ]
    assert second.name is None and second.input_protocol is InputProtocol.UDP
    assert all(r.source is RuleSource.CONFIG for r in config.rules)
    assert config.settings.multicast_ttl == 4
    assert config.original.pinning == (("eth0", (0, 1)),)
    assert config.original.unserved == ()  # igmp (the querier's settings) and pim (PimConfig) are served
    assert config.pim.enabled and [(i.name, i.dr_priority, i.hello_period) for i in config.pim.interfaces] == [
        ("eth1", 10, 30)
    ]
    assert config.original.section("igmp") == {"querier_interfaces": ["eth1"], "query_interval": 60}
    assert config.igmp.querier_interfaces == ("eth1",)
    assert (config.igmp.timers.query_interval, config.igmp.timers.robustness) == (60.0, 2)
    assert config.settings.worker_cpus == (0, 1)  # pinning: the workers' CPUs
    assert unserved_notes("/etc/mcr/mcr.json5", config.original) == ()


def test_pinning_that_differs_per_interface_pins_every_worker_over_the_union() -> None:
    config = parse_config("{ pinning: { eth0: [2, 3], eth1: [0, 2] } }", "/etc/mcr/mcr.json5")
    assert config.settings.worker_cpus == (2, 3, 0)
    (note,) = unserved_notes("/etc/mcr/mcr.json5", config.original)
    assert note.startswith("/etc/mcr/mcr.json5: 'pinning' names different CPUs per interface; every worker")
    assert note.endswith("so the lists are joined into one, 2,3,0 (read at start; --worker-cpus wins)")
    assert parse_config("{ rules: [] }", "/etc/mcr/mcr.json5").settings.worker_cpus is None


def test_our_additions_round_trip_through_the_schema() -> None:
    doc = {
        "rules": [
            {
                "rule_id": "mine",
                "name": "n",
                "rate_limit": {"pps": 1000},
                "input": {"interface": "eth0", "group": "239.1.1.1", "port": 5000, "source": "10.1.0.0/16"},
                "outputs": [{"group": "239.2.2.2", "port": 6000, "interface": "eth1", "source_ip": "10.9.0.1"}],
            }
        ]
    }
    found = decode_original_config(doc, "req")
    (rule,) = found.rules
    assert (rule.rule_id, rule.input_source, str(rule.outputs[0].source_ip)) == (
        "mine",
        IPv4Network("10.1.0.0/16"),
        "10.9.0.1",
    )
    again = decode_original_config(encode_original_config(found.rules, found.sections), "again")
    assert again.rules == found.rules


@pytest.mark.parametrize(
    ("doc", "warning"),
    [
        ({"colour": 1}, "unknown key 'colour' ignored"),
        ({"rules": [{"input": {"interface": "e0", "group": "239.1.1.1", "port": 1}, "outputs": [], "x": 1}]},
         "unknown key 'x' in rules[0] ignored"),
        ({"rules": [{"input": {"interface": "e0", "group": "239.1.1.1", "port": 1, "vlan": 3}, "outputs": []}]},
         "unknown key 'vlan' in rules[0].input ignored"),
        ({"igmp": {"enabled": True}}, "unknown key 'enabled' in igmp ignored"),  # PROTOCOL_CAPABILITIES.md's
        ({"pim": {"hello_interval": 30}}, "unknown key 'hello_interval' in pim ignored"),
    ],
)  # fmt: skip
def test_a_key_the_original_would_ignore_is_accepted_and_named(doc: dict[str, object], warning: str) -> None:
    found = decode_original_config(doc, "f.json5")
    assert len(found.warnings) == 1 and warning in found.warnings[0], found.warnings


RULE = '{ input: { interface: "eth0", group: "239.1.1.1", port: 5000 }, outputs: [] }'


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{ rules: [ ", "f.json5: not valid JSON5"),
        ("[]", "f.json5: the configuration must be an object"),
        ("{ rules: {} }", "'rules' must be an array"),
        ("{ rules: [ { outputs: [] } ] }", "rules[0]: missing 'input'"),
        ('{ rules: [ { input: { interface: null, group: "239.1.1.1", port: 1 }, outputs: [] } ] }',
         "rules[0].input: 'interface' cannot be null"),
        ('{ rules: [ { input: { interface: "eth0", group: "ff3e::1", port: 1 }, outputs: [] } ] }',
         "rules[0].input: 'group' 'ff3e::1' is not a valid IPv4 address"),
        ('{ rules: [ { input: { interface: "eth0", group: "239.1.1.1", port: 70000 }, outputs: [] } ] }',
         "'port' 70000 is out of range"),
        ('{ rules: [ { input: { interface: "eth0", group: "239.1.1.1", port: 0 }, outputs: [] } ] }',
         "input_port cannot be 0"),
        ('{ rules: [ { input: { interface: "eth0", group: "239.1.1.1", port: 1, protocol: "tcp" }, outputs: [] } ] }',
         "'protocol' 'tcp' is not known; expected udp or esp"),
        (f"{{ rules: [ {RULE}, {RULE} ] }}", "already"),
        ('{ rules: [ { name: "n", input: { interface: "eth0", group: "239.1.1.1", port: 1 },'
         ' outputs: [ { group: "239.2.2.2", port: 2, interface: "eth0" } ] } ] }', "rules[0] 'n'"),
        ("{ multicast_ttl: 0 }", "'multicast_ttl' 0 is out of range"),
        ("{ multicast_ttl: Infinity }", "Infinity and NaN are not allowed"),
        ('{ pinning: { eth0: [] } }', "'eth0' must be a non-empty array of core numbers"),
        ('{ pinning: { eth0: [1, 1] } }', "'eth0': CPU 1 is named twice"),
        ('{ pinning: { eth0: [9000] } }', "'eth0': CPU 9000 is beyond the largest CPU number Linux has (8191)"),
        ("{ igmp: { query_interval: 10, query_response_interval: 10 } }",
         "query_response_interval (10) must be less than query_interval (10)"),
        ("{ msdp: { keepalive_interval: 60, hold_time: 30 } }", "hold_time (30) must be greater"),
        ('{ control_plane: { rpf_provider: "ospf" } }', "'rpf_provider' must be disabled, static or an absolute"),
        ("{ pim: { enabled: 1 } }", "pim: 'enabled' must be a boolean"),
    ],
)  # fmt: skip
def test_an_invalid_file_is_refused_naming_the_place(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "f.json5")
    assert error in str(e.value) and str(e.value).startswith("f.json5: "), str(e.value)


def test_esp_is_read_with_port_0_and_its_outputs_ports_kept() -> None:
    text = (
        '{ rules: [ { input: { interface: "eth0", group: "239.1.1.1", port: 0, protocol: "esp" },'
        ' outputs: [ { group: "239.2.2.2", port: 5000, interface: "eth1" } ] } ] }'
    )
    (esp,) = parse_config(text, "f.json5").rules
    assert (esp.input_protocol, esp.input_port, esp.outputs[0].port) == (InputProtocol.ESP, 0, 5000)
    found = decode_original_config(
        {"rules": [{"input": {"interface": "e", "group": "239.1.1.1", "port": 9, "protocol": "esp"}, "outputs": []}]},
        "shown",
        validate=False,
    )
    assert (found.rules[0].input_protocol, found.rules[0].input_port) == (InputProtocol.ESP, 0)  # no port for ESP


@pytest.mark.parametrize(
    ("path", "text", "dialect"),
    [
        ("a.json5", "", ConfigDialect.JSON5),
        ("a.JSON", "", ConfigDialect.JSON5),
        ("a.toml", "{", ConfigDialect.TOML),
        ("mcr.conf", "\n  // comment\n{ rules: [] }", ConfigDialect.JSON5),
        ("mcr.conf", "# comment\n[supervisor]\n", ConfigDialect.TOML),
        ("mcr.conf", "\n\n{", ConfigDialect.JSON5),
        ("mcr.conf", "", ConfigDialect.TOML),
    ],
)
def test_the_format_is_chosen_by_extension_then_content(path: str, text: str, dialect: ConfigDialect) -> None:
    assert config_dialect(text, path) is dialect


def test_an_extensionless_json5_file_loads() -> None:
    assert len(parse_config(FILE, "/etc/mcr/config").rules) == 2


def test_the_originals_own_example_file_loads() -> None:
    """examples/config.json5 of the original at fced3ed, read from its source when it is here
    ($MCR_ORIGINAL_SRC: its git directory)."""
    import os
    import subprocess

    src = os.environ.get("MCR_ORIGINAL_SRC")
    if not src:
        pytest.skip("set MCR_ORIGINAL_SRC to the original's git directory (acooks/mcr) to load its example")
    shown = subprocess.run(
        ["git", "-C", src, "show", "fced3ed:examples/config.json5"], capture_output=True, text=True, check=False
    )
    if shown.returncode != 0:
        pytest.skip(f"the original's source is not at {src} (set MCR_ORIGINAL_SRC to its git directory)")
    config = parse_config(shown.stdout, "examples/config.json5")
    assert config.dialect is ConfigDialect.JSON5 and config.rules == () and config.warnings == ()
