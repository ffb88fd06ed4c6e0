"""The control socket against the real supervisor: access control, the original's framing, bad input."""

from __future__ import annotations

import json
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .netns import Chain, NetLab
from .relay import PROBES, Supervisor, exchange

pytestmark = pytest.mark.netns

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by `nobody`, unlike an interpreter under /root
DROP_REASONS = {"fragment", "not_udp", "truncated", "bad_ip_header", "bad_udp_length", "not_ipv4", "no_rule"}
ADD_R1 = {
    "AddRule": {
        "rule_id": "r1",
        "input_interface": "rin",
        "input_group": "239.1.1.1",
        "input_port": 5000,
        "outputs": [{"group": "239.2.2.2", "port": 6000, "interface": "rout"}],
    }
}


def _as_nobody(lab: NetLab, socket_path: Path, request: bytes) -> dict[str, Any]:
    """Send `request` (half-close framing) from a process running as nobody/nogroup with no groups."""
    if not Path(SYSTEM_PYTHON).exists() or shutil.which("setpriv") is None:
        pytest.skip("needs /usr/bin/python3 and setpriv to run a client as nobody")
    scratch = lab.track_dir(Path(tempfile.mkdtemp(prefix="mcr-e2e-nobody-")))
    scratch.chmod(0o755)
    script = scratch / "probes.py"
    shutil.copyfile(PROBES, script)
    req = scratch / "request.json"
    req.write_bytes(request)
    for f in (script, req):
        f.chmod(0o644)
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SYSTEM_PYTHON, str(script)]
    argv += ["client", "--socket", str(socket_path), "--request-file", str(req), "--timeout", "10"]
    return dict(json.loads(lab.run(None, *argv, timeout=30).stdout))


@pytest.mark.timeout(60)
def test_unauthorized_client_is_refused(chain: Chain) -> None:
    lab = chain.lab
    sup = Supervisor.start(lab, chain.relay)
    sock_dir = sup.socket_path.parent
    assert stat.S_IMODE(sock_dir.stat().st_mode) == 0o750
    assert stat.S_IMODE(sup.socket_path.stat().st_mode) == 0o660
    # default permissions: nobody cannot even reach the socket
    denied = _as_nobody(lab, sup.socket_path, b'"ListRules"')
    assert denied["connected"] is False and denied.get("errno") == 13, denied
    # open the file permissions: the supervisor itself must refuse (SO_PEERCRED), naming permission
    sock_dir.chmod(0o755)
    sup.socket_path.chmod(0o666)
    for request in (b'"ListRules"', json.dumps(ADD_R1).encode()):
        refused = _as_nobody(lab, sup.socket_path, request)
        assert refused["connected"] is True, refused
        answer = json.loads(refused["response"])
        assert set(answer) == {"Error"}, answer
        assert re.search(r"permission|not (allowed|authori[sz]ed)|denied", answer["Error"], re.I), answer
    assert sup.rules() == [], "a refused client changed the rule table"
    assert sup.request("Ping").keys() == {"Success"}, "root is still served"


