"""control_client's command line: what each command puts on the wire, and what it refuses (exit 2)."""

from __future__ import annotations

import pytest

from mcr.cli.control_client import DEFAULT_SOCKET, ExitCode, main, parse_invocation
from mcr.cli.transport import DEFAULT_TIMEOUT_S
from mcr.protocol.control import encode_request

ADD = ["add", "--input-interface", "eth0", "--input-group", "239.1.1.1", "--input-port", "5000"]
OUT1 = '{"group": "239.2.2.2", "port": 6000, "interface": "eth1"}'
OUT2 = '{"group": "239.3.3.3", "port": 7000, "interface": "eth2"}'
ADD_HEAD = '{"AddRule": {"input_interface": "eth0", "input_group": "239.1.1.1", "input_port": 5000, '


def wire(argv: list[str]) -> bytes:
    return encode_request(parse_invocation(argv, {}).request)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["list"], '"ListRules"'),
        (["list-rules"], '"ListRules"'),
        (["stats"], '"GetStats"'),
        (["list-workers"], '"ListWorkers"'),
        (["ping"], '"Ping"'),
        (["version"], '"GetVersion"'),
        (["log-level", "get"], '"GetLogLevels"'),
        (["remove", "--rule-id", "r1"], '{"RemoveRule": {"rule_id": "r1"}}'),
        (["log-level", "set", "--global", "warn"], '{"SetGlobalLogLevel": {"level": "Warning"}}'),
        (
            ["log-level", "set", "--facility", "Ingress", "--level", "DEBUG"],
            '{"SetFacilityLogLevel": {"facility": "Ingress", "level": "Debug"}}',
        ),
        (
            [*ADD, "--outputs", "239.2.2.2:6000:eth1", "--rule-id", "r1"],
            ADD_HEAD + f'"outputs": [{OUT1}], "rule_id": "r1"}}}}',
        ),
        # No --rule-id: the key is left out (never ""), so the supervisor generates the id.
        ([*ADD, "--outputs", "239.2.2.2:6000:eth1"], ADD_HEAD + f'"outputs": [{OUT1}]}}}}'),
        # Comma-separated and repeated --outputs accumulate in order.
        (
            [*ADD, "--outputs", "239.2.2.2:6000:eth1,239.3.3.3:7000:eth2"],
            ADD_HEAD + f'"outputs": [{OUT1}, {OUT2}]}}}}',
        ),
        (
            [*ADD, "--outputs", "239.2.2.2:6000:eth1", "--outputs", "239.3.3.3:7000:eth2"],
            ADD_HEAD + f'"outputs": [{OUT1}, {OUT2}]}}}}',
        ),
        # No outputs at all: omitted, or given as an empty list.
        (ADD, ADD_HEAD + '"outputs": []}}'),
        ([*ADD, "--outputs", ""], ADD_HEAD + '"outputs": []}}'),
        # --ttl applies to every output; --input-source is sent as a dotted string.
        (
            [*ADD, "--outputs", "239.2.2.2:6000:eth1,239.3.3.3:7000:eth2", "--ttl", "8", "--input-source", "10.0.0.5"],
            ADD_HEAD + '"outputs": [{"group": "239.2.2.2", "port": 6000, "interface": "eth1", "ttl": 8}, '
            '{"group": "239.3.3.3", "port": 7000, "interface": "eth2", "ttl": 8}], "input_source": "10.0.0.5"}}',
        ),
        # Port 0 is left to the supervisor, whose answer explains the valid range.
        (
            ["add", "--input-interface", "eth0", "--input-group", "239.1.1.1", "--input-port", "0"],
            '{"AddRule": {"input_interface": "eth0", "input_group": "239.1.1.1", "input_port": 0, "outputs": []}}',
        ),
    ],
)
def test_request_bytes(argv: list[str], expected: str) -> None:
    assert wire(argv) == expected.encode() + b"\n"


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("emergency", "Emergency"),
        ("emerg", "Emergency"),
        ("alert", "Alert"),
        ("CRIT", "Critical"),
        ("critical", "Critical"),
        ("err", "Error"),
        ("Error", "Error"),
        ("warn", "Warning"),
        ("WARNING", "Warning"),
        ("notice", "Notice"),
        ("info", "Info"),
        ("informational", "Info"),
        ("Debug", "Debug"),
    ],
)
def test_level_names_and_aliases(text: str, level: str) -> None:
    assert wire(["log-level", "set", "--global", text]) == (
        b'{"SetGlobalLogLevel": {"level": "' + level.encode() + b'"}}\n'
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--socket-path", "/tmp/s", "--json", "--timeout", "2.5", "ping"],
        ["ping", "--socket-path", "/tmp/s", "--json", "--timeout", "2.5"],
        ["--json", "ping", "--socket-path", "/tmp/s", "--timeout", "2.5"],
        ["--socket-path", "/tmp/s", "log-level", "--json", "get", "--timeout", "2.5"],
        ["log-level", "get", "--socket-path", "/tmp/s", "--json", "--timeout", "2.5"],
        ["remove", "--rule-id", "x", "--socket-path", "/tmp/s", "--json", "--timeout", "2.5"],
    ],
)
def test_global_flags_before_or_after_the_command(argv: list[str]) -> None:
    inv = parse_invocation(argv, {})
    assert (inv.socket_path, inv.json_output, inv.timeout_s) == ("/tmp/s", True, 2.5)


