"""Dropping every privilege a data-plane worker could hold."""

from __future__ import annotations

import ctypes
import os
import resource
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    result = int(_libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")
    return result


@dataclass(frozen=True, slots=True)
class Credentials:
    uid: int
    gid: int
    cap_eff: int
    cap_prm: int
    cap_bnd: int
    no_new_privs: bool


def read_credentials(pid: int | str = "self", *, status_fd: int | None = None) -> Credentials:
    """The credentials in /proc/<pid>/status, or in the status file already open as `status_fd`.

    An open status file is read again from offset 0, which makes the kernel generate it afresh: that is how
    a worker checks its drop after it has left the filesystem that holds /proc.
    """
    if status_fd is None:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    else:
        text = os.pread(status_fd, 1 << 16, 0).decode()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return Credentials(
        uid=int(fields["Uid"].split()[1]),
        gid=int(fields["Gid"].split()[1]),
        cap_eff=int(fields["CapEff"], 16),
        cap_prm=int(fields["CapPrm"], 16),
        cap_bnd=int(fields["CapBnd"], 16),
        no_new_privs=fields.get("NoNewPrivs", "0") == "1",
    )


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


def drop_privileges(uid: int, gid: int, status_fd: int | None = None) -> Credentials:
    """Become uid/gid with no supplementary groups, no capabilities (bounding set included) and no_new_privs.

    The result is checked in /proc/self/status (or `status_fd`, that file opened earlier). Raises
    PermissionError if anything is left afterwards: a worker never runs with privileges.
    """
    if os.geteuid() == 0:
        for cap in range(_last_cap() + 1):
            try:
                prctl(PR_CAPBSET_DROP, cap)
            except OSError:
                break
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    creds = read_credentials(status_fd=status_fd)
    if creds.cap_eff or creds.cap_prm or (uid != 0 and creds.uid == 0):
        raise PermissionError(f"privileges remain after the drop: uid={creds.uid} CapEff={creds.cap_eff:x}")
    return creds


def set_parent_death_signal(signum: int) -> None:
    prctl(PR_SET_PDEATHSIG, signum)


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (no privilege needed; children inherit it): every rule
    output is a socket in every worker, and the usual soft limit of 1024 is far below what 10,000 rules can need.
    Returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            return soft, soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, target
    return soft, soft
