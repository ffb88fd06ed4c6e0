"""The bpf(2) system call through ctypes: maps, program loading, tcx links, queries and test runs.

Every object is a file descriptor owned by the caller. A program stays attached through a tcx link only as
long as the link's descriptor is open, or the link is pinned in a bpf file system (`obj_pin`): a pinned
object outlives the process that made it until its pin is removed.
Errors raise `BpfError` with the errno, and for a rejected program the verifier's log.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

from mcr.kernel.abi import BPF_OBJ_NAME_LEN, AttachType, Cmd, LogLevel, MapType, ProgType, UpdateFlag
from mcr.kernel.asm import Insn, encode
from mcr.linux.cpus import read_cpu_list
from mcr.model.errors import McrError

__all__ = [
    "BPF_FS_MAGIC",
    "BpfError",
    "LinkInfo",
    "LoadedProgram",
    "MapInfo",
    "ProgInfo",
    "RunResult",
    "attach_tcx_ingress",
    "bpf",
    "create_map",
    "delete_elem",
    "enable_stats",
    "is_bpffs",
    "link_info",
    "link_update",
    "load_program",
    "lookup_elem",
    "lookup_percpu",
    "lookup_percpu_range",
    "map_info",
    "map_keys",
    "mount_bpffs",
    "obj_get",
    "obj_pin",
    "possible_cpus",
    "prog_info",
    "prog_test_run",
    "query_tcx",
    "update_elem",
    "update_percpu",
]

_SYSCALL_NR: Final = {"x86_64": 321, "aarch64": 280, "arm64": 280}
_ATTR_SIZE: Final = 144  # larger than any command used here; the kernel checks the tail is zero
_LOG_SIZE: Final = 16 << 20
BPF_FS_MAGIC: Final = 0xCAFE4A11  # statfs f_type of a bpf file system
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(McrError):
    """A bpf(2) command failed; `log` holds the verifier's output for a rejected program."""

    def __init__(self, what: str, err: int, log: str = "") -> None:
        detail = f"{what}: {os.strerror(err)} (errno {err})"
        super().__init__(detail + (f"\n--- verifier log ---\n{log}" if log else ""))
        self.errno = err
        self.log = log


@cache
def _syscall_nr() -> int:
    machine = platform.machine()
    if machine not in _SYSCALL_NR:
        raise BpfError(f"bpf(2) on {machine}", errno.ENOSYS)
    return _SYSCALL_NR[machine]


