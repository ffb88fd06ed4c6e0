"""Classic BPF socket filters (SO_ATTACH_FILTER): opcodes, the relay's capture filter, and an interpreter.

The capture filter runs in the kernel on every frame that reaches a capture socket, so that only the relay's
flows are copied to userspace. It accepts

- IPv4 UDP to a configured (group, port), and
- IPv4 fragments and non-UDP packets to a configured group: ESP (an ESP rule is configured as port 0 of its
  group) for its rules, anything else so that userspace counts it as a drop;
- IPv6 to a configured IPv6 group, any port and any next header (`_ipv6_block`): the worker walks the
  extension headers, checks the port and counts the drops; beyond `MAX_IPV6_GROUPS` groups, IPv6 to ff00::/8;

and drops everything else, including the frames the host sent itself. Accepting returns `ACCEPT` (the snap
length), dropping returns 0. Like the kernel, the filter drops a frame too short for a field it loads.

Layout (see `exact_filter`): a fixed prologue that leaves the UDP destination port in X, or the sentinel 0x10000
for fragments and non-UDP packets; a search of the groups on the IPv4 destination; per port set, a search of X.
The searches are binary trees of ``jgt`` with runs of at most 8 ``jeq`` at the leaves, so a frame takes about
12 + log2(groups / 8) + 8 + log2(ports / 8) + 8 instructions, whatever the table size. The program is laid out
back to front (`Emitter`), which settles the 8-bit conditional jump offsets: a return is copied wherever the
previous copy is out of reach, and any other far target (a subtree, the check of a port set shared by many
groups) is reached through a ``ja``, whose offset is 32 bits. A table too large for BPF_MAXINSNS gets a coarser
filter (`build_capture_filter`).

`run_program` interprets exactly the opcodes of `Op`, for tests; `check_program` applies the kernel's static
checks.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum

from mcr.packet.parse import ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP

__all__ = [
    "ACCEPT",
    "BPF_MAXINSNS",
    "DROP",
    "MAX_IPV6_GROUPS",
    "PACKET_OUTGOING",
    "SKF_AD_OFF",
    "SKF_AD_PKTTYPE",
    "BpfAluOp",
    "BpfClass",
    "BpfJmpOp",
    "BpfMiscOp",
    "BpfMode",
    "BpfRval",
    "BpfSize",
    "BpfSrc",
    "Emitter",
    "Insn",
    "Op",
    "PacketType",
    "build_capture_filter",
    "check_program",
    "coarse_filter",
    "disassemble",
    "exact_filter",
    "group_filter",
    "pack_program",
    "run_program",
    "unpack_program",
]


# ---------------------------------------------------------------------------------------------- kernel ABI


class BpfClass(IntEnum):
    """Instruction class, ``code & 0x07`` (linux/bpf_common.h)."""

    LD = 0x00
    LDX = 0x01
    ST = 0x02
    STX = 0x03
    ALU = 0x04
    JMP = 0x05
    RET = 0x06
    MISC = 0x07


class BpfSize(IntEnum):
    """Load size, ``code & 0x18``."""

    W = 0x00
    H = 0x08
    B = 0x10


class BpfMode(IntEnum):
    """Load mode, ``code & 0xE0``."""

    IMM = 0x00
    ABS = 0x20
    IND = 0x40
    MEM = 0x60
    LEN = 0x80
    MSH = 0xA0


class BpfAluOp(IntEnum):
    """ALU operation, ``code & 0xF0``."""

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


class BpfJmpOp(IntEnum):
    """Jump operation, ``code & 0xF0``."""

    JA = 0x00
    JEQ = 0x10
    JGT = 0x20
    JGE = 0x30
    JSET = 0x40


class BpfSrc(IntEnum):
    """Operand of ALU and jumps, ``code & 0x08``: the constant k or register X."""

    K = 0x00
    X = 0x08


class BpfRval(IntEnum):
    """Return value of BPF_RET, ``code & 0x18``: the constant k or register A."""

    K = 0x00
    A = 0x10


class BpfMiscOp(IntEnum):
    """BPF_MISC operation, ``code & 0xF8``."""

    TAX = 0x00
    TXA = 0x80


class Op(IntEnum):
    """The complete opcodes this module emits and `run_program` interprets."""

    LD_W_ABS = BpfClass.LD | BpfSize.W | BpfMode.ABS  # A = frame[k:k+4]
    LD_H_ABS = BpfClass.LD | BpfSize.H | BpfMode.ABS  # A = frame[k:k+2]
    LD_B_ABS = BpfClass.LD | BpfSize.B | BpfMode.ABS  # A = frame[k]; k >= SKF_AD_OFF: ancillary data
    LD_H_IND = BpfClass.LD | BpfSize.H | BpfMode.IND  # A = frame[X+k:X+k+2]
    LDX_IMM = BpfClass.LDX | BpfSize.W | BpfMode.IMM  # X = k
    LDX_B_MSH = BpfClass.LDX | BpfSize.B | BpfMode.MSH  # X = 4 * (frame[k] & 0xF)
    ALU_AND_K = BpfClass.ALU | BpfAluOp.AND | BpfSrc.K  # A &= k
    JA = BpfClass.JMP | BpfJmpOp.JA  # pc += k
    JEQ_K = BpfClass.JMP | BpfJmpOp.JEQ | BpfSrc.K  # pc += jt if A == k else jf
    JGT_K = BpfClass.JMP | BpfJmpOp.JGT | BpfSrc.K  # pc += jt if A > k else jf
    JGE_K = BpfClass.JMP | BpfJmpOp.JGE | BpfSrc.K  # pc += jt if A >= k else jf
    JSET_K = BpfClass.JMP | BpfJmpOp.JSET | BpfSrc.K  # pc += jt if A & k else jf
    RET_K = BpfClass.RET | BpfRval.K  # return k
    TAX = BpfClass.MISC | BpfMiscOp.TAX  # X = A
    TXA = BpfClass.MISC | BpfMiscOp.TXA  # A = X


class PacketType(IntEnum):
    """``skb->pkt_type`` as the ancillary load sees it (linux/if_packet.h PACKET_*)."""

    HOST = 0
    BROADCAST = 1
    MULTICAST = 2
    OTHERHOST = 3
    OUTGOING = 4
    LOOPBACK = 5


SKF_AD_OFF = 0xFFFFF000  # -0x1000 as the u32 k of an absolute load: ancillary data instead of frame bytes
SKF_AD_PKTTYPE = 4
PACKET_OUTGOING = PacketType.OUTGOING
BPF_MAXINSNS = 4096
MAX_JUMP = 0xFF  # conditional jump offsets are 8 bits, forward only

ACCEPT = 0x40000  # the snap length: whole frames, jumbo and GRO included
DROP = 0

_INSN = struct.Struct("@HBBI")  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k, native order


@dataclass(frozen=True, slots=True)
class Insn:
    """One ``struct sock_filter``."""

    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.code <= 0xFFFF and 0 <= self.jt <= MAX_JUMP and 0 <= self.jf <= MAX_JUMP):
            raise ValueError(f"instruction field out of range: {self}")
        if not 0 <= self.k <= 0xFFFFFFFF:
            raise ValueError(f"k is a u32: {self}")


def pack_program(insns: Iterable[Insn]) -> bytes:
    """The program as the ``struct sock_filter`` array that ``struct sock_fprog`` points to."""
    return b"".join(_INSN.pack(i.code, i.jt, i.jf, i.k) for i in insns)


def unpack_program(data: bytes) -> list[Insn]:
    """The inverse of `pack_program`."""
    if len(data) % _INSN.size:
        raise ValueError(f"not a whole number of {_INSN.size}-byte instructions: {len(data)} bytes")
    return [Insn(*fields) for fields in _INSN.iter_unpack(data)]


# ------------------------------------------------------------------------------------------------ emitter


class _Tail(Enum):
    """Shared program tails, emitted again wherever the previous copy is out of reach."""

    ACCEPT = "accept"
    DROP = "drop"
    NO_PORT = "no_port"  # A (copied from X) matched no port: accept the sentinel, drop a real port


@dataclass(frozen=True, slots=True)
class _PortCheck:
    """A shared tail: ``txa`` and a search of A (the UDP port, or the sentinel) over `ports`."""

    ports: tuple[int, ...]  # sorted


_Shared = _Tail | _PortCheck
_Target = int | _Shared  # an int is the position of an emitted instruction

_LEAF = 8  # the longest run of jeq at a search tree's leaf


class Emitter:
    """Lays a program out back to front, so that every jump target is placed before the jump to it.

    Shared by the capture filters here and the worker's seccomp filter (`mcr.linux.seccomp`): a jump target
    is either the position of an emitted instruction or one of this module's shared tails.

    Classic BPF jumps only forward: emitting the last instruction first means a jump's targets already have
    their final distance from it. Positions count from the end of the program (0 is the last instruction),
    so they stay valid as instructions are prepended; `head` is the position of the instruction emitted last,
    which is where a fall-through lands.
    """

    def __init__(self) -> None:
        self._rev: list[Insn] = []  # the program, last instruction first
        self._nearest: dict[_Shared, int] = {}  # the closest copy of each tail, or a `ja` to one
        self._sizes: dict[_Shared, int] = {}  # instructions of each tail's first copy

    @property
    def head(self) -> int:
        return len(self._rev) - 1

    def program(self) -> list[Insn]:
        return self._rev[::-1]

    def stmt(self, code: int, k: int = 0) -> int:
        """Emit a non-jump instruction (it falls through to `head`); returns its position."""
        self._rev.append(Insn(code, 0, 0, k))
        return self.head

    def tail(self, tail: _Shared) -> int:
        """Emit a copy of a shared tail; returns its position."""
        self._emit_shared(tail)
        return self.head

    def goto(self, target: int) -> int:
        """Emit ``ja`` to an emitted instruction (32-bit offset: any distance)."""
        self._rev.append(Insn(Op.JA, 0, 0, len(self._rev) - target - 1))
        return self.head

    def jump(self, code: int, k: int, jt: _Target, jf: _Target) -> int:
        """Emit a conditional jump, first bringing each target within 255 instructions of it.

        A far target gets a ``ja`` trampoline right here, except a shared tail of one instruction (a return),
        which is copied here instead. A trampoline to a shared tail then stands for it in later jumps.
        """
        for _ in range(8):  # each round brings one target within a few instructions
            here = len(self._rev)
            for t in (jt, jf):
                if self._distance(t, here) > MAX_JUMP:
                    if isinstance(t, int):
                        trampoline = self.goto(t)
                        jt, jf = (trampoline if jt == t else jt), (trampoline if jf == t else jf)
                    elif t in self._nearest and self._sizes[t] > 1:
                        self._nearest[t] = self.goto(self._nearest[t])  # cheaper than another copy
                    else:
                        self._emit_shared(t)
                    break
            else:
                self._rev.append(Insn(code, self._distance(jt, here), self._distance(jf, here), k))
                return self.head
        raise AssertionError("jump targets did not settle")  # pragma: no cover

    def _distance(self, target: _Target, here: int) -> int:
        """The jump offset from a new instruction at position `here` to `target` (huge if never emitted)."""
        pos = target if isinstance(target, int) else self._nearest.get(target, -(1 << 32))
        return here - pos - 1

    def _emit_shared(self, tail: _Shared) -> None:
        before = len(self._rev)
        if tail is _Tail.ACCEPT:
            self.stmt(Op.RET_K, ACCEPT)
        elif tail is _Tail.DROP:
            self.stmt(Op.RET_K, DROP)
        elif tail is _Tail.NO_PORT:
            self.jump(Op.JGT_K, 0xFFFF, _Tail.ACCEPT, _Tail.DROP)
        else:
            self.search(tail.ports, lambda _port: _Tail.ACCEPT, _Tail.NO_PORT)
            self.stmt(Op.TXA)
        self._nearest[tail] = self.head
        self._sizes.setdefault(tail, len(self._rev) - before)

    def search(self, values: Sequence[int], hit: Callable[[int], _Target], miss: _Target) -> int:
        """Emit a search of A over `values` (sorted, distinct): to ``hit(v)`` when A == v, else to `miss`.

        A binary tree of ``jgt`` whose leaves are runs of at most `_LEAF` ``jeq``: about log2(n / _LEAF) + _LEAF
        comparisons at run time, n * (1 + 1 / _LEAF) instructions. Returns the entry position.
        """
        if len(values) <= _LEAF:
            nxt = miss
            for value in reversed(values):
                nxt = self.jump(Op.JEQ_K, value, hit(value), nxt)
            return self.head
        leaves = -(-len(values) // _LEAF)
        mid = (leaves + 1) // 2 * _LEAF  # full leaves on the left: as few jgt as possible
        right = self.search(values[mid:], hit, miss)
        left = self.search(values[:mid], hit, miss)
        return self.jump(Op.JGT_K, values[mid - 1], right, left)


# ----------------------------------------------------------------------------------------- capture filter

_PORT_SENTINEL = 0x10000  # X for fragments and non-UDP packets: no port equals it, NO_PORT accepts it
_OFF_ETHERTYPE = 12
_OFF_IP = ETH_HLEN
_OFF_FRAG = ETH_HLEN + 6
_OFF_PROTO = ETH_HLEN + 9
_OFF_DST = ETH_HLEN + 16
_OFF_UDP_DPORT_FROM_X = ETH_HLEN + 2  # X = IP header length: the UDP destination port is at X + 16
_FRAG_MASK = 0x3FFF  # MF flag and fragment offset


_OFF_DST6 = ETH_HLEN + 24
MAX_IPV6_GROUPS = 64  # 8 instructions each; more groups get the ff00::/8 check


def _ipv6_block(e: Emitter, groups: Collection[int]) -> int:
    """Emit the IPv6 part, entered with the ethertype in A: accept IPv6 to one of `groups` (compared a
    word at a time), or to any group when there are more than MAX_IPV6_GROUPS. Returns its entry."""
    if len(groups) > MAX_IPV6_GROUPS:
        e.jump(Op.JEQ_K, 0xFF, _Tail.ACCEPT, _Tail.DROP)
        e.stmt(Op.LD_B_ABS, _OFF_DST6)
    else:
        nxt: _Target = _Tail.DROP
        for group in sorted(groups, reverse=True):
            words = [(group >> shift) & 0xFFFFFFFF for shift in (96, 64, 32, 0)]
            e.jump(Op.JEQ_K, words[3], _Tail.ACCEPT, nxt)
            for i in (2, 1, 0):
                e.stmt(Op.LD_W_ABS, _OFF_DST6 + 4 * (i + 1))
                e.jump(Op.JEQ_K, words[i], e.head, nxt)
            nxt = e.stmt(Op.LD_W_ABS, _OFF_DST6)
    return e.jump(Op.JEQ_K, ETH_P_IPV6, e.head, _Tail.DROP)


def _prologue(e: Emitter, groups6: Collection[int] = ()) -> None:
    """Drop the host's own frames and everything but IPv4 (and IPv6 to `groups6`); `e.head` must be the
    IPv4 part."""
    ipv4 = e.head
    e.jump(Op.JEQ_K, ETH_P_IP, ipv4, _ipv6_block(e, groups6) if groups6 else _Tail.DROP)
    e.stmt(Op.LD_H_ABS, _OFF_ETHERTYPE)
    e.jump(Op.JEQ_K, PACKET_OUTGOING, _Tail.DROP, e.head)
    e.stmt(Op.LD_B_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE)


def build_capture_filter(
    groups: Mapping[int, Collection[int]], groups6: Collection[int] = (), *, max_insns: int = BPF_MAXINSNS
) -> list[Insn]:
    """The capture filter of one input interface, given ``{IPv4 group as int: UDP ports}`` and the IPv6
    groups as ints (which pass on the group alone, see `_ipv6_block`).

    The "groups" may also be unicast addresses of the host (a rule with unicast input), and port 0 stands for
    an ESP rule (no UDP datagram to port 0 is relayed: the worker counts it as no_rule).

    The exact filter (`exact_filter`) when it fits in `max_insns` (the kernel's BPF_MAXINSNS by default); else
    the filter on groups alone (`group_filter`: any port of a configured group passes), else the coarse one
    (`coarse_filter`: IPv4 multicast, and the configured unicast addresses, from another host). Userspace
    rejects what a coarser filter lets through by rule lookup (counted as NO_RULE). A group with no ports is
    ignored; an empty mapping gives a program that drops everything.

    The exact filter takes about ``2 * groups + ports + groups / 8 + 20`` instructions when every group has its
    own port set, and about ``groups * 9 / 8 + ports`` when all groups share one (groups with the same port set
    share its check, through a ``ja`` where it is out of reach): 1000 groups fit either way, and so do 3000
    groups on one port or 3000 ports of one group, while 3000 groups with a port each fall back to the group
    filter.

    Raises ValueError for a group outside 0..2**32-1 or a port outside 0..65535.
    """
    groups6 = frozenset(groups6)
    if bad6 := [g for g in groups6 if not 0 <= g < 1 << 128]:
        raise ValueError(f"IPv6 group out of range: {bad6[0]}")
    table: dict[int, tuple[int, ...]] = {}
    for group, ports in groups.items():
        if not 0 <= group <= 0xFFFFFFFF:
            raise ValueError(f"IPv4 group out of range: {group}")
        if bad := [p for p in ports if not 0 <= p <= 0xFFFF]:
            raise ValueError(f"UDP port out of range: {bad[0]}")
        if ports:
            table[group] = tuple(sorted(set(ports)))
    if not table and not groups6:
        return [Insn(Op.RET_K, 0, 0, DROP)]
    for build in (exact_filter, group_filter):
        program = build(table, groups6)
        if len(program) <= max_insns:
            return program
    return coarse_filter(groups6, [g for g in table if g >> 28 != 0xE])


def exact_filter(groups: Mapping[int, Collection[int]], groups6: Collection[int] = ()) -> list[Insn]:
    """Accept UDP to a (group, port) of `groups`, and fragments and non-UDP packets to a group with ports.
    Front to back::

            ldb  [pkttype]           ; ancillary load
            jeq  #OUTGOING  -> drop
            ldh  [12]
            jeq  #0x800     else drop
            ldh  [20]
            jset #0x3fff    -> other ; a fragment
            ldb  [23]
            jeq  #17        else other
            ldxb 4*([14]&0xf)        ; X = IP header length
            ldh  [x+16]              ; the UDP destination port
            tax
            ja   groups
        other:
            ldx  #0x10000            ; the sentinel, accepted by every group's port check
        groups:
            ld   [30]                ; the IPv4 destination
            search of the groups: group g -> check of g's port set; none -> drop
        check of a port set (shared by the groups with that set, emitted again where out of reach):
            txa
            search of the ports: a port -> accept; none -> no_port
        no_port:
            jgt  #0xffff -> accept, else drop
    """
    e = Emitter()
    e.tail(_Tail.DROP)  # the kernel wants a return last
    ports = {group: _PortCheck(tuple(sorted(set(p)))) for group, p in groups.items() if p}
    e.search(sorted(ports), ports.__getitem__, _Tail.DROP)
    load_dst = e.stmt(Op.LD_W_ABS, _OFF_DST)
    other = e.stmt(Op.LDX_IMM, _PORT_SENTINEL)
    e.goto(load_dst)
    e.stmt(Op.TAX)
    e.stmt(Op.LD_H_IND, _OFF_UDP_DPORT_FROM_X)
    e.stmt(Op.LDX_B_MSH, _OFF_IP)
    e.jump(Op.JEQ_K, IPPROTO_UDP, e.head, other)
    e.stmt(Op.LD_B_ABS, _OFF_PROTO)
    e.jump(Op.JSET_K, _FRAG_MASK, other, e.head)
    e.stmt(Op.LD_H_ABS, _OFF_FRAG)
    _prologue(e, groups6)
    return e.program()


def group_filter(groups: Collection[int], groups6: Collection[int] = ()) -> list[Insn]:
    """Accept IPv4 to one of `groups` from another host: the prologue, ``ld [30]``, a search of the groups."""
    e = Emitter()
    e.tail(_Tail.DROP)
    e.search(sorted(groups), lambda _group: _Tail.ACCEPT, _Tail.DROP)
    e.stmt(Op.LD_W_ABS, _OFF_DST)
    _prologue(e, groups6)
    return e.program()


def coarse_filter(groups6: Collection[int] = (), unicast: Collection[int] = ()) -> list[Insn]:
    """Accept IPv4 to 224.0.0.0/4 or to one of the `unicast` addresses (the inputs of unicast rules, which
    are the host's own, so few) from another host (and IPv6 to `groups6`)."""
    e = Emitter()
    e.tail(_Tail.DROP)
    e.jump(Op.JEQ_K, 0xE0000000, _Tail.ACCEPT, _Tail.DROP)
    e.stmt(Op.ALU_AND_K, 0xF0000000)
    if unicast:
        e.search(sorted(set(unicast)), lambda _address: _Tail.ACCEPT, e.head)
    e.stmt(Op.LD_W_ABS, _OFF_DST)
    _prologue(e, groups6)
    return e.program()


# ------------------------------------------------------------------------------------ checks and interpreter

# Plain ints for the interpreter's dispatch (comparing with enum members is several times slower).
_SIZES: dict[int, int] = {Op.LD_W_ABS.value: 4, Op.LD_H_ABS.value: 2, Op.LD_B_ABS.value: 1, Op.LD_H_IND.value: 2}
_CONDITIONS: dict[int, Callable[[int, int], bool]] = {
    Op.JEQ_K.value: lambda a, k: a == k,
    Op.JGT_K.value: lambda a, k: a > k,
    Op.JGE_K.value: lambda a, k: a >= k,
    Op.JSET_K.value: lambda a, k: bool(a & k),
}
_RET_K = Op.RET_K.value
_LD_H_IND = Op.LD_H_IND.value
_LDX_B_MSH = Op.LDX_B_MSH.value
_LDX_IMM = Op.LDX_IMM.value
_ALU_AND_K = Op.ALU_AND_K.value
_TAX = Op.TAX.value
_TXA = Op.TXA.value
_JA = Op.JA.value
_AD_PKTTYPE = SKF_AD_OFF + SKF_AD_PKTTYPE
_OPS = frozenset(Op)


def check_program(insns: Sequence[Insn]) -> None:
    """The kernel's checks at attach time (`bpf_check_classic`), for the opcodes of `Op`.

    1 to BPF_MAXINSNS instructions, known opcodes, no ancillary load but the packet type (absolute, any size),
    every jump inside the program, and a return as the last instruction. Raises ValueError naming the first fault.
    """
    n = len(insns)
    if not 1 <= n <= BPF_MAXINSNS:
        raise ValueError(f"program length {n} outside 1..{BPF_MAXINSNS}")
    for pc, insn in enumerate(insns):
        if insn.code not in _OPS:
            raise ValueError(f"{pc}: unknown opcode {insn.code:#04x}")
        if insn.code in _SIZES and insn.k >= SKF_AD_OFF and (insn.code == _LD_H_IND or insn.k != _AD_PKTTYPE):
            raise ValueError(f"{pc}: unsupported ancillary load {insn.k - SKF_AD_OFF}")
        if insn.code == Op.JA and pc + 1 + insn.k >= n:
            raise ValueError(f"{pc}: ja {insn.k} leaves the program")
        if insn.code in _CONDITIONS and pc + 1 + max(insn.jt, insn.jf) >= n:
            raise ValueError(f"{pc}: jump {insn.jt}/{insn.jf} leaves the program")
    if insns[-1].code != Op.RET_K:
        raise ValueError("the last instruction is not a return")


def run_program(insns: Sequence[Insn], frame: bytes, pkttype: int = PacketType.HOST) -> int:
    """Run `insns` on `frame` as the kernel would; returns the accept length (0: drop).

    `pkttype` is what the ancillary packet-type load reads. A load past the end of the frame returns 0 from
    the program, as in the kernel. Raises ValueError for an opcode not in `Op`, an ancillary load other than
    the packet type, a jump out of the program, or running off its end.
    """
    a = x = 0
    pc = 0
    n = len(insns)
    size = len(frame)
    while 0 <= pc < n:
        insn = insns[pc]
        code, k = insn.code, insn.k
        pc += 1
        if code == _RET_K:
            return k
        if (width := _SIZES.get(code)) is not None:
            if k >= SKF_AD_OFF:
                if code == _LD_H_IND or k != _AD_PKTTYPE:
                    raise ValueError(f"{pc - 1}: unsupported ancillary load {k - SKF_AD_OFF}")
                a = pkttype
                continue
            start = k + x if code == _LD_H_IND else k
            if start + width > size:
                return 0
            a = int.from_bytes(frame[start : start + width], "big")
        elif (condition := _CONDITIONS.get(code)) is not None:
            pc += insn.jt if condition(a, k) else insn.jf
        elif code == _LDX_B_MSH:
            if k >= size:
                return 0
            x = (frame[k] & 0x0F) << 2
        elif code == _LDX_IMM:
            x = k
        elif code == _ALU_AND_K:
            a &= k
        elif code == _TAX:
            x = a
        elif code == _TXA:
            a = x
        elif code == _JA:
            pc += k
        else:
            raise ValueError(f"{pc - 1}: unknown opcode {code:#04x}")
    raise ValueError(f"control left the program (pc {pc} of {n})")


def disassemble(insns: Sequence[Insn]) -> list[str]:
    """One line per instruction, in the style of ``tcpdump -d``, jump targets as absolute lines."""
    lines = []
    for pc, i in enumerate(insns):
        code, k = i.code, i.k
        if code == Op.RET_K:
            text = f"ret #{k:#x}"
        elif code == Op.LD_B_ABS and k >= SKF_AD_OFF:
            text = f"ldb [ancillary {k - SKF_AD_OFF}]"
        elif code in _SIZES:
            name = {Op.LD_W_ABS: "ld", Op.LD_H_ABS: "ldh", Op.LD_B_ABS: "ldb", Op.LD_H_IND: "ldh"}[Op(code)]
            text = f"{name} [x + {k}]" if code == Op.LD_H_IND else f"{name} [{k}]"
        elif code == Op.LDX_B_MSH:
            text = f"ldxb 4*([{k}]&0xf)"
        elif code == Op.LDX_IMM:
            text = f"ldx #{k:#x}"
        elif code == Op.ALU_AND_K:
            text = f"and #{k:#x}"
        elif code in (Op.TAX, Op.TXA):
            text = Op(code).name.lower()
        elif code == Op.JA:
            text = f"ja {pc + 1 + k}"
        elif code in _CONDITIONS:
            name = Op(code).name.lower().removesuffix("_k")
            text = f"{name} #{k:#x} jt {pc + 1 + i.jt} jf {pc + 1 + i.jf}"
        else:
            text = f"unknown {code:#04x} {i.jt} {i.jf} {k:#x}"
        lines.append(f"({pc:03d}) {text}")
    return lines
