"""control_client end to end against a fake supervisor: a real Unix socket served by a thread."""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mcr.cli.control_client import ExitCode, main
from mcr.cli.transport import connect_error, exchange
from mcr.model.errors import ProtocolError
from tests.fake_supervisor import HOLD, FakeSupervisor, Respond, by_command

Serve = Callable[[bytes | object | None], FakeSupervisor]


@pytest.fixture
def serve(fake_supervisor: Callable[[Respond], FakeSupervisor]) -> Serve:
    """A fake supervisor giving every request the same answer: bytes, None (close without answering) or HOLD."""
    return lambda answer: fake_supervisor(lambda _request: answer)


def doc(value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"


RULE = {
    "rule_id": "r1",
    "input_interface": "eth0",
    "input_group": "239.1.1.1",
    "input_port": 5000,
    "input_source": None,
    "outputs": [{"group": "239.2.2.2", "port": 6000, "interface": "eth1", "ttl": 4}],
    "source": "runtime",
    "engine": "userspace",
    "state": "active",
    "state_reason": "",
}
FLOW = {
    "rule_id": "r1",
    "input_interface": "eth0",
    "input_group": "239.1.1.1",
    "input_port": 5000,
    "packets_relayed": 42,
    "bytes_relayed": 4200,
    "packets_per_second": 10.0,
    "bits_per_second": 8000.0,
    "outputs": [
        {"group": "239.2.2.2", "port": 6000, "interface": "eth1", "packets_sent": 42, "bytes_sent": 4200,
         "send_errors": 0},
    ],
    "drops": {"truncated": 1},
}  # fmt: skip
WORKER = {"pid": 77, "worker_type": "DataPlane", "core_id": 0, "worker_id": 0, "status": "Running", "uid": 65534}

ANSWERS = [
    (["ping"], {"Success": "pong: 2/2 worker streams ready"}, ["pong: 2/2 worker streams ready"]),
    (["remove", "--rule-id", "r1"], {"Success": "Rule r1 removed"}, ["Rule r1 removed"]),
    (
        ["add", "--input-interface", "eth0", "--input-group", "239.1.1.1", "--input-port", "5000",
         "--outputs", "239.2.2.2:6000:eth1"],
        {"Success": "Rule 9f2c added"},
        ["Rule 9f2c added"],
    ),
    (["log-level", "set", "--global", "warn"], {"Success": "Global log level set to WARNING"}, ["WARNING"]),
    (["list"], {"Rules": [RULE]}, ["r1", "eth0 239.1.1.1:5000", "239.2.2.2:6000:eth1 ttl 4", "active"]),
    (["stats"], {"Stats": [FLOW]}, ["r1", "42", "8.0 kbit/s", "truncated=1"]),
    (["list-workers"], {"Workers": [WORKER]}, ["77", "DataPlane", "65534", "Running"]),
    (["version"], {"Version": {"version": "0.1.0", "protocol_version": 1, "implementation": "mcr-python"}},
     ["version 0.1.0", "protocol 1"]),
    (["log-level", "get"], {"LogLevels": {"global": "Info", "facility_overrides": {"Ingress": "Debug"}}},
     ["global: Info", "Ingress", "Debug"]),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "answer", "shown"), ANSWERS, ids=[" ".join(a[0][:2]) for a in ANSWERS])