@pytest.mark.timeout(60)
def test_original_framing_and_response_shapes(chain: Chain) -> None:
    """The original's clients: one JSON document, half-close, no newline; answers in the original's shapes."""
    sup = Supervisor.start(chain.lab, chain.relay)
    path = str(sup.socket_path)

    def original(doc: object) -> Any:
        raw = exchange(path, json.dumps(doc).encode(), half_close=True)
        assert raw.endswith(b"\n") and raw.count(b"\n") == 1, raw
        return json.loads(raw)

    assert original("ListRules") == {"Rules": []}
    assert original(ADD_R1) == {"Success": "Rule r1 added"}
    (rule,) = original("ListRules")["Rules"]
    assert {k: rule[k] for k in ("rule_id", "input_interface", "input_group", "input_port")} == {
        "rule_id": "r1",
        "input_interface": "rin",
        "input_group": "239.1.1.1",
        "input_port": 5000,
    }
    # the output as both originals encode it: no ttl named, none sent (the supervisor's multicast_ttl applies)
    assert rule["outputs"] == [{"group": "239.2.2.2", "port": 6000, "interface": "rout"}]
    assert {"engine", "state", "state_reason"} <= rule.keys()
    # today's original's fields: its protocol, and `source` as one of its variants (ours is `origin`)
    assert (rule["input_protocol"], rule["source"], rule["origin"]) == (17, "Dynamic", "runtime")
    (worker,) = original("ListWorkers")["Workers"]
    assert worker["worker_type"] == "DataPlane" and isinstance(worker["pid"], int)
    for key in ("worker_id", "status", "uid", "restarts", "drops", "kernel_packets", "kernel_drops"):
        assert key in worker, key
    assert (worker["status"], worker["state"], worker["interface"]) == ("Running", "Running", None)
    stats = original("GetStats")["Stats"]
    for entry in stats:
        for key in ("rule_id", "input_group", "input_port", "packets_relayed", "bytes_relayed",
                    "packets_per_second", "bits_per_second", "outputs", "drops"):  # fmt: skip
            assert key in entry, key
    version = original("GetVersion")["Version"]
    assert isinstance(version["version"], str) and isinstance(version["protocol_version"], int)
    assert original("Ping").keys() == {"Success"}
    assert original("GetLogLevels") == {"LogLevels": {"global": "Info", "facility_overrides": {}}}
    # newline framing, connection left open: answered too
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(b'"Ping"\n')
        assert json.loads(s.recv(65536)).keys() == {"Success"}
    assert original({"RemoveRule": {"rule_id": "r1"}}) == {"Success": "Rule r1 removed"}
    missing = original({"RemoveRule": {"rule_id": "r1"}})
    assert set(missing) == {"Error"} and "r1" in missing["Error"], missing
    assert original("ListRules") == {"Rules": []}
    # every drop reason is listed, zeros included, once the worker has pushed its counters (once a second)
    time.sleep(1.5)
    (worker,) = original("ListWorkers")["Workers"]
    assert set(worker["drops"]) >= DROP_REASONS, f"ListWorkers drops lacks reasons: {worker['drops']}"


# (request bytes, pattern the error must match)
BAD_REQUESTS: list[tuple[bytes, str]] = [
    (b"{not json", r"JSON"),
    (b'"\xff\xfe"', r"UTF-?8"),
    (b'"Frobnicate"', r"Frobnicate"),
    (b'{"Frobnicate": {}}', r"Frobnicate"),
    (b"", r"empty|no request|nothing"),
    (b"[1, 2]", r"array|string or object|command"),
    (b'{"RemoveRule": {"rule_id": 7}}', r"rule_id"),
    (b'{"AddRule": {"input_interface": "rin", "input_group": "239.1.1.1", "input_port": "5000", "outputs": []}}',
     r"input_port"),
    (b'{"AddRule": {"input_interface": "rin", "input_group": "239.1.1.1", "input_port": 5000, "outputs": 3}}',
     r"outputs"),
    (b'{"AddRule": {"input_interface": "rin", "input_group": "not-an-ip", "input_port": 5000, "outputs": []}}',
     r"input_group|not-an-ip"),
    (b'{"SetGlobalLogLevel": {"level": "Loud"}}', r"Loud|level"),
]  # fmt: skip


@pytest.mark.timeout(90)
def test_bad_control_input_gets_precise_errors(chain: Chain) -> None:
    sup = Supervisor.start(chain.lab, chain.relay)
    path = str(sup.socket_path)
    failures = []
    for request, pattern in BAD_REQUESTS:
        raw = exchange(path, request)
        try:
            answer = json.loads(raw)
        except ValueError:
            failures.append(f"{request[:60]!r}: answer is not JSON: {raw[:200]!r}")
            continue
        if set(answer) != {"Error"} or not re.search(pattern, answer["Error"], re.I):
            failures.append(f"{request[:60]!r}: expected an Error matching {pattern!r}, got {answer}")
    # over 1 MiB: refused with an error that names the limit, even while we are still sending
    oversize = b'"' + b"a" * ((1 << 20) + 100) + b'"'
    raw = exchange(path, oversize, timeout=15)
    if not re.search(rb'"Error".*(limit|exceed|too (large|big)|1048576)', raw, re.I):
        failures.append(f"oversize request: {raw[:300]!r}")
    assert not failures, "\n".join(failures)
    assert sup.rules() == [] and sup.request("Ping").keys() == {"Success"}


