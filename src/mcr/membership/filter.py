"""The classic BPF filter of a membership socket (an `AF_PACKET` `SOCK_DGRAM` socket, so offset 0 is the IP
header): IPv4 packets whose protocol is IGMP, or IPv6 packets whose first header is hop-by-hop followed by ICMPv6
(every MLD message carries Router Alert in a hop-by-hop header). Everything else never leaves the kernel."""

from __future__ import annotations

from mcr.membership.wire import IPPROTO_HOPOPTS, IPPROTO_ICMPV6, IPPROTO_IGMP, Family
from mcr.packet.cbpf import ACCEPT, DROP, Insn, Op

__all__ = ["membership_filter"]


def membership_filter(family: Family) -> list[Insn]:
    if family is Family.IPV4:
        return [
            Insn(Op.LD_B_ABS, k=9),  # protocol
            Insn(Op.JEQ_K, 0, 1, IPPROTO_IGMP),
            Insn(Op.RET_K, k=ACCEPT),
            Insn(Op.RET_K, k=DROP),
        ]
    return [
        Insn(Op.LD_B_ABS, k=6),  # next header
        Insn(Op.JEQ_K, 0, 3, IPPROTO_HOPOPTS),
        Insn(Op.LD_B_ABS, k=40),  # the hop-by-hop header's next header
        Insn(Op.JEQ_K, 0, 1, IPPROTO_ICMPV6),
        Insn(Op.RET_K, k=ACCEPT),
        Insn(Op.RET_K, k=DROP),
    ]
