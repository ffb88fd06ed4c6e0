"""The IGMP/MLD querier against the Linux kernel as hosts, in namespaces.

RELAY's `rout` (10.200.3.1) is cabled to SINK's `snk0` (10.200.3.2). The supervisor queries on `rout` with short
timers; SINK's kernel, forced to an IGMP or MLD version, is the host. A process in SINK joins a group (any-source
or source-specific) and leaves it by exiting. The tests check what an operator would: the group appears in
`control_client igmp groups` with the host as reporter, its version and source list; a host that joined before the
supervisor started is learnt only through our queries; the host's own /proc files show our queries took effect;
a leave removes the group within the Last Member Query Time; with a second querier on the link the lowest address
wins and the other takes over when the winner stops querying.
"""

from __future__ import annotations

import os
import sys
import time
from ipaddress import IPv4Address
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from .netns import Chain, NetLab, Proc, build_chain, wait_for
from .relay import Supervisor, start_generator, start_probe, start_sink, wait_file

pytestmark = pytest.mark.netns

# QI 4 s, QRI 1 s, R 2, LMQI 0.5 s: GMI 9 s, other querier present 8.5 s, LMQT 1 s
TIMERS = "query_interval = 4\nquery_response_interval = 1\nrobustness = 2\nlast_member_query_interval = 0.5\n"
GROUP4, GROUP6 = "239.5.5.5", "ff0e::5:5"
SOURCE4, SOURCE6 = "10.200.1.2", "2001:db8:1::2"

JOINER = """
import socket, sys, time
from ipaddress import ip_address
from mcr.supervisor.memberships import membership_option
group, ifname = ip_address(sys.argv[1]), sys.argv[2]
source = ip_address(sys.argv[3]) if len(sys.argv) > 3 else None
s = socket.socket(socket.AF_INET if group.version == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(*membership_option((socket.if_nametoindex(ifname), group, source), True))
print("joined", flush=True)
time.sleep(120)
"""


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mcr.toml"
    path.write_text(text)
    return path


def join(lab: NetLab, ns: str, group: str, ifname: str, source: str | None = None) -> Proc:
    argv = [sys.executable, "-c", JOINER, group, ifname, *([source] if source else [])]
    proc = lab.popen(ns, *argv, name="joiner")
    wait_for(lambda: "joined" in proc.out() or None, 10.0, "the joiner to join")
    return proc


def groups(sup: Supervisor, proto: str = "igmp") -> list[dict[str, Any]]:
    doc = sup.ctl(proto, "groups").doc
    return list(doc["IgmpGroups" if proto == "igmp" else "MldGroups"])


def entry(sup: Supervisor, group: str, proto: str = "igmp") -> dict[str, Any] | None:
    return next((g for g in groups(sup, proto) if g["group"] == group and g["interface"] == "rout"), None)


def querier(sup: Supervisor, family: str = "ipv4", ifname: str = "rout") -> dict[str, Any]:
    views = sup.ctl("igmp", "queriers").doc["Queriers"]
    return next(q for q in views if q["interface"] == ifname and q["family"] == family)