def test_defaults() -> None:
    inv = parse_invocation(["ping"], {})
    assert (inv.socket_path, inv.json_output, inv.timeout_s) == (DEFAULT_SOCKET, False, DEFAULT_TIMEOUT_S)
    assert DEFAULT_SOCKET == "/run/mcr/control.sock"


@pytest.mark.parametrize(
    ("argv", "env", "path"),
    [
        (["ping"], {"MCR_CONTROL_SOCKET": "/env.sock"}, "/env.sock"),
        (["--socket-path", "/flag.sock", "ping"], {"MCR_CONTROL_SOCKET": "/env.sock"}, "/flag.sock"),
        (["ping", "--socket-path", "/flag.sock"], {"MCR_CONTROL_SOCKET": "/env.sock"}, "/flag.sock"),
        (["ping"], {"MCR_CONTROL_SOCKET": ""}, DEFAULT_SOCKET),
    ],
)
def test_socket_path_flag_beats_environment(argv: list[str], env: dict[str, str], path: str) -> None:
    assert parse_invocation(argv, env).socket_path == path


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("239.2.2.2:6000", "Invalid format. Expected group:port:interface"),
        ("239.2.2.2:6000:eth1:x", "Invalid format. Expected group:port:interface"),
        ("eth1", "Invalid format. Expected group:port:interface"),
        ("239.2.2.2:6000:eth1,", "Invalid format. Expected group:port:interface, got ''"),
        ("239.2.2:6000:eth1", "Invalid group IP: '239.2.2'"),
        ("not-an-ip:6000:eth1", "Invalid group IP: 'not-an-ip'"),
        ("239.2.2.2:sixty:eth1", "Invalid port: 'sixty'"),
        ("239.2.2.2::eth1", "Invalid port: ''"),
        ("239.2.2.2:70000:eth1", "Invalid port: '70000'"),
        ("239.2.2.2:6000:eth1,239.3.3.3:x:eth2", "Invalid port: 'x' in '239.3.3.3:x:eth2'"),
    ],
)
def test_bad_output_spec_uses_the_original_texts(spec: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ADD, "--outputs", spec]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"argument --outputs: {message}" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["reboot"], "invalid choice: 'reboot'"),
        (["add", "--input-group", "239.1.1.1", "--input-port", "5000"], "required: --input-interface"),
        ([*ADD[:3], "--input-port", "5000"], "required: --input-group"),
        ([*ADD[:5], "5000"], "required: --input-port"),
        ([*ADD[:4], "239.1.1", *ADD[5:]], "argument --input-group: invalid IPv4 address '239.1.1'"),
        ([*ADD[:6], "70000"], "argument --input-port: invalid port '70000'; expected a number 0-65535"),
        ([*ADD[:6], "-1"], "argument --input-port: invalid port '-1'"),
        ([*ADD[:6], "http"], "argument --input-port: invalid port 'http'"),
        ([*ADD, "--input-source", "nowhere"], "argument --input-source: invalid IPv4 address 'nowhere'"),
        ([*ADD, "--ttl", "0"], "argument --ttl: invalid TTL '0'; valid TTL range is 1-255"),
        ([*ADD, "--ttl", "256"], "argument --ttl: invalid TTL '256'; valid TTL range is 1-255"),
        ([*ADD, "--rule-id", ""], "argument --rule-id: rule id must not be empty"),
        (["remove"], "Must specify either --rule-id or --name"),
        (["remove", "--rule-id", ""], "argument --rule-id: rule id must not be empty"),
        (["--timeout", "0", "ping"], "argument --timeout: invalid timeout '0'; expected a positive number"),
        (["ping", "--timeout", "soon"], "argument --timeout: invalid timeout 'soon'"),
        (["ping", "--timeout", "nan"], "argument --timeout: invalid timeout 'nan'"),
        (["ping", "--jsn"], "unrecognized arguments: --jsn"),
        (["log-level"], "the following arguments are required: ACTION"),
        (
            ["log-level", "set"],
            "error: Must specify either --global <LEVEL> or --facility <FACILITY> --level <LEVEL>",
        ),
        (
            ["log-level", "set", "--level", "debug"],
            "error: Must specify either --global <LEVEL> or --facility <FACILITY> --level <LEVEL>",
        ),
        (
            ["log-level", "set", "--global", "info", "--facility", "Ingress", "--level", "debug"],
            "argument --facility: not allowed with argument --global",
        ),
        (["log-level", "set", "--facility", "Ingress"], "argument --facility: requires --level LEVEL"),
        (["log-level", "set", "--global", "info", "--level", "debug"], "argument --level: not allowed"),
        (["log-level", "set", "--global", "loud"], "argument --global: invalid log level 'loud'"),
        (["log-level", "set", "--global", "verbose"], "expected one of emergency, alert, critical"),
        (
            ["log-level", "set", "--facility", "ingress", "--level", "debug"],
            "argument --facility: invalid facility 'ingress'; expected one of Supervisor,",
        ),
        (["log-level", "set", "--facility", "Ingress", "--level", "x"], "argument --level: invalid log level 'x'"),
    ],
)
def test_usage_errors_exit_2_with_a_precise_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == ExitCode.USAGE
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == ExitCode.OK
    out = capsys.readouterr().out
    for name in ("add", "remove", "list", "stats", "list-workers", "ping", "version", "log-level"):
        assert name in out
    assert main(["--version"]) == ExitCode.OK
    assert capsys.readouterr().out.startswith("control_client ")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["remove", "--name", "feed-a"], '{"RemoveRuleByName": {"name": "feed-a"}}'),
        ([*ADD, "--name", "feed a"], ADD_HEAD + '"outputs": [], "name": "feed a"}}'),
        (["config", "show"], '"GetConfig"'),
        (["config", "control-plane"], '"GetControlPlaneConfig"'),
        (["config", "save"], '{"SaveConfig": {"path": null}}'),
        (["config", "save", "--file", "/etc/mcr/x.json5"], '{"SaveConfig": {"path": "/etc/mcr/x.json5"}}'),
    ],
)
def test_todays_commands_on_the_wire(argv: list[str], expected: str) -> None:
    """The commands today's original's client has: the same requests."""
    assert wire(argv) == expected.encode() + b"\n"


