"""The control socket and the CLI against the real supervisor: framing, bad input, access, validation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mcr.lab import Lab
from mcr.model.errors import ProtocolError
from mcr.protocol.control import Error, decode_response
from tests.control_corpus import load_corpus
from tests.e2e.harness import Relay, exchange_as, mcr, raw_exchange, wait_for


@pytest.mark.parametrize(
    ("request_bytes", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b'"\xff\xfe"', "not valid UTF-8"),
        (b'"Reboot"', "unknown command 'Reboot'"),
        (b'{"RemoveRule": {"rule_id": 7}}', "field 'rule_id' in RemoveRule must be a string, got number"),
        (
            b'{"AddRule": {"input_interface": "rin", "input_group": "239.1.1.1", "input_port": "5000", "outputs": []}}',
            "field 'input_port' in AddRule must be an integer, got string",
        ),
        (b" " * (1 << 20) + b'"Ping"', "request exceeds the size limit (max_request_bytes = 1048576)"),
    ],
    ids=["json", "utf8", "unknown", "type", "port-type", "oversize"],
)
def test_bad_requests_get_precise_errors(relay: Relay, request_bytes: bytes, message: str) -> None:
    reply = json.loads(raw_exchange(relay.socket_path, request_bytes))
    assert message in reply["Error"]
    assert json.loads(raw_exchange(relay.socket_path, b'"Ping"'))["Success"].startswith("pong")


@pytest.mark.timeout(120)
def test_the_malformed_request_corpus_is_answered_precisely(relay: Relay) -> None:
    """Every request of tests/data/control_corpus.json, each on its own connection: each gets an Error with its
    precise text, the supervisor keeps serving, and the rule table is what it was."""
    relay.add("ok", "239.2.2.2:6001:rout")

    def rules() -> list[dict[str, object]]:  # the rules themselves, not how they are being served right now
        listed = json.loads(raw_exchange(relay.socket_path, b'"ListRules"'))["Rules"]
        return [{k: v for k, v in r.items() if k not in ("engine", "state", "state_reason")} for r in listed]

    before = rules()
    assert [r["rule_id"] for r in before] == ["ok"]
    wrong = []
    for case in load_corpus():
        try:
            answer: object = decode_response(raw_exchange(relay.socket_path, case.request, timeout=20))
        except (OSError, ProtocolError) as e:
            answer = e
        if not (isinstance(answer, Error) and case.error in answer.text):
            wrong.append((case.name, answer))
    assert not wrong, wrong
    assert json.loads(raw_exchange(relay.socket_path, b'"Ping"'))["Success"].startswith("pong")
    assert rules() == before
    assert "Traceback" not in relay.log()


def test_silent_client_times_out_while_others_are_served(relay: Relay) -> None:
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(relay.socket_path)
    try:
        started = time.monotonic()
        for _ in range(5):
            assert json.loads(raw_exchange(relay.socket_path, b'"Ping"', timeout=2))["Success"]
        assert time.monotonic() - started < 2.0
        silent.settimeout(10)
        reply = json.loads(silent.recv(65536))
        assert "timed out" in reply["Error"]
    finally:
        silent.close()


def test_many_concurrent_clients(relay: Relay) -> None:
    results: list[bytes] = []

    def ask() -> None:
        results.append(raw_exchange(relay.socket_path, b'"ListWorkers"'))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 20 and all(b"Workers" in r for r in results)


def test_unauthorized_user_is_refused(lab: Lab, public_workdir: Path) -> None:
    relay = Relay(lab, public_workdir).start()
    try:
        _check_refusal(relay)
    finally:
        relay.stop()


def _check_refusal(relay: Relay) -> None:
    run_dir = Path(relay.socket_path).parent
    assert oct(run_dir.stat().st_mode & 0o777) == "0o750"
    assert oct(Path(relay.socket_path).stat().st_mode & 0o777) == "0o660"
    # default permissions: the file system refuses
    assert exchange_as(65534, 65534, (), relay.socket_path).strip() == "connect: Permission denied"
    # with the file system opened up, the supervisor's SO_PEERCRED check still refuses
    run_dir.chmod(0o755)
    Path(relay.socket_path).chmod(0o666)
    reply = json.loads(exchange_as(65534, 65534, (), relay.socket_path))
    assert reply["Error"].startswith("permission denied: uid 65534")
    assert relay.rules() == []


def _add_args(
    *extra: str, group: str = "239.1.1.1", port: str = "5000", outputs: str = "239.2.2.2:6000:rout", iface: str = "rin"
) -> list[str]:
    """The arguments of `control_client add`, each replaceable."""
    return ["--input-interface", iface, "--input-group", group, "--input-port", port, "--outputs", outputs, *extra]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (_add_args(group="127.0.0.1"), "input_group 127.0.0.1 is a loopback address"),
        (_add_args(port="0"), "input_port cannot be 0"),
        (_add_args(outputs="239.2.2.2:6000:rin"), "cannot be the same. This creates packet loops"),
        (
            _add_args(iface="bad/name"),
            "Invalid input_interface: interface name 'bad/name' contains invalid character '/'",
        ),
        (_add_args(outputs="0.0.0.0:6000:rout"), "output[0].group 0.0.0.0 is not a valid destination"),
        (_add_args("--rule-id", "keep"), "rule_id 'keep' already exists"),
        (_add_args(group="239.9.9.9", port="9"), "input rin 239.9.9.9:9 is already relayed by rule 'keep'"),
    ],
)
def test_rejected_rules_change_nothing(relay: Relay, args: list[str], message: str) -> None:
    relay.add("keep", "239.3.3.3:7000:rout", group="239.9.9.9", port=9)
    before = relay.rules()
    result = relay.ctl("add", *args, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert relay.rules() == before


def test_generated_ids_remove_unknown_and_version(relay: Relay) -> None:
    out = relay.ctl("add", *_add_args()).stdout
    (rule,) = relay.rules()
    assert out.strip() == f"Rule {rule['rule_id']} added" and len(rule["rule_id"]) == 16
    missing = relay.ctl("remove", "--rule-id", "nope", check=False)
    assert missing.returncode == 1 and "Rule nope not found" in missing.stderr
    assert relay.json("version")["Version"]["protocol_version"] == 1


def test_log_levels_apply_at_run_time(relay: Relay) -> None:
    assert relay.ctl("log-level", "set", "--global", "warning").stdout.strip() == "Global log level set to WARNING"
    assert relay.ctl("log-level", "set", "--facility", "Ingress", "--level", "debug").stdout.strip() == (
        "Log level for Ingress set to DEBUG"
    )
    assert relay.json("log-level", "get") == {
        "LogLevels": {"global": "Warning", "facility_overrides": {"Ingress": "Debug"}}
    }


def test_rule_waits_for_its_interface(lab: Lab, relay: Relay) -> None:
    relay.add("later", "239.2.2.2:6001:rout", iface="rlate")
    (rule,) = relay.rules()
    assert (rule["state"], rule["state_reason"]) == ("waiting", "input interface rlate does not exist")
    lab.netns(lab.relay, "ip", "link", "add", "rlate", "type", "veth", "peer", "name", "rlatep")
    lab.netns(lab.relay, "ip", "link", "set", "rlate", "up")
    lab.netns(lab.relay, "ip", "link", "set", "rlatep", "up")
    wait_for(lambda: relay.rules()[0]["state"] == "active", 10, what="the rule to become active")
    lab.netns(lab.relay, "ip", "link", "del", "rlate")
    wait_for(lambda: relay.rules()[0]["state"] == "waiting", 10, what="the rule to wait again")
    assert json.loads(raw_exchange(relay.socket_path, b'"Ping"'))["Success"]


def test_client_reports_unreachable_supervisor(workdir: Path) -> None:
    missing = str(workdir / "nothing.sock")
    result = subprocess.run(mcr("control", "--socket-path", missing, "ping"), capture_output=True, text=True)
    assert result.returncode == 3 and missing in result.stderr
    assert os.path.exists(missing) is False
