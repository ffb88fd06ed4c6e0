"""The paths the benchmark measures, all on the same namespaces with the same sender and sink.

Each path knows how to start and stop its relay, which group/port/interface the sink listens on, which
processes to charge CPU to, and how to read its own counters. A path leaves the relay namespace as it found
it: routes, rp_filter and nftables tables it adds are removed in `stop()`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netlab import DIRECT_SRC_IP, DIRECT_SRC_IP6, RELAY_CPU, RELAY_IN_IP, RELAY_OUT_IP, SRC_IP, SRC_IP6, NetLab, sh
from probe import boost, descendants, parse_snmp_udp

IN_GROUP, IN_PORT = "239.1.1.1", 5001
OUT_GROUP, OUT_PORT = "239.2.2.2", 6001
IN_GROUP6, OUT_GROUP6 = "ff3e::1:1", "ff3e::2:2"  # the IPv6 paths' groups (global scope), same ports
NFT_TABLE = "mcrbench"


def multicast_mac(group: str) -> str:
    _a, b, c, d = (int(x) for x in group.split("."))
    return f"01:00:5e:{b & 0x7F:02x}:{c:02x}:{d:02x}"


@dataclass
class Procs:
    """Every long-lived process the benchmark started, so that it can end all of them, and only them, by pid."""

    live: list[subprocess.Popen[bytes]] = field(default_factory=list)
    nice: int = 0  # also given to each new process's autogroup (every process here starts a session of its own)

    def start(
        self, argv: list[str], log: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - closed by the child's exit
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if log is not None and not isinstance(out, int):
            out.close()
        self.live.append(proc)
        if self.nice:
            boost([proc.pid], self.nice)
        return proc

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A short-lived process whose stdout and stderr the caller reads (communicate)."""
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
        self.live.append(proc)
        if self.nice:
            boost([proc.pid], self.nice)
        return proc

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        if proc in self.live:
            self.live.remove(proc)

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 6.0) -> None:
        """SIGTERM, wait `grace`, then SIGKILL the process and whatever it left behind (by pid)."""
        if proc.poll() is None:
            tree = descendants(proc.pid)
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                for pid in reversed(tree):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.wait(timeout=5)
            for pid in tree[1:]:  # children the process should have ended itself (they die with it anyway)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.live)):
            try:
                self.stop(proc, grace=3.0)
            except Exception as exc:  # clean-up goes on whatever one process does
                print(f"bench: could not stop pid {proc.pid}: {exc}", file=sys.stderr)


@dataclass
class Context:
    lab: NetLab
    procs: Procs
    workdir: Path
    env: dict[str, str]
    python: str = sys.executable
    sender: str = "raw"  # raw: the generator's --raw (sendmmsg of prebuilt frames), ring: --raw-mode ring, udp
    supervisor_cpu: int | None = None  # MCR's supervisor here, workers on RELAY_CPU (--worker-cpus); None: all there

    def mcr(self, *args: str) -> list[str]:
        return [self.python, "-m", "mcr", *args]


class BenchPath:
    key = ""
    label = ""
    notes = ""
    max_outputs = 1
    sender_ip = SRC_IP
    sender_group = IN_GROUP
    sender_interface = "src0"
    sink_interface = "snk0"
    sink_group = OUT_GROUP
    sink_port = OUT_PORT
    sender_flows = 1  # the generator's --flows: input groups sender_group, +1, ... interleaved

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.outputs = 1

    @property
    def lab(self) -> NetLab:
        return self.ctx.lab

    def sink_ports(self) -> list[int]:
        return [self.sink_port + i for i in range(self.outputs)]

    def start(self, outputs: int = 1) -> None:
        if outputs > self.max_outputs:
            raise ValueError(f"{self.key} cannot fan out to {outputs} outputs")
        self.outputs = outputs

    def stop(self) -> None:
        pass

    def roots(self) -> list[int]:
        """Processes (with their descendants) whose CPU time is the relay's."""
        return []

    def counters(self) -> dict[str, int]:
        """The relay's own cumulative counters (differences between two reads go into each step)."""
        return {}


