"""The kernel engine's tc program, generated here as eBPF instructions, and its map layouts (pure: no I/O).

The program runs at tc ingress (tcx or clsact) of an input interface, once for every frame:

1. Parse Ethernet / IPv4 / UDP with direct packet access and the verifier's bounds checks. IP options are
   fine (the UDP offset is 14 + IHL*4, IHL masked to 4 bits). When the headers are not all in the linear
   part of the skb, `bpf_skb_pull_data` pulls them in once and the parse starts again.
   Ethernet / IPv6 / UDP takes its own branch (see "IPv6" below).
2. Anything that is neither IPv4/UDP, IPv4/ESP nor IPv6/UDP passes untouched, and so does a frame with a VLAN tag (it
   belongs to the VLAN interface on top of this one). Packets to a configured (ingress interface, group) that
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
4. Save the original header bytes on the stack (MAC addresses; IP TTL..destination; the UDP header) and
   the 16-bit sums the checksums start from, then for each output i < count (at most `max_outputs`, a
   bounded loop the verifier walks once per iteration): read `outputs[slot * max_outputs + i]` and
   - update the UDP checksum with two `bpf_l4_csum_replace` calls by difference (size 0): the address
     pair's sum (BPF_F_PSEUDO_HDR; the output's sum is precomputed by `pack_output` in its entry) and the
     port (skipped when it does not change), both with
     BPF_F_MARK_MANGLED_0 so a zero "no checksum" stays zero. These stay helpers because only the kernel
     knows the skb's checksum state: they update skb->csum of a CHECKSUM_COMPLETE skb and the pseudo-header
     sum of a CHECKSUM_PARTIAL one correctly. A frame without a UDP checksum calls `bpf_csum_update` with
     the port's difference instead (a no-op unless CHECKSUM_COMPLETE);
   - compute the new IPv4 header checksum in the program, from the original header's (RFC 1624: the
     original checksum, TTL/protocol word and addresses out, the output's in), in 16-bit one's complement
     sums of raw loads, which give the right bits on either byte order;
   - write MACs, TTL, header checksum, addresses and port through packet pointers (direct packet access:
     the verifier's prologue unclones the skb at the start, and `bpf_clone_redirect` unclones it again
     after each clone, so these writes never reach a clone's data);
   then `bpf_clone_redirect` the frame to the output interface's egress. Per output that is three helper
   calls (two when the port stays the same) instead of the ten a rewrite by
   `bpf_skb_store_bytes` and the `*_csum_replace` helpers takes.
5. Write the saved bytes back the same way and give skb->csum (CHECKSUM_COMPLETE) back what the UDP
   checksum updates took from it with one `bpf_csum_update`; the MAC header is not covered by skb->csum
   and the IPv4 header's changes cancel in it. The original frame goes on to the local stack unchanged.

ESP (IP protocol 50, IPv4 only). An ESP rule's key is (ingress ifindex, group, port 0) with the key's last
16 bits set to 50 (UDP rules have 0 there), so a UDP datagram to port 0 never matches it. The parse is the
IPv4 one up to the protocol; then an IP payload shorter than the ESP header (SPI and sequence number, 8 bytes)
is a `truncated` drop, and the bytes counted are the whole IP payload. The same rule lookup, source filter,
rate limit and output loop follow (one more copy of them), with a rewrite that has no transport header to
touch: MACs, TTL, addresses and the header checksum (from the original's, as for UDP; the output entry's
protocol byte is 50) by direct writes, no helper call besides `bpf_clone_redirect`. The IPv4 header's
changes cancel in skb->csum, so neither the rewrite nor the restore calls `bpf_csum_update`. An ESP
output's port is 0.

IPv6 (an IPv6 rule has IPv6 outputs only: a rule that changes the family changes the header size, and
stays in userspace). The same steps, generated from the same code with the family's own maps, stack slots
and rewrite:

- The fixed header (40 bytes) is copied to the stack with `bpf_skb_load_bytes`, so the parse needs no pull;
  a frame too short for it passes uncounted. Its (ingress ifindex, destination) is looked up in `groups6`
  first: a frame to a group no rule has passes at once (neighbour discovery and MLD carry extension
  headers, and need no walk). Then exactly `mcr.packet.parse`'s checks, in its order: version 6, payload
  within the frame, the extension header walk (hop-by-hop, routing and destination options, at most
  `MAX_EXT_HEADERS`, each read with `bpf_skb_load_bytes` and never past the payload; a fragment header is a
  `fragment` drop, a header that is not walked or a ninth one `ext_header`, any other upper layer
  `not_udp`), the UDP header (also loaded to the stack) and its length. A zero UDP checksum ("none") is not
  valid in IPv6 (RFC 8200 8.1): `zero_udp_checksum`, in both engines. A frame that passes the parse and
  whose headers (up to the end of the UDP header) are not all in the linear area is pulled once, for the
  direct writes below (one that cannot be pulled passes uncounted, as for IPv4).
- `rules6`: (ingress ifindex, 16-byte group, port) -> (slot, output count, 16-byte source network and
  mask). Slots, `limits`, `rule_stats`, `outputs`, `out_stats` and `drops` are shared with IPv4: an
  `outputs` entry holds either family's layout (see `pack_output`).
- Per output: MACs; hop limit; source and destination; UDP port, written as for IPv4 by direct packet
  writes after the UDP checksum's helpers. IPv6 has no header checksum (and no UDP checksum of zero).
  The UDP checksum follows the addresses by difference of two 16-bit sums: the address sum it now
  stands for (the frame's, computed once per frame) and the output's (precomputed by `pack_output` in
  the output entry), through one `bpf_l4_csum_replace` (size 0, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0),
  and the port through another, skipped when the port does not change. For a CHECKSUM_COMPLETE skb the
  pseudo-header call takes the address difference off skb->csum: right for IPv4 (the UDP checksum field
  falls by that much, and the IPv4 header checksum balances the address bytes), not for IPv6, where the
  address bytes themselves rise by as much. So one `bpf_csum_update` gives it back, with the hop limit
  byte's difference (the port's is balanced inside the UDP header), and each clone leaves with
  skb->csum right for it (BPF_F_IPV6, Linux 6.16, would spare the address part only).
- The restore writes the saved bytes back (MACs, hop limit and addresses, the UDP header with its
  checksum) and calls `bpf_csum_update` once with the hop limit's difference: the restored addresses,
  port and UDP checksum balance each other in skb->csum.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
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
from mcr.packet.build import multicast_mac, multicast_mac6
from mcr.packet.parse import EXT_FRAGMENT, EXT_NOT_WALKED, EXT_WALKED, MAX_EXT_HEADERS, DropReason

__all__ = [
    "DEFAULT_MAX_OUTPUTS",
    "DEFAULT_MAX_RULES",
    "IPPROTO_ESP",
    "IPPROTO_UDP",
    "LIMIT_VALUE",
    "MAP_NAMES",
    "MAX_OUTPUTS_LIMIT",
    "OUTPUT6_VALUE",
    "OUTPUT_STATS",
    "OUTPUT_VALUE",
    "RULE6_VALUE",
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
    "rule_maps",
]

DEFAULT_MAX_OUTPUTS: Final = 64
DEFAULT_MAX_RULES: Final = 256
# The verifier walks each output loop (IPv4 UDP, ESP, IPv6) once per possible iteration, with the paths a
# rewrite can take (with or without a UDP checksum, a failed helper), about 3,100 instructions for the three
# together (64 outputs: 201,468 processed on Linux 6.18; 256: 793,384), inside its limit of 1,000,000.
MAX_OUTPUTS_LIMIT: Final = 256
ETH_HLEN: Final = 14
ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
IPPROTO_UDP: Final = 17
IPPROTO_ESP: Final = 50
ESP_HLEN: Final = 8  # SPI and sequence number
IPV6_HLEN: Final = 40
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
_IP6_HOP = _IP + 7  # hop limit, then source and destination (33 bytes)
_IP6_SRC = _IP + 8

# stack slots (offsets from the frame pointer, aligned to their access size)
_SAVE_MAC = -16  # 12 bytes: destination and source MAC of the original frame
_SAVE_IP = -32  # 12 bytes: TTL, protocol, checksum, source, destination
_SAVE_UDP = -40  # 8 bytes: the original UDP header
_KEY = -56  # 12 bytes: rule key; its first 8 bytes are the group key
_CUR = -72  # 12 bytes: the header values now in the frame, laid out like output value bytes 4..15 (IPv6: 4..7)
_UDP_OFF = -80  # u64: offset of the UDP header in the frame
_PAYLOAD = -88  # u64: UDP payload length
_SLOT = -96  # u64: rule slot
_COUNT = -104  # u64: number of outputs (clamped)
_IDX = -112  # u32: array map key
_PORT_FLAGS = -120  # u64: flags for storing the UDP port (see below)
# IPv6 only
_HDR6 = -160  # 40 bytes: the original IPv6 header
_KEY6 = -188  # 24 bytes: rule key (ifindex, group, port, 0); its first 20 bytes are the group key
_EXT = -240  # 2 bytes: next header and length of an extension header
_END6 = -248  # u64: offset of the end of the IPv6 payload in the frame
# 16-bit one's complement sums of raw 16-bit loads (the sum of byte-swapped words is the byte-swapped sum, so raw
# images give the right bits on either host order)
_ADDR_SUM = -256  # u64: the source + destination address sum the UDP checksum now stands for (either family)
_ORIG_SUM = -264  # u64: the original frame's address sum (either family)
_IP_BASE = -272  # u64: ~checksum + ~(TTL/protocol + addresses) of the original IPv4 header, unfolded

# rate limit value layout (40 bytes), see `pack_limit` and `mcr.model.ratelimit`
_LIM_TAT = 0  # u64: theoretical arrival time (ns, bpf_ktime_get_ns clock); 0: the bucket is full
_LIM_BURST = 8  # u64: how far ahead of now `tat` may run
_LIM_PER_PACKET = 16  # u64: a frame costs (per_packet + payload * per_byte) / divisor ns
_LIM_PER_BYTE = 24
_LIM_DIVISOR = 32  # u64: 0 means no limit
CMPXCHG_TRIES: Final = 4

# output value layouts (56 bytes, either family), see `pack_output`
_OUT_IFINDEX = 0
_OUT_TTL = 4  # TTL, protocol, then the UDP destination port: the same 4 bytes as _CUR + 0
_OUT_PORT = 6
_OUT_SRC = 8
_OUT_DST = 12
_OUT_MACS = 16  # destination MAC then source MAC, as in the Ethernet header
_OUT_SUM = 28  # u32: the 16-bit sum of the 8 address bytes as raw 16-bit loads (see `_raw_sum`)
_OUT6_HOP = 4  # hop limit, 0, port: the same 4 bytes as _CUR + 0
_OUT6_PORT = 6
_OUT6_SRC = 8  # source then destination, 32 bytes
_OUT6_MACS = 40
_OUT6_SUM = 52  # u32: the 16-bit sum of the 32 address bytes as raw 16-bit loads (see `_raw_sum`)

RULE_KEY: Final = struct.Struct("=I4s2sH")  # ingress ifindex, group, port (network order), 0 (UDP) or 50 (ESP)
GROUP_KEY: Final = struct.Struct("=I4s")  # ingress ifindex, group
RULE_VALUE: Final = struct.Struct("=II4s4s")  # slot, output count, source network and netmask (network order)
RULE6_KEY: Final = struct.Struct("=I16s2sH")
GROUP6_KEY: Final = struct.Struct("=I16s")
RULE6_VALUE: Final = struct.Struct("=II16s16s")
OUTPUT_VALUE: Final = struct.Struct("=IBB2s4s4s6s6sI24x")
OUTPUT6_VALUE: Final = struct.Struct("=IBx2s16s16s6s6sI")
RULE_STATS: Final = struct.Struct("=QQQ")  # packets, payload bytes, frames over the rate limit
OUTPUT_STATS: Final = struct.Struct("=QQQ")  # packets, payload bytes, errors
DROP_STATS: Final = struct.Struct("=Q")
LIMIT_VALUE: Final = struct.Struct("=QQQQQ")  # tat, burst_ns, per_packet, per_byte, divisor


class MapName(StrEnum):
    RULES = "rules"
    GROUPS = "groups"
    RULES6 = "rules6"
    GROUPS6 = "groups6"
    OUTPUTS = "outputs"
    RULE_STATS = "rule_stats"
    OUTPUT_STATS = "out_stats"
    DROPS = "drops"
    LIMITS = "limits"


MAP_NAMES: Final = tuple(m.value for m in MapName)


def rule_maps(version: int) -> tuple[MapName, MapName]:
    """The (rules, groups) maps of an address family."""
    return (MapName.RULES, MapName.GROUPS) if version == 4 else (MapName.RULES6, MapName.GROUPS6)


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
        MapSpec(MapName.RULES6.value, MapType.HASH, RULE6_KEY.size, RULE6_VALUE.size, max_rules),
        MapSpec(MapName.GROUPS6.value, MapType.HASH, GROUP6_KEY.size, 4, max_rules),
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


def pack_rule_key(ifindex: int, group: IPv4Address | IPv6Address, port: int, protocol: int = IPPROTO_UDP) -> bytes:
    """The key of `rules` (IPv4) or `rules6` (IPv6); an ESP rule's (port 0) ends in 50 instead of 0."""
    layout = RULE_KEY if group.version == 4 else RULE6_KEY
    if protocol not in (IPPROTO_UDP, IPPROTO_ESP) or (protocol == IPPROTO_ESP and (port or group.version != 4)):
        raise ValueError(f"no rule key for protocol {protocol}, port {port} to {group}")
    return layout.pack(ifindex, group.packed, port.to_bytes(2, "big"), 0 if protocol == IPPROTO_UDP else protocol)


