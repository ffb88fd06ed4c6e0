"""Faults survived: killed workers and supervisor, flapping and dead links, a stalled supervisor, a full disk.

Every test runs the real supervisor and workers in the lab's namespaces and checks, with real packets at the
sink and the relay's own counters, that nothing was lost, duplicated or left inconsistent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mcr.lab import SRC_IP, Lab
from tests.e2e.harness import Relay, alive, mcr, saved_rule_ids, send, start_sink, wait_for
from tests.e2e.hitless import bpffs


def _start_generator(
    lab: Lab, *, count: int, rate: int, group: str = "239.1.1.1", port: int = 5001, size: int = 500
) -> subprocess.Popen[bytes]:
    argv = mcr("generate", "--group", group, "--port", str(port), "--interface", SRC_IP)
    argv += ["--rate", str(rate), "--count", str(count), "--size", str(size), "--quiet", "--json"]
    return subprocess.Popen(lab.exec_argv(lab.src, argv), stdout=subprocess.PIPE)


def _generator_report(proc: subprocess.Popen[bytes], timeout: float = 60) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0
    return dict(json.loads(out))


def _streams(report: dict[str, Any]) -> dict[str, int]:
    return {s["stream"]: s["received"] for s in report["streams"]}


def _all_running(relay: Relay, count: int) -> bool:
    workers = relay.workers()
    return len(workers) == count and all(w["status"] == "Running" for w in workers)


# ------------------------------------------------------------------------------------------ workers


@pytest.mark.workers(2)
def test_workers_killed_repeatedly_during_rule_changes(lab: Lab, workdir: Path, relay: Relay) -> None:
    """Each round adds a rule and removes an older one while a worker is SIGKILLed in the middle of it."""
    expected: set[str] = set()
    killed: set[int] = set()
    for i in range(6):
        adding = subprocess.Popen(
            mcr("control", "--socket-path", relay.socket_path, "add", "--rule-id", f"r{i}", "--input-interface",
                "rin", "--input-group", f"239.1.1.{10 + i}", "--input-port", "5001", "--outputs",
                f"239.2.2.2:{7000 + i}:rout"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        victim = relay.workers()[i % 2]["pid"]
        os.kill(victim, signal.SIGKILL)
        killed.add(victim)
        _, err = adding.communicate(timeout=30)
        assert adding.returncode == 0, err
        expected.add(f"r{i}")
        if i % 3 == 2:
            relay.ctl("remove", "--rule-id", f"r{i - 2}")
            expected.discard(f"r{i - 2}")
        wait_for(lambda: _all_running(relay, 2), 10, what="both workers running again")
    assert {r["rule_id"] for r in relay.rules()} == expected, "no rule lost, none resurrected"
    workers = relay.workers()
    assert not {w["pid"] for w in workers} & killed and sum(w["restarts"] for w in workers) == 6
    assert not any(alive(pid) for pid in killed)
    ports = sorted(7000 + int(r[1:]) for r in expected)
    sink = start_sink(lab, workdir, "239.2.2.2", ",".join(map(str, ports)), expect=300 * len(ports))
    for rule_id in sorted(expected):
        send(lab, count=300, rate=3000, size=300, group=f"239.1.1.{10 + int(rule_id[1:])}")
    report = sink.result()
    assert (report["received"], report["duplicated"], report["corrupted"]) == (300 * len(ports), 0, 0)
    assert set(_streams(report).values()) == {300}
    for rule_id in expected:
        assert relay.wait_relayed(rule_id, 300)["packets_relayed"] == 300, rule_id


# --------------------------------------------------------------------------------------- supervisor


def test_supervisor_killed_data_plane_relays_on_for_the_orphan_timeout(lab: Lab, workdir: Path, engine: str) -> None:
    """SIGKILL the supervisor: the data plane relays on without it (workers and pinned kernel engine), the
    workers only for --worker-orphan-timeout seconds (the bound), then exit; a supervisor started afterwards
    restores the rules from the state file and relays every packet once."""
    with bpffs(workdir / "bpffs") as pins:  # the kernel engine's pins, in a bpf fs that outlives `ip netns exec`
        _killed_supervisor(lab, workdir, engine, pins / "mcr")


def _killed_supervisor(lab: Lab, workdir: Path, engine: str, pins: Path) -> None:
    state = workdir / "rules.json"
    extra = ["--state-file", str(state), "--engine", engine, "--worker-orphan-timeout", "2"]
    relay = Relay(lab, workdir, num_workers=2, extra=[*extra, "--bpf-pin-dir", str(pins)]).start()
    try:
        relay.add("s", "239.2.2.2:6001:rout")
        before = relay.rules()
        assert before[0]["engine"] == engine
        pids = [w["pid"] for w in relay.workers()]
        sink = start_sink(lab, workdir, "239.2.2.2", "6001", idle=30, duration=60)
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGKILL)
        relay.proc.wait(10)
        killed_at = time.monotonic()
        send(lab, count=1000, rate=5000)  # relayed with no supervisor running
        assert all(alive(pid) for pid in pids), "the workers relay on while no supervisor runs"
        wait_for(lambda: not any(alive(pid) for pid in pids), 6, what="the orphaned workers to exit")
        assert time.monotonic() - killed_at < 2 + 2.5, "they exit once the orphan timeout is over"
        relay.start()
        assert relay.rules() == before
        assert {w["pid"] for w in relay.workers()}.isdisjoint(pids), "nobody was left to take over"
        send(lab, count=1000, rate=5000)
        time.sleep(1.0)
        sink.proc.send_signal(signal.SIGINT)
        report = sink.result()
        assert (report["received"], report["duplicated"], report["corrupted"]) == (2000, 0, 0), report
    finally:
        relay.stop()


# -------------------------------------------------------------------------------------------- links


def _flap(lab: Lab, ns: str, ifname: str, down_s: float = 1.0) -> None:
    lab.netns(ns, "ip", "link", "set", ifname, "down")
    time.sleep(down_s)
    lab.netns(ns, "ip", "link", "set", ifname, "up")


def _recreate_output_link(lab: Lab) -> None:
    lab.netns(lab.relay, "ip", "link", "del", "rout")  # takes its peer snk0 with it
    lab.netns(lab.relay, "ip", "link", "add", "rout", "type", "veth", "peer", "name", "snk0", "netns", lab.sink)
    lab.netns(lab.relay, "ip", "addr", "add", "10.200.3.1/24", "dev", "rout")
    lab.netns(lab.sink, "ip", "addr", "add", "10.200.3.2/24", "dev", "snk0")
    lab.netns(lab.relay, "ip", "link", "set", "rout", "up")
    lab.netns(lab.sink, "ip", "link", "set", "snk0", "up")


def test_input_and_output_links_flap(lab: Lab, workdir: Path, relay: Relay, engine: str) -> None:
    """Input down/up, output down/up, output deleted and re-created: after each, every packet arrives."""
    relay.add("f", "239.2.2.2:6001:rout")
    total = 0
    for fault in ("input down/up", "output down/up", "output re-created"):
        if fault == "input down/up":
            _flap(lab, lab.relay, "rin")
        elif fault == "output down/up":
            _flap(lab, lab.relay, "rout")
        else:
            _recreate_output_link(lab)
        wait_for(lambda: relay.rules()[0]["state"] == "active" and relay.rules()[0]["state_reason"] == "", 10,
                 what=f"the rule active again after {fault}")  # fmt: skip
        assert relay.ctl("ping", check=False).returncode == 0
        time.sleep(0.5)  # the resolution reaches the data plane
        sink = start_sink(lab, workdir, "239.2.2.2", "6001", expect=800)
        send(lab, count=800, rate=4000, size=600)
        report = sink.result()
        assert (report["received"], report["duplicated"], report["corrupted"]) == (800, 0, 0), fault
        total += 800
        assert relay.wait_relayed("f", total)["packets_relayed"] == total, fault
    assert relay.rules()[0]["engine"] == engine


def test_output_counters_follow_their_output_across_link_changes(
    lab: Lab, workdir: Path, relay: Relay, engine: str
) -> None:
    """The middle output's link is down, comes up, goes down again: each output's counters count what was sent
    to that output only (the kernel keeps them by position, which shifts), and a skipped output keeps its count."""
    lab.add_leg("sk2", "rout2", "10.200.4.1", "snk1", "10.200.4.2")
    lab.netns(lab.relay, "ip", "link", "set", "rout2", "down")
    relay.add("fan", "239.2.2.2:6001:rout,239.2.2.3:6002:rout2,239.2.2.4:6003:rout")

    def reason() -> str:
        return str(relay.rules()[0]["state_reason"])

    total = 0
    for step, (link, expected) in enumerate((("down", [1, 0, 1]), ("up", [2, 1, 2]), ("down", [3, 1, 3]))):
        lab.netns(lab.relay, "ip", "link", "set", "rout2", link)
        wanted = "output[1] rout2 is down" if link == "down" else ""
        wait_for(lambda wanted=wanted: reason() == wanted, 10, what=f"step {step}: rout2 {link}")
        time.sleep(0.5)  # the resolution reaches the data plane
        send(lab, count=500, rate=5000, size=300)
        total += 500
        flow = relay.wait_relayed("fan", total)
        assert flow["packets_relayed"] == total, step
        sent = [(o["packets_sent"], o["bytes_sent"], o["send_errors"]) for o in flow["outputs"]]
        assert sent == [(500 * k, 500 * k * 300, 0) for k in expected], (step, sent)
    assert relay.rules()[0]["engine"] == engine


def test_dead_sink_link_blocks_nothing(lab: Lab, workdir: Path, relay: Relay) -> None:
    """The sink namespace's link goes down for a while: the other output and the other rule keep flowing, the
    control socket answers promptly, and the first output delivers again when the link returns."""
    other = lab.add_leg("sk2", "rout2", "10.200.4.1", "snk1", "10.200.4.2")
    relay.add("both", "239.2.2.2:6001:rout,239.2.2.3:6002:rout2")
    relay.add("solo", "239.2.2.4:6004:rout2", group="239.1.1.2", port=5002)
    lab.netns(lab.sink, "ip", "link", "set", "snk0", "down")
    wait_for(lambda: "output[0] rout has no carrier" in relay.rules()[0]["state_reason"], 10, what="the carrier note")
    far = start_sink(lab, workdir, "239.2.2.3,239.2.2.4", "6002,6004", expect=6000, ns=other, iface="snk1")
    a = _start_generator(lab, count=3000, rate=1000)
    b = _start_generator(lab, count=3000, rate=1000, group="239.1.1.2", port=5002)
    slowest = 0.0
    while a.poll() is None or b.poll() is None:
        started = time.monotonic()
        assert relay.ctl("ping", check=False).returncode == 0
        relay.flow("both")
        slowest = max(slowest, time.monotonic() - started)
    _generator_report(a), _generator_report(b)
    assert slowest < 5.0, f"a control request took {slowest:.1f} s while an output was dead"
    report = far.result()
    assert (report["received"], report["lost"]) == (6000, 0), report
    both = relay.wait_relayed("both", 3000)
    dead, alive_out = both["outputs"]
    assert alive_out["packets_sent"] == 3000 and alive_out["send_errors"] == 0
    # the kernel takes the packets and drops them at the device (NET_XMIT_CN is no error): every one is still
    # accounted for, once, on the output; its rule names the missing carrier (asserted above)
    assert dead["packets_sent"] + dead["send_errors"] == 3000, dead
    assert relay.wait_relayed("solo", 3000)["packets_relayed"] == 3000

    lab.netns(lab.sink, "ip", "link", "set", "snk0", "up")
    wait_for(lambda: relay.rules()[0]["state_reason"] == "", 10, what="the carrier note to clear")
    time.sleep(0.5)
    near = start_sink(lab, workdir, "239.2.2.2", "6001", expect=1000)
    send(lab, count=1000, rate=4000)
    assert near.result()["received"] == 1000, "the output delivers again once its link is back"


# --------------------------------------------------------------------------------------- stats pipe


def test_stalled_supervisor_does_not_stall_forwarding(lab: Lab, workdir: Path) -> None:
    """SIGSTOP the supervisor while traffic flows, long enough for the workers' stats pipe to fill: forwarding
    goes on, the skipped reports are counted, and after SIGCONT the counters are exact."""
    config = workdir / "many.toml"
    rules = [("live", "239.1.1.1", "239.2.2.2:6001:rout")]
    # long ids make each report about 118 KB (twice a second): the 1 MiB pipe is full after about 5 s
    rules += [(f"idle-{i:03d}-".ljust(64, "x"), f"239.3.{i // 250}.{i % 250 + 1}", "239.2.2.9:6009:rout")
              for i in range(999)]  # fmt: skip
    config.write_text(
        "".join(
            f'[[rule]]\nid = "{rid}"\ninput_interface = "rin"\ninput_group = "{g}"\ninput_port = 5001\n'
            f'outputs = ["{o}"]\n'
            for rid, g, o in rules
        )
    )
    relay = Relay(lab, workdir, extra=["--config", str(config), "--engine", "userspace"]).start()
    try:
        wait_for(lambda: len(relay.rules()) == 1000, 20, what="1000 rules")
        count, rate = 14_000, 1000
        sink = start_sink(lab, workdir, "239.2.2.2", "6001", expect=count, idle=10)
        gen = _start_generator(lab, count=count, rate=rate)
        relay.wait_relayed("live", 500, timeout=20)
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(9)
        finally:
            relay.proc.send_signal(signal.SIGCONT)
        _generator_report(gen)
        report = sink.result()
        assert (report["received"], report["lost"], report["duplicated"]) == (count, 0, 0), report
        assert relay.wait_relayed("live", count, timeout=20)["packets_relayed"] == count
        (worker,) = relay.workers()
        assert worker["stats_pipe_errors"] > 0, "the pipe never filled: the test did not provoke what it claims"
        assert worker["restarts"] == 0
    finally:
        relay.stop()


# ---------------------------------------------------------------------------------------- full disk


def test_full_disk_refuses_the_change_and_keeps_the_state(lab: Lab, workdir: Path) -> None:
    """The state file's directory is a tiny tmpfs in the supervisor's private mount namespace."""
    state_dir = workdir / "state"
    state_dir.mkdir()
    state = state_dir / "rules.json"
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs -o size=64k mcr-test-full "{state_dir}" && exec "$0" "$@"']  # fmt: skip
    relay = Relay(lab, workdir, wrap=wrap, extra=["--state-file", str(state)]).start()
    assert relay.proc is not None

    def inside(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert relay.proc is not None
        return subprocess.run(
            ["nsenter", "--target", str(relay.proc.pid), "--mount", *argv],
            capture_output=True, text=True, timeout=30, check=check,
        )  # fmt: skip

    try:
        relay.add("kept", "239.2.2.2:6001:rout")
        saved = inside("cat", str(state)).stdout
        assert json.loads(saved)["rules"][0]["rule_id"] == "kept"
        assert not state.exists(), "the state file lives on the private tmpfs"
        inside("dd", "if=/dev/zero", f"of={state_dir}/filler", "bs=4k", check=False)
        refused = relay.ctl("add", "--rule-id", "new", "--input-interface", "rin", "--input-group", "239.1.1.2",
                            "--input-port", "5002", "--outputs", "239.2.2.3:6002:rout", check=False)  # fmt: skip
        assert refused.returncode == 1
        assert f"Rule new not added: cannot save state to {state}: No space left on device" in refused.stderr
        removal = relay.ctl("remove", "--rule-id", "kept", check=False)
        assert removal.returncode == 1 and "Rule kept not removed: cannot save state" in removal.stderr
        assert [r["rule_id"] for r in relay.rules()] == ["kept"], "nothing lost, nothing half-added"
        assert inside("cat", str(state)).stdout == saved, "the previous state file is intact"
        listed = inside("ls", "-A", str(state_dir)).stdout.split()
        assert listed == ["filler", "rules.json", "rules.json.journal"], "no temp file left"
        assert inside("cat", f"{state}.journal").stdout == "", "no half record left in the journal"
        sink = start_sink(lab, workdir, "239.2.2.2", "6001", expect=500)
        send(lab, count=500, rate=5000)
        assert sink.result()["received"] == 500, "forwarding is untouched by the full disk"

        inside("rm", f"{state_dir}/filler")
        relay.add("new", "239.2.2.3:6002:rout", group="239.1.1.2", port=5002)
        journal = inside("cat", f"{state}.journal").stdout
        assert saved_rule_ids(inside("cat", str(state)).stdout, journal) == ["kept", "new"]
        assert "\0" not in journal, "no room for the zeros laid ahead (256 kB): the record went in as an append"
    finally:
        relay.stop()


# ------------------------------------------------------------------------------------ join sockets


def test_join_sockets_beyond_one_message_are_held_without_restarts(lab: Lab, workdir: Path) -> None:
    """With igmp_max_memberships 1 in the relay namespace, 300 input groups take 300 join sockets: more than
    one SCM_RIGHTS message may carry (253). Worker 0 holds a copy of each (they keep the memberships while no
    supervisor runs), sent in several messages, and is never restarted for it; the rules all go active."""
    lab.netns(lab.relay, "sysctl", "-qw", "net.ipv4.igmp_max_memberships=1")
    config = workdir / "many-groups.toml"
    config.write_text(
        "\n".join(
            f'[[rule]]\nid = "g{i}"\ninput_interface = "rin"\ninput_group = "239.7.{i >> 8}.{i & 255}"\n'
            f'input_port = 5001\noutputs = [{{ group = "239.2.2.2", port = 6001, interface = "rout" }}]\n'
            for i in range(300)
        )
    )
    relay = Relay(lab, workdir, extra=["--config", str(config)]).start()
    try:
        wait_for(lambda: sum(r["state"] == "active" for r in relay.rules()) == 300, 20, what="300 rules active")
        relay.add("s", "239.2.2.2:6001:rout")  # one more group: the set changes and is sent again
        (worker,) = relay.workers()

        def held() -> int:
            fds = Path(f"/proc/{worker['pid']}/fd")
            return sum(os.readlink(fd).startswith("socket:") for fd in fds.iterdir())

        wait_for(lambda: held() >= 301, 10, what="worker 0 to hold the 301 join sockets")
        time.sleep(1.0)
        (after,) = relay.workers()
        assert (after["pid"], after["restarts"], after["status"]) == (worker["pid"], 0, "Running"), after
    finally:
        relay.stop()
