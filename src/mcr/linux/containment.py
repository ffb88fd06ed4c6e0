"""Containing a data-plane worker: an empty root, no privileges, a seccomp allow-list.

`contain` is the one routine a worker runs between its imports and its first command, in this order:

1. **Empty root.** While still root it creates a private directory, opens it, removes it, and chroots into
   it: the worker's whole filesystem is then one deleted, empty directory, owned by root and mode 0700, in
   which nothing can be created (the kernel refuses new entries in a deleted directory) and nothing can be
   read. Every module is imported before, and glibc's time zone is loaded before (`time.localtime`). A
   chroot needs only CAP_SYS_CHROOT, where a private mount namespace would need CAP_SYS_ADMIN; no directory
   descriptor stays open that could lead back out, and the chroot call itself is gone with the capabilities
   and refused by the filter.
2. **No privileges** (`mcr.linux.privileges.drop_privileges`): no groups, no capabilities in any set,
   setresuid/setresgid to the worker user, no_new_privs; checked in /proc/self/status, opened before step 1.
3. **Parent death signal**, after the uid change (which clears it).
4. **Seccomp** (unless turned off): the filter of `mcr.linux.seccomp.worker_policy`, installed with
   ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)``; it is inherited by nothing (workers never fork) and can
   never be removed.

Any step that fails raises OSError: a worker that cannot be contained does not run.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
import time
from dataclasses import dataclass

from mcr.linux.packet_socket import sock_fprog
from mcr.linux.privileges import Credentials, drop_privileges, prctl, set_parent_death_signal
from mcr.linux.seccomp import ARCHES, Arch, build_filter, worker_policy
from mcr.packet.cbpf import pack_program

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


@dataclass(frozen=True, slots=True)
class Containment:
    credentials: Credentials
    seccomp_calls: int  # system calls the filter allows; 0 when the filter is off

    def describe(self) -> str:
        mode = f"seccomp allow-list of {self.seccomp_calls} system calls" if self.seccomp_calls else "seccomp OFF"
        return f"uid {self.credentials.uid}, no capabilities, no_new_privs, empty read-only root, {mode}"


def machine_arch() -> Arch:
    """The running machine's seccomp tables; OSError where there are none (turn seccomp off there)."""
    machine = os.uname().machine
    try:
        return ARCHES[machine]
    except KeyError:
        known = ", ".join(sorted(ARCHES))
        raise OSError(f"no seccomp system call table for {machine} (only {known}): use --no-seccomp") from None


def enter_empty_root() -> None:
    """Make a private empty directory, remove it, and chroot into it (needs CAP_SYS_CHROOT)."""
    time.localtime()  # glibc reads /etc/localtime once, on first use: now, while it is still there
    path = tempfile.mkdtemp(prefix="mcr-worker-")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.rmdir(path)
        os.fchdir(fd)
    finally:
        os.close(fd)
    os.chroot(".")
    os.chdir("/")


def install_seccomp(program: bytes) -> None:
    """Install a seccomp filter on the calling thread; no_new_privs must already be set."""
    fprog, program_buf = sock_fprog(program)
    fprog_buf = ctypes.create_string_buffer(fprog, len(fprog))
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog_buf))
    del program_buf  # the kernel has copied the program


def contain(uid: int, gid: int, *, seccomp: bool, death_signal: int) -> Containment:
    """Contain the calling process for good (see the module docstring). Raises OSError on any failure."""
    arch = machine_arch() if seccomp else None
    status_fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_empty_root()
        creds = drop_privileges(uid, gid, status_fd)
    finally:
        os.close(status_fd)
    set_parent_death_signal(death_signal)
    if arch is None:
        return Containment(creds, 0)
    policy = worker_policy(os.getpid())
    install_seccomp(pack_program(build_filter(policy, arch)))
    return Containment(creds, sum(1 for name in policy.allow if arch.numbers[name] is not None))
