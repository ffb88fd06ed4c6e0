"""The relay program's structure (no root needed): it assembles, every jump lands on an instruction, the
stack and context accesses are the verifier's kind, every map is linked; and the map value layouts."""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from mcr.kernel.abi import TC_ACT_OK, SkbOffset
from mcr.kernel.asm import PSEUDO_MAP_FD, Cls, Helper, Insn, JmpOp, Program, Reg, Size
from mcr.kernel.program import (
    IPPROTO_ESP,
    MAP_NAMES,
    OUTPUT6_VALUE,
    OUTPUT_VALUE,
    MapName,
    OutputEntry,
    build_relay_program,
    map_specs,
    pack_group_key,
    pack_output,
    pack_rule_key,
    pack_rule_value,
    relay_program,
    rule_maps,
)
from mcr.packet.parse import MAX_EXT_HEADERS

SRC = Path(__file__).resolve().parents[2] / "src" / "mcr" / "kernel"
IO_MODULES = {"socket", "subprocess", "asyncio", "pyroute2", "select", "mmap", "ctypes", "fcntl", "signal", "os"}
MODE_MEM = 0x60
MAX_INSNS_UNPRIVILEGED = 4096


@pytest.fixture(scope="module")
def program() -> Program:
    return relay_program()


def jump_targets(insns: tuple[Insn, ...] | list[Insn]) -> list[tuple[int, int]]:
    return [(pc, pc + 1 + i.off) for pc, i in enumerate(insns) if i.is_jump]


def imm64_second_slots(insns: tuple[Insn, ...] | list[Insn]) -> set[int]:
    return {pc + 1 for pc, i in enumerate(insns) if i.code == 0x18}


@pytest.mark.parametrize("module", ["asm.py", "abi.py", "program.py"])
def test_builders_are_pure(module: str) -> None:
    found: set[str] = set()
    for node in ast.walk(ast.parse((SRC / module).read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0] if not node.module.startswith("mcr.") else node.module)
    assert not found & IO_MODULES
    assert not {m for m in found if m in ("mcr.kernel.bpf", "mcr.kernel.engine")}


def test_instruction_count(program: Program, record_property: Callable[[str, object], None]) -> None:
    record_property("instructions", len(program))
    print(f"relay program: {len(program)} instructions")
    assert 200 < len(program) < MAX_INSNS_UNPRIVILEGED  # no unrolling: each family's output loop is emitted once


def test_jumps_land_inside_the_program_and_never_mid_ld_imm64(program: Program) -> None:
    second = imm64_second_slots(program.insns)
    targets = jump_targets(program.insns)
    assert targets
    for pc, target in targets:
        assert 0 <= target < len(program), f"jump at {pc} to {target}"
        assert target not in second, f"jump at {pc} into the middle of ld_imm64"


def successors(insns: tuple[Insn, ...], pc: int) -> list[int]:
    i = insns[pc]
    if i.code == Cls.JMP | JmpOp.EXIT:
        return []
    if i.code == 0x18:
        return [pc + 2]
    if i.code == Cls.JMP | JmpOp.JA:
        return [pc + 1 + i.off]
    if i.is_jump:
        return [pc + 1, pc + 1 + i.off]
    return [pc + 1]


def test_the_only_cycles_are_the_output_loops_and_the_reparse(program: Program) -> None:
    """Without the edges back to `loop4`, `loope` (ESP), `loop6` and `parse` the control flow graph is acyclic
    (DFS colouring): the IPv6 extension header walk is unrolled."""
    allowed = {program.labels[name] for name in ("loop4", "loope", "loop6", "parse")}
    state: dict[int, int] = {}  # 1: on the DFS stack, 2: done
    stack = [(0, iter(successors(program.insns, 0)))]
    state[0] = 1
    back_edges: set[int] = set()
    while stack:
        pc, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            state[pc] = 2
            stack.pop()
            continue
        assert 0 <= nxt < len(program), f"insn {pc} falls or jumps out of the program"
        if state.get(nxt) == 1:
            back_edges.add(nxt)
        elif nxt not in state:
            state[nxt] = 1
            stack.append((nxt, iter(successors(program.insns, nxt))))
    assert back_edges == allowed
    assert len(state) == len(program) - len(imm64_second_slots(program.insns))  # no dead code


