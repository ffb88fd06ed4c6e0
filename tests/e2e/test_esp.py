"""ESP forwarding, unicast input and the global multicast TTL, end to end in both engines.

Frames are built with `mcr.packet.build` and injected raw on the source's link (an ESP sender needs no
keys: the relay never looks inside), read back raw on the sink's link, and compared byte for byte: the
whole IP payload (SPI, sequence number, data) must arrive as it was sent, in a new IPv4 header from the
relay's output address with the supervisor's --multicast-ttl.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from mcr.packet.build import build_esp_frame, build_udp_frame

from .netns import RELAY_IN_IP, RELAY_OUT_IP, SINK_IP, SRC_IP, Chain, wait_for
from .relay import Proc, Supervisor, probe, start_probe, wait_file

pytestmark = pytest.mark.netns

GROUP = "239.1.1.1"
OUT_GROUP = "239.5.5.5"
MULTICAST_TTL = 9


@pytest.fixture(params=["userspace", "kernel"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def esp_bodies(count: int) -> list[bytes]:
    """What ESP carries after SPI and sequence number: sizes from 0 to 1400, every byte value."""
    return [bytes((i + k) & 0xFF for k in range((i * 97) % 1401)) for i in range(count)]


def config(chain: Chain, rules: str) -> Path:
    path = chain.lab.workdir / "esp.toml"
    path.write_text(rules)
    return path


def start(chain: Chain, engine: str, cfg: Path) -> Supervisor:
    extra = ["--engine", engine, "--config", str(cfg), "--multicast-ttl", str(MULTICAST_TTL)]
    return Supervisor.start(chain.lab, chain.relay, extra=extra)


def capture(chain: Chain, protocol: int, dst: str, count: int, name: str) -> Proc:
    ready = chain.lab.workdir / f"{name}.ready"
    proc = start_probe(
        chain.lab, chain.sink, "capture-ip", "--ifname", "snk0", "--protocol", str(protocol), "--dst", dst,
        "--count", str(count), "--timeout", "20", "--ready-file", str(ready), name=name,
    )  # fmt: skip
    wait_file(ready, proc)
    return proc


def inject(chain: Chain, frames: list[bytes]) -> None:
    path = chain.lab.workdir / f"frames-{len(frames)}.hex"
    path.write_text("\n".join(f.hex() for f in frames) + "\n")
    sent = probe(chain.lab, chain.src, "inject", "--ifname", "src0", "--frames", str(path), "--gap", "0.001")
    assert sent["sent"] == len(frames)


def drops(sup: Supervisor, engine: str) -> dict[str, int]:
    """The frames the engine dropped, by reason: the workers' (and their rules'), or the kernel engine's."""
    if engine == "kernel":
        return dict(sup.request("GetKernelStatus")["KernelStatus"]["drops"])
    return sup.drops()


def rule(sup: Supervisor, rule_id: str) -> dict[str, Any]:
    (found,) = [r for r in sup.rules() if r["rule_id"] == rule_id]
    return found