def test_config_save_sends_an_absolute_path(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.chdir(str(tmp_path))
    assert wire(["config", "save", "--file", "saved.json5"]) == (
        f'{{"SaveConfig": {{"path": "{tmp_path}/saved.json5"}}}}\n'.encode()
    )


def test_config_check_and_load_take_either_spelling_and_format(tmp_path: object) -> None:
    from pathlib import Path

    from mcr.cli.control_client import ConfigCheckInvocation, ConfigLoadInvocation, parse_command

    assert parse_command(["config", "check", "f.json5"], {}) == ConfigCheckInvocation("f.json5")
    assert parse_command(["config", "check", "--file", "f.toml"], {}) == ConfigCheckInvocation("f.toml")
    load = parse_command(["config", "load", "--file", "f.json5", "--replace"], {})
    assert isinstance(load, ConfigLoadInvocation) and (load.path, load.replace) == ("f.json5", True)
    path = Path(str(tmp_path)) / "c.json5"
    path.write_text('{ rules: [ { input: { interface: "e0", group: "239.1.1.1", port: 1 }, outputs: [] } ] }')
    assert main(["config", "check", str(path)]) == ExitCode.OK


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["remove", "--rule-id", "a", "--name", "b"], "not allowed with argument"),
        (["add", "--name", "", "--input-interface", "e", "--input-group", "239.1.1.1", "--input-port", "1"],
         "a rule name cannot be empty"),
        (["config", "check"], "give the file to check once"),
        (["config", "check", "a", "--file", "b"], "give the file to check once"),
        (["config", "load"], "required: --file"),
    ],
)  # fmt: skip
def test_todays_commands_refuse_bad_usage(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == ExitCode.USAGE
    assert message in capsys.readouterr().err
