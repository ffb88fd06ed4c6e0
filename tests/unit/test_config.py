import re
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import tomli

from mcr.model import config
from mcr.model.config import parse_config, rule_tables
from mcr.model.errors import ConfigError, ValidationError
from mcr.model.rules import InputProtocol, Limits, OutputDestination, RuleSource
from mcr.protocol.control import AddRule
from mcr.supervisor.core import RuleTable
from mcr.supervisor.state import StateError, decode_state, encode_state, load_state, save_state

GOOD = """
[supervisor]
num_workers = 2
control_group = "mcr"
log_json = true

[limits]
max_rules = 10

[[rule]]
id = "a"
input_interface = "eth0"
input_group = "239.1.1.1"
input_port = 5000
ttl = 4
outputs = ["239.2.2.2:6000:eth1", { group = "239.2.2.3", port = 6001, interface = "eth2", ttl = 9 }]

[[rule]]
input_interface = "eth0"
input_group = "239.1.1.2"
input_port = 5000
"""


def test_good_config() -> None:
    cfg = parse_config(GOOD, "mcr.toml")
    assert cfg.settings.num_workers == 2 and cfg.settings.log_json is True and cfg.settings.user is None
    assert cfg.limits == Limits(max_rules=10)
    a, b = cfg.rules
    assert a.outputs == (
        OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1", 4),
        OutputDestination(IPv4Address("239.2.2.3"), 6001, "eth2", 9),
    )
    assert a.source is RuleSource.CONFIG and len(b.rule_id) == 16 and b.outputs == ()


def test_esp_and_unicast_input_rules() -> None:
    text = (
        "[[rule]]\nid = 'e'\nprotocol = 'esp'\ninput_interface = 'eth0'\ninput_group = '239.1.1.1'\n"
        "outputs = ['239.2.2.2:0:eth1']\n"
        "[[rule]]\nid = 'u'\ninput_interface = 'eth0'\ninput_group = '10.0.0.1'\ninput_port = 5000\n"
    )
    esp, unicast = parse_config(text, "mcr.toml").rules
    assert (esp.input_protocol, esp.input_port, esp.outputs[0].port) == (InputProtocol.ESP, 0, 0)
    assert (unicast.input_protocol, unicast.input_group) == (InputProtocol.UDP, IPv4Address("10.0.0.1"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[supervisor\n", "mcr.toml: not valid TOML"),
        ("[extra]\n", "mcr.toml: unknown section 'extra'"),
        ("[supervisor]\nnum_workers = '2'\n", "mcr.toml: [supervisor]: 'num_workers' must be an integer"),
        ("[supervisor]\nworkers = 2\n", "mcr.toml: [supervisor]: unknown setting 'workers'"),
        ("[supervisor]\nnum_workers = 0\n", "'num_workers' must be at least 1"),
        ("[supervisor]\nmulticast_ttl = 0\n", "mcr.toml: [supervisor]: multicast_ttl 0 is out of range; valid TTL"),
        ("[supervisor]\nmulticast_ttl = '4'\n", "mcr.toml: [supervisor]: 'multicast_ttl' must be an integer"),
        ("[limits]\nmax_rules = -1\n", "mcr.toml: [limits]: 'max_rules' must be a positive integer"),
        (
            "[[rule]]\nid = 'r'\ninput_group = '239.1.1.1'\ninput_port = 1\n",
            "mcr.toml: rule[0] 'r': missing 'input_interface'",
        ),
        (
            "[[rule]]\nid = 'r'\ninput_interface = 'e'\ninput_group = '239.1.1.1'\ninput_port = '1'\n",
            "mcr.toml: rule[0] 'r': 'input_port' must be an integer",
        ),
        (
            "[[rule]]\nid = 'r'\ninput_interface = 'e'\ninput_group = '239.1.1.1'\ninput_port = 1\nouputs = []\n",
            "mcr.toml: rule[0] 'r': unknown key 'ouputs'",
        ),
        (
            "[[rule]]\nid = 'r'\ninput_interface = 'e'\ninput_group = '239.1.1.1'\ninput_port = 1\noutputs = ['x:1']\n",
            "mcr.toml: rule[0] 'r': outputs[0]: Invalid format. Expected group:port:interface",
        ),
        (
            "[[rule]]\nid = 'r'\nprotocol = 'tcp'\ninput_interface = 'e'\ninput_group = '239.1.1.1'\n",
            "mcr.toml: rule[0] 'r': 'protocol' must be \"udp\" or \"esp\"",
        ),
        (
            "[[rule]]\nid = 'r'\nprotocol = 'esp'\ninput_interface = 'e'\ninput_group = '239.1.1.1'\ninput_port = 9\n",
            "mcr.toml: rule[0] 'r': input_port must be 0 for ESP (input_protocol 50)",
        ),
        (
            "[[rule]]\nid = 'r'\ninput_interface = 'e'\ninput_group = '127.0.0.9'\ninput_port = 1\n",
            "mcr.toml: rule[0] 'r': input_group 127.0.0.9 is a loopback address",
        ),
        (
            "[[rule]]\nid = 'r'\ninput_interface = 'e'\ninput_group = '239.1.1.1'\ninput_port = 1\n"
            "[[rule]]\nid = 'r'\ninput_interface = 'e'\ninput_group = '239.1.1.2'\ninput_port = 1\n",
            "mcr.toml: rule[1] 'r': Rule rejected: rule_id 'r' already exists",
        ),
    ],
)
def test_config_errors_name_file_rule_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "mcr.toml")
    assert message in str(info.value)


