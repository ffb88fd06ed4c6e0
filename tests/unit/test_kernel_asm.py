"""The eBPF assembler: encodings checked against hand-computed bytes, label resolution, map relocation."""

from __future__ import annotations

import pytest

from mcr.kernel.asm import (
    PSEUDO_MAP_FD,
    AluOp,
    AsmError,
    Assembler,
    Helper,
    Insn,
    JmpOp,
    Reg,
    Size,
    alu32_imm,
    alu64_imm,
    alu64_reg,
    call,
    encode,
    endian_be,
    exit_insn,
    ja,
    jmp_imm,
    jmp_reg,
    ld_imm64,
    ldx,
    mov64_imm,
    mov64_reg,
    st_imm,
    stx,
)


def hexcode(*insns: Insn | tuple[Insn, ...]) -> str:
    flat: list[Insn] = []
    for i in insns:
        flat.extend(i if isinstance(i, tuple) else (i,))
    return encode(flat, "little").hex(" ")


@pytest.mark.parametrize(
    ("insn", "expected"),
    [
        # opcode, src<<4|dst, off (s16 LE), imm (s32 LE)
        (mov64_imm(Reg.R0, 1), "b7 00 00 00 01 00 00 00"),
        (mov64_imm(Reg.R0, -1), "b7 00 00 00 ff ff ff ff"),
        (mov64_reg(Reg.R6, Reg.R1), "bf 16 00 00 00 00 00 00"),
        (ldx(Size.W, Reg.R2, Reg.R6, 76), "61 62 4c 00 00 00 00 00"),
        (ldx(Size.H, Reg.R5, Reg.R2, 12), "69 25 0c 00 00 00 00 00"),
        (ldx(Size.B, Reg.R0, Reg.R2, 23), "71 20 17 00 00 00 00 00"),
        (ldx(Size.DW, Reg.R1, Reg.FP, -80), "79 a1 b0 ff 00 00 00 00"),
        (stx(Size.DW, Reg.FP, -16, Reg.R0), "7b 0a f0 ff 00 00 00 00"),
        (stx(Size.W, Reg.FP, -56, Reg.R5), "63 5a c8 ff 00 00 00 00"),
        (st_imm(Size.H, Reg.FP, -46, 0), "6a 0a d2 ff 00 00 00 00"),
        (alu64_imm(AluOp.ADD, Reg.R4, -8), "07 04 00 00 f8 ff ff ff"),
        (alu64_imm(AluOp.AND, Reg.R5, 0x0F), "57 05 00 00 0f 00 00 00"),
        (alu64_imm(AluOp.LSH, Reg.R5, 2), "67 05 00 00 02 00 00 00"),
        (alu64_imm(AluOp.MUL, Reg.R1, 64), "27 01 00 00 40 00 00 00"),
        (alu64_reg(AluOp.ADD, Reg.R1, Reg.R7), "0f 71 00 00 00 00 00 00"),
        (alu64_reg(AluOp.OR, Reg.R9, Reg.R0), "4f 09 00 00 00 00 00 00"),
        (alu32_imm(AluOp.MOV, Reg.R3, 0xFFFFFFFF), "b4 03 00 00 ff ff ff ff"),
        (endian_be(Reg.R4, 16), "dc 04 00 00 10 00 00 00"),
        (jmp_imm(JmpOp.JNE, Reg.R5, 8, 3), "55 05 03 00 08 00 00 00"),
        (jmp_reg(JmpOp.JGT, Reg.R4, Reg.R3, -2), "2d 34 fe ff 00 00 00 00"),
        (jmp_imm(JmpOp.JSLT, Reg.R9, 0, 1), "c5 09 01 00 00 00 00 00"),
        (ja(-1), "05 00 ff ff 00 00 00 00"),
        (call(Helper.SKB_STORE_BYTES), "85 00 00 00 09 00 00 00"),
        (call(Helper.CLONE_REDIRECT), "85 00 00 00 0d 00 00 00"),
        (exit_insn(), "95 00 00 00 00 00 00 00"),
    ],
)
def test_encoding(insn: Insn, expected: str) -> None:
    assert hexcode(insn) == expected


def test_ld_imm64_takes_two_slots() -> None:
    assert hexcode(ld_imm64(Reg.R1, 0x1122334455667788)) == ("18 01 00 00 88 77 66 55 00 00 00 00 44 33 22 11")


def test_big_endian_host_swaps_register_nibbles_and_fields() -> None:
    assert encode([ldx(Size.W, Reg.R2, Reg.R6, 76)], "big").hex(" ") == "61 26 00 4c 00 00 00 00"


