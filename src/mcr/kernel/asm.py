"""eBPF instructions and a small assembler with labels and map references (pure: no I/O).

An instruction is `struct bpf_insn`: u8 opcode, u8 registers (dst in the low nibble and src in the high
nibble on a little-endian host), s16 offset, s32 immediate. `ld_imm64` takes two slots; with
`src = BPF_PSEUDO_MAP_FD` its immediate is a map file descriptor that the kernel replaces by the map's
address when the program is loaded.

The `Assembler` collects instructions, labels, jumps to labels and symbolic map loads; `assemble()` turns
the labels into 16-bit relative offsets (counted in slots, forward and backward, from the instruction after
the jump) and raises `AsmError` when a label is unknown, defined twice, or out of reach. The result is a
`Program`: the instructions plus the slots that still need a map file descriptor; `link()` fills them in.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "PSEUDO_MAP_FD",
    "AluOp",
    "AsmError",
    "Assembler",
    "Cls",
    "Helper",
    "Insn",
    "JmpOp",
    "MapRef",
    "Program",
    "Reg",
    "Size",
    "alu32_imm",
    "alu64_imm",
    "alu64_reg",
    "atomic_cmpxchg64",
    "call",
    "encode",
    "endian_be",
    "exit_insn",
    "ja",
    "jmp_imm",
    "jmp_reg",
    "ld_imm64",
    "ldx",
    "mov64_imm",
    "mov64_reg",
    "st_imm",
    "stx",
]


class Reg(IntEnum):
    R0 = 0
    R1 = 1
    R2 = 2
    R3 = 3
    R4 = 4
    R5 = 5
    R6 = 6
    R7 = 7
    R8 = 8
    R9 = 9
    FP = 10  # read-only frame pointer; the stack grows down from it, 512 bytes


class Cls(IntEnum):
    """Instruction class, the low 3 bits of the opcode."""

    LD = 0x00
    LDX = 0x01
    ST = 0x02
    STX = 0x03
    ALU = 0x04
    JMP = 0x05
    JMP32 = 0x06
    ALU64 = 0x07


class Size(IntEnum):
    W = 0x00  # 4 bytes
    H = 0x08  # 2 bytes
    B = 0x10  # 1 byte
    DW = 0x18  # 8 bytes

    @property
    def nbytes(self) -> int:
        return {Size.W: 4, Size.H: 2, Size.B: 1, Size.DW: 8}[self]


MODE_IMM: Final = 0x00
MODE_MEM: Final = 0x60
MODE_ATOMIC: Final = 0xC0  # with Cls.STX: the operation is in the immediate (Linux 5.12)
ATOMIC_CMPXCHG: Final = 0xF0 | 0x01  # BPF_CMPXCHG, which always fetches (BPF_FETCH)
SRC_K: Final = 0x00  # operand is the immediate
SRC_X: Final = 0x08  # operand is the source register


class AluOp(IntEnum):
    ADD = 0x00
    SUB = 0x10
    MUL = 0x20
    DIV = 0x30
    OR = 0x40
    AND = 0x50
    LSH = 0x60
    RSH = 0x70
    NEG = 0x80
    MOD = 0x90
    XOR = 0xA0
    MOV = 0xB0
    ARSH = 0xC0
    END = 0xD0


class JmpOp(IntEnum):
    JA = 0x00
    JEQ = 0x10
    JGT = 0x20  # unsigned
    JGE = 0x30  # unsigned
    JSET = 0x40
    JNE = 0x50
    JSGT = 0x60  # signed
    JSGE = 0x70  # signed
    CALL = 0x80
    EXIT = 0x90
    JLT = 0xA0  # unsigned
    JLE = 0xB0  # unsigned
    JSLT = 0xC0  # signed
    JSLE = 0xD0  # signed


class Helper(IntEnum):
    """Kernel helper function ids (`__BPF_FUNC_MAPPER` order in include/uapi/linux/bpf.h)."""

    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    KTIME_GET_NS = 5
    SKB_STORE_BYTES = 9
    L3_CSUM_REPLACE = 10
    L4_CSUM_REPLACE = 11
    CLONE_REDIRECT = 13
    SKB_LOAD_BYTES = 26
    CSUM_DIFF = 28
    SKB_PULL_DATA = 39
    CSUM_UPDATE = 40


PSEUDO_MAP_FD: Final = 1
BPF_TO_BE: Final = 0x08  # with AluOp.END: convert between host and network (big-endian) order
_S16 = (-(1 << 15), (1 << 15) - 1)
_S32 = (-(1 << 31), (1 << 31) - 1)


class AsmError(ValueError):
    """An instruction or a program cannot be encoded (bad operand, unknown label, jump out of range)."""


@dataclass(frozen=True, slots=True)
class Insn:
    """One 8-byte instruction slot. `imm` is kept signed (-2**31 .. 2**31-1), `off` signed 16-bit."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 0xFF:
            raise AsmError(f"opcode {self.code:#x} is not a byte")
        if not (0 <= self.dst <= 10 and 0 <= self.src <= 10):
            raise AsmError(f"register out of range: dst={self.dst} src={self.src}")
        if not _S16[0] <= self.off <= _S16[1]:
            raise AsmError(f"offset {self.off} does not fit in 16 bits")
        if not _S32[0] <= self.imm <= _S32[1]:
            raise AsmError(f"immediate {self.imm} does not fit in a signed 32-bit field")

    @property
    def cls(self) -> int:
        return self.code & 0x07

    @property
    def is_jump(self) -> bool:
        """A conditional or unconditional jump with an offset (not a call, not exit)."""
        if self.cls not in (Cls.JMP, Cls.JMP32):
            return False
        return (self.code & 0xF0) not in (JmpOp.CALL, JmpOp.EXIT)


