"""The kernel engine's tc program, generated here as eBPF instructions, and its map layouts (pure: no I/O).

The program runs at tc ingress (tcx or clsact) of an input interface, once for every frame:

1. Parse Ethernet / IPv4 / UDP with direct packet access and the verifier's bounds checks. IP options are
   fine (the UDP offset is 14 + IHL*4, IHL masked to 4 bits). When the headers are not all in the linear
   part of the skb, `bpf_skb_pull_data` pulls them in once and the parse starts again.
2. Anything that is not IPv4/UDP passes untouched, and so does a frame with a VLAN tag (it belongs to the
   VLAN interface on top of this one). Packets to a configured (ingress interface, group) that
   cannot be relayed (fragment, not UDP, bad IP header, truncated, bad UDP length, no rule for the port)
   pass untouched too, and are counted per reason in `drops`.
3. Look up `rules` with (ingress ifindex, IPv4 destination, UDP destination port): (rule slot, output
   count, source network, netmask). No rule, or an IPv4 source outside the rule's network (a zero mask
   takes every source): pass, counted as `no_rule`. A rule with a rate limit has a token bucket in
   `limits[slot]`, in the GCRA form of `mcr.model.ratelimit` (one u64 "theoretical arrival time" shared
   by every CPU, `bpf_ktime_get_ns` for the clock): the program computes the new value and installs it
   with one BPF_CMPXCHG, retried with the value another CPU left (at most `CMPXCHG_TRIES` times, then the
   frame counts as over the limit). A frame over the limit is not relayed; it is counted in the rule's
   `rate_limited` counter and in `drops`, and passes untouched like every frame that is not relayed.
4. Save the original header bytes on the stack (MAC addresses; IP TTL..destination; the UDP header), then
   for each output i < count (at most `max_outputs`, a bounded loop the verifier walks once per
   iteration): read `outputs[slot * max_outputs + i]`, rewrite the frame in place with
   `bpf_skb_store_bytes` (MACs, TTL, source and destination address, UDP destination port), fix the IPv4
   header checksum with `bpf_l3_csum_replace` and the UDP checksum with `bpf_l4_csum_replace`
   (BPF_F_PSEUDO_HDR for the addresses, BPF_F_MARK_MANGLED_0 so a zero "no checksum" stays zero), each
   computed from the values the previous output left in the frame, then `bpf_clone_redirect` the frame to
   the output interface's egress.
5. Store the saved bytes back (with BPF_F_RECOMPUTE_CSUM for the IP and UDP parts, so that skb->csum of a
   CHECKSUM_COMPLETE skb stays right; the MAC header is not covered by it) and let the original frame go on
   to the local stack unchanged.

Counters live in per-CPU arrays: per rule slot (packets, UDP payload bytes, frames over the rate limit), per
output (packets, bytes, errors: any non-zero return of bpf_clone_redirect, which is a negative errno or
NET_XMIT_DROP, and any failed rewrite), and per drop reason. Nothing is retried and nothing blocks another output.

Byte order: values copied between the frame, the stack and the maps are raw memory images (a 16-bit load
of the frame yields the same bits the checksum helpers expect), so only the length fields are converted.
Comparisons with protocol constants use the host's view of the network-order bytes (`_raw16`).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network
from typing import Final, Literal

from mcr.kernel.abi import TC_ACT_SHOT, TC_ACT_UNSPEC, CsumFlag, MapType, SkbOffset, StoreFlag
from mcr.kernel.asm import (
    AluOp,
    Assembler,
    Helper,
    Insn,
    JmpOp,
    Program,
    Reg,
    Size,
    atomic_cmpxchg64,
    endian_be,
    ldx,
    mov64_imm,
    mov64_reg,
    st_imm,
    stx,
)
from mcr.kernel.asm import alu64_imm as alu
from mcr.kernel.asm import alu64_reg as alu_reg
from mcr.model.ratelimit import BucketParams
from mcr.packet.build import multicast_mac
from mcr.packet.parse import DropReason

__all__ = [
    "DEFAULT_MAX_OUTPUTS",
    "DEFAULT_MAX_RULES",
    "LIMIT_VALUE",
    "MAP_NAMES",
    "MAX_OUTPUTS_LIMIT",
    "OUTPUT_STATS",
    "OUTPUT_VALUE",
    "RULE_STATS",
    "RULE_VALUE",
    "MapName",
    "MapSpec",
    "OutputEntry",
    "build_relay_program",
    "map_specs",
    "pack_group_key",
    "pack_limit",
    "pack_output",
    "pack_rule_key",
    "pack_rule_value",
    "relay_program",
]

DEFAULT_MAX_OUTPUTS: Final = 64
DEFAULT_MAX_RULES: Final = 256
# The verifier walks the output loop once per possible iteration, about 600 instructions each (64 outputs:
# 38,600 processed; 256: 161,500); 512 stays well inside its limit of 1,000,000.
MAX_OUTPUTS_LIMIT: Final = 512
ETH_HLEN: Final = 14
ETH_P_IP: Final = 0x0800
IPPROTO_UDP: Final = 17
_MAX_HEADERS: Final = ETH_HLEN + 60 + 8  # pulled into the linear area when the headers are not there

# frame offsets (Ethernet header included: at tc, skb->data is the MAC header)
_ETHERTYPE = 12
_IP = ETH_HLEN
_IP_TOTAL = _IP + 2
_IP_FRAG = _IP + 6
_IP_TTL = _IP + 8
_IP_PROTO = _IP + 9
_IP_CSUM = _IP + 10
_IP_SRC = _IP + 12
_IP_DST = _IP + 16

# stack slots (offsets from the frame pointer, aligned to their access size)
_SAVE_MAC = -16  # 12 bytes: destination and source MAC of the original frame
_SAVE_IP = -32  # 12 bytes: TTL, protocol, checksum, source, destination
_SAVE_UDP = -40  # 8 bytes: the original UDP header
_KEY = -56  # 12 bytes: rule key; its first 8 bytes are the group key
_CUR = -72  # 12 bytes: the header values now in the frame, laid out like output value bytes 4..15
_UDP_OFF = -80  # u64: offset of the UDP header in the frame
_PAYLOAD = -88  # u64: UDP payload length
_SLOT = -96  # u64: rule slot
_COUNT = -104  # u64: number of outputs (clamped)
_IDX = -112  # u32: array map key
_PORT_FLAGS = -120  # u64: flags for storing the UDP port (see below)

# rate limit value layout (40 bytes), see `pack_limit` and `mcr.model.ratelimit`
_LIM_TAT = 0  # u64: theoretical arrival time (ns, bpf_ktime_get_ns clock); 0: the bucket is full
_LIM_BURST = 8  # u64: how far ahead of now `tat` may run
_LIM_PER_PACKET = 16  # u64: a frame costs (per_packet + payload * per_byte) / divisor ns
_LIM_PER_BYTE = 24
_LIM_DIVISOR = 32  # u64: 0 means no limit
CMPXCHG_TRIES: Final = 4

# output value layout (32 bytes), see `pack_output`
_OUT_IFINDEX = 0
_OUT_TTL = 4  # TTL, protocol, then the UDP destination port: the same 4 bytes as _CUR + 0
_OUT_PORT = 6
_OUT_SRC = 8
_OUT_DST = 12
_OUT_MACS = 16  # destination MAC then source MAC, as in the Ethernet header

RULE_KEY: Final = struct.Struct("=I4s2sH")  # ingress ifindex, group (network order), port (network order), 0
GROUP_KEY: Final = struct.Struct("=I4s")  # ingress ifindex, group
RULE_VALUE: Final = struct.Struct("=II4s4s")  # slot, output count, source network and netmask (network order)
OUTPUT_VALUE: Final = struct.Struct("=IBB2s4s4s6s6sI")
RULE_STATS: Final = struct.Struct("=QQQ")  # packets, payload bytes, frames over the rate limit
OUTPUT_STATS: Final = struct.Struct("=QQQ")  # packets, payload bytes, errors
DROP_STATS: Final = struct.Struct("=Q")
LIMIT_VALUE: Final = struct.Struct("=QQQQQ")  # tat, burst_ns, per_packet, per_byte, divisor


class MapName(StrEnum):
    RULES = "rules"
    GROUPS = "groups"
    OUTPUTS = "outputs"
    RULE_STATS = "rule_stats"
    OUTPUT_STATS = "out_stats"
    DROPS = "drops"
    LIMITS = "limits"


MAP_NAMES: Final = tuple(m.value for m in MapName)


@dataclass(frozen=True, slots=True)
class MapSpec:
    name: str
    type: MapType
    key_size: int
    value_size: int
    max_entries: int


def map_specs(max_rules: int = DEFAULT_MAX_RULES, max_outputs: int = DEFAULT_MAX_OUTPUTS) -> tuple[MapSpec, ...]:
    """The maps the program uses, sized for `max_rules` slots of `max_outputs` outputs."""
    _check_limits(max_rules, max_outputs)
    n_out = max_rules * max_outputs
    return (
        MapSpec(MapName.RULES.value, MapType.HASH, RULE_KEY.size, RULE_VALUE.size, max_rules),
        MapSpec(MapName.GROUPS.value, MapType.HASH, GROUP_KEY.size, 4, max_rules),
        MapSpec(MapName.OUTPUTS.value, MapType.ARRAY, 4, OUTPUT_VALUE.size, n_out),
        MapSpec(MapName.RULE_STATS.value, MapType.PERCPU_ARRAY, 4, RULE_STATS.size, max_rules),
        MapSpec(MapName.OUTPUT_STATS.value, MapType.PERCPU_ARRAY, 4, OUTPUT_STATS.size, n_out),
        MapSpec(MapName.DROPS.value, MapType.PERCPU_ARRAY, 4, DROP_STATS.size, len(DropReason)),
        MapSpec(MapName.LIMITS.value, MapType.ARRAY, 4, LIMIT_VALUE.size, max_rules),
    )


def _check_limits(max_rules: int, max_outputs: int) -> None:
    if not 1 <= max_outputs <= MAX_OUTPUTS_LIMIT:
        raise ValueError(f"max_outputs must be 1..{MAX_OUTPUTS_LIMIT}, not {max_outputs}")
    if not 1 <= max_rules <= 65536:
        raise ValueError(f"max_rules must be 1..65536, not {max_rules}")


# ------------------------------------------------------------------------------------------ map values


def pack_rule_key(ifindex: int, group: IPv4Address, port: int) -> bytes:
    return RULE_KEY.pack(ifindex, group.packed, port.to_bytes(2, "big"), 0)


def pack_group_key(ifindex: int, group: IPv4Address) -> bytes:
    return GROUP_KEY.pack(ifindex, group.packed)


def pack_rule_value(slot: int, count: int, source: IPv4Network | None = None) -> bytes:
    """A rule's value; a source (host or prefix) limits it to packets whose IPv4 source lies in it (no
    source: network and mask 0, which every source matches)."""
    if source is None:
        return RULE_VALUE.pack(slot, count, bytes(4), bytes(4))
    return RULE_VALUE.pack(slot, count, source.network_address.packed, source.netmask.packed)


def pack_limit(params: BucketParams | None) -> bytes:
    """A slot's token bucket, full (tat 0); None: no limit."""
    if params is None:
        return bytes(LIMIT_VALUE.size)
    return LIMIT_VALUE.pack(0, params.burst_ns, params.per_packet, params.per_byte, params.divisor)


