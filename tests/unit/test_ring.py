"""The TPACKET_V3 ring's bookkeeping that needs no socket: finding the oldest handed-over block."""

from __future__ import annotations

import struct

from mcr.linux.ring import BLOCK_SEQ_OFFSET, BLOCK_STATUS_OFFSET, TP_STATUS_USER, oldest_handed_over

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
