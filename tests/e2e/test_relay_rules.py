"""Rules at run time: added and removed while traffic flows; rejected requests say why and change nothing."""

from __future__ import annotations

import re
import time

import pytest

from .netns import Chain, wait_for
from .relay import Supervisor, generator_argv, start_generator, start_probe, start_sink, wait_file

pytestmark = pytest.mark.netns

IN_GROUP = "239.1.1.1"
IN_PORT = 5000
OUT_GROUP = "239.2.2.2"
OUT_PORT = 6000


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_rule_added_and_removed_while_traffic_flows(chain: Chain) -> None:
    """Nothing comes out before the add, everything after it, and nothing once the remove is answered."""
    lab = chain.lab
    sup = Supervisor.start(lab, chain.relay)
    rate, seconds = 2000, 7
    ready = lab.workdir / "recv.ready"
    receiver = start_probe(
        lab, chain.sink, "recv", "--group", OUT_GROUP, "--port", str(OUT_PORT), "--ifname", "snk0", "--times",
        "--duration", str(seconds + 4), "--ready-file", str(ready), name="receiver",
    )  # fmt: skip
    wait_file(ready, receiver)
    gen = start_generator(chain, IN_GROUP, IN_PORT, rate=rate, size=200, count=rate * seconds)
    t_gen = time.time()  # wall clock, as the receiver's kernel timestamps
    # 1.5 s of traffic with no rule: the relay must not forward anything
    time.sleep(1.5)
    assert sup.stats() == [] and sup.rules() == []
    t_add = time.time()
    sup.add_rule(rule_id="dyn", group=IN_GROUP, port=IN_PORT, outputs=[f"{OUT_GROUP}:{OUT_PORT}:rout"])
    sup.wait_flow("dyn", lambda f: f["packets_relayed"] >= rate, f"{rate} packets relayed", timeout=5)
    sup.remove_rule("dyn")
    t_removed = time.time()
    assert sup.rules() == []
    assert all(f.get("rule_id") != "dyn" for f in sup.stats()), "a removed rule has no stats entry"
    summary = gen.json(timeout=seconds + 10)
    t_end = time.time()
    assert summary["sent"] == rate * seconds
    assert t_end - t_removed > 1.0, "the generator must still run after the remove for the check to mean much"
    arrivals = receiver.json(timeout=20)["times"]
    early = [t - t_gen for t in arrivals if t < t_add]
    late = [t - t_removed for t in arrivals if t > t_removed + 0.1]
    during = [t for t in arrivals if t_add <= t <= t_removed]
    assert not early, f"{len(early)} packets came out before the rule was added (first at +{early[0]:.3f} s)"
    assert len(during) >= rate, f"only {len(during)} packets came out while the rule existed"
    assert not late, f"{len(late)} packets came out after the remove was answered (last at +{late[-1]:.3f} s)"


