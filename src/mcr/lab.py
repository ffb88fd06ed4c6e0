"""A lab in network namespaces: source -> relay -> sink over veth pairs, for the demo and benchmarks.

The source's subnet is deliberately unroutable from the relay and the relay runs strict rp_filter,
so the kernel itself would drop the traffic; only a layer-2 relay gets it across. Everything it
creates carries a unique prefix and is deleted by exact name. Every link also gets an IPv6 unique-local
address (fd00::/8 test prefixes; duplicate address detection off, so the addresses are usable at once).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

SRC_IP = "10.200.1.2"
RELAY_IN_IP = "10.200.9.1"
RELAY_OUT_IP = "10.200.3.1"
SINK_IP = "10.200.3.2"
SRC_IP6 = "fd00:200:1::2"
RELAY_IN_IP6 = "fd00:200:9::1"
RELAY_OUT_IP6 = "fd00:200:3::1"
SINK_IP6 = "fd00:200:3::2"


def sh(*argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run a short command with a time bound; raise with its stderr on failure when `check`."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class Lab:
    """Namespaces `<prefix>src`, `<prefix>rly`, `<prefix>snk`; veths src0<->rin and rout<->snk0."""

    prefix: str = field(default_factory=lambda: f"mcr{os.getpid()}")
    mtu: int = 1500
    created: list[str] = field(default_factory=list)  # namespaces, deleted with everything in them
    created_links: list[str] = field(default_factory=list)  # veths left in this namespace by a failed step

    @property
    def src(self) -> str:
        return f"{self.prefix}src"

    @property
    def relay(self) -> str:
        return f"{self.prefix}rly"

    @property
    def sink(self) -> str:
        return f"{self.prefix}snk"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.src, self.relay, self.sink)

    def netns(self, ns: str, *argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)

    def exec_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def up(self) -> Lab:
        """Build the lab; whatever a failing step had built is deleted before the error goes on."""
        try:
            self.build()
        except BaseException:
            self.down()
            raise
        return self

    def build(self) -> None:
        for ns in self.namespaces:
            self.add_namespace(ns)
        self.pair(self.src, "src0", (SRC_IP, SRC_IP6), self.relay, "rin", (RELAY_IN_IP, RELAY_IN_IP6))
        self.pair(self.relay, "rout", (RELAY_OUT_IP, RELAY_OUT_IP6), self.sink, "snk0", (SINK_IP, SINK_IP6))
        self.strict_rp_filter()
        self.netns(self.relay, "ethtool", "-K", "rin", "gro", "off", check=False)

    def add_namespace(self, ns: str) -> None:
        """A namespace with its loopback up and IPv6 duplicate address detection off."""
        sh("ip", "netns", "add", ns)
        self.created.append(ns)
        self.netns(ns, "ip", "link", "set", "lo", "up")
        for key in ("all", "default"):
            self.netns(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0")

    def strict_rp_filter(self) -> None:
        for key in ("all", "default", "rin"):
            self.netns(self.relay, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=1")

    def add_leg(self, suffix: str, relay_if: str, relay_ip: str, peer_if: str, peer_ip: str) -> str:
        """One more namespace `<prefix><suffix>` joined to the relay by a veth pair (deleted with the lab)."""
        ns = f"{self.prefix}{suffix}"
        self.add_namespace(ns)
        self.pair(self.relay, relay_if, (relay_ip, None), ns, peer_if, (peer_ip, None))
        return ns

    def pair(
        self, ns_a: str, if_a: str, ip_a: tuple[str, str | None], ns_b: str, if_b: str, ip_b: tuple[str, str | None]
    ) -> None:
        """A veth pair `if_a` in `ns_a` <-> `if_b` in `ns_b`, with IPv4 /24 (and IPv6 /64) addresses, up."""
        tmp_a, tmp_b = f"{self.prefix}a", f"{self.prefix}b"
        sh("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        self.created_links.append(tmp_a)
        for tmp, ns, name, ip in ((tmp_a, ns_a, if_a, ip_a), (tmp_b, ns_b, if_b, ip_b)):
            sh("ip", "link", "set", tmp, "netns", ns)
            self.netns(ns, "ip", "link", "set", tmp, "name", name)
            self.netns(ns, "ip", "link", "set", name, "mtu", str(self.mtu))
            self.netns(ns, "ip", "addr", "add", f"{ip[0]}/24", "dev", name)
            if ip[1] is not None:
                self.netns(ns, "ip", "-6", "addr", "add", f"{ip[1]}/64", "dev", name, "nodad")
            self.netns(ns, "ip", "link", "set", name, "up")
        self.created_links.remove(tmp_a)

    def down(self) -> None:
        while self.created_links:
            sh("ip", "link", "delete", self.created_links.pop(), check=False)
        while self.created:
            sh("ip", "netns", "delete", self.created.pop(), check=False)

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *_exc: object) -> None:
        self.down()
