"""Facts about this host for `control_client doctor`: /proc/sys, /sys/class/net and `ethtool -k`.

Run it where the relay runs (in its network namespace, with `ip netns exec`): rp_filter, MTUs and
offloads belong to the namespace. Every read is allowed to fail; the value is then None and the
doctor says it could not check. `ethtool` is bounded by a timeout and optional.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Collection, Iterable
from pathlib import Path

from mcr.cli.doctor import HostFacts, InterfaceFacts, Offload, parse_ethtool_features
from mcr.model.rules import interface_name_problem

PROC_SYS = Path("/proc/sys")
PIN_ROOT = Path("/sys/fs/bpf/mcr")
SYS_NET = Path("/sys/class/net")
ETHTOOL_TIMEOUT_S = 3.0


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def ethtool_features(ethtool: str | None, name: str, timeout_s: float) -> tuple[dict[str, Offload] | None, str]:
    """`ethtool -k NAME` parsed, or None and why not."""
    if ethtool is None:
        return None, "ethtool is not installed, so GRO/LRO could not be read"
    try:
        result = subprocess.run(
            [ethtool, "-k", name],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return None, f"ethtool -k {name} did not answer within {timeout_s:g} s"
    except OSError as e:
        return None, f"cannot run {ethtool}: {e.strerror or e}"
    if result.returncode != 0:
        why = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        return None, f"ethtool -k {name} failed: {why[0]}"
    features = parse_ethtool_features(result.stdout)
    if not features:
        return None, f"ethtool -k {name} printed no feature list"
    return features, ""


def collect_host_facts(
    interfaces: Iterable[str],
    *,
    offloads_of: Collection[str] | None = None,
    proc_sys: Path = PROC_SYS,
    sys_net: Path = SYS_NET,
    ethtool: str | None = "",
    timeout_s: float = ETHTOOL_TIMEOUT_S,
    pin_root: Path = PIN_ROOT,
    control_socket: Path | None = None,
) -> HostFacts:
    """Read what the doctor needs about the host and the named interfaces (the ones that exist).

    `ethtool -k` runs for the interfaces in `offloads_of` (all of them when None): only inputs matter.
    `ethtool` is the program's path; "" (the default) looks it up on PATH, None means do not run it.
    """
    if ethtool == "":
        ethtool = shutil.which("ethtool")
    ipv4 = proc_sys / "net" / "ipv4"
    found: dict[str, InterfaceFacts] = {}
    for name in sorted(set(interfaces)):
        if interface_name_problem(name) is not None or not (sys_net / name).exists():
            continue  # not an interface name (never a path), or it does not exist here
        offloads: dict[str, Offload] | None = None
        note = "not an input interface"
        if offloads_of is None or name in offloads_of:
            offloads, note = ethtool_features(ethtool, name, timeout_s)
        found[name] = InterfaceFacts(
            name=name,
            mtu=read_int(sys_net / name / "mtu"),
            rp_filter=read_int(ipv4 / "conf" / name / "rp_filter"),
            offloads=offloads,
            offloads_note=note,
        )
    return HostFacts(
        rp_filter_all=read_int(ipv4 / "conf" / "all" / "rp_filter"),
        rp_filter_default=read_int(ipv4 / "conf" / "default" / "rp_filter"),
        igmp_max_memberships=read_int(ipv4 / "igmp_max_memberships"),
        rmem_max=read_int(proc_sys / "net" / "core" / "rmem_max"),
        wmem_max=read_int(proc_sys / "net" / "core" / "wmem_max"),
        interfaces=found,
        pinned=read_pins(pin_root),
        pin_root=str(pin_root),
        handover_sockets=handover_sockets(control_socket),
    )


def read_pins(pin_root: Path) -> dict[str, tuple[str, ...]] | None:
    """Instance directory -> pin names under `pin_root`; {} when there is none, None when it cannot be read."""
    try:
        return {d.name: tuple(sorted(p.name for p in d.iterdir())) for d in pin_root.iterdir() if d.is_dir()}
    except FileNotFoundError:
        return {} if pin_root.parent.exists() else None
    except OSError:
        return None


def handover_sockets(control_socket: Path | None) -> tuple[str, ...]:
    """The workers' handover sockets of the supervisor on `control_socket` (`<socket>.worker<N>`)."""
    if control_socket is None:
        return ()
    try:
        return tuple(sorted(str(p) for p in control_socket.parent.glob(f"{control_socket.name}.worker*")))
    except OSError:
        return ()
