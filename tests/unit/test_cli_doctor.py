"""control_client doctor: one fake host per pitfall, the collector on a fake /proc and /sys, and the command."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from rich.console import Console

from mcr.cli import control_client
from mcr.cli.control_client import ExitCode, main
from mcr.cli.doctor import (
    BUFFER_MIN,
    Finding,
    HostFacts,
    InterfaceFacts,
    Offload,
    Severity,
    check_leftovers,
    diagnose,
    findings_json,
    has_problems,
    interfaces_of,
    parse_ethtool_features,
    render_findings,
)
from mcr.cli.host import collect_host_facts, read_pins
from mcr.model.rules import Engine, ForwardingRule, OutputDestination
from mcr.model.status import KernelStatus, RuleState, RuleView, WorkerInfo
from tests.fake_supervisor import FakeSupervisor, Respond, by_command

ETHTOOL_K = """\
Features for eth0:
rx-checksumming: on
tx-checksumming: on
\ttx-checksum-ipv4: off [fixed]
scatter-gather: on
tcp-segmentation-offload: off
generic-segmentation-offload: on
generic-receive-offload: {gro}
large-receive-offload: {lro}
rx-vlan-offload: on [requested off]
rx-gro-hw: off [fixed]
rx-udp-gro-forwarding: off
rx-gro-list: off
"""
OFF = parse_ethtool_features(ETHTOOL_K.format(gro="off", lro="off [fixed]"))


def iface(name: str, mtu: int = 1500, rp: int = 0, offloads: Mapping[str, Offload] | None = OFF) -> InterfaceFacts:
    return InterfaceFacts(name=name, mtu=mtu, rp_filter=rp, offloads=offloads)


def rule(
    rule_id: str = "r1",
    input_interface: str = "eth0",
    group: str = "239.1.1.1",
    outputs: Sequence[tuple[str, int, str, int]] = (("239.2.2.2", 6000, "eth1", 8),),
    state: RuleState = RuleState.ACTIVE,
    reason: str = "",
) -> RuleView:
    outs = tuple(OutputDestination(IPv4Address(g), p, i, t) for g, p, i, t in outputs)
    return RuleView(
        ForwardingRule(rule_id, input_interface, IPv4Address(group), 5000, outs), Engine.USERSPACE, state, reason
    )


def worker(worker_id: int = 0, **kw: object) -> WorkerInfo:
    return WorkerInfo(pid=100 + worker_id, worker_type="DataPlane", core_id=None, worker_id=worker_id, **kw)  # type: ignore[arg-type]


CLEAN = HostFacts(
    rp_filter_all=0,
    rp_filter_default=0,
    igmp_max_memberships=20,
    rmem_max=16 << 20,
    wmem_max=16 << 20,
    interfaces={"eth0": iface("eth0"), "eth1": iface("eth1")},
)
RULES = (rule(),)
WORKERS = (worker(0), worker(1))


def with_iface(facts: HostFacts, changed: InterfaceFacts) -> HostFacts:
    return replace(facts, interfaces={**facts.interfaces, changed.name: changed})


def test_a_clean_host_reports_every_check_ok() -> None:
    findings = diagnose(CLEAN, RULES, WORKERS)
    assert [f.severity for f in findings] == [Severity.OK] * len(findings)
    checks = ["rp_filter", "igmp", "buffers", "buffers", "offloads", "ttl", "mtu", "rules", "workers", "leftovers"]
    assert [f.check for f in findings] == checks
    assert not has_problems(findings)


@dataclass(frozen=True)
class Pitfall:
    """What is planted, and the one non-ok finding it must produce."""

    facts: HostFacts = CLEAN
    rules: Sequence[RuleView] | None = RULES
    workers: Sequence[WorkerInfo] | None = WORKERS
    error: str | None = None
    severity: Severity = Severity.WARNING
    check: str = ""
    title: str = ""
    fix: str = ""
    detail: str = ""


PITFALLS = {
    "rp_filter strict is information": Pitfall(
        facts=with_iface(replace(CLEAN, rp_filter_all=1), iface("eth0", rp=1)),
        severity=Severity.INFO,
        check="rp_filter",
        title="rp_filter strict on input eth0 (all=1, eth0=1)",
        detail="MCR captures at layer 2, before the reverse-path check",
        fix="net.ipv4.conf.eth0.rp_filter=0",
    ),
    "rp_filter loose through conf.all": Pitfall(
        facts=replace(CLEAN, rp_filter_all=2),
        severity=Severity.INFO,
        check="rp_filter",
        title="rp_filter loose on input eth0 (all=2, eth0=0)",
        fix="Nothing to do for MCR",
    ),
    "more groups than igmp_max_memberships": Pitfall(
        rules=tuple(rule(f"r{i}", group=f"239.1.1.{i}") for i in range(1, 26)),
        severity=Severity.INFO,
        check="igmp",
        title="25 input groups on eth0, more than igmp_max_memberships (20) per socket",
        detail="MCR spreads the joins over 2 sockets",
        fix="sysctl -w net.ipv4.igmp_max_memberships=25",
    ),
    "igmp_max_memberships 0": Pitfall(
        facts=replace(CLEAN, igmp_max_memberships=0),
        severity=Severity.ERROR,
        check="igmp",
        title="net.ipv4.igmp_max_memberships is 0: no multicast group can be joined",
        fix="sysctl -w net.ipv4.igmp_max_memberships=20",
    ),
    "rmem_max low": Pitfall(
        facts=replace(CLEAN, rmem_max=212992),
        check="buffers",
        title="net.core.rmem_max is 212992 bytes, below 8 MiB",
        fix=f"sysctl -w net.core.rmem_max={BUFFER_MIN}",
    ),
    "wmem_max low": Pitfall(
        facts=replace(CLEAN, wmem_max=4 << 20),
        check="buffers",
        title="net.core.wmem_max is 4 MiB, below 8 MiB",
        detail="counted as send errors",
        fix="sysctl -w net.core.wmem_max=8388608",
    ),
    "GRO on the input": Pitfall(
        facts=with_iface(CLEAN, iface("eth0", offloads=parse_ethtool_features(ETHTOOL_K.format(gro="on", lro="off")))),
        check="offloads",
        title="generic-receive-offload on for input interface eth0",
        fix="ethtool -K eth0 gro off",
    ),
    "GRO and LRO, LRO fixed": Pitfall(
        facts=with_iface(
            CLEAN, iface("eth0", offloads=parse_ethtool_features(ETHTOOL_K.format(gro="on", lro="on [fixed]")))
        ),
        check="offloads",
        title="generic-receive-offload, large-receive-offload on for input interface eth0",
        fix="ethtool -K eth0 gro off; large-receive-offload cannot be changed on this driver ([fixed])",
    ),
    "GRO on an output only is fine": Pitfall(
        facts=with_iface(CLEAN, iface("eth1", offloads=parse_ethtool_features(ETHTOOL_K.format(gro="on", lro="on")))),
        rules=(rule(outputs=(("239.2.2.2", 6000, "eth1", 1),)),),  # so there is one finding: the TTL
        check="ttl",
        title="rule r1: 1 output sent with TTL 1",
    ),
    "ethtool missing": Pitfall(
        facts=with_iface(
            CLEAN, InterfaceFacts("eth0", 1500, 0, None, "ethtool is not installed, so GRO/LRO could not be read")
        ),
        severity=Severity.INFO,
        check="offloads",
        title="receive offloads on eth0: not checked",
        detail="ethtool is not installed",
        fix="apt-get install ethtool",
    ),
    "TTL 1": Pitfall(
        rules=(
            rule(outputs=(("239.2.2.2", 6000, "eth1", 1), ("239.2.2.3", 6000, "eth1", 1), ("10.0.0.9", 7, "eth1", 4))),
        ),
        check="ttl",
        title="rule r1: 2 outputs sent with TTL 1",
        detail="239.2.2.2:6000:eth1, 239.2.2.3:6000:eth1: receivers on the output's own link get them",
        fix="control_client remove --rule-id r1, then add it again with --ttl N",
    ),
    "output MTU smaller than input": Pitfall(
        facts=with_iface(CLEAN, iface("eth1", mtu=1000)),
        check="mtu",
        title="MTU of output eth1 (1000) is smaller than input eth0 (1500)",
        detail="more than 972 bytes of payload",
        fix="ip link set eth1 mtu 1500",
    ),
    "rule waiting for a missing input": Pitfall(
        facts=replace(CLEAN, interfaces={"eth1": iface("eth1")}),
        rules=(rule(input_interface="eth9", state=RuleState.WAITING, reason="input interface eth9 does not exist"),),
        severity=Severity.ERROR,
        check="rules",
        title="rule r1 is waiting: input interface eth9 does not exist",
        fix="check the name eth9 (ip -br link); the rule starts by itself when it appears",
    ),
    "rule waiting for a down input": Pitfall(
        rules=(rule(state=RuleState.WAITING, reason="input interface eth0 is down"),),
        severity=Severity.ERROR,
        check="rules",
        title="rule r1 is waiting: input interface eth0 is down",
        fix="ip link set eth0 up",
    ),
    "output without IPv4 address": Pitfall(
        rules=(rule(reason="output[0] eth1 has no IPv4 address"),),
        check="rules",
        title="rule r1 skips outputs: output[0] eth1 has no IPv4 address",
        fix="give eth1 an address: ip addr add A.B.C.D/P dev eth1",
    ),
    "output without carrier": Pitfall(
        rules=(rule(reason="output[0] eth1 has no carrier"),),
        check="rules",
        title="rule r1 skips outputs: output[0] eth1 has no carrier",
        fix="check eth1's cable, switch port or peer (ip -br link shows NO-CARRIER); packets resume by themselves",
    ),
    "outputs with several problems": Pitfall(
        rules=(rule(reason="output[0] eth1 is down; output[1] eth2 does not exist; output[2] eth1 is down"),),
        check="rules",
        title="rule r1 skips outputs: output[0] eth1 is down; output[1] eth2 does not exist; output[2] eth1 is down",
        fix="ip link set eth1 up; check the name eth2 (ip -br link); the rule starts by itself when it appears",
    ),
    "unicast input the interface does not hold": Pitfall(
        rules=(rule(group="10.0.0.99", reason="input 10.0.0.99 is not an address of eth0"),),
        check="rules",
        title="rule r1: input 10.0.0.99 is not an address of eth0",
        fix="ip addr add 10.0.0.99/P dev eth0",
    ),
    "rule that stays pending": Pitfall(
        rules=(rule(state=RuleState.PENDING, reason="workers are applying the rule set (generation 7)"),),
        check="rules",
        title="rule r1 stays pending: workers are applying the rule set (generation 7)",
        fix="control_client list-workers (a worker Starting, or restarting again and again?) and the supervisor's log",
    ),
    "a reason doctor does not know": Pitfall(
        rules=(rule(state=RuleState.WAITING, reason="something new"),),
        severity=Severity.ERROR,
        check="rules",
        title="rule r1 is waiting: something new",
        fix="see the reason",
    ),
    "worker restarted": Pitfall(
        workers=(worker(0), worker(1, restarts=3)),
        check="workers",
        title="worker 1 (pid 101) was restarted 3 times",
        fix="journalctl",
    ),
    "kernel drops": Pitfall(
        workers=(worker(0, kernel_packets=1000, kernel_drops=12), worker(1)),
        check="workers",
        title="worker 0 (pid 100): the kernel dropped 12 frames it could not queue to the worker",
        detail="Out of 1000 frames",
        fix="--num-workers",
    ),
    "ring resynchronised": Pitfall(
        workers=(worker(0), worker(1, ring_resyncs=1)),
        check="workers",
        title="worker 1 (pid 101): its capture ring was resynchronised 1 time",
        detail="recovered by itself",
        fix="--num-workers",
    ),
    "worker not running": Pitfall(
        workers=(worker(0, status="Starting"),),
        severity=Severity.ERROR,
        check="workers",
        title="worker 0 (pid 100) is Starting",
    ),
    "no workers": Pitfall(workers=(), check="workers", title="no workers reported"),
    "supervisor unreachable: host checks still run": Pitfall(
        rules=None,
        workers=None,
        error="cannot reach the supervisor: control socket /run/mcr/control.sock does not exist",
        severity=Severity.ERROR,
        check="supervisor",
        title="cannot ask the supervisor for its rules and workers",
        detail="control socket /run/mcr/control.sock does not exist",
        fix="--socket-path",
    ),
}


@pytest.mark.parametrize("case", PITFALLS.values(), ids=PITFALLS.keys())
def test_each_pitfall_is_found_with_its_fix(case: Pitfall) -> None:
    findings = diagnose(case.facts, case.rules, case.workers, supervisor_error=case.error)
    noted = [f for f in findings if f.severity is not Severity.OK]
    assert len(noted) == 1, noted
    (found,) = noted
    assert (found.severity, found.check, found.title) == (case.severity, case.check, case.title)
    assert case.fix in found.fix
    assert case.detail in found.detail
    assert has_problems(findings) == case.severity.is_problem


def test_unreachable_supervisor_still_checks_the_host() -> None:
    findings = diagnose(replace(CLEAN, rmem_max=1 << 20), None, None, "no answer")
    assert [f.check for f in findings if f.severity is not Severity.OK] == ["supervisor", "buffers"]
    assert "rules" not in {f.check for f in findings}


def test_rp_filter_without_rules_reports_new_interfaces() -> None:
    (found,) = diagnose(replace(CLEAN, rp_filter_default=1), (), WORKERS)[:1]
    assert found == Finding(
        Severity.INFO,
        "rp_filter",
        "rp_filter strict for new interfaces (all=0, default=1)",
        found.detail,
        found.fix,
    )


def test_unreadable_values_are_information_not_problems() -> None:
    facts = HostFacts(interfaces={"eth0": InterfaceFacts("eth0"), "eth1": InterfaceFacts("eth1")})
    findings = diagnose(facts, RULES, WORKERS)
    assert not has_problems(findings)
    assert {f.title for f in findings if f.severity is Severity.INFO} >= {
        "net.ipv4.igmp_max_memberships: not readable",
        "net.core.rmem_max: not readable",
        "net.core.wmem_max: not readable",
    }


def test_interfaces_of_names_inputs_and_outputs() -> None:
    rules = (rule(), rule("r2", input_interface="eth2", outputs=(("239.2.2.2", 1, "eth3", 1),)))
    assert interfaces_of(rules) == ["eth0", "eth1", "eth2", "eth3"]


def test_parse_ethtool_features() -> None:
    features = parse_ethtool_features(ETHTOOL_K.format(gro="on", lro="off [fixed]"))
    assert features["generic-receive-offload"] == Offload(on=True)
    assert features["large-receive-offload"] == Offload(on=False, fixed=True)
    assert features["tx-checksum-ipv4"] == Offload(on=False, fixed=True)
    assert features["rx-vlan-offload"] == Offload(on=True)
    assert "Features for eth0" not in features
    assert parse_ethtool_features("Cannot get device features: No such device\n") == {}


def test_json_and_table_output() -> None:
    findings = diagnose(with_iface(CLEAN, iface("eth1", mtu=1000)), RULES, WORKERS)
    doc = findings_json(findings)
    assert doc["ok"] is False
    mtu = [f for f in doc["findings"] if f["check"] == "mtu"]  # type: ignore[attr-defined]
    assert mtu == [
        {
            "severity": "warning",
            "check": "mtu",
            "title": "MTU of output eth1 (1000) is smaller than input eth0 (1500)",
            "detail": mtu[0]["detail"],
            "fix": "ip link set eth1 mtu 1500 (if the link allows it), or make the senders keep payloads at or "
            "below 972 bytes",
        }
    ]
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(render_findings(findings))
    shown = out.getvalue()
    assert "warning   mtu" in shown and "ip link set eth1 mtu 1500" in shown
    assert shown.rstrip().endswith("1 problem found")
    clean = io.StringIO()
    Console(file=clean, width=200, color_system=None).print(render_findings(diagnose(CLEAN, RULES, WORKERS)))
    assert clean.getvalue().rstrip().endswith("nothing wrong found")


# ------------------------------------------------------------------------------------------ the collector


@pytest.fixture
def fake_host(tmp_path: Path) -> tuple[Path, Path]:
    proc_sys, sys_net = tmp_path / "proc_sys", tmp_path / "sys_net"
    values = {
        "net/ipv4/conf/all/rp_filter": "1\n",
        "net/ipv4/conf/default/rp_filter": "2\n",
        "net/ipv4/conf/eth0/rp_filter": "1\n",
        "net/ipv4/igmp_max_memberships": "20\n",
        "net/core/rmem_max": "212992\n",
        "net/core/wmem_max": "garbage\n",
    }
    for rel, value in values.items():
        (proc_sys / rel).parent.mkdir(parents=True, exist_ok=True)
        (proc_sys / rel).write_text(value)
    for name, mtu in (("eth0", 9000), ("eth1", 1500)):
        (sys_net / name).mkdir(parents=True)
        (sys_net / name / "mtu").write_text(f"{mtu}\n")
    return proc_sys, sys_net


def fake_ethtool(tmp_path: Path, body: str) -> str:
    script = tmp_path / "ethtool"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_collector_reads_proc_and_sys(fake_host: tuple[Path, Path], tmp_path: Path) -> None:
    proc_sys, sys_net = fake_host
    sample = tmp_path / "sample"
    sample.write_text(ETHTOOL_K.format(gro="on", lro="off"))
    ethtool = fake_ethtool(tmp_path, f'[ "$1" = -k ] && cat {sample}')
    facts = collect_host_facts(
        ["eth0", "eth1", "eth9", "../../etc"], offloads_of=["eth0"], proc_sys=proc_sys, sys_net=sys_net, ethtool=ethtool
    )
    assert (facts.rp_filter_all, facts.rp_filter_default, facts.igmp_max_memberships) == (1, 2, 20)
    assert (facts.rmem_max, facts.wmem_max) == (212992, None)  # unreadable: None, never a crash
    assert sorted(facts.interfaces) == ["eth0", "eth1"]  # missing and invalid names are skipped
    eth0 = facts.interfaces["eth0"]
    assert (eth0.mtu, eth0.rp_filter) == (9000, 1)
    assert eth0.offloads is not None and eth0.offloads["generic-receive-offload"] == Offload(on=True)
    eth1 = facts.interfaces["eth1"]
    assert (eth1.mtu, eth1.rp_filter, eth1.offloads) == (1500, None, None)  # an output: ethtool not run


@pytest.mark.parametrize(
    ("body", "note"),
    [
        (None, "ethtool is not installed"),
        ("echo 'Cannot get device features: Operation not supported' >&2; exit 75", "failed: Cannot get device"),
        ("echo nothing useful", "printed no feature list"),
        ("exec sleep 5", "did not answer within 0.2 s"),
    ],
)
def test_collector_explains_why_offloads_are_unknown(
    body: str | None, note: str, fake_host: tuple[Path, Path], tmp_path: Path
) -> None:
    proc_sys, sys_net = fake_host
    ethtool = None if body is None else fake_ethtool(tmp_path, body)
    facts = collect_host_facts(["eth0"], proc_sys=proc_sys, sys_net=sys_net, ethtool=ethtool, timeout_s=0.2)
    eth0 = facts.interfaces["eth0"]
    assert eth0.offloads is None and note in eth0.offloads_note


# ---------------------------------------------------------------------------------------------- command


RULE_DOC = {
    "rule_id": "r1", "input_interface": "eth0", "input_group": "239.1.1.1", "input_port": 5000,
    "input_source": None, "outputs": [{"group": "239.2.2.2", "port": 6000, "interface": "eth1", "ttl": 8}],
    "source": "runtime", "engine": "userspace", "state": "active", "state_reason": "",
}  # fmt: skip
WORKER_DOC = {"pid": 7, "worker_type": "DataPlane", "core_id": None, "worker_id": 0, "status": "Running"}


@pytest.fixture
def answering(fake_supervisor: Callable[[Respond], FakeSupervisor]) -> Callable[[Mapping[str, object]], Path]:
    """A supervisor on a real Unix socket that answers each request by its text; gives its socket's path."""
    return lambda answers: fake_supervisor(by_command(answers)).path


