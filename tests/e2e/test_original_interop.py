"""Interoperability with today's original MCR (acooks/mcr HEAD fced3ed), its real binaries as partners.

- its `mcrctl` against our supervisor: every command a user of it runs (add with and without id and name,
  list, stats, list-workers, remove by id and by name, config show/load/save/check/control-plane, log
  levels, a control-plane command we do not serve yet), and our supervisor started with its JSON5 file;
- our `control_client` against its `mcrd`.

The binaries are looked up in $MCR_ORIGINAL_BIN (default /tmp/rustmcr/bin); without them every test here
skips, saying so. Nothing here sends traffic: the control sockets are private files, and the original's
supervisor runs inside the relay namespace the test made.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from .netns import Chain, Proc, tool, wait_for
from .relay import Supervisor, socket_dir

ORIGINAL_BIN = Path(os.environ.get("MCR_ORIGINAL_BIN", "/tmp/rustmcr/bin"))

# the original's JSON5 file, as its users write it: comments, unquoted keys, trailing commas
ORIGINAL_CONFIG = """\
// the original MCR's configuration (JSON5)
{
  multicast_ttl: 4,
  rules: [
    {
      name: "static-feed",
      input: { interface: "rin", group: "239.1.1.9", port: 5009 },
      outputs: [ { group: "239.2.2.9", port: 6009, interface: "rout", ttl: 8 }, ],
    },
  ],
  igmp: { querier_interfaces: ["rout"] },
  colour: "blue",
}
"""

LOADED_CONFIG = """\
{
  rules: [
    { name: "loaded-a", input: { interface: "rin", group: "239.1.1.20", port: 5020 },
      outputs: [ { group: "239.2.2.20", port: 6020, interface: "rout" } ] },
    { input: { interface: "rin", group: "239.1.1.21", port: 5021 },
      outputs: [ { group: "239.2.2.21", port: 6021, interface: "rout" } ] },
  ],
}
"""


def original(name: str) -> str:
    path = ORIGINAL_BIN / name
    if not os.access(path, os.X_OK):
        pytest.skip(
            f"the original MCR's {name} is not built at {path} (set MCR_ORIGINAL_BIN to the directory holding "
            "its mcrd and mcrctl, built from acooks/mcr fced3ed)"
        )
    return str(path)


class OriginalClient:
    """The original's `mcrctl`, run from the host against a socket file; it prints the response as JSON."""

    def __init__(self, chain: Chain, socket_path: Path) -> None:
        self.chain = chain
        self.argv = [original("mcrctl"), "--socket-path", str(socket_path)]

    def run(self, *args: str) -> Any:
        r = self.chain.lab.run(None, *self.argv, *args, check=False, timeout=20)
        assert r.returncode == 0, f"mcrctl {' '.join(args)} exited {r.returncode}: {r.stderr} {r.stdout}"
        return json.loads(r.stdout)

    def success(self, *args: str) -> str:
        answer = self.run(*args)
        assert set(answer) == {"Success"}, f"mcrctl {' '.join(args)}: {answer}"
        return str(answer["Success"])