def enable_ipv6(lab: NetLab, ns: str, ifname: str) -> None:
    lab.run(ns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=0")
    lab.run(ns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=0")
    wait_for(
        lambda: "fe80" in lab.run(ns, "ip", "-6", "addr", "show", "dev", ifname).stdout or None,
        10.0,
        f"a link-local address on {ifname}",
    )


def proc_igmp(lab: NetLab, ns: str, ifname: str) -> str:
    """The host's /proc/net/igmp line of `ifname`: index, name, group count and the querier version it heard."""
    lines = lab.run(ns, "cat", "/proc/net/igmp").stdout.splitlines()
    return next(line for line in lines if f"{ifname}" in line.split(":")[0])


@pytest.mark.parametrize(("host_version", "ssm"), [(2, False), (3, False), (3, True)])
def test_igmp_host_learnt_through_our_queries_then_leaves(
    chain: Chain, tmp_path: Path, host_version: int, ssm: bool
) -> None:
    lab, sink = chain.lab, chain.sink
    lab.run(sink, "sysctl", "-qw", f"net.ipv4.conf.snk0.force_igmp_version={host_version}")
    for v in (2, 3):
        lab.run(sink, "sysctl", "-qw", f"net.ipv4.conf.snk0.igmpv{v}_unsolicited_report_interval=100")
    joiner = join(lab, sink, GROUP4, "snk0", SOURCE4 if ssm else None)
    time.sleep(1.0)  # its unsolicited reports are over before the supervisor listens
    config = write_config(tmp_path, f'[igmp]\nquerier_interfaces = ["rout"]\n{TIMERS}')
    sup = Supervisor.start(lab, chain.relay, extra=["--config", str(config)])

    learnt = wait_for(lambda: entry(sup, GROUP4), 5.0, "the group in `igmp groups`")
    assert learnt["last_reporter"] == chain.sink_ip and learnt["is_querier"]
    assert learnt["version"] == host_version
    if ssm:
        assert learnt["filter_mode"] == "include"
        assert [s["address"] for s in learnt["sources"]] == [SOURCE4]
        # the host's own filter: INCLUDE {SOURCE4} on the group, what our table shows
        mcfilter = lab.run(sink, "cat", "/proc/net/mcfilter").stdout.split()
        at = mcfilter.index(f"0x{int(IPv4Address(GROUP4)):08x}")
        assert mcfilter[at + 1 : at + 4] == [f"0x{int(IPv4Address(SOURCE4)):08x}", "1", "0"]
    else:
        assert learnt["filter_mode"] == "exclude" and learnt["sources"] == []
    assert 0 < learnt["expires_in_secs"] <= 9
    assert proc_igmp(lab, sink, "snk0").split()[-1] == f"V{host_version}"

    joiner.stop()
    left = time.monotonic()
    wait_for(lambda: entry(sup, GROUP4) is None or None, 5.0, "the group to go after the leave")
    assert time.monotonic() - left < 3.0  # LMQT 1 s, plus the host's report and our polling
    counters = querier(sup)["counters"]
    assert counters[f"reports_v{host_version}"] >= 1 and counters["general_queries_sent"] >= 1
    assert counters["specific_queries_sent"] >= 1
    if host_version == 2:
        assert counters["leaves"] == 1
    assert not any(k.startswith("dropped_") for k in counters), counters


def test_a_v3_host_falls_back_to_our_v2_queries(chain: Chain, tmp_path: Path) -> None:
    lab, sink = chain.lab, chain.sink
    config = write_config(tmp_path, f'[igmp]\nquerier_interfaces = ["rout"]\nversion = 2\n{TIMERS}')
    sup = Supervisor.start(lab, chain.relay, extra=["--config", str(config)])
    join(lab, sink, GROUP4, "snk0")
    wait_for(lambda: proc_igmp(lab, sink, "snk0").endswith("V2") or None, 5.0, "the host to hear a v2 querier")
    wait_for(lambda: ((e := entry(sup, GROUP4)) is not None and e["version"] == 2) or None, 6.0, "v2 reports")
    assert querier(sup)["version"] == 2


@pytest.mark.parametrize("host_version", [1, 2])
def test_mld_host_learnt_and_leaves(chain: Chain, tmp_path: Path, host_version: int) -> None:
    lab, sink = chain.lab, chain.sink
    enable_ipv6(lab, chain.relay, "rout")
    enable_ipv6(lab, sink, "snk0")
    lab.run(sink, "sysctl", "-qw", f"net.ipv6.conf.snk0.force_mld_version={host_version}")
    config = write_config(tmp_path, f'[mld]\nquerier_interfaces = ["rout"]\n{TIMERS}')
    sup = Supervisor.start(lab, chain.relay, extra=["--config", str(config)])
    joiner = join(lab, sink, GROUP6, "snk0")
    learnt = wait_for(lambda: entry(sup, GROUP6, "mld"), 6.0, "the group in `mld groups`")
    assert learnt["last_reporter"].startswith("fe80::") and learnt["version"] == host_version
    assert learnt["is_querier"]
    assert "ff0e0000000000000000000000050005" in lab.run(sink, "cat", "/proc/net/igmp6").stdout
    joiner.stop()
    left = time.monotonic()
    wait_for(lambda: entry(sup, GROUP6, "mld") is None or None, 5.0, "the group to go after the done")
    assert time.monotonic() - left < 3.0
    counters = querier(sup, "ipv6")["counters"]
    assert counters[f"reports_v{host_version}"] >= 1
    assert not any(k.startswith("dropped_") for k in counters), counters


def test_election_lowest_address_wins_and_the_other_takes_over(chain: Chain, tmp_path: Path) -> None:
    """Two supervisors on one link: RELAY (10.200.3.1) and SINK (10.200.3.2). RELAY wins; when its querier is
    disabled at run time, SINK takes over after the other-querier-present interval (8.5 s here)."""
    lab = chain.lab
    relay_config = write_config(tmp_path, f'[igmp]\nquerier_interfaces = ["rout"]\n{TIMERS}')
    sink_dir = tmp_path / "sink"
    sink_dir.mkdir()
    sink_config = sink_dir / "mcr.toml"
    sink_config.write_text(f'[igmp]\nquerier_interfaces = ["snk0"]\n{TIMERS}')
    relay = Supervisor.start(lab, chain.relay, extra=["--config", str(relay_config)])
    other = Supervisor.start(lab, chain.sink, extra=["--config", str(sink_config)])

    def settled() -> bool | None:
        return (not querier(other, ifname="snk0")["is_querier"] and querier(relay)["is_querier"]) or None

    wait_for(settled, 6.0, "the lower address to win")
    assert querier(other, ifname="snk0")["querier"] == chain.relay_out_ip
    relay.ctl("igmp", "disable-querier", "--interface", "rout")
    quiet = time.monotonic()
    wait_for(lambda: querier(other, ifname="snk0")["is_querier"] or None, 12.0, "the other to take over")
    # OQPI 8.5 s after RELAY's last query, which was at most QI = 4 s before it was disabled
    assert 4.0 < time.monotonic() - quiet < 9.5
    wait_for(lambda: querier(relay)["querier"] == chain.sink_ip or None, 3.0, "RELAY to see the new querier")


@pytest.mark.parametrize("engine", ["userspace", "kernel"])
def test_an_output_follows_its_receivers_without_loss_on_the_others(
    tmp_path: Path, netlab: NetLab, engine: str
) -> None:
    """Output 0 (239.5.5.5 on rout) follows receivers; output 1 (239.6.6.6 on rout2) always sends. Output 0 starts
    when the host on snk0 joins (its unsolicited report) and stops within LMQT of its leave; output 1's sink gets
    every packet throughout."""
    chain = build_chain(netlab, extra_outputs=1)
    lab = chain.lab
    config = write_config(tmp_path, f'[igmp]\nquerier_interfaces = ["rout"]\n{TIMERS}')
    sup = Supervisor.start(lab, chain.relay, extra=["--config", str(config), "--engine", engine])
    outputs = [
        {"group": GROUP4, "port": 6000, "interface": "rout", "follow_receivers": True},
        {"group": "239.6.6.6", "port": 6000, "interface": "rout2"},
    ]
    add = {"rule_id": "f", "input_interface": "rin", "input_group": "239.1.1.1", "input_port": 5000, "outputs": outputs}
    assert sup.request({"AddRule": add}) == {"Success": "Rule f added"}
    (rule,) = sup.rules()
    assert rule["engine"] == engine and "output[0] rout has no receivers for 239.5.5.5" in rule["state_reason"]
    assert rule["outputs"][0]["follow_receivers"] is True and "follow_receivers" not in rule["outputs"][1]

    count, rate = 2000, 200  # 10 s of traffic
    other = start_sink(lab, chain.outputs[1].sink_ns, [("239.6.6.6", 6000)], interface="snk1", expect=count)
    gen = start_generator(chain, "239.1.1.1", 5000, rate=rate, count=count)

    def sent(i: int) -> int | None:
        flow = sup.flow("f")
        return None if flow is None else int(flow["outputs"][i]["packets_sent"])

    wait_for(lambda: (sent(1) or 0) > 100 or None, 5.0, "output 1 to send")
    assert sent(0) == 0
    joiner = join(lab, chain.sink, GROUP4, "snk0")
    joined = time.monotonic()
    wait_for(lambda: (sent(0) or 0) > 0 or None, 3.0, "output 0 to start after the join")
    assert time.monotonic() - joined < 1.5  # the report is unsolicited: well within one query response interval
    time.sleep(1.0)
    joiner.stop()
    left = time.monotonic()

    def stopped() -> int | None:
        before = sent(0)
        time.sleep(0.6)
        return before if before == sent(0) else None

    wait_for(stopped, 4.0, "output 0 to stop after the leave")
    assert time.monotonic() - left < 3.5  # LMQT 1 s, then the counters' own freshness (0.5 s) and this poll
    report = gen.json(timeout=30)
    assert report["sent"] == count
    got = other.stop().stream("239.6.6.6", 6000)
    assert (got["received"], got["lost"]) == (count, 0), got


BAD_SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))
s.sendto(bytes.fromhex("16000000ef050505"), ("239.5.5.5", 0))  # a v2 report whose checksum is 0
s.sendto(bytes.fromhex("1100"), ("224.0.0.1", 0))  # a truncated query
s.sendto(bytes.fromhex("2200ddfe00000001"), ("224.0.0.22", 0))  # a v3 report that promises a record it lacks
"""


def test_bad_packets_are_counted_and_change_nothing(chain: Chain, tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[igmp]\nquerier_interfaces = ["rout"]\n{TIMERS}')
    sup = Supervisor.start(chain.lab, chain.relay, extra=["--config", str(config)])
    chain.lab.run(chain.sink, sys.executable, "-c", BAD_SENDER, chain.sink_ip)

    def counted() -> dict[str, int] | None:
        c = querier(sup)["counters"]
        return c if c.get("dropped_bad_checksum") and c.get("dropped_truncated") else None

    counters = wait_for(counted, 5.0, "the drops to be counted")
    assert counters["dropped_bad_checksum"] == 1 and counters["dropped_truncated"] == 2, counters
    assert groups(sup) == [] and querier(sup)["is_querier"]
    assert sup.proc.poll() is None


ORIGINAL_BIN = Path(os.environ.get("MCR_ORIGINAL_BIN", "/tmp/rustmcr/bin"))


@pytest.mark.skipif(not (ORIGINAL_BIN / "mcrctl").exists(), reason=f"the original's mcrctl is not in {ORIGINAL_BIN}")
def test_the_originals_mcrctl_igmp_commands_work_against_us(chain: Chain, tmp_path: Path) -> None:
    lab = chain.lab
    config = write_config(tmp_path, f'[igmp]\npassive_interfaces = ["rout"]\n{TIMERS}')
    sup = Supervisor.start(lab, chain.relay, extra=["--config", str(config)])

    def mcrctl(*args: str) -> str:
        argv = [str(ORIGINAL_BIN / "mcrctl"), "--socket-path", str(sup.socket_path), *args]
        return lab.run(None, *argv).stdout

    enabled = mcrctl("igmp", "enable-querier", "--interface", "rout")
    assert "IGMP querier enabled on rout" in enabled
    wait_for(lambda: querier(sup)["is_querier"] or None, 3.0, "the querier to start")
    join(lab, chain.sink, GROUP4, "snk0")
    wait_for(lambda: entry(sup, GROUP4), 5.0, "the group")
    shown = mcrctl("igmp", "groups")
    assert GROUP4 in shown and chain.sink_ip in shown, shown
    assert "IGMP querier disabled" in mcrctl("igmp", "disable-querier", "--interface", "rout")
    assert not querier(sup)["is_querier"]


FRR_DIR = Path("/usr/lib/frr")
FRR_PIMD = """debug igmp events
interface fq0
 ip igmp
 ip igmp query-max-response-time 10
 ip igmp query-interval 4
