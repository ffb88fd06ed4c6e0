"""traffic_sink: receive UDP streams with recvmmsg and report what arrived (see `mcr.traffic.tally`).

--group and --port take comma-separated lists: several groups on one port, one port per group, or one group on
several ports. Each stream gets its own socket bound to (group, port): a multicast group is joined on
--interface with IP_ADD_MEMBERSHIP (struct ip_mreqn: the interface index when --interface is a name, its
address when it is an IPv4 address), an IPv6 group with IPV6_JOIN_GROUP on the interface named by
--interface; a unicast group is bound as is (or 0.0.0.0 / :: when it is not a local address), and
--interface is then not used. Port 0 binds an ephemeral port; --ready-file reports the ports
actually bound.

The run ends when --expect packets were delivered (intact numbered payloads counted once, plus unnumbered
ones), at --duration, after --idle-timeout seconds without a packet (counted from the first packet), or on
SIGINT/SIGTERM. Exit status: 0, or 3 when --expect was given and not reached; 1 when the sockets cannot be set
up.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Final

from mcr.linux.mmsg import RecvBatch
from mcr.traffic.pacing import NS_PER_S
from mcr.traffic.stop import StopFlag, catch_stop_signals, hold_stop_signals
from mcr.traffic.tally import SinkTally, TallyReport, encode_report

__all__ = [
    "EXIT_EXPECT_NOT_MET",
    "SinkConfig",
    "SinkResult",
    "StopReason",
    "StreamSpec",
    "encode_result",
    "main",
    "open_stream",
    "parse_args",
    "run",
    "streams_from",
]

EXIT_EXPECT_NOT_MET: Final = 3
_RCVBUF: Final = 32 * 1024 * 1024
_SO_RCVBUFFORCE: Final = 33  # Linux: SO_RCVBUF beyond rmem_max, needs CAP_NET_ADMIN (not in typeshed)
_IP_MULTICAST_ALL: Final = 49
_IPV6_MULTICAST_ALL: Final = 29
_MREQ6: Final = struct.Struct("=16sI")  # struct ipv6_mreq: group, interface index
_MREQN: Final = struct.Struct("=4s4si")  # struct ip_mreqn: imr_multiaddr, imr_address, imr_ifindex
_MAX_POLL_MS: Final = 100
_MAX_BATCHES_PER_WAKE: Final = 64


@dataclass(frozen=True, slots=True)
class StreamSpec:
    group: IPv4Address | IPv6Address
    port: int

    def __str__(self) -> str:
        return f"[{self.group}]:{self.port}" if self.group.version == 6 else f"{self.group}:{self.port}"


@dataclass(frozen=True, slots=True)
class SinkConfig:
    streams: tuple[StreamSpec, ...]
    interface: str
    duration: float | None = None
    expect: int | None = None
    idle_timeout: float = 2.0
    ready_file: Path | None = None
    batch: int = 64
    json: bool = False
    quiet: bool = False


def streams_from(groups: Sequence[IPv4Address | IPv6Address], ports: Sequence[int]) -> tuple[StreamSpec, ...]:
    """Pair groups with ports: one port for all groups, one group for all ports, or one port per group."""
    if not groups or not ports:
        raise ValueError("at least one group and one port are needed")
    if len(ports) == 1:
        pairs = [(g, ports[0]) for g in groups]
    elif len(groups) == 1:
        pairs = [(groups[0], p) for p in ports]
    elif len(groups) == len(ports):
        pairs = list(zip(groups, ports, strict=True))
    else:
        raise ValueError(f"{len(groups)} groups and {len(ports)} ports: give one port, or one per group")
    specs = tuple(StreamSpec(g, p) for g, p in pairs)
    fixed = [s for s in specs if s.port != 0]  # port 0: a distinct ephemeral port per socket
    if len(set(fixed)) != len(fixed):
        raise ValueError("the same group and port is listed twice")
    return specs


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="traffic_sink",
        description="Receive UDP streams; report received, lost, duplicated, reordered, corrupted packets.",
    )
    p.add_argument("--group", required=True, help="group (or unicast address), or a comma-separated list")
    p.add_argument("--port", required=True, help="UDP port, or a comma-separated list")
    p.add_argument(
        "--interface", required=True, help="interface name (or, for IPv4 groups, address) to join the groups on"
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--expect", type=int, help="stop once this many packets arrived; exit 3 if never reached")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=2.0,
        help="stop this many seconds after the last packet (default 2)",
    )
    p.add_argument("--ready-file", type=Path, help="written (JSON: pid, streams) once the sockets are ready")
    p.add_argument("--batch", type=int, default=64, help="messages per recvmmsg (1..1024, default 64)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def parse_args(argv: Sequence[str] | None = None) -> SinkConfig:
    parser = _build_parser()
    ns = parser.parse_args(argv)
    try:
        groups = [ip_address(g.strip()) for g in ns.group.split(",")]
    except ValueError as exc:
        parser.error(f"--group: {exc}")
    try:
        ports = [int(p) for p in ns.port.split(",")]
    except ValueError as exc:
        parser.error(f"--port: {exc}")
    if any(not 0 <= p <= 65535 for p in ports):
        parser.error("--port values must be 0..65535")
    try:
        streams = streams_from(groups, ports)
    except ValueError as exc:
        parser.error(str(exc))
    if ns.duration is not None and not ns.duration > 0:
        parser.error(f"--duration must be positive, not {ns.duration}")
    if ns.expect is not None and ns.expect < 0:
        parser.error(f"--expect must not be negative, not {ns.expect}")
    if not ns.idle_timeout > 0:
        parser.error(f"--idle-timeout must be positive, not {ns.idle_timeout}")
    if not 1 <= ns.batch <= 1024:
        parser.error(f"--batch must be 1..1024, not {ns.batch}")
    return SinkConfig(
        streams=streams,
        interface=ns.interface,
        duration=ns.duration,
        expect=ns.expect,
        idle_timeout=ns.idle_timeout,
        ready_file=ns.ready_file,
        batch=ns.batch,
        json=ns.json,
        quiet=ns.quiet,
    )


def _membership(group: IPv4Address | IPv6Address, interface: str) -> bytes:
    if group.version == 6:
        return _MREQ6.pack(group.packed, socket.if_nametoindex(interface))
    try:
        address = IPv4Address(interface)
    except ValueError:
        return _MREQN.pack(group.packed, bytes(4), socket.if_nametoindex(interface))
    return _MREQN.pack(group.packed, address.packed, 0)


def open_stream(spec: StreamSpec, interface: str) -> socket.socket:
    """A non-blocking socket bound to the stream and, for a multicast group, joined on `interface`."""
    v6 = spec.group.version == 6
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        if spec.group.is_multicast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MULTICAST_ALL, 0)
                sock.bind((str(spec.group), spec.port))
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, _membership(spec.group, interface))
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
                sock.bind((str(spec.group), spec.port))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _membership(spec.group, interface))
        else:
            try:
                sock.bind((str(spec.group), spec.port))
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
                sock.bind(("::" if v6 else "0.0.0.0", spec.port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _write_ready_file(path: Path, streams: Sequence[StreamSpec], sockets: Sequence[socket.socket]) -> None:
    doc = {
        "pid": os.getpid(),
        "streams": [
            {"group": str(spec.group), "port": sock.getsockname()[1]}
            for spec, sock in zip(streams, sockets, strict=True)
        ],
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc) + "\n")
    tmp.replace(path)  # atomic: a reader sees nothing or the whole file


class StopReason(StrEnum):
    EXPECT = "expect"
    DURATION = "duration"
    IDLE = "idle"
    SIGNAL = "signal"


@dataclass(frozen=True, slots=True)
class SinkResult:
    report: TallyReport
    stop_reason: StopReason
    elapsed_s: float


def run(config: SinkConfig, sockets: Sequence[socket.socket], stop: StopFlag | None = None) -> SinkResult:
    """Receive until a stop condition; the sockets must be open (see `open_stream`)."""
    stop = stop or StopFlag()
    clock = time.monotonic_ns
    names = [f"{spec.group}:{sock.getsockname()[1]}" for spec, sock in zip(config.streams, sockets, strict=True)]
    tally = SinkTally(names, expected=config.expect)
    batch = RecvBatch(config.batch)
    recv = batch.recv
    lengths = batch.lengths
    buffer = batch.buffer
    offsets = range(0, batch.capacity * batch.size, batch.size)
    poller = select.poll()
    by_fd = {}
    for index, sock in enumerate(sockets):
        poller.register(sock.fileno(), select.POLLIN)
        by_fd[sock.fileno()] = tally.stream(index).feed_packed
    capacity = batch.capacity
    start = clock()
    deadline = start + int(config.duration * NS_PER_S) if config.duration else None
    idle_ns = int(config.idle_timeout * NS_PER_S)
    expect = config.expect
    last_arrival = 0
    next_progress = start + NS_PER_S
    while True:
        now = clock()
        if stop.signum:
            reason = StopReason.SIGNAL
            break
        if expect is not None and tally.delivered >= expect:
            reason = StopReason.EXPECT
            break
        if deadline is not None and now >= deadline:
            reason = StopReason.DURATION
            break
        if last_arrival and now - last_arrival >= idle_ns:
            reason = StopReason.IDLE
            break
        if now >= next_progress:
            if not config.quiet:
                print(f"Progress: {tally.received} packets received", file=sys.stderr, flush=True)
            next_progress = now + NS_PER_S
        timeout = min(next_progress - now, _MAX_POLL_MS * 1_000_000)
        if deadline is not None:
            timeout = min(timeout, deadline - now)
        if last_arrival:
            timeout = min(timeout, last_arrival + idle_ns - now)
        events = poller.poll(max(0, -(-timeout // 1_000_000)))
        for fd, _event in events:
            feed = by_fd[fd]
            for _ in range(_MAX_BATCHES_PER_WAKE):  # bounded, so a flood cannot starve the stop checks
                got = recv(fd)
                if got <= 0:
                    break  # -EAGAIN: drained (other errors, e.g. a pending ICMP error, are skipped too)
                last_arrival = clock()
                feed(buffer, offsets, lengths(got), last_arrival)
                if got < capacity:
                    break
    elapsed = (clock() - start) / NS_PER_S
    return SinkResult(report=tally.report(), stop_reason=reason, elapsed_s=elapsed)


def _render(result: SinkResult) -> str:
    report = result.report
    lines = []
    if len(report.streams) > 1:
        entries = [(s.stream, s.counts) for s in report.streams] + [("total", report.total)]
    else:
        entries = [(report.streams[0].stream, report.total)]
    for name, c in entries:
        lat = c.latency
        lines.append(
            f"{name}: received {c.received} ({c.bytes} bytes), unique {c.unique}, lost {c.lost}, "
            f"duplicated {c.duplicated}, reordered {c.reordered}, late {c.late}, corrupted {c.corrupted}, "
            f"unnumbered {c.unnumbered}, {c.rate_pps:.0f} pps"
        )
        if lat.count:
            lines.append(
                f"  latency us: min {lat.min_us} p50 {lat.p50_us} p99 {lat.p99_us} max {lat.max_us} mean {lat.mean_us}"
            )
    if report.expected is not None:
        lines.append(
            f"expected {report.expected}: {'met' if report.expect_met else 'NOT met'} "
            f"({report.total.delivered} delivered)"
        )
    lines.append(f"stopped: {result.stop_reason} after {result.elapsed_s:.3f} s")
    return "\n".join(lines)


def encode_result(result: SinkResult) -> dict[str, object]:
    out = encode_report(result.report)
    out["stop_reason"] = result.stop_reason.value
    out["elapsed_s"] = round(result.elapsed_s, 6)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    stop = catch_stop_signals()
    sockets: list[socket.socket] = []
    try:
        try:
            for spec in config.streams:
                sockets.append(open_stream(spec, config.interface))
            if config.ready_file is not None:
                _write_ready_file(config.ready_file, config.streams, sockets)
        except OSError as exc:
            print(f"traffic_sink: cannot set up the sockets: {exc.strerror or exc}", file=sys.stderr)
            return 1
        result = run(config, sockets, stop)
    finally:
        for sock in sockets:
            sock.close()
    if config.json:
        print(json.dumps(encode_result(result)), flush=True)
    else:
        print(_render(result), flush=True)
    hold_stop_signals()
    if config.expect is not None and not result.report.expect_met:
        return EXIT_EXPECT_NOT_MET
    return 0


if __name__ == "__main__":
    sys.exit(main())
