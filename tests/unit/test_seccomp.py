"""The worker's seccomp filter, run in the classic BPF interpreter on `struct seccomp_data` values."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from mcr.linux.seccomp import (
    AARCH64,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    X86_64,
    Arch,
    ArgIn,
    ArgMasked,
    Policy,
    build_filter,
    worker_policy,
)
from mcr.packet.cbpf import Insn, Op, check_program, pack_program, run_program, unpack_program

PID = 4242
EPERM = SECCOMP_RET_ERRNO | 1
ALLOW = SECCOMP_RET_ALLOW
KILL = SECCOMP_RET_KILL_PROCESS
AUDIT_ARCH_I386 = 0x40000003

# x86_64 numbers of calls a compromised worker would want (arch/x86/entry/syscalls/syscall_64.tbl)
DENIED_X86_64 = {
    "open": 2,
    "socketpair": 53,
    "clone": 56,
    "fork": 57,
    "vfork": 58,
    "execve": 59,
    "kill": 62,
    "ptrace": 101,
    "setuid": 105,
    "setgid": 106,
    "setresuid": 117,
    "prctl": 157,
    "chroot": 161,
    "mount": 165,
    "unshare": 272,
    "process_vm_writev": 311,
    "execveat": 322,
    "bpf": 321,
    "pkey_mprotect": 329,
    "clone3": 435,
    "openat2": 437,
}
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 1, 2, 10, 16, 17
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW = 1, 2, 3
SOCK_NONBLOCK, SOCK_CLOEXEC = 0o4000, 0o2000000
O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND, O_CLOEXEC = 0, 1, 2, 0o100, 0o1000, 0o2000, 0o2000000
O_TMPFILE = 0o20200000
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4


def seccomp_data(nr: int, arch: int, *args: int) -> bytes:
    """`struct seccomp_data` as the interpreter reads it: each 32-bit word where the kernel has it on a
    little-endian machine, written big-endian because the interpreter's loads are (frame bytes are)."""
    words = [nr & 0xFFFFFFFF, arch, 0, 0]  # nr, arch, instruction_pointer
    for value in (*args, *[0] * (6 - len(args))):
        value &= (1 << 64) - 1  # a negative int (AT_FDCWD) as the kernel's u64
        words += [value & 0xFFFFFFFF, value >> 32]
    return struct.pack(">16I", *words)


def verdict(program: list[Insn], arch: Arch, name: str, *args: int) -> int:
    nr = arch.numbers[name]
    assert nr is not None
    return run_program(program, seccomp_data(nr, arch.audit_arch, *args))


@pytest.fixture(scope="module")
def x86() -> list[Insn]:
    return build_filter(worker_policy(PID), X86_64)


@pytest.mark.parametrize("arch", [X86_64, AARCH64], ids=lambda a: a.machine)
def test_program_passes_the_kernels_checks(arch: Arch) -> None:
    program = build_filter(worker_policy(PID), arch)
    check_program(program)
    assert len(program) < 160  # a dozen or so instructions per call: a tree, not a list
    for insn in program:
        if insn.code == Op.LD_W_ABS:  # seccomp_check_filter: aligned words inside struct seccomp_data
            assert insn.k % 4 == 0 and insn.k < 64
        assert insn.code in (Op.LD_W_ABS, Op.JEQ_K, Op.JGT_K, Op.JGE_K, Op.JA, Op.ALU_AND_K, Op.RET_K)
    assert unpack_program(pack_program(program)) == program


@pytest.mark.parametrize("arch", [X86_64, AARCH64], ids=lambda a: a.machine)
def test_every_unconditional_call_is_allowed_and_nothing_else(arch: Arch) -> None:
    program = build_filter(worker_policy(PID), arch)
    policy = worker_policy(PID)
    free = {arch.numbers[n] for n, conditions in policy.allow.items() if not conditions}
    checked = {arch.numbers[n] for n, conditions in policy.allow.items() if conditions}
    for nr in range(600):
        result = run_program(program, seccomp_data(nr, arch.audit_arch, 0, 0, 0))
        if nr in free:
            assert result == ALLOW, nr
        elif nr not in checked:
            assert result == EPERM, nr


