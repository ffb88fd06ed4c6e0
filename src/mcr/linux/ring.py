"""A TPACKET_V3 receive ring (PACKET_RX_RING) read in place.

The kernel fills fixed-size blocks with many frames and hands a whole block to userspace at once,
so one wake-up serves hundreds of packets and no frame is copied. Layout (linux/if_packet.h):

    block:  tpacket_block_desc { u32 version; u32 offset_to_priv; tpacket_hdr_v1 {
                u32 block_status; u32 num_pkts; u32 offset_to_first_pkt; u32 blk_len; u64 seq_num; ... } }
    frame:  tpacket3_hdr { u32 tp_next_offset; u32 tp_sec; u32 tp_nsec; u32 tp_snaplen;
                u32 tp_len; u32 tp_status; u16 tp_mac; u16 tp_net; ... }
"""

from __future__ import annotations

import ctypes
import mmap
import socket
import struct

from mcr.linux.packet_socket import SOL_PACKET, PacketOpt

TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1

BLOCK_STATUS_OFFSET = 8
BLOCK_HEADER = struct.Struct("=III")  # block_status, num_pkts, offset_to_first_pkt (at offset 8)
FRAME_HEADER = struct.Struct("=IIIIIIH")  # next_offset, sec, nsec, snaplen, len, status, mac
_REQ3 = struct.Struct("=IIIIIII")
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
        self, sock: socket.socket, block_size: int = 1 << 18, block_count: int = 128, retire_ms: int = 1
    ) -> None:
        if block_size % mmap.PAGESIZE or block_size & (block_size - 1):
            raise ValueError("block_size must be a power-of-two multiple of the page size")
        frame_size = 2048
        sock.setsockopt(SOL_PACKET, PacketOpt.VERSION, TPACKET_V3)
        req = _REQ3.pack(block_size, block_count, frame_size, (block_size // frame_size) * block_count, retire_ms, 0, 0)
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
