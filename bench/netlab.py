"""The benchmark's own namespaces: source -> relay -> sink over veth pairs, plus a direct source -> sink pair.

    <p>src src0 10.200.1.2 ─veth─ rin 10.200.9.1  <p>rly  rout 10.200.3.1 ─veth─ snk0 10.200.3.2  <p>snk
    <p>src src1 10.200.4.2 ────────────────────veth──────────────────── snk1 10.200.4.3  <p>snk     (all /24)

- The relay has no route back to 10.200.1.0/24 and runs strict rp_filter, so the kernel drops the source's
  multicast unless a path adds what it needs (and removes it again afterwards).
- GRO is off on `rin`; RPS steers the receive softirq of `rin` to CPU 1 (the relay's CPU) and of `snk0`/`snk1`
  to CPU 0 (the sender's and sink's CPU). Without RPS a veth processes the receive side on the sending CPU.
- `src1`/`snk1` carry the rig's ceiling: the same sender and sink with no relay in between.

Every object carries the prefix and is deleted by exact name: the namespaces (which takes their veths with
them) and the temporary veth names in the root namespace if a set-up step failed half way. The namespaces, veth
pairs, rp_filter and clean-up are `mcr.lab.Lab`'s (the demo's and the tests' lab); this adds the direct pair, RPS,
CPU pinning and the switches the reference paths need.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from mcr.lab import (
    RELAY_IN_IP,
    RELAY_IN_IP6,
    RELAY_OUT_IP,
    RELAY_OUT_IP6,
    SINK_IP,
    SINK_IP6,
    SRC_IP,
    SRC_IP6,
    Lab,
    sh,
)

__all__ = [
    "DIRECT_SINK_IP",
    "DIRECT_SINK_IP6",
    "DIRECT_SRC_IP",
    "DIRECT_SRC_IP6",
    "RELAY_CPU",
    "RELAY_IN_IP",
    "RELAY_IN_IP6",
    "RELAY_OUT_IP",
    "RELAY_OUT_IP6",
    "SENDER_CPU",
    "SINK_IP",
    "SINK_IP6",
    "SRC_IP",
    "SRC_IP6",
    "SRC_NET",
    "NetLab",
    "sh",
]

SRC_NET = "10.200.1.0/24"
DIRECT_SRC_IP = "10.200.4.2"
DIRECT_SINK_IP = "10.200.4.3"
DIRECT_SRC_IP6 = "fd00:200:4::2"
DIRECT_SINK_IP6 = "fd00:200:4::3"

SENDER_CPU = 0
RELAY_CPU = 1


def cpu_mask(cpu: int) -> str:
    return format(1 << cpu, "x")


@dataclass
class NetLab(Lab):
    prefix: str = field(default_factory=lambda: f"mcrb{os.getpid() % 100000}")
    nice: int = 0  # niceness of every benchmark process (negative: keep a shared machine's other load away)

    def argv(self, ns: str, argv: Sequence[str], cpu: int | None = None) -> list[str]:
        """`ip netns exec NS [nice -n N] [taskset -c CPU] ARGV...`.

        Each of these execs the next, so the pid of the Popen is the program's own pid.
        """
        nice = ["nice", "-n", str(self.nice)] if self.nice else []
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        return self.exec_argv(ns, [*nice, *pin, *argv])

    run = Lab.netns

    def write(self, ns: str, path: str, value: str) -> None:
        """Write a /proc or /sys file as seen from inside `ns` (ip netns exec remounts /sys for it)."""
        self.run(ns, "sh", "-c", f'echo {value} > "{path}"')

    def read(self, ns: str, path: str) -> str:
        return self.run(ns, "cat", path).stdout

    # ----------------------------------------------------------------------------------------- set-up

    def build(self) -> None:
        """The lab's source -> relay -> sink, plus the direct pair, GRO off on the receivers, and RPS."""
        super().build()
        self.pair(
            self.src, "src1", (DIRECT_SRC_IP, DIRECT_SRC_IP6), self.sink, "snk1", (DIRECT_SINK_IP, DIRECT_SINK_IP6)
        )
        for ns, dev in ((self.sink, "snk0"), (self.sink, "snk1")):
            self.run(ns, "ethtool", "-K", dev, "gro", "off", check=False)
        self.set_rps(self.relay, "rin", RELAY_CPU)
        self.set_rps(self.sink, "snk0", SENDER_CPU)
        self.set_rps(self.sink, "snk1", SENDER_CPU)

    def set_rps(self, ns: str, dev: str, cpu: int) -> None:
        queues = self.run(ns, "sh", "-c", f"ls -d /sys/class/net/{dev}/queues/rx-*").stdout.split()
        if not queues:
            raise RuntimeError(f"{dev} in {ns} has no receive queues to steer")
        for q in queues:
            self.write(ns, f"{q}/rps_cpus", cpu_mask(cpu))

    def rps(self, ns: str, dev: str) -> str:
        return self.read(ns, f"/sys/class/net/{dev}/queues/rx-0/rps_cpus").strip()

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
