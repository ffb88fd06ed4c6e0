"""Mapped AF_PACKET rings: a TPACKET_V3 receive ring (PACKET_RX_RING) read in place, and a TPACKET_V2
transmit ring (PACKET_TX_RING) written in place.

Receive: the kernel fills fixed-size blocks with many frames and hands a whole block to userspace at once,
so one wake-up serves hundreds of packets and no frame is copied. Layout (linux/if_packet.h):

    block:  tpacket_block_desc { u32 version; u32 offset_to_priv; tpacket_hdr_v1 {
                u32 block_status; u32 num_pkts; u32 offset_to_first_pkt; u32 blk_len; u64 seq_num; ... } }
    frame:  tpacket3_hdr { u32 tp_next_offset; u32 tp_sec; u32 tp_nsec; u32 tp_snaplen;
                u32 tp_len; u32 tp_status; u16 tp_mac; u16 tp_net; ... }

Transmit: `frame_count` fixed-size frames, each a tpacket2_hdr followed by the frame to send:

    frame:  tpacket2_hdr { u32 tp_status; u32 tp_len; u32 tp_snaplen; u16 tp_mac; u16 tp_net; u32 tp_sec;
                u32 tp_nsec; u16 tp_vlan_tci; u16 tp_vlan_tpid; u8 tp_padding[4]; }   (32 bytes)
            data at TPACKET2_HDRLEN - sizeof(struct sockaddr_ll) = 52 - 20 = 32 (without PACKET_TX_HAS_OFF)

The sender writes frames into slots whose status is TP_STATUS_AVAILABLE, sets TP_STATUS_SEND_REQUEST, and one
send() makes the kernel walk the ring from its own head: every frame in SEND_REQUEST, in ring order, becomes
an skb that points at the ring's pages (no copy), status TP_STATUS_SENDING until the skb is freed, then
AVAILABLE again. With MSG_DONTWAIT send() returns the bytes it took, stopping early (the frame stays in
SEND_REQUEST, retried by the next send()) when the socket's send buffer is full or the device drops it. A frame
the kernel cannot send (longer than the MTU, too short) gets TP_STATUS_WRONG_FORMAT and send() fails; PACKET_LOSS
is left off, so such a frame is reported instead of silently skipped.
"""

from __future__ import annotations

import ctypes
import mmap
import socket
import struct
from array import array
from dataclasses import dataclass

from mcr.linux.packet_socket import SOL_PACKET, PacketOpt

TPACKET_V2 = 1
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_SENDING = 2
TP_STATUS_WRONG_FORMAT = 4
TX_DATA_OFFSET = 32  # where a TPACKET_V2 transmit frame's data starts within its slot
TX_FRAME_ALIGN = 16  # TPACKET_ALIGNMENT

BLOCK_STATUS_OFFSET = 8
BLOCK_HEADER = struct.Struct("=III")  # block_status, num_pkts, offset_to_first_pkt (at offset 8)
FRAME_HEADER = struct.Struct("=IIIIIIH")  # next_offset, sec, nsec, snaplen, len, status, mac
_REQ3 = struct.Struct("=IIIIIII")
_REQ = struct.Struct("=IIII")  # tpacket_req: block_size, block_nr, frame_size, frame_nr
_TX_LENGTHS = struct.Struct("=II")  # tpacket2_hdr.tp_len, tp_snaplen (at offset 4)
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
BLOCK_SEQ_OFFSET = 24  # tpacket_hdr_v1.seq_num: the kernel numbers blocks in the order it fills them


def oldest_handed_over(buf: bytes | bytearray | memoryview | mmap.mmap, block_size: int, block_count: int) -> int:
    """Index of the block with the lowest sequence number among those the kernel has handed over, or -1."""
    oldest = -1
    oldest_seq = 0
    for i in range(block_count):
        offset = i * block_size
        if _U32.unpack_from(buf, offset + BLOCK_STATUS_OFFSET)[0] & TP_STATUS_USER:
            seq = _U64.unpack_from(buf, offset + BLOCK_SEQ_OFFSET)[0]
            if oldest < 0 or seq < oldest_seq:
                oldest, oldest_seq = i, seq
    return oldest


