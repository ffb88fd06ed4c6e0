"""Small, bounded network probes the end-to-end tests run inside their namespaces (stdlib only).

    python3 probes.py recv    --group G --port P --ifname IF [--wire] [--times] --duration S [--stop-after N]
                              (--times: the kernel's arrival timestamps, comparable with the tests' time.time())
    python3 probes.py send    --group G --port P --source IP --count N --rate PPS [--size B]
    python3 probes.py capture --ifname IF --group G --port P --count N --timeout S
    python3 probes.py capture-ip --ifname IF --protocol N --dst A --count N --timeout S   (any IPv4 protocol, ESP)
    python3 probes.py inject  --ifname IF --frames FILE
    python3 probes.py client  --socket PATH --request-file FILE [--newline] --timeout S

Each prints one JSON document on stdout. Every loop is bounded by a count and a deadline; `--ready-file`
is written once the sockets are set up. The probes never choose a destination themselves: they send only
to the group given, out of the interface given, inside the namespace they were started in. `client` talks to
a Unix socket, so the tests can run it under another uid (it imports nothing outside the standard library).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time
from pathlib import Path

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD: struct timespec of 64-bit longs, as SCM_TIMESTAMPNS
_TIMESPEC = struct.Struct("=qq")
_MREQN = struct.Struct("=4s4si")
MAX_PACKETS = 1_000_000


def _ready(path: str | None) -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text("ready\n")
        tmp.replace(path)


def _packet_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((ifname, ETH_P_ALL))
    return s


def _udp_header(frame: bytes) -> dict[str, object] | None:
    """IPv4/UDP header fields of an Ethernet frame, or None for anything else (no fragment handling)."""
    if len(frame) < 14 + 20 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ver_ihl, _tos, total, ident, frag, ttl, proto, csum = struct.unpack_from("!BBHHHBBH", frame, 14)
    ihl = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or proto != 17 or ihl < 20 or len(frame) < 14 + ihl + 8:
        return None
    src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
    sport, dport, ulen, _ucsum = struct.unpack_from("!HHHH", frame, 14 + ihl)
    header = frame[14 : 14 + ihl]
    words = struct.unpack(f"!{ihl // 2}H", header)
    total_sum = sum(words)
    while total_sum >> 16:
        total_sum = (total_sum & 0xFFFF) + (total_sum >> 16)
    return {
        "src_mac": frame[6:12].hex(":"),
        "dst_mac": frame[0:6].hex(":"),
        "src": src,
        "dst": dst,
        "ttl": ttl,
        "ident": ident,
        "frag": frag,
        "ihl": ihl,
        "total_length": total,
        "ip_checksum_ok": total_sum == 0xFFFF,
        "sport": sport,
        "dport": dport,
        "udp_length": ulen,
        "payload_length": len(frame) - 14 - ihl - 8,
        "checksum_field": csum,
    }


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive timestamp (CLOCK_REALTIME, the same in every namespace), else now."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return float(sec) + float(nsec) / 1e9
    return time.time()


def cmd_recv(a: argparse.Namespace) -> dict[str, object]:
    """A UDP socket bound to (group, port) and joined on `ifname`; optionally a wire counter on the same link."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    udp.bind((a.group, a.port))
    mreq = _MREQN.pack(socket.inet_aton(a.group), bytes(4), socket.if_nametoindex(a.ifname))
    udp.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    if a.times:
        udp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    udp.setblocking(False)
    wire = _packet_socket(a.ifname) if a.wire else None
    if wire is not None:
        wire.setblocking(False)
    _ready(a.ready_file)
    udp_count = wire_count = 0
    times: list[float] = []
    start = time.monotonic()
    deadline = start + a.duration
    stop_at: float | None = None
    while time.monotonic() < deadline and udp_count + wire_count < 2 * MAX_PACKETS:
        if stop_at is not None and time.monotonic() >= stop_at:
            break
        socks = [udp] + ([wire] if wire is not None else [])
        readable, _, _ = select.select(socks, [], [], 0.05)
        for s in readable:
            while True:
                try:
                    data, ancillary, _flags, addr = s.recvmsg(65535, 64)
                except BlockingIOError:
                    break
                if s is udp:
                    udp_count += 1
                    if a.times:
                        times.append(_arrival(ancillary))
                else:
                    h = _udp_header(data)
                    if h and addr[2] != PACKET_OUTGOING and h["dst"] == a.group and h["dport"] == a.port:
                        wire_count += 1
        if a.stop_after and stop_at is None and max(udp_count, wire_count) >= a.stop_after:
            stop_at = time.monotonic() + a.grace  # let the kernel deliver what it will, then stop
    udp.close()
    if wire is not None:
        wire.close()
    return {"udp": udp_count, "wire": wire_count, "times": times, "elapsed": time.monotonic() - start}


