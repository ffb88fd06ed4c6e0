"""The classic BPF capture filter, run in the interpreter: what it accepts, its layout, its size limits."""

import random
import sys
from ipaddress import IPv4Address
from typing import Any

import pytest

from mcr.packet.build import build_esp_frame, build_udp_frame
from mcr.packet.cbpf import (
    ACCEPT,
    BPF_MAXINSNS,
    SKF_AD_OFF,
    Insn,
    Op,
    PacketType,
    build_capture_filter,
    check_program,
    coarse_filter,
    disassemble,
    exact_filter,
    group_filter,
    pack_program,
    run_program,
    unpack_program,
)

G1 = int(IPv4Address("239.1.1.1"))
G2 = int(IPv4Address("239.1.1.2"))
G3 = int(IPv4Address("239.1.1.3"))
MAPPING = {G1: {5000, 5001}, G2: {6000}}


def frame(group: int = G1, port: int = 5000, payload: bytes = b"x" * 20, **kw: Any) -> bytes:
    return build_udp_frame(src_ip="10.0.0.1", dst_ip=IPv4Address(group), dst_port=port, payload=payload, **kw)


def retarget(raw: bytes, group: int, port: int) -> bytes:
    """`raw` (no IP options) sent to another group and port; checksums are left stale, the filter ignores them."""
    return raw[:30] + group.to_bytes(4, "big") + raw[34:36] + port.to_bytes(2, "big") + raw[38:]


def accepts(program: list[Insn], raw: bytes, pkttype: int = PacketType.MULTICAST) -> bool:
    verdict = run_program(program, raw, pkttype)
    assert verdict in (0, ACCEPT)
    return verdict == ACCEPT


# ------------------------------------------------------------------------------------------- encoding


def test_opcodes_are_the_kernel_values() -> None:
    assert (Op.LD_W_ABS, Op.LD_H_ABS, Op.LD_B_ABS, Op.LD_H_IND) == (0x20, 0x28, 0x30, 0x48)
    assert (Op.LDX_IMM, Op.LDX_B_MSH, Op.ALU_AND_K) == (0x01, 0xB1, 0x54)
    assert (Op.JA, Op.JEQ_K, Op.JGT_K, Op.JGE_K, Op.JSET_K) == (0x05, 0x15, 0x25, 0x35, 0x45)
    assert (Op.RET_K, Op.TAX, Op.TXA) == (0x06, 0x07, 0x87)
    assert SKF_AD_OFF == (-0x1000) & 0xFFFFFFFF


def test_instruction_packing() -> None:
    insn = Insn(Op.JEQ_K, 3, 250, 0x0800)
    packed = pack_program([insn, Insn(Op.RET_K, k=ACCEPT)])
    order = sys.byteorder
    assert packed[:8] == (0x15).to_bytes(2, order) + bytes([3, 250]) + (0x0800).to_bytes(4, order)
    assert packed[8:] == (0x06).to_bytes(2, order) + b"\0\0" + ACCEPT.to_bytes(4, order)
    assert unpack_program(packed) == [insn, Insn(Op.RET_K, 0, 0, ACCEPT)]
    program = build_capture_filter(MAPPING)
    assert unpack_program(pack_program(program)) == program
    with pytest.raises(ValueError, match="whole number"):
        unpack_program(packed[:-1])


@pytest.mark.parametrize(
    "fields", [(0x10000, 0, 0, 0), (Op.JEQ_K, 256, 0, 0), (Op.JEQ_K, 0, -1, 0), (Op.RET_K, 0, 0, 1 << 32)]
)
def test_instruction_fields_are_range_checked(fields: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError, match=r"range|u32"):
        Insn(*fields)


def test_one_pair_layout() -> None:
    program = build_capture_filter({G1: [5000]})
    assert disassemble(program) == [
        "(000) ldb [ancillary 4]",
        "(001) jeq #0x4 jt 19 jf 2",
        "(002) ldh [12]",
        "(003) jeq #0x800 jt 4 jf 19",
        "(004) ldh [20]",
        "(005) jset #0x3fff jt 12 jf 6",
        "(006) ldb [23]",
        "(007) jeq #0x11 jt 8 jf 12",
        "(008) ldxb 4*([14]&0xf)",
        "(009) ldh [x + 16]",
        "(010) tax",
        "(011) ja 13",
        "(012) ldx #0x10000",
        "(013) ld [30]",
        "(014) jeq #0xef010101 jt 15 jf 19",
        "(015) txa",
        "(016) jeq #0x1388 jt 18 jf 17",
        "(017) jgt #0xffff jt 18 jf 19",
        "(018) ret #0x40000",
        "(019) ret #0x0",
    ]
    check_program(program)


