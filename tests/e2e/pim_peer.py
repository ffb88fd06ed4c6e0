"""A minimal PIM router for the end-to-end tests, built on our own codec (run inside a test namespace).

    python pim_peer.py --ifname IF --local IP --upstream IP --group G --rp RP --action join|prune
                       [--no-hello] [--duration S] [--ready-file PATH]

It says Hello on IF every second (holdtime 4 s) so that the routers on the link take it as a neighbour,
then sends a (*,G) Join (repeated every 5 s while it runs) or one (*,G) Prune, addressed to `--upstream`.
Everything goes to ALL-PIM-ROUTERS with TTL 1 out of IF; the loop is bounded by `--duration`.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import time
from ipaddress import IPv4Address
from pathlib import Path

from mcr.routing.pim_wire import (
    EncodedGroup,
    EncodedSource,
    Hello,
    JoinPrune,
    JoinPruneGroup,
    build_pim,
)

_MREQN = struct.Struct("=4s4si")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ifname", required=True)
    p.add_argument("--local", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--rp", required=True)
    p.add_argument("--action", choices=("join", "prune"), required=True)
    p.add_argument("--no-hello", action="store_true")
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--ready-file")
    a = p.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 103)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, a.ifname.encode())
    ifindex = socket.if_nametoindex(a.ifname)
    sock.setsockopt(
        socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _MREQN.pack(bytes(4), IPv4Address(a.local).packed, ifindex)
    )
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    star = EncodedSource(IPv4Address(a.rp), 32, sparse=True, wildcard=True, rpt=True)
    group = JoinPruneGroup(
        EncodedGroup(IPv4Address(a.group), 32), *(((star,), ()) if a.action == "join" else ((), (star,)))
    )
    jp = build_pim(JoinPrune(IPv4Address(a.upstream), 210, (group,)))
    hello = build_pim(Hello(4, 1, random.getrandbits(32)))
    start = time.monotonic()
    next_hello, next_jp = start, start + (0.0 if a.no_hello else 1.5)
    sent_jp = 0
    while time.monotonic() - start < a.duration:
        now = time.monotonic()
        if not a.no_hello and now >= next_hello:
            sock.sendto(hello, ("224.0.0.13", 0))
            next_hello = now + 1.0
        if now >= next_jp and (a.action == "join" or sent_jp == 0):
            sock.sendto(jp, ("224.0.0.13", 0))
            sent_jp += 1
            next_jp = now + 5.0
            if a.ready_file and sent_jp == 1:
                Path(a.ready_file).write_text("sent\n")
        time.sleep(0.05)


if __name__ == "__main__":
    main()