def _imm32(value: int) -> int:
    """Accept -2**31 .. 2**32-1 and store it as the signed field the kernel sees."""
    if not -(1 << 31) <= value < (1 << 32):
        raise AsmError(f"immediate {value} does not fit in 32 bits")
    return value - (1 << 32) if value >= (1 << 31) else value


def encode(insns: Sequence[Insn], byteorder: str = sys.byteorder) -> bytes:
    """The program as the kernel reads it: an array of `struct bpf_insn` in host byte order."""
    order = "<" if byteorder == "little" else ">"
    fmt = struct.Struct(order + "BBhi")
    out = bytearray()
    for i in insns:
        regs = (i.src << 4) | i.dst if byteorder == "little" else (i.dst << 4) | i.src
        out += fmt.pack(i.code, regs, i.off, i.imm)
    return bytes(out)


# ------------------------------------------------------------------------------------------ instructions


def mov64_imm(dst: Reg, imm: int) -> Insn:
    """dst = imm, sign-extended to 64 bits."""
    return Insn(Cls.ALU64 | AluOp.MOV | SRC_K, dst, 0, 0, _imm32(imm))


def mov64_reg(dst: Reg, src: Reg) -> Insn:
    return Insn(Cls.ALU64 | AluOp.MOV | SRC_X, dst, src)


def alu64_imm(op: AluOp, dst: Reg, imm: int) -> Insn:
    return Insn(Cls.ALU64 | op | SRC_K, dst, 0, 0, _imm32(imm))


def alu64_reg(op: AluOp, dst: Reg, src: Reg) -> Insn:
    return Insn(Cls.ALU64 | op | SRC_X, dst, src)


def alu32_imm(op: AluOp, dst: Reg, imm: int) -> Insn:
    """32-bit operation; the upper half of dst is zeroed."""
    return Insn(Cls.ALU | op | SRC_K, dst, 0, 0, _imm32(imm))


def endian_be(dst: Reg, bits: int) -> Insn:
    """Convert the low `bits` (16, 32 or 64) of dst between host and network order; the rest is zeroed."""
    if bits not in (16, 32, 64):
        raise AsmError(f"byte swap of {bits} bits")
    return Insn(Cls.ALU | AluOp.END | BPF_TO_BE, dst, 0, 0, bits)


def ldx(size: Size, dst: Reg, src: Reg, off: int) -> Insn:
    """dst = *(size *)(src + off)"""
    return Insn(Cls.LDX | MODE_MEM | size, dst, src, off)


def stx(size: Size, dst: Reg, off: int, src: Reg) -> Insn:
    """*(size *)(dst + off) = src"""
    return Insn(Cls.STX | MODE_MEM | size, dst, src, off)


def atomic_cmpxchg64(dst: Reg, off: int, src: Reg) -> Insn:
    """r0 = atomic_cmpxchg((u64 *)(dst + off), r0, src): store src where the memory still holds r0;
    r0 gets what the memory held either way."""
    return Insn(Cls.STX | MODE_ATOMIC | Size.DW, dst, src, off, ATOMIC_CMPXCHG)


def st_imm(size: Size, dst: Reg, off: int, imm: int) -> Insn:
    """*(size *)(dst + off) = imm"""
    return Insn(Cls.ST | MODE_MEM | size, dst, 0, off, _imm32(imm))


def ld_imm64(dst: Reg, value: int, src: int = 0) -> tuple[Insn, Insn]:
    """dst = 64-bit value: two slots, the second one with opcode 0 carrying the upper half."""
    if not -(1 << 63) <= value < (1 << 64):
        raise AsmError(f"immediate {value} does not fit in 64 bits")
    value &= (1 << 64) - 1
    return (
        Insn(Cls.LD | MODE_IMM | Size.DW, dst, src, 0, _imm32(value & 0xFFFFFFFF)),
        Insn(0, 0, 0, 0, _imm32(value >> 32)),
    )