# ------------------------------------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("raw", "pkttype", "accepted"),
    [
        pytest.param(frame(G1, 5000), PacketType.MULTICAST, True, id="g1-5000"),
        pytest.param(frame(G1, 5001), PacketType.MULTICAST, True, id="g1-5001"),
        pytest.param(frame(G2, 6000), PacketType.MULTICAST, True, id="g2-6000"),
        pytest.param(frame(G1, 5000), PacketType.HOST, True, id="pkttype-host"),
        pytest.param(frame(G1, 5000), PacketType.OTHERHOST, True, id="pkttype-otherhost"),
        pytest.param(frame(G1, 5000), PacketType.BROADCAST, True, id="pkttype-broadcast"),
        pytest.param(frame(G1, 5000), PacketType.OUTGOING, False, id="outgoing"),
        pytest.param(frame(G2, 6000, more_fragments=True), PacketType.OUTGOING, False, id="outgoing-fragment"),
        pytest.param(frame(ethertype=0x86DD), PacketType.MULTICAST, False, id="ipv6"),
        pytest.param(frame(ethertype=0x0806), PacketType.MULTICAST, False, id="arp"),
        pytest.param(frame(vlan=7), PacketType.MULTICAST, False, id="802.1q"),
        pytest.param(frame(G3, 5000), PacketType.MULTICAST, False, id="wrong-group"),
        pytest.param(frame(int(IPv4Address("10.9.9.9")), 5000), PacketType.HOST, False, id="unicast"),
        pytest.param(frame(G1, 6000), PacketType.MULTICAST, False, id="port-of-other-group"),
        pytest.param(frame(G2, 5000), PacketType.MULTICAST, False, id="port-of-other-group-2"),
        pytest.param(frame(G1, 4999), PacketType.MULTICAST, False, id="wrong-port"),
        pytest.param(frame(G1, 0), PacketType.MULTICAST, False, id="port-0"),
        pytest.param(frame(G1, 65535), PacketType.MULTICAST, False, id="port-65535"),
        pytest.param(frame(G1, 9, more_fragments=True), PacketType.MULTICAST, True, id="fragment-mf"),
        pytest.param(frame(G2, 9, fragment_offset=185), PacketType.MULTICAST, True, id="fragment-offset"),
        pytest.param(frame(G3, 5000, more_fragments=True), PacketType.MULTICAST, False, id="fragment-other-group"),
        pytest.param(frame(G1, 9, protocol=6), PacketType.MULTICAST, True, id="tcp-to-group"),
        pytest.param(frame(G2, 9, protocol=2, ip_options=b"\x94\x04\0\0"), PacketType.MULTICAST, True, id="igmp"),
        pytest.param(frame(G3, 5000, protocol=6), PacketType.MULTICAST, False, id="tcp-other-group"),
        pytest.param(frame(G1, 5000)[:30], PacketType.MULTICAST, False, id="too-short-for-dst"),
        pytest.param(frame(G1, 5000)[:36], PacketType.MULTICAST, False, id="too-short-for-port"),
    ],
)
def test_decisions(raw: bytes, pkttype: int, accepted: bool) -> None:
    assert accepts(build_capture_filter(MAPPING), raw, pkttype) is accepted


@pytest.mark.parametrize("words", [1, 2, 10])
def test_ip_options_move_the_port(words: int) -> None:
    """The port comes from 14 + IHL*4 + 2, not from where it would be without options."""
    decoy = b"\x00\x00" + (5000).to_bytes(2, "big") + b"\x01" * (4 * words - 4)  # 5000 where IHL 5 has the port
    program = build_capture_filter(MAPPING)
    assert accepts(program, frame(G1, 5001, ip_options=b"\x01" * 4 * words))
    assert not accepts(program, frame(G1, 7000, ip_options=decoy))


@pytest.mark.parametrize("mapping", [{}, {G1: set()}, {G1: [], G2: ()}])
def test_no_ports_drop_everything(mapping: dict[int, Any]) -> None:
    program = build_capture_filter(mapping)
    assert program == [Insn(Op.RET_K, 0, 0, 0)]
    check_program(program)
    for raw in (frame(), frame(more_fragments=True), frame(protocol=6)):
        assert not accepts(program, raw)


@pytest.mark.parametrize("mapping", [{G1: {70000}}, {G1: {-1}}, {-1: {5000}}, {1 << 32: {5000}}])
def test_out_of_range_values_are_refused(mapping: dict[int, set[int]]) -> None:
    with pytest.raises(ValueError, match="out of range"):
        build_capture_filter(mapping)


# ------------------------------------------------------------------------------------------- large tables


def table(groups: int, ports: int, shape: str) -> dict[int, set[int]]:
    rng = random.Random(groups * 7919 + ports)
    base = int(IPv4Address("232.0.0.0"))
    gs = sorted(rng.sample(range(base, base + (1 << 24)), groups))
    if shape == "shared":
        return {g: set(range(5000, 5000 + 2 * ports, 2)) for g in gs}
    return {g: set(rng.sample(range(1024, 65536), ports)) for g in gs}