@pytest.mark.timeout(90)
def test_esp_is_relayed_intact_counted_like_udp(chain: Chain, engine: str) -> None:
    """200 ESP packets of every size reach the sink with their payload byte for byte, TTL --multicast-ttl and
    the relay's output address; the counters match; ESP fragments and ESP shorter than its header are counted
    drops; a UDP rule on the same group sees none of it."""
    cfg = config(
        chain,
        f"""
[[rule]]
id = "esp"
protocol = "esp"
input_interface = "rin"
input_group = "{GROUP}"
outputs = ["{OUT_GROUP}:0:rout"]

[[rule]]
id = "udp"
input_interface = "rin"
input_group = "{GROUP}"
input_port = 5001
outputs = ["239.2.2.2:6001:rout"]
""",
    )
    sup = start(chain, engine, cfg)
    assert rule(sup, "esp")["engine"] == engine
    src_mac = chain.mac(chain.src, "src0")
    bodies = esp_bodies(200)
    good = [
        build_esp_frame(src_mac=src_mac, src_ip=SRC_IP, dst_ip=GROUP, spi=0xC0DE0000 + i, seq=i, payload=b, ttl=4)
        for i, b in enumerate(bodies)
    ]
    bad = [build_esp_frame(src_mac=src_mac, src_ip=SRC_IP, dst_ip=GROUP, payload=b"f" * 64, more_fragments=True)] * 7
    bad += [build_esp_frame(src_mac=src_mac, src_ip=SRC_IP, dst_ip=GROUP, payload=b"", total_length=27)] * 5
    sink = capture(chain, 50, OUT_GROUP, len(good) + 1, "esp-capture")
    before = drops(sup, engine)
    inject(chain, good[:100] + bad + good[100:])

    packets = sink.json(timeout=30)["packets"]
    sent = [f[34:].hex() for f in good]  # everything after the IPv4 header (no options)
    assert len(packets) == len(good), f"{len(packets)} of {len(good)} arrived: {sup.snapshot()}"
    assert sorted(p["payload"] for p in packets) == sorted(sent)
    # not fragments (a raw socket's packets may carry DF, as the kernel's own sends do)
    assert {(p["src"], p["ttl"], p["ip_checksum_ok"], p["frag"] & 0x3FFF) for p in packets} == {
        (RELAY_OUT_IP, MULTICAST_TTL, True, 0)
    }
    assert {p["dst_mac"] for p in packets} == {"01:00:5e:05:05:05"}

    flow = sup.wait_relayed("esp", len(good))
    assert (flow["packets_relayed"], flow["bytes_relayed"]) == (len(good), sum(8 + len(b) for b in bodies))
    (out,) = flow["outputs"]
    assert (out["packets_sent"], out["bytes_sent"], out["send_errors"]) == (
        len(good),
        flow["bytes_relayed"],
        0,
    )
    after = drops(sup, engine)
    assert {k: after.get(k, 0) - before.get(k, 0) for k in ("fragment", "truncated", "not_udp")} == {
        "fragment": 7,
        "truncated": 5,
        "not_udp": 0,
    }
    udp = sup.flow("udp")
    assert udp is not None and udp["packets_relayed"] == 0


@pytest.mark.timeout(90)
def test_esp_to_a_unicast_output_keeps_the_kernel_ttl(chain: Chain) -> None:
    """A unicast ESP output: resolved by ARP, sent from the raw socket the supervisor opened for the
    capability-less worker, with the kernel's default TTL (no TTL set); the kernel engine leaves the rule to
    userspace (unicast outputs need neighbour resolution)."""
    cfg = config(
        chain,
        f"""
[[rule]]
id = "esp"
protocol = "esp"
input_interface = "rin"
input_group = "{GROUP}"
outputs = ["{SINK_IP}:4500:rout"]
""",
    )
    sup = start(chain, "auto", cfg)
    assert rule(sup, "esp")["engine"] == "userspace"
    src_mac = chain.mac(chain.src, "src0")
    bodies = esp_bodies(50)
    frames = [
        build_esp_frame(src_mac=src_mac, src_ip=SRC_IP, dst_ip=GROUP, spi=7, seq=i, payload=b)
        for i, b in enumerate(bodies)
    ]
    sink = capture(chain, 50, SINK_IP, len(frames), "esp-unicast")
    inject(chain, frames)
    packets = sink.json(timeout=30)["packets"]
    default_ttl = int(chain.sysctl(chain.relay, "net.ipv4.ip_default_ttl"))
    assert sorted(p["payload"] for p in packets) == sorted(f[34:].hex() for f in frames)
    assert {(p["src"], p["ttl"], p["ip_checksum_ok"]) for p in packets} == {(RELAY_OUT_IP, default_ttl, True)}
    assert {p["dst_mac"] for p in packets} == {chain.mac(chain.sink, "snk0").hex(":")}
    flow = sup.wait_relayed("esp", len(frames))
    assert flow["outputs"][0]["packets_sent"] == len(frames)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("protocol", ["udp", "esp"])
