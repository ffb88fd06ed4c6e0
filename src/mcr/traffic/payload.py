"""The self-checking test payload that `traffic_generator` sends and `traffic_sink` verifies (pure, no I/O).

Wire format, little-endian, `HEADER_SIZE` = 32 bytes followed by the body::

    offset size field
         0    4 magic      b"MCR\\x01" ("MCR" + format version 1)
         4    4 run_id     u32, chosen per generator run
         8    4 size       u32, the whole UDP payload length (header + body)
        12    8 seq        u64, 0, 1, 2, ... within a run
        20    8 sent_ns    u64, CLOCK_MONOTONIC at send time (shared by all network namespaces of a host)
        28    4 digest     u32, chosen so that zlib.crc32(whole payload) == RESIDUE (0)
        32    -  body       body_bytes(run_id, seq, size - 32)

The digest makes the CRC-32 of the *entire* datagram, digest included, a constant: a receiver verifies every
byte with one `zlib.crc32(data) == RESIDUE`, and any single corrupted byte (any burst of up to 32 bits) is
detected; the size field also catches truncation and padding. CRC-32 is affine, so the digest is
`crc32(header[0:28]) ^ mask`, where the mask depends only on the body and its length (`_digest_mask`): a
sender patches a preformatted payload with one CRC over 16 bytes per packet, whatever the size.

The body is deterministic: a stream of BLAKE2b blocks keyed by the run id, starting at offset
`seq % BODY_PHASES`. Because it depends on the sequence number only through `seq % BODY_PHASES`, a generator
keeps a ring of preformatted payloads whose length is a multiple of BODY_PHASES and patches only seq, sent_ns
and digest per packet (`PayloadRing`).

Payloads shorter than the header (down to 0 bytes) are *unnumbered*: a fixed filler that a sink can only
count. So are raw payloads (the original tool's `--payload STR`) and anything else without the magic.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from typing import Final, TypeAlias

__all__ = [
    "BODY_PHASES",
    "DIGEST_OFFSET",
    "HEADER_SIZE",
    "HEADER_STRUCT",
    "MAGIC",
    "MAX_PAYLOAD",
    "RESIDUE",
    "Checked",
    "Corrupt",
    "Numbered",
    "PayloadRing",
    "Unnumbered",
    "Verdict",
    "WritableBuffer",
    "body_bytes",
    "build_payload",
    "check_payload",
    "filler",
    "inspect_payload",
    "raw_payload",
]

MAGIC: Final = b"MCR\x01"
HEADER_SIZE: Final = 32
MAX_PAYLOAD: Final = 65507  # the largest UDP payload over IPv4
BODY_PHASES: Final = 16
MAX_RUN_ID: Final = 0xFFFF_FFFF
_U64: Final = 0xFFFF_FFFF_FFFF_FFFF

RESIDUE: Final = 0  # zlib.crc32 of every intact numbered payload
HEADER_STRUCT: Final = struct.Struct("<4sIIQQI")  # magic, run_id, size, seq, sent_ns, digest (unpack_from)
_SIGNED: Final = struct.Struct("<4sII")  # the constant part: magic, run_id, size
_STAMP: Final = struct.Struct("<QQ")  # seq, sent_ns
_STAMP_DIGEST: Final = struct.Struct("<QQI")  # seq, sent_ns, digest
_STAMP_OFFSET: Final = 12
_CSUM: Final = struct.Struct("<H")  # a UDP checksum computed in the byte-swapped domain (see track_udp_checksum)
_CSUM_STAMP: Final = struct.Struct("<H4sIIQQI")  # UDP checksum, then the whole payload header from magic on
_CSUM_MOD: Final = 0xFFFF
DIGEST_OFFSET: Final = 28
_BODY_KEY: Final = struct.Struct("<IQ")  # run_id, block counter
_M32: Final = 0xFFFF_FFFF
_FILLER: Final = (b"MCR unnumbered filler " * 2)[:HEADER_SIZE]

assert HEADER_STRUCT.size == HEADER_SIZE


class Verdict(IntEnum):
    """What a received payload turned out to be."""

    NUMBERED = 0  # intact: run id, sequence number and send time are valid
    CORRUPT = 1  # one of ours, but the digest or the size field does not match
    UNNUMBERED = 2  # not one of ours, or too short to carry a header: can only be counted


@dataclass(frozen=True, slots=True)
class Numbered:
    run_id: int
    seq: int
    sent_ns: int
    size: int


@dataclass(frozen=True, slots=True)
class Corrupt:
    reason: str


@dataclass(frozen=True, slots=True)
class Unnumbered:
    size: int


Checked: TypeAlias = Numbered | Corrupt | Unnumbered
Bytes: TypeAlias = bytes | bytearray | memoryview
WritableBuffer: TypeAlias = bytearray | memoryview  # a memoryview of a mapped ring, for example


def _check_ranges(run_id: int, size: int) -> None:
    if not 0 <= run_id <= MAX_RUN_ID:
        raise ValueError(f"run id must be between 0 and {MAX_RUN_ID}, not {run_id}")
    if not 0 <= size <= MAX_PAYLOAD:
        raise ValueError(f"payload size must be between 0 and {MAX_PAYLOAD} bytes, not {size}")


@lru_cache(maxsize=16)
def _body_stream(run_id: int, length: int) -> bytes:
    blocks = []
    total = 0
    counter = 0
    while total < length:
        block = hashlib.blake2b(_BODY_KEY.pack(run_id, counter), digest_size=64).digest()
        blocks.append(block)
        total += len(block)
        counter += 1
    return b"".join(blocks)[:length]


def body_bytes(run_id: int, seq: int, length: int) -> bytes:
    """The deterministic body of `length` bytes for packet `seq` of run `run_id`."""
    if length <= 0:
        return b""
    phase = seq % BODY_PHASES
    # Round the stream length up so that nearby sizes share one cache entry.
    stream = _body_stream(run_id, -(-(length + BODY_PHASES) // 1024) * 1024)
    return stream[phase : phase + length]


@lru_cache(maxsize=16)
def _advance_basis(nbytes: int) -> tuple[tuple[int, int, int], ...]:
    """Invert "advance the CRC-32 register over `nbytes` zero bytes", a linear map of 32-bit states.

    Returns an XOR basis of (pivot bit, image, preimage) rows, highest pivot first, for `_solve`.
    """
    basis: dict[int, tuple[int, int]] = {}
    zeros = bytes(nbytes)
    for bit in range(32):
        # zlib.crc32(data, v) starts from register ~v and returns ~register.
        image = zlib.crc32(zeros, (1 << bit) ^ _M32) ^ _M32
        preimage = 1 << bit
        while image:
            top = image.bit_length() - 1
            if top not in basis:
                basis[top] = (image, preimage)
                break
            image ^= basis[top][0]
            preimage ^= basis[top][1]
    assert len(basis) == 32, "advancing a CRC register is invertible"
    return tuple((top, *basis[top]) for top in sorted(basis, reverse=True))


def _solve(basis: tuple[tuple[int, int, int], ...], target: int) -> int:
    state = 0
    for top, image, preimage in basis:
        if target >> top & 1:
            target ^= image
            state ^= preimage
    return state


def _digest_mask(body: Bytes) -> int:
    """The mask such that digest = crc32(header[0:28]) ^ mask gives crc32(header + digest + body) == RESIDUE.

    With r the register after header[0:28] (r = ~crc32(header[0:28])), the register after the rest is
    A(r ^ digest) ^ b, where A advances over 4 + len(body) zero bytes and b is the body's own contribution
    (the register after the body from zero). Solving A(r ^ digest) ^ b == ~RESIDUE for the digest gives
    digest = r ^ A^-1(~RESIDUE ^ b) = crc32(header[0:28]) ^ ~A^-1(~RESIDUE ^ b).
    """
    body_register = zlib.crc32(body, _M32) ^ _M32
    return _solve(_advance_basis(4 + len(body)), RESIDUE ^ _M32 ^ body_register) ^ _M32


def filler(size: int) -> bytes:
    """The unnumbered payload of `size` < HEADER_SIZE bytes."""
    if not 0 <= size < HEADER_SIZE:
        raise ValueError(f"filler is for sizes 0..{HEADER_SIZE - 1}, not {size}")
    return _FILLER[:size]


def raw_payload(text: bytes, size: int) -> bytes:
    """The original tool's raw mode: `text` zero-padded or truncated to `size` bytes (unnumbered)."""
    _check_ranges(0, size)
    return text[:size].ljust(size, b"\0")