def jmp_imm(op: JmpOp, dst: Reg, imm: int, off: int) -> Insn:
    """if (dst <op> imm) goto pc + 1 + off"""
    return Insn(Cls.JMP | op | SRC_K, dst, 0, off, _imm32(imm))


def jmp_reg(op: JmpOp, dst: Reg, src: Reg, off: int) -> Insn:
    """if (dst <op> src) goto pc + 1 + off"""
    return Insn(Cls.JMP | op | SRC_X, dst, src, off)


def ja(off: int) -> Insn:
    return Insn(Cls.JMP | JmpOp.JA, 0, 0, off)


def call(helper: Helper | int) -> Insn:
    """r0 = helper(r1, ..., r5); r1-r5 are clobbered, r6-r9 and the stack survive."""
    return Insn(Cls.JMP | JmpOp.CALL, 0, 0, 0, int(helper))


def exit_insn() -> Insn:
    return Insn(Cls.JMP | JmpOp.EXIT)


# ------------------------------------------------------------------------------------------ assembler


@dataclass(frozen=True, slots=True)
class _Label:
    name: str


@dataclass(frozen=True, slots=True)
class _Jump:
    """A jump whose offset is resolved from a label; `src` is a register when `reg` is set."""

    op: JmpOp
    dst: Reg
    operand: int
    reg: bool
    label: str


@dataclass(frozen=True, slots=True)
class MapRef:
    """`ld_imm64 dst, <fd of map name>`: resolved by `Program.link`."""

    dst: Reg
    name: str


_Item = Insn | _Label | _Jump | MapRef


@dataclass(frozen=True, slots=True)
class Program:
    """Assembled instructions; `maps` lists (slot, map name) pairs still holding a placeholder fd of 0."""

    insns: tuple[Insn, ...]
    maps: tuple[tuple[int, str], ...]
    labels: Mapping[str, int]

    def __len__(self) -> int:
        return len(self.insns)

    def link(self, map_fds: Mapping[str, int]) -> list[Insn]:
        """The instructions with every map reference pointing at its file descriptor."""
        missing = sorted({name for _, name in self.maps} - set(map_fds))
        if missing:
            raise AsmError(f"no file descriptor for map(s) {', '.join(missing)}")
        out = list(self.insns)
        for slot, name in self.maps:
            first = out[slot]
            out[slot] = Insn(first.code, first.dst, PSEUDO_MAP_FD, 0, _imm32(map_fds[name]))
        return out


class Assembler:
    """Append instructions, labels and label jumps in program order, then `assemble()`."""

    def __init__(self) -> None:
        self._items: list[_Item] = []

    def emit(self, *insns: Insn | tuple[Insn, ...]) -> None:
        for item in insns:
            if isinstance(item, tuple):
                self._items.extend(item)
            else:
                self._items.append(item)

    def label(self, name: str) -> None:
        self._items.append(_Label(name))

    def jump(self, op: JmpOp, dst: Reg, imm: int, label: str) -> None:
        """if (dst <op> imm) goto label"""
        self._items.append(_Jump(op, dst, _imm32(imm), False, label))

    def jump_reg(self, op: JmpOp, dst: Reg, src: Reg, label: str) -> None:
        """if (dst <op> src) goto label"""
        self._items.append(_Jump(op, dst, int(src), True, label))

    def goto(self, label: str) -> None:
        self._items.append(_Jump(JmpOp.JA, Reg.R0, 0, False, label))

    def ld_map(self, dst: Reg, name: str) -> None:
        """dst = address of map `name` (two slots)."""
        self._items.append(MapRef(dst, name))

    def call(self, helper: Helper | int) -> None:
        self._items.append(call(helper))

    def exit(self) -> None:
        self._items.append(exit_insn())

    def assemble(self) -> Program:
        labels: dict[str, int] = {}
        pc = 0
        for item in self._items:
            if isinstance(item, _Label):
                if item.name in labels:
                    raise AsmError(f"label {item.name!r} is defined twice")
                labels[item.name] = pc
            else:
                pc += 2 if isinstance(item, MapRef) else 1
        insns: list[Insn] = []
        maps: list[tuple[int, str]] = []
        for item in self._items:
            match item:
                case _Label():
                    continue
                case Insn():
                    insns.append(item)
                case MapRef(dst, name):
                    maps.append((len(insns), name))
                    insns.extend(ld_imm64(dst, 0, PSEUDO_MAP_FD))
                case _Jump(op, dst, operand, reg, label):
                    if label not in labels:
                        raise AsmError(f"jump to unknown label {label!r}")
                    off = labels[label] - (len(insns) + 1)
                    if not _S16[0] <= off <= _S16[1]:
                        raise AsmError(f"jump to {label!r} is {off} slots away: out of the 16-bit range")
                    code = Cls.JMP | op | (SRC_X if reg else SRC_K)
                    insns.append(Insn(code, dst, operand if reg else 0, off, 0 if reg else operand))
        return Program(tuple(insns), tuple(maps), dict(labels))