def test_unicast_input_is_relayed_without_a_membership(chain: Chain, engine: str, protocol: str) -> None:
    """A rule on the relay's own address on its input: frames sent to it (unicast, to the input's MAC) are
    relayed to a group, although strict rp_filter keeps them from the host's own stack; nothing is joined."""
    port_line = "input_port = 5001" if protocol == "udp" else 'protocol = "esp"'
    cfg = config(
        chain,
        f"""
[[rule]]
id = "uni"
input_interface = "rin"
input_group = "{RELAY_IN_IP}"
{port_line}
outputs = ["239.2.2.2:6001:rout"]
""",
    )
    sup = start(chain, engine, cfg)
    view = rule(sup, "uni")
    assert (view["engine"], view["state"], view["state_reason"]) == (engine, "active", "")
    src_mac, rin_mac = chain.mac(chain.src, "src0"), chain.mac(chain.relay, "rin")
    bodies = esp_bodies(100)
    if protocol == "udp":
        frames = [
            build_udp_frame(
                src_mac=src_mac, dst_mac=rin_mac, src_ip=SRC_IP, dst_ip=RELAY_IN_IP, dst_port=5001, payload=b
            )
            for b in bodies
        ]
        expected = sorted(b.hex() for b in bodies)
    else:
        frames = [
            build_esp_frame(src_mac=src_mac, dst_mac=rin_mac, src_ip=SRC_IP, dst_ip=RELAY_IN_IP, seq=i, payload=b)
            for i, b in enumerate(bodies)
        ]
        expected = sorted(f[34:].hex() for f in frames)
    number = 17 if protocol == "udp" else 50
    sink = capture(chain, number, "239.2.2.2", len(frames), f"unicast-{protocol}")
    inject(chain, frames)
    packets = sink.json(timeout=30)["packets"]
    payloads = [p["payload"][16:] if protocol == "udp" else p["payload"] for p in packets]  # past the UDP header
    assert sorted(payloads) == expected
    assert {(p["src"], p["ttl"]) for p in packets} == {(RELAY_OUT_IP, MULTICAST_TTL)}
    flow = sup.wait_relayed("uni", len(frames))
    assert flow["packets_relayed"] == len(frames)
    joined = chain.lab.run(chain.relay, "ip", "-4", "maddress", "show", "dev", "rin").stdout
    assert RELAY_IN_IP not in joined and "239." not in joined


def raw_esp_sockets(chain: Chain) -> int:
    """Raw IPPROTO_ESP sockets open in the relay's namespace (/proc/net/raw shows the protocol as the port)."""
    lines = chain.lab.run(chain.relay, "cat", "/proc/net/raw").stdout.splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(":0032"))


@pytest.mark.timeout(90)
def test_a_restarted_worker_gets_its_esp_sockets_again_and_a_removed_rule_frees_them(chain: Chain) -> None:
    """The raw sockets belong to the workers' rule set: a worker that was killed gets them again with its
    rules and relays ESP at once; a reload that drops the rule closes them everywhere."""
    rules = f"""
[[rule]]
id = "esp"
protocol = "esp"
input_interface = "rin"
input_group = "{GROUP}"
outputs = ["{OUT_GROUP}:0:rout", "239.5.5.6:0:rout"]
"""
    cfg = config(chain, rules)
    sup = start(chain, "userspace", cfg)
    assert raw_esp_sockets(chain) == 2  # the worker's, one per output; the supervisor keeps no copy
    (old,) = sup.worker_pids()
    src_mac = chain.mac(chain.src, "src0")

    def esp(seq: int) -> bytes:
        return build_esp_frame(src_mac=src_mac, src_ip=SRC_IP, dst_ip=GROUP, seq=seq, payload=b"x" * 100)

    os.kill(old, signal.SIGKILL)

    def restarted() -> bool:
        pids = sup.worker_pids()
        return bool(pids) and old not in pids and rule(sup, "esp")["state"] == "active"

    wait_for(restarted, 15, "a new worker with the rule")
    sink = capture(chain, 50, "239.5.5.6", 20, "after-restart")
    inject(chain, [esp(i) for i in range(20)])
    assert len(sink.json(timeout=30)["packets"]) == 20
    assert raw_esp_sockets(chain) == 2

    cfg.write_text("")
    sup.proc.signal(signal.SIGHUP)
    wait_for(lambda: not sup.rules(), 10, "the reload to remove the rule")
    wait_for(lambda: raw_esp_sockets(chain) == 0, 10, "the raw ESP sockets to be closed")


