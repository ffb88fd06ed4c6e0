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
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class Lab:
    """Namespaces `<prefix>src`, `<prefix>rly`, `<prefix>snk`; veths src0<->rin and rout<->snk0."""

    prefix: str = field(default_factory=lambda: f"mcr{os.getpid()}")
    mtu: int = 1500
    created: list[str] = field(default_factory=list)

    @property
    def src(self) -> str:
        return f"{self.prefix}src"

    @property
    def relay(self) -> str:
        return f"{self.prefix}rly"

    @property
    def sink(self) -> str:
        return f"{self.prefix}snk"

    def netns(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *argv, check=check)

    def exec_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def up(self) -> Lab:
        try:
            for ns in (self.src, self.relay, self.sink):
                sh("ip", "netns", "add", ns)
                self.created.append(ns)
                self.netns(ns, "ip", "link", "set", "lo", "up")
                for key in ("all", "default"):
                    self.netns(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0")
            self._pair(self.src, "src0", (SRC_IP, SRC_IP6), self.relay, "rin", (RELAY_IN_IP, RELAY_IN_IP6))
            self._pair(self.relay, "rout", (RELAY_OUT_IP, RELAY_OUT_IP6), self.sink, "snk0", (SINK_IP, SINK_IP6))
            for key in ("all", "default", "rin"):
                self.netns(self.relay, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=1")
            self.netns(self.relay, "ethtool", "-K", "rin", "gro", "off", check=False)
        except BaseException:
            self.down()
            raise
        return self

    def add_leg(self, suffix: str, relay_if: str, relay_ip: str, peer_if: str, peer_ip: str) -> str:
        """One more namespace `<prefix><suffix>` joined to the relay by a veth pair (deleted with the lab)."""
        ns = f"{self.prefix}{suffix}"
        sh("ip", "netns", "add", ns)
        self.created.append(ns)
        self.netns(ns, "ip", "link", "set", "lo", "up")
        self._pair(self.relay, relay_if, (relay_ip, None), ns, peer_if, (peer_ip, None))
        return ns

    def _pair(
        self, ns_a: str, if_a: str, ip_a: tuple[str, str | None], ns_b: str, if_b: str, ip_b: tuple[str, str | None]
    ) -> None:
        sh("ip", "link", "add", f"{self.prefix}a", "type", "veth", "peer", "name", f"{self.prefix}b")
        for tmp, ns, name, ip in (
            (f"{self.prefix}a", ns_a, if_a, ip_a),
            (f"{self.prefix}b", ns_b, if_b, ip_b),
        ):
            sh("ip", "link", "set", tmp, "netns", ns)
            self.netns(ns, "ip", "link", "set", tmp, "name", name)
            self.netns(ns, "ip", "link", "set", name, "mtu", str(self.mtu))
            self.netns(ns, "ip", "addr", "add", f"{ip[0]}/24", "dev", name)
            if ip[1] is not None:
                self.netns(ns, "ip", "-6", "addr", "add", f"{ip[1]}/64", "dev", name, "nodad")
            self.netns(ns, "ip", "link", "set", name, "up")

    def down(self) -> None:
        while self.created:
            sh("ip", "netns", "delete", self.created.pop(), check=False)

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *_exc: object) -> None:
        self.down()