class RxRing:
    """The mapped ring of one capture socket. Blocks are visited in order, `current` first."""

    __slots__ = ("_anchor", "address", "block_count", "block_size", "current", "mm", "sock", "view")

    def __init__(
        self,
        sock: socket.socket,
        block_size: int = 1 << 18,
        block_count: int = 128,
        retire_ms: int = 1,
        *,
        existing: bool = False,
    ) -> None:
        """Set up the socket's ring and map it; `existing`: map the ring another reader set up (of this size;
        the kernel refuses a mapping of another size)."""
        if block_size % mmap.PAGESIZE or block_size & (block_size - 1):
            raise ValueError("block_size must be a power-of-two multiple of the page size")
        frame_size = 2048
        if not existing:
            sock.setsockopt(SOL_PACKET, PacketOpt.VERSION, TPACKET_V3)
            frames = (block_size // frame_size) * block_count
            req = _REQ3.pack(block_size, block_count, frame_size, frames, retire_ms, 0, 0)
            sock.setsockopt(SOL_PACKET, PacketOpt.RX_RING, req)
        self.sock = sock
        self.block_size = block_size
        self.block_count = block_count
        self.mm = mmap.mmap(sock.fileno(), block_size * block_count, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.mm)
        self._anchor = ctypes.c_char.from_buffer(self.mm)
        self.address = ctypes.addressof(self._anchor)
        self.current = 0

    def ready_block(self) -> int:
        """Offset of the current block if the kernel has handed it to us, else -1."""
        offset = self.current * self.block_size
        status = _U32.unpack_from(self.mm, offset + BLOCK_STATUS_OFFSET)[0]
        return offset if status & TP_STATUS_USER else -1

    def resync(self) -> bool:
        """Point `current` at the oldest block the kernel has handed over, if that is not `current`.

        The blocks are read in ring order, which is the order the kernel fills them, so normally the oldest
        handed-over block is `current`. After long overloads (the kernel freezing and thawing a full ring)
        the two have been seen to drift apart: the kernel then fills blocks the reader reaches only a whole
        ring later, which shows as seconds of added latency and drops at any rate. Returns True if it moved.
        """
        oldest = oldest_handed_over(self.mm, self.block_size, self.block_count)
        if oldest < 0 or oldest == self.current:
            return False
        self.current = oldest
        return True

    def release(self, offset: int) -> None:
        """Give the block at `offset` back to the kernel and move on to the next one."""
        _U32.pack_into(self.mm, offset + BLOCK_STATUS_OFFSET, TP_STATUS_KERNEL)
        self.current = (self.current + 1) % self.block_count

    def close(self) -> None:
        del self._anchor
        self.view.release()
        self.mm.close()
        self.sock.close()


@dataclass(frozen=True, slots=True)
class TxLayout:
    """The shape of a transmit ring: `frame_count` slots of `frame_size` bytes in blocks of `block_size`.

    Frame sizes are powers of two no larger than the block, so frames never straddle a block and frame i
    starts at i * frame_size in the mapping.
    """

    frame_size: int
    frame_count: int
    block_size: int

    @property
    def block_count(self) -> int:
        return self.frame_count // (self.block_size // self.frame_size)

    @property
    def size(self) -> int:
        """Bytes mapped."""
        return self.block_size * self.block_count

    @property
    def max_frame(self) -> int:
        """The longest frame (Ethernet header on) a slot holds."""
        return self.frame_size - TX_DATA_OFFSET

    def request(self) -> bytes:
        """The `struct tpacket_req` for PACKET_TX_RING."""
        return _REQ.pack(self.block_size, self.block_count, self.frame_size, self.frame_count)


def tx_layout(frame_len: int, min_frames: int, multiple: int = 1, page_size: int = mmap.PAGESIZE) -> TxLayout:
    """The smallest power-of-two slots that hold `frame_len`-byte frames, at least `min_frames` of them, the
    count a multiple of `multiple` (a power of two), in blocks of at least 64 KiB (fewer, larger allocations)."""
    if frame_len < 1 or min_frames < 1:
        raise ValueError(f"need a positive frame length and frame count, not {frame_len} and {min_frames}")
    if multiple < 1 or multiple & (multiple - 1):
        raise ValueError(f"the frame count multiple must be a power of two, not {multiple}")
    frame_size = TX_FRAME_ALIGN
    while frame_size < TX_DATA_OFFSET + frame_len:
        frame_size *= 2
    block_size = max(frame_size, page_size, 1 << 16)
    per_block = block_size // frame_size
    step = max(multiple, per_block)  # both powers of two: the larger is a multiple of the other
    frames = -(-min_frames // step) * step
    return TxLayout(frame_size=frame_size, frame_count=frames, block_size=block_size)


class TxFrames:
    """The frame headers of a transmit ring, over any writable buffer of `layout.size` bytes (pure).

    Frames are addressed by index; runs never wrap (callers split at the end of the ring), except `taken()`.
    """

    __slots__ = ("_count", "_requests", "_step", "_words", "_zeros")

    def __init__(self, buf: bytearray | memoryview, layout: TxLayout) -> None:
        if len(buf) < layout.size:
            raise ValueError(f"a {layout.size}-byte ring does not fit in {len(buf)} bytes")
        self._words = memoryview(buf).cast("I")
        self._step = layout.frame_size // 4
        self._count = layout.frame_count
        self._requests = memoryview(array("I", [TP_STATUS_SEND_REQUEST]) * layout.frame_count)
        self._zeros = bytes(4 * layout.frame_count)

    @property
    def count(self) -> int:
        return self._count

    def _check(self, first: int, n: int) -> None:
        if first < 0 or n < 0 or first + n > self._count:
            raise IndexError(f"frames {first}..{first + n - 1} outside 0..{self._count - 1}")

    def _statuses(self, first: int, n: int) -> memoryview:
        self._check(first, n)
        step = self._step
        return self._words[first * step : (first + n) * step : step]

    def status(self, i: int) -> int:
        value: int = self._statuses(i, 1)[0]
        return value

    def set_length(self, length: int) -> None:
        """Every frame's tp_len (and tp_snaplen): all frames of a run have the same length."""
        buf = self._words.cast("B")
        for i in range(self._count):
            _TX_LENGTHS.pack_into(buf, i * self._step * 4 + 4, length, length)
        buf.release()

    def free(self, first: int, limit: int) -> int:
        """How many frames from `first` on (at most `limit`) are TP_STATUS_AVAILABLE and may be written."""
        statuses = self._statuses(first, limit)
        if statuses.tobytes() == self._zeros[: 4 * limit]:
            return limit
        values = statuses.tolist()
        for k, status in enumerate(values):
            if status != TP_STATUS_AVAILABLE:
                return k
        return limit  # pragma: no cover - the kernel changed a status between the two reads

    def request(self, first: int, n: int) -> None:
        """Hand frames first..first+n-1 to the kernel (TP_STATUS_SEND_REQUEST); write their data first."""
        step = self._step
        self._check(first, n)
        self._words[first * step : (first + n) * step : step] = self._requests[:n]

    def taken(self, first: int, n: int) -> int:
        """Of the `n` frames requested from `first` on (wrapping at the end of the ring), how many the kernel
        has taken: it takes them in ring order, so they are the leading ones no longer in SEND_REQUEST or
        WRONG_FORMAT (a frame the kernel gave back for a retry is in SEND_REQUEST again)."""
        done = 0
        while done < n:
            start = (first + done) % self._count
            run = min(n - done, self._count - start)
            for status in self._statuses(start, run).tolist():
                if status & (TP_STATUS_SEND_REQUEST | TP_STATUS_WRONG_FORMAT):
                    return done
                done += 1
        return done

    def release(self) -> None:
        self._requests.release()
        self._words.release()


class TxRing:
    """A mapped PACKET_TX_RING on an AF_PACKET socket (which must not be bound to a protocol it receives)."""

    __slots__ = ("frames", "layout", "mm", "sock", "view")

    def __init__(self, sock: socket.socket, layout: TxLayout) -> None:
        sock.setsockopt(SOL_PACKET, PacketOpt.VERSION, TPACKET_V2)
        sock.setsockopt(SOL_PACKET, PacketOpt.TX_RING, layout.request())
        self.sock = sock
        self.layout = layout
        self.mm = mmap.mmap(sock.fileno(), layout.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.mm)
        self.frames = TxFrames(self.view, layout)

    def flush(self) -> int:
        """One send(MSG_DONTWAIT): the kernel sends the requested frames from its head on. Bytes taken, or -errno."""
        try:
            return self.sock.send(b"", socket.MSG_DONTWAIT)
        except OSError as exc:
            return -(exc.errno or 0)

    def unmap(self) -> None:
        """Release the mapping (the socket stays open: its owner closes it). Slices of `view` must be gone."""
        self.frames.release()
        self.view.release()
        self.mm.close()
