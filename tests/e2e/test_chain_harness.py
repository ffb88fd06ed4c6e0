"""The namespace harness itself, and the problem MCR solves: the relay's kernel drops the source's multicast."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .netns import (
    RELAY_IN_IP,
    SINK_IP,
    SRC_IP,
    Chain,
    NetLab,
    build_chain,
    netns_skip_reason,
    pid_alive,
)
from .relay import probe, start_probe, wait_file

pytestmark = pytest.mark.netns


def _netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _addresses(chain: Chain, ns: str, ifname: str) -> list[str]:
    info = chain.link(ns, ifname)
    assert info["mtu"] == chain.mtu
    out = chain.lab.run(ns, "ip", "-o", "-4", "addr", "show", "dev", ifname).stdout
    return [field for line in out.splitlines() for field in line.split() if "/" in field]


def test_harness_runs_as_root() -> None:
    if os.geteuid() == 0:
        assert netns_skip_reason() is None, "as root the end-to-end tests must run, not skip"
    else:
        assert netns_skip_reason() is not None


def test_chain_topology(chain: Chain) -> None:
    """Addresses, MTU, strict rp_filter, GRO off on the input, and no route back to the source's subnet."""
    lab = chain.lab
    assert _addresses(chain, chain.src, "src0") == [f"{SRC_IP}/24"]
    assert _addresses(chain, chain.relay, "rin") == [f"{RELAY_IN_IP}/24"]
    assert _addresses(chain, chain.relay, "rout") == ["10.200.3.1/24"]
    assert _addresses(chain, chain.sink, "snk0") == [f"{SINK_IP}/24"]
    for key in ("all", "default", "rin"):
        assert chain.sysctl(chain.relay, f"net.ipv4.conf.{key}.rp_filter") == "1"
    features = lab.run(chain.relay, "ethtool", "-k", "rin").stdout
    assert "generic-receive-offload: off" in features
    unreachable = lab.run(chain.relay, "ip", "route", "get", SRC_IP, check=False)
    assert unreachable.returncode != 0 and "unreachable" in unreachable.stderr.lower()
    for ns in (chain.src, chain.relay, chain.sink):
        assert "UP" in chain.link(ns, "lo")["flags"]
    # the same interface name may exist in several namespaces; ours are only in ours
    assert lab.run(None, "ip", "link", "show", "dev", "rin", check=False).returncode != 0


def test_jumbo_chain_with_extra_outputs(netlab: NetLab) -> None:
    chain = build_chain(netlab, mtu=9000, extra_outputs=2, separate_sinks=True)
    assert [o.relay_if for o in chain.outputs] == ["rout", "rout2", "rout3"]
    assert len({o.sink_ns for o in chain.outputs}) == 3
    for out in chain.outputs:
        assert _addresses(chain, chain.relay, out.relay_if) == [f"{out.relay_ip}/24"]
        assert _addresses(chain, out.sink_ns, out.sink_if) == [f"{out.sink_ip}/24"]
    assert chain.link(chain.src, "src0")["mtu"] == 9000
    assert chain.link(chain.relay, "rin")["mtu"] == 9000


def test_cleanup_removes_exactly_what_the_lab_made(tmp_path: Path) -> None:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    lab = NetLab(tmp_path / "a")
    other = NetLab(tmp_path / "b")
    try:
        chain = build_chain(lab)
        kept = build_chain(other)
        sleeper = lab.popen(chain.relay, "sleep", "60", name="sleeper")
        # an orphan: its parent exits at once, so only `ip netns pids` can find it
        orphan = int(lab.run(chain.sink, "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!").stdout)
        scratch = lab.track_dir(tmp_path / "scratch")
        scratch.mkdir()
        assert pid_alive(sleeper.pid) and pid_alive(orphan)
        assert set(lab.namespaces) <= _netns_list()
        lab.close()
        assert not set(lab.namespaces) & _netns_list()
        assert set(other.namespaces) <= _netns_list(), "another lab's namespaces were touched"
        assert other.run(kept.relay, "ip", "link", "show", "dev", "rin").returncode == 0
        assert sleeper.poll() is not None
        assert not pid_alive(orphan)
        assert not scratch.exists()
        lab.close()  # idempotent
    finally:
        lab.close()
        other.close()
    assert not set(other.namespaces) & _netns_list()


def test_the_kernel_alone_drops_the_source(chain: Chain) -> None:
    """No relay: a socket in RELAY joined to the group on `rin` gets nothing, though every frame is on the wire.

    Strict rp_filter drops them because RELAY has no route back to the source (the IPReversePathFilter
    counter shows it). With rp_filter off the same receiver gets everything, so the receiver works.
    """
    lab = chain.lab
    count = 200

    def listen_and_send() -> dict[str, int]:
        ready = lab.workdir / f"recv-{len(lab.procs)}.ready"
        args = ["recv", "--group", "239.1.1.1", "--port", "5000", "--ifname", "rin", "--wire"]
        args += ["--duration", "10", "--stop-after", str(count), "--grace", "0.5", "--ready-file", str(ready)]
        receiver = start_probe(lab, chain.relay, *args, name="receiver")
        wait_file(ready, receiver)
        sent = probe(lab, chain.src, "send", "--group", "239.1.1.1", "--port", "5000", "--source", SRC_IP,
                     "--count", str(count), "--rate", "2000")  # fmt: skip
        assert sent["sent"] == count
        return dict(receiver.json(timeout=15))

    def rp_filter_drops() -> int:
        for line_pair in [lab.run(chain.relay, "cat", "/proc/net/netstat").stdout.splitlines()]:
            for names, values in zip(line_pair[::2], line_pair[1::2], strict=True):
                row = dict(zip(names.split()[1:], values.split()[1:], strict=True))
                if "IPReversePathFilter" in row:
                    return int(row["IPReversePathFilter"])
        raise AssertionError("no IPReversePathFilter counter in /proc/net/netstat")

    before = rp_filter_drops()
    strict = listen_and_send()
    assert strict["wire"] == count, "the frames must reach the relay's input interface"
    assert strict["udp"] == 0, "the relay's kernel must drop the source's multicast (rp_filter)"
    assert rp_filter_drops() - before >= count

    for key in ("all", "rin"):
        lab.run(chain.relay, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
    loose = listen_and_send()
    assert (loose["wire"], loose["udp"]) == (count, count)
