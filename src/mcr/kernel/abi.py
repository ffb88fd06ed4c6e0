"""Kernel ABI constants for eBPF: commands, map/program/attach types, helper flags, context offsets (pure).

Values are from include/uapi/linux/bpf.h and include/uapi/linux/pkt_cls.h; they are part of the stable ABI.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import Final


class Cmd(IntEnum):
    """bpf(2) commands (`enum bpf_cmd`)."""

    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    OBJ_PIN = 6
    OBJ_GET = 7
    PROG_TEST_RUN = 10
    PROG_GET_NEXT_ID = 11
    OBJ_GET_INFO_BY_FD = 15
    PROG_QUERY = 16
    LINK_CREATE = 28
    LINK_UPDATE = 29
    ENABLE_STATS = 32


class MapType(IntEnum):
    HASH = 1
    ARRAY = 2
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6


class ProgType(IntEnum):
    SOCKET_FILTER = 1
    SCHED_CLS = 3


class AttachType(IntEnum):
    """`enum bpf_attach_type`: tcx hooks since Linux 6.6."""

    TCX_INGRESS = 46
    TCX_EGRESS = 47


class UpdateFlag(IntEnum):
    ANY = 0
    NOEXIST = 1
    EXIST = 2


class StoreFlag(IntFlag):
    """bpf_skb_store_bytes() flags."""

    RECOMPUTE_CSUM = 1 << 0  # keep skb->csum right for CHECKSUM_COMPLETE (bytes covered by it only)
    INVALIDATE_HASH = 1 << 1


class CsumFlag(IntFlag):
    """bpf_l3_csum_replace() / bpf_l4_csum_replace() flags; the low 4 bits give the field size (0, 2 or 4)."""

    SIZE_2 = 2
    SIZE_4 = 4
    PSEUDO_HDR = 1 << 4  # the field is part of the pseudo-header (IP addresses for UDP/TCP)
    MARK_MANGLED_0 = 1 << 5  # UDP: a zero checksum ("none") stays zero; a computed zero becomes 0xffff


class RunFlag(IntFlag):
    """BPF_PROG_TEST_RUN flags."""

    SKB_CHECKSUM_COMPLETE = 1 << 2  # 6.11: skb->csum set on input and checked against the output
    SKB_NON_LINEAR = 1 << 3  # linear part as long as ctx.data_end says, the rest in a page fragment


class LogLevel(IntFlag):
    VERBOSE = 1
    INSNS = 2
    STATS = 4


# tc / tcx verdicts (pkt_cls.h, and TCX_* aliases in bpf.h)
TC_ACT_UNSPEC: Final = -1  # TCX_NEXT: let the next program (or the stack) decide
TC_ACT_OK: Final = 0  # TCX_PASS
TC_ACT_SHOT: Final = 2  # TCX_DROP


class SkbOffset(IntEnum):
    """Offsets of the fields of `struct __sk_buff` (the context of tc programs) used here."""

    LEN = 0
    PROTOCOL = 16
    VLAN_PRESENT = 20
    INGRESS_IFINDEX = 36
    IFINDEX = 40
    DATA = 76
    DATA_END = 80


SKB_CTX_SIZE: Final = 192  # sizeof(struct __sk_buff) on 6.x (up to hwtstamp)
BPF_OBJ_NAME_LEN: Final = 16
