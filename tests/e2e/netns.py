"""Network namespaces, veth pairs and processes for the end-to-end tests (a pytest plugin).

`NetLab` owns everything one test creates: namespaces named `<prefix><role>` (the prefix holds the pytest
process id, a random token and a counter, so parallel runs and leftovers of a killed run never collide),
the processes it started, and scratch directories. `NetLab.close()` stops those processes by pid, kills
whatever is still running inside its namespaces (`ip netns pids NAME`: only processes the test started can
be in there), and deletes exactly its namespaces, which takes their veth pairs with them. Nothing is ever
created in, or sent to, the host's own network namespace: veth pairs are created inside the namespaces.

`build_chain()` makes the standard topology of the end-to-end tests:

    SRC  src0 10.200.1.2/24  <->  rin 10.200.9.1/24   RELAY   rout 10.200.3.1/24  <->  snk0 10.200.3.2/24  SINK

The relay's input address is deliberately in another subnet than the source and the relay has no route back
to 10.200.1.0/24; with strict rp_filter the relay's kernel drops the source's multicast, which is the problem
MCR solves by capturing at layer 2. Options: MTU (jumbo frames) and extra output pairs `rout<k+1>`/`snk<k>`
(10.200.<10+k>.1 and .2) into the sink namespace or into their own sink namespaces.

The fixtures `netlab` and `chain` are registered from the root `tests/conftest.py`; they skip the test when
it is not run as root or when `ip netns` does not work.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

SRC_IP = "10.200.1.2"
RELAY_IN_IP = "10.200.9.1"
RELAY_OUT_IP = "10.200.3.1"
SINK_IP = "10.200.3.2"
SRC_IF = "src0"
RELAY_IN_IF = "rin"
RELAY_OUT_IF = "rout"
SINK_IF = "snk0"
IFNAMSIZ_MAX = 15

T = TypeVar("T")
_counter = itertools.count()
_RUN_TOKEN = secrets.token_hex(2)  # with the pid: no clash with what a killed earlier run may have left
_CHILD_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


class CommandFailed(AssertionError):
    """A harness command exited non-zero; the message carries its argv, exit status and output."""


class CleanupError(RuntimeError):
    """Something the lab created could not be removed."""


def netns_skip_reason() -> str | None:
    """Why the end-to-end tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "end-to-end tests need root: they create network namespaces and AF_PACKET sockets"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    try:
        probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"'ip netns list' cannot run: {e}"
    if probe.returncode != 0:
        return f"'ip netns' is unavailable: {probe.stderr.strip()}"
    return None


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` and the last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value: {value!r})")
        time.sleep(interval)


def tool(name: str) -> list[str]:
    """argv for one of the product's console scripts: the installed script next to this interpreter."""
    script = Path(sysconfig.get_path("scripts")) / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mcr", name]


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def proc_status(pid: int) -> dict[str, str]:
    """The fields of /proc/PID/status."""
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


@dataclass
class Proc:
    """A process started by a `NetLab`, with its stdout and stderr in files."""

    name: str
    ns: str | None
    argv: list[str]
    popen: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> int:
        """Wait for the exit status; fails the test (with the stderr tail) when it takes longer."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} (pid {self.pid}) still running after {timeout} s\n{self.err()[-3000:]}"
            ) from None

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signum)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit status."""
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
        return self.popen.wait(10)

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def json(self, timeout: float) -> Any:
        """Wait for a successful exit and parse stdout as one JSON document."""
        rc = self.wait(timeout)
        if rc != 0:
            raise CommandFailed(f"{self.name} exited {rc}: {' '.join(self.argv)}\n{self.err()[-3000:]}")
        try:
            return json.loads(self.out())
        except json.JSONDecodeError as e:
            raise AssertionError(f"{self.name} printed no JSON ({e}): {self.out()[-2000:]!r}") from None


class NetLab:
    """Namespaces, processes and directories of one test, removed by exact name and pid in `close()`."""

    def __init__(self, workdir: Path, prefix: str | None = None) -> None:
        self.workdir = workdir
        self.prefix = prefix or f"mcre{os.getpid()}{_RUN_TOKEN}n{next(_counter)}"
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self.dirs: list[Path] = []
        self.closed = False

    # ----------------------------------------------------------------------------------- namespaces

    def add_netns(self, role: str) -> str:
        """Create namespace `<prefix><role>` with lo up and IPv6 off (so captures see only our IPv4 traffic)."""
        name = f"{self.prefix}{role}"
        self.host_run("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.run(name, "ip", "link", "set", "dev", "lo", "up")
        for key in ("all", "default"):
            self.run(name, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1", check=False)
        return name

    def netns_pids(self, ns: str) -> list[int]:
        """Pids of every process inside namespace `ns`."""
        result = self.host_run("ip", "netns", "pids", ns, check=False)
        return [int(p) for p in result.stdout.split()]

    def track_dir(self, path: Path) -> Path:
        """Remove `path` (recursively) in `close()`."""
        self.dirs.append(path)
        return path

    # ------------------------------------------------------------------------------------- commands

    @staticmethod
    def argv_in(ns: str | None, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)

    def host_run(self, *argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return self.run(None, *argv, check=check, timeout=timeout)

    def run(
        self,
        ns: str | None,
        *argv: str,
        check: bool = True,
        timeout: float = 20.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside `ns` (None: the host); check=True fails on a non-zero exit."""
        full = self.argv_in(ns, argv)
        try:
            result = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input, env=_CHILD_ENV)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"command timed out after {timeout} s: {' '.join(full)}\n{e.stderr!r}") from None
        if check and result.returncode != 0:
            raise CommandFailed(
                f"command failed ({result.returncode}): {' '.join(full)}\n"
                f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
            )
        return result

    def popen(self, ns: str | None, *argv: str, name: str | None = None) -> Proc:
        """Start a command in the background inside `ns`; its output goes to `<workdir>/<name>.{out,err}`.

        `ip netns exec` execs the command in place, so the pid is the command's own.
        """
        name = name or Path(argv[0]).name
        stem = f"{name}-{len(self.procs)}"
        out_path = self.workdir / f"{stem}.out"
        err_path = self.workdir / f"{stem}.err"
        full = self.argv_in(ns, argv)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            popen = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=_CHILD_ENV)
        proc = Proc(name, ns, full, popen, out_path, err_path)
        self.procs.append(proc)
        return proc

    def logs(self) -> list[tuple[str, Path]]:
        """(title, path) of every output file, for failure reports."""
        items: list[tuple[str, Path]] = []
        for p in self.procs:
            items.append((f"{p.name} pid {p.pid} stdout", p.out_path))
            items.append((f"{p.name} pid {p.pid} stderr", p.err_path))
        return items

    # -------------------------------------------------------------------------------------- cleanup

    def close(self) -> None:
        """Stop our processes, empty and delete our namespaces, remove our directories. Idempotent."""
        if self.closed:
            return
        self.closed = True
        problems: list[str] = []
        for proc in reversed(self.procs):
            try:
                proc.stop(timeout=5.0)
            except (OSError, subprocess.TimeoutExpired) as e:
                problems.append(f"cannot stop {proc.name} pid {proc.pid}: {e}")
        for ns in reversed(self.namespaces):
            leftovers = self.netns_pids(ns)
            for pid in leftovers:  # e.g. workers orphaned by a crashed supervisor: they live in our namespace
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5.0
            while any(pid_alive(p) for p in leftovers) and time.monotonic() < deadline:
                time.sleep(0.02)
            result = self.host_run("ip", "netns", "delete", ns, check=False)
            if result.returncode != 0:
                problems.append(f"cannot delete namespace {ns}: {result.stderr.strip()}")
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)
        if problems:
            raise CleanupError("; ".join(problems))


# ------------------------------------------------------------------------------------------ topology


@dataclass(frozen=True)
class OutputLink:
    """One relay output: `relay_if` in RELAY, cabled to `sink_if` in `sink_ns`."""

    relay_if: str
    relay_ip: str
    sink_ns: str
    sink_if: str
    sink_ip: str


@dataclass
class Chain:
    """The SRC -> RELAY -> SINK topology (see the module docstring)."""

    lab: NetLab
    src: str
    relay: str
    sink: str
    mtu: int
    outputs: list[OutputLink] = field(default_factory=list)
    src_if: str = SRC_IF
    src_ip: str = SRC_IP
    relay_in: str = RELAY_IN_IF
    relay_in_ip: str = RELAY_IN_IP
    relay_out: str = RELAY_OUT_IF
    relay_out_ip: str = RELAY_OUT_IP
    sink_if: str = SINK_IF
    sink_ip: str = SINK_IP

    def link(self, ns: str, ifname: str) -> dict[str, Any]:
        """`ip -j link show` of one interface."""
        (info,) = json.loads(self.lab.run(ns, "ip", "-j", "link", "show", "dev", ifname).stdout)
        return dict(info)

    def mac(self, ns: str, ifname: str) -> bytes:
        return bytes.fromhex(self.link(ns, ifname)["address"].replace(":", ""))

    def sysctl(self, ns: str, key: str) -> str:
        return self.lab.run(ns, "sysctl", "-n", key).stdout.strip()


def _veth(lab: NetLab, ns_a: str, if_a: str, ip_a: str, ns_b: str, if_b: str, ip_b: str, mtu: int) -> None:
    """A veth pair created inside `ns_a` with its peer moved straight into `ns_b`; addresses /24, up."""
    for name in (if_a, if_b):
        assert len(name) <= IFNAMSIZ_MAX, f"interface name {name!r} is longer than {IFNAMSIZ_MAX} bytes"
    lab.run(ns_a, "ip", "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
    for ns, name, ip in ((ns_a, if_a, ip_a), (ns_b, if_b, ip_b)):
        lab.run(ns, "ip", "link", "set", "dev", name, "mtu", str(mtu))
        lab.run(ns, "ip", "addr", "add", f"{ip}/24", "dev", name)
        lab.run(ns, "ip", "link", "set", "dev", name, "up")


def _wait_up(lab: NetLab, ns: str, ifname: str) -> None:
    def up() -> bool:
        (info,) = json.loads(lab.run(ns, "ip", "-j", "link", "show", "dev", ifname).stdout)
        return bool(info.get("operstate") == "UP")

    wait_for(up, 10.0, f"{ifname} in {ns} to come up")


def build_chain(
    lab: NetLab, *, mtu: int = 1500, extra_outputs: int = 0, separate_sinks: bool | Collection[int] = False
) -> Chain:
    """Build SRC -> RELAY -> SINK in `lab` (removed by `lab.close()`), plus `extra_outputs` more output pairs.

    Extra output k (1-based) is `rout<k+1>` 10.200.<10+k>.1 <-> `snk<k>` 10.200.<10+k>.2, in SINK, or in a
    namespace `snk<k>` of its own when `separate_sinks` is True or contains k.
    """
    src = lab.add_netns("src")
    relay = lab.add_netns("rly")
    sink = lab.add_netns("snk")
    chain = Chain(lab, src, relay, sink, mtu)
    # strict reverse-path filtering on the relay, before and after the input interface exists
    for key in ("all", "default"):
        lab.run(relay, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=1")
    _veth(lab, src, SRC_IF, SRC_IP, relay, RELAY_IN_IF, RELAY_IN_IP, mtu)
    lab.run(relay, "sysctl", "-qw", f"net.ipv4.conf.{RELAY_IN_IF}.rp_filter=1")
    lab.run(relay, "ethtool", "-K", RELAY_IN_IF, "gro", "off", check=False)  # not every kernel lets us
    _veth(lab, relay, RELAY_OUT_IF, RELAY_OUT_IP, sink, SINK_IF, SINK_IP, mtu)
    chain.outputs.append(OutputLink(RELAY_OUT_IF, RELAY_OUT_IP, sink, SINK_IF, SINK_IP))
    for k in range(1, extra_outputs + 1):
        own = separate_sinks if isinstance(separate_sinks, bool) else k in separate_sinks
        sink_ns = lab.add_netns(f"snk{k}") if own else sink
        link = OutputLink(f"rout{k + 1}", f"10.200.{10 + k}.1", sink_ns, f"snk{k}", f"10.200.{10 + k}.2")
        _veth(lab, relay, link.relay_if, link.relay_ip, sink_ns, link.sink_if, link.sink_ip, mtu)
        chain.outputs.append(link)
    _wait_up(lab, src, SRC_IF)
    _wait_up(lab, relay, RELAY_IN_IF)
    for link in chain.outputs:
        _wait_up(lab, relay, link.relay_if)
        _wait_up(lab, link.sink_ns, link.sink_if)
    return chain


# ------------------------------------------------------------------------------------ pytest plugin

_LAB_KEY = pytest.StashKey[list[NetLab]]()
_LOG_TAIL = 6000


@pytest.fixture
def netlab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NetLab]:
    """A fresh `NetLab` (skips unless root with `ip netns`); everything it made is removed afterwards."""
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    tmp_path.chmod(0o755)  # processes that drop privileges write their files here too
    lab = NetLab(tmp_path)
    request.node.stash.setdefault(_LAB_KEY, []).append(lab)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def chain(netlab: NetLab) -> Chain:
    """The standard SRC -> RELAY -> SINK chain at MTU 1500."""
    return build_chain(netlab)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, append the tail of every output file of the test's processes to the report."""
    report = yield
    if report.failed:
        for lab in item.stash.get(_LAB_KEY, []):
            for title, path in lab.logs():
                try:
                    text = path.read_text(errors="replace")
                except OSError:
                    continue
                if text.strip():
                    report.sections.append((f"{title} ({path.name})", text[-_LOG_TAIL:]))
    return report