def test_original_mcrctl_against_our_supervisor(chain: Chain, public_workdir: Path) -> None:
    config = public_workdir / "mcr.json5"
    config.write_text(ORIGINAL_CONFIG)
    sup = Supervisor.start(chain.lab, chain.relay, extra=["--config", str(config)])
    ctl = OriginalClient(chain, sup.socket_path)

    assert ctl.run("ping").keys() == {"Success"}
    assert ctl.run("version") == {"Version": {"protocol_version": 1}}
    # add: without an id (mcrctl sends "rule_id": "") and with a name; with an id and no name
    added = ctl.success(
        "add", "--name", "feed-a", "--input-interface", "rin", "--input-group", "239.1.1.1", "--input-port", "5000",
        "--outputs", "239.2.2.2:6000:rout",
    )  # fmt: skip
    assert added.startswith("Rule ") and added.endswith(" added"), added
    generated = added.split()[1]
    assert ctl.success(
        "add", "--rule-id", "r2", "--input-interface", "rin", "--input-group", "239.1.1.2", "--input-port", "5002",
        "--outputs", "239.2.2.3:6000:rout,239.2.2.4:6000:rout",
    ) == "Rule r2 added"  # fmt: skip
    refused = ctl.run(
        "add", "--name", "feed-a", "--input-interface", "rin", "--input-group", "239.1.1.3", "--input-port", "5003",
        "--outputs", "239.2.2.5:6000:rout",
    )  # fmt: skip
    assert "name 'feed-a' is already used" in refused["Error"], refused

    rules = {r["rule_id"]: r for r in ctl.run("list")["Rules"]}
    assert set(rules) == {generated, "r2", next(iter(k for k, r in rules.items() if r.get("name") == "static-feed"))}
    assert rules[generated]["name"] == "feed-a" and rules[generated]["source"] == "Dynamic"
    assert rules[generated]["input_protocol"] == 17
    static = next(r for r in rules.values() if r.get("name") == "static-feed")
    assert static["source"] == "Static" and static["outputs"][0]["ttl"] == 8
    assert [o["group"] for o in rules["r2"]["outputs"]] == ["239.2.2.3", "239.2.2.4"]
    assert ctl.run("list-rules")["Rules"], "list-rules is list"

    stats = ctl.run("stats")["Stats"]
    assert {(s["input_group"], s["input_port"]) for s in stats} >= {("239.1.1.1", 5000), ("239.1.1.2", 5002)}
    assert all(s["input_protocol"] == 17 for s in stats)
    workers = ctl.run("list-workers")["Workers"]
    assert workers and all(w["status"] == "Running" for w in workers), workers
    # a worker that died is listed as restarting, in the shape today's mcrctl decodes
    (pid,) = sup.worker_pids()
    os.kill(pid, signal.SIGKILL)

    def restarting() -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = ctl.run("list-workers")["Workers"]
        return [w for w in listed if isinstance(w["status"], dict)]

    (dead,) = wait_for(restarting, 5, "mcrctl to list the killed worker as restarting", interval=0.02)
    assert set(dead["status"]) == {"Restarting"} and dead["status"]["Restarting"]["backoff_ms"] >= 0, dead
    wait_for(lambda: all(w["status"] == "Running" for w in ctl.run("list-workers")["Workers"]), 10, "the restart")

    assert ctl.success("log-level", "set", "--global", "warning") == "Global log level set to WARNING"
    assert ctl.success("log-level", "set", "--facility", "Ingress", "--level", "debug") == (
        "Log level for Ingress set to DEBUG"
    )
    # a facility the original no longer has (set through our own client) does not break its `get`
    sup.ctl("log-level", "set", "--facility", "ControlPlane", "--level", "debug")
    assert ctl.run("log-level", "get") == {
        "LogLevels": {"global": "Warning", "facility_overrides": {"Ingress": "Debug"}}
    }

    shown = ctl.run("config", "show")["Config"]
    assert shown["multicast_ttl"] == 4
    assert {r["input"]["group"] for r in shown["rules"]} == {"239.1.1.1", "239.1.1.2", "239.1.1.9"}
    assert shown["igmp"]["querier_interfaces"] == ["rout"]
    assert ctl.run("config", "control-plane") == {
        "ControlPlaneConfig": {"rpf_provider": "disabled", "external_neighbors_enabled": True, "event_buffer_size": 256}
    }

    loaded = public_workdir / "loaded.json5"
    loaded.write_text(LOADED_CONFIG)
    assert ctl.run("config", "check", "--file", str(loaded)) == {"ConfigValidation": {"valid": True, "errors": []}}
    bad = public_workdir / "bad.json5"
    bad.write_text('{ rules: [ { input: { interface: "rin", group: "239.1.1.30", port: 0 }, outputs: [] } ] }')
    verdict = ctl.run("config", "check", "--file", str(bad))["ConfigValidation"]
    assert verdict["valid"] is False and "input_port cannot be 0" in verdict["errors"][0], verdict
    assert (
        ctl.success("config", "load", "--file", str(loaded))
        == "Configuration merged (2 rules added, 0 skipped as duplicates)"
    )
    assert (
        ctl.success("config", "load", "--file", str(loaded))
        == "Configuration merged (0 rules added, 2 skipped as duplicates)"
    )
    names = {r.get("name") for r in ctl.run("list")["Rules"]}
    assert {"feed-a", "loaded-a", "static-feed"} <= names

    saved = public_workdir / "saved.json5"
    assert ctl.success("config", "save", "--file", str(saved)) == f"Configuration saved to {saved}"
    # what we save, the original's own client reads as a valid configuration of every rule
    assert ctl.run("config", "check", "--file", str(saved)) == {"ConfigValidation": {"valid": True, "errors": []}}
    assert len(json.loads(saved.read_text())["rules"]) == 5
    # and the original's own supervisor starts from it, with every rule and name
    theirs, their_socket = start_original_supervisor(chain, "--config", str(saved))
    their_rules = OriginalClient(chain, their_socket).run("list")["Rules"]
    assert sorted(r.get("name") or "" for r in their_rules) == ["", "", "feed-a", "loaded-a", "static-feed"]
    assert theirs.poll() is None

    # replace: the runtime rules give way to the file's; the config file's rule stays
    assert ctl.success("config", "load", "--file", str(loaded), "--replace") == (
        "Configuration loaded (3 rules, replaced existing)"
    )
    assert {r.get("name") for r in ctl.run("list")["Rules"]} == {"static-feed", "loaded-a", None}

    assert ctl.success("remove", "--name", "loaded-a").startswith("Removed rule 'loaded-a' (id: ")
    missing = ctl.run("remove", "--name", "loaded-a")
    assert "No rule found with name 'loaded-a'" in missing["Error"], missing
    other = next(r["rule_id"] for r in ctl.run("list")["Rules"] if r.get("name") is None)
    assert ctl.success("remove", "--rule-id", other) == f"Rule {other} removed"
    assert [r.get("name") for r in ctl.run("list")["Rules"]] == ["static-feed"]

    assert ctl.run("igmp", "groups") == {"IgmpGroups": []}  # served (tests/e2e/test_membership.py); none here
    assert ctl.run("pim", "neighbors") == {"PimNeighbors": []}  # served (tests/e2e/test_pim_frr.py); none here
    assert [m["entry_type"] for m in ctl.run("mroute")["Mroute"]] == ["Static"]
    answer = ctl.run("pim", "external-neighbors")  # not served: external neighbours
    assert "PIM" in answer["Error"] and "not implemented" in answer["Error"], answer
    # subscribe never ends its request: answered when the request time runs out, not left hanging
    answer = ctl.run("subscribe")
    assert "timed out waiting for a complete request" in answer["Error"], answer
    assert sup.proc.poll() is None, "the supervisor died"