@dataclass(frozen=True, slots=True)
class OutputEntry:
    """What one output rewrites: the frame leaves `ifindex` with these addresses, port and TTL."""

    ifindex: int
    group: IPv4Address
    port: int
    source: IPv4Address
    src_mac: bytes
    ttl: int = 1
    dst_mac: bytes | None = None  # None: the group's multicast MAC (01:00:5e + low 23 bits)

    def __post_init__(self) -> None:
        if self.ifindex <= 0:
            raise ValueError(f"bad output ifindex {self.ifindex}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"bad output port {self.port}")
        if not 1 <= self.ttl <= 255:
            raise ValueError(f"bad TTL {self.ttl}")
        if len(self.src_mac) != 6 or (self.dst_mac is not None and len(self.dst_mac) != 6):
            raise ValueError("MAC addresses are 6 bytes")
        if self.dst_mac is None and not self.group.is_multicast:
            raise ValueError(f"{self.group} is not multicast: give the destination MAC")

    @property
    def destination_mac(self) -> bytes:
        return self.dst_mac if self.dst_mac is not None else multicast_mac(self.group)


def pack_output(out: OutputEntry) -> bytes:
    return OUTPUT_VALUE.pack(
        out.ifindex,
        out.ttl,
        IPPROTO_UDP,
        out.port.to_bytes(2, "big"),
        out.source.packed,
        out.group.packed,
        out.destination_mac,
        out.src_mac,
        0,
    )


# ------------------------------------------------------------------------------------------ the program


def _raw16(value: int, byteorder: Literal["little", "big"]) -> int:
    """What a 16-bit load of the network-order bytes of `value` yields on a host of `byteorder`."""
    return int.from_bytes(value.to_bytes(2, "big"), byteorder)


def relay_program(
    max_outputs: int = DEFAULT_MAX_OUTPUTS,
    *,
    pass_verdict: int = TC_ACT_UNSPEC,
    byteorder: Literal["little", "big"] = sys.byteorder,
) -> Program:
    """The relay program with symbolic map references (see `MapName`); link it with the map fds.

    `pass_verdict` is returned for every frame that goes on to the stack: TC_ACT_UNSPEC (TCX_NEXT) lets
    other tc programs on the interface see it too; TC_ACT_OK (TCX_PASS) would end the chain here.
    """
    _check_limits(1, max_outputs)
    a = Assembler()
    r0, r1, r2, r3, r4, r5 = Reg.R0, Reg.R1, Reg.R2, Reg.R3, Reg.R4, Reg.R5
    ctx, r7, r8, r9, fp = Reg.R6, Reg.R7, Reg.R8, Reg.R9, Reg.FP

    def lookup(map_name: MapName, key_slot: int) -> None:
        a.ld_map(r1, map_name.value)
        a.emit(mov64_reg(r2, fp), alu(AluOp.ADD, r2, key_slot))
        a.call(Helper.MAP_LOOKUP_ELEM)

    def bump(src: Reg, off: int, amount: Reg | None = None) -> None:
        """*(u64 *)(src + off) += amount (or 1). Per-CPU values: no other writer."""
        a.emit(ldx(Size.DW, r1, src, off))
        if amount is None:
            a.emit(alu(AluOp.ADD, r1, 1))
        else:
            a.emit(alu_reg(AluOp.ADD, r1, amount))
        a.emit(stx(Size.DW, src, off, r1))

    def store_bytes(at: int, src: Reg, src_off: int, length: int, flags: int | None, *, udp: bool = False) -> None:
        """bpf_skb_store_bytes(skb, at (+ UDP offset), src + src_off, length, flags); r9 |= result.

        `flags` None: the port flags computed from the frame's UDP checksum.
        """
        a.emit(mov64_reg(r1, ctx))
        if udp:
            a.emit(ldx(Size.DW, r2, fp, _UDP_OFF), alu(AluOp.ADD, r2, at))
        else:
            a.emit(mov64_imm(r2, at))
        a.emit(mov64_reg(r3, src), alu(AluOp.ADD, r3, src_off), mov64_imm(r4, length))
        a.emit(ldx(Size.DW, r5, fp, _PORT_FLAGS) if flags is None else mov64_imm(r5, flags))
        a.call(Helper.SKB_STORE_BYTES)
        a.emit(alu_reg(AluOp.OR, r9, r0))

    def csum(helper: Helper, size: Size, cur_off: int, new_off: int, flags: int) -> None:
        """helper(skb, checksum offset, current value, new value, flags); r9 |= result."""
        a.emit(mov64_reg(r1, ctx))
        if helper == Helper.L3_CSUM_REPLACE:
            a.emit(mov64_imm(r2, _IP_CSUM))
        else:
            a.emit(ldx(Size.DW, r2, fp, _UDP_OFF), alu(AluOp.ADD, r2, 6))
        a.emit(ldx(size, r3, fp, _CUR + cur_off), ldx(size, r4, r7, new_off), mov64_imm(r5, flags))
        a.call(helper)
        a.emit(alu_reg(AluOp.OR, r9, r0))

    def restore() -> None:
        """Store the saved header bytes back; r9 != 0 when any store failed."""
        a.emit(mov64_imm(r9, 0))
        store_bytes(0, fp, _SAVE_MAC, 12, 0)
        store_bytes(_IP_TTL, fp, _SAVE_IP, 12, StoreFlag.RECOMPUTE_CSUM)
        store_bytes(0, fp, _SAVE_UDP, 8, StoreFlag.RECOMPUTE_CSUM, udp=True)

    ip4 = _raw16(ETH_P_IP, byteorder)
    frag_mask = _raw16(0x3FFF, byteorder)
    l4_addr = CsumFlag.SIZE_4 | CsumFlag.PSEUDO_HDR | CsumFlag.MARK_MANGLED_0
    l4_port = CsumFlag.SIZE_2 | CsumFlag.MARK_MANGLED_0

    # ---- parse
    a.emit(mov64_reg(ctx, r1), mov64_imm(r9, 0))  # r9: headers already pulled into the linear area
    a.label("parse")
    # A VLAN tag (always moved out of the frame into the skb before tc ingress) means the frame belongs to
    # the VLAN interface, not to this one: relaying it would also carry the tag to the outputs.
    a.emit(ldx(Size.W, r2, ctx, SkbOffset.VLAN_PRESENT))
    a.jump(JmpOp.JNE, r2, 0, "pass")
    a.emit(ldx(Size.W, r2, ctx, SkbOffset.DATA), ldx(Size.W, r3, ctx, SkbOffset.DATA_END))
    a.emit(mov64_reg(r4, r2), alu(AluOp.ADD, r4, ETH_HLEN))
    a.jump_reg(JmpOp.JGT, r4, r3, "pass")
    a.emit(ldx(Size.H, r5, r2, _ETHERTYPE))
    a.jump(JmpOp.JNE, r5, ip4, "pass")
    a.emit(mov64_reg(r4, r2), alu(AluOp.ADD, r4, _IP + 20))
    a.jump_reg(JmpOp.JGT, r4, r3, "short_ip")
    a.emit(ldx(Size.W, r5, ctx, SkbOffset.INGRESS_IFINDEX), stx(Size.W, fp, _KEY, r5))
    a.emit(ldx(Size.W, r5, r2, _IP_DST), stx(Size.W, fp, _KEY + 4, r5))
    a.emit(ldx(Size.B, r5, r2, _IP), mov64_reg(r4, r5), alu(AluOp.AND, r4, 0xF0))
    a.jump(JmpOp.JNE, r4, 0x40, "drop_bad_ip")
    a.emit(alu(AluOp.AND, r5, 0x0F))
    a.jump(JmpOp.JLT, r5, 5, "drop_bad_ip")
    a.emit(alu(AluOp.LSH, r5, 2))  # r5: IP header length, 20..60
    a.emit(ldx(Size.H, r4, r2, _IP_TOTAL), endian_be(r4, 16))  # r4: IP total length
    a.jump_reg(JmpOp.JLT, r4, r5, "drop_bad_ip")
    a.emit(ldx(Size.W, r0, ctx, SkbOffset.LEN), mov64_reg(r1, r4), alu(AluOp.ADD, r1, ETH_HLEN))
    a.jump_reg(JmpOp.JGT, r1, r0, "drop_truncated")
    a.emit(ldx(Size.H, r0, r2, _IP_FRAG), alu(AluOp.AND, r0, frag_mask))
    a.jump(JmpOp.JNE, r0, 0, "drop_fragment")
    a.emit(ldx(Size.B, r0, r2, _IP_PROTO))
    a.jump(JmpOp.JNE, r0, IPPROTO_UDP, "drop_not_udp")
    a.emit(mov64_reg(r1, r5), alu(AluOp.ADD, r1, 8))
    a.jump_reg(JmpOp.JGT, r1, r4, "drop_truncated")
    a.emit(mov64_reg(r7, r5), alu(AluOp.ADD, r7, ETH_HLEN))  # r7: UDP offset, 34..74
    a.emit(mov64_reg(r1, r2), alu_reg(AluOp.ADD, r1, r7))  # r1: UDP header
    a.emit(mov64_reg(r0, r1), alu(AluOp.ADD, r0, 8))
    a.jump_reg(JmpOp.JGT, r0, r3, "short_udp")
    a.emit(ldx(Size.H, r0, r1, 4), endian_be(r0, 16))  # UDP length
    a.jump(JmpOp.JLT, r0, 8, "drop_bad_udp")
    a.emit(alu_reg(AluOp.SUB, r4, r5))
    a.jump_reg(JmpOp.JGT, r0, r4, "drop_bad_udp")
    a.emit(alu(AluOp.ADD, r0, -8), stx(Size.DW, fp, _PAYLOAD, r0), stx(Size.DW, fp, _UDP_OFF, r7))
    a.emit(ldx(Size.H, r0, r1, 2), stx(Size.H, fp, _KEY + 8, r0), st_imm(Size.H, fp, _KEY + 10, 0))
    # With a UDP checksum, the checksum helpers balance the port change inside the UDP header, so skb->csum
    # (CHECKSUM_COMPLETE) stays right. A zero checksum stays zero (MARK_MANGLED_0) and balances nothing:
    # then the port store itself must update skb->csum.
    a.emit(mov64_imm(r4, 0), ldx(Size.H, r0, r1, 6))
    a.jump(JmpOp.JNE, r0, 0, "port_flags")
    a.emit(mov64_imm(r4, StoreFlag.RECOMPUTE_CSUM))
    a.label("port_flags")
    a.emit(stx(Size.DW, fp, _PORT_FLAGS, r4))
    # the original header bytes, and the values the rewrites start from
    a.emit(ldx(Size.DW, r0, r2, 0), stx(Size.DW, fp, _SAVE_MAC, r0))
    a.emit(ldx(Size.W, r0, r2, 8), stx(Size.W, fp, _SAVE_MAC + 8, r0))
    for i in range(3):
        a.emit(ldx(Size.W, r0, r2, _IP_TTL + 4 * i), stx(Size.W, fp, _SAVE_IP + 4 * i, r0))
    a.emit(ldx(Size.DW, r0, r1, 0), stx(Size.DW, fp, _SAVE_UDP, r0))
    a.emit(ldx(Size.H, r0, r2, _IP_TTL), stx(Size.H, fp, _CUR, r0))
    a.emit(ldx(Size.H, r0, r1, 2), stx(Size.H, fp, _CUR + 2, r0))
    a.emit(ldx(Size.W, r0, r2, _IP_SRC), stx(Size.W, fp, _CUR + 4, r0))
    a.emit(ldx(Size.W, r0, r2, _IP_DST), stx(Size.W, fp, _CUR + 8, r0))

    # ---- rule
    lookup(MapName.RULES, _KEY)
    a.jump(JmpOp.JEQ, r0, 0, "drop_no_rule")
    a.emit(ldx(Size.W, r1, r0, 0), ldx(Size.W, r2, r0, 4))
    # the rule's source filter: (source & netmask) == network, all raw network-order images
    a.emit(ldx(Size.W, r3, r0, 12), ldx(Size.W, r4, fp, _CUR + 4), alu_reg(AluOp.AND, r4, r3))
    a.emit(ldx(Size.W, r3, r0, 8))
    a.jump_reg(JmpOp.JNE, r4, r3, "drop_no_rule")
    a.jump(JmpOp.JLE, r2, max_outputs, "count_ok")
    a.emit(mov64_imm(r2, max_outputs))
    a.label("count_ok")
    a.emit(stx(Size.DW, fp, _SLOT, r1), stx(Size.DW, fp, _COUNT, r2), stx(Size.W, fp, _IDX, r1))

    # ---- rate limit: r7 the bucket, r8 now, r9 this frame's cost, r1 the tat last read
    lookup(MapName.LIMITS, _IDX)
    a.jump(JmpOp.JEQ, r0, 0, "admitted")
    a.emit(mov64_reg(r7, r0), ldx(Size.DW, r3, r7, _LIM_DIVISOR))
    a.jump(JmpOp.JEQ, r3, 0, "admitted")
    a.emit(ldx(Size.DW, r1, r7, _LIM_PER_BYTE), ldx(Size.DW, r2, fp, _PAYLOAD), alu_reg(AluOp.MUL, r1, r2))
    a.emit(ldx(Size.DW, r2, r7, _LIM_PER_PACKET), alu_reg(AluOp.ADD, r1, r2), alu_reg(AluOp.DIV, r1, r3))
    a.emit(mov64_reg(r9, r1))
    a.call(Helper.KTIME_GET_NS)
    a.emit(mov64_reg(r8, r0), ldx(Size.DW, r1, r7, _LIM_TAT))
    for attempt in range(CMPXCHG_TRIES):  # unrolled: no loop for the verifier to walk
        a.emit(mov64_reg(r2, r1))
        a.jump_reg(JmpOp.JGE, r2, r8, f"tat_ahead_{attempt}")
        a.emit(mov64_reg(r2, r8))  # r2 = max(tat, now)
        a.label(f"tat_ahead_{attempt}")
        a.emit(alu_reg(AluOp.ADD, r2, r9), mov64_reg(r3, r2), alu_reg(AluOp.SUB, r3, r8))
        a.emit(ldx(Size.DW, r4, r7, _LIM_BURST))
        a.jump_reg(JmpOp.JGT, r3, r4, "rate_limited")
        a.emit(mov64_reg(r0, r1), atomic_cmpxchg64(r7, _LIM_TAT, r2))
        a.jump_reg(JmpOp.JEQ, r0, r1, "admitted")
        a.emit(mov64_reg(r1, r0))  # another CPU moved it first: try again from its value
    a.goto("rate_limited")

    a.label("admitted")
    lookup(MapName.RULE_STATS, _IDX)
    a.jump(JmpOp.JEQ, r0, 0, "rule_counted")
    a.emit(mov64_reg(r7, r0), ldx(Size.DW, r2, fp, _PAYLOAD))
    bump(r7, 0)
    bump(r7, 8, r2)
    a.label("rule_counted")
    a.emit(ldx(Size.DW, r1, fp, _COUNT))
    a.jump(JmpOp.JEQ, r1, 0, "pass")
    a.emit(mov64_imm(r8, 0))  # r8: output index

    # ---- outputs
    a.label("loop")
    a.jump(JmpOp.JGE, r8, max_outputs, "restore")
    a.emit(ldx(Size.DW, r1, fp, _COUNT))
    a.jump_reg(JmpOp.JGE, r8, r1, "restore")
    a.emit(ldx(Size.DW, r1, fp, _SLOT), alu(AluOp.MUL, r1, max_outputs), alu_reg(AluOp.ADD, r1, r8))
    a.emit(stx(Size.W, fp, _IDX, r1))
    lookup(MapName.OUTPUTS, _IDX)
    a.jump(JmpOp.JEQ, r0, 0, "next")
    a.emit(mov64_reg(r7, r0))  # r7: the output entry
    a.emit(mov64_imm(r9, 0))  # r9: OR of every helper result
    store_bytes(0, r7, _OUT_MACS, 12, 0)
    csum(Helper.L3_CSUM_REPLACE, Size.H, 0, _OUT_TTL, CsumFlag.SIZE_2)  # TTL with the protocol byte
    for cur_off, new_off in ((4, _OUT_SRC), (8, _OUT_DST)):
        csum(Helper.L3_CSUM_REPLACE, Size.W, cur_off, new_off, CsumFlag.SIZE_4)
        csum(Helper.L4_CSUM_REPLACE, Size.W, cur_off, new_off, l4_addr)
    csum(Helper.L4_CSUM_REPLACE, Size.H, 2, _OUT_PORT, l4_port)
    store_bytes(_IP_TTL, r7, _OUT_TTL, 1, 0)
    store_bytes(_IP_SRC, r7, _OUT_SRC, 8, 0)  # source and destination
    store_bytes(2, r7, _OUT_PORT, 2, None, udp=True)
    for off in (0, 4, 8):  # the frame now holds this output's values
        a.emit(ldx(Size.W, r1, r7, _OUT_TTL + off), stx(Size.W, fp, _CUR + off, r1))
    a.jump(JmpOp.JNE, r9, 0, "rewrite_failed")
    a.emit(mov64_reg(r1, ctx), ldx(Size.W, r2, r7, _OUT_IFINDEX), mov64_imm(r3, 0))
    a.call(Helper.CLONE_REDIRECT)
    a.emit(mov64_reg(r9, r0))
    a.label("count_output")
    lookup(MapName.OUTPUT_STATS, _IDX)
    a.jump(JmpOp.JEQ, r0, 0, "next")
    a.emit(mov64_reg(r7, r0))
    a.jump(JmpOp.JNE, r9, 0, "output_error")
    a.emit(ldx(Size.DW, r2, fp, _PAYLOAD))
    bump(r7, 0)
    bump(r7, 8, r2)
    a.goto("next")
    a.label("output_error")
    bump(r7, 16)
    a.label("next")
    a.emit(alu(AluOp.ADD, r8, 1))
    a.goto("loop")

    a.label("rewrite_failed")  # back to the original frame, count an error, go on with the next output
    restore()
    a.jump(JmpOp.JNE, r9, 0, "shot")
    a.emit(ldx(Size.H, r1, fp, _SAVE_IP), stx(Size.H, fp, _CUR, r1))
    a.emit(ldx(Size.H, r1, fp, _SAVE_UDP + 2), stx(Size.H, fp, _CUR + 2, r1))
    a.emit(ldx(Size.W, r1, fp, _SAVE_IP + 4), stx(Size.W, fp, _CUR + 4, r1))
    a.emit(ldx(Size.W, r1, fp, _SAVE_IP + 8), stx(Size.W, fp, _CUR + 8, r1))
    a.emit(mov64_imm(r9, 1))
    a.goto("count_output")

    a.label("restore")
    restore()
    a.jump(JmpOp.JNE, r9, 0, "shot")
    a.label("pass")
    a.emit(mov64_imm(r0, pass_verdict))
    a.exit()
    a.label("shot")  # the original frame could not be restored: never deliver a half-rewritten frame
    a.emit(mov64_imm(r0, TC_ACT_SHOT))
    a.exit()

    # ---- headers outside the linear area: pull them in once, then parse again
    a.label("short_ip")
    a.jump(JmpOp.JNE, r9, 0, "pass")
    a.goto("pull")
    a.label("short_udp")
    a.jump(JmpOp.JNE, r9, 0, "drop_truncated")
    a.label("pull")
    a.emit(mov64_imm(r9, 1), ldx(Size.W, r2, ctx, SkbOffset.LEN))
    a.jump(JmpOp.JLE, r2, _MAX_HEADERS, "pull_len")
    a.emit(mov64_imm(r2, _MAX_HEADERS))
    a.label("pull_len")
    a.emit(mov64_reg(r1, ctx))
    a.call(Helper.SKB_PULL_DATA)
    a.jump(JmpOp.JNE, r0, 0, "pass")
    a.goto("parse")

    # ---- drops: counted only for frames to a configured (ingress interface, group)
    for label, reason in (
        ("drop_bad_ip", DropReason.BAD_IP_HEADER),
        ("drop_truncated", DropReason.TRUNCATED),
        ("drop_fragment", DropReason.FRAGMENT),
        ("drop_not_udp", DropReason.NOT_UDP),
        ("drop_bad_udp", DropReason.BAD_UDP_LENGTH),
        ("drop_no_rule", DropReason.NO_RULE),
    ):
        a.label(label)
        a.emit(mov64_imm(r8, int(reason)))
        a.goto("count_drop")
    a.label("rate_limited")
    lookup(MapName.RULE_STATS, _IDX)
    a.jump(JmpOp.JEQ, r0, 0, "rate_limited_counted")
    bump(r0, 16)
    a.label("rate_limited_counted")
    a.emit(mov64_imm(r8, int(DropReason.RATE_LIMITED)))
    a.label("count_drop")
    lookup(MapName.GROUPS, _KEY)
    a.jump(JmpOp.JEQ, r0, 0, "pass")
    a.emit(stx(Size.W, fp, _IDX, r8))
    lookup(MapName.DROPS, _IDX)
    a.jump(JmpOp.JEQ, r0, 0, "pass")
    bump(r0, 0)
    a.goto("pass")
    return a.assemble()


def build_relay_program(
    map_fds: Mapping[str, int],
    max_outputs: int = DEFAULT_MAX_OUTPUTS,
    *,
    pass_verdict: int = TC_ACT_UNSPEC,
) -> list[Insn]:
    """The relay program linked to the file descriptors of its maps (keys: `MAP_NAMES`)."""
    return relay_program(max_outputs, pass_verdict=pass_verdict).link(map_fds)
