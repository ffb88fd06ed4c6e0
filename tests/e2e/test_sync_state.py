"""`list` says active only when the data plane has the rule: after a reload that changes a rule (whose counters
then restart from zero), and while a killed worker's replacement is applying the rule set."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from mcr.lab import Lab
from tests.e2e.harness import NotifyListener, Relay, send, start_sink, wait_for

CONFIG = """
[[rule]]
id = "steady"
input_interface = "rin"
input_group = "239.1.1.1"
input_port = 5001
outputs = ["239.2.2.2:6001:rout"]

[[rule]]
id = "moving"
input_interface = "rin"
input_group = "239.1.1.2"
input_port = 5002
outputs = [{outputs}]
"""
ONE = '"239.2.2.3:6002:rout"'
TWO = '"239.2.2.3:6002:rout", "239.2.2.3:6099:rout"'  # the first output stays: each engine would keep counting


def relay_through(lab: Lab, workdir: Path, relay: Relay, rule_id: str, group: str, port: int, out: int, n: int) -> None:
    """Send `n` packets into a rule and check that all `n` come out of its output and are counted."""
    before = relay.flow(rule_id)["packets_relayed"]
    sink = start_sink(lab, workdir, "239.2.2.3" if rule_id == "moving" else "239.2.2.2", str(out), expect=n)
    send(lab, count=n, rate=2000, size=100, group=group, port=port)
    assert sink.result()["received"] == n
    assert relay.wait_relayed(rule_id, before + n)["packets_relayed"] == before + n


def test_a_reload_that_changes_a_rule_restarts_its_counters(lab: Lab, workdir: Path, engine: str) -> None:
    """The changed rule counts from zero, per rule and per output, in either engine; the unchanged rule keeps
    its counts. READY follows RELOADING only once the workers have the new rule set."""
    config = workdir / "mcr.toml"
    config.write_text(CONFIG.format(outputs=ONE))
    notify = NotifyListener(workdir)
    relay = Relay(lab, workdir, extra=["--config", str(config), "--engine", engine], env=notify.env).start()
    try:
        assert {r["engine"] for r in relay.rules()} == {engine}
        relay_through(lab, workdir, relay, "moving", "239.1.1.2", 5002, 6002, 40)
        relay_through(lab, workdir, relay, "steady", "239.1.1.1", 5001, 6001, 25)
        notify.poll()
        config.write_text(CONFIG.format(outputs=TWO))
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGHUP)
        messages = wait_for(notify.poll, 10, what="RELOADING from the supervisor")
        while not any(m.startswith("READY=1") for m in messages):
            messages += wait_for(notify.poll, 40, what="READY after the reload")
        assert messages[0].startswith("RELOADING=1"), messages
        moving = next(r for r in relay.rules() if r["rule_id"] == "moving")
        assert ([o["port"] for o in moving["outputs"]], moving["state"]) == ([6002, 6099], "active"), moving
        flow = relay.flow("moving")
        assert (flow["packets_relayed"], flow["bytes_relayed"]) == (0, 0), flow
        assert [o["packets_sent"] for o in flow["outputs"]] == [0, 0], flow
        assert relay.flow("steady")["packets_relayed"] == 25, "an unchanged rule keeps its counters"
        relay_through(lab, workdir, relay, "moving", "239.1.1.2", 5002, 6099, 30)
        flow = relay.flow("moving")
        assert (flow["packets_relayed"], [o["packets_sent"] for o in flow["outputs"]]) == (30, [30, 30]), flow
    finally:
        relay.stop()
        notify.close()


def test_a_restarted_workers_rules_are_pending_until_it_has_them(lab: Lab, workdir: Path) -> None:
    """SIGKILL the only worker: its rules are pending (why: the generation the workers are applying) while it is
    restarted and until its replacement confirmed the rule set, then active, and relayed from the first packet."""
    config = workdir / "mcr.toml"
    config.write_text(CONFIG.format(outputs=ONE))
    relay = Relay(lab, workdir, extra=["--config", str(config), "--engine", "userspace"]).start()
    try:
        assert relay.states() == ["active", "active"]
        (worker,) = relay.workers()
        os.kill(worker["pid"], signal.SIGKILL)
        seen: list[tuple[str, ...]] = []
        reasons: set[str] = set()
        deadline = time.monotonic() + 30
        while not (reasons and seen[-1] == ("active", "active")):
            assert time.monotonic() < deadline, f"never pending, then active again: {seen[:3]} ... {seen[-3:]}"
            rules = relay.request("ListRules")["Rules"]
            seen.append(tuple(r["state"] for r in rules))
            reasons |= {r["state_reason"] for r in rules if r["state"] == "pending"}
            time.sleep(0.01)
        assert all(r.startswith("workers are applying the rule set (generation ") for r in reasons), reasons
        assert set(seen) <= {("pending", "pending"), ("active", "active")}, "both rules change state together"
        (replacement,) = relay.workers()
        assert replacement["pid"] != worker["pid"] and replacement["restarts"] == 1
        relay_through(lab, workdir, relay, "steady", "239.1.1.1", 5001, 6001, 50)
    finally:
        relay.stop()