@pytest.fixture
def clean_host(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The command's collector replaced by a fake clean host; records which interfaces it was asked about."""
    asked: list[list[str]] = []

    def collect(names: Sequence[str], offloads_of: Sequence[str], control_socket: Path) -> HostFacts:
        asked.append(list(names))
        assert set(offloads_of) <= set(names)
        return CLEAN

    monkeypatch.setattr(control_client, "collect_host_facts", collect)
    return asked


def test_doctor_command_clean_exits_0(
    answering: Callable[[Mapping[str, object]], Path], clean_host: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path = answering({"ListRules": {"Rules": [RULE_DOC]}, "ListWorkers": {"Workers": [WORKER_DOC]}})
    assert main(["--socket-path", str(path), "doctor"]) == ExitCode.OK
    assert clean_host == [["eth0", "eth1"]]
    assert "nothing wrong found" in capsys.readouterr().out


def test_doctor_command_json_exits_1_on_a_problem(
    answering: Callable[[Mapping[str, object]], Path], clean_host: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    ttl1 = {**RULE_DOC, "outputs": [{"group": "239.2.2.2", "port": 6000, "interface": "eth1", "ttl": 1}]}
    path = answering({"ListRules": {"Rules": [ttl1]}, "ListWorkers": {"Workers": [WORKER_DOC]}})
    assert main(["--socket-path", str(path), "doctor", "--json"]) == ExitCode.ERROR_RESPONSE
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert [f["check"] for f in doc["findings"] if f["severity"] == "warning"] == ["ttl"]


@pytest.mark.parametrize(
    ("answers", "detail"),
    [
        (None, "control socket"),
        ({"ListRules": {"Error": "permission denied: uid 1000"}}, "the supervisor answered: permission denied"),
    ],
)
def test_doctor_command_without_the_supervisor_exits_1(
    answers: Mapping[str, object] | None,
    detail: str,
    answering: Callable[[Mapping[str, object]], Path],
    clean_host: list[list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "none.sock" if answers is None else answering(answers)
    assert main(["--json", "--socket-path", str(path), "doctor"]) == ExitCode.ERROR_RESPONSE
    doc = json.loads(capsys.readouterr().out)
    first = doc["findings"][0]
    assert (first["severity"], first["check"]) == ("error", "supervisor") and detail in first["detail"]
    assert clean_host == [[]]  # the host was still checked


def test_doctor_asks_again_while_a_rule_is_pending(
    fake_supervisor: Callable[[Respond], FakeSupervisor],
    clean_host: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A rule set being applied is pending for a moment: doctor asks again and reports only what stays pending
    (here the second answer is active: nothing wrong); one that stays past the grace is a warning."""
    pending = {**RULE_DOC, "state": "pending", "state_reason": "workers are applying the rule set (generation 2)"}
    answers = iter([pending, RULE_DOC])

    def respond(request: bytes) -> bytes:
        if json.loads(request) == "ListRules":
            return json.dumps({"Rules": [next(answers, RULE_DOC)]}).encode() + b"\n"
        if json.loads(request) == "ListWorkers":
            return json.dumps({"Workers": [WORKER_DOC]}).encode() + b"\n"
        return json.dumps({"Error": "unknown command"}).encode() + b"\n"

    fake = fake_supervisor(respond)
    assert main(["--socket-path", str(fake.path), "doctor"]) == ExitCode.OK
    assert [json.loads(r) for r in fake.requests] == [
        "ListRules",
        "ListRules",
        "ListWorkers",
        "GetKernelStatus",
        "GetConfig",
    ]
    assert "nothing wrong found" in capsys.readouterr().out
    monkeypatch.setattr(control_client, "PENDING_GRACE_S", 0.3)
    stuck = fake_supervisor(by_command({"ListRules": {"Rules": [pending]}, "ListWorkers": {"Workers": [WORKER_DOC]}}))
    assert main(["--socket-path", str(stuck.path), "--json", "doctor"]) == ExitCode.ERROR_RESPONSE
    (finding,) = [f for f in json.loads(capsys.readouterr().out)["findings"] if f["check"] == "rules"]
    assert (finding["severity"], finding["title"]) == (
        "warning",
        "rule r1 stays pending: workers are applying the rule set (generation 2)",
    )
    assert 2 <= [json.loads(r) for r in stuck.requests].count("ListRules") <= 4


# ------------------------------------------------------------------------------------------ leftovers


@pytest.mark.parametrize(
    ("pinned", "sockets", "supervisor_up", "severity", "title"),
    [
        ({}, (), False, Severity.OK, "no data plane left behind"),
        (None, (), True, Severity.INFO, "could not look for a pinned kernel engine"),
        ({"default": ("link_3", "map_rules", "prog")}, (), True, Severity.INFO, "outlives the supervisor"),
        ({"default": ("link_3", "link_4", "prog")}, (), False, Severity.WARNING, "relaying without a supervisor"),
        ({}, ("/run/mcr/control.sock.worker0",), False, Severity.WARNING, "relaying without a supervisor"),
    ],
    ids=["nothing", "unreadable", "own pins while running", "pins without supervisor", "orphaned workers"],
)
def test_leftovers(
    pinned: dict[str, tuple[str, ...]] | None,
    sockets: tuple[str, ...],
    supervisor_up: bool,
    severity: Severity,
    title: str,
) -> None:
    facts = HostFacts(pinned=pinned, handover_sockets=sockets)
    (finding,) = check_leftovers(facts, supervisor_up)
    assert (finding.severity, finding.check) == (severity, "leftovers")
    assert title in finding.title
    if severity is Severity.WARNING:
        assert "rm -r" in finding.fix and "--worker-orphan-timeout" in finding.fix
        assert ("2 links" in finding.detail) == bool(pinned)


def test_read_pins(tmp_path: Path) -> None:
    root = tmp_path / "mcr"
    assert read_pins(root) == {}, "no directory: nothing pinned"
    assert read_pins(tmp_path / "absent" / "mcr") is None, "no bpf file system: cannot tell"
    (root / "default").mkdir(parents=True)
    (root / "default" / "prog").touch()
    (root / "default" / "link_7").touch()
    assert read_pins(root) == {"default": ("link_7", "prog")}


@pytest.mark.parametrize(
    ("kernel", "severity", "title"),
    [
        (
            KernelStatus(True, "auto", rules=2, interfaces=("eth0",)),
            Severity.OK,
            "kernel engine loaded: 2 rules on eth0",
        ),
        (
            KernelStatus(True, "auto", rules=2, drops={"fragment": 3, "no_rule": 9}),
            Severity.WARNING,
            "kernel engine dropped 3 frames of relayed groups",
        ),
        (
            KernelStatus(False, "auto", "bpf(BPF_PROG_LOAD): Operation not permitted"),
            Severity.WARNING,
            "kernel engine not loaded: every rule is served in userspace",
        ),
        (KernelStatus(False, "userspace"), Severity.INFO, "kernel engine off (--engine userspace)"),
    ],
)
def test_kernel_engine_finding(kernel: KernelStatus, severity: Severity, title: str) -> None:
    (finding,) = [f for f in diagnose(CLEAN, RULES, WORKERS, kernel=kernel) if f.check == "kernel"]
    assert finding.severity is severity and finding.title.startswith(title)


def test_config_sections_accepted_but_not_served_are_named() -> None:
    from mcr.cli.doctor import check_config
    from mcr.model.original_config import OriginalSections
    from mcr.model.rules import Limits
    from mcr.model.status import ConfigView

    sections = OriginalSections(
        pinning=(("eth0", (2, 3)), ("eth1", (0, 2))),
        sections=(("pim", "{}"), ("igmp", "{}"), ("msdp", "{}"), ("control_plane", "{}")),
    )
    findings = check_config(ConfigView("/etc/mcr/mcr.json5", (), Limits(), (), sections, "json5"))
    assert [(f.severity.value, f.title) for f in findings] == [  # igmp, pim and msdp are served
        ("warning", "/etc/mcr/mcr.json5: section 'control_plane' is accepted but not served"),
        ("info", "/etc/mcr/mcr.json5: 'pinning' names different CPUs per interface; they are joined"),
    ]
    assert "the control-plane integration" in findings[0].detail and "not implemented" in findings[0].detail
    assert "pinned over CPUs 2,3,0 in turn" in findings[1].detail
    # the same CPUs for every interface is applied as written: nothing to say
    same = OriginalSections(pinning=(("eth0", (0, 1)), ("eth1", (0, 1))))
    assert check_config(ConfigView("/etc/mcr/mcr.json5", (), Limits(), (), same, "json5")) == []
    assert check_config(ConfigView(None, (), Limits(), ())) == []


def test_unicast_inputs_are_not_counted_as_groups_to_join() -> None:
    from mcr.cli.doctor import check_igmp

    facts = replace(CLEAN, igmp_max_memberships=1)
    (finding,) = check_igmp(facts, (rule(group="10.0.0.1"), rule("r2", group="239.1.1.1")))
    assert (finding.severity, finding.title) == (
        Severity.OK,
        "at most 1 input group per interface, within igmp_max_memberships (1)",
    )