def bpf(cmd: Cmd, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    """One bpf(2) call with `attr` (a zeroed buffer the caller filled); returns the non-negative result."""
    ret = int(
        _libc.syscall(
            ctypes.c_long(_syscall_nr()),
            ctypes.c_long(int(cmd)),
            ctypes.c_void_p(ctypes.addressof(attr)),
            ctypes.c_ulong(len(attr)),
        )
    )
    if ret < 0:
        raise BpfError(what, ctypes.get_errno())
    return ret


def _attr() -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(_ATTR_SIZE)


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def _name(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= BPF_OBJ_NAME_LEN or not all(c.isalnum() or c in "_." for c in name):
        raise ValueError(f"bad bpf object name {name!r}: up to 15 of [A-Za-z0-9_.]")
    return raw


# ------------------------------------------------------------------------------------------ maps


def create_map(map_type: MapType, key_size: int, value_size: int, max_entries: int, name: str = "") -> int:
    attr = _attr()
    struct.pack_into("=IIIII", attr, 0, map_type, key_size, value_size, max_entries, 0)
    struct.pack_into("16s", attr, 28, _name(name))
    return bpf(Cmd.MAP_CREATE, attr, f"creating map {name or map_type.name}")


def _elem(cmd: Cmd, map_fd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None, flags: int, what: str) -> int:
    kbuf = ctypes.create_string_buffer(key, len(key))
    attr = _attr()
    struct.pack_into("=IxxxxQQQ", attr, 0, map_fd, _addr(kbuf), _addr(value) if value is not None else 0, flags)
    return bpf(cmd, attr, what)


def update_elem(map_fd: int, key: bytes, value: bytes, flags: UpdateFlag = UpdateFlag.ANY) -> None:
    _elem(Cmd.MAP_UPDATE_ELEM, map_fd, key, ctypes.create_string_buffer(value, len(value)), flags, "map update")


def _elem_present(cmd: Cmd, map_fd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None, what: str) -> bool:
    """Run a map command on `key`; False when the map has no such key (ENOENT), any other error raised."""
    try:
        _elem(cmd, map_fd, key, value, 0, what)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def lookup_elem(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value stored under `key`, or None when there is none."""
    vbuf = ctypes.create_string_buffer(value_size)
    return vbuf.raw if _elem_present(Cmd.MAP_LOOKUP_ELEM, map_fd, key, vbuf, "map lookup") else None


def delete_elem(map_fd: int, key: bytes) -> bool:
    """Remove `key`; False when it was not there."""
    return _elem_present(Cmd.MAP_DELETE_ELEM, map_fd, key, None, "map delete")


def map_keys(map_fd: int, key_size: int) -> list[bytes]:
    """Every key of a hash map (BPF_MAP_GET_NEXT_KEY from no key until ENOENT)."""
    keys: list[bytes] = []
    cur: ctypes.Array[ctypes.c_char] | None = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        attr = _attr()
        struct.pack_into("=IxxxxQQ", attr, 0, map_fd, _addr(cur) if cur is not None else 0, _addr(nxt))
        try:
            bpf(Cmd.MAP_GET_NEXT_KEY, attr, "map key walk")
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return keys
            raise
        keys.append(nxt.raw)
        cur = ctypes.create_string_buffer(nxt.raw, key_size)
        if len(keys) > 1 << 20:
            raise BpfError("map key walk: more keys than any of our maps holds", errno.E2BIG)


@dataclass(frozen=True, slots=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


def map_info(map_fd: int) -> MapInfo:
    info = ctypes.create_string_buffer(80)  # struct bpf_map_info up to its name
    attr = _attr()
    struct.pack_into("=IIQ", attr, 0, map_fd, len(info), _addr(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "map info")
    map_type, map_id, key_size, value_size, max_entries, _flags, name = struct.unpack_from("=IIIIII16s", info)
    return MapInfo(map_type, map_id, key_size, value_size, max_entries, name.rstrip(b"\0").decode(errors="replace"))


# ------------------------------------------------------------------------------------------ pins


def is_bpffs(path: Path) -> bool:
    """True when `path` lies on a mounted bpf file system (where objects can be pinned)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs (120 bytes on 64-bit); f_type is its first field
    if _libc.statfs(str(path).encode(), buf) != 0:
        return False
    f_type: int = struct.unpack_from("=q", buf)[0]
    return f_type & 0xFFFFFFFF == BPF_FS_MAGIC


def mount_bpffs(path: Path) -> None:
    """Mount a bpf file system at `path` (mode 0700), as systemd does at /sys/fs/bpf."""
    if _libc.mount(b"bpf", str(path).encode(), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount a bpf file system at {path}: {os.strerror(err)}")


def _path_op(cmd: Cmd, path: Path, fd: int, what: str) -> int:
    name = ctypes.create_string_buffer(str(path).encode())
    attr = _attr()
    struct.pack_into("=QII", attr, 0, _addr(name), fd, 0)
    return bpf(cmd, attr, f"{what} {path}")


def obj_pin(fd: int, path: Path) -> None:
    """Pin the map, program or link `fd` at `path` (in a bpf file system; EEXIST when taken)."""
    _path_op(Cmd.OBJ_PIN, path, fd, "pinning at")


def obj_get(path: Path) -> int:
    """A new descriptor of the object pinned at `path`."""
    return _path_op(Cmd.OBJ_GET, path, 0, "opening pinned")


def link_update(link_fd: int, prog_fd: int) -> None:
    """Replace the program of a link in one step: every packet runs either the old or the new one."""
    attr = _attr()
    struct.pack_into("=III", attr, 0, link_fd, prog_fd, 0)
    bpf(Cmd.LINK_UPDATE, attr, "updating link")


@dataclass(frozen=True, slots=True)
class LinkInfo:
    type: int
    id: int
    prog_id: int
    ifindex: int  # tcx links: the interface (0 once it is gone)
    attach_type: int


def link_info(link_fd: int) -> LinkInfo:
    info = ctypes.create_string_buffer(64)  # struct bpf_link_info; the tcx member of its union at 16
    attr = _attr()
    struct.pack_into("=IIQ", attr, 0, link_fd, len(info), _addr(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "link info")
    link_type, link_id, prog_id = struct.unpack_from("=III", info)
    ifindex, attach_type = struct.unpack_from("=II", info, 16)
    return LinkInfo(link_type, link_id, prog_id, ifindex, attach_type)


@cache
def possible_cpus() -> int:
    """How many values a per-CPU map holds per key: one per possible CPU."""
    return len(read_cpu_list("possible"))


def _percpu_stride(value_size: int) -> int:
    return (value_size + 7) & ~7


def lookup_percpu(map_fd: int, key: bytes, value_size: int) -> list[bytes] | None:
    """One value per possible CPU (each is `value_size` bytes, stored 8-byte aligned by the kernel)."""
    stride = _percpu_stride(value_size)
    ncpu = possible_cpus()
    raw = lookup_elem(map_fd, key, stride * ncpu)
    if raw is None:
        return None
    return [raw[i * stride : i * stride + value_size] for i in range(ncpu)]


def lookup_percpu_range(map_fd: int, first: int, count: int, value_size: int) -> bytes:
    """Entries `first` .. `first + count - 1` of a per-CPU array in one BPF_MAP_LOOKUP_BATCH call (Linux 5.6):
    for each entry, one value per possible CPU, each `value_size` bytes stored 8-byte aligned. An array
    shorter than the range gives what it has (the kernel stops at its end)."""
    if count <= 0:
        return b""
    stride = _percpu_stride(value_size) * possible_cpus()
    values = ctypes.create_string_buffer(stride * count)
    keys = ctypes.create_string_buffer(4 * count)
    out_batch = ctypes.create_string_buffer(4)
    # the batch continues after the key in `in_batch`; none (a null pointer) starts at the first entry
    in_batch = ctypes.create_string_buffer(max(first - 1, 0).to_bytes(4, sys.byteorder), 4)
    attr = _attr()
    struct.pack_into(
        "=QQQQII",
        attr,
        0,
        _addr(in_batch) if first > 0 else 0,
        _addr(out_batch),
        _addr(keys),
        _addr(values),
        count,
        map_fd,
    )
    try:
        bpf(Cmd.MAP_LOOKUP_BATCH, attr, "map batch lookup")
    except BpfError as e:
        if e.errno != errno.ENOENT:  # ENOENT: the end of the array came first; `count` says how many were read
            raise
    got = struct.unpack_from("=I", attr, 32)[0]
    return values.raw[: stride * got]


def update_percpu(map_fd: int, key: bytes, values: Sequence[bytes]) -> None:
    """Set every CPU's value of `key` (one value for all of them when a single one is given)."""
    ncpu = possible_cpus()
    if len(values) == 1:
        values = list(values) * ncpu
    if len(values) != ncpu:
        raise ValueError(f"{len(values)} values for {ncpu} possible CPUs")
    stride = _percpu_stride(len(values[0]))
    update_elem(map_fd, key, b"".join(v.ljust(stride, b"\0") for v in values))


# ------------------------------------------------------------------------------------------ programs


@dataclass(frozen=True, slots=True)
class LoadedProgram:
    fd: int
    log: str  # verifier statistics (or the full log at a verbose level)


def load_program(
    insns: Sequence[Insn],
    prog_type: ProgType = ProgType.SCHED_CLS,
    license: str = "GPL",
    name: str = "",
    log_level: int = 0,
    expected_attach_type: int = 0,
) -> int:
    """Load `insns`; on rejection, load again with the verbose log and raise `BpfError` carrying it."""
    try:
        return load_program_logged(insns, prog_type, license, name, log_level, expected_attach_type).fd
    except BpfError as first:
        if log_level or first.errno in (errno.EPERM, errno.E2BIG):
            raise
        try:
            fd = load_program_logged(insns, prog_type, license, name, LogLevel.VERBOSE, expected_attach_type).fd
        except BpfError as verbose:
            raise BpfError(f"loading program {name}", first.errno, verbose.log) from None
        return fd  # accepted the second time (should not happen): use it anyway


def load_program_logged(
    insns: Sequence[Insn],
    prog_type: ProgType = ProgType.SCHED_CLS,
    license: str = "GPL",
    name: str = "",
    log_level: int = LogLevel.STATS,
    expected_attach_type: int = 0,
) -> LoadedProgram:
    """Load `insns` with a verifier log at `log_level` (BPF_LOG_STATS by default) and return it too."""
    code = ctypes.create_string_buffer(encode(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log_size = _LOG_SIZE if log_level & (LogLevel.VERBOSE | LogLevel.INSNS) else (64 << 10 if log_level else 0)
    log = ctypes.create_string_buffer(max(log_size, 1))
    attr = _attr()
    struct.pack_into(
        "=IIQQIIQII",
        attr,
        0,
        prog_type,
        len(insns),
        _addr(code),
        _addr(lic),
        log_level,
        log_size,
        _addr(log) if log_level else 0,
        0,
        0,
    )
    struct.pack_into("=16sII", attr, 48, _name(name), 0, expected_attach_type)
    attempts_left = PROG_LOAD_ATTEMPTS
    while True:
        attempts_left -= 1
        try:
            fd = bpf(Cmd.PROG_LOAD, attr, f"loading program {name}")
        except BpfError as e:
            if e.errno == errno.EAGAIN and attempts_left > 0:
                continue
            raise BpfError(f"loading program {name}", e.errno, log.value.decode(errors="replace")) from None
        return LoadedProgram(fd, log.value.decode(errors="replace"))


#: The verifier gives up with EAGAIN when a signal arrives while it works (a worker's SIGCHLD, a SIGHUP, a
#: debugger's stop): the load is tried again, as libbpf does, up to this many times in all.
PROG_LOAD_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class ProgInfo:
    id: int
    tag: bytes
    jited_len: int
    xlated_len: int  # bytes of the program after the verifier's rewrites (8 per instruction)
    run_time_ns: int  # these two count only while statistics are enabled (see `enable_stats`)
    run_cnt: int
    verified_insns: int  # instructions the verifier processed (Linux 5.16+, else 0)


def prog_info(prog_fd: int) -> ProgInfo:
    info = ctypes.create_string_buffer(224)  # struct bpf_prog_info up to verified_insns
    attr = _attr()
    struct.pack_into("=IIQ", attr, 0, prog_fd, len(info), _addr(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "program info")
    _type, prog_id, tag, jited, xlated = struct.unpack_from("=II8sII", info)
    run_time, run_cnt, _misses, verified = struct.unpack_from("=QQQI", info, 192)
    return ProgInfo(prog_id, tag, jited, xlated, run_time, run_cnt, verified)


def enable_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): every program counts runs and run time while the returned fd
    is open (system-wide; costs a little per run)."""
    attr = _attr()
    return bpf(Cmd.ENABLE_STATS, attr, "enabling run-time statistics")


def attach_tcx_ingress(prog_fd: int, ifindex: int) -> int:
    """Attach at tcx ingress of `ifindex` (appended after any programs already there); returns the link fd.

    Closing the link fd (or the process exiting) detaches the program.
    """
    return _link_create(prog_fd, ifindex, AttachType.TCX_INGRESS)


def _link_create(prog_fd: int, ifindex: int, attach_type: AttachType) -> int:
    attr = _attr()
    # prog_fd, target_ifindex, attach_type, flags, tcx.relative_fd, tcx.expected_revision
    struct.pack_into("=IIIIIxxxxQ", attr, 0, prog_fd, ifindex, attach_type, 0, 0, 0)
    return bpf(Cmd.LINK_CREATE, attr, f"attaching to tcx {attach_type.name.lower()} of ifindex {ifindex}")


def query_tcx(ifindex: int, attach_type: AttachType = AttachType.TCX_INGRESS, max_progs: int = 64) -> list[int]:
    """Ids of the programs attached at that tcx hook, in run order (empty when there are none)."""
    ids = ctypes.create_string_buffer(4 * max_progs)
    attr = _attr()
    struct.pack_into("=IIIIQI", attr, 0, ifindex, attach_type, 0, 0, _addr(ids), max_progs)
    try:
        bpf(Cmd.PROG_QUERY, attr, f"querying tcx of ifindex {ifindex}")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return []
        raise
    (count,) = struct.unpack_from("=I", attr, 24)
    return list(struct.unpack_from(f"={min(count, max_progs)}I", ids))


@dataclass(frozen=True, slots=True)
class RunResult:
    retval: int
    data: bytes
    duration_ns: int


def prog_test_run(
    prog_fd: int,
    data: bytes,
    *,
    ingress_ifindex: int = 0,
    ifindex: int = 0,
    flags: int = 0,
    repeat: int = 1,
    linear: int = 0,
) -> RunResult:
    """BPF_PROG_TEST_RUN: run the program once (or `repeat` times) on a copy of `data`.

    `ifindex` > 1 sets the skb's device (so helpers resolve interfaces in the caller's namespace),
    `ingress_ifindex` what the program reads as ingress_ifindex; `linear` with RunFlag.SKB_NON_LINEAR sets
    the length of the linear part. The output is the frame as the program left it.
    """
    ctx = bytearray(192)
    struct.pack_into("=II", ctx, 36, ingress_ifindex, ifindex)
    if linear:
        struct.pack_into("=I", ctx, 80, linear)
    ctx_in = ctypes.create_string_buffer(bytes(ctx), len(ctx))
    ctx_out = ctypes.create_string_buffer(len(ctx))
    data_in = ctypes.create_string_buffer(data, len(data))
    data_out = ctypes.create_string_buffer(len(data) + 256)
    attr = _attr()
    struct.pack_into(
        "=IIIIQQIIIIQQI",
        attr,
        0,
        prog_fd,
        0,
        len(data),
        len(data_out),
        _addr(data_in),
        _addr(data_out),
        repeat,
        0,
        len(ctx),
        len(ctx),
        _addr(ctx_in),
        _addr(ctx_out),
        flags,
    )
    bpf(Cmd.PROG_TEST_RUN, attr, "test run")
    retval, _size_in, size_out = struct.unpack_from("=iII", attr, 4)
    (duration,) = struct.unpack_from("=I", attr, 36)
    return RunResult(retval, data_out.raw[:size_out], duration)