def build_payload(run_id: int, seq: int, size: int, now_ns: int) -> bytes:
    """Payload `seq` of run `run_id`, `size` bytes long, stamped with the send time `now_ns`.

    Sizes below HEADER_SIZE give the unnumbered filler.
    """
    _check_ranges(run_id, size)
    if not (0 <= seq <= _U64 and 0 <= now_ns <= _U64):
        raise ValueError("seq and now_ns must fit in 64 unsigned bits")
    if size < HEADER_SIZE:
        return filler(size)
    body = body_bytes(run_id, seq, size - HEADER_SIZE)
    signed = _SIGNED.pack(MAGIC, run_id, size) + _STAMP.pack(seq, now_ns)
    digest = zlib.crc32(signed) ^ _digest_mask(body)
    return signed + digest.to_bytes(4, "little") + body


_UNNUMBERED_RESULT: Final = (Verdict.UNNUMBERED, 0, 0, 0)
_CORRUPT_RESULT: Final = (Verdict.CORRUPT, 0, 0, 0)
_NUMBERED: Final = Verdict.NUMBERED


def inspect_payload(data: Bytes) -> tuple[Verdict, int, int, int]:
    """The hot-path form of `check_payload`: (verdict, run_id, seq, sent_ns), zeros unless NUMBERED.

    Pass a memoryview for speed (slices of bytes/bytearray copy).
    """
    n = len(data)
    if n < HEADER_SIZE:
        return _UNNUMBERED_RESULT
    magic, run_id, size, seq, sent_ns, _digest = HEADER_STRUCT.unpack_from(data)
    if magic == MAGIC:
        if size == n and zlib.crc32(data) == RESIDUE:
            return _NUMBERED, run_id, seq, sent_ns
        return _CORRUPT_RESULT
    # A damaged magic is still ours if the CRC checks out with the magic repaired; anything else is foreign.
    if size == n and zlib.crc32(data[4:], zlib.crc32(MAGIC)) == RESIDUE:
        return _CORRUPT_RESULT
    return _UNNUMBERED_RESULT