def test_every_exit_returns_a_constant_verdict(program: Program) -> None:
    insns = program.insns
    exits = [pc for pc, i in enumerate(insns) if i.code == Cls.JMP | JmpOp.EXIT]
    assert len(exits) == 2
    for pc in exits:
        prev = insns[pc - 1]
        assert (prev.code, prev.dst) == (0xB7, Reg.R0)  # r0 = imm
    assert insns[-1].is_jump or insns[-1].code == Cls.JMP | JmpOp.EXIT  # nothing falls off the end


def test_pass_verdict_is_configurable() -> None:
    prog = relay_program(pass_verdict=TC_ACT_OK)
    assert prog.insns[prog.labels["pass"]].imm == TC_ACT_OK
    assert relay_program().insns[relay_program().labels["pass"]].imm == -1  # TCX_NEXT by default


def test_stack_accesses_are_aligned_and_inside_the_frame(program: Program) -> None:
    sizes = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}
    seen = 0
    for pc, i in enumerate(program.insns):
        if i.cls in (Cls.LDX, Cls.STX, Cls.ST) and i.code & 0xE0 == MODE_MEM:
            base = i.src if i.cls == Cls.LDX else i.dst
            if base != Reg.FP:
                continue
            size = sizes[i.code & 0x18]
            assert i.off >= -512 and i.off + size <= 0, f"insn {pc}: stack offset {i.off}"
            assert i.off % size == 0, f"insn {pc}: misaligned {size}-byte stack access at {i.off}"
            seen += 1
    assert seen > 20


def test_context_reads_only_known_fields(program: Program) -> None:
    ctx_loads = {i.off for i in program.insns if i.cls == Cls.LDX and i.src == Reg.R6}
    known = {SkbOffset.LEN, SkbOffset.VLAN_PRESENT, SkbOffset.INGRESS_IFINDEX, SkbOffset.DATA, SkbOffset.DATA_END}
    assert ctx_loads <= known
    assert {SkbOffset.DATA, SkbOffset.DATA_END} <= ctx_loads
    assert not [i for i in program.insns if i.cls in (Cls.STX, Cls.ST) and i.dst == Reg.R6]  # ctx stays read-only


def test_helpers_called(program: Program) -> None:
    calls = {i.imm for i in program.insns if i.code == Cls.JMP | JmpOp.CALL}
    assert calls == {
        Helper.MAP_LOOKUP_ELEM,
        Helper.KTIME_GET_NS,
        Helper.L4_CSUM_REPLACE,
        Helper.CLONE_REDIRECT,
        Helper.SKB_PULL_DATA,
        Helper.SKB_LOAD_BYTES,
        Helper.CSUM_UPDATE,
    }  # no bpf_skb_store_bytes, bpf_csum_diff or l3_csum_replace: the headers are written directly


def calls_between(program: Program, start: str, end: str) -> list[int]:
    first, last = program.labels[start], program.labels[end]
    return [i.imm for i in program.insns[first:last] if i.code == Cls.JMP | JmpOp.CALL]


def packet_bytes_written(program: Program, start: str, end: str) -> int:
    """Bytes stored through packet pointers (r2: the frame, r5: its UDP header) between two labels."""
    first, last = program.labels[start], program.labels[end]
    stores = [i for i in program.insns[first:last] if i.cls == Cls.STX and i.dst in (Reg.R2, Reg.R5)]
    return sum(Size(i.code & 0x18).nbytes for i in stores)


def test_ipv6_output_loop_writes_the_headers_directly(program: Program) -> None:
    """Per IPv6 output: the UDP checksum by two l4_csum_replace by difference (the address sum precomputed
    in the output entry, through the pseudo-header; the port), one csum_update for skb->csum, the headers
    written through packet pointers (no IPv6 header checksum); then the clone. The restore writes the
    saved bytes back and calls csum_update once; the parse pulls the headers into the linear area once."""
    calls = calls_between(program, "loop6", "rewrite_failed6")
    assert sorted(calls) == sorted(
        [Helper.MAP_LOOKUP_ELEM] * 2 + [Helper.L4_CSUM_REPLACE] * 2 + [Helper.CSUM_UPDATE, Helper.CLONE_REDIRECT]
    )
    assert packet_bytes_written(program, "loop6", "rewrite_failed6") == 12 + 1 + 32 + 2  # MACs, hop, addresses, port
    assert calls_between(program, "restore6", "drop_bad_ip6") == [Helper.CSUM_UPDATE]
    assert packet_bytes_written(program, "restore6", "drop_bad_ip6") == 12 + 1 + 32 + 8
    assert calls_between(program, "parse6", "loop6").count(Helper.SKB_PULL_DATA) == 1