"""


def start_frr(lab: NetLab, ns: str) -> tuple[Proc, Proc, Path]:
    """zebra and pimd in `ns` as IGMP querier on fq0 (QI 4 s, max response 1 s); their sockets in a directory the
    frr user can reach (pytest's own tmp root is private to root)."""
    import shutil
    import tempfile

    run = lab.track_dir(Path(tempfile.mkdtemp(prefix="mcr-frr-")))
    run.chmod(0o755)
    (run / "zebra.conf").write_text("")
    (run / "pimd.conf").write_text(FRR_PIMD)
    shutil.chown(run, "frr", "frr")
    for f in run.iterdir():
        shutil.chown(f, "frr", "frr")

    def daemon(name: str) -> Proc:
        argv = [str(FRR_DIR / name), "-u", "frr", "-g", "frr", "-i", str(run / f"{name}.pid"), "-P", "0"]
        argv += ["--log", "stdout", "--log-level", "debug"]
        argv += ["--vty_socket", str(run), "-z", str(run / "zserv.api"), "-f", str(run / f"{name}.conf")]
        return lab.popen(ns, *argv, name=name)

    zebra = daemon("zebra")
    wait_for(lambda: (run / "zserv.api").exists() or None, 10.0, "zebra's socket")
    return zebra, daemon("pimd"), run


def frr_interface(lab: NetLab, ns: str, run: Path) -> dict[str, Any] | None:
    import json

    out = lab.run(ns, "vtysh", "--vty_socket", str(run), "-c", "show ip igmp interface json", check=False).stdout
    try:
        return dict(json.loads(out)).get("fq0")
    except ValueError:
        return None


@pytest.mark.skipif(not (FRR_DIR / "pimd").exists(), reason="FRR (Debian package frr) is not installed")
@pytest.mark.parametrize("we_are_lower", [True, False])
def test_election_against_frr_pimd(netlab: NetLab, tmp_path: Path, we_are_lower: bool) -> None:
    """MCR and FRR's pimd query on one link: the lower address wins on both sides; when pimd (the winner) stops,
    MCR takes over within the other-querier-present interval it derives from pimd's QQIC (2 * 4 + 1 / 2 s)."""
    from .netns import _veth

    lab = netlab
    relay, frr = lab.add_netns("rly"), lab.add_netns("frr")
    ours, theirs = ("10.200.20.1", "10.200.20.2") if we_are_lower else ("10.200.20.9", "10.200.20.2")
    _veth(lab, relay, "rq0", ours, frr, "fq0", theirs, 1500)
    config = write_config(tmp_path, f'[igmp]\nquerier_interfaces = ["rq0"]\n{TIMERS}')
    sup = Supervisor.start(lab, relay, extra=["--config", str(config)])
    _zebra, pimd, run = start_frr(lab, frr)

    def heard() -> dict[str, Any] | None:
        view = querier(sup, ifname="rq0")
        return view if view["counters"].get("queries_received_v3", 0) >= 2 else None

    view = wait_for(heard, 10.0, "pimd's queries")
    assert view["is_querier"] is we_are_lower
    if we_are_lower:
        time.sleep(2.0)  # pimd queries again and changes nothing here
        assert querier(sup, ifname="rq0")["is_querier"]
        if not Path("/proc/net/ip_mr_vif").exists():
            pytest.skip("pimd receives IGMP only through the multicast routing socket (no CONFIG_IP_MROUTE here)")
        frr_says = wait_for(
            lambda: ((v := frr_interface(lab, frr, run)) is not None and not v["querier"] and v) or None,
            10.0,
            "pimd to step down",
        )
        assert frr_says["querierIp"] == ours
        return
    assert querier(sup, ifname="rq0")["querier"] == theirs
    pimd.stop()
    quiet = time.monotonic()
    wait_for(lambda: querier(sup, ifname="rq0")["is_querier"] or None, 12.0, "MCR to take over")
    assert time.monotonic() - quiet < 9.5


def test_the_originals_json5_igmp_section_starts_the_querier(chain: Chain, tmp_path: Path) -> None:
    path = tmp_path / "mcr.json5"
    path.write_text(
        '{ rules: [], igmp: { querier_interfaces: ["rout"], query_interval: 4, robustness: 2, '
        "query_response_interval: 1 } }\n"
    )
    sup = Supervisor.start(chain.lab, chain.relay, extra=["--config", str(path)])
    join(chain.lab, chain.sink, GROUP4, "snk0")
    learnt = wait_for(lambda: entry(sup, GROUP4), 5.0, "the group")
    assert learnt["is_querier"] and learnt["expires_in_secs"] <= 9  # GMI = 2 * 4 + 1 from the file's timers
    assert "not served" not in sup.proc.err()


def test_sighup_applies_new_querier_settings(chain: Chain, tmp_path: Path) -> None:
    import signal

    config = write_config(tmp_path, f'[igmp]\npassive_interfaces = ["rout"]\n{TIMERS}')
    sup = Supervisor.start(chain.lab, chain.relay, extra=["--config", str(config)])
    assert not querier(sup)["active"] and not querier(sup)["is_querier"]
    config.write_text(f'[igmp]\nquerier_interfaces = ["rout"]\n{TIMERS}')
    sup.proc.signal(signal.SIGHUP)
    wait_for(lambda: querier(sup)["is_querier"] or None, 5.0, "the querier to start after the reload")
    config.write_text("")
    sup.proc.signal(signal.SIGHUP)
    wait_for(
        lambda: not [q for q in sup.ctl("igmp", "queriers").doc["Queriers"] if q["interface"] == "rout"] or None,
        5.0,
        "tracking on rout to stop",
    )


def general_queries(packets: list[dict[str, Any]]) -> list[tuple[float, float, int]]:
    """(arrival time, Max Resp Time in seconds, QQIC) of each IGMPv3 general query captured (RFC 3376 4.1)."""
    out = []
    for p in packets:
        igmp = bytes.fromhex(p["payload"])
        if len(igmp) >= 12 and igmp[0] == 0x11 and igmp[4:8] == bytes(4):
            assert igmp[1] < 128 and igmp[9] < 128, "the codes of short timers are their values"
            out.append((p["time"], igmp[1] / 10, igmp[9]))
    return out


def test_timers_changed_at_run_time_reach_the_host(chain: Chain, tmp_path: Path) -> None:
    """`igmp set-timers` on a running querier: the host receives the new Max Resp Time and QQIC at the new
    interval from the next query on, with no burst and no restart; its membership stays in our table; the
    listing shows the timers in force and `stats` the querier's counters."""
    lab, sink = chain.lab, chain.sink
    config = write_config(tmp_path, f'[igmp]\nquerier_interfaces = ["rout"]\n{TIMERS}')
    sup = Supervisor.start(lab, chain.relay, extra=["--config", str(config)])
    join(lab, sink, GROUP4, "snk0")
    wait_for(lambda: entry(sup, GROUP4), 5.0, "the receiver in `igmp groups`")
    ready = lab.workdir / "queries.ready"
    capture = start_probe(
        lab, sink, "capture-ip", "--ifname", "snk0", "--protocol", "2", "--dst", "224.0.0.1",
        "--count", "6", "--timeout", "16", "--ready-file", str(ready), name="queries",
    )  # fmt: skip
    wait_file(ready, capture)
    time.sleep(4.5)  # one query or two at the config's timers first
    changed_at = time.time()
    answer = sup.ctl(
        "igmp", "set-timers", "--interface", "rout", "--query-interval", "2", "--query-response-interval", "1.5",
        json_out=False,
    )  # fmt: skip
    assert "IGMP timers set on rout: query_interval 2, query_response_interval 1.5" in answer.stdout

    queries = general_queries(capture.json(timeout=30)["packets"])
    before = [q for q in queries if q[0] < changed_at]
    after = [q for q in queries if q[0] > changed_at + 0.1]
    assert before and {(mrt, qqic) for _, mrt, qqic in before} == {(1.0, 4)}, queries
    assert len(after) >= 3 and {(mrt, qqic) for _, mrt, qqic in after} == {(1.5, 2)}, queries
    assert after[0][0] - changed_at < 2.5  # the query due comes no later than 2 s after the previous one
    gaps = [b[0] - a[0] for a, b in pairwise(after)]
    assert all(1.6 < gap < 2.6 for gap in gaps), gaps  # every 2 s: no burst, no restart (no startup queries)

    kept = entry(sup, GROUP4)
    assert kept is not None and kept["expires_in_secs"] <= 6  # refreshed under GMI = 2 * 2 + 1.5
    timers = querier(sup)["timers"]
    assert (timers["query_interval"], timers["query_response_interval"], timers["robustness"]) == (2, 1.5, 2)
    assert "QI 2s QRI 1.5s R 2" in sup.ctl("igmp", "queriers", json_out=False).stdout
    stats = sup.ctl("stats", json_out=False).stdout
    assert "IGMP counters on rout:" in stats and "general_queries_sent=" in stats and "reports_v3=" in stats

    refused = sup.ctl(
        "igmp", "set-timers", "--interface", "rout", "--query-response-interval", "3", check=False, json_out=False
    )
    assert refused.returncode == 1
    assert "Invalid IGMP timers on rout: query_response_interval must be less than query_interval" in refused.stderr
    assert querier(sup)["timers"]["query_response_interval"] == 1.5


def test_a_link_made_again_is_tracked_again(chain: Chain, tmp_path: Path) -> None:
    """rout deleted and made again (a new ifindex): the querier follows it onto the new link."""
    from .netns import _veth

    lab = chain.lab
    config = write_config(tmp_path, f'[igmp]\nquerier_interfaces = ["rout"]\n{TIMERS}')
    sup = Supervisor.start(lab, chain.relay, extra=["--config", str(config)])
    wait_for(lambda: querier(sup)["is_querier"] or None, 3.0, "the querier")
    lab.run(chain.relay, "ip", "link", "del", "rout")
    wait_for(lambda: not sup.ctl("igmp", "queriers").doc["Queriers"] or None, 10.0, "the querier to stop")
    _veth(lab, chain.relay, "rout", chain.relay_out_ip, chain.sink, "snk0", chain.sink_ip, 1500)
    wait_for(lambda: sup.ctl("igmp", "queriers").doc["Queriers"] or None, 10.0, "the querier on the new link")
    join(lab, chain.sink, GROUP4, "snk0")
    assert wait_for(lambda: entry(sup, GROUP4), 5.0, "the group on the new link")["is_querier"]


def test_mld_election_between_two_supervisors(chain: Chain, tmp_path: Path) -> None:
    """MLD elects the lowest link-local address (RFC 3810 7.6.2); both sides agree which that is."""
    from ipaddress import IPv6Address

    lab = chain.lab
    enable_ipv6(lab, chain.relay, "rout")
    enable_ipv6(lab, chain.sink, "snk0")
    relay_config = write_config(tmp_path, f'[mld]\nquerier_interfaces = ["rout"]\n{TIMERS}')
    sink_dir = tmp_path / "sink"
    sink_dir.mkdir()
    (sink_dir / "mcr.toml").write_text(f'[mld]\nquerier_interfaces = ["snk0"]\n{TIMERS}')
    relay = Supervisor.start(lab, chain.relay, extra=["--config", str(relay_config)])
    other = Supervisor.start(lab, chain.sink, extra=["--config", str(sink_dir / "mcr.toml")])

    def settled() -> tuple[dict[str, Any], dict[str, Any]] | None:
        a, b = querier(relay, "ipv6"), querier(other, "ipv6", "snk0")
        return (a, b) if a["querier"] and a["querier"] == b["querier"] and a["is_querier"] != b["is_querier"] else None

    a, b = wait_for(settled, 8.0, "one MLD querier on the link")
    lowest = min(IPv6Address(a["address"]), IPv6Address(b["address"]))
    assert IPv6Address(a["querier"]) == lowest and lowest.is_link_local
    assert (a if a["is_querier"] else b)["address"] == str(lowest)
