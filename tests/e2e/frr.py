"""FRR (Debian's `frr` package) as a peer router inside a test namespace.

`FrrRouter.start` runs zebra and pimd directly (no watchfrr, no system service) in one namespace, with
a private directory for their configuration, pid files, vty sockets and logs; vtysh talks to them through
`--vty_socket`. The daemons run as the package's `frr` user (it is in the `frrvty` group that their
vty sockets need) and are stopped by pid with the rest of the `NetLab`. Nothing of the host's FRR (if
any) is touched: its config, sockets and interfaces are never used.

The kernel need not support multicast routing (CONFIG_IP_MROUTE): pimd then logs that it cannot enable
the mroute socket and forwards nothing, but still speaks PIM (Hellos, Join/Prune), which is what these
tests check.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.netns import NetLab, Proc, wait_for

FRR_LIBDIR = Path("/usr/lib/frr")
FRR_USER = "frr"


def frr_skip_reason() -> str | None:
    """Why FRR cannot be a peer here, or None when it can."""
    for daemon in ("zebra", "pimd"):
        if not (FRR_LIBDIR / daemon).exists():
            return f"FRR is not installed ({FRR_LIBDIR / daemon} missing; apt-get install frr)"
    if shutil.which("vtysh") is None:
        return "FRR's vtysh is not installed (apt-get install frr)"
    try:
        pwd.getpwnam(FRR_USER)
    except KeyError:
        return f"FRR's user '{FRR_USER}' does not exist (the frr package creates it)"
    return None


@dataclass
class FrrRouter:
    lab: NetLab
    ns: str
    directory: Path
    zebra: Proc
    pimd: Proc

    @classmethod
    def start(cls, lab: NetLab, ns: str, pimd_config: str, name: str = "frr") -> FrrRouter:
        # not under pytest's tmp_path: the frr user must be able to reach it (/tmp/pytest-of-root is 0700)
        directory = lab.track_dir(Path(tempfile.mkdtemp(prefix=f"mcr-{name}-")))
        pw = pwd.getpwnam(FRR_USER)
        os.chown(directory, pw.pw_uid, pw.pw_gid)
        (directory / "zebra.conf").write_text("hostname zebra\n")
        (directory / "pimd.conf").write_text(f"hostname {name}\n{pimd_config}")
        for conf in ("zebra.conf", "pimd.conf"):
            os.chown(directory / conf, pw.pw_uid, pw.pw_gid)

        def daemon(which: str) -> Proc:
            argv = [str(FRR_LIBDIR / which), "-u", FRR_USER, "-g", FRR_USER]
            argv += ["-f", str(directory / f"{which}.conf"), "-i", str(directory / f"{which}.pid")]
            argv += ["-z", str(directory / "zserv.api"), "--vty_socket", str(directory)]
            argv += ["-A", "127.0.0.1", "-P", "0", "--log", "stdout", "--log-level", "debugging"]
            return lab.popen(ns, *argv, name=f"{name}-{which}")

        zebra = daemon("zebra")

        def zebra_ready() -> bool:
            if zebra.poll() is not None:
                raise AssertionError(f"zebra exited with {zebra.poll()}:\n{zebra.out()[-3000:]}")
            return (directory / "zserv.api").exists()

        wait_for(zebra_ready, 15.0, "zebra's zserv socket")
        pimd = daemon("pimd")
        router = cls(lab, ns, directory, zebra, pimd)
        wait_for(router.answers, 15.0, "pimd to answer vtysh")
        return router

    def answers(self) -> bool:
        for proc in (self.zebra, self.pimd):
            if proc.poll() is not None:
                raise AssertionError(
                    f"{proc.name} exited with {proc.poll()}:\n{proc.out()[-3000:]}{proc.err()[-3000:]}"
                )
        return self.vtysh("show ip pim interface json", check=False) is not None

    def vtysh(self, *commands: str, check: bool = True) -> str | None:
        argv = ["vtysh", "--vty_socket", str(self.directory)]
        for c in commands:
            argv += ["-c", c]
        result = self.lab.run(self.ns, *argv, check=check)
        return result.stdout if result.returncode == 0 else None

    def json(self, command: str) -> Any:
        out = self.vtysh(command)
        assert out is not None
        return json.loads(out) if out.strip() else {}

    def pim_neighbors(self, interface: str) -> dict[str, Any]:
        """`show ip pim neighbor json` for one interface: address -> details."""
        return dict(self.json("show ip pim neighbor json").get(interface, {}))

    def pim_dr(self, interface: str) -> str:
        return str(self.json("show ip pim interface json")[interface]["pimDesignatedRouter"])