def test_ipv4_output_loop_writes_the_headers_directly(program: Program) -> None:
    """Per IPv4 output: the IPv4 header checksum is computed in the program, the headers are written through
    packet pointers, and only the UDP checksum goes through helpers (two l4_csum_replace by difference, which
    know the skb's checksum state; bpf_csum_update for a frame without a UDP checksum); then the clone."""
    calls = calls_between(program, "loop4", "rewrite_failed4")
    assert sorted(calls) == sorted(
        [Helper.MAP_LOOKUP_ELEM] * 2 + [Helper.L4_CSUM_REPLACE] * 2 + [Helper.CSUM_UPDATE, Helper.CLONE_REDIRECT]
    )
    written = packet_bytes_written(program, "loop4", "rewrite_failed4")
    assert written == 12 + 1 + 2 + 8 + 2  # MACs, TTL, IP checksum, addresses, port
    restore = calls_between(program, "restore4", "drop_bad_ip4")
    assert restore == [Helper.CSUM_UPDATE]  # the bytes go back by direct writes


def test_esp_output_loop_rewrites_the_ip_header_alone(program: Program) -> None:
    """Per ESP output: MACs, TTL, IPv4 header checksum and addresses by direct writes, no helper but the
    clone; the restore writes the same bytes back and calls nothing (the header's changes cancel in
    skb->csum)."""
    calls = calls_between(program, "loope", "rewrite_failede")
    assert sorted(calls) == sorted([Helper.MAP_LOOKUP_ELEM] * 2 + [Helper.CLONE_REDIRECT])
    assert packet_bytes_written(program, "loope", "rewrite_failede") == 12 + 1 + 2 + 8
    assert calls_between(program, "restoree", "drop_no_rulee") == []
    assert packet_bytes_written(program, "restoree", "drop_no_rulee") == 12 + 12


def test_ipv6_parse_walks_a_bounded_number_of_extension_headers(program: Program) -> None:
    """The fixed header, each extension header (at most MAX_EXT_HEADERS + 1 reads, as the userspace parser)
    and the UDP header are read with bpf_skb_load_bytes; the IPv4 path never calls it."""
    parse6 = calls_between(program, "parse6", "loop6")
    assert parse6.count(Helper.SKB_LOAD_BYTES) == 1 + (MAX_EXT_HEADERS + 1) + 1
    assert Helper.SKB_LOAD_BYTES not in calls_between(program, "parse", "parse6")
    labels = {name for name in program.labels if name.startswith("ext")}
    assert labels == {f"ext{i}" for i in range(MAX_EXT_HEADERS + 1)}


def test_every_map_is_referenced_and_linked() -> None:
    prog = relay_program()
    assert {name for _, name in prog.maps} == set(MAP_NAMES)
    fds = {name: 100 + n for n, name in enumerate(MAP_NAMES)}
    linked = build_relay_program(fds)
    for slot, name in prog.maps:
        assert (linked[slot].code, linked[slot].src, linked[slot].imm) == (0x18, PSEUDO_MAP_FD, fds[name])
        assert linked[slot + 1] == Insn(0)
    assert sum(1 for i in linked if i.src == PSEUDO_MAP_FD and i.code == 0x18) == len(prog.maps)


@pytest.mark.parametrize("max_outputs", [1, 3, 64, 256])
def test_any_output_limit_builds(max_outputs: int) -> None:
    prog = relay_program(max_outputs)
    for name in ("loop4", "loope", "loop6"):
        loop = prog.insns[prog.labels[name]]
        assert (loop.code & 0xF0, loop.imm) == (JmpOp.JGE, max_outputs)  # the verifier's bound on the loop


@pytest.mark.parametrize(("rules", "outputs"), [(0, 64), (1, 0), (1, 513), (70000, 1)])
def test_limits_are_checked(rules: int, outputs: int) -> None:
    with pytest.raises(ValueError):
        map_specs(rules, outputs)


def test_map_specs() -> None:
    specs = {s.name: s for s in map_specs(256, 64)}
    assert set(specs) == set(MAP_NAMES)
    assert (specs["rules"].key_size, specs["rules"].value_size) == (12, 16)
    assert (specs["rules6"].key_size, specs["rules6"].value_size) == (24, 40)
    assert (specs["groups"].key_size, specs["groups6"].key_size) == (8, 20)
    assert specs["outputs"].value_size == OUTPUT_VALUE.size == OUTPUT6_VALUE.size == 56  # either family
    assert specs["outputs"].max_entries == specs[MapName.OUTPUT_STATS.value].max_entries == 256 * 64
    assert all(len(f"mcr_{name}") < 16 for name in specs)  # BPF_OBJ_NAME_LEN


