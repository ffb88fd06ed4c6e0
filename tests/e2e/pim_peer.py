"""A minimal PIM router for the end-to-end tests, built on our own codec (run inside a test namespace).

    python pim_peer.py --ifname IF --local IP --upstream IP --group G --rp RP --action join|prune
                       [--source S] [--no-hello] [--duration S] [--ready-file PATH]
    python pim_peer.py --ifname IF --local IP --upstream RP --group G --rp RP --action register --source S
    python pim_peer.py --ifname IF --local IP --upstream X --group G --rp RP --action assert --source S
                       --preference P --metric M [--rpt]
    python pim_peer.py --ifname IF --local IP --upstream X --group G --rp RP --action listen --record FILE

It says Hello on IF every second (holdtime 4 s) so that the routers on the link take it as a neighbour,
then sends a (*,G) Join (repeated every 5 s while it runs) or one (*,G) Prune, addressed to `--upstream`
(with `--source S`: an (S,G) Join or Prune).
Everything goes to ALL-PIM-ROUTERS with TTL 1 out of IF; the loop is bounded by `--duration`.
`register` acts as a source's DR instead: it sends the RP a Register carrying one UDP packet from S to G
(unicast, once a second) until a Register-Stop comes back, and prints that as JSON. `assert` sends one
Assert for (S,G) with the metric given, as a router forwarding the same traffic onto the LAN would.
`listen` says Hello and appends every Join/Prune it hears on IF to FILE, one JSON object a line
(`upstream`, and per group its `joins` and `prunes` as [source, "wc"|"rpt"|"sg"]).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import time
from ipaddress import IPv4Address
from pathlib import Path

from mcr.routing.pim_wire import (
    Assert,
    EncodedGroup,
    EncodedSource,
    Hello,
    JoinPrune,
    JoinPruneGroup,
    Register,
    RegisterStop,
    build_pim,
    parse_pim,
)

_MREQN = struct.Struct("=4s4si")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ifname", required=True)
    p.add_argument("--local", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--rp", required=True)
    p.add_argument("--action", choices=("join", "prune", "register", "assert", "listen"), required=True)
    p.add_argument("--record", help="listen: the file the Join/Prunes heard are appended to")
    p.add_argument("--preference", type=int, default=0)
    p.add_argument("--metric", type=int, default=0)
    p.add_argument("--rpt", action="store_true")
    p.add_argument("--source", help="the source a Register announces")
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
    if a.action == "register":
        register(sock, a)
        return
    if a.action == "listen":
        listen(sock, ifindex, a)
        return
    if a.action == "assert":
        group_enc = EncodedGroup(IPv4Address(a.group), 32)
        msg = Assert(group_enc, IPv4Address(a.source), a.rpt, a.preference, a.metric)
        sock.sendto(build_pim(msg), ("224.0.0.13", 0))
        return
    star = EncodedSource(IPv4Address(a.rp), 32, sparse=True, wildcard=True, rpt=True)
    if a.source:
        star = EncodedSource(IPv4Address(a.source), 32, sparse=True)
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


def _kind(source: EncodedSource) -> str:
    return "wc" if source.wildcard else "rpt" if source.rpt else "sg"


def listen(sock: socket.socket, ifindex: int, a: argparse.Namespace) -> None:
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _MREQN.pack(bytes([224, 0, 0, 13]), bytes(4), ifindex))
    sock.settimeout(0.1)
    hello = build_pim(Hello(4, 1, random.getrandbits(32)))
    deadline = time.monotonic() + a.duration
    next_hello = 0.0
    with open(a.record, "a") as record:
        while time.monotonic() < deadline:
            if time.monotonic() >= next_hello:
                sock.sendto(hello, ("224.0.0.13", 0))
                next_hello = time.monotonic() + 1.0
            try:
                data, (sender, _) = sock.recvfrom(65535)
            except TimeoutError:
                continue
            if sender == a.local:
                continue
            msg = parse_pim(data[(data[0] & 0x0F) * 4 :])
            if not isinstance(msg, JoinPrune):
                continue
            groups = [
                {
                    "group": str(g.group.address),
                    "joins": [[str(s.address), _kind(s)] for s in g.joins],
                    "prunes": [[str(s.address), _kind(s)] for s in g.prunes],
                }
                for g in msg.groups
            ]
            line = {"from": sender, "upstream": str(msg.upstream_neighbor), "groups": groups}
            record.write(json.dumps(line) + "\n")
            record.flush()


def register(sock: socket.socket, a: argparse.Namespace) -> None:
    src, group = IPv4Address(a.source), IPv4Address(a.group)
    udp = struct.pack("!HHHH", 5000, 5000, 8 + 4, 0) + b"data"
    inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 16, 17, 0, src.packed, group.packed) + udp
    msg = build_pim(Register(False, False, inner))
    sock.settimeout(0.2)
    deadline = time.monotonic() + a.duration
    next_send = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_send:
            sock.sendto(msg, (a.upstream, 0))
            next_send = time.monotonic() + 1.0
        try:
            data, (sender, _) = sock.recvfrom(65535)
        except TimeoutError:
            continue
        reply = parse_pim(data[(data[0] & 0x0F) * 4 :])
        if isinstance(reply, RegisterStop) and sender == a.upstream:
            print(json.dumps({"register_stop": {"group": str(reply.group.address), "source": str(reply.source)}}))
            return
    print(json.dumps({"register_stop": None}))


if __name__ == "__main__":
    main()
