"""The data-plane worker's seccomp filter (pure: a policy in, classic BPF out).

A worker, once contained (`mcr.linux.containment`), may make only the system calls of `worker_policy`; any
other returns EPERM, and a system call of another architecture (i386 through ``int 0x80``, the x32 ABI) is
refused as well, so the list cannot be bypassed by switching ABI. Some calls are allowed only with certain
arguments (`ArgIn`, `ArgMasked`): `socket` only for UDP over IPv4/IPv6 (the worker opens its output
sockets itself; its capture sockets come from the supervisor), `openat` only read-only, `mmap`/`mprotect`
never executable, `ioctl` only the few requests Python and glibc make on sockets and terminals, `tgkill`
only to the worker itself.

The program is the kernel's ``struct seccomp_data`` filter: it loads 32-bit words of
``{int nr; u32 arch; u64 instruction_pointer; u64 args[6]}``. Front to back::

        ld   [4]                ; arch
        jeq  #AUDIT_ARCH        else kill
        ld   [0]                ; the system call number
        jge  #reject_from -> deny   (x86_64 only: the x32 ABI's numbers)
        search of the numbers: an allowed one -> allow, or its argument checks; none -> deny
    argument checks (per call, all must hold):
        ld   [16 + 8 * i]       ; the low 32 bits of argument i (both supported arches are little-endian)
        search of the values -> next check, else deny       (ArgIn)
        and  #mask; jeq #value -> next check, else deny      (ArgMasked)

Only the low 32 bits of an argument are compared: every argument checked is a 32-bit value in the kernel
(int, unsigned int, or a flag set whose checked bits are in the low word), so the high word cannot change
what the kernel does with it. The search is `mcr.packet.cbpf.Emitter`'s: a tree of ``jgt`` with short runs
of ``jeq``, so a system call costs about a dozen instructions whatever the list's length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import assert_never

from mcr.packet.cbpf import Emitter, Insn, Op

__all__ = [
    "AARCH64",
    "ARCHES",
    "SECCOMP_RET_ALLOW",
    "SECCOMP_RET_ERRNO",
    "SECCOMP_RET_KILL_PROCESS",
    "X86_64",
    "Arch",
    "ArgIn",
    "ArgMasked",
    "Condition",
    "Policy",
    "build_filter",
    "worker_policy",
]

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000  # | errno in the low 16 bits
SECCOMP_RET_ALLOW = 0x7FFF0000
EPERM = 1

OFF_NR = 0
OFF_ARCH = 4
OFF_ARGS = 16  # args[i] at 16 + 8 * i; its low word there on a little-endian machine

# Constants the argument checks use: the same values on x86_64 and aarch64.
AF_INET = 2
AF_INET6 = 10
SOCK_DGRAM = 2
SOCK_TYPE_MASK = 0xF  # SOCK_NONBLOCK and SOCK_CLOEXEC are flags above it
IPPROTO_UDP = 17
PROT_EXEC = 0x4
O_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000 | 0o20000000  # O_WRONLY O_RDWR O_CREAT O_TRUNC O_APPEND O_TMPFILE
TCGETS = 0x5401  # isatty(): Python asks when it opens a file
FIONBIO = 0x5421  # socket.setblocking()
FIONCLEX = 0x5450
FIOCLEX = 0x5451
SIOCGIFNAME = 0x8910  # socket(fileno=) on an AF_PACKET socket names its interface
SIOCGIFINDEX = 0x8933
# setsockopt: the levels and option names the worker sets (egress, capture filter and ring). Leaving out
# IP_HDRINCL (3) keeps the raw ESP sockets the supervisor hands over from writing IP headers of their own.
SOL_IP, SOL_SOCKET, SOL_IPV6, SOL_PACKET = 0, 1, 41, 263
IP_HDRINCL = 3
SOCKOPT_NAMES = (
    2,  # IP_TTL
    5,  # PACKET_RX_RING
    7,  # SO_SNDBUF
    10,  # PACKET_VERSION
    16,  # IPV6_UNICAST_HOPS
    17,  # IPV6_MULTICAST_IF
    18,  # IPV6_MULTICAST_HOPS
    19,  # IPV6_MULTICAST_LOOP
    25,  # SO_BINDTODEVICE
    26,  # SO_ATTACH_FILTER
    32,  # IP_MULTICAST_IF
    33,  # IP_MULTICAST_TTL
    34,  # IP_MULTICAST_LOOP
)


@dataclass(frozen=True, slots=True)
class ArgIn:
    """Argument `index` (its low 32 bits) is one of `values`."""

    index: int
    values: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ArgMasked:
    """Argument `index` (its low 32 bits) has ``arg & mask == value``."""

    index: int
    mask: int
    value: int


Condition = ArgIn | ArgMasked


@dataclass(frozen=True, slots=True)
class Policy:
    """The allowed system calls by name, each with the conditions its arguments must all meet (none: any)."""

    allow: Mapping[str, tuple[Condition, ...]]


@dataclass(frozen=True, slots=True)
class Arch:
    """One architecture: its AUDIT_ARCH value, system call numbers, and the first number of another ABI."""

    machine: str  # os.uname().machine
    audit_arch: int
    numbers: Mapping[str, int | None]  # None: the call does not exist here (glibc uses another)
    reject_from: int | None = None


# Numbers from linux/arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h, checked
# against the installed headers by tests/unit/test_seccomp.py.
_NUMBERS: dict[str, tuple[int | None, int | None]] = {  # name: (x86_64, aarch64)
    "read": (0, 63),
    "write": (1, 64),
    "close": (3, 57),
    "fstat": (5, 80),
    "newfstatat": (262, 79),
    "lseek": (8, 62),
    "fcntl": (72, 25),
    "ioctl": (16, 29),
    "openat": (257, 56),
    "poll": (7, None),
    "ppoll": (271, 73),
    "socket": (41, 198),
    "bind": (49, 200),
    "connect": (42, 203),
    "getsockname": (51, 204),
    "getpeername": (52, 205),
    "setsockopt": (54, 208),
    "getsockopt": (55, 209),
    "sendto": (44, 206),
    "sendmsg": (46, 211),
    "sendmmsg": (307, 269),
    "recvfrom": (45, 207),
    "recvmsg": (47, 212),
    "brk": (12, 214),
    "mmap": (9, 222),
    "munmap": (11, 215),
    "mremap": (25, 216),
    "mprotect": (10, 226),
    "madvise": (28, 233),
    "rt_sigaction": (13, 134),
    "rt_sigprocmask": (14, 135),
    "rt_sigreturn": (15, 139),
    "sigaltstack": (131, 132),
    "tgkill": (234, 131),
    "restart_syscall": (219, 128),
    "clock_gettime": (228, 113),
    "clock_getres": (229, 114),
    "gettimeofday": (96, 169),
    "clock_nanosleep": (230, 115),
    "nanosleep": (35, 101),
    "futex": (202, 98),
    "sched_yield": (24, 124),
    "getpid": (39, 172),
    "getppid": (110, 173),
    "gettid": (186, 178),
    "getuid": (102, 174),
    "geteuid": (107, 175),
    "getgid": (104, 176),
    "getegid": (108, 177),
    "getrandom": (318, 278),
    "exit": (60, 93),
    "exit_group": (231, 94),
}

X86_64 = Arch(
    "x86_64",
    0xC000003E,
    {name: nrs[0] for name, nrs in _NUMBERS.items()},
    reject_from=0x40000000,  # __X32_SYSCALL_BIT
)
AARCH64 = Arch("aarch64", 0xC00000B7, {name: nrs[1] for name, nrs in _NUMBERS.items()})
ARCHES: dict[str, Arch] = {a.machine: a for a in (X86_64, AARCH64)}


def worker_policy(pid: int) -> Policy:
    """What a data-plane worker does after its privilege drop, found by tracing it (see docs/design.md).

    `pid` is the worker's own: the only process it may signal.
    """
    anything: tuple[Condition, ...] = ()
    calls = [
        # descriptors it holds: the channel, the stats pipe, stderr, capture and output sockets, ring mmaps
        "read", "write", "close", "fstat", "newfstatat", "lseek", "fcntl", "poll", "ppoll",
        "bind", "connect", "getsockname", "getpeername", "setsockopt", "getsockopt",
        "sendto", "sendmsg", "sendmmsg", "recvfrom", "recvmsg",
        # the interpreter: memory, signals, clocks, locks, identity, hash seeds, exit
        "brk", "munmap", "mremap", "madvise",
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
        "clock_gettime", "clock_getres", "gettimeofday", "clock_nanosleep", "nanosleep",
        "futex", "sched_yield", "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid",
        "getrandom", "exit", "exit_group",
    ]  # fmt: skip
    allow: dict[str, tuple[Condition, ...]] = dict.fromkeys(calls, anything)
    udp = (ArgIn(0, (AF_INET, AF_INET6)), ArgMasked(1, SOCK_TYPE_MASK, SOCK_DGRAM), ArgIn(2, (0, IPPROTO_UDP)))
    allow["socket"] = udp
    allow["openat"] = (ArgMasked(2, O_WRITE_FLAGS, 0),)
    allow["mmap"] = (ArgMasked(2, PROT_EXEC, 0),)
    allow["mprotect"] = (ArgMasked(2, PROT_EXEC, 0),)
    allow["ioctl"] = (ArgIn(1, (TCGETS, FIONBIO, FIONCLEX, FIOCLEX, SIOCGIFNAME, SIOCGIFINDEX)),)
    allow["setsockopt"] = (ArgIn(1, (SOL_IP, SOL_SOCKET, SOL_IPV6, SOL_PACKET)), ArgIn(2, SOCKOPT_NAMES))
    allow["tgkill"] = (ArgIn(0, (pid,)),)
    return Policy(allow)


def build_filter(policy: Policy, arch: Arch) -> list[Insn]:
    """The seccomp program for `policy` on `arch`: allow, EPERM, or kill for a foreign architecture.

    A call that does not exist on `arch` (None in its table) is left out. Raises ValueError for a name `arch`
    does not know, an argument index outside 0..5, or a value that is not a u32.
    """
    e = Emitter()
    kill = e.stmt(Op.RET_K, SECCOMP_RET_KILL_PROCESS)
    deny = e.stmt(Op.RET_K, SECCOMP_RET_ERRNO | EPERM)
    allow = e.stmt(Op.RET_K, SECCOMP_RET_ALLOW)
    entries: dict[int, int] = {}
    for name, conditions in sorted(policy.allow.items()):
        if name not in arch.numbers:
            raise ValueError(f"unknown system call on {arch.machine}: {name}")
        nr = arch.numbers[name]
        if nr is None:
            continue
        entry = allow
        for condition in reversed(conditions):
            entry = _check(e, condition, entry, deny)
        entries[nr] = entry
    e.search(sorted(entries), entries.__getitem__, deny)
    if arch.reject_from is not None:
        e.jump(Op.JGE_K, arch.reject_from, deny, e.head)
    e.stmt(Op.LD_W_ABS, OFF_NR)
    e.jump(Op.JEQ_K, arch.audit_arch, e.head, kill)
    e.stmt(Op.LD_W_ABS, OFF_ARCH)
    return e.program()


def _check(e: Emitter, condition: Condition, passed: int, failed: int) -> int:
    """Emit one argument check that goes on to `passed` or `failed`; returns its entry position."""
    if not 0 <= condition.index <= 5:
        raise ValueError(f"system call argument index outside 0..5: {condition.index}")
    match condition:
        case ArgIn(values=values):
            e.search(sorted(set(values)), lambda _value: passed, failed)
        case ArgMasked(mask=mask, value=value):
            e.jump(Op.JEQ_K, value, passed, failed)
            e.stmt(Op.ALU_AND_K, mask)
        case _:
            assert_never(condition)
    return e.stmt(Op.LD_W_ABS, OFF_ARGS + 8 * condition.index)