def test_replace_config_rules_is_all_or_nothing_and_keeps_unchanged_rules() -> None:
    table = RuleTable(Limits())
    first = parse_config(GOOD, "f").rules
    for rule in first:
        table.insert(rule)
    unchanged = table.rules["a"]
    second = parse_config(GOOD.replace("239.1.1.2", "239.1.1.3"), "f").rules
    added, changed, removed = table.replace_config_rules(second)
    assert table.rules["a"] is unchanged and changed == [] and len(added) == 1 and len(removed) == 1
    runtime = AddRule("rt", "eth0", IPv4Address("239.1.1.9"), 5000, ())
    table.add(runtime)
    before = dict(table.rules)
    clash = parse_config(GOOD.replace("239.1.1.2", "239.1.1.9"), "f").rules
    with pytest.raises(ValidationError, match="already relayed by rule 'rt'"):
        table.replace_config_rules(clash)
    assert table.rules == before


def test_a_reload_takes_unchanged_rules_as_they_were_and_checks_the_rest_again() -> None:
    first = parse_config(GOOD, "f")
    edited = GOOD.replace('input_group = "239.1.1.2"', 'input_group = "239.1.1.3"')
    second = parse_config(edited, "f", previous=first)
    assert second == parse_config(edited, "f"), "the same result as a load from scratch"
    assert second.rules[0] is first.rules[0], "rule 'a' unchanged: the same object, not parsed again"
    assert second.rules[1] is not first.rules[1] and str(second.rules[1].input_group) == "239.1.1.3"
    # an unchanged rule is still held to the new limits; a changed one to every check
    with pytest.raises(ConfigError, match="rule\\[1\\]"):
        parse_config(edited.replace("max_rules = 10", "max_rules = 1"), "f", previous=first)
    with pytest.raises(ConfigError, match=r"rule\[0\] 'a': output\[0\]\.port cannot be 0"):
        parse_config(GOOD.replace("239.2.2.2:6000:eth1", "239.2.2.2:0:eth1"), "f", previous=first)