ORIGINAL = Path(os.environ.get("MCR_ORIGINAL_BIN", "/tmp/rustmcr/bin")) / "mcrd"


@pytest.mark.timeout(120)
def test_the_original_puts_the_same_esp_on_the_wire(chain: Chain, engine: str) -> None:
    """Today's original (its own JSON5 config with `protocol: "esp"`) and this relay, one after the other on
    the same topology and the same frames: the sink sees the same packets (payload, source, TTL 1, MAC).
    The original sends through a raw socket, so its packets carry DF, like our userspace engine's; the
    kernel engine keeps the input's flags."""
    if not ORIGINAL.exists():
        pytest.skip(f"the original MCR is not built ({ORIGINAL}; build it with build-original-mcr.sh)")
    src_mac = chain.mac(chain.src, "src0")
    frames = [
        build_esp_frame(src_mac=src_mac, src_ip=SRC_IP, dst_ip=GROUP, spi=0xE5, seq=i, payload=b)
        for i, b in enumerate(esp_bodies(30))
    ]

    def relayed(name: str) -> list[tuple[object, ...]]:
        sink = capture(chain, 50, OUT_GROUP, len(frames), name)
        inject(chain, frames)
        packets = sink.json(timeout=30)["packets"]
        return sorted((p["payload"], p["src"], p["ttl"], p["dst_mac"], p["frag"]) for p in packets)

    json5 = chain.lab.workdir / "original.json5"
    rules = [
        {
            "name": "esp",
            "input": {"interface": "rin", "group": GROUP, "port": 0, "protocol": "esp"},
            "outputs": [{"group": OUT_GROUP, "port": 5000, "interface": "rout"}],
        }
    ]
    json5.write_text(json.dumps({"rules": rules}))  # JSON is JSON5
    sock = chain.lab.workdir / "original.sock"
    original = chain.lab.popen(
        chain.relay, str(ORIGINAL), "supervisor", "--config", str(json5), "--control-socket-path", str(sock),
        "--num-workers", "1", "--interface", "rin", name="original_mcrd",
    )  # fmt: skip
    try:
        wait_for(sock.exists, 10, "the original's control socket")
        time.sleep(1.0)  # its workers start after the socket; they have no readiness signal of their own
        theirs = relayed("original")
    finally:
        original.signal(signal.SIGTERM)
        original.wait(10)
    cfg = config(
        chain,
        f'[[rule]]\nid = "esp"\nprotocol = "esp"\ninput_interface = "rin"\ninput_group = "{GROUP}"\n'
        f'outputs = ["{OUT_GROUP}:5000:rout"]\n',
    )
    sup = Supervisor.start(chain.lab, chain.relay, extra=["--engine", engine, "--config", str(cfg)])
    ours = relayed("ours")
    sup.terminate()
    assert len(theirs) == len(frames)
    if engine == "kernel":  # the frame's own flags: no DF on these
        theirs = [(*t[:4], t[4] & ~0x4000) for t in theirs]
    assert ours == theirs
    assert {t[1:3] for t in ours} == {(RELAY_OUT_IP, 1)}


