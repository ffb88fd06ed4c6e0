"""The rings' bookkeeping that needs no socket: the RX ring's oldest handed-over block, the TX ring's layout
and frame states."""

from __future__ import annotations

import struct

import pytest

from mcr.linux.ring import (
    BLOCK_SEQ_OFFSET,
    BLOCK_STATUS_OFFSET,
    TP_STATUS_AVAILABLE,
    TP_STATUS_SENDING,
    TP_STATUS_USER,
    TP_STATUS_WRONG_FORMAT,
    TX_DATA_OFFSET,
    TX_FRAME_ALIGN,
    TxFrames,
    oldest_handed_over,
    tx_layout,
)

BLOCK = 64


def ring(blocks: list[tuple[int, int]]) -> bytearray:
    """A fake ring: (status, seq_num) per block."""
    buf = bytearray(BLOCK * len(blocks))
    for i, (status, seq) in enumerate(blocks):
        struct.pack_into("=I", buf, i * BLOCK + BLOCK_STATUS_OFFSET, status)
        struct.pack_into("=Q", buf, i * BLOCK + BLOCK_SEQ_OFFSET, seq)
    return buf


def test_no_block_handed_over() -> None:
    assert oldest_handed_over(ring([(0, 5), (0, 6), (0, 7)]), BLOCK, 3) == -1


def test_the_lowest_sequence_number_wins_wherever_it_is() -> None:
    user = TP_STATUS_USER | 0x2  # the kernel may add TP_STATUS_BLK_TMO
    assert oldest_handed_over(ring([(user, 12), (0, 9), (user, 10), (user, 11)]), BLOCK, 4) == 2
    assert oldest_handed_over(ring([(user, 40), (user, 41), (0, 38), (0, 39)]), BLOCK, 4) == 0


def test_blocks_still_with_the_kernel_are_ignored_even_if_older() -> None:
    assert oldest_handed_over(ring([(0, 1), (TP_STATUS_USER, 3)]), BLOCK, 2) == 1


# The TPACKET_V2 transmit ring: layout and frame states, over a plain buffer.

TX = tx_layout(106, 64, 16)  # a 64-byte payload behind an IPv4/UDP header


@pytest.mark.parametrize(
    ("frame_len", "min_frames", "frame_size", "frames"),
    [
        (42, 1024, 128, 1024),
        (106, 64, 256, 256),
        (1442, 1024, 2048, 1024),
        (1514, 100, 2048, 128),
        (9014, 5, 16384, 16),
    ],
)
def test_tx_layout_fits_the_frame_in_power_of_two_slots(
    frame_len: int, min_frames: int, frame_size: int, frames: int
) -> None:
    layout = tx_layout(frame_len, min_frames, 16)
    assert (layout.frame_size, layout.frame_count) == (frame_size, frames)
    assert layout.max_frame >= frame_len and layout.frame_size % TX_FRAME_ALIGN == 0
    assert layout.block_size % 4096 == 0 and layout.block_size % layout.frame_size == 0
    assert layout.frame_count % 16 == 0 and layout.frame_count >= min_frames
    assert layout.size == layout.block_count * layout.block_size == layout.frame_count * layout.frame_size
    assert struct.unpack("=IIII", layout.request()) == (
        layout.block_size,
        layout.block_count,
        layout.frame_size,
        layout.frame_count,
    )


def test_tx_layout_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        tx_layout(0, 10)
    with pytest.raises(ValueError):
        tx_layout(100, 10, multiple=12)


def tx_frames() -> tuple[bytearray, TxFrames]:
    buf = bytearray(TX.size)
    return buf, TxFrames(buf, TX)


def set_status(buf: bytearray, i: int, status: int) -> None:
    struct.pack_into("=I", buf, i * TX.frame_size, status)


def test_tx_frames_write_lengths_and_requests_into_the_headers() -> None:
    buf, frames = tx_frames()
    frames.set_length(106)
    assert struct.unpack_from("=III", buf, 5 * TX.frame_size) == (TP_STATUS_AVAILABLE, 106, 106)
    frames.request(3, 4)
    assert [frames.status(i) for i in range(2, 8)] == [0, 1, 1, 1, 1, 0]
    assert TX_DATA_OFFSET == 32  # TPACKET2_HDRLEN (52) - sizeof(struct sockaddr_ll) (20)


def test_free_counts_the_leading_available_frames() -> None:
    buf, frames = tx_frames()
    assert frames.free(0, 64) == 64
    set_status(buf, 10, TP_STATUS_SENDING)  # still referenced by an skb: must not be written
    assert frames.free(0, 64) == 10
    assert frames.free(10, 5) == 0
    assert frames.free(11, 5) == 5
    frames.request(TX.frame_count - 2, 2)
    assert frames.free(TX.frame_count - 4, 4) == 2
    with pytest.raises(IndexError):
        frames.free(TX.frame_count - 1, 2)


def test_taken_stops_at_the_first_frame_the_kernel_still_holds_and_wraps() -> None:
    buf, frames = tx_frames()
    last = TX.frame_count - 1
    frames.request(last - 2, 3)
    frames.request(0, 3)
    assert frames.taken(last - 2, 6) == 0
    for i in (last - 2, last - 1, last, 0):
        set_status(buf, i, TP_STATUS_SENDING if i % 2 else TP_STATUS_AVAILABLE)
    assert frames.taken(last - 2, 6) == 4
    set_status(buf, 1, TP_STATUS_WRONG_FORMAT)  # refused: the kernel's head stays on it
    set_status(buf, 2, TP_STATUS_AVAILABLE)
    assert frames.taken(last - 2, 6) == 4
    assert frames.status(1) == TP_STATUS_WRONG_FORMAT