def test_rule_key_layout() -> None:
    key = pack_rule_key(3, IPv4Address("239.1.1.1"), 5001)
    assert key.hex(" ") == "03 00 00 00 ef 01 01 01 13 89 00 00"
    assert pack_group_key(3, IPv4Address("239.1.1.1")) == key[:8]  # the program looks up groups with it
    assert pack_rule_value(5, 3).hex(" ") == "05 00 00 00 03 00 00 00 00 00 00 00 00 00 00 00"
    source = IPv4Network("10.200.1.0/24")
    assert pack_rule_value(5, 3, source).hex(" ") == "05 00 00 00 03 00 00 00 0a c8 01 00 ff ff ff 00"


def test_esp_rule_key_and_output_layout() -> None:
    """An ESP rule's key has port 0 and ends in 50, so no UDP key (port 0 included) equals it; an ESP output
    carries protocol 50 (its TTL/protocol word enters the header checksum) and port 0."""
    key = pack_rule_key(3, IPv4Address("239.1.1.1"), 0, IPPROTO_ESP)
    assert key == pack_rule_key(3, IPv4Address("239.1.1.1"), 0)[:10] + (50).to_bytes(2, sys.byteorder)
    assert key != pack_rule_key(3, IPv4Address("239.1.1.1"), 0)
    assert pack_group_key(3, IPv4Address("239.1.1.1")) == key[:8]
    out = OutputEntry(7, IPv4Address("239.2.2.2"), 0, IPv4Address("10.200.3.1"), b"\x02" * 6, 4, protocol=IPPROTO_ESP)
    assert pack_output(out)[4:8].hex(" ") == "04 32 00 00"
    for bad in (
        lambda: pack_rule_key(3, IPv4Address("239.1.1.1"), 5001, IPPROTO_ESP),
        lambda: pack_rule_key(3, IPv6Address("ff3e::1"), 0, IPPROTO_ESP),
        lambda: pack_rule_key(3, IPv4Address("239.1.1.1"), 5001, 6),
        lambda: OutputEntry(7, IPv4Address("239.2.2.2"), 9, IPv4Address("10.0.0.1"), b"\x02" * 6, protocol=50),
        lambda: OutputEntry(7, IPv6Address("ff3e::2"), 0, IPv6Address("fd00::1"), b"\x02" * 6, protocol=50),
        lambda: OutputEntry(7, IPv4Address("239.2.2.2"), 9, IPv4Address("10.0.0.1"), b"\x02" * 6, protocol=6),
    ):
        with pytest.raises(ValueError):
            bad()


def test_rule_key_layout_ipv6() -> None:
    group = IPv6Address("ff3e::1:5")
    key = pack_rule_key(3, group, 5001)
    assert key == bytes([3, 0, 0, 0]) + group.packed + bytes.fromhex("1389 0000")
    assert pack_group_key(3, group) == key[:20]
    assert rule_maps(6) == (MapName.RULES6, MapName.GROUPS6) and rule_maps(4) == (MapName.RULES, MapName.GROUPS)
    assert pack_rule_value(5, 3, version=6) == bytes.fromhex("05000000 03000000") + bytes(32)
    source = IPv6Network("fd00:200:1::/48")
    value = pack_rule_value(5, 3, source, version=6)
    assert value[8:24] == source.network_address.packed
    assert value[24:40] == bytes.fromhex("ffffffffffff") + bytes(10)
    with pytest.raises(ValueError, match="not IPv6"):
        pack_rule_value(5, 3, IPv4Network("10.0.0.0/8"), version=6)


def test_output_value_layout() -> None:
    out = OutputEntry(7, IPv4Address("239.2.2.2"), 6001, IPv4Address("10.200.3.1"), bytes.fromhex("020000000001"), 4)
    raw = pack_output(out)
    assert len(raw) == OUTPUT_VALUE.size == 56
    assert raw[:28].hex(" ") == "07 00 00 00 04 11 17 71 0a c8 03 01 ef 02 02 02 01 00 5e 02 02 02 02 00 00 00 00 01"
    # the addresses' 16-bit one's complement sum, as the program's raw loads see it: 0x0ac8 + 0x0301 + 0xef02 + 0x0202
    raw_sum = int.from_bytes((0x0AC8 + 0x0301 + 0xEF02 + 0x0202).to_bytes(2, "big"), sys.byteorder)
    assert raw[28:32] == raw_sum.to_bytes(4, sys.byteorder) and raw[32:] == bytes(24)


