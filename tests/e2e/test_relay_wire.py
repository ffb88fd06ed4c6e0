"""What relayed packets look like on the wire: TTL, source address and MAC, destination, lengths."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from mcr.packet.build import multicast_mac

from .netns import RELAY_OUT_IP, Chain
from .relay import Supervisor, generate, start_probe, wait_file

pytestmark = pytest.mark.netns


@pytest.mark.timeout(60)
def test_ttl_and_source_address_on_the_wire(chain: Chain) -> None:
    """Default TTL 1, `--ttl 5` gives 5; sent from the output interface's address and MAC; never fragmented."""
    lab = chain.lab
    sup = Supervisor.start(lab, chain.relay)
    sup.add_rule(rule_id="ttl1", group="239.1.1.1", port=5000, outputs=["239.3.3.1:7001:rout"])
    sup.add_rule(rule_id="ttl5", group="239.1.1.2", port=5002, outputs=["239.3.3.2:7002:rout"], ttl=5)
    rout_mac = chain.mac(chain.relay, "rout").hex(":")
    count, size = 5, 300
    captures = {}
    for group, port in (("239.3.3.1", 7001), ("239.3.3.2", 7002)):
        ready = lab.workdir / f"capture-{port}.ready"
        captures[group, port] = start_probe(
            lab, chain.sink, "capture", "--ifname", "snk0", "--group", group, "--port", str(port),
            "--count", str(count), "--timeout", "15", "--ready-file", str(ready), name=f"capture-{port}",
        )  # fmt: skip
        wait_file(ready, captures[group, port])
    generate(chain, "239.1.1.1", 5000, rate=100, size=size, count=count)
    generate(chain, "239.1.1.2", 5002, rate=100, size=size, count=count)
    for (group, port), proc in captures.items():
        frames = proc.json(timeout=20)["frames"]
        assert len(frames) == count, f"{group}:{port}: captured {len(frames)} of {count} frames"
        want_ttl = 5 if port == 7002 else 1
        for f in frames:
            assert f["ttl"] == want_ttl, f
            assert f["src"] == RELAY_OUT_IP, f
            assert f["src_mac"] == rout_mac, f
            assert (f["dst"], f["dport"]) == (group, port), f
            assert f["dst_mac"] == multicast_mac(IPv4Address(group)).hex(":"), f
            assert f["frag"] & 0x3FFF == 0, f"relayed packet is a fragment: {f}"
            assert f["ip_checksum_ok"], f
            assert (f["udp_length"], f["payload_length"]) == (8 + size, size), f
