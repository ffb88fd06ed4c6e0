"""Batched UDP system calls (sendmmsg/recvmmsg) through ctypes, with preallocated arrays.

This module is on the relay's hot path, so nothing here allocates per message:

- `SendBatch` holds one `struct mmsghdr` and one `struct iovec` per message. `set()` points message i at raw
  memory (an address from `buffer_address()` plus an offset); `send()` is one sendmmsg(2) call over a
  contiguous run of messages and returns the number sent, or `-errno`. Errors are return values, not
  exceptions.
- `RecvBatch` owns one buffer per message; `recv()` is one recvmmsg(2) call, after which `length(i)`,
  `view(i)`, `truncated(i)` and `source(i)` describe message i until the next `recv()`.

The structures are declared as ctypes Structures, so ctypes computes the layout of the running ABI (glibc on
x86_64 and aarch64: iovec 16 bytes, msghdr 56, mmsghdr 64). Each ctypes array is built with `from_buffer` over
a bytearray, so the hot path can write iovecs with a precompiled `struct.Struct.pack_into` and read `msg_len`/
`msg_flags` through a `memoryview` instead of creating a ctypes proxy object per field access.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys
from array import array
from functools import cache
from ipaddress import IPv4Address
from typing import Final

__all__ = [
    "MAX_UDP_PAYLOAD",
    "MSG_DONTWAIT",
    "MSG_TRUNC",
    "RecvBatch",
    "SendBatch",
    "buffer_address",
]

MSG_DONTWAIT: Final = int(socket.MSG_DONTWAIT)
MSG_TRUNC: Final = int(socket.MSG_TRUNC)
MAX_UDP_PAYLOAD: Final = 65507


class _IoVec(ctypes.Structure):
    _fields_ = (
        ("iov_base", ctypes.c_void_p),
        ("iov_len", ctypes.c_size_t),
    )


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_hdr", _MsgHdr),
        ("msg_len", ctypes.c_uint),
    )


class _SockAddrIn(ctypes.Structure):
    _fields_ = (
        ("sin_family", ctypes.c_ushort),
        ("sin_port", ctypes.c_uint16),  # network byte order
        ("sin_addr", ctypes.c_uint8 * 4),
        ("sin_zero", ctypes.c_uint8 * 8),
    )


_MMSG_SIZE: Final = ctypes.sizeof(_MMsgHdr)
_IOV_SIZE: Final = ctypes.sizeof(_IoVec)
_SOCKADDR_SIZE: Final = ctypes.sizeof(_SockAddrIn)
# A received message's source slot holds a struct sockaddr_in6 (28 bytes): the kernel writes the address's full
# length back into msg_namelen, so a 16-byte slot would be overrun by the next recvmmsg on an IPv6 socket.
_SOURCE_SLOT: Final = 28
# Offsets of the two fields the kernel writes back, in 32-bit words, for a memoryview cast to "I".
_MSG_LEN_WORD: Final = _MMsgHdr.msg_len.offset // 4
_MSG_FLAGS_WORD: Final = _MsgHdr.msg_flags.offset // 4
_MMSG_WORDS: Final = _MMSG_SIZE // 4
_IOV: Final = struct.Struct("@PN")  # struct iovec: void *iov_base; size_t iov_len
# struct sockaddr_in: the family in host byte order, then port and address in network byte order.
_SOCKADDR_IN: Final = struct.Struct("=H2s4s8x")
# msg_name and msg_namelen of message i as 64-bit words of a memoryview cast to "Q": msg_namelen is a 32-bit
# field followed by padding, so the word's value is the length on a little-endian machine, shifted on a big one.
_MMSG_QWORDS: Final = _MMSG_SIZE // 8
_NAMELEN_QWORD: Final = _MsgHdr.msg_namelen.offset // 8
_NAMELEN_SHIFT: Final = 0 if sys.byteorder == "little" else 32

assert _IOV.size == _IOV_SIZE
assert _SOCKADDR_IN.size == _SOCKADDR_SIZE
assert _MsgHdr.msg_name.offset == 0 and _MsgHdr.msg_namelen.offset == 8 and _MMSG_SIZE % 8 == 0
assert _MMsgHdr.msg_len.offset % 4 == 0 and _MsgHdr.msg_flags.offset % 4 == 0 and _MMSG_SIZE % 4 == 0

_libc = ctypes.CDLL(None, use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
_sendmmsg.restype = ctypes.c_int
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
_recvmmsg.restype = ctypes.c_int
_get_errno = ctypes.get_errno


def buffer_address(buf: bytearray | memoryview | object) -> int:
    """Return the address of the first byte of a writable buffer (a bytearray, a writable mmap or memoryview).

    The address stays valid only while the caller keeps `buf` alive and does not resize it (a bytearray must
    not grow or shrink, an mmap must not be closed); nothing here holds a reference to it.
    """
    try:
        anchor = ctypes.c_char.from_buffer(buf)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError(f"buffer_address needs a writable buffer, not {type(buf).__name__}") from exc
    except ValueError as exc:
        raise ValueError("buffer_address needs a buffer of at least one byte") from exc
    address = ctypes.addressof(anchor)
    del anchor  # releases the buffer export, so a bytearray/mmap can be resized/closed again later
    return address


@cache
def _iov_run(count: int) -> struct.Struct:
    """`count` consecutive struct iovec, written from a flat list of (address, length) pairs in one call."""
    return struct.Struct("@" + "PN" * count)


def _check_capacity(capacity: int) -> None:
    if not 1 <= capacity <= 1024:
        # UIO_MAXIOV: the kernel handles at most 1024 messages per call.
        raise ValueError(f"capacity must be between 1 and 1024, not {capacity}")


class SendBatch:
    """A preallocated array of `capacity` outgoing messages, each with `parts` iovecs and no control data.

    By default messages carry no destination (msg_name NULL), for connected sockets; `set_destination()` gives
    a message its own sockaddr_in for unconnected sockets. With `parts` > 1 each message is gathered from that
    many pieces of memory (for example a shared prebuilt header and a payload), set with `set_part()`.
    """

    __slots__ = ("_base", "_capacity", "_iov_buf", "_iovs", "_mmsg_buf", "_msgs", "_names", "_parts", "_words")

    def __init__(self, capacity: int, parts: int = 1) -> None:
        _check_capacity(capacity)
        if not 1 <= parts <= 8:
            raise ValueError(f"parts must be between 1 and 8, not {parts}")
        self._capacity = capacity
        self._parts = parts
        self._mmsg_buf = bytearray(capacity * _MMSG_SIZE)
        self._msgs = (_MMsgHdr * capacity).from_buffer(self._mmsg_buf)
        self._iov_buf = bytearray(capacity * parts * _IOV_SIZE)
        self._iovs = (_IoVec * (capacity * parts)).from_buffer(self._iov_buf)
        self._names: ctypes.Array[_SockAddrIn] | None = None
        iov_base = ctypes.addressof(self._iovs)
        for i in range(capacity):
            hdr = self._msgs[i].msg_hdr
            hdr.msg_iov = iov_base + i * parts * _IOV_SIZE
            hdr.msg_iovlen = parts
        self._base = ctypes.addressof(self._msgs)
        self._words = memoryview(self._mmsg_buf).cast("Q")

    @property
    def capacity(self) -> int:
        return self._capacity

    def set(self, i: int, address: int, length: int) -> None:
        """Point message i at `length` bytes of raw memory at `address` (see `buffer_address`)."""
        if not 0 <= i < self._capacity:
            raise IndexError(f"message index {i} out of range 0..{self._capacity - 1}")
        _IOV.pack_into(self._iov_buf, i * self._parts * _IOV_SIZE, address, length)

    def set_part(self, i: int, part: int, address: int, length: int) -> None:
        """Point piece `part` of message i at `length` bytes of raw memory at `address`."""
        if not (0 <= i < self._capacity and 0 <= part < self._parts):
            raise IndexError(f"message {i} part {part} outside 0..{self._capacity - 1} / 0..{self._parts - 1}")
        _IOV.pack_into(self._iov_buf, (i * self._parts + part) * _IOV_SIZE, address, length)

    def set_run(self, start: int, entries: list[int]) -> None:
        """Point messages `start`, `start` + 1, ... at the (address, length) pairs of `entries` (flat: address,
        length, address, length, ...), in one write; for a batch of one part per message."""
        count = len(entries) >> 1
        if self._parts != 1 or len(entries) & 1 or not (start >= 0 and start + count <= self._capacity):
            raise IndexError(f"{count} messages from {start} do not fit 0..{self._capacity - 1} ({self._parts} parts)")
        if count:
            _iov_run(count).pack_into(self._iov_buf, start * _IOV_SIZE, *entries)

    def set_names(self, start: int, names: list[int], namelen: int) -> None:
        """Give messages `start`, `start` + 1, ... the destinations at the addresses in `names` (a sockaddr of
        `namelen` bytes each, which the caller keeps alive, see `buffer_address`), in one write; address 0
        and `namelen` 0 remove them."""
        count = len(names)
        if not (start >= 0 and start + count <= self._capacity):
            raise IndexError(f"messages {start}..{start + count - 1} outside 0..{self._capacity - 1}")
        at = start * _MMSG_QWORDS
        end = at + count * _MMSG_QWORDS
        words = self._words
        words[at:end:_MMSG_QWORDS] = array("Q", names)
        words[at + _NAMELEN_QWORD : end : _MMSG_QWORDS] = array("Q", (namelen << _NAMELEN_SHIFT,)) * count

    def set_destination(self, i: int, address: IPv4Address | str | None, port: int = 0) -> None:
        """Give message i its own IPv4 destination (for an unconnected socket); None removes it again."""
        if not 0 <= i < self._capacity:
            raise IndexError(f"message index {i} out of range 0..{self._capacity - 1}")
        hdr = self._msgs[i].msg_hdr
        if address is None:
            hdr.msg_name = None
            hdr.msg_namelen = 0
            return
        if self._names is None:
            self._names = (_SockAddrIn * self._capacity)()
        _SOCKADDR_IN.pack_into(
            self._names,
            i * _SOCKADDR_SIZE,
            socket.AF_INET,
            port.to_bytes(2, "big"),
            IPv4Address(address).packed,
        )
        hdr.msg_name = ctypes.addressof(self._names) + i * _SOCKADDR_SIZE
        hdr.msg_namelen = _SOCKADDR_SIZE

    def send(self, fd: int, count: int, start: int = 0, flags: int = MSG_DONTWAIT) -> int:
        """sendmmsg(fd, &msgs[start], count, flags): the number of messages sent, or -errno.

        A short count means the kernel stopped at the first message it could not send (for example EAGAIN on a
        full socket buffer); the error for that message is not reported.
        """
        if count > 0 and start >= 0 and start + count <= self._capacity:
            sent: int = _sendmmsg(fd, self._base + start * _MMSG_SIZE, count, flags)
            return sent if sent >= 0 else -_get_errno()
        if count == 0 and 0 <= start <= self._capacity:
            return 0
        raise IndexError(f"messages {start}..{start + count - 1} outside 0..{self._capacity - 1}")


class RecvBatch:
    """`capacity` preallocated receive buffers of `size` bytes each, filled by one recvmmsg(2) call.

    `length(i)`, `view(i)`, `truncated(i)` and `source(i)` describe message i of the last `recv()`; the views
    point into the batch's own buffer and are overwritten by the next `recv()`.
    """

    __slots__ = (
        "_base",
        "_buf",
        "_capacity",
        "_iovs",
        "_lengths",
        "_mmsg_buf",
        "_msgs",
        "_names",
        "_size",
        "_view",
        "_words",
    )

    def __init__(self, capacity: int, size: int = MAX_UDP_PAYLOAD + 1) -> None:
        _check_capacity(capacity)
        if size < 1:
            raise ValueError(f"buffer size must be positive, not {size}")
        self._capacity = capacity
        self._size = size
        self._buf = bytearray(capacity * size)
        self._view = memoryview(self._buf)
        self._mmsg_buf = bytearray(capacity * _MMSG_SIZE)
        self._msgs = (_MMsgHdr * capacity).from_buffer(self._mmsg_buf)
        self._iovs = (_IoVec * capacity)()
        self._names = (ctypes.c_uint8 * (capacity * _SOURCE_SLOT))()
        data_base = buffer_address(self._buf)
        for i in range(capacity):
            iov = self._iovs[i]
            iov.iov_base = data_base + i * size
            iov.iov_len = size
            hdr = self._msgs[i].msg_hdr
            hdr.msg_iov = ctypes.addressof(iov)
            hdr.msg_iovlen = 1
            hdr.msg_name = ctypes.addressof(self._names) + i * _SOURCE_SLOT
            hdr.msg_namelen = _SOURCE_SLOT
        self._base = ctypes.addressof(self._msgs)
        self._words = memoryview(self._mmsg_buf).cast("I")
        self._lengths = self._words[_MSG_LEN_WORD::_MMSG_WORDS]  # msg_len of every message, strided view

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def size(self) -> int:
        return self._size

    @property
    def buffer(self) -> memoryview:
        """The whole receive buffer: message i starts at offset i * size (see `lengths`)."""
        return self._view

    def recv(self, fd: int, flags: int = MSG_DONTWAIT) -> int:
        """recvmmsg(fd, msgs, capacity, flags, NULL): the number of messages received, or -errno.

        Do not pass MSG_TRUNC in `flags`: `lengths()` would then report datagram lengths, not bytes stored.
        """
        got: int = _recvmmsg(fd, self._base, self._capacity, flags, None)
        if got < 0:
            return -_get_errno()
        return got

    def lengths(self, count: int) -> list[int]:
        """The stored lengths of messages 0..count-1, in one call (message i lives at `buffer[i * size:]`)."""
        return self._lengths[:count].tolist()

    def length(self, i: int) -> int:
        """Bytes stored for message i (at most `size`; see `truncated`)."""
        length: int = self._words[i * _MMSG_WORDS + _MSG_LEN_WORD]
        size = self._size
        return length if length < size else size

    def view(self, i: int) -> memoryview:
        """Message i's bytes, a view into the batch buffer that the next `recv()` overwrites."""
        start = i * self._size
        length: int = self._words[i * _MMSG_WORDS + _MSG_LEN_WORD]
        return self._view[start : start + (length if length < self._size else self._size)]

    def truncated(self, i: int) -> bool:
        """True when message i was longer than `size` and the kernel cut it (MSG_TRUNC)."""
        return bool(self._words[i * _MMSG_WORDS + _MSG_FLAGS_WORD] & MSG_TRUNC)

    def source(self, i: int) -> tuple[str, int]:
        """The IPv4 source address and port of message i."""
        if not 0 <= i < self._capacity:
            raise IndexError(f"message index {i} out of range 0..{self._capacity - 1}")
        _family, port, addr = _SOCKADDR_IN.unpack_from(self._names, i * _SOURCE_SLOT)
        return socket.inet_ntoa(addr), int.from_bytes(port, "big")