@pytest.mark.parametrize(("name", "nr"), sorted(DENIED_X86_64.items()))
def test_dangerous_calls_get_eperm(x86: list[Insn], name: str, nr: int) -> None:
    assert run_program(x86, seccomp_data(nr, X86_64.audit_arch, AF_INET, SOCK_DGRAM)) == EPERM, name


def test_another_abi_is_refused(x86: list[Insn]) -> None:
    read = X86_64.numbers["read"]
    assert read is not None
    assert run_program(x86, seccomp_data(read, AUDIT_ARCH_I386)) == KILL  # int 0x80
    assert run_program(x86, seccomp_data(read, AARCH64.audit_arch)) == KILL
    assert run_program(x86, seccomp_data(0x40000000 | read, X86_64.audit_arch)) == EPERM  # x32
    arm = build_filter(worker_policy(PID), AARCH64)
    assert run_program(arm, seccomp_data(63, X86_64.audit_arch)) == KILL


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), ALLOW),  # what egress opens
        ((AF_INET, SOCK_DGRAM, 17), ALLOW),
        ((AF_INET6, SOCK_DGRAM, 0), ALLOW),
        ((AF_PACKET, SOCK_RAW, 0x0300), EPERM),
        ((AF_PACKET, SOCK_DGRAM, 0x0300), EPERM),
        ((AF_INET, SOCK_RAW, 17), EPERM),
        ((AF_INET, SOCK_RAW | SOCK_NONBLOCK, 255), EPERM),
        ((AF_INET, SOCK_STREAM, 0), EPERM),
        ((AF_INET, SOCK_DGRAM, 1), EPERM),  # an ICMP "ping" socket
        ((AF_UNIX, SOCK_DGRAM, 0), EPERM),  # abstract Unix sockets of the host's network namespace
        ((AF_NETLINK, SOCK_DGRAM, 0), EPERM),
    ],
)
def test_socket_only_for_udp(x86: list[Insn], args: tuple[int, int, int], expected: int) -> None:
    assert verdict(x86, X86_64, "socket", *args) == expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (O_RDONLY | O_CLOEXEC, ALLOW),
        (O_WRONLY, EPERM),
        (O_RDWR | O_CLOEXEC, EPERM),
        (O_CREAT | O_RDONLY, EPERM),
        (O_TRUNC, EPERM),
        (O_APPEND, EPERM),
        (O_TMPFILE | O_RDWR, EPERM),
    ],
)
def test_openat_only_read_only(x86: list[Insn], flags: int, expected: int) -> None:
    assert verdict(x86, X86_64, "openat", -100, 0x1000, flags) == expected


@pytest.mark.parametrize("name", ["mmap", "mprotect"])
def test_no_executable_memory(x86: list[Insn], name: str) -> None:
    assert verdict(x86, X86_64, name, 0, 4096, PROT_READ | PROT_WRITE) == ALLOW
    assert verdict(x86, X86_64, name, 0, 4096, PROT_READ | PROT_EXEC) == EPERM
    assert verdict(x86, X86_64, name, 0, 4096, PROT_EXEC | 1 << 32) == EPERM


def test_ioctl_only_the_requests_python_makes(x86: list[Insn]) -> None:
    for request in (0x5401, 0x5421, 0x5450, 0x5451, 0x8910, 0x8933):  # TCGETS FIONBIO FION/FIOCLEX SIOCGIF*
        assert verdict(x86, X86_64, "ioctl", 3, request) == ALLOW
    for request in (0x5412, 0x5402, 0x8914, 0x89F0):  # TIOCSTI TCSETS SIOCSIFFLAGS SIOCDEVPRIVATE
        assert verdict(x86, X86_64, "ioctl", 0, request) == EPERM


