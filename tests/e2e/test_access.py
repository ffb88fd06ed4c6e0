"""Access to the control socket and the supervisor's limits, against the real supervisor.

Clients of other users run as throwaway ids through `setpriv` (no capabilities); everything lives in
the test's namespaces and temporary directories.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcr.lab import Lab
from tests.e2e.harness import Relay, exchange_as, mcr, raw_exchange, read_state, wait_for

STRANGER = 4242  # a user in no group the supervisor knows
READER = 4343  # the read-only group
WRITER = 4444  # the control group
ADD = (
    b'{"AddRule": {"rule_id": "ro", "input_interface": "rin", "input_group": "239.1.1.1", "input_port": 5000,'
    b' "outputs": [{"group": "239.2.2.2", "port": 6000, "interface": "rout"}]}}'
)


def start_refused(lab: Lab, socket_path: Path, *extra: str) -> str:
    """Start a supervisor that must refuse to start; returns its stderr."""
    argv = mcr("supervisor", "--control-socket-path", str(socket_path), "--num-workers", "1", "--engine", "userspace")
    result = subprocess.run(lab.exec_argv(lab.relay, [*argv, *extra]), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    return result.stderr


@pytest.fixture
def run_dir(workdir: Path) -> Path:
    path = workdir / "run"
    path.mkdir(mode=0o750)
    return path


def test_symlink_at_the_socket_path_is_never_followed(lab: Lab, workdir: Path, run_dir: Path) -> None:
    target = workdir / "precious"
    target.write_text("keep me\n")
    link = run_dir / "control.sock"
    link.symlink_to(target)
    assert f"control socket path {link} is a symbolic link; refusing to follow or replace it" in start_refused(
        lab, link
    )
    assert link.is_symlink() and target.read_text() == "keep me\n"


def test_regular_file_at_the_socket_path_is_kept(lab: Lab, run_dir: Path) -> None:
    path = run_dir / "control.sock"
    path.write_text("not a socket\n")
    assert f"control socket path {path} exists and is not a socket; refusing to replace it" in start_refused(lab, path)
    assert path.read_text() == "not a socket\n"


def test_live_socket_of_another_process_is_kept(lab: Lab, run_dir: Path) -> None:
    path = run_dir / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen(1)
        assert f"another process is already listening on {path}" in start_refused(lab, path)
        os.chown(path, STRANGER, STRANGER)
        assert f"{path} is a socket owned by uid {STRANGER}, not by us" in start_refused(lab, path)
    assert path.exists()


def test_own_stale_socket_is_replaced(lab: Lab, workdir: Path, run_dir: Path) -> None:
    path = run_dir / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
        crashed.bind(str(path))  # closed without unlinking: what a crash leaves
    relay = Relay(lab, workdir, extra=["--engine", "userspace"]).start()
    try:
        assert "removed the stale control socket" in relay.log()
    finally:
        relay.stop()
    assert not path.exists()  # removed at stop


@pytest.mark.parametrize(
    ("owner", "mode", "message"),
    [
        (STRANGER, 0o750, f"is owned by uid {STRANGER}, not by root or the supervisor's user"),
        (0, 0o770, "is writable by its group or others (mode 0770)"),
        (0, 0o1777, "is writable by its group or others (mode 1777)"),
    ],
    ids=["other-owner", "group-writable", "world-writable-sticky"],
)
def test_unsafe_socket_directory_is_refused(lab: Lab, run_dir: Path, owner: int, mode: int, message: str) -> None:
    os.chown(run_dir, owner, owner)
    run_dir.chmod(mode)
    stderr = start_refused(lab, run_dir / "control.sock")
    assert f"control socket directory {run_dir} {message}" in stderr
    assert list(run_dir.iterdir()) == []


def test_dangling_link_as_the_socket_directory_is_refused(lab: Lab, workdir: Path) -> None:
    link = workdir / "run"
    link.symlink_to(workdir / "nowhere")
    stderr = start_refused(lab, link / "control.sock")
    assert f"cannot create the control socket directory {link}: File exists" in stderr
    assert not (workdir / "nowhere").exists()


@pytest.fixture
def shared_relay(lab: Lab, public_workdir: Path) -> Iterator[Relay]:
    relay = Relay(
        lab,
        public_workdir,
        extra=["--engine", "userspace", "--control-group", str(WRITER), "--read-only-group", str(READER)],
    ).start()
    yield relay
    relay.stop()


def test_read_only_group_may_look_but_not_change(shared_relay: Relay) -> None:
    relay = shared_relay
    path = Path(relay.socket_path)
    assert oct(path.parent.stat().st_mode & 0o777) == "0o755" and oct(path.stat().st_mode & 0o777) == "0o666"
    relay.add("keep", "239.2.2.3:6001:rout", group="239.9.9.9", port=9)
    for payload, key in [
        (b'"ListRules"', "Rules"),
        (b'"GetStats"', "Stats"),
        (b'"Ping"', "Success"),
        (b'"GetVersion"', "Version"),
        (b'"ListWorkers"', "Workers"),
        (b'"GetLogLevels"', "LogLevels"),
        (b'"GetConfig"', "Config"),
    ]:
        reply = json.loads(exchange_as(STRANGER, STRANGER, (READER,), relay.socket_path, payload))
        assert key in reply, reply
    listed = json.loads(exchange_as(STRANGER, READER, (), relay.socket_path))  # as the primary group too
    assert [r["rule_id"] for r in listed["Rules"]] == ["keep"]
    for payload, name in [
        (ADD, "AddRule"),
        (b'{"RemoveRule": {"rule_id": "keep"}}', "RemoveRule"),
        (b'{"SetGlobalLogLevel": {"level": "debug"}}', "SetGlobalLogLevel"),
    ]:
        reply = json.loads(exchange_as(STRANGER, STRANGER, (READER,), relay.socket_path, payload))
        assert reply == {
            "Error": f"permission denied: uid {STRANGER} has read-only access (group '{READER}'); {name} is "
            f"reserved to root, the supervisor's user or members of the control group '{WRITER}'"
        }
    # a member of the control group may change things through the same socket
    added = json.loads(exchange_as(STRANGER, STRANGER, (WRITER,), relay.socket_path, ADD))
    assert added == {"Success": "Rule ro added"}
    assert [r["rule_id"] for r in relay.rules()] == ["keep", "ro"]
    assert relay.json("log-level", "get")["LogLevels"]["global"] == "Info"


def test_other_users_are_refused_even_on_an_open_socket(shared_relay: Relay) -> None:
    relay = shared_relay
    for payload in (b'"ListRules"', ADD):
        reply = json.loads(exchange_as(STRANGER, STRANGER, (), relay.socket_path, payload))
        assert reply["Error"] == (
            f"permission denied: uid {STRANGER} is not root, the supervisor's user or members of the control "
            f"group '{WRITER}' or the read-only group '{READER}'"
        )
    assert relay.rules() == []
    assert "refused control client pid" in relay.log()


def test_silent_strangers_take_no_slot(lab: Lab, public_workdir: Path) -> None:
    """A stranger is answered as soon as it connects: with one slot and 30 s per connection, a
    silent stranger would otherwise hold the only slot for 30 s and then get 'timed out'."""
    relay = Relay(
        lab,
        public_workdir,
        extra=[
            "--engine", "userspace", "--read-only-group", str(READER),
            "--max-connections", "1", "--max-connection-seconds", "30",
        ],
    ).start()  # fmt: skip
    try:
        for _ in range(3):
            reply = json.loads(exchange_as(STRANGER, STRANGER, (), relay.socket_path, b""))
            assert reply["Error"].startswith(f"permission denied: uid {STRANGER} is not root")
        assert json.loads(raw_exchange(relay.socket_path, b'"Ping"'))["Success"].startswith("pong")
    finally:
        relay.stop()


CONFIG_RULE = '[[rule]]\nid = "{id}"\ninput_interface = "rin"\ninput_group = "239.1.1.1"\ninput_port = {port}\n'

LIMITS = [
    "--max-rules",
    "2",
    "--max-outputs-per-rule",
    "2",
    "--max-total-outputs",
    "3",
    "--max-request-bytes",
    "600",
    "--max-connection-seconds",
    "1",
]


def test_each_limit_names_itself(lab: Lab, workdir: Path) -> None:
    relay = Relay(lab, workdir, extra=["--engine", "userspace", *LIMITS]).start()
    try:
        relay.add("r1", "239.2.2.2:6000:rout,239.2.2.2:6001:rout", port=5001)
        for rule_id, outputs, port, message in [
            (
                "r2",
                "239.2.2.2:6002:rout,239.2.2.2:6003:rout,239.2.2.2:6004:rout",
                5002,
                "Rule rejected: 3 outputs exceed the per-rule output limit (max_outputs_per_rule = 2)",
            ),
            (
                "r2",
                "239.2.2.2:6002:rout,239.2.2.2:6003:rout",
                5002,
                "Rule rejected: 4 outputs in all would exceed the total output limit (max_total_outputs = 3)",
            ),
        ]:
            refused = relay.add(rule_id, outputs, port=port, check=False)
            assert refused.returncode == 1 and message in refused.stderr, refused.stderr
        relay.add("r2", "239.2.2.2:6002:rout", port=5002)
        refused = relay.add("r3", "239.2.2.2:6003:rout", port=5003, check=False)
        assert refused.returncode == 1 and "Rule rejected: rule limit reached (max_rules = 2)" in refused.stderr
        assert [r["rule_id"] for r in relay.rules()] == ["r1", "r2"]
        big = json.loads(raw_exchange(relay.socket_path, b" " * 601 + b'"Ping"'))
        assert big == {"Error": "request exceeds the size limit (max_request_bytes = 600)"}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
            silent.settimeout(10)
            silent.connect(relay.socket_path)
            assert json.loads(raw_exchange(relay.socket_path, b'"Ping"'))["Success"]  # served meanwhile
            assert json.loads(silent.recv(65536)) == {
                "Error": "timed out waiting for a complete request (max_connection_seconds = 1)"
            }
    finally:
        relay.stop()


def test_connection_cap_refuses_the_extra_client_and_serves_again(lab: Lab, workdir: Path) -> None:
    cap = 3
    relay = Relay(
        lab, workdir, extra=["--engine", "userspace", "--max-connections", str(cap), "--max-connection-seconds", "20"]
    ).start()
    silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(cap)]
    try:
        for s in silent:
            s.settimeout(10)
            s.connect(relay.socket_path)
        extra = wait_for(
            lambda: (r := json.loads(raw_exchange(relay.socket_path, b'"Ping"'))).get("Error") and r,
            10,
            what="the silent clients to hold every slot",
        )
        assert extra == {"Error": f"too many concurrent control connections (max_connections = {cap})"}
        for s in silent:
            s.shutdown(socket.SHUT_WR)  # an empty request: each gets its answer and frees its slot
            assert "empty request" in json.loads(s.recv(65536))["Error"]
        assert json.loads(raw_exchange(relay.socket_path, b'"Ping"'))["Success"].startswith("pong")
    finally:
        for s in silent:
            s.close()
        relay.stop()


def test_state_over_a_lowered_limit_is_kept_and_new_rules_refused(lab: Lab, workdir: Path) -> None:
    state = workdir / "rules.json"
    relay = Relay(lab, workdir, extra=["--engine", "userspace", "--state-file", str(state)]).start()
    try:
        for i in range(3):
            relay.add(f"r{i}", f"239.2.2.2:{6000 + i}:rout", port=5000 + i)
    finally:
        relay.stop()
    relay = Relay(lab, workdir, extra=["--engine", "userspace", "--state-file", str(state), "--max-rules", "2"])
    relay.start()
    try:
        assert [r["rule_id"] for r in relay.rules()] == ["r0", "r1", "r2"]
        assert "the restored rules are over the limits: 3 rules (max_rules = 2); all are kept" in relay.log()
        refused = relay.add("r9", "239.2.2.2:6009:rout", port=5009, check=False)
        assert "Rule rejected: rule limit reached (max_rules = 2)" in refused.stderr
        assert read_state(state) == ["r0", "r1", "r2"]
        relay.ctl("remove", "--rule-id", "r0")
        relay.ctl("remove", "--rule-id", "r1")
        relay.add("r9", "239.2.2.2:6009:rout", port=5009)  # under the limit again
        assert [r["rule_id"] for r in relay.rules()] == ["r2", "r9"]
    finally:
        relay.stop()


def test_reload_over_a_limit_changes_nothing_and_says_why(lab: Lab, workdir: Path) -> None:
    config = workdir / "mcr.toml"
    config.write_text(CONFIG_RULE.format(id="c1", port=5001))
    relay = Relay(lab, workdir, extra=["--engine", "userspace", "--config", str(config), "--max-rules", "2"]).start()
    try:
        relay.add("rt", "239.2.2.2:6000:rout", port=5009)
        config.write_text(CONFIG_RULE.format(id="c1", port=5001) + CONFIG_RULE.format(id="c2", port=5002))
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "refused, nothing changed" in relay.log(), 10, what="the reload refusal")
        assert "rule 'c2': Rule rejected: rule limit reached (max_rules = 2)" in relay.log()
        assert [r["rule_id"] for r in relay.rules()] == ["c1", "rt"]
    finally:
        relay.stop()


def test_config_rules_over_a_limit_set_by_flag_stop_the_start(lab: Lab, workdir: Path) -> None:
    config = workdir / "mcr.toml"
    config.write_text(CONFIG_RULE.format(id="c1", port=5001) + CONFIG_RULE.format(id="c2", port=5002))
    stderr = start_refused(lab, workdir / "run" / "control.sock", "--config", str(config), "--max-rules", "1")
    assert f"{config}: rule 'c2': Rule rejected: rule limit reached (max_rules = 1)" in stderr