def test_a_reload_parses_only_the_rule_tables_whose_text_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    first = parse_config(GOOD, "f")
    edited = GOOD.replace('input_group = "239.1.1.2"', 'input_group = "239.1.1.3"').replace("= 10", "= 20")
    read: list[str] = []
    parse = tomli.loads

    def loads(text: str) -> dict[str, object]:
        read.append(text)
        return parse(text)

    monkeypatch.setattr(config.tomli, "loads", loads)
    second = parse_config(edited, "f", previous=first)
    assert second.rules[0] is first.rules[0] and second.limits.max_rules == 20
    assert len(read) == 2 and read[0].startswith("\n[supervisor]") and "[[rule]]" not in read[0]
    assert read[1].startswith("[[rule]]") and "239.1.1.3" in read[1] and "239.1.1.1" not in read[1]


def test_a_file_that_cannot_be_split_safely_is_parsed_whole() -> None:
    rest, tables = rule_tables(GOOD) or ("", [])
    assert len(tables) == 2 and "[limits]" in rest and tables[0].startswith('[[rule]]\nid = "a"')
    for text in (
        GOOD + 'x = """\n[[rule]]\n"""\n',  # a header-like line may be inside a multi-line string
        GOOD + '["rule"]\n',  # a quoted name
        GOOD + "[[true]]\n",  # a header that a line of an array could be too
        "[rule.rate_limit]\n" + GOOD,  # a sub-table before any rule
    ):
        assert rule_tables(text) is None, text
    # an error names the place in the whole file, as the parse of the whole file does
    bad = GOOD + "input_port = 1\n"
    with pytest.raises(tomli.TOMLDecodeError) as whole:
        tomli.loads(bad)
    with pytest.raises(ConfigError, match=f"^f: not valid TOML: {re.escape(str(whole.value))}$"):
        parse_config(bad, "f", previous=parse_config(GOOD, "f"))


def test_state_round_trip_and_atomic_save(tmp_path: Path) -> None:
    rules = parse_config(GOOD, "f").rules
    assert decode_state(encode_state(rules)) == list(rules)
    path = tmp_path / "sub" / "rules.json"
    save_state(path, rules)
    assert load_state(path) == list(rules)
    assert [p.name for p in path.parent.iterdir()] == ["rules.json"]
    assert load_state(tmp_path / "missing.json") == []


@pytest.mark.parametrize("content", ["{", '{"version": 2, "rules": []}', '{"version": 1, "rules": [{"rule_id": 1}]}'])
def test_corrupt_state_is_moved_aside(tmp_path: Path, content: str) -> None:
    path = tmp_path / "rules.json"
    path.write_text(content)
    with pytest.raises(StateError, match="kept aside as"):
        load_state(path)
    assert not path.exists()
    (aside,) = tmp_path.glob("rules.json.corrupt-*")
    assert aside.read_text() == content


def test_save_failure_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="cannot save state"):
        save_state(blocker / "rules.json", [])


def test_access_and_limit_settings_from_file_and_flags() -> None:
    from mcr.supervisor.cli import build_parser, merge_settings

    text = GOOD.replace('control_group = "mcr"', 'control_group = "mcr"\nread_only_group = "mcr-ro"').replace(
        "max_rules = 10", "max_rules = 10\nmax_connections = 8\nmax_connection_seconds = 2"
    )
    static = parse_config(text, "f")
    assert static.settings.read_only_group == "mcr-ro"
    assert static.limits == Limits(max_rules=10, max_connections=8, max_connection_seconds=2)
    args = build_parser().parse_args(["supervisor", "--max-connections", "3", "--max-total-outputs", "50"])
    config = merge_settings(args, static)
    assert config.read_only_group == "mcr-ro"
    assert config.limits == Limits(max_rules=10, max_connections=3, max_connection_seconds=2, max_total_outputs=50)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["supervisor", "--max-rules", "0"])
    with pytest.raises(ConfigError, match="'max_connections' must be a positive integer"):
        parse_config("[limits]\nmax_connections = 0\n", "f")