def test_output_value_layout_ipv6() -> None:
    group, source = IPv6Address("ff3e::2:6"), IPv6Address("fd00:200:3::1")
    raw = pack_output(OutputEntry(7, group, 6001, source, bytes.fromhex("020000000001"), 9))
    assert len(raw) == OUTPUT6_VALUE.size == 56
    assert raw[:8].hex(" ") == "07 00 00 00 09 00 17 71"  # ifindex, hop limit, 0, port
    assert raw[8:40] == source.packed + group.packed
    assert raw[40:52].hex(" ") == "33 33 00 02 00 06 02 00 00 00 00 01"  # 33:33 + the group's low 32 bits
    words = source.packed + group.packed  # their 16-bit one's complement sum, as the program's raw loads see it
    total = sum(int.from_bytes(words[i : i + 2], "big") for i in range(0, 32, 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    raw_sum = int.from_bytes(total.to_bytes(2, "big"), sys.byteorder)  # (byte order independence, RFC 1071)
    assert raw[52:] == raw_sum.to_bytes(4, sys.byteorder) and raw_sum != 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ifindex": 0},
        {"port": 0},
        {"ttl": 0},
        {"ttl": 256},
        {"src_mac": b"\0" * 5},
        {"group": IPv4Address("10.1.1.1")},  # unicast needs a destination MAC
        {"group": IPv6Address("ff3e::1")},  # a source of the other family
    ],
)
def test_bad_outputs_are_rejected(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "ifindex": 2,
        "group": IPv4Address("239.2.2.2"),
        "port": 6001,
        "source": IPv4Address("10.0.0.1"),
        "src_mac": b"\x02" * 6,
    }
    with pytest.raises(ValueError):
        OutputEntry(**{**base, **kwargs})  # type: ignore[arg-type]


def test_unicast_output_with_a_destination_mac() -> None:
    out = OutputEntry(2, IPv4Address("10.1.1.1"), 9, IPv4Address("10.0.0.1"), b"\x02" * 6, dst_mac=b"\x04" * 6)
    assert pack_output(out)[16:22] == b"\x04" * 6


# ------------------------------------------------------------------------------------------ rate limits


def test_limit_value_layout() -> None:
    from mcr.kernel.program import LIMIT_VALUE, pack_limit
    from mcr.model.ratelimit import BucketParams

    assert pack_limit(None) == bytes(LIMIT_VALUE.size) == bytes(40)  # divisor 0: no limit
    raw = pack_limit(BucketParams(per_packet=1_000_000_000, per_byte=0, divisor=500, burst_ns=100_000_000))
    assert LIMIT_VALUE.unpack(raw) == (0, 100_000_000, 1_000_000_000, 0, 500)  # tat 0: the bucket starts full


def test_the_bucket_is_updated_by_compare_and_exchange(program: Program) -> None:
    """The bucket's tat is written by a 64-bit BPF_CMPXCHG (one word shared by every CPU), retried a
    bounded number of times, unrolled; the clock is read once per frame."""
    from mcr.kernel.asm import ATOMIC_CMPXCHG, MODE_ATOMIC, Size
    from mcr.kernel.program import CMPXCHG_TRIES

    insns = program.insns
    atomics = [i for i in insns if i.code == Cls.STX | MODE_ATOMIC | Size.DW]
    assert len(atomics) == 3 * CMPXCHG_TRIES  # one copy per family (IPv4 UDP, ESP, IPv6)
    assert all(i.imm == ATOMIC_CMPXCHG and i.off == 0 and i.dst == Reg.R7 for i in atomics)
    clock = [pc for pc, i in enumerate(insns) if i.code == Cls.JMP | JmpOp.CALL and i.imm == Helper.KTIME_GET_NS]
    assert len(clock) == 3
    assert program.labels["esp4"] < clock[1] < program.labels["loope"]
    assert program.labels["parse6"] < clock[2] < program.labels["loop6"]
    lookups = {name for _, name in program.maps}
    assert MapName.LIMITS.value in lookups
