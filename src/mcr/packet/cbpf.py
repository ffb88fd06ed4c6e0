"""Classic BPF socket filters: a tiny assembler, the relay's capture filter, and an interpreter.

The capture filter runs in the kernel on every frame that reaches a capture socket, so everything
that is not one of our flows is rejected before any copy to userspace. It passes:

- IPv4 UDP to a configured (group, port), and
- fragments and non-UDP packets to a configured group (so that userspace counts them as drops),

and rejects the host's own outgoing frames. The interpreter runs the same programs in tests.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum


class Op(IntEnum):
    """Opcodes (class | size | mode, or class | op | source) used here."""

    LD_W_ABS = 0x20
    LD_H_ABS = 0x28
    LD_B_ABS = 0x30
    LD_H_IND = 0x48
    LD_MEM = 0x60
    LDX_B_MSH = 0xB1
    ST = 0x02
    JA = 0x05
    JEQ_K = 0x15
    JGT_K = 0x25
    JGE_K = 0x35
    JSET_K = 0x45
    RET_K = 0x06
    ALU_AND_K = 0x54


SKF_AD_OFF = 0xFFFFF000
SKF_AD_PKTTYPE = 4
PACKET_OUTGOING = 4
BPF_MAXINSNS = 4096
ACCEPT = 0x40000  # snap length: whole frames, jumbo and GRO included
DROP = 0
_INSN = struct.Struct("=HBBI")


@dataclass(frozen=True, slots=True)
class Insn:
    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0


def pack_program(insns: Sequence[Insn]) -> bytes:
    return b"".join(_INSN.pack(i.code, i.jt, i.jf, i.k & 0xFFFFFFFF) for i in insns)


# ------------------------------------------------------------------------------------------ assembler


@dataclass(frozen=True, slots=True)
class _Jump:
    """`if (A <op> k) == sense goto label`, else fall through."""

    code: int
    k: int
    label: str
    sense: bool


@dataclass(frozen=True, slots=True)
class _Goto:
    label: str


_Item = Insn | _Jump | _Goto | str  # a str is a label


class Assembler:
    """Emits jumps to labels; long jumps become a conditional hop over a 32-bit `ja`."""

    def __init__(self) -> None:
        self.items: list[_Item] = []

    def op(self, code: int, k: int = 0) -> None:
        self.items.append(Insn(code, 0, 0, k))

    def jump_if(self, code: int, k: int, label: str, sense: bool = True) -> None:
        self.items.append(_Jump(code, k, label, sense))

    def goto(self, label: str) -> None:
        """An unconditional forward jump (classic BPF has no backward jumps)."""
        self.items.append(_Goto(label))

    def label(self, name: str) -> None:
        self.items.append(name)

    def assemble(self) -> list[Insn]:
        long = {i for i, it in enumerate(self.items) if isinstance(it, _Jump)}
        while True:
            pos, labels = self._layout(long)
            shrink = {
                i
                for i in long
                if 0 <= labels[self.items[i].label] - pos[i] - 1 <= 255  # type: ignore[union-attr]
            }
            if not shrink:
                break
            long -= shrink
        out: list[Insn] = []
        for i, it in enumerate(self.items):
            if isinstance(it, str):
                continue
            if isinstance(it, Insn):
                out.append(it)
            elif isinstance(it, _Goto):
                out.append(Insn(Op.JA, 0, 0, labels[it.label] - pos[i] - 1))
            elif i in long:
                # the condition skips the `ja` when it does not hold
                out.append(Insn(it.code, 0 if it.sense else 1, 1 if it.sense else 0, it.k))
                out.append(Insn(Op.JA, 0, 0, labels[it.label] - pos[i] - 2))
            else:
                d = labels[it.label] - pos[i] - 1
                out.append(Insn(it.code, d if it.sense else 0, 0 if it.sense else d, it.k))
        return out

    def _layout(self, long: set[int]) -> tuple[dict[int, int], dict[str, int]]:
        pos: dict[int, int] = {}
        labels: dict[str, int] = {}
        n = 0
        for i, it in enumerate(self.items):
            if isinstance(it, str):
                labels[it] = n
                continue
            pos[i] = n
            n += 2 if i in long else 1
        return pos, labels


# ------------------------------------------------------------------------------------ capture filter


def _prologue(asm: Assembler) -> None:
    asm.op(Op.LD_B_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE)
    asm.jump_if(Op.JEQ_K, PACKET_OUTGOING, "drop")
    asm.op(Op.LD_H_ABS, 12)
    asm.jump_if(Op.JEQ_K, 0x0800, "drop", sense=False)


def build_capture_filter(groups: Mapping[int, Collection[int]]) -> list[Insn]:
    """The filter for one input interface, given {IPv4 group as int: UDP ports}.

    When the exact program would exceed the kernel's 4096 instructions, a coarse one is returned
    (IPv4 to 224.0.0.0/4, not outgoing) and userspace does the rest of the rejecting.
    """
    if not groups:
        return [Insn(Op.RET_K, k=DROP)]
    asm = Assembler()
    ordered = sorted(groups.items())
    _prologue(asm)
    asm.op(Op.LD_H_ABS, 20)
    asm.jump_if(Op.JSET_K, 0x3FFF, "other")
    asm.op(Op.LD_B_ABS, 23)
    asm.jump_if(Op.JEQ_K, 17, "other", sense=False)
    asm.op(Op.LDX_B_MSH, 14)
    asm.op(Op.LD_H_IND, 16)
    asm.op(Op.ST, 0)
    asm.op(Op.LD_W_ABS, 30)
    for group, _ports in ordered:
        asm.jump_if(Op.JEQ_K, group, f"g{group}")
    asm.op(Op.RET_K, DROP)
    for group, ports in ordered:
        asm.label(f"g{group}")
        asm.op(Op.LD_MEM, 0)
        for port in sorted(ports):
            asm.jump_if(Op.JEQ_K, port, "accept")
        asm.op(Op.RET_K, DROP)
    asm.label("other")
    asm.op(Op.LD_W_ABS, 30)
    for group, _ports in ordered:
        asm.jump_if(Op.JEQ_K, group, "accept")
    asm.label("drop")
    asm.op(Op.RET_K, DROP)
    asm.label("accept")
    asm.op(Op.RET_K, ACCEPT)
    program = asm.assemble()
    return program if len(program) <= BPF_MAXINSNS else coarse_filter()


def coarse_filter() -> list[Insn]:
    asm = Assembler()
    _prologue(asm)
    asm.op(Op.LD_W_ABS, 30)
    asm.jump_if(Op.JGE_K, 0xE0000000, "drop", sense=False)
    asm.jump_if(Op.JGT_K, 0xEFFFFFFF, "drop")
    asm.op(Op.RET_K, ACCEPT)
    asm.label("drop")
    asm.op(Op.RET_K, DROP)
    return asm.assemble()


# ---------------------------------------------------------------------------------------- interpreter


def run_program(insns: Sequence[Insn], frame: bytes, pkttype: int = 0) -> int:
    """Run a program the way the kernel would on `frame`; returns the accept length (0 = drop).

    Loads past the end of the frame drop the packet, as in the kernel. Raises ValueError for an
    opcode this module never emits or a jump outside the program.
    """
    a = x = 0
    mem = [0] * 16
    pc = 0
    n = len(insns)
    size = len(frame)
    while True:
        if not 0 <= pc < n:
            raise ValueError(f"jump outside the program (pc {pc})")
        i = insns[pc]
        code, k = i.code, i.k
        pc += 1
        if code == Op.RET_K:
            return k
        if code in (Op.LD_W_ABS, Op.LD_H_ABS, Op.LD_B_ABS, Op.LD_H_IND):
            width = {Op.LD_W_ABS: 4, Op.LD_H_ABS: 2, Op.LD_B_ABS: 1, Op.LD_H_IND: 2}[Op(code)]
            if code == Op.LD_B_ABS and k == SKF_AD_OFF + SKF_AD_PKTTYPE:
                a = pkttype
                continue
            off = k + (x if code == Op.LD_H_IND else 0)
            if off + width > size:
                return 0
            a = int.from_bytes(frame[off : off + width], "big")
        elif code == Op.LDX_B_MSH:
            if k >= size:
                return 0
            x = (frame[k] & 0x0F) * 4
        elif code == Op.LD_MEM:
            a = mem[k]
        elif code == Op.ST:
            mem[k] = a
        elif code == Op.ALU_AND_K:
            a &= k
        elif code == Op.JA:
            pc += k
        elif code in (Op.JEQ_K, Op.JGT_K, Op.JGE_K, Op.JSET_K):
            if code == Op.JEQ_K:
                hit = a == k
            elif code == Op.JGT_K:
                hit = a > k
            elif code == Op.JGE_K:
                hit = a >= k
            else:
                hit = bool(a & k)
            pc += i.jt if hit else i.jf
        else:
            raise ValueError(f"unsupported opcode 0x{code:02x}")