@pytest.mark.parametrize(
    ("level", "name", "expected"),
    [
        (0, 33, ALLOW),  # IP_MULTICAST_TTL
        (0, 2, ALLOW),  # IP_TTL
        (1, 26, ALLOW),  # SO_ATTACH_FILTER (the capture filter)
        (1, 25, ALLOW),  # SO_BINDTODEVICE
        (41, 18, ALLOW),  # IPV6_MULTICAST_HOPS
        (263, 5, ALLOW),  # PACKET_RX_RING
        (0, 3, EPERM),  # IP_HDRINCL: a raw ESP socket would write its own IP headers
        (0, 4, EPERM),  # IP_OPTIONS
        (1, 27, EPERM),  # SO_DETACH_FILTER
        (263, 13, EPERM),  # PACKET_TX_RING
        (6, 2, EPERM),  # any TCP option
    ],
)
def test_setsockopt_only_the_options_the_worker_sets(x86: list[Insn], level: int, name: int, expected: int) -> None:
    assert verdict(x86, X86_64, "setsockopt", 5, level, name) == expected


def test_tgkill_only_to_itself(x86: list[Insn]) -> None:
    assert verdict(x86, X86_64, "tgkill", PID, PID, 6) == ALLOW
    assert verdict(x86, X86_64, "tgkill", PID + 1, PID + 1, 9) == EPERM


def test_checks_compare_the_low_word_only() -> None:
    """The kernel truncates these arguments to 32 bits, so a high word changes nothing either way."""
    program = build_filter(Policy({"socket": (ArgIn(0, (AF_INET,)),)}), X86_64)
    assert verdict(program, X86_64, "socket", AF_INET | 1 << 32) == ALLOW
    assert verdict(program, X86_64, "socket", AF_PACKET | AF_INET << 32) == EPERM


def test_poll_is_left_out_where_it_does_not_exist() -> None:
    assert AARCH64.numbers["poll"] is None
    program = build_filter(Policy({"poll": (), "ppoll": ()}), AARCH64)
    assert verdict(program, AARCH64, "ppoll") == ALLOW
    assert run_program(program, seccomp_data(7, AARCH64.audit_arch)) == EPERM


def test_many_values_and_conditions_stay_in_reach() -> None:
    """Far jump targets get trampolines: 300 allowed values, three chained checks."""
    values = tuple(range(1000, 1300))
    conditions = (ArgIn(0, values), ArgMasked(1, 0xF0, 0x20), ArgIn(2, values))
    program = build_filter(Policy({"ioctl": conditions, "read": ()}), X86_64)
    check_program(program)
    assert verdict(program, X86_64, "ioctl", 1299, 0x2F, 1000) == ALLOW
    assert verdict(program, X86_64, "ioctl", 1299, 0x1F, 1000) == EPERM
    assert verdict(program, X86_64, "ioctl", 999, 0x2F, 1000) == EPERM
    assert verdict(program, X86_64, "ioctl", 1150, 0x20, 1300) == EPERM
    assert verdict(program, X86_64, "read") == ALLOW


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (Policy({"reed": ()}), "unknown system call on x86_64: reed"),
        (Policy({"read": (ArgIn(6, (1,)),)}), "argument index outside 0..5: 6"),
        (Policy({"read": (ArgIn(0, (1 << 32,)),)}), "k is a u32"),
    ],
)
def test_bad_policies_are_refused(policy: Policy, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_filter(policy, X86_64)


def _header_numbers(path: Path) -> dict[str, int]:
    """`#define __NR_name N` from a kernel header, following one level of `__NR3264_*` indirection."""
    text = path.read_text()
    numbers = {m[0]: int(m[1]) for m in re.findall(r"#define __NR3264_(\w+)\s+(\d+)", text)}
    found: dict[str, int] = {}
    for name, value in re.findall(r"#define __NR_(\w+)\s+(\w+)", text):
        if value.isdigit():
            found[name] = int(value)
        elif value.startswith("__NR3264_") and value[9:] in numbers:
            found[name] = numbers[value[9:]]
    return found


@pytest.mark.parametrize(
    ("arch", "header"),
    [
        (X86_64, "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        (AARCH64, "/usr/include/asm-generic/unistd.h"),
    ],
    ids=["x86_64", "aarch64"],
)
def test_numbers_match_the_kernel_headers(arch: Arch, header: str) -> None:
    path = Path(header)
    if not path.exists():
        pytest.skip(f"{header} is not installed")
    known = _header_numbers(path)
    for name, nr in arch.numbers.items():
        if nr is None:
            assert name not in known, name
        else:
            assert known.get(name) == nr, name
    if arch is X86_64:
        assert {name: known[name] for name in DENIED_X86_64} == DENIED_X86_64