def pack_group_key(ifindex: int, group: IPv4Address | IPv6Address) -> bytes:
    """The key of `groups` (IPv4) or `groups6` (IPv6)."""
    return (GROUP_KEY if group.version == 4 else GROUP6_KEY).pack(ifindex, group.packed)


def pack_rule_value(slot: int, count: int, source: IPv4Network | IPv6Network | None = None, version: int = 4) -> bytes:
    """A rule's value in `rules` (`version` 4) or `rules6` (6); a source (host or prefix) limits it to
    packets whose source address lies in it (no source: network and mask 0, which every source matches)."""
    if source is not None and source.version != version:
        raise ValueError(f"source {source} is not IPv{version}")
    layout, size = (RULE_VALUE, 4) if version == 4 else (RULE6_VALUE, 16)
    if source is None:
        return layout.pack(slot, count, bytes(size), bytes(size))
    return layout.pack(slot, count, source.network_address.packed, source.netmask.packed)


def pack_limit(params: BucketParams | None) -> bytes:
    """A slot's token bucket, full (tat 0); None: no limit."""
    if params is None:
        return bytes(LIMIT_VALUE.size)
    return LIMIT_VALUE.pack(0, params.burst_ns, params.per_packet, params.per_byte, params.divisor)


@dataclass(frozen=True, slots=True)
class OutputEntry:
    """What one output rewrites: the frame leaves `ifindex` with these addresses, port and TTL (hop limit).
    An ESP output (`protocol` 50, IPv4) has port 0: it rewrites the IP header alone."""

    ifindex: int
    group: IPv4Address | IPv6Address
    port: int
    source: IPv4Address | IPv6Address
    src_mac: bytes
    ttl: int = 1
    dst_mac: bytes | None = None  # None: the group's multicast MAC (01:00:5e + low 23 bits, 33:33 + low 32)
    protocol: int = IPPROTO_UDP

    def __post_init__(self) -> None:
        if self.ifindex <= 0:
            raise ValueError(f"bad output ifindex {self.ifindex}")
        if self.protocol == IPPROTO_ESP:
            if self.port != 0 or self.group.version != 4:
                raise ValueError(f"an ESP output is IPv4 with port 0, not {self.group} port {self.port}")
        elif self.protocol != IPPROTO_UDP:
            raise ValueError(f"bad output protocol {self.protocol}")
        elif not 1 <= self.port <= 65535:
            raise ValueError(f"bad output port {self.port}")
        if not 1 <= self.ttl <= 255:
            raise ValueError(f"bad TTL {self.ttl}")
        if self.source.version != self.group.version:
            raise ValueError(f"source {self.source} and group {self.group} are not of one family")
        if len(self.src_mac) != 6 or (self.dst_mac is not None and len(self.dst_mac) != 6):
            raise ValueError("MAC addresses are 6 bytes")
        if self.dst_mac is None and not self.group.is_multicast:
            raise ValueError(f"{self.group} is not multicast: give the destination MAC")

    @property
    def destination_mac(self) -> bytes:
        if self.dst_mac is not None:
            return self.dst_mac
        if isinstance(self.group, IPv6Address):
            return multicast_mac6(self.group)
        return multicast_mac(self.group)