def test_helper_ids_match_the_kernel() -> None:
    assert (Helper.MAP_LOOKUP_ELEM, Helper.SKB_STORE_BYTES, Helper.L3_CSUM_REPLACE) == (1, 9, 10)
    assert (Helper.L4_CSUM_REPLACE, Helper.CLONE_REDIRECT, Helper.SKB_PULL_DATA) == (11, 13, 39)


@pytest.mark.parametrize(
    "make",
    [
        lambda: mov64_imm(Reg.R0, 1 << 32),
        lambda: mov64_imm(Reg.R0, -(1 << 31) - 1),
        lambda: ldx(Size.W, Reg.R0, Reg.FP, 1 << 15),
        lambda: Insn(0x100),
        lambda: Insn(0xB7, dst=11),
        lambda: endian_be(Reg.R0, 8),
        lambda: ld_imm64(Reg.R0, 1 << 64),
    ],
)
def test_bad_operands_raise(make: object) -> None:
    assert callable(make)
    with pytest.raises(AsmError):
        make()


def test_forward_and_backward_jumps_resolve_in_slots() -> None:
    a = Assembler()
    a.label("top")  # slot 0
    a.emit(mov64_imm(Reg.R0, 0))  # 0
    a.jump(JmpOp.JEQ, Reg.R1, 0, "end")  # 1 -> 5: off 3
    a.ld_map(Reg.R2, "m")  # 2, 3
    a.jump_reg(JmpOp.JGT, Reg.R1, Reg.R2, "top")  # 4 -> 0: off -5
    a.label("end")
    a.exit()  # 5
    a.goto("end")  # 6 -> 5: off -2
    prog = a.assemble()
    assert len(prog) == 7
    assert prog.labels == {"top": 0, "end": 5}
    assert (prog.insns[1].code, prog.insns[1].off, prog.insns[1].imm) == (0x15, 3, 0)
    assert (prog.insns[4].code, prog.insns[4].dst, prog.insns[4].src, prog.insns[4].off) == (0x2D, 1, 2, -5)
    assert (prog.insns[6].code, prog.insns[6].off) == (0x05, -2)
    assert prog.maps == ((2, "m"),)


def test_jump_out_of_16_bit_range_raises() -> None:
    a = Assembler()
    a.goto("far")
    a.emit(*[mov64_imm(Reg.R0, 0)] * 32768)
    a.label("far")
    a.exit()
    with pytest.raises(AsmError, match="out of the 16-bit range"):
        a.assemble()


def test_longest_jump_in_range_assembles() -> None:
    a = Assembler()
    a.goto("far")
    a.emit(*[mov64_imm(Reg.R0, 0)] * 32767)
    a.label("far")
    a.exit()
    assert a.assemble().insns[0].off == 32767


def test_unknown_and_duplicate_labels_raise() -> None:
    a = Assembler()
    a.goto("nowhere")
    with pytest.raises(AsmError, match="unknown label"):
        a.assemble()
    b = Assembler()
    b.label("x")
    b.label("x")
    with pytest.raises(AsmError, match="defined twice"):
        b.assemble()


def test_map_fd_relocation() -> None:
    a = Assembler()
    a.ld_map(Reg.R1, "rules")
    a.emit(mov64_imm(Reg.R0, 0))
    a.ld_map(Reg.R1, "stats")
    a.exit()
    prog = a.assemble()
    assert prog.maps == ((0, "rules"), (3, "stats"))
    linked = prog.link({"rules": 7, "stats": 300})
    assert hexcode(*linked[:2]) == "18 11 00 00 07 00 00 00 00 00 00 00 00 00 00 00"
    assert (linked[3].src, linked[3].imm, linked[4].code) == (PSEUDO_MAP_FD, 300, 0)
    assert prog.insns[0].imm == 0  # the unlinked program is left alone


def test_link_without_a_map_fd_raises() -> None:
    a = Assembler()
    a.ld_map(Reg.R1, "rules")
    a.exit()
    with pytest.raises(AsmError, match="rules"):
        a.assemble().link({})


def test_atomic_cmpxchg_encoding() -> None:
    """BPF_STX | BPF_ATOMIC | BPF_DW with imm BPF_CMPXCHG (0xf0 | BPF_FETCH), as in linux/filter.h."""
    from mcr.kernel.asm import atomic_cmpxchg64

    insn = atomic_cmpxchg64(Reg.R7, 8, Reg.R2)
    assert encode([insn], "little").hex(" ") == "db 27 08 00 f1 00 00 00"