def cmd_send(a: argparse.Namespace) -> dict[str, object]:
    """`count` numbered datagrams to (group, port) out of the interface that owns `source`, at `rate`."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(a.source))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    s.bind((a.source, 0))
    count = min(a.count, MAX_PACKETS)
    start = time.monotonic()
    sent = 0
    for seq in range(count):
        due = start + seq / a.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        s.sendto(struct.pack("!Q", seq).ljust(a.size, b"\0"), (a.group, a.port))
        sent += 1
    s.close()
    return {"sent": sent, "elapsed": time.monotonic() - start}


def cmd_capture(a: argparse.Namespace) -> dict[str, object]:
    """Headers of the first `count` UDP frames to (group, port) received on `ifname`."""
    s = _packet_socket(a.ifname)
    s.settimeout(0.1)
    _ready(a.ready_file)
    frames: list[dict[str, object]] = []
    deadline = time.monotonic() + a.timeout
    while len(frames) < a.count and time.monotonic() < deadline:
        try:
            data, addr = s.recvfrom(65535)
        except TimeoutError:
            continue
        h = _udp_header(data)
        if h and addr[2] != PACKET_OUTGOING and h["dst"] == a.group and h["dport"] == a.port:
            frames.append(h)
    s.close()
    return {"frames": frames}


def cmd_capture_ip(a: argparse.Namespace) -> dict[str, object]:
    """The first `count` IPv4 packets of `protocol` to `dst` received on `ifname`: header fields, the IP
    payload (hex), whatever the protocol (ESP has no ports), and when each was read (time.time())."""
    s = _packet_socket(a.ifname)
    s.settimeout(0.1)
    _ready(a.ready_file)
    packets: list[dict[str, object]] = []
    deadline = time.monotonic() + a.timeout
    while len(packets) < a.count and time.monotonic() < deadline:
        try:
            data, addr = s.recvfrom(65535)
        except TimeoutError:
            continue
        if addr[2] == PACKET_OUTGOING or len(data) < 34 or struct.unpack_from("!H", data, 12)[0] != ETH_P_IP:
            continue
        ver_ihl, _tos, total, _ident, frag, ttl, proto = struct.unpack_from("!BBHHHBB", data, 14)
        ihl = (ver_ihl & 0x0F) * 4
        if proto != a.protocol or socket.inet_ntoa(data[30:34]) != a.dst or ihl < 20:
            continue
        words = struct.unpack(f"!{ihl // 2}H", data[14 : 14 + ihl])
        total_sum = sum(words)
        while total_sum >> 16:
            total_sum = (total_sum & 0xFFFF) + (total_sum >> 16)
        packets.append(
            {
                "src": socket.inet_ntoa(data[26:30]),
                "dst_mac": data[0:6].hex(":"),
                "ttl": ttl,
                "frag": frag,
                "ip_checksum_ok": total_sum == 0xFFFF,
                "payload": data[14 + ihl : 14 + total].hex(),
                "time": time.time(),
            }
        )
    s.close()
    return {"packets": packets}


def cmd_inject(a: argparse.Namespace) -> dict[str, object]:
    """Send the frames of `frames` (one hex string per line) as they are, out of `ifname`."""
    frames = [bytes.fromhex(line) for line in Path(a.frames).read_text().split()]
    s = _packet_socket(a.ifname)
    for frame in frames[:MAX_PACKETS]:
        s.send(frame)
        time.sleep(a.gap)
    s.close()
    return {"sent": len(frames)}


def cmd_client(a: argparse.Namespace) -> dict[str, object]:
    """One control request: connect, send, half-close (or newline), read the answer until EOF."""
    payload = Path(a.request_file).read_bytes()
    out: dict[str, object] = {"connected": False, "response": None, "error": None}
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(a.timeout)
    try:
        s.connect(a.socket)
        out["connected"] = True
        try:
            s.sendall(payload + (b"\n" if a.newline else b""))
            if not a.newline:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        out["response"] = b"".join(chunks).decode("utf-8", "replace")
    except OSError as e:
        out["error"] = f"{type(e).__name__}: {e}"
        out["errno"] = e.errno
    finally:
        s.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="probes")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--group", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--ifname", required=True)
    r.add_argument("--wire", action="store_true", help="also count matching frames on the link (AF_PACKET)")
    r.add_argument("--times", action="store_true", help="report each datagram's kernel arrival time (time.time())")
    r.add_argument("--duration", type=float, required=True)
    r.add_argument("--stop-after", type=int, default=0, help="stop `--grace` s after this many packets")
    r.add_argument("--grace", type=float, default=0.5)
    r.add_argument("--ready-file")
    s = sub.add_parser("send")
    s.add_argument("--group", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--source", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--size", type=int, default=64)
    c = sub.add_parser("capture")
    c.add_argument("--ifname", required=True)
    c.add_argument("--group", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--timeout", type=float, required=True)
    c.add_argument("--ready-file")
    ci = sub.add_parser("capture-ip")
    ci.add_argument("--ifname", required=True)
    ci.add_argument("--protocol", type=int, required=True)
    ci.add_argument("--dst", required=True)
    ci.add_argument("--count", type=int, required=True)
    ci.add_argument("--timeout", type=float, required=True)
    ci.add_argument("--ready-file")
    i = sub.add_parser("inject")
    i.add_argument("--ifname", required=True)
    i.add_argument("--frames", required=True)
    i.add_argument("--gap", type=float, default=0.001)
    k = sub.add_parser("client")
    k.add_argument("--socket", required=True)
    k.add_argument("--request-file", required=True)
    k.add_argument("--newline", action="store_true")
    k.add_argument("--timeout", type=float, default=10.0)
    a = p.parse_args(argv)
    handler = {
        "recv": cmd_recv,
        "send": cmd_send,
        "capture": cmd_capture,
        "capture-ip": cmd_capture_ip,
        "inject": cmd_inject,
        "client": cmd_client,
    }
    print(json.dumps(handler[a.cmd](a)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
