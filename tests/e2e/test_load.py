"""Load held: 200 rules with traffic on every one, 1,000 rules configured, the IGMP membership limit."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from mcr.lab import SRC_IP, Lab
from tests.e2e.harness import NotifyListener, Relay, start_sink, wait_for

# Numbered payloads (the sink checks them) to many groups, round-robin, paced; bounded by its count.
_SEND_MANY = """
import socket, sys, time
from mcr.traffic.payload import build_payload
src, port, per, rate, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
groups = sys.argv[6].split(",")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
s.bind((src, 0))
start, sent = time.monotonic(), 0
for seq in range(per):
    for group in groups:
        s.sendto(build_payload(7, seq, size, time.time_ns()), (group, port))
        sent += 1
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0.002:
            time.sleep(ahead)
print(sent)
"""


def send_many(lab: Lab, groups: list[str], *, per_group: int, rate: int, size: int = 200, port: int = 5001) -> None:
    argv = [sys.executable, "-c", _SEND_MANY, SRC_IP, str(port), str(per_group), str(rate), str(size), ",".join(groups)]
    result = subprocess.run(lab.exec_argv(lab.src, argv), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == per_group * len(groups)


def input_group(i: int) -> str:
    return str(IPv4Address("239.10.0.1") + i)


def add_rule(i: int, out_port: int) -> dict[str, Any]:
    return {
        "AddRule": {
            "rule_id": f"load-{i:04d}",
            "input_interface": "rin",
            "input_group": input_group(i),
            "input_port": 5001,
            "outputs": [{"group": "239.2.2.2", "port": out_port, "interface": "rout"}],
        }
    }


def config_text(n: int) -> str:
    return "".join(
        f'[[rule]]\nid = "load-{i:04d}"\ninput_interface = "rin"\ninput_group = "{input_group(i)}"\n'
        f'input_port = 5001\noutputs = ["239.2.2.2:{7000 + i}:rout"]\n'
        for i in range(n)
    )


def joined_groups(lab: Lab, ifname: str) -> set[str]:
    """The groups /proc/net/igmp lists for `ifname` in the relay namespace."""
    groups: set[str] = set()
    current = ""
    for line in lab.netns(lab.relay, "cat", "/proc/net/igmp").stdout.splitlines()[1:]:
        if not line.startswith("\t"):
            current = line.split()[1]
        elif current == ifname:
            groups.add(str(IPv4Address(bytes.fromhex(line.split()[0])[::-1])))
    return groups


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    value = call()
    return value, time.monotonic() - started


def test_200_rules_with_traffic_on_every_one(lab: Lab, workdir: Path, relay: Relay, engine: str) -> None:
    n, per = 200, 100
    for i in range(n):
        assert relay.request(add_rule(i, 7000 + i)) == {"Success": f"Rule load-{i:04d} added"}
    assert {r["engine"] for r in relay.rules()} == {engine}
    ports = ",".join(str(7000 + i) for i in range(n))
    sink = start_sink(lab, workdir, "239.2.2.2", ports, expect=n * per, idle=5)
    send_many(lab, [input_group(i) for i in range(n)], per_group=per, rate=4000)
    report = sink.result()
    assert (report["received"], report["lost"], report["duplicated"], report["corrupted"]) == (n * per, 0, 0, 0)
    assert [s["received"] for s in report["streams"]] == [per] * n, "every rule's packets arrive"

    def counted() -> list[dict[str, Any]] | None:
        flows = relay.json("stats")["Stats"]
        return flows if all(f["packets_relayed"] >= per for f in flows) else None

    flows = wait_for(counted, 10, what="every rule's counters")
    assert len(flows) == n
    for flow in flows:
        assert (flow["packets_relayed"], flow["bytes_relayed"]) == (per, per * 200), flow
        (out,) = flow["outputs"]
        assert (out["packets_sent"], out["send_errors"]) == (per, 0), flow


def _check_thousand(lab: Lab, relay: Relay) -> None:
    """1000 rules listed and counted promptly (within 10 s: generous for a loaded machine), each group joined,
    the limit enforced, the last rule forwarding."""
    rules, took = timed(relay.rules)
    assert len(rules) == 1000 and all(r["state"] == "active" for r in rules)
    assert took < 10.0, f"list took {took:.1f} s"
    stats, took = timed(lambda: relay.json("stats")["Stats"])
    assert len(stats) == 1000 and took < 10.0, f"stats took {took:.1f} s"
    wanted = {input_group(i) for i in range(1000)}
    assert wanted <= joined_groups(lab, "rin"), "every input group is joined (20 per socket by default)"
    refused = relay.request(add_rule(1000, 6000))
    assert refused == {"Error": "Rule rejected: rule limit reached (max_rules = 1000)"}, refused
    # "active" means every worker has the rule: the very first packets of a flow are relayed, the last
    # rule's and those of every 10th rule alike, with no warm-up
    sink = start_sink(lab, relay.workdir, "239.2.2.2", "7999", expect=300)
    send_many(lab, [input_group(999)], per_group=300, rate=3000)
    assert sink.result()["received"] == 300
    assert relay.wait_relayed("load-0999", 300)["packets_relayed"] == 300
    sampled = range(0, 1000, 10)
    sink = start_sink(lab, relay.workdir, "239.2.2.2", ",".join(str(7000 + i) for i in sampled), expect=300)
    send_many(lab, [input_group(i) for i in sampled], per_group=3, rate=3000)
    report = sink.result()
    assert (report["received"], [s["received"] for s in report["streams"]]) == (300, [3] * 100), report


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_1000_rules_through_the_control_socket(lab: Lab, workdir: Path) -> None:
    """Each change touches only the rule it names (an Update to the worker, one journal line), so the 1000th add
    costs what the first did (bench/scale.py measures it up to 10,000 rules). The limit is set to 1000 here."""
    relay = Relay(lab, workdir, extra=["--engine", "userspace", "--max-rules", "1000"]).start()
    try:
        for i in range(1000):
            reply = relay.request(add_rule(i, 7000 + i))
            assert reply == {"Success": f"Rule load-{i:04d} added"}, reply
        _check_thousand(lab, relay)
    finally:
        relay.stop()


def test_1000_rules_from_a_config_file(lab: Lab, workdir: Path) -> None:
    """Under a soft descriptor limit (512 here; systemd's default is 1024): the relay raises its soft limit to
    the hard one (the 1000 outputs share one lane socket per way out; join and capture sockets still count)."""
    config = workdir / "thousand.toml"
    config.write_text(config_text(1000))
    extra = ["--config", str(config), "--engine", "userspace", "--max-rules", "1000"]
    notify = NotifyListener(workdir)  # as systemd: READY only once the worker has all 1000 rules
    relay = Relay(lab, workdir, wrap=["prlimit", "--nofile=512:"], extra=extra, env=notify.env)
    try:
        relay.start(settle=False)
        seen: list[set[str]] = []
        deadline = time.monotonic() + 60
        while not any(m.startswith("READY=1") for m in notify.poll()):
            assert time.monotonic() < deadline, f"no READY within 60 s; states seen: {seen}"
            seen.append(set(relay.states()))
        assert set(relay.states()) == {"active"}, "READY: every rule is active"
        # one rule set, one worker: all 1000 rules are pending together, then all active together
        first_active = next((i for i, states in enumerate(seen) if states == {"active"}), len(seen))
        assert all(states == {"pending"} for states in seen[:first_active]), seen
        assert all(states == {"active"} for states in seen[first_active:]), seen
        assert "every worker confirmed rule generation" in relay.log()
        _check_thousand(lab, relay)
        assert "cannot open its socket" not in relay.log()
        assert "open-file limit raised from 512 to" in relay.log()
        assert sum(o["send_errors"] for f in relay.json("stats")["Stats"] for o in f["outputs"]) == 0
    finally:
        relay.stop()
        notify.close()


def test_igmp_membership_limit_is_reported(lab: Lab, workdir: Path, relay: Relay) -> None:
    """At the kernel's limit a join fails with ENOBUFS: the relay says so and what to raise; the rule still runs
    (a veth delivers without the membership), and once the operator raises the limit the join is retried by
    itself within a second or two."""
    lab.netns(lab.relay, "sysctl", "-qw", "net.ipv4.igmp_max_memberships=0")
    assert relay.request(add_rule(0, 7000)) == {"Success": "Rule load-0000 added"}
    line = f"cannot join {input_group(0)} on ifindex"
    wait_for(lambda: line in relay.log(), 5, what="the warning in the log")
    assert "No buffer space available (raise net.ipv4.igmp_max_memberships)" in relay.log()
    assert input_group(0) not in joined_groups(lab, "rin")
    assert relay.request(add_rule(1, 7001)) == {"Success": "Rule load-0001 added"}
    time.sleep(1.5)  # at least one retry
    assert relay.log().count(line) == 1, "a failing join is logged once, not on every retry"
    lab.netns(lab.relay, "sysctl", "-qw", "net.ipv4.igmp_max_memberships=20")
    wanted = {input_group(0), input_group(1)}
    wait_for(lambda: wanted <= joined_groups(lab, "rin"), 5, what="the joins retried after the limit was raised")
    assert f"joined {input_group(0)} on ifindex" in relay.log()