@pytest.mark.timeout(90)
def test_esp_rules_added_at_run_time_in_todays_dialect(chain: Chain, engine: str) -> None:
    """AddRule with input_protocol 50 (what today's original's clients send): listed and counted as ESP, and
    relayed; an ESP rule with a port is refused with the reason and changes nothing."""
    sup = Supervisor.start(chain.lab, chain.relay, extra=["--engine", engine])
    outputs = [{"group": OUT_GROUP, "port": 0, "interface": "rout"}]
    add = {"rule_id": "", "input_interface": "rin", "input_group": GROUP, "input_protocol": 50, "outputs": outputs}
    refused = sup.request({"AddRule": {**add, "input_port": 4500}})
    assert refused == {"Error": "input_port must be 0 for ESP (input_protocol 50), which has no ports; got 4500"}
    assert sup.rules() == []
    added = sup.request({"AddRule": {**add, "name": "tunnel", "input_port": 0}})
    rule_id = added["Success"].removeprefix("Rule ").removesuffix(" added")
    view = rule(sup, rule_id)
    assert (view["input_protocol"], view["input_port"], view["name"], view["engine"]) == (50, 0, "tunnel", engine)
    src_mac = chain.mac(chain.src, "src0")
    frames = [
        build_esp_frame(src_mac=src_mac, src_ip=SRC_IP, dst_ip=GROUP, seq=i, payload=b"z" * 64) for i in range(10)
    ]
    sink = capture(chain, 50, OUT_GROUP, len(frames), "runtime-esp")
    inject(chain, frames)
    assert len(sink.json(timeout=30)["packets"]) == len(frames)
    flow = sup.wait_relayed(rule_id, len(frames))
    assert (flow["input_protocol"], flow["bytes_relayed"]) == (50, 10 * 72)
    # our client: --input-protocol esp, no --input-port
    sup.ctl("add", "--input-interface", "rin", "--input-group", "239.1.1.7", "--input-protocol", "esp",
            "--outputs", "239.5.5.7:0:rout", "--rule-id", "cli-esp")  # fmt: skip
    assert (rule(sup, "cli-esp")["input_protocol"], rule(sup, "cli-esp")["input_port"]) == (50, 0)


@pytest.mark.timeout(90)
def test_workers_taken_over_by_a_new_supervisor_keep_relaying_esp(chain: Chain) -> None:
    """--keep-data-plane, the supervisor killed and started again: the same worker relays ESP before and
    after, on the raw socket the new supervisor hands it (the ones they held are closed, none leaks)."""
    from .hitless import Service

    cfg = config(
        chain,
        f'[[rule]]\nid = "esp"\nprotocol = "esp"\ninput_interface = "rin"\ninput_group = "{GROUP}"\n'
        f'outputs = ["{OUT_GROUP}:0:rout"]\n',
    )
    service = Service(chain, "userspace", extra=["--keep-data-plane", "--config", str(cfg)])
    service.start()
    src_mac = chain.mac(chain.src, "src0")
    frames = [
        build_esp_frame(src_mac=src_mac, src_ip=SRC_IP, dst_ip=GROUP, seq=i, payload=bytes(40)) for i in range(20)
    ]
    try:
        workers = service.current.worker_pids()
        for name in ("before", "after"):
            sink = capture(chain, 50, OUT_GROUP, len(frames), f"takeover-{name}")
            inject(chain, frames)
            assert len(sink.json(timeout=30)["packets"]) == len(frames), name
            assert raw_esp_sockets(chain) == len(workers), name  # one per worker
            if name == "before":
                service.restart(signal.SIGKILL)
                wait_for(lambda: rule(service.current, "esp")["state"] == "active", 15, "the rule active again")
        assert service.current.worker_pids() == workers, "the new supervisor took the running worker over"
    finally:
        service.current.terminate()