SHAPES = [
    # (groups, ports per group, shape, tier expected)
    (1, 1, "distinct", exact_filter),
    (2, 1, "distinct", exact_filter),
    (1, 2, "distinct", exact_filter),
    (50, 1, "distinct", exact_filter),
    (1, 50, "distinct", exact_filter),
    (10, 5, "distinct", exact_filter),
    (300, 1, "distinct", exact_filter),
    (300, 1, "shared", exact_filter),
    (1, 300, "distinct", exact_filter),
    (30, 10, "distinct", exact_filter),
    (1000, 1, "distinct", exact_filter),
    (1000, 1, "shared", exact_filter),
    (1, 1000, "distinct", exact_filter),
    (100, 10, "distinct", exact_filter),
    (3000, 1, "shared", exact_filter),
    (1000, 3, "shared", exact_filter),
    (1, 3000, "distinct", exact_filter),
    (300, 10, "distinct", exact_filter),
    (3000, 1, "distinct", group_filter),
    (600, 5, "distinct", group_filter),
    (300, 100, "shared", exact_filter),  # far references to a large shared port check go through `ja`
]


@pytest.mark.parametrize(("groups", "ports", "shape", "tier"), SHAPES, ids=[f"{g}x{p}-{s}" for g, p, s, _ in SHAPES])
def test_large_tables_are_exact_or_fall_back_to_groups(groups: int, ports: int, shape: str, tier: Any) -> None:
    mapping = table(groups, ports, shape)
    program = build_capture_filter(mapping)
    check_program(program)
    assert len(program) <= BPF_MAXINSNS
    exact = tier is exact_filter
    if exact:
        assert program == exact_filter({g: sorted(p) for g, p in mapping.items()})
    else:
        assert len(exact_filter({g: sorted(p) for g, p in mapping.items()})) > BPF_MAXINSNS
        assert program == group_filter(mapping)
    udp, fragment = frame(G1, 1), frame(G1, 1, more_fragments=True)
    known = set(mapping)
    every = sum(map(len, mapping.values())) <= 3000
    for group, group_ports in mapping.items():
        ordered = sorted(group_ports)
        for port in ordered if every else {ordered[0], ordered[len(ordered) // 2], ordered[-1]}:
            assert accepts(program, retarget(udp, group, port))
        free = next(p for p in range(1024, 65536) if p not in group_ports)
        assert accepts(program, retarget(udp, group, free)) is not exact
        assert accepts(program, retarget(fragment, group, free))
        assert not accepts(program, retarget(udp, group, min(group_ports)), PacketType.OUTGOING)
        for other in (group - 1, group + 1):
            if other not in known:
                assert not accepts(program, retarget(udp, other, min(group_ports)))
                assert not accepts(program, retarget(fragment, other, 1))


def test_large_tables_use_trampolines_and_repeated_tails() -> None:
    program = build_capture_filter(table(1000, 1, "distinct"))
    jumps = [i for i in program if i.code == Op.JA]
    assert len(jumps) > 1 and max(i.k for i in jumps) > 255
    assert sum(i.code == Op.RET_K and i.k == ACCEPT for i in program) > 1


def test_a_large_shared_port_check_is_emitted_once() -> None:
    program = build_capture_filter(table(300, 100, "shared"))
    assert sum(i.code == Op.TXA for i in program) == 1
    assert len(program) < 300 * 9 // 8 + 100 * 9 // 8 + 60


def test_falls_back_to_the_coarse_filter_beyond_the_group_filter() -> None:
    mapping = table(4000, 1, "shared")
    assert len(group_filter(mapping)) > BPF_MAXINSNS
    program = build_capture_filter(mapping)
    assert program == coarse_filter()
    check_program(program)
    assert accepts(program, frame(min(mapping), 1))
    assert accepts(program, frame(int(IPv4Address("239.255.255.255")), 9, protocol=6))
    assert not accepts(program, frame(int(IPv4Address("10.1.2.3")), 5000), PacketType.HOST)
    assert not accepts(program, frame(int(IPv4Address("240.0.0.1")), 5000))
    assert not accepts(program, frame(min(mapping), 5000), PacketType.OUTGOING)
    assert not accepts(program, frame(min(mapping), 5000, vlan=3))


def test_the_coarse_filter_keeps_unicast_inputs() -> None:
    """Rules on the host's own unicast address survive the fall back: those addresses are checked first."""
    host = int(IPv4Address("10.1.2.3"))
    mapping = {**table(4000, 1, "shared"), host: {5000}}
    program = build_capture_filter(mapping)
    assert program == coarse_filter((), [host])
    check_program(program)
    assert accepts(program, frame(host, 5000), PacketType.HOST)
    assert accepts(program, frame(min(mapping), 1))
    assert not accepts(program, frame(host + 1, 5000), PacketType.HOST)
    assert not accepts(program, frame(host, 5000), PacketType.OUTGOING)


@pytest.mark.parametrize("builder", ["exact", "group"])
def test_esp_and_unicast_inputs(builder: str) -> None:
    """An ESP rule is port 0 of its group: ESP to it passes (as every non-UDP packet to a configured group),
    so does UDP to port 0 (the worker counts it as no_rule); a unicast input address is matched like a group."""
    group, host = int(IPv4Address("239.7.7.7")), int(IPv4Address("10.1.2.3"))
    mapping = {group: {0}, host: {0, 5000}}
    program = exact_filter(mapping) if builder == "exact" else group_filter(list(mapping))
    check_program(program)
    esp = build_esp_frame(src_ip="10.9.9.9", dst_ip=IPv4Address(group), payload=b"sealed")
    esp_host = build_esp_frame(src_ip="10.9.9.9", dst_ip=IPv4Address(host), dst_mac=b"\x02" * 6, payload=b"x")
    assert accepts(program, esp)
    assert accepts(program, esp_host, PacketType.HOST)
    assert accepts(program, frame(host, 5000), PacketType.HOST)
    assert accepts(program, frame(group, 0))
    assert not accepts(program, build_esp_frame(src_ip="10.9.9.9", dst_ip="239.7.7.8", payload=b"x"))
    assert not accepts(program, esp, PacketType.OUTGOING)
    assert accepts(program, frame(group, 5000)) is (builder == "group")


def test_max_insns_picks_the_tier() -> None:
    exact = build_capture_filter(MAPPING)
    assert build_capture_filter(MAPPING, max_insns=len(exact)) == exact
    groups = build_capture_filter(MAPPING, max_insns=len(exact) - 1)
    assert groups == group_filter(MAPPING)
    assert build_capture_filter(MAPPING, max_insns=len(groups) - 1) == coarse_filter()


# ------------------------------------------------------------------------------------------- interpreter


RET1 = Insn(Op.RET_K, k=1)


@pytest.mark.parametrize(
    ("program", "message"),
    [
        pytest.param([Insn(0x99), RET1], "unknown opcode", id="unknown-opcode"),
        pytest.param([Insn(Op.JA, k=5), RET1], "left the program", id="ja-out"),
        pytest.param([Insn(Op.JEQ_K, 0, 9, 1), RET1], "left the program", id="jf-out"),
        pytest.param([Insn(Op.TAX)], "left the program", id="runs-off-the-end"),
        pytest.param([Insn(Op.LD_B_ABS, k=SKF_AD_OFF + 48), RET1], "ancillary", id="vlan-ancillary"),
    ],
)
def test_interpreter_rejects_bad_programs(program: list[Insn], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_program(program, frame())


@pytest.mark.parametrize(
    "load", [Insn(Op.LD_W_ABS, k=47), Insn(Op.LD_H_ABS, k=49), Insn(Op.LD_B_ABS, k=50), Insn(Op.LDX_B_MSH, k=50)]
)
def test_out_of_bounds_loads_return_zero(load: Insn) -> None:
    raw = bytes(50)
    assert run_program([load, RET1], raw) == 0
    assert run_program([Insn(load.code, k=0), RET1], raw) == 1


def test_indexed_load_is_bounded_by_x() -> None:
    raw = bytes(range(40))
    program = [Insn(Op.LDX_IMM, k=20), Insn(Op.LD_H_IND, k=18), Insn(Op.JEQ_K, 0, 1, 0x2627), RET1, Insn(Op.RET_K)]
    assert run_program(program, raw) == 1
    assert run_program([Insn(Op.LDX_IMM, k=20), Insn(Op.LD_H_IND, k=19), RET1], raw) == 0


@pytest.mark.parametrize(
    ("program", "message"),
    [
        pytest.param([], "length 0", id="empty"),
        pytest.param([RET1] * (BPF_MAXINSNS + 1), "length 4097", id="too-long"),
        pytest.param([Insn(Op.TAX)], "last instruction", id="no-return"),
        pytest.param([Insn(Op.JA, k=1), RET1], "leaves", id="ja-out"),
        pytest.param([Insn(Op.JGT_K, 1, 0, 0), RET1], "leaves", id="jt-out"),
        pytest.param([Insn(0x99), RET1], "unknown opcode", id="unknown-opcode"),
        pytest.param([Insn(Op.LD_W_ABS, k=SKF_AD_OFF), RET1], "ancillary", id="protocol-ancillary"),
    ],
)
def test_check_program_refuses_what_the_kernel_refuses(program: list[Insn], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_program(program)
