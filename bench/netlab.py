"""The benchmark's own namespaces: source -> relay -> sink over veth pairs, plus a direct source -> sink pair.

    <p>src src0 10.200.1.2 ─veth─ rin 10.200.9.1  <p>rly  rout 10.200.3.1 ─veth─ snk0 10.200.3.2  <p>snk
    <p>src src1 10.200.4.2 ────────────────────veth──────────────────── snk1 10.200.4.3  <p>snk     (all /24)

- The relay has no route back to 10.200.1.0/24 and runs strict rp_filter, so the kernel drops the source's
  multicast unless a path adds what it needs (and removes it again afterwards).
- GRO is off on `rin`; RPS steers the receive softirq of `rin` to CPU 1 (the relay's CPU) and of `snk0`/`snk1`
  to CPU 0 (the sender's and sink's CPU). Without RPS a veth processes the receive side on the sending CPU.
- `src1`/`snk1` carry the rig's ceiling: the same sender and sink with no relay in between.

Every object carries the prefix and is deleted by exact name: the namespaces (which takes their veths with
them) and the temporary veth names in the root namespace if a set-up step failed half way.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

SRC_IP = "10.200.1.2"
SRC_NET = "10.200.1.0/24"
RELAY_IN_IP = "10.200.9.1"
RELAY_OUT_IP = "10.200.3.1"
SINK_IP = "10.200.3.2"
DIRECT_SRC_IP = "10.200.4.2"
DIRECT_SINK_IP = "10.200.4.3"
# IPv6 (unique-local, no duplicate address detection) on the same links, for the IPv6 paths
SRC_IP6 = "fd00:200:1::2"
RELAY_IN_IP6 = "fd00:200:9::1"
RELAY_OUT_IP6 = "fd00:200:3::1"
SINK_IP6 = "fd00:200:3::2"
DIRECT_SRC_IP6 = "fd00:200:4::2"
DIRECT_SINK_IP6 = "fd00:200:4::3"

SENDER_CPU = 0
RELAY_CPU = 1


def sh(*argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run a short command with a time bound; raise with its stderr on failure when `check`."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def cpu_mask(cpu: int) -> str:
    return format(1 << cpu, "x")


@dataclass
class NetLab:
    prefix: str = field(default_factory=lambda: f"mcrb{os.getpid() % 100000}")
    mtu: int = 1500
    nice: int = 0  # niceness of every benchmark process (negative: keep a shared machine's other load away)
    created_ns: list[str] = field(default_factory=list)
    created_links: list[str] = field(default_factory=list)

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

    def argv(self, ns: str, argv: Sequence[str], cpu: int | None = None) -> list[str]:
        """`ip netns exec NS [nice -n N] [taskset -c CPU] ARGV...`.

        Each of these execs the next, so the pid of the Popen is the program's own pid.
        """
        nice = ["nice", "-n", str(self.nice)] if self.nice else []
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        return ["ip", "netns", "exec", ns, *nice, *pin, *argv]

    def run(self, ns: str, *argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)

    def write(self, ns: str, path: str, value: str) -> None:
        """Write a /proc or /sys file as seen from inside `ns` (ip netns exec remounts /sys for it)."""
        self.run(ns, "sh", "-c", f'echo {value} > "{path}"')

    def read(self, ns: str, path: str) -> str:
        return self.run(ns, "cat", path).stdout

    # ----------------------------------------------------------------------------------------- set-up

    def up(self) -> NetLab:
        try:
            for ns in self.namespaces:
                sh("ip", "netns", "add", ns)
                self.created_ns.append(ns)
                self.run(ns, "ip", "link", "set", "lo", "up")
                for key in ("all", "default"):
                    self.run(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0")
            self._pair(self.src, "src0", (SRC_IP, SRC_IP6), self.relay, "rin", (RELAY_IN_IP, RELAY_IN_IP6))
            self._pair(self.relay, "rout", (RELAY_OUT_IP, RELAY_OUT_IP6), self.sink, "snk0", (SINK_IP, SINK_IP6))
            self._pair(
                self.src, "src1", (DIRECT_SRC_IP, DIRECT_SRC_IP6), self.sink, "snk1", (DIRECT_SINK_IP, DIRECT_SINK_IP6)
            )
            self.strict_rp_filter()
            for ns, dev in ((self.relay, "rin"), (self.sink, "snk0"), (self.sink, "snk1")):
                self.run(ns, "ethtool", "-K", dev, "gro", "off", check=False)
            self.set_rps(self.relay, "rin", RELAY_CPU)
            self.set_rps(self.sink, "snk0", SENDER_CPU)
            self.set_rps(self.sink, "snk1", SENDER_CPU)
        except BaseException:
            self.down()
            raise
        return self

    def _pair(self, ns_a: str, if_a: str, ip_a: tuple[str, str], ns_b: str, if_b: str, ip_b: tuple[str, str]) -> None:
        tmp_a, tmp_b = f"{self.prefix}a", f"{self.prefix}b"
        sh("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        self.created_links.append(tmp_a)
        for tmp, ns, name, ip in ((tmp_a, ns_a, if_a, ip_a), (tmp_b, ns_b, if_b, ip_b)):
            sh("ip", "link", "set", tmp, "netns", ns)
            self.run(ns, "ip", "link", "set", tmp, "name", name)
            self.run(ns, "ip", "link", "set", name, "mtu", str(self.mtu))
            self.run(ns, "ip", "addr", "add", f"{ip[0]}/24", "dev", name)
            self.run(ns, "ip", "-6", "addr", "add", f"{ip[1]}/64", "dev", name, "nodad")
            self.run(ns, "ip", "link", "set", name, "up")
        self.created_links.remove(tmp_a)

    def set_rps(self, ns: str, dev: str, cpu: int) -> None:
        queues = self.run(ns, "sh", "-c", f"ls -d /sys/class/net/{dev}/queues/rx-*").stdout.split()
        if not queues:
            raise RuntimeError(f"{dev} in {ns} has no receive queues to steer")
        for q in queues:
            self.write(ns, f"{q}/rps_cpus", cpu_mask(cpu))

    def rps(self, ns: str, dev: str) -> str:
        return self.read(ns, f"/sys/class/net/{dev}/queues/rx-0/rps_cpus").strip()

    def strict_rp_filter(self) -> None:
        for key in ("all", "default", "rin"):
            self.run(self.relay, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=1")

    def relaxed_rp_filter(self) -> None:
        for key in ("all", "default", "rin"):
            self.run(self.relay, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")

    def add_route_back(self) -> None:
        self.run(self.relay, "ip", "route", "replace", SRC_NET, "dev", "rin")

    def del_route_back(self) -> None:
        self.run(self.relay, "ip", "route", "del", SRC_NET, "dev", "rin", check=False)

    def has_route_back(self) -> bool:
        return bool(self.run(self.relay, "ip", "route", "show", SRC_NET).stdout.strip())

    def mac(self, ns: str, dev: str) -> str:
        return self.read(ns, f"/sys/class/net/{dev}/address").strip()

    # --------------------------------------------------------------------------------------- clean-up

    def down(self) -> None:
        while self.created_links:
            sh("ip", "link", "delete", self.created_links.pop(), check=False)
        while self.created_ns:
            sh("ip", "netns", "delete", self.created_ns.pop(), check=False)

    def __enter__(self) -> NetLab:
        return self.up()

    def __exit__(self, *_exc: object) -> None:
        self.down()