def pack_output(out: OutputEntry) -> bytes:
    """An `outputs` entry: `OUTPUT_VALUE` for an IPv4 output, `OUTPUT6_VALUE` for an IPv6 one (same size)."""
    port = out.port.to_bytes(2, "big")
    src, dst, macs = out.source.packed, out.group.packed, (out.destination_mac, out.src_mac)
    addr_sum = _raw_sum(src + dst, sys.byteorder)
    if out.group.version == 6:
        return OUTPUT6_VALUE.pack(out.ifindex, out.ttl, port, src, dst, *macs, addr_sum)
    return OUTPUT_VALUE.pack(out.ifindex, out.ttl, out.protocol, port, src, dst, *macs, addr_sum)


# ------------------------------------------------------------------------------------------ the program


def _raw16(value: int, byteorder: Literal["little", "big"]) -> int:
    """What a 16-bit load of the network-order bytes of `value` yields on a host of `byteorder`."""
    return int.from_bytes(value.to_bytes(2, "big"), byteorder)


def _raw_sum(data: bytes, byteorder: Literal["little", "big"]) -> int:
    """The 16-bit one's complement sum (0..0xffff) of `data`'s raw 16-bit loads on a host of `byteorder`, as the
    program's `add_halves` and `fold` compute it."""
    total = sum(int.from_bytes(data[i : i + 2], byteorder) for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


R0, R1, R2, R3, R4, R5 = Reg.R0, Reg.R1, Reg.R2, Reg.R3, Reg.R4, Reg.R5
CTX, R7, R8, R9, FP = Reg.R6, Reg.R7, Reg.R8, Reg.R9, Reg.FP


@dataclass(frozen=True, slots=True)
class _Family:
    """What the shared part of the program (rule, rate limit, output loop, drops) needs to know of a family."""

    sfx: str  # label suffix
    rules: MapName
    groups: MapName
    key: int  # stack slot of the rule key (the group key is its start)
    source_filter: Callable[[], None]  # r0: the rule value; jumps to drop_no_rule<sfx> when the source is out
    rewrite: Callable[[], None]  # r7: the output entry; r9 |= every helper result; keeps the sums as it goes
    cur_from_saved: Callable[[], None]
    restore: Callable[[], None]  # r9 != 0 when a store failed
    drops: tuple[tuple[str, DropReason], ...]


class _Builder:
    """The relay program's instructions, appended by one method per part."""

    def __init__(self, max_outputs: int, pass_verdict: int, byteorder: Literal["little", "big"]) -> None:
        self.a = Assembler()
        self.max_outputs = max_outputs
        self.pass_verdict = pass_verdict
        self.byteorder = byteorder
        self.labels = 0

    def fresh(self) -> int:
        """A number for the labels of a part that is emitted more than once."""
        self.labels += 1
        return self.labels

    # ---- small pieces

    def lookup(self, map_name: MapName, key_slot: int) -> None:
        a = self.a
        a.ld_map(R1, map_name.value)
        a.emit(mov64_reg(R2, FP), alu(AluOp.ADD, R2, key_slot))
        a.call(Helper.MAP_LOOKUP_ELEM)

    def bump(self, src: Reg, off: int, amount: Reg | None = None) -> None:
        """*(u64 *)(src + off) += amount (or 1). Per-CPU values: no other writer."""
        a = self.a
        a.emit(ldx(Size.DW, R1, src, off))
        a.emit(alu(AluOp.ADD, R1, 1) if amount is None else alu_reg(AluOp.ADD, R1, amount))
        a.emit(stx(Size.DW, src, off, R1))

    def frame_offset(self, dst: Reg, at: int, *, udp: bool) -> None:
        if udp:
            self.a.emit(ldx(Size.DW, dst, FP, _UDP_OFF), alu(AluOp.ADD, dst, at))
        else:
            self.a.emit(mov64_imm(dst, at))

    def add_halves(self, dst: Reg, src: Reg, off: int, tmp: Reg, length: int) -> None:
        """dst += the 16-bit words of the `length` bytes at src + off."""
        for half in range(0, length, 2):
            self.a.emit(ldx(Size.H, tmp, src, off + half), alu_reg(AluOp.ADD, dst, tmp))

    def fold(self, reg: Reg, tmp: Reg) -> None:
        """reg: a sum below 2**32 of 16-bit words -> its 16-bit one's complement sum (end-around carry, twice)."""
        for _ in range(2):
            self.a.emit(mov64_reg(tmp, reg), alu(AluOp.RSH, tmp, 16), alu(AluOp.AND, reg, 0xFFFF))
            self.a.emit(alu_reg(AluOp.ADD, reg, tmp))

    def l4_by_diff(self, new: Reg, cur: Reg, flags: int, fail: str) -> None:
        """bpf_l4_csum_replace(skb, UDP checksum offset, 0, new - cur, flags): a difference of two 16-bit sums
        (size 0 in `flags`); r9 |= result, and on to `fail` when it failed."""
        a = self.a
        a.emit(alu(AluOp.XOR, cur, 0xFFFF), alu_reg(AluOp.ADD, new, cur), mov64_reg(R4, new))
        a.emit(mov64_reg(R1, CTX), mov64_imm(R3, 0), mov64_imm(R5, flags))
        self.frame_offset(R2, 6, udp=True)
        a.call(Helper.L4_CSUM_REPLACE)
        a.emit(alu_reg(AluOp.OR, R9, R0))
        a.jump(JmpOp.JNE, R0, 0, fail)

    def write_port(self, udp: Reg, port_off: int, sfx: str) -> None:
        """The output's UDP port (r7 + port_off) into the frame's UDP header, the last of a rewrite's writes;
        then the rewrite's end, where a frame whose headers were not all linear (rewrite_short) sets r9."""
        a = self.a
        a.emit(ldx(Size.H, R1, R7, port_off), stx(Size.H, udp, 2, R1))
        a.goto(f"rewrite_end{sfx}")
        a.label(f"rewrite_short{sfx}")
        a.emit(alu(AluOp.OR, R9, 1))
        a.label(f"rewrite_end{sfx}")

    def headers(self, data: Reg, udp: Reg, short: str, *, v6: bool = False) -> None:
        """data: the frame (fresh pointers: helpers invalidate them), udp: its UDP header; to `short` unless all
        the headers up to the end of the UDP header are in the linear area (r3, r4 clobbered).

        The verifier needs both checks: the fixed header's, for the writes at constant offsets, and the UDP
        header's, whose offset is not constant; it is masked so that the verifier knows its bound (IPv4:
        at most 74; IPv6: at most 54 + 8 extension headers of 2,048 bytes, below 0x7fff)."""
        a = self.a
        a.emit(ldx(Size.W, data, CTX, SkbOffset.DATA), ldx(Size.W, R3, CTX, SkbOffset.DATA_END))
        a.emit(mov64_reg(R4, data), alu(AluOp.ADD, R4, _IP + (IPV6_HLEN if v6 else 20)))
        a.jump_reg(JmpOp.JGT, R4, R3, short)
        a.emit(ldx(Size.DW, R4, FP, _UDP_OFF), alu(AluOp.AND, R4, 0x7FFF if v6 else 0x7F))
        a.emit(mov64_reg(udp, data), alu_reg(AluOp.ADD, udp, R4), mov64_reg(R4, udp), alu(AluOp.ADD, R4, 8))
        a.jump_reg(JmpOp.JGT, R4, R3, short)

    def load_bytes(self, offset: Reg | int, slot: int, length: int, fail: str) -> None:
        """bpf_skb_load_bytes(skb, offset, fp + slot, length); to `fail` when it fails."""
        a = self.a
        a.emit(mov64_reg(R1, CTX))
        a.emit(mov64_reg(R2, offset) if isinstance(offset, Reg) else mov64_imm(R2, offset))
        a.emit(mov64_reg(R3, FP), alu(AluOp.ADD, R3, slot), mov64_imm(R4, length))
        a.call(Helper.SKB_LOAD_BYTES)
        a.jump(JmpOp.JNE, R0, 0, fail)

    def copy(self, size: Size, dst: Reg, dst_off: int, src: Reg, src_off: int, length: int, tmp: Reg = R1) -> None:
        """Copy `length` bytes in `size` words (through `tmp`)."""
        for off in range(0, length, size.nbytes):
            self.a.emit(ldx(size, tmp, src, src_off + off), stx(size, dst, dst_off + off, tmp))

    # ---- the whole program

    def build(self) -> Program:
        a = self.a
        ip4, ip6 = _raw16(ETH_P_IP, self.byteorder), _raw16(ETH_P_IPV6, self.byteorder)
        a.emit(mov64_reg(CTX, R1), mov64_imm(R9, 0))  # r9: headers already pulled into the linear area
        a.label("parse")
        # A VLAN tag (always moved out of the frame into the skb before tc ingress) means the frame belongs to
        # the VLAN interface, not to this one: relaying it would also carry the tag to the outputs.
        a.emit(ldx(Size.W, R2, CTX, SkbOffset.VLAN_PRESENT))
        a.jump(JmpOp.JNE, R2, 0, "pass")
        a.emit(ldx(Size.W, R2, CTX, SkbOffset.DATA), ldx(Size.W, R3, CTX, SkbOffset.DATA_END))
        a.emit(mov64_reg(R4, R2), alu(AluOp.ADD, R4, ETH_HLEN))
        a.jump_reg(JmpOp.JGT, R4, R3, "pass")
        a.emit(ldx(Size.H, R5, R2, _ETHERTYPE))
        a.jump(JmpOp.JEQ, R5, ip6, "parse6")
        a.jump(JmpOp.JNE, R5, ip4, "pass")
        self.parse4()
        v4 = _Family(
            "4",
            MapName.RULES,
            MapName.GROUPS,
            _KEY,
            lambda: self.source_filter4("4"),
            self.rewrite4,
            self.cur_from_saved4,
            self.restore4,
            (
                ("bad_ip", DropReason.BAD_IP_HEADER),
                ("truncated", DropReason.TRUNCATED),
                ("fragment", DropReason.FRAGMENT),
                ("not_udp", DropReason.NOT_UDP),
                ("bad_udp", DropReason.BAD_UDP_LENGTH),
                ("no_rule", DropReason.NO_RULE),
            ),
        )
        self.relay(v4)
        a.label("esp4")
        self.parse_esp()
        esp = _Family(
            "e",
            MapName.RULES,
            MapName.GROUPS,
            _KEY,
            lambda: self.source_filter4("e"),
            self.rewrite_esp,
            lambda: None,  # the rewrite keeps no running sums
            self.restore_esp,
            (("no_rule", DropReason.NO_RULE),),
        )
        self.relay(esp)
        a.label("parse6")
        self.parse6()
        v6 = _Family(
            "6",
            MapName.RULES6,
            MapName.GROUPS6,
            _KEY6,
            self.source_filter6,
            self.rewrite6,
            self.cur_from_saved6,
            self.restore6,
            (
                ("bad_ip", DropReason.BAD_IP_HEADER),
                ("truncated", DropReason.TRUNCATED),
                ("fragment", DropReason.FRAGMENT),
                ("ext_header", DropReason.EXT_HEADER),
                ("not_udp", DropReason.NOT_UDP),
                ("bad_udp", DropReason.BAD_UDP_LENGTH),
                ("zero_csum", DropReason.ZERO_UDP_CHECKSUM),
                ("no_rule", DropReason.NO_RULE),
            ),
        )
        self.relay(v6)

        a.label("pass")
        a.emit(mov64_imm(R0, self.pass_verdict))
        a.exit()
        a.label("shot")  # the original frame could not be restored: never deliver a half-rewritten frame
        a.emit(mov64_imm(R0, TC_ACT_SHOT))
        a.exit()

        # ---- IPv4 headers outside the linear area: pull them in once, then parse again
        a.label("short_ip")
        a.jump(JmpOp.JNE, R9, 0, "pass")
        a.goto("pull")
        a.label("short_udp")
        a.jump(JmpOp.JNE, R9, 0, "drop_truncated4")
        a.label("pull")
        a.emit(mov64_imm(R9, 1), ldx(Size.W, R2, CTX, SkbOffset.LEN))
        a.jump(JmpOp.JLE, R2, _MAX_HEADERS, "pull_len")
        a.emit(mov64_imm(R2, _MAX_HEADERS))
        a.label("pull_len")
        a.emit(mov64_reg(R1, CTX))
        a.call(Helper.SKB_PULL_DATA)
        a.jump(JmpOp.JNE, R0, 0, "pass")
        a.goto("parse")
        return a.assemble()

    # ---- IPv4

    def parse4(self) -> None:
        """r2: data, r3: data_end, Ethernet header there, ethertype IPv4."""
        a = self.a
        frag_mask = _raw16(0x3FFF, self.byteorder)
        a.emit(mov64_reg(R4, R2), alu(AluOp.ADD, R4, _IP + 20))
        a.jump_reg(JmpOp.JGT, R4, R3, "short_ip")
        a.emit(ldx(Size.W, R5, CTX, SkbOffset.INGRESS_IFINDEX), stx(Size.W, FP, _KEY, R5))
        a.emit(ldx(Size.W, R5, R2, _IP_DST), stx(Size.W, FP, _KEY + 4, R5))
        a.emit(ldx(Size.B, R5, R2, _IP), mov64_reg(R4, R5), alu(AluOp.AND, R4, 0xF0))
        a.jump(JmpOp.JNE, R4, 0x40, "drop_bad_ip4")
        a.emit(alu(AluOp.AND, R5, 0x0F))
        a.jump(JmpOp.JLT, R5, 5, "drop_bad_ip4")
        a.emit(alu(AluOp.LSH, R5, 2))  # r5: IP header length, 20..60
        a.emit(ldx(Size.H, R4, R2, _IP_TOTAL), endian_be(R4, 16))  # r4: IP total length
        a.jump_reg(JmpOp.JLT, R4, R5, "drop_bad_ip4")
        a.emit(ldx(Size.W, R0, CTX, SkbOffset.LEN), mov64_reg(R1, R4), alu(AluOp.ADD, R1, ETH_HLEN))
        a.jump_reg(JmpOp.JGT, R1, R0, "drop_truncated4")
        a.emit(ldx(Size.H, R0, R2, _IP_FRAG), alu(AluOp.AND, R0, frag_mask))
        a.jump(JmpOp.JNE, R0, 0, "drop_fragment4")
        a.emit(ldx(Size.B, R0, R2, _IP_PROTO))
        a.jump(JmpOp.JEQ, R0, IPPROTO_ESP, "esp4")
        a.jump(JmpOp.JNE, R0, IPPROTO_UDP, "drop_not_udp4")
        a.emit(mov64_reg(R1, R5), alu(AluOp.ADD, R1, 8))
        a.jump_reg(JmpOp.JGT, R1, R4, "drop_truncated4")
        a.emit(mov64_reg(R7, R5), alu(AluOp.ADD, R7, ETH_HLEN))  # r7: UDP offset, 34..74
        a.emit(mov64_reg(R1, R2), alu_reg(AluOp.ADD, R1, R7))  # r1: UDP header
        a.emit(mov64_reg(R0, R1), alu(AluOp.ADD, R0, 8))
        a.jump_reg(JmpOp.JGT, R0, R3, "short_udp")
        a.emit(ldx(Size.H, R0, R1, 4), endian_be(R0, 16))  # UDP length
        a.jump(JmpOp.JLT, R0, 8, "drop_bad_udp4")
        a.emit(alu_reg(AluOp.SUB, R4, R5))
        a.jump_reg(JmpOp.JGT, R0, R4, "drop_bad_udp4")
        a.emit(alu(AluOp.ADD, R0, -8), stx(Size.DW, FP, _PAYLOAD, R0), stx(Size.DW, FP, _UDP_OFF, R7))
        a.emit(ldx(Size.H, R0, R1, 2), stx(Size.H, FP, _KEY + 8, R0), st_imm(Size.H, FP, _KEY + 10, 0))
        # With a UDP checksum, the checksum helpers balance the port change inside the UDP header, so skb->csum
        # (CHECKSUM_COMPLETE) stays right. A zero checksum stays zero (MARK_MANGLED_0) and balances nothing:
        # then the port store itself must update skb->csum.
        a.emit(mov64_imm(R4, 0), ldx(Size.H, R0, R1, 6))
        a.jump(JmpOp.JNE, R0, 0, "port_flags")
        a.emit(mov64_imm(R4, StoreFlag.RECOMPUTE_CSUM))
        a.label("port_flags")
        a.emit(stx(Size.DW, FP, _PORT_FLAGS, R4))
        # the original header bytes, and the values the rewrites start from
        a.emit(ldx(Size.DW, R0, R1, 0), stx(Size.DW, FP, _SAVE_UDP, R0))
        a.emit(ldx(Size.H, R0, R1, 2), stx(Size.H, FP, _CUR + 2, R0))
        self.save_ip4()

    def save_ip4(self) -> None:
        """r2: data, the IPv4 header there. The original addresses for the source filter, the original
        header bytes (MACs; TTL..destination) for the restore, and the sums the checksums start from."""
        a = self.a
        a.emit(ldx(Size.DW, R0, R2, 0), stx(Size.DW, FP, _SAVE_MAC, R0))
        a.emit(ldx(Size.W, R0, R2, 8), stx(Size.W, FP, _SAVE_MAC + 8, R0))
        self.copy(Size.W, FP, _SAVE_IP, R2, _IP_TTL, 12, R0)
        self.copy(Size.W, FP, _CUR + 4, R2, _IP_SRC, 8, R0)
        a.emit(mov64_imm(R0, 0))
        self.add_halves(R0, R2, _IP_SRC, R3, 8)  # source and destination
        self.fold(R0, R3)
        a.emit(stx(Size.DW, FP, _ORIG_SUM, R0), stx(Size.DW, FP, _ADDR_SUM, R0))
        a.emit(ldx(Size.H, R3, R2, _IP_TTL), alu_reg(AluOp.ADD, R0, R3))
        self.fold(R0, R3)
        a.emit(alu(AluOp.XOR, R0, 0xFFFF), ldx(Size.H, R3, R2, _IP_CSUM), alu(AluOp.XOR, R3, 0xFFFF))
        a.emit(alu_reg(AluOp.ADD, R0, R3), stx(Size.DW, FP, _IP_BASE, R0))

    def source_filter4(self, sfx: str) -> None:
        """(source & netmask) == network, all raw network-order images; else to drop_no_rule<sfx>."""
        a = self.a
        a.emit(ldx(Size.W, R3, R0, 12), ldx(Size.W, R4, FP, _CUR + 4), alu_reg(AluOp.AND, R4, R3))
        a.emit(ldx(Size.W, R3, R0, 8))
        a.jump_reg(JmpOp.JNE, R4, R3, f"drop_no_rule{sfx}")

    def rewrite4(self) -> None:
        """Checksums first (the helpers know the skb's checksum state), then the header bytes by direct writes."""
        a = self.a
        a.emit(ldx(Size.W, R1, R7, _OUT_SUM), ldx(Size.DW, R2, FP, _PORT_FLAGS))
        a.jump(JmpOp.JNE, R2, 0, "port_only4")
        # UDP checksum: the addresses through the pseudo-header (which also keeps skb->csum of a
        # CHECKSUM_COMPLETE skb right, and fixes the pseudo-header sum of a CHECKSUM_PARTIAL one) ...
        a.emit(ldx(Size.DW, R2, FP, _ADDR_SUM))
        self.l4_by_diff(R1, R2, CsumFlag.PSEUDO_HDR | CsumFlag.MARK_MANGLED_0, "rewrite_end4")
        a.emit(ldx(Size.W, R1, R7, _OUT_SUM), stx(Size.DW, FP, _ADDR_SUM, R1))
        # ... and the port, inside the UDP header (balanced there, so skb->csum needs nothing)
        a.emit(ldx(Size.H, R1, R7, _OUT_PORT), ldx(Size.H, R2, FP, _CUR + 2))
        a.jump_reg(JmpOp.JEQ, R1, R2, "port_done4")
        self.l4_by_diff(R1, R2, CsumFlag.MARK_MANGLED_0, "rewrite_end4")
        a.goto("port_accounted4")
        a.label("port_only4")  # no UDP checksum: it stays zero, and skb->csum takes the port change
        a.emit(ldx(Size.H, R1, R7, _OUT_PORT), ldx(Size.H, R2, FP, _CUR + 2))
        a.jump_reg(JmpOp.JEQ, R1, R2, "port_done4")
        a.emit(alu(AluOp.XOR, R2, 0xFFFF), alu_reg(AluOp.ADD, R2, R1), mov64_reg(R1, CTX))
        a.call(Helper.CSUM_UPDATE)  # a negative result only says the skb is not CHECKSUM_COMPLETE
        a.label("port_accounted4")
        a.emit(ldx(Size.H, R1, R7, _OUT_PORT), stx(Size.H, FP, _CUR + 2, R1))
        a.label("port_done4")
        # IPv4 header checksum, from the original header's (RFC 1624)
        a.emit(ldx(Size.H, R0, R7, _OUT_TTL), ldx(Size.W, R1, R7, _OUT_SUM), alu_reg(AluOp.ADD, R0, R1))
        a.emit(ldx(Size.DW, R1, FP, _IP_BASE), alu_reg(AluOp.ADD, R0, R1))
        self.fold(R0, R1)
        a.emit(alu(AluOp.XOR, R0, 0xFFFF))
        self.headers(R2, R5, "rewrite_short4")
        self.copy(Size.H, R2, 0, R7, _OUT_MACS, 12)
        a.emit(ldx(Size.B, R1, R7, _OUT_TTL), stx(Size.B, R2, _IP_TTL, R1), stx(Size.H, R2, _IP_CSUM, R0))
        self.copy(Size.W, R2, _IP_SRC, R7, _OUT_SRC, 8)
        self.write_port(R5, _OUT_PORT, "4")

    # ---- ESP

    def parse_esp(self) -> None:
        """r2: data (the IPv4 header checked and in the linear area), r4: IP total length, r5: IP header length;
        an unfragmented IPv4 ESP packet within the frame. The IP payload (from the SPI on) is what is relayed."""
        a = self.a
        a.emit(alu_reg(AluOp.SUB, R4, R5))  # the IP payload
        a.jump(JmpOp.JLT, R4, ESP_HLEN, "drop_truncated4")
        a.emit(stx(Size.DW, FP, _PAYLOAD, R4))
        a.emit(st_imm(Size.H, FP, _KEY + 8, 0), st_imm(Size.H, FP, _KEY + 10, IPPROTO_ESP))  # native, as packed
        self.save_ip4()

    def rewrite_esp(self) -> None:
        """The IPv4 header checksum from the original's (RFC 1624), then MACs, TTL, checksum and addresses by
        direct writes; nothing else changes, so no helper is needed."""
        a = self.a
        a.emit(ldx(Size.H, R0, R7, _OUT_TTL), ldx(Size.W, R1, R7, _OUT_SUM), alu_reg(AluOp.ADD, R0, R1))
        a.emit(ldx(Size.DW, R1, FP, _IP_BASE), alu_reg(AluOp.ADD, R0, R1))
        self.fold(R0, R1)
        a.emit(alu(AluOp.XOR, R0, 0xFFFF))
        self.ip_header(R2, "rewrite_shorte")
        self.copy(Size.H, R2, 0, R7, _OUT_MACS, 12)
        a.emit(ldx(Size.B, R1, R7, _OUT_TTL), stx(Size.B, R2, _IP_TTL, R1), stx(Size.H, R2, _IP_CSUM, R0))
        self.copy(Size.W, R2, _IP_SRC, R7, _OUT_SRC, 8)
        a.goto("rewrite_ende")
        a.label("rewrite_shorte")
        a.emit(alu(AluOp.OR, R9, 1))
        a.label("rewrite_ende")

    def restore_esp(self) -> None:
        """The saved MACs and IPv4 header bytes back by direct writes; r9: 1 when the header is not in the
        linear area (nothing written)."""
        a, n = self.a, self.fresh()
        a.emit(mov64_imm(R9, 0))
        self.ip_header(R2, f"restore_shorte_{n}")
        self.copy(Size.H, R2, 0, FP, _SAVE_MAC, 12)
        self.copy(Size.H, R2, _IP_TTL, FP, _SAVE_IP, 12)
        a.goto(f"restore_ende_{n}")
        a.label(f"restore_shorte_{n}")
        a.emit(mov64_imm(R9, 1))
        a.label(f"restore_ende_{n}")

    def ip_header(self, data: Reg, short: str) -> None:
        """data: the frame (a fresh pointer: helpers invalidate them); to `short` unless the Ethernet and fixed
        IPv4 headers are in the linear area (r3, r4 clobbered)."""
        a = self.a
        a.emit(ldx(Size.W, data, CTX, SkbOffset.DATA), ldx(Size.W, R3, CTX, SkbOffset.DATA_END))
        a.emit(mov64_reg(R4, data), alu(AluOp.ADD, R4, _IP + 20))
        a.jump_reg(JmpOp.JGT, R4, R3, short)

    def cur_from_saved4(self) -> None:
        a = self.a
        a.emit(ldx(Size.DW, R1, FP, _ORIG_SUM), stx(Size.DW, FP, _ADDR_SUM, R1))
        a.emit(ldx(Size.H, R1, FP, _SAVE_UDP + 2), stx(Size.H, FP, _CUR + 2, R1))

    def restore4(self) -> None:
        """The saved header bytes back by direct writes; skb->csum of a CHECKSUM_COMPLETE skb gets back what
        the checksum updates took from it (the UDP checksum bytes themselves are restored with the header)."""
        a, n = self.a, self.fresh()
        a.emit(mov64_imm(R9, 0), ldx(Size.DW, R1, FP, _PORT_FLAGS))
        a.jump(JmpOp.JNE, R1, 0, f"restore_port4_{n}")
        a.emit(ldx(Size.DW, R2, FP, _ADDR_SUM), ldx(Size.DW, R1, FP, _ORIG_SUM))
        a.goto(f"restore_diff4_{n}")
        a.label(f"restore_port4_{n}")
        a.emit(ldx(Size.H, R1, FP, _CUR + 2), ldx(Size.H, R2, FP, _SAVE_UDP + 2))
        a.label(f"restore_diff4_{n}")
        self.write_back(n, v6=False)

    def write_back(self, n: int, *, v6: bool) -> None:
        """r2 - r1 (16-bit sums) back onto skb->csum unless they are equal, then the saved header bytes back
        into the frame by direct writes; r9: 1 when the headers are not in the linear area (nothing written)."""
        a, s = self.a, "6" if v6 else "4"
        a.jump_reg(JmpOp.JEQ, R1, R2, f"restore_bytes{s}_{n}")
        a.emit(alu(AluOp.XOR, R1, 0xFFFF), alu_reg(AluOp.ADD, R2, R1), mov64_reg(R1, CTX))
        a.call(Helper.CSUM_UPDATE)
        a.label(f"restore_bytes{s}_{n}")
        self.headers(R2, R5, f"restore_short{s}_{n}", v6=v6)
        self.copy(Size.H, R2, 0, FP, _SAVE_MAC, 12)
        if v6:  # hop limit, source and destination
            a.emit(ldx(Size.B, R1, FP, _HDR6 + 7), stx(Size.B, R2, _IP6_HOP, R1))
            self.copy(Size.W, R2, _IP6_SRC, FP, _HDR6 + 8, 32)
        else:  # TTL, protocol, checksum, source, destination
            self.copy(Size.H, R2, _IP_TTL, FP, _SAVE_IP, 12)
        self.copy(Size.H, R5, 0, FP, _SAVE_UDP, 8)
        a.goto(f"restore_end{s}_{n}")
        a.label(f"restore_short{s}_{n}")
        a.emit(mov64_imm(R9, 1))
        a.label(f"restore_end{s}_{n}")

    # ---- IPv6

    def parse6(self) -> None:
        """r2: data, r3: data_end, Ethernet header there, ethertype IPv6. The checks of
        `mcr.packet.parse._parse_ipv6`, in its order."""
        a = self.a
        a.emit(ldx(Size.DW, R0, R2, 0), stx(Size.DW, FP, _SAVE_MAC, R0))
        a.emit(ldx(Size.W, R0, R2, 8), stx(Size.W, FP, _SAVE_MAC + 8, R0))
        self.load_bytes(ETH_HLEN, _HDR6, IPV6_HLEN, "pass")  # too short for an IPv6 header: not attributable
        a.emit(ldx(Size.W, R5, CTX, SkbOffset.INGRESS_IFINDEX), stx(Size.W, FP, _KEY6, R5))
        self.copy(Size.DW, FP, _KEY6 + 4, FP, _HDR6 + 24, 16)
        self.lookup(MapName.GROUPS6, _KEY6)
        a.jump(JmpOp.JEQ, R0, 0, "pass")  # no rule has this group: nothing to relay, nothing to count
        a.emit(ldx(Size.B, R5, FP, _HDR6), alu(AluOp.AND, R5, 0xF0))
        a.jump(JmpOp.JNE, R5, 0x60, "drop_bad_ip6")
        a.emit(ldx(Size.H, R4, FP, _HDR6 + 4), endian_be(R4, 16), alu(AluOp.ADD, R4, ETH_HLEN + IPV6_HLEN))
        a.emit(ldx(Size.W, R0, CTX, SkbOffset.LEN))
        a.jump_reg(JmpOp.JGT, R4, R0, "drop_truncated6")
        a.emit(stx(Size.DW, FP, _END6, R4))  # the end of the IPv6 payload
        a.emit(mov64_imm(R7, ETH_HLEN + IPV6_HLEN), ldx(Size.B, R8, FP, _HDR6 + 6))  # r7: offset, r8: next header
        for i in range(MAX_EXT_HEADERS + 1):
            a.jump(JmpOp.JEQ, R8, IPPROTO_UDP, "udp6")
            for kind in sorted(EXT_WALKED):
                a.jump(JmpOp.JEQ, R8, kind, f"ext{i}")
            a.jump(JmpOp.JEQ, R8, EXT_FRAGMENT, "drop_fragment6")
            for kind in sorted(EXT_NOT_WALKED):
                a.jump(JmpOp.JEQ, R8, kind, "drop_ext_header6")
            a.goto("drop_not_udp6")
            a.label(f"ext{i}")  # (length + 1) * 8 bytes, never past the payload
            a.emit(mov64_reg(R1, R7), alu(AluOp.ADD, R1, 8), ldx(Size.DW, R2, FP, _END6))
            a.jump_reg(JmpOp.JGT, R1, R2, "drop_truncated6")
            self.load_bytes(R7, _EXT, 2, "drop_truncated6")
            a.emit(ldx(Size.B, R8, FP, _EXT), ldx(Size.B, R1, FP, _EXT + 1))
            a.emit(alu(AluOp.ADD, R1, 1), alu(AluOp.LSH, R1, 3), alu_reg(AluOp.ADD, R7, R1))
        a.goto("drop_ext_header6")  # a ninth
        a.label("udp6")
        a.emit(mov64_reg(R1, R7), alu(AluOp.ADD, R1, 8), ldx(Size.DW, R2, FP, _END6))
        a.jump_reg(JmpOp.JGT, R1, R2, "drop_truncated6")
        self.load_bytes(R7, _SAVE_UDP, 8, "drop_truncated6")
        a.emit(ldx(Size.H, R0, FP, _SAVE_UDP + 4), endian_be(R0, 16))  # UDP length
        a.jump(JmpOp.JLT, R0, 8, "drop_bad_udp6")
        a.emit(ldx(Size.DW, R2, FP, _END6), alu_reg(AluOp.SUB, R2, R7))
        a.jump_reg(JmpOp.JGT, R0, R2, "drop_bad_udp6")
        a.emit(ldx(Size.H, R1, FP, _SAVE_UDP + 6))
        a.jump(JmpOp.JEQ, R1, 0, "drop_zero_csum6")
        # The UDP offset goes on the stack as two 32-bit halves, so that the verifier forgets its bounds: they
        # differ along each path out of the extension header walk, and the packet pointer made from it in the
        # output loop would keep them apart (precise), walking the whole loop once per path.
        low, high = (0, 4) if self.byteorder == "little" else (4, 0)
        a.emit(stx(Size.W, FP, _UDP_OFF + low, R7), st_imm(Size.W, FP, _UDP_OFF + high, 0))
        a.emit(alu(AluOp.ADD, R0, -8), stx(Size.DW, FP, _PAYLOAD, R0))
        a.emit(ldx(Size.H, R0, FP, _SAVE_UDP + 2), stx(Size.H, FP, _KEY6 + 20, R0), st_imm(Size.H, FP, _KEY6 + 22, 0))
        # The rewrite writes the headers through packet pointers: when they are not all in the linear area,
        # pull them in (a frame that cannot be pulled passes, as for IPv4).
        self.headers(R2, R5, "pull6", v6=True)
        a.goto("linear6")
        a.label("pull6")
        a.emit(mov64_reg(R1, CTX), ldx(Size.DW, R2, FP, _UDP_OFF), alu(AluOp.ADD, R2, 8))
        a.call(Helper.SKB_PULL_DATA)
        a.jump(JmpOp.JNE, R0, 0, "pass")
        self.headers(R2, R5, "pass", v6=True)
        a.label("linear6")
        a.emit(mov64_imm(R0, 0))  # the address sum the UDP checksum starts from
        self.add_halves(R0, FP, _HDR6 + 8, R3, 32)
        self.fold(R0, R3)
        a.emit(stx(Size.DW, FP, _ORIG_SUM, R0))
        self.cur_from_saved6()

    def source_filter6(self) -> None:
        a = self.a
        for half in (0, 8):
            a.emit(ldx(Size.DW, R3, R0, 24 + half), ldx(Size.DW, R4, FP, _HDR6 + 8 + half))
            a.emit(alu_reg(AluOp.AND, R4, R3), ldx(Size.DW, R3, R0, 8 + half))
            a.jump_reg(JmpOp.JNE, R4, R3, "drop_no_rule6")

    def hop_word(self, reg: Reg, src: Reg, off: int) -> None:
        """reg = the hop limit byte at src + off as the raw 16-bit load of (next header, hop limit) sees it, less
        the next header: the hop limit is the second byte of its word."""
        self.a.emit(ldx(Size.B, reg, src, off))
        if self.byteorder == "little":
            self.a.emit(alu(AluOp.LSH, reg, 8))

    def rewrite6(self) -> None:
        """The UDP checksum through helpers, skb->csum set right with one csum_update, then the header bytes by
        direct writes (IPv6 has no header checksum)."""
        a = self.a
        # UDP checksum: the addresses through the pseudo-header, which also takes their difference off
        # skb->csum (CHECKSUM_COMPLETE), as is right for IPv4 ...
        a.emit(ldx(Size.W, R1, R7, _OUT6_SUM), ldx(Size.DW, R2, FP, _ADDR_SUM))
        self.l4_by_diff(R1, R2, CsumFlag.PSEUDO_HDR | CsumFlag.MARK_MANGLED_0, "rewrite_end6")
        # ... but in IPv6 no header checksum balances the address bytes, which are inside skb->csum's coverage
        # and rise by as much: give it back, with the hop limit's change (the port's is balanced inside the
        # UDP header). A negative result only says the skb is not CHECKSUM_COMPLETE.
        a.emit(ldx(Size.W, R2, R7, _OUT6_SUM), ldx(Size.DW, R1, FP, _ADDR_SUM), stx(Size.DW, FP, _ADDR_SUM, R2))
        a.emit(alu(AluOp.XOR, R1, 0xFFFF), alu_reg(AluOp.ADD, R2, R1))
        self.hop_word(R1, R7, _OUT6_HOP)
        a.emit(alu_reg(AluOp.ADD, R2, R1))
        self.hop_word(R1, FP, _CUR)
        a.emit(alu(AluOp.XOR, R1, 0xFFFF), alu_reg(AluOp.ADD, R2, R1))
        a.emit(ldx(Size.B, R1, R7, _OUT6_HOP), stx(Size.B, FP, _CUR, R1), mov64_reg(R1, CTX))
        a.call(Helper.CSUM_UPDATE)
        # the port, inside the UDP header
        a.emit(ldx(Size.H, R1, R7, _OUT6_PORT), ldx(Size.H, R2, FP, _CUR + 2))
        a.jump_reg(JmpOp.JEQ, R1, R2, "port_done6")
        self.l4_by_diff(R1, R2, CsumFlag.MARK_MANGLED_0, "rewrite_end6")
        a.emit(ldx(Size.H, R1, R7, _OUT6_PORT), stx(Size.H, FP, _CUR + 2, R1))
        a.label("port_done6")
        self.headers(R2, R5, "rewrite_short6", v6=True)
        self.copy(Size.H, R2, 0, R7, _OUT6_MACS, 12)
        a.emit(ldx(Size.B, R1, R7, _OUT6_HOP), stx(Size.B, R2, _IP6_HOP, R1))
        self.copy(Size.W, R2, _IP6_SRC, R7, _OUT6_SRC, 32)
        self.write_port(R5, _OUT6_PORT, "6")

    def cur_from_saved6(self) -> None:
        a = self.a
        a.emit(ldx(Size.DW, R1, FP, _ORIG_SUM), stx(Size.DW, FP, _ADDR_SUM, R1))
        a.emit(ldx(Size.B, R1, FP, _HDR6 + 7), stx(Size.B, FP, _CUR, R1))
        a.emit(ldx(Size.H, R1, FP, _SAVE_UDP + 2), stx(Size.H, FP, _CUR + 2, R1))

    def restore6(self) -> None:
        """The saved header bytes back by direct writes. The helper calls left skb->csum (CHECKSUM_COMPLETE)
        right for the frame as rewritten; restored, it differs from it by the hop limit alone (the addresses
        and port come back with the UDP checksum that balances them)."""
        a, n = self.a, self.fresh()
        a.emit(mov64_imm(R9, 0))
        self.hop_word(R1, FP, _CUR)
        self.hop_word(R2, FP, _HDR6 + 7)
        self.write_back(n, v6=True)

    # ---- rule, rate limit, outputs and drops: one copy per family

    def relay(self, fam: _Family) -> None:
        a, s, max_outputs = self.a, fam.sfx, self.max_outputs
        self.lookup(fam.rules, fam.key)
        a.jump(JmpOp.JEQ, R0, 0, f"drop_no_rule{s}")
        a.emit(ldx(Size.W, R1, R0, 0), ldx(Size.W, R2, R0, 4))
        fam.source_filter()
        a.jump(JmpOp.JLE, R2, max_outputs, f"count_ok{s}")
        a.emit(mov64_imm(R2, max_outputs))
        a.label(f"count_ok{s}")
        a.emit(stx(Size.DW, FP, _SLOT, R1), stx(Size.DW, FP, _COUNT, R2), stx(Size.W, FP, _IDX, R1))
        self.rate_limit(s)

        a.label(f"admitted{s}")
        self.lookup(MapName.RULE_STATS, _IDX)
        a.jump(JmpOp.JEQ, R0, 0, f"rule_counted{s}")
        a.emit(mov64_reg(R7, R0), ldx(Size.DW, R2, FP, _PAYLOAD))
        self.bump(R7, 0)
        self.bump(R7, 8, R2)
        a.label(f"rule_counted{s}")
        a.emit(ldx(Size.DW, R1, FP, _COUNT))
        a.jump(JmpOp.JEQ, R1, 0, "pass")
        a.emit(mov64_imm(R8, 0))  # r8: output index

        a.label(f"loop{s}")
        a.jump(JmpOp.JGE, R8, max_outputs, f"restore{s}")
        a.emit(ldx(Size.DW, R1, FP, _COUNT))
        a.jump_reg(JmpOp.JGE, R8, R1, f"restore{s}")
        a.emit(ldx(Size.DW, R1, FP, _SLOT), alu(AluOp.MUL, R1, max_outputs), alu_reg(AluOp.ADD, R1, R8))
        a.emit(stx(Size.W, FP, _IDX, R1))
        self.lookup(MapName.OUTPUTS, _IDX)
        a.jump(JmpOp.JEQ, R0, 0, f"next{s}")
        a.emit(mov64_reg(R7, R0))  # r7: the output entry
        a.emit(mov64_imm(R9, 0))  # r9: OR of every helper result
        fam.rewrite()
        a.jump(JmpOp.JNE, R9, 0, f"rewrite_failed{s}")
        a.emit(mov64_reg(R1, CTX), ldx(Size.W, R2, R7, _OUT_IFINDEX), mov64_imm(R3, 0))
        a.call(Helper.CLONE_REDIRECT)
        a.emit(mov64_reg(R9, R0))
        a.label(f"count_output{s}")
        self.lookup(MapName.OUTPUT_STATS, _IDX)
        a.jump(JmpOp.JEQ, R0, 0, f"next{s}")
        a.emit(mov64_reg(R7, R0))
        a.jump(JmpOp.JNE, R9, 0, f"output_error{s}")
        a.emit(ldx(Size.DW, R2, FP, _PAYLOAD))
        self.bump(R7, 0)
        self.bump(R7, 8, R2)
        a.goto(f"next{s}")
        a.label(f"output_error{s}")
        self.bump(R7, 16)
        a.label(f"next{s}")
        a.emit(alu(AluOp.ADD, R8, 1))
        a.goto(f"loop{s}")

        a.label(f"rewrite_failed{s}")  # back to the original frame, count an error, go on with the next output
        fam.restore()
        a.jump(JmpOp.JNE, R9, 0, "shot")
        fam.cur_from_saved()
        a.emit(mov64_imm(R9, 1))
        a.goto(f"count_output{s}")

        a.label(f"restore{s}")
        fam.restore()
        a.jump(JmpOp.JNE, R9, 0, "shot")
        a.goto("pass")

        # ---- drops: counted only for frames to a configured (ingress interface, group)
        for name, reason in fam.drops:
            a.label(f"drop_{name}{s}")
            a.emit(mov64_imm(R8, int(reason)))
            a.goto(f"count_drop{s}")
        a.label(f"rate_limited{s}")
        self.lookup(MapName.RULE_STATS, _IDX)
        a.jump(JmpOp.JEQ, R0, 0, f"rate_limited_counted{s}")
        self.bump(R0, 16)
        a.label(f"rate_limited_counted{s}")
        a.emit(mov64_imm(R8, int(DropReason.RATE_LIMITED)))
        a.label(f"count_drop{s}")
        self.lookup(fam.groups, fam.key)
        a.jump(JmpOp.JEQ, R0, 0, "pass")
        a.emit(stx(Size.W, FP, _IDX, R8))
        self.lookup(MapName.DROPS, _IDX)
        a.jump(JmpOp.JEQ, R0, 0, "pass")
        self.bump(R0, 0)
        a.goto("pass")

    def rate_limit(self, s: str) -> None:
        """r7 the bucket, r8 now, r9 this frame's cost, r1 the tat last read; to admitted<s> or rate_limited<s>."""
        a = self.a
        self.lookup(MapName.LIMITS, _IDX)
        a.jump(JmpOp.JEQ, R0, 0, f"admitted{s}")
        a.emit(mov64_reg(R7, R0), ldx(Size.DW, R3, R7, _LIM_DIVISOR))
        a.jump(JmpOp.JEQ, R3, 0, f"admitted{s}")
        a.emit(ldx(Size.DW, R1, R7, _LIM_PER_BYTE), ldx(Size.DW, R2, FP, _PAYLOAD), alu_reg(AluOp.MUL, R1, R2))
        a.emit(ldx(Size.DW, R2, R7, _LIM_PER_PACKET), alu_reg(AluOp.ADD, R1, R2), alu_reg(AluOp.DIV, R1, R3))
        a.emit(mov64_reg(R9, R1))
        a.call(Helper.KTIME_GET_NS)
        a.emit(mov64_reg(R8, R0), ldx(Size.DW, R1, R7, _LIM_TAT))
        for attempt in range(CMPXCHG_TRIES):  # unrolled: no loop for the verifier to walk
            a.emit(mov64_reg(R2, R1))
            a.jump_reg(JmpOp.JGE, R2, R8, f"tat_ahead{s}_{attempt}")
            a.emit(mov64_reg(R2, R8))  # r2 = max(tat, now)
            a.label(f"tat_ahead{s}_{attempt}")
            a.emit(alu_reg(AluOp.ADD, R2, R9), mov64_reg(R3, R2), alu_reg(AluOp.SUB, R3, R8))
            a.emit(ldx(Size.DW, R4, R7, _LIM_BURST))
            a.jump_reg(JmpOp.JGT, R3, R4, f"rate_limited{s}")
            a.emit(mov64_reg(R0, R1), atomic_cmpxchg64(R7, _LIM_TAT, R2))
            a.jump_reg(JmpOp.JEQ, R0, R1, f"admitted{s}")
            a.emit(mov64_reg(R1, R0))  # another CPU moved it first: try again from its value
        a.goto(f"rate_limited{s}")


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
    return _Builder(max_outputs, pass_verdict, byteorder).build()


def build_relay_program(
    map_fds: Mapping[str, int],
    max_outputs: int = DEFAULT_MAX_OUTPUTS,
    *,
    pass_verdict: int = TC_ACT_UNSPEC,
) -> list[Insn]:
    """The relay program linked to the file descriptors of its maps (keys: `MAP_NAMES`)."""
    return relay_program(max_outputs, pass_verdict=pass_verdict).link(map_fds)
