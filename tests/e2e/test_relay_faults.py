"""Bad frames, dead workers, shutdown and privileges: what an operator checks when things go wrong."""

from __future__ import annotations

import itertools
import os
import re
import signal
import time
from ipaddress import IPv4Address
from typing import Any

import pytest

from mcr.packet.build import build_udp_frame

from .netns import SRC_IP, Chain, pid_alive, proc_status, wait_for
from .relay import Supervisor, probe, start_generator, start_probe, start_sink, wait_file

pytestmark = pytest.mark.netns

OUT_GROUP = "239.2.2.2"
OUT_PORT = 6000
NOBODY = 65534


@pytest.mark.timeout(90)
def test_malformed_frames_are_dropped_counted_and_not_relayed(chain: Chain) -> None:
    """Fragments, truncated and bad headers, non-UDP: counted per reason, never relayed; the flow is intact.

    The group's low 16 bits equal the port (19.136 = 0x1388 = 5000), so that a frame with IHL 4, whose UDP
    port a header-length-driven socket filter reads from the last two bytes of the destination address, still
    looks like the flow to such a filter and reaches the parser: every class below must then be counted.
    """
    lab = chain.lab
    group, port = "239.200.19.136", 5000
    sup = Supervisor.start(lab, chain.relay)
    sup.add_rule(rule_id="flow", group=group, port=port, outputs=[f"{OUT_GROUP}:{OUT_PORT}:rout"])
    (worker_pid,) = sup.worker_pids()
    src_mac = chain.mac(chain.src, "src0")
    junk = b"J" * 100

    def frame(**kw: object) -> bytes:
        args: dict[str, object] = {"src_mac": src_mac, "src_ip": SRC_IP, "dst_ip": group, "dst_port": port}
        args.update(kw)
        args.setdefault("payload", junk)
        return build_udp_frame(**args)  # type: ignore[arg-type]

    per_class = 20
    classes = {
        "fragment": [frame(more_fragments=True, ident=7)] * (per_class // 2)
        + [frame(fragment_offset=185, ident=8)] * (per_class // 2),
        "truncated": [frame(total_length=20 + 8 + len(junk) + 200)] * per_class,
        "bad_udp_length": [frame(udp_length=8 + len(junk) + 50)] * per_class,
        "bad_ip_header": [frame(ihl=4)] * (per_class // 2) + [frame(version=5)] * (per_class // 2),
        "not_udp": [frame(protocol=6)] * per_class,
    }
    assert int(IPv4Address(group)) & 0xFFFF == port
    frames_file = lab.workdir / "frames.hex"
    frames_file.write_text("\n".join(f.hex() for fs in classes.values() for f in fs) + "\n")

    count = 3000
    sink = start_sink(lab, chain.sink, [(OUT_GROUP, OUT_PORT)], expect=count, idle_timeout=3)
    before = sup.drops()
    gen = start_generator(chain, group, port, rate=2000, size=500, count=count)
    injected = probe(lab, chain.src, "inject", "--ifname", "src0", "--frames", str(frames_file), "--gap", "0.002")
    assert injected["sent"] == per_class * len(classes)
    assert sup.ctl("ping").returncode == 0, "the supervisor keeps answering"
    assert gen.json(timeout=30)["sent"] == count
    report = sink.report()
    assert (report["unique"], report["lost"], report["duplicated"], report["corrupted"]) == (count, 0, 0, 0), (
        report.summary()
    )
    assert report["unnumbered"] == 0, "a malformed frame's payload came out of the relay"

    def counted() -> dict[str, int] | None:
        now = sup.drops()
        delta = {k: now.get(k, 0) - before.get(k, 0) for k in classes}
        return delta if all(v >= per_class for v in delta.values()) else None

    try:
        delta = wait_for(counted, 5, "every malformed frame to be counted as a drop")
    except AssertionError:
        now = sup.drops()
        delta = {k: now.get(k, 0) - before.get(k, 0) for k in now}
        raise AssertionError(f"drops counted {delta}, expected {per_class} for each of {sorted(classes)}") from None
    assert delta == dict.fromkeys(classes, per_class), "each malformed frame is counted once, under its reason"
    flow = sup.wait_relayed("flow", count, timeout=5)
    assert flow["packets_relayed"] == count, f"the sink got {count} but the relay counted: {sup.snapshot()}"
    assert sup.worker_pids() == [worker_pid], "no worker crashed"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_killed_worker_is_restarted_with_its_rules_and_forwards_again(chain: Chain) -> None:
    lab = chain.lab
    sup = Supervisor.start(lab, chain.relay)
    sup.add_rule(rule_id="k", group="239.1.1.1", port=5000, outputs=[f"{OUT_GROUP}:{OUT_PORT}:rout"])
    rules = sup.rules()
    (old_pid,) = sup.worker_pids()
    rate, seconds = 1000, 8
    ready = lab.workdir / "recv.ready"
    receiver = start_probe(
        lab, chain.sink, "recv", "--group", OUT_GROUP, "--port", str(OUT_PORT), "--ifname", "snk0", "--times",
        "--duration", str(seconds + 3), "--ready-file", str(ready), name="receiver",
    )  # fmt: skip
    wait_file(ready, receiver)
    gen = start_generator(chain, "239.1.1.1", 5000, rate=rate, size=200, count=rate * seconds)
    sup.wait_flow("k", lambda f: f["packets_relayed"] >= rate, "traffic flowing")
    t_kill = time.time()  # wall clock, as the receiver's kernel timestamps
    os.kill(old_pid, signal.SIGKILL)

    def replaced() -> list[int] | None:
        pids = sup.worker_pids()
        return pids if pids and old_pid not in pids else None

    new_pids = wait_for(replaced, 5, "a new worker in list-workers")
    t_new = time.time()
    (new_pid,) = new_pids
    assert new_pid != old_pid and not pid_alive(old_pid)
    (worker,) = sup.workers()
    assert worker["restarts"] >= 1, worker
    # the same rules, `pending` until the new worker has confirmed them, then `active` as before
    wait_for(lambda: sup.rules() == rules, 5, "the restarted worker to serve the same rules")
    gen.json(timeout=seconds + 10)
    arrivals = receiver.json(timeout=20)["times"]
    after = [t for t in arrivals if t >= t_kill - 0.5]
    assert after and after[-1] > t_new + 1.0, "traffic must flow again after the restart"
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert max(gaps) <= 2.0, f"forwarding stopped for {max(gaps):.2f} s around the restart (limit 2 s)"


@pytest.mark.timeout(60)
def test_sigterm_stops_supervisor_and_workers_and_removes_the_socket(chain: Chain) -> None:
    lab = chain.lab
    sup = Supervisor.start(lab, chain.relay, num_workers=2)
    sup.add_rule(rule_id="t", group="239.1.1.1", port=5000, outputs=[f"{OUT_GROUP}:{OUT_PORT}:rout"])
    workers = sup.worker_pids()
    assert len(workers) == 2
    gen = start_generator(chain, "239.1.1.1", 5000, rate=2000, size=500, count=20_000)
    sup.wait_flow("t", lambda f: f["packets_relayed"] > 0, "traffic flowing")
    rc, took = sup.terminate(timeout=5.0)
    assert rc == 0, f"exit status {rc} after SIGTERM"
    assert took <= 5.0
    assert not sup.socket_path.exists(), "the control socket file is left behind"
    wait_for(lambda: sup.all_gone(workers), 1.0, "the workers to be gone")
    assert lab.netns_pids(chain.relay) == [], "processes left in the relay namespace"
    gen.stop()


@pytest.mark.timeout(60)
def test_workers_run_unprivileged(chain: Chain) -> None:
    sup = Supervisor.start(chain.lab, chain.relay, num_workers=2, user="nobody", group="nogroup")
    workers = sup.workers()
    assert len(workers) == 2
    problems = []
    for w in workers:
        status = proc_status(int(w["pid"]))
        if w.get("uid") != NOBODY:
            problems.append(f"list-workers says uid {w.get('uid')}")
        for key in ("Uid", "Gid"):
            if status[key].split() != [str(NOBODY)] * 4:
                problems.append(f"pid {w['pid']} {key}: {status[key]}")
        for key in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            if int(status[key], 16) != 0:
                problems.append(f"pid {w['pid']} {key}: {status[key]}")
        if status.get("NoNewPrivs") != "1":
            problems.append(f"pid {w['pid']} NoNewPrivs: {status.get('NoNewPrivs')}")
        if "0" in status.get("Groups", "").split():
            problems.append(f"pid {w['pid']} keeps supplementary group root: {status['Groups']}")
    assert not problems, problems
    assert proc_status(sup.proc.pid)["Uid"].split()[0] == "0", "the supervisor itself stays root"


def _allowed_cpus(pid: int) -> str:
    return proc_status(pid)["Cpus_allowed_list"]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_workers_run_on_their_worker_cpus_and_a_restarted_one_too(chain: Chain) -> None:
    lab = chain.lab
    cpus = sorted(os.sched_getaffinity(0))
    order = list(reversed(cpus))  # worker 0 on the last CPU: not where it would run by chance of the default
    listed = ",".join(map(str, order))
    sup = Supervisor.start(lab, chain.relay, num_workers=2, extra=["--worker-cpus", listed])
    sup.add_rule(rule_id="p", group="239.1.1.1", port=5000, outputs=[f"{OUT_GROUP}:{OUT_PORT}:rout"])
    expected = [order[k % len(order)] for k in range(2)]
    workers = sorted(sup.workers(), key=lambda w: w["worker_id"])
    assert [w["core_id"] for w in workers] == expected, workers
    assert [_allowed_cpus(w["pid"]) for w in workers] == [str(c) for c in expected]
    assert re.search(rf"worker_cpus\s+{re.escape(listed)}\b", sup.ctl("config", "show", json_out=False).stdout)

    old_pid = workers[0]["pid"]
    os.kill(old_pid, signal.SIGKILL)

    def replaced() -> dict[str, Any] | None:
        w = min(sup.workers(), key=lambda w: w["worker_id"])
        return w if w["pid"] != old_pid and w["state"] == "Running" else None

    again = wait_for(replaced, 10, "worker 0 to be restarted")
    assert again["core_id"] == expected[0] and _allowed_cpus(again["pid"]) == str(expected[0]), again
    # unpinned unless asked: core_id null, as the original reports an unpinned worker
    sup.terminate()
    plain = Supervisor.start(lab, chain.relay)
    (worker,) = plain.workers()
    assert worker["core_id"] is None, worker


@pytest.mark.timeout(30)
def test_worker_cpus_that_are_not_online_stop_the_start_with_the_reason(chain: Chain) -> None:
    sup = Supervisor.start(chain.lab, chain.relay, extra=["--worker-cpus", "0,4000"], wait=False)
    assert sup.proc.wait(20) == 2
    assert "worker CPUs 0,4000: CPU 4000 is not online on this host (online: " in sup.proc.err()
