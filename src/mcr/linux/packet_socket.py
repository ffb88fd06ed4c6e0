"""AF_PACKET capture sockets: creation, fan-out, socket filters and kernel drop counters."""

from __future__ import annotations

import ctypes
import socket
import struct
from enum import IntEnum

ETH_P_ALL = 0x0003
SOL_PACKET = 263
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SO_LOCK_FILTER = 44


class PacketOpt(IntEnum):
    ADD_MEMBERSHIP = 1
    RX_RING = 5
    STATISTICS = 6
    VERSION = 10
    TX_RING = 13
    FANOUT = 18
    QDISC_BYPASS = 20
    IGNORE_OUTGOING = 23


class Fanout(IntEnum):
    HASH = 0
    LB = 1
    CPU = 2
    FLAG_ROLLOVER = 0x1000
    FLAG_UNIQUEID = 0x2000
    FLAG_DEFRAG = 0x8000


_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET|BPF_K 0
_FPROG = struct.Struct("@HP")
_STATS = struct.Struct("III")


def sock_fprog(program: bytes) -> tuple[bytes, ctypes.Array[ctypes.c_char]]:
    """The `struct sock_fprog` of a packed classic BPF program, and the buffer it points to (keep it alive)."""
    buf = ctypes.create_string_buffer(program, len(program))
    return _FPROG.pack(len(program) // 8, ctypes.addressof(buf)), buf


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """Attach a classic BPF program (packed `struct sock_filter` array) to `sock`."""
    fprog, _buf = sock_fprog(program)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_capture_socket(ifname: str, rcvbuf: int = 8 << 20) -> socket.socket:
    """A raw packet socket bound to one interface, dropping everything until a real filter is set.

    The drop-all filter goes on before bind so no frame of another flow is ever queued. The host's
    own outgoing frames are never even cloned to it (PACKET_IGNORE_OUTGOING).
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.htons(ETH_P_ALL))
    try:
        attach_filter(sock, _DROP_ALL)
        try:
            sock.setsockopt(SOL_PACKET, PacketOpt.IGNORE_OUTGOING, 1)
        except OSError:
            pass  # kernels before 4.20: the socket filter drops PACKET_OUTGOING as well
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((ifname, ETH_P_ALL))
    except BaseException:
        sock.close()
        raise
    return sock


def join_fanout(sock: socket.socket, group_id: int | None, mode: Fanout = Fanout.HASH) -> int:
    """Join a PACKET_FANOUT group; with `group_id` None the kernel picks an unused id. Returns the id."""
    if group_id is None:
        sock.setsockopt(SOL_PACKET, PacketOpt.FANOUT, (int(mode) | Fanout.FLAG_UNIQUEID) << 16)
        value = sock.getsockopt(SOL_PACKET, PacketOpt.FANOUT)
        return int(value) & 0xFFFF
    sock.setsockopt(SOL_PACKET, PacketOpt.FANOUT, (group_id & 0xFFFF) | (int(mode) << 16))
    return group_id


def fanout_id(sock: socket.socket) -> int:
    """The PACKET_FANOUT group `sock` belongs to, or -1 when none."""
    value = int(sock.getsockopt(SOL_PACKET, PacketOpt.FANOUT))
    return value & 0xFFFF if value else -1


def read_statistics(sock: socket.socket) -> tuple[int, int]:
    """(packets, drops) since the previous call; the kernel resets them on every read."""
    raw = sock.getsockopt(SOL_PACKET, PacketOpt.STATISTICS, _STATS.size)
    packets, drops, _freeze = _STATS.unpack(raw[: _STATS.size].ljust(_STATS.size, b"\0"))
    return packets, drops