# (case, extra `control_client add` args, patterns the error must contain). Rule `ok` exists during each.
REJECTED: list[tuple[str, list[str], list[str]]] = [
    ("output-on-input-interface", ["--input-port", "5001", "--outputs", "239.2.2.2:6000:rin"], ["rin", "same|loop"]),
    ("input-port-0", ["--input-port", "0", "--outputs", "239.2.2.2:6000:rout"], ["port", "0"]),
    ("output-port-0", ["--input-port", "5001", "--outputs", "239.2.2.2:0:rout"], ["port", "0"]),
    ("output-0.0.0.0", ["--input-port", "5001", "--outputs", "0.0.0.0:6000:rout"], ["0\\.0\\.0\\.0"]),
    ("output-broadcast", ["--input-port", "5001", "--outputs", "255.255.255.255:6000:rout"], ["255\\.255"]),
    ("bad-interface-char", ["--input-port", "5001", "--outputs", "239.2.2.2:6000:bad/if"], ["bad/if"]),
    ("interface-too-long", ["--input-port", "5001", "--outputs", "239.2.2.2:6000:abcdefghijklmnop"],
     ["abcdefghijklmnop", "15|length|long"]),
    ("interface-leading-dash", ["--input-port", "5001", "--outputs", "239.2.2.2:6000:-rout"], ["-rout"]),
    ("duplicate-rule-id", ["--rule-id", "ok", "--input-port", "5009", "--outputs", "239.2.2.9:6009:rout"],
     ["ok", "exists|duplicate"]),
    ("same-input-twice", ["--rule-id", "other", "--input-port", str(IN_PORT), "--outputs", "239.2.2.9:6009:rout"],
     ["already|exists|ok"]),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_rejected_rules_say_why_and_change_nothing(chain: Chain) -> None:
    sup = Supervisor.start(chain.lab, chain.relay)
    sup.add_rule(rule_id="ok", group=IN_GROUP, port=IN_PORT, outputs=[f"{OUT_GROUP}:{OUT_PORT}:rout"])
    before = sup.rules()
    failures = []
    cases = [(name, ["--input-group", IN_GROUP, *args], words) for name, args, words in REJECTED]
    # a unicast input is the host's own address (the original's HEAD relays those); loopback never arrives
    cases.append(("loopback-input-group", ["--input-group", "127.0.0.9", "--input-port", "5001", "--outputs",
                  "239.2.2.2:6000:rout"], ["127\\.0\\.0\\.9", "loopback"]))  # fmt: skip
    cases.append(("reserved-input-group", ["--input-group", "240.0.0.7", "--input-port", "5001", "--outputs",
                  "239.2.2.2:6000:rout"], ["240\\.0\\.0\\.7", "multicast", "unicast"]))  # fmt: skip
    for name, args, words in cases:
        result = sup.ctl("add", "--input-interface", "rin", *args, check=False, json_out=False)
        message = result.stderr + result.stdout
        missing = [w for w in words if not re.search(w, message, re.IGNORECASE)]
        if result.returncode == 0 or missing or not result.stderr.strip():
            failures.append(f"{name}: exit {result.returncode}, missing {missing}: {message.strip()!r}")
        if sup.rules() != before:
            failures.append(f"{name}: the rule table changed: {sup.rules()}")
    removed = sup.ctl("remove", "--rule-id", "nosuch", check=False, json_out=False)
    if removed.returncode == 0 or "nosuch" not in removed.stderr:
        failures.append(f"remove-unknown: exit {removed.returncode}: {removed.stderr!r}")
    assert sup.rules() == before
    assert not failures, "\n".join(failures)


@pytest.mark.timeout(60)
def test_rule_for_a_missing_interface_waits_then_forwards(chain: Chain) -> None:
    """DESIGN §6: a rule whose input interface does not exist yet is accepted as waiting, and starts later."""
    lab = chain.lab
    sup = Supervisor.start(lab, chain.relay)
    sup.add_rule(rule_id="late", group=IN_GROUP, port=IN_PORT, outputs=[f"{OUT_GROUP}:{OUT_PORT}:rout"],
                 input_interface="rin9")  # fmt: skip
    (rule,) = sup.rules()
    assert rule["state"] == "waiting", rule
    # the interface appears: a second link from SRC, in yet another subnet
    lab.run(chain.src, "ip", "link", "add", "src9", "type", "veth", "peer", "name", "rin9", "netns", chain.relay)
    lab.run(chain.src, "ip", "addr", "add", "10.200.19.2/24", "dev", "src9")
    lab.run(chain.relay, "ip", "addr", "add", "10.200.29.1/24", "dev", "rin9")
    lab.run(chain.src, "ip", "link", "set", "dev", "src9", "up")
    lab.run(chain.relay, "ip", "link", "set", "dev", "rin9", "up")
    wait_for(lambda: sup.rules()[0]["state"] == "active", 10, "the waiting rule to become active")
    count = 2000
    sink = start_sink(lab, chain.sink, [(OUT_GROUP, OUT_PORT)], expect=count)
    argv = generator_argv(IN_GROUP, IN_PORT, source="10.200.19.2", rate=2000, size=300, count=count)
    summary = lab.popen(chain.src, *argv, name="traffic_generator").json(timeout=30)
    assert summary["sent"] == count
    report = sink.report()
    assert (report["unique"], report["lost"], report["duplicated"]) == (count, 0, 0), report.summary()