@pytest.mark.timeout(60)
def test_silent_client_is_timed_out_while_others_are_served(chain: Chain) -> None:
    sup = Supervisor.start(chain.lab, chain.relay)
    path = str(sup.socket_path)
    results: dict[str, Any] = {}

    def silent(name: str, first: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(path)
            if first:
                s.sendall(first)  # a partial request, then nothing (no newline, no half-close)
            t0 = time.monotonic()
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except (TimeoutError, ConnectionResetError) as e:
                results[name] = ("stuck", repr(e), time.monotonic() - t0)
                return
            results[name] = (data, time.monotonic() - t0)

    threads = [
        threading.Thread(target=silent, args=("silent", b"")),
        threading.Thread(target=silent, args=("partial", b'{"AddRule": {"rule_id": ')),
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)  # both connections are open and idle
        for _ in range(3):
            t0 = time.monotonic()
            assert sup.request("Ping", timeout=5).keys() == {"Success"}
            assert time.monotonic() - t0 < 1.0, "a silent client stalls the others"
        assert sup.ctl("list").doc == {"Rules": []}
    finally:
        for t in threads:
            t.join(timeout=35)
    for name in ("silent", "partial"):
        result = results[name]
        assert result[0] != "stuck", f"{name} client never timed out: {result}"
        data, took = result
        assert took <= 15.0, f"{name} client was held {took:.1f} s"
        if data:
            answer = json.loads(data)
            assert set(answer) == {"Error"} and re.search(r"time", answer["Error"], re.I), answer
    assert sup.rules() == []


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_control_client_commands_and_exit_status(chain: Chain) -> None:
    sup = Supervisor.start(chain.lab, chain.relay)
    assert sup.ctl("ping").doc.keys() == {"Success"}
    version = sup.ctl("version").doc["Version"]
    assert version["version"] and isinstance(version["protocol_version"], int)
    sup.add_rule(rule_id="c1", group="239.1.1.1", port=5000, outputs=["239.2.2.2:6000:rout", "239.2.2.3:6001:rout"])
    (rule,) = sup.ctl("list").doc["Rules"]
    assert [o["group"] for o in rule["outputs"]] == ["239.2.2.2", "239.2.2.3"]
    assert [w["worker_type"] for w in sup.ctl("list-workers").doc["Workers"]] == ["DataPlane"]
    assert isinstance(sup.ctl("stats").doc["Stats"], list)
    table = sup.ctl("list", json_out=False)
    assert "c1" in table.stdout and "239.2.2.3" in table.stdout, table.stdout
    levels = sup.ctl("log-level", "get").doc
    assert "LogLevels" in levels
    assert sup.ctl("log-level", "set", "--global", "debug").doc.keys() == {"Success"}
    assert re.search(r"debug", json.dumps(sup.ctl("log-level", "get").doc), re.I)
    # an Error answer: exit non-zero, message on stderr
    err = sup.ctl("remove", "--rule-id", "nope", check=False, json_out=False)
    assert err.returncode != 0 and "nope" in err.stderr, err
    sup.remove_rule("c1")
    assert sup.ctl("list").doc == {"Rules": []}
    # no supervisor at that path: exit non-zero, and say so
    gone = Supervisor(chain.lab, chain.relay, sup.proc, sup.socket_path.with_name("missing.sock"))
    unreachable = gone.ctl("ping", check=False, json_out=False)
    assert unreachable.returncode != 0 and "missing.sock" in unreachable.stderr, unreachable