class Ceiling(BenchPath):
    key = "ceiling"
    label = "rig ceiling (sender -> sink, no relay)"
    notes = "the same sender and sink over a direct veth pair src1 -> snk1; measures what the rig itself can do"
    sender_ip = DIRECT_SRC_IP
    sender_interface = "src1"
    sink_interface = "snk1"
    sink_group = IN_GROUP
    sink_port = IN_PORT


class Ceiling6(Ceiling):
    key = "ceilv6"
    label = "rig ceiling, IPv6 (sender -> sink, no relay)"
    notes = "as `ceiling`, with IPv6 groups and addresses"
    sender_ip = DIRECT_SRC_IP6
    sender_group = IN_GROUP6
    sink_group = IN_GROUP6


class Mcr(BenchPath):
    max_outputs = 256

    def __init__(
        self, ctx: Context, workers: int, engine: str = "userspace", ipv6: bool = False, flows: int = 1
    ) -> None:
        super().__init__(ctx)
        self.sender_flows = flows
        self.workers = workers
        self.engine = engine
        self.ipv6 = ipv6
        if engine == "kernel":
            self.key = "mcrk"
            self.label = "MCR kernel engine (eBPF tc)"
            self.notes = (
                "`--engine kernel`: MCR's own eBPF program on rin's tc ingress rewrites and clones each packet to "
                "the outputs (no route back needed); supervisor and its worker pinned to CPU 1 (idle here), the "
                "work is softirq on CPU 1"
            )
        else:
            self.key = f"mcr{workers}"
            self.label = f"MCR userspace, {workers} worker{'s' if workers > 1 else ''}"
            self.notes = (
                "`--engine userspace`: AF_PACKET capture on rin (no route back, strict rp_filter), sendmmsg on "
                "rout; supervisor and workers pinned to CPU 1"
            )
        if ctx.supervisor_cpu is not None:
            self.notes = self.notes.replace(
                "supervisor and its worker pinned to CPU 1", "its worker pinned to CPU 1 (`--worker-cpus`)"
            ).replace("supervisor and workers pinned to CPU 1", "workers pinned to CPU 1 (`--worker-cpus`)")
            self.notes += f"; the supervisor on CPU {ctx.supervisor_cpu}, with the sender and the sink"
        if ipv6:
            self.key += "v6"
            self.label += ", IPv6 in and out"
            self.notes += f"; IPv6 groups {IN_GROUP6} -> {OUT_GROUP6} (extension-header walk" + (
                ", UDP checksum updated for the new addresses)" if engine == "kernel" else ", general parser)"
            )
            self.sender_ip, self.sender_group, self.sink_group = SRC_IP6, IN_GROUP6, OUT_GROUP6
        if flows > 1:
            self.key += f"x{flows}"
            self.label += f", {flows:,} flows"
            self.notes += (
                f"; {flows:,} rules, rin {IN_GROUP} + i:{IN_PORT} -> {OUT_GROUP}:{OUT_PORT}:rout for i < {flows:,} "
                "(from a config file), the sender's packets interleaved over their groups (`--flows`); every rule "
                "has the same output, so one sink counts them all"
            )
        self.sock = str(ctx.workdir / f"{self.key}.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def ctl(self, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ctx.mcr("control", "--socket-path", self.sock, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.ctx.env,
        )

    def start(self, outputs: int = 1) -> None:
        super().start(outputs)
        log = self.ctx.workdir / f"{self.key}-supervisor.log"
        argv = self.ctx.mcr(
            "supervisor",
            "--control-socket-path",
            self.sock,
            "--num-workers",
            str(self.workers),
            "--engine",
            self.engine,
        )
        if self.sender_flows > 1:
            argv += ["--config", str(self.flows_config())]
        cpu = RELAY_CPU
        if self.ctx.supervisor_cpu is not None:
            cpu = self.ctx.supervisor_cpu
            argv += ["--worker-cpus", str(RELAY_CPU)]
        self.proc = self.ctx.procs.start(self.lab.argv(self.lab.relay, argv, cpu=cpu), log, self.ctx.env)
        deadline = time.monotonic() + 20
        while self.ctl("ping", timeout=3).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.key}: supervisor did not come up:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        if self.sender_flows > 1:
            self.wait_flows(deadline + 60)
        else:
            self.add_rule()
        # the workers are ready when every one reports Running
        while time.monotonic() < deadline:
            out = self.ctl("--json", "list-workers")
            if out.returncode == 0:
                workers = [w for w in json.loads(out.stdout).get("Workers", []) if w.get("worker_type") == "DataPlane"]
                if len(workers) == self.workers and all(w.get("status") == "Running" for w in workers):
                    if self.ctx.procs.nice:  # the workers are sessions of their own
                        boost(descendants(self.proc.pid), self.ctx.procs.nice)
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.key}: workers not running:\n{log.read_text()[-2000:]}")

    def flows_config(self) -> Path:
        """A config file with one rule per flow: rin IN_GROUP + i:IN_PORT -> OUT_GROUP:OUT_PORT:rout."""
        first = ipaddress.IPv4Address(IN_GROUP)
        rules = [
            f'[[rule]]\nid = "flow{i}"\ninput_interface = "rin"\ninput_group = "{first + i}"\n'
            f'input_port = {IN_PORT}\noutputs = [{{ group = "{OUT_GROUP}", port = {OUT_PORT}, interface = "rout" }}]\n'
            for i in range(self.sender_flows)
        ]
        path = self.ctx.workdir / f"{self.key}.toml"
        path.write_text("\n".join(rules))
        return path

    def wait_flows(self, deadline: float) -> None:
        """Until every flow's rule is listed active on this path's engine."""
        while time.monotonic() < deadline:
            listed = self.ctl("--json", "list", timeout=30)
            rules = json.loads(listed.stdout).get("Rules", []) if listed.returncode == 0 else []
            if len(rules) == self.sender_flows and all(r.get("state") == "active" for r in rules):
                engines = {r.get("engine") for r in rules}
                if engines != {self.engine}:
                    raise RuntimeError(f"{self.key}: the rules run on engines {engines}, not {self.engine}")
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.key}: {self.sender_flows} rules not active in time")

    def add_rule(self) -> None:
        """The single flow's rule, over the control socket."""
        out_group = f"[{OUT_GROUP6}]" if self.ipv6 else OUT_GROUP
        outs = ",".join(f"{out_group}:{p}:rout" for p in self.sink_ports())
        add = self.ctl(
            "add",
            "--rule-id",
            "bench",
            "--input-interface",
            "rin",
            "--input-group",
            self.sender_group,
            "--input-port",
            str(IN_PORT),
            "--outputs",
            outs,
        )
        if add.returncode != 0:
            raise RuntimeError(f"{self.key}: add rule failed: {add.stderr.strip() or add.stdout.strip()}")
        listed = self.ctl("--json", "list")
        rules = json.loads(listed.stdout).get("Rules", []) if listed.returncode == 0 else []
        engines = {r.get("engine") for r in rules}
        if engines != {self.engine}:
            raise RuntimeError(f"{self.key}: the rule runs on engine {engines or '?'}, not {self.engine}")

    def stop(self) -> None:
        if self.proc is not None:
            self.ctx.procs.stop(self.proc)
            self.proc = None
        Path(self.sock).unlink(missing_ok=True)

    def roots(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        stats = self.ctl("--json", "stats")
        if stats.returncode == 0:
            for flow in json.loads(stats.stdout).get("Stats", []):
                out["relayed"] = out.get("relayed", 0) + int(flow.get("packets_relayed", 0))
                for o in flow.get("outputs", []):
                    out["sent"] = out.get("sent", 0) + int(o.get("packets_sent", 0))
                    out["send_errors"] = out.get("send_errors", 0) + int(o.get("send_errors", 0))
                for reason, n in (flow.get("drops") or {}).items():
                    out[f"drop_{reason}"] = out.get(f"drop_{reason}", 0) + int(n)
        workers = self.ctl("--json", "list-workers")
        if workers.returncode == 0:
            for w in json.loads(workers.stdout).get("Workers", []):
                if w.get("worker_type") != "DataPlane":
                    continue  # the kernel engine's row has no ring
                out["ring_packets"] = out.get("ring_packets", 0) + int(w.get("kernel_packets", 0))
                out["ring_drops"] = out.get("ring_drops", 0) + int(w.get("kernel_drops", 0))
                out["worker_restarts"] = out.get("worker_restarts", 0) + int(w.get("restarts", 0))
        return out


class Socat(BenchPath):
    key = "socat"
    label = "socat (UDP socket relay)"
    notes = (
        "socat -u UDP4-RECV -> UDP4-SENDTO, pinned to CPU 1, rcvbuf 4 MiB; it receives through the kernel's "
        "socket layer, so for this path only the relay namespace gets a route back to 10.200.1.0/24 via rin "
        "(strict rp_filter then passes)"
    )

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, outputs: int = 1) -> None:
        super().start(outputs)
        self.lab.add_route_back()
        argv = [
            "socat",
            "-u",
            "-b",
            "65536",
            f"UDP4-RECV:{IN_PORT},reuseaddr,ip-add-membership={IN_GROUP}:{RELAY_IN_IP},rcvbuf=4194304",
            f"UDP4-SENDTO:{OUT_GROUP}:{OUT_PORT},bind={RELAY_OUT_IP},ip-multicast-if={RELAY_OUT_IP},"
            "ip-multicast-ttl=1,ip-multicast-loop=0",
        ]
        log = self.ctx.workdir / "socat.log"
        self.proc = self.ctx.procs.start(self.lab.argv(self.lab.relay, argv, cpu=RELAY_CPU), log)
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"socat exited: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.ctx.procs.stop(self.proc)
            self.proc = None
        self.lab.del_route_back()

    def roots(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def counters(self) -> dict[str, int]:
        udp = parse_snmp_udp(self.lab.read(self.lab.relay, "/proc/net/snmp"))
        return {
            "udp_in": udp.get("InDatagrams", 0),
            "udp_rcvbuf_errors": udp.get("RcvbufErrors", 0),
            "udp_out": udp.get("OutDatagrams", 0),
            "udp_sndbuf_errors": udp.get("SndbufErrors", 0),
        }


class Nft(BenchPath):
    key = "nft"
    label = "kernel: nftables netdev ingress, rewrite + fwd"
    notes = (
        "nftables netdev ingress chain on rin rewrites ip daddr/saddr, udp dport, ether saddr/daddr, sets the UDP "
        "checksum to 0 (nft's own update turns the raw sender's 0 into a wrong value) and "
        "`fwd to rout` (no process, no route back needed); the upper reference with the same rewrite as MCR"
    )

    def start(self, outputs: int = 1) -> None:
        super().start(outputs)
        rout_mac = self.lab.mac(self.lab.relay, "rout")
        ruleset = f"""table netdev {NFT_TABLE} {{
  chain ingress {{
    type filter hook ingress device "rin" priority 0; policy accept;
    ip daddr {IN_GROUP} udp dport {IN_PORT} counter ip daddr set {OUT_GROUP} ip saddr set {RELAY_OUT_IP} \
udp dport set {OUT_PORT} udp checksum set 0 ether saddr set {rout_mac} ether daddr set {multicast_mac(OUT_GROUP)} \
fwd to "rout"
  }}
}}
"""
        path = self.ctx.workdir / "nft.conf"
        path.write_text(ruleset)
        self.lab.run(self.lab.relay, "nft", "-f", str(path))

    def stop(self) -> None:
        self.lab.run(self.lab.relay, "nft", "delete", "table", "netdev", NFT_TABLE, check=False)

    def counters(self) -> dict[str, int]:
        text = self.lab.run(self.lab.relay, "nft", "list", "table", "netdev", NFT_TABLE, check=False).stdout
        m = re.search(r"counter packets (\d+)", text)
        return {"matched": int(m.group(1))} if m else {}


class Smcroute(BenchPath):
    key = "smcroute"
    label = "kernel: multicast routing (smcroute), no rewrite"
    notes = (
        "smcrouted in the relay namespace installs (10.200.1.2, 239.1.1.1) rin -> rout; needs a route back and "
        "rp_filter 0 (set for this path only); no rewrite, so the sink listens on the original 239.1.1.1:5001; "
        "the sender's TTL is 2 on every path so that this one can forward"
    )
    sink_group = IN_GROUP
    sink_port = IN_PORT

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, outputs: int = 1) -> None:
        super().start(outputs)
        self.lab.add_route_back()
        self.lab.relaxed_rp_filter()
        conf = self.ctx.workdir / "smcroute.conf"
        conf.write_text(
            f"phyint rin enable\nphyint rout enable\nmroute from rin source {SRC_IP} group {IN_GROUP} to rout\n"
        )
        ident = f"{self.lab.prefix}smc"
        argv = [
            "smcrouted",
            "-n",
            "-N",
            "-f",
            str(conf),
            "-i",
            ident,
            "-P",
            str(self.ctx.workdir / f"{ident}.pid"),
            "-u",
            str(self.ctx.workdir / f"{ident}.sock"),
            "-l",
            "notice",
        ]
        self.proc = self.ctx.procs.start(
            self.lab.argv(self.lab.relay, argv, cpu=RELAY_CPU), self.ctx.workdir / "smcroute.log"
        )
        deadline = time.monotonic() + 10
        while IN_GROUP not in self.lab.run(self.lab.relay, "ip", "mroute", "show", check=False).stdout:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("smcrouted did not install the route")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.ctx.procs.stop(self.proc)
            self.proc = None
        self.lab.del_route_back()
        self.lab.strict_rp_filter()

    def roots(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def counters(self) -> dict[str, int]:
        text = self.lab.run(self.lab.relay, "ip", "-s", "mroute", "show", check=False).stdout
        m = re.search(r"(\d+) packets", text)
        return {"forwarded": int(m.group(1))} if m else {}


PATH_KEYS = ("ceiling", "mcr1", "mcr2", "mcrk", "socat", "nft", "smcroute")
IPV6_PATH_KEYS = ("ceilv6", "mcr1v6", "mcrkv6")  # not in the default run: --paths ceilv6,mcr1v6,mcrkv6 --sizes 1400
#: Many flows at once (issue 18): mcr1x1000 = MCR userspace, 1 worker, 1,000 rules and flows; mcrkx1000 the kernel
#: engine. Not in the default run: --paths mcr1,mcr1x1000,mcrk,mcrkx1000 (the single-flow rows to compare with).
FLOWS_KEY = re.compile(r"mcr(\d+|k)x(\d+)")


def make_path(key: str, ctx: Context) -> BenchPath:
    factories: dict[str, Callable[[], BenchPath]] = {
        "ceiling": lambda: Ceiling(ctx),
        "socat": lambda: Socat(ctx),
        "nft": lambda: Nft(ctx),
        "smcroute": lambda: Smcroute(ctx),
        "mcrk": lambda: Mcr(ctx, 1, engine="kernel"),
        "mcrkv6": lambda: Mcr(ctx, 1, engine="kernel", ipv6=True),
        "ceilv6": lambda: Ceiling6(ctx),
    }
    if key in factories:
        return factories[key]()
    m = FLOWS_KEY.fullmatch(key)
    if m:
        flows = int(m.group(2))
        if m.group(1) == "k":
            return Mcr(ctx, 1, engine="kernel", flows=flows)
        if 1 <= int(m.group(1)) <= 8:
            return Mcr(ctx, int(m.group(1)), flows=flows)
    m = re.fullmatch(r"mcr(\d+)(v6)?", key)
    if m and 1 <= int(m.group(1)) <= 8:
        return Mcr(ctx, int(m.group(1)), ipv6=bool(m.group(2)))
    raise ValueError(
        f"unknown path {key!r} (known: {', '.join(PATH_KEYS + IPV6_PATH_KEYS)}, or mcrN, mcrNv6, mcrNxF, mcrkxF)"
    )


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    return {k: after[k] - before.get(k, 0) for k in after}


__all__ = [
    "FLOWS_KEY",
    "IPV6_PATH_KEYS",
    "PATH_KEYS",
    "BenchPath",
    "Context",
    "Procs",
    "counter_delta",
    "make_path",
    "sh",
]