def check_payload(data: Bytes) -> Checked:
    """Classify a received payload: Numbered (intact), Corrupt (with the reason) or Unnumbered."""
    n = len(data)
    if n < HEADER_SIZE:
        return Unnumbered(n)
    magic, run_id, size, seq, sent_ns, digest = HEADER_STRUCT.unpack_from(data)
    verdict = inspect_payload(data)[0]
    if verdict is Verdict.NUMBERED:
        return Numbered(run_id=run_id, seq=seq, sent_ns=sent_ns, size=n)
    if verdict is Verdict.UNNUMBERED:
        return Unnumbered(n)
    if magic != MAGIC:
        return Corrupt(f"magic {magic.hex()} damaged")
    if size != n:
        return Corrupt(f"size field {size} but {n} bytes")
    return Corrupt(f"digest {digest:08x} does not match: CRC-32 {zlib.crc32(data):08x} != {RESIDUE:08x}")


class PayloadRing:
    """`slots` payloads of one size, patched in place before each send.

    By default the payloads lie back to back in the ring's own bytearray. A frame sender passes its own
    writable `buffer` (for example a mapped PACKET_TX_RING), a `stride` between slots and the offset `start`
    of slot 0's payload, so that each slot holds a whole frame: the headers in front of the payload are the
    caller's and are never touched, except the UDP checksum when `track_udp_checksum()` asks for it.

    Slot k always carries the packets with `seq % slots == k`. In numbered mode `slots` must be a multiple of
    BODY_PHASES, so each slot's body (and its digest mask) is computed once; `stamp()` then writes only the
    sequence number, the send time and the digest (and the UDP checksum). Raw and short payloads are written
    once and never patched.
    """

    __slots__ = (
        "_base",
        "_buffer",
        "_csum_bases",
        "_masks",
        "_numbered",
        "_offsets",
        "_run_id",
        "_size",
        "_slots",
        "_stride",
    )

    def __init__(
        self,
        *,
        run_id: int,
        size: int,
        slots: int,
        raw: bytes | None = None,
        buffer: WritableBuffer | None = None,
        stride: int | None = None,
        start: int = 0,
    ) -> None:
        _check_ranges(run_id, size)
        if slots < 1:
            raise ValueError(f"slots must be positive, not {slots}")
        self._run_id = run_id
        self._size = size
        self._slots = slots
        self._numbered = raw is None and size >= HEADER_SIZE
        if self._numbered and slots % BODY_PHASES:
            raise ValueError(f"slots must be a multiple of {BODY_PHASES} for numbered payloads, not {slots}")
        self._stride = max(size, 1) if stride is None else stride
        if self._stride < size or start < 0:
            raise ValueError(f"stride {self._stride} must hold a {size}-byte payload and start {start} be >= 0")
        end = start + self._stride * (slots - 1) + size
        self._buffer: WritableBuffer = bytearray(start + self._stride * slots) if buffer is None else buffer
        if len(self._buffer) < end:
            raise ValueError(f"the buffer holds {len(self._buffer)} bytes, the slots need {end}")
        self._offsets = [start + k * self._stride for k in range(slots)]
        self._base = zlib.crc32(_SIGNED.pack(MAGIC, run_id, size))  # CRC of the constant header fields
        self._masks: list[int] = []
        self._csum_bases: list[int] | None = None
        for k, off in enumerate(self._offsets):
            if k >= BODY_PHASES and self._numbered:  # same body as slot k % BODY_PHASES: copy it, mask and all
                self._buffer[off : off + size] = self.payload(k % BODY_PHASES)
                self._masks.append(self._masks[k % BODY_PHASES])
                continue
            payload = build_payload(run_id, k, size, 0) if raw is None else raw_payload(raw, size)
            self._buffer[off : off + size] = payload
            if self._numbered:
                self._masks.append(_digest_mask(payload[HEADER_SIZE:]))

    @property
    def buffer(self) -> WritableBuffer:
        """The backing buffer; it is never resized, so its address can be handed to the kernel."""
        return self._buffer

    @property
    def size(self) -> int:
        return self._size

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def numbered(self) -> bool:
        return self._numbered

    def offset(self, slot: int) -> int:
        """Where slot `slot` starts in `buffer`."""
        return self._offsets[slot]

    def payload(self, slot: int) -> bytes:
        """A copy of the current contents of slot `slot`."""
        off = self._offsets[slot]
        return bytes(self._buffer[off : off + self._size])

    def track_udp_checksum(self, prefix: bytes) -> None:
        """Keep a correct UDP checksum in the 2 bytes in front of every payload, from now on.

        `prefix` is what the checksum covers besides the payload: the pseudo-header and the UDP header with
        its checksum field zero (even length). Each slot's sum of everything but the stamped fields is
        computed here once; `stamp()` adds the stamped words. The sums are taken in the byte-swapped domain,
        where the 16-bit words of a little-endian field add up to the field's value modulo 0xFFFF (because
        2**16 == 1 mod 0xFFFF), so the per-packet cost is one addition and one modulo (RFC 1071: the
        ones' complement sum is byte-order independent, and its congruence class mod 0xFFFF is the plain sum's).
        """
        if len(prefix) % 2:
            raise ValueError(f"the checksum prefix must have an even length, not {len(prefix)}")
        if self._offsets[0] < 2:
            raise ValueError("the UDP checksum needs 2 bytes in front of each payload (start >= 2)")
        bases = []
        for off in self._offsets:
            payload = bytearray(self._buffer[off : off + self._size])
            # correct for the slot as it is now (so unnumbered payloads, never stamped, are sent right) ...
            _CSUM.pack_into(self._buffer, off - 2, _CSUM_MOD - int.from_bytes(prefix + payload, "little") % _CSUM_MOD)
            if self._numbered:  # ... and the sum without the stamped fields, which stamp() adds per packet
                payload[_STAMP_OFFSET:HEADER_SIZE] = bytes(HEADER_SIZE - _STAMP_OFFSET)
            bases.append(int.from_bytes(prefix + payload, "little") % _CSUM_MOD)
        self._csum_bases = bases

    def stamp(self, first_seq: int, count: int, now_ns: int) -> None:
        """Stamp sequence numbers first_seq .. first_seq+count-1 and send time now_ns into their slots.

        `count` must not exceed `slots` (a later packet would overwrite an earlier one's slot).
        """
        if not self._numbered:
            return
        if count > self._slots:
            raise ValueError(f"cannot stamp {count} packets into {self._slots} slots")
        if self._csum_bases is not None:
            self._stamp_checksummed(first_seq, count, now_ns)
            return
        pack_stamp = _STAMP.pack
        pack_into = _STAMP_DIGEST.pack_into
        crc32 = zlib.crc32
        buffer = self._buffer
        offsets = self._offsets
        masks = self._masks
        base = self._base
        slots = self._slots
        slot = first_seq % slots
        for seq in range(first_seq, first_seq + count):
            digest = crc32(pack_stamp(seq, now_ns), base) ^ masks[slot]
            pack_into(buffer, offsets[slot] + _STAMP_OFFSET, seq, now_ns, digest)
            slot += 1
            if slot == slots:
                slot = 0

    def _stamp_checksummed(self, first_seq: int, count: int, now_ns: int) -> None:
        """`stamp()` with the UDP checksum: one pack_into writes checksum, constant fields and stamp together."""
        pack_stamp = _STAMP.pack
        pack_into = _CSUM_STAMP.pack_into
        crc32 = zlib.crc32
        buffer = self._buffer
        offsets = self._offsets
        masks = self._masks
        bases = self._csum_bases
        assert bases is not None
        base = self._base
        run_id = self._run_id
        size = self._size
        slots = self._slots
        slot = first_seq % slots
        for seq in range(first_seq, first_seq + count):
            digest = crc32(pack_stamp(seq, now_ns), base) ^ masks[slot]
            csum = _CSUM_MOD - (bases[slot] + seq + now_ns + digest) % _CSUM_MOD
            pack_into(buffer, offsets[slot] - 2, csum, MAGIC, run_id, size, seq, now_ns, digest)
            slot += 1
            if slot == slots:
                slot = 0