def start_original_supervisor(chain: Chain, *extra: str) -> tuple[Proc, Path]:
    """The original's mcrd in the relay namespace, on a private socket (stopped with the lab)."""
    mcrd = original("mcrd")
    sock_dir = chain.lab.track_dir(socket_dir())
    sock_dir.mkdir(mode=0o700)
    path = sock_dir / "mcrd.sock"
    argv = [mcrd, "supervisor", "--control-socket-path", str(path), "--num-workers", "1", "--interface", "rin"]
    proc = chain.lab.popen(chain.relay, *argv, *extra, name="mcrd")
    wait_for(lambda: path.exists() or proc.poll() is not None, 20, "the original's mcrd to make its socket")
    assert proc.poll() is None, "the original's mcrd exited at start"
    return proc, path


@pytest.fixture
def original_supervisor(chain: Chain) -> tuple[Proc, Path]:
    return start_original_supervisor(chain)


def test_our_control_client_against_the_original_supervisor(
    chain: Chain, original_supervisor: tuple[Proc, Path], public_workdir: Path
) -> None:
    proc, path = original_supervisor

    def ctl(*args: str, json_out: bool = False) -> str:
        argv = [*tool("control_client"), "--socket-path", str(path), *(["--json"] if json_out else []), *args]
        r = chain.lab.run(None, *argv, check=False, timeout=20)
        assert r.returncode == 0, f"control_client {' '.join(args)} exited {r.returncode}: {r.stderr} {r.stdout}"
        return r.stdout

    wait_for(lambda: chain.lab.run(None, *tool("control_client"), "--socket-path", str(path), "ping",
                                   check=False).returncode == 0, 20, "the original's mcrd to answer ping")  # fmt: skip
    assert "protocol 1" in ctl("version")
    ctl("add", "--name", "ours", "--input-interface", "rin", "--input-group", "239.1.1.1", "--input-port", "5000",
        "--outputs", "239.2.2.2:6000:rout")  # fmt: skip
    ctl("add", "--rule-id", "r2", "--input-interface", "rin", "--input-group", "239.1.1.2", "--input-port", "5002",
        "--outputs", "239.2.2.3:6000:rout")  # fmt: skip
    # a rule the original would install unfiltered is not sent to it
    argv = [
        *tool("control_client"),
        "--socket-path",
        str(path),
        "add",
        "--input-interface",
        "rin",
        "--input-group",
        "232.1.1.1",
        "--input-port",
        "5001",
        "--outputs",
        "239.2.2.4:6000:rout",
        "--input-source",
        "10.200.1.2",
    ]
    refused = chain.lab.run(None, *argv, check=False, timeout=20)
    assert refused.returncode == 1 and "would ignore --input-source" in refused.stderr, refused.stderr
    listed = ctl("list")
    assert "ours" in listed and "r2" in listed and "239.2.2.3:6000:rout" in listed, listed
    loaded = public_workdir / "loaded.json5"
    loaded.write_text(LOADED_CONFIG)
    ctl("config", "load", "--file", str(loaded))  # its rules are Static there: read as config rules
    rules = json.loads(ctl("list", json_out=True))["Rules"]
    assert {r["source"] for r in rules} == {"Dynamic", "Static"}, rules
    shown = ctl("config", "show")
    assert "loaded-a" in shown and "239.1.1.21:5021" in shown, shown
    ctl("stats")
    assert "DataPlane (rin)" in ctl("list-workers")
    ctl("log-level", "set", "--facility", "Ingress", "--level", "debug")
    assert "Ingress" in ctl("log-level", "get")
    ctl("remove", "--name", "ours")
    ctl("remove", "--rule-id", "r2")
    remaining = json.loads(ctl("list", json_out=True))["Rules"]
    assert {r.get("name") for r in remaining} == {"loaded-a", None}, remaining
    assert "232.1.1.1" not in json.dumps(remaining)
    assert proc.poll() is None, "the original's mcrd died"