def test_human_output_exit_0(
    argv: list[str], answer: object, shown: list[str], serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = serve(doc(answer))
    assert main(["--socket-path", str(fake.path), *argv]) == ExitCode.OK
    captured = capsys.readouterr()
    for piece in shown:
        assert piece in captured.out
    assert "\x1b" not in captured.out  # not a terminal: no colour codes
    assert captured.err == ""
    # one request; `stats` then asks for the kernel engine's drops and the queriers' counters (this fake answers
    # them with Stats: not shown)
    assert len(fake.requests) == (3 if argv == ["stats"] else 1) and fake.requests[0].endswith(b"\n")


@pytest.mark.parametrize(("argv", "answer", "shown"), ANSWERS, ids=[" ".join(a[0][:2]) for a in ANSWERS])
def test_json_output_is_the_raw_document(
    argv: list[str], answer: object, shown: list[str], serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = serve(json.dumps(answer, separators=(",", ":")).encode())
    assert main([*argv, "--json", "--socket-path", str(fake.path)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert out == json.dumps(answer, indent=2) + "\n"


def test_json_output_keeps_fields_the_client_does_not_know(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    answer = {"Version": {"version": "0.2.0", "protocol_version": 2, "build": "abc", "features": ["top"]}}
    fake = serve(doc(answer))
    assert main(["--json", "--socket-path", str(fake.path), "version"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out) == answer


def test_sends_the_encoded_request_and_half_closes(serve: Serve) -> None:
    fake = serve(doc({"Success": "Rule r1 added"}))
    argv = ["add", "--input-interface", "eth0", "--input-group", "239.1.1.1", "--input-port", "5000",
            "--outputs", "239.2.2.2:6000:eth1", "--rule-id", "r1", "--socket-path", str(fake.path)]  # fmt: skip
    assert main(argv) == ExitCode.OK
    # The fake read to EOF, so the client half-closed; the bytes are the codec's.
    assert json.loads(fake.requests[0]) == {
        "AddRule": {
            "rule_id": "r1",
            "input_interface": "eth0",
            "input_group": "239.1.1.1",
            "input_port": 5000,
            "outputs": [{"group": "239.2.2.2", "port": 6000, "interface": "eth1"}],
        }
    }


def test_error_response_exits_1_with_the_text_on_stderr(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    fake = serve(doc({"Error": "Rule r9 not found"}))
    assert main(["--socket-path", str(fake.path), "remove", "--rule-id", "r9"]) == ExitCode.ERROR_RESPONSE
    captured = capsys.readouterr()
    assert captured.err == "error: Rule r9 not found\n"
    assert captured.out == ""


def test_error_response_with_json_prints_the_document_and_exits_1(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = serve(doc({"Error": "input_port cannot be 0; valid port range is 1-65535"}))
    argv = ["--json", "--socket-path", str(fake.path), "add", "--input-interface", "eth0",
            "--input-group", "239.1.1.1", "--input-port", "0"]  # fmt: skip
    assert main(argv) == ExitCode.ERROR_RESPONSE
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"Error": "input_port cannot be 0; valid port range is 1-65535"}
    assert captured.err == "error: input_port cannot be 0; valid port range is 1-65535\n"


def test_environment_chooses_the_socket(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = serve(doc({"Success": "pong"}))
    monkeypatch.setenv("MCR_CONTROL_SOCKET", str(fake.path))
    assert main(["ping"]) == ExitCode.OK
    assert capsys.readouterr().out == "pong\n"
    # The flag beats the environment.
    assert main(["ping", "--socket-path", str(fake.path.with_name("absent.sock"))]) == ExitCode.UNREACHABLE
    assert fake.connections == 1


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (None, "the supervisor closed the connection without answering"),
        (b"\n", "the supervisor closed the connection without answering"),
        (b"<html>teapot</html>", "the supervisor's response is not valid JSON"),
        (b'{"Success": "Rule r1 a', "the supervisor's response is not valid JSON"),
        (b"\xff\xfe", "the supervisor's response is not valid JSON"),
        (b'{"Hello": "there"}', "unknown response type 'Hello'"),
        (b'{"Success": 5}', "Success response must carry a string"),
        (b'{"Rules": [{"rule_id": "r1"}]}', "malformed rule in response"),
        (b"[]", "response must be a JSON object"),
    ],
)
def test_unusable_answers_exit_3(
    answer: bytes | None, message: str, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = serve(answer)
    assert main(["--socket-path", str(fake.path), "list"]) == ExitCode.UNREACHABLE
    err = capsys.readouterr().err
    assert f"malformed answer from the supervisor at {fake.path}" in err
    assert message in err


def test_unusable_answer_with_json_prints_nothing_on_stdout(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    fake = serve(b"garbage")
    assert main(["--json", "--socket-path", str(fake.path), "ping"]) == ExitCode.UNREACHABLE
    assert capsys.readouterr().out == ""


def test_silent_supervisor_times_out_exit_3(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    fake = serve(HOLD)
    started = time.monotonic()
    assert main(["--socket-path", str(fake.path), "--timeout", "0.2", "stats"]) == ExitCode.UNREACHABLE
    assert time.monotonic() - started < 3
    err = capsys.readouterr().err
    assert f"timed out after 0.2 s waiting for an answer from the supervisor at {fake.path}" in err


def test_missing_socket_names_the_path_and_the_knobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nothing-here.sock"
    assert main(["--socket-path", str(path), "ping"]) == ExitCode.UNREACHABLE
    err = capsys.readouterr().err
    assert f"control socket {path} does not exist" in err
    assert "--socket-path" in err and "MCR_CONTROL_SOCKET" in err


def test_stale_socket_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(path))  # bound but not listening: what a crashed supervisor leaves behind
        assert main(["--socket-path", str(path), "ping"]) == ExitCode.UNREACHABLE
    assert f"nothing is listening on {path}" in capsys.readouterr().err


def test_regular_file_is_not_a_supervisor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plain-file"
    path.write_text("")
    assert main(["--socket-path", str(path), "ping"]) == ExitCode.UNREACHABLE
    assert str(path) in capsys.readouterr().err


def test_permission_denied_is_explained() -> None:
    message = str(connect_error("/run/mcr/control.sock", PermissionError(errno.EACCES, "Permission denied")))
    assert "permission denied on /run/mcr/control.sock" in message
    assert "--control-group" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file permissions")
def test_permission_denied_on_a_real_socket(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    fake = serve(doc({"Success": "pong"}))
    fake.path.chmod(0)
    assert main(["--socket-path", str(fake.path), "ping"]) == ExitCode.UNREACHABLE
    assert f"permission denied on {fake.path}" in capsys.readouterr().err


def test_usage_errors_never_connect(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    fake = serve(doc({"Success": "Rule r1 added"}))
    argv = ["--socket-path", str(fake.path), "add", "--input-interface", "eth0", "--input-group", "239.1.1.1",
            "--input-port", "5000", "--outputs", "239.2.2.2:6000"]  # fmt: skip
    assert main(argv) == ExitCode.USAGE
    assert main(["--socket-path", str(fake.path), "log-level", "set", "--global", "loud"]) == ExitCode.USAGE
    assert main(["--socket-path", str(fake.path), "log-level", "set"]) == ExitCode.USAGE
    # The fake serves connections in order, so once this answer is back, any earlier one was recorded.
    assert main(["--socket-path", str(fake.path), "ping"]) == ExitCode.OK
    assert fake.requests == [b'"Ping"\n']
    capsys.readouterr()


def test_response_size_is_capped(serve: Serve) -> None:
    fake = serve(doc({"Success": "x" * 1000}))
    with pytest.raises(ProtocolError, match="exceeds the limit of 100 bytes"):
        exchange(str(fake.path), b'"Ping"\n', timeout_s=5, limit=100)


def test_exchange_returns_the_whole_answer(serve: Serve) -> None:
    big = doc({"Success": "y" * 300_000})
    fake = serve(big)
    assert exchange(str(fake.path), b'"Ping"\n', timeout_s=5) == big
    assert fake.requests == [b'"Ping"\n']


KERNEL = {
    "loaded": True,
    "mode": "auto",
    "reason": "",
    "instructions": 1830,
    "interfaces": ["eth0"],
    "rules": 3,
    "max_rules": 1000,
    "max_outputs": 64,
    "drops": {"fragment": 2, "no_rule": 0},
}


def test_stats_shows_the_kernel_engines_drops(
    fake_supervisor: Callable[[Respond], FakeSupervisor], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = fake_supervisor(by_command({"GetStats": {"Stats": [FLOW]}, "GetKernelStatus": {"KernelStatus": KERNEL}}))
    assert main(["--socket-path", str(fake.path), "stats"]) == ExitCode.OK
    assert "kernel engine drops: fragment=2" in capsys.readouterr().out


def test_stats_from_a_supervisor_without_kernel_status_shows_the_flows_only(
    fake_supervisor: Callable[[Respond], FakeSupervisor], capsys: pytest.CaptureFixture[str]
) -> None:
    """The original answers GetKernelStatus with an Error: stats still succeeds, without the kernel line."""
    unknown = {"Error": "unknown variant `GetKernelStatus`"}
    fake = fake_supervisor(by_command({"GetStats": {"Stats": [FLOW]}, "GetKernelStatus": unknown}))
    assert main(["--socket-path", str(fake.path), "stats"]) == ExitCode.OK
    captured = capsys.readouterr()
    assert "r1" in captured.out and "kernel engine" not in captured.out and captured.err == ""


QUERIER = {
    "interface": "eth1",
    "family": "ipv4",
    "protocol": "igmp",
    "active": True,
    "is_querier": True,
    "address": "10.0.0.1",
    "querier": "10.0.0.1",
    "other_querier_expires_in_secs": 0,
    "version": 3,
    "counters": {"queries_sent": 4, "reports_v2": 1, "reports_v3": 6, "leaves": 2, "dropped_bad_checksum": 3},
}


def test_stats_shows_each_queriers_counters(
    fake_supervisor: Callable[[Respond], FakeSupervisor], capsys: pytest.CaptureFixture[str]
) -> None:
    idle = {**QUERIER, "interface": "eth2", "family": "ipv6", "protocol": "mld", "counters": {"reports_v2": 0}}
    fake = fake_supervisor(by_command({"GetStats": {"Stats": [FLOW]}, "GetQueriers": {"Queriers": [QUERIER, idle]}}))
    assert main(["--socket-path", str(fake.path), "stats"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "IGMP counters on eth1: dropped_bad_checksum=3, leaves=2, queries_sent=4, reports_v2=1, reports_v3=6" in out
    assert "MLD counters on eth2: none" in out


def test_stats_json_stays_the_originals_shape(
    fake_supervisor: Callable[[Respond], FakeSupervisor], capsys: pytest.CaptureFixture[str]
) -> None:
    """`stats --json` prints the GetStats answer as it is (the counters are in `igmp queriers --json`)."""
    fake = fake_supervisor(by_command({"GetStats": {"Stats": [FLOW]}, "GetQueriers": {"Queriers": [QUERIER]}}))
    assert main(["--socket-path", str(fake.path), "stats", "--json"]) == ExitCode.OK
    assert list(json.loads(capsys.readouterr().out)) == ["Stats"]


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        (KERNEL, ["yes (1830 instructions", "3 of 1000", "eth0", "fragment=2"]),
        ({"loaded": False, "mode": "auto", "reason": "permission denied (need CAP_BPF)"}, ["no", "need CAP_BPF"]),
    ],
)
def test_kernel_command(status: object, shown: list[str], serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    fake = serve(doc({"KernelStatus": status}))
    assert main(["--socket-path", str(fake.path), "kernel"]) == ExitCode.OK
    out = capsys.readouterr().out
    for piece in shown:
        assert piece in out
    assert fake.requests == [b'"GetKernelStatus"\n']


def _by_name(answers: dict[str, object]) -> Callable[[bytes], bytes]:
    """Answer by command name, bare or struct ({"AddRule": {...}} -> "AddRule")."""

    def respond(request: bytes) -> bytes:
        doc = json.loads(request)
        name = doc if isinstance(doc, str) else next(iter(doc))
        return json.dumps(answers.get(name, {"Error": f"unknown command '{name}'"})).encode() + b"\n"

    return respond


@pytest.mark.parametrize(
    ("version", "why"),
    [
        ({"Version": {"protocol_version": 1}}, "it says implementation 'unknown'"),  # today's original
        ({"Error": "unknown command"}, "it answers GetVersion with: unknown command"),
    ],
)
def test_a_source_or_limit_is_not_sent_to_an_original_that_would_ignore_it(
    version: object, why: str, fake_supervisor: Callable[[Respond], FakeSupervisor], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = fake_supervisor(_by_name({"GetVersion": version, "AddRule": {"Success": "Rule x added"}}))
    argv = ["--socket-path", str(fake.path), "add", "--input-interface", "eth0", "--input-group", "232.1.1.1",
            "--input-port", "5000", "--outputs", "239.2.2.2:6000:eth1", "--input-source", "10.0.0.1",
            "--rate-limit", "10kpps"]  # fmt: skip
    assert main(argv) == ExitCode.ERROR_RESPONSE
    err = capsys.readouterr().err
    assert why in err and "would ignore --input-source and --rate-limit" in err and "not sent" in err, err
    assert [json.loads(r) for r in fake.requests] == ["GetVersion"]
    info = {"version": "0.1.0", "protocol_version": 1, "implementation": "mcr-python"}
    ours = fake_supervisor(_by_name({"GetVersion": {"Version": info}, "AddRule": {"Success": "Rule x added"}}))
    argv[1] = str(ours.path)
    assert main(argv) == ExitCode.OK
    assert [next(iter(json.loads(r))) if r.startswith(b"{") else json.loads(r) for r in ours.requests] == [
        "GetVersion",
        "AddRule",
    ]
    plain = fake_supervisor(_by_name({"AddRule": {"Success": "Rule x added"}}))
    assert main(["--socket-path", str(plain.path), *argv[2:-4]]) == ExitCode.OK  # no source, no limit: no question
    assert len(plain.requests) == 1
