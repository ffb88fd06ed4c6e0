"""The real traffic_generator and traffic_sink commands against each other on 127.0.0.1 (unicast, no root)."""

from __future__ import annotations

import json
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from mcr.packet.build import ipv4_checksum
from mcr.traffic import generator, sink

HOST = "127.0.0.1"


def command(name: str, module: str) -> list[str]:
    """The installed console script next to this interpreter, else `python -m`."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]


GENERATOR = command("traffic_generator", "mcr.traffic.generator")
SINK = command("traffic_sink", "mcr.traffic.sink")


@dataclass
class Sink:
    proc: subprocess.Popen[str]
    ports: list[int]

    def result(self, timeout: float = 15) -> tuple[int, dict[str, object]]:
        out, err = self.proc.communicate(timeout=timeout)
        assert out, err
        return self.proc.returncode, json.loads(out)


StartSink = Callable[..., Sink]


@pytest.fixture
def start_sink(tmp_path: Path) -> Iterator[StartSink]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, group: str = HOST, port: str = "0") -> Sink:
        ready = tmp_path / f"ready-{len(procs)}.json"
        proc = subprocess.Popen(
            [
                *SINK,
                "--group",
                group,
                "--port",
                port,
                "--interface",
                "lo",
                "--json",
                "--quiet",
                "--ready-file",
                str(ready),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "sink never became ready"
            time.sleep(0.01)
        doc = json.loads(ready.read_text())
        assert doc["pid"] == proc.pid
        return Sink(proc, [s["port"] for s in doc["streams"]])

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def generate(port: int, *args: str, timeout: float = 15) -> dict[str, object]:
    done = subprocess.run(
        [*GENERATOR, "--group", HOST, "--port", str(port), "--interface", HOST, "--json", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("size", [1, 64, 1400])
def test_every_packet_arrives_intact(start_sink: StartSink, size: int) -> None:
    s: Sink = start_sink("--expect", "2000", "--idle-timeout", "5")
    sent = generate(s.ports[0], "--rate", "20000", "--count", "2000", "--size", str(size), "--run-id", "77")
    assert (sent["sent"], sent["errors"], sent["size"], sent["run_id"]) == (2000, 0, size, 77)
    assert sent["numbered"] is (size >= 32)
    code, report = s.result()
    assert code == 0
    assert (report["received"], report["delivered"], report["lost"], report["corrupted"]) == (
        2000,
        2000,
        0,
        0,
    )
    assert (report["duplicated"], report["stop_reason"], report["expect_met"]) == (0, "expect", True)
    if size >= 32:
        assert (report["unique"], report["unnumbered"]) == (2000, 0)
        streams = report["streams"]
        assert isinstance(streams, list)
        assert streams[0]["runs"] == [
            {
                "run_id": 77,
                "unique": 2000,
                "lost": 0,
                "duplicated": 0,
                "reordered": 0,
                "late": 0,
                "max_seq": 1999,
            }
        ]
        latency = report["latency_us"]
        assert isinstance(latency, dict)
        assert latency["count"] == 2000
        assert 0 <= latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"]
    else:
        assert (report["unique"], report["unnumbered"]) == (0, 2000)


def test_expect_not_reached_exits_3_after_the_idle_timeout(start_sink: StartSink) -> None:
    s: Sink = start_sink("--expect", "600", "--idle-timeout", "0.5")
    generate(s.ports[0], "--rate", "20000", "--count", "500", "--size", "64")
    code, report = s.result()
    assert code == 3
    assert (report["received"], report["lost"], report["expect_met"], report["stop_reason"]) == (
        500,
        100,
        False,
        "idle",
    )


def test_raw_payload_mode_is_counted_as_unnumbered(start_sink: StartSink) -> None:
    s: Sink = start_sink("--expect", "300")
    sent = generate(s.ports[0], "--rate", "0", "--count", "300", "--size", "100", "--payload", "hello")
    assert (sent["sent"], sent["numbered"]) == (300, False)
    code, report = s.result()
    assert code == 0
    assert (report["unnumbered"], report["corrupted"], report["bytes"]) == (300, 0, 30000)


def test_one_sink_receives_several_streams(start_sink: StartSink) -> None:
    s: Sink = start_sink("--expect", "1500", port="0,0")
    assert len(s.ports) == 2
    generate(s.ports[0], "--rate", "20000", "--count", "1000", "--size", "64", "--run-id", "1")
    generate(s.ports[1], "--rate", "20000", "--count", "500", "--size", "200", "--run-id", "2")
    code, report = s.result()
    assert code == 0
    streams = report["streams"]
    assert isinstance(streams, list)
    assert [(st["stream"], st["unique"], st["lost"]) for st in streams] == [
        (f"{HOST}:{s.ports[0]}", 1000, 0),
        (f"{HOST}:{s.ports[1]}", 500, 0),
    ]
    assert (report["unique"], report["bytes"]) == (1500, 1000 * 64 + 500 * 200)


def test_gso_batches_arrive_as_separate_datagrams(start_sink: StartSink) -> None:
    s: Sink = start_sink("--expect", "3000")
    sent = generate(s.ports[0], "--rate", "30000", "--count", "3000", "--size", "300", "--gso")
    assert sent["sent"] == 3000
    code, report = s.result()
    assert code == 0
    assert (report["unique"], report["lost"], report["corrupted"], report["bytes"]) == (3000, 0, 0, 900_000)


def test_duration_and_signals_end_both_cleanly(start_sink: StartSink) -> None:
    s: Sink = start_sink("--duration", "30")
    gen = subprocess.Popen(
        [
            *GENERATOR,
            "--group",
            HOST,
            "--port",
            str(s.ports[0]),
            "--interface",
            HOST,
            "--rate",
            "2000",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # signal it only once it is sending (its first progress line), not while a loaded machine is
        # still importing it: an interrupt there is Python's, not the generator's, to handle
        assert gen.stderr is not None
        ready, _, _ = select.select([gen.stderr], [], [], 20)
        assert ready, "the generator printed no progress within 20 s"
        first = gen.stderr.readline()
        gen.send_signal(signal.SIGINT)
        out, err = gen.communicate(timeout=10)
        err = first + err
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.communicate()
    assert gen.returncode == 0, err
    summary = json.loads(out)
    assert set(summary) == {
        "sent",
        "errors",
        "elapsed_s",
        "pps",
        "target_pps",
        "gbps",
        "size",
        "run_id",
        "numbered",
        "first_error",
        "cpu_s",
    }
    assert summary["sent"] > 0 and summary["cpu_s"] > 0
    assert summary["target_pps"] == 2000
    time.sleep(0.1)
    s.proc.send_signal(signal.SIGTERM)
    code, report = s.result()
    assert code == 0
    assert (report["stop_reason"], report["received"], report["lost"]) == ("signal", summary["sent"], 0)


def test_a_signal_after_the_report_does_not_kill_the_sink(start_sink: StartSink) -> None:
    """A caller that stops the sink just as it reaches --expect (SIGTERM racing the exit) still gets exit 0.

    The signal is sent as soon as the report's line is out, while the sink is still on its way out."""
    s: Sink = start_sink("--expect", "5", "--idle-timeout", "10")
    generate(s.ports[0], "--count", "5", "--rate", "1000", "--size", "64")
    assert s.proc.stdout is not None
    ready, _, _ = select.select([s.proc.stdout], [], [], 15)
    assert ready, "the sink printed no report within 15 s of its expected packets"
    line = s.proc.stdout.readline()
    s.proc.send_signal(signal.SIGTERM)
    rest, err = s.proc.communicate(timeout=10)
    assert (s.proc.returncode, rest) == (0, ""), err
    report = json.loads(line)
    assert (report["stop_reason"], report["received"], report["expect_met"]) == ("expect", 5, True)


def test_generator_duration_limit() -> None:
    started = time.monotonic()
    summary = generate(9, "--rate", "1000", "--duration", "0.3", "--size", "64")
    assert 0.25 < float(summary["elapsed_s"]) < 2  # type: ignore[arg-type]
    assert time.monotonic() - started < 10
    assert 200 <= int(summary["sent"]) + int(summary["errors"]) <= 400  # type: ignore[call-overload]


def test_bad_arguments_are_usage_errors() -> None:
    done = subprocess.run(
        [*GENERATOR, "--group", "not-an-ip", "--port", "1", "--interface", HOST],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert done.returncode == 2
    assert "not an IPv4 or IPv6 address" in done.stderr
    done = subprocess.run(
        [*SINK, "--group", "239.1.1.1,239.1.1.2,239.1.1.3", "--port", "1,2", "--interface", "lo"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert done.returncode == 2
    assert "one port, or one per group" in done.stderr


def test_sink_setup_failure_exits_1() -> None:
    done = subprocess.run(
        [*SINK, "--group", "239.1.1.1", "--port", "5000", "--interface", "no-such-if0", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert done.returncode == 1
    assert "cannot set up the sockets" in done.stderr


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        ([], "rate", 1000),
        ([], "size", 1024),
        ([], "count", 0),
        ([], "ttl", None),
        ([], "loop", False),
        ([], "batch", 64),
        (["--payload", "abc"], "payload", b"abc"),
        (["--run-id", "5"], "run_id", 5),
        (["--rate", "0", "--gso"], "gso", True),
        (["--raw", "eth1"], "raw", "eth1"),
        (["--raw", "eth1"], "raw_mode", "mmsg"),
        (["--raw", "eth1", "--raw-mode", "ring"], "raw_mode", "ring"),
    ],
)
def test_generator_flags(argv: Sequence[str], field: str, value: object) -> None:
    config = generator.parse_args(["--group", "239.1.1.1", "--port", "5001", "--interface", "10.0.0.1", *argv])
    assert getattr(config, field) == value


@pytest.mark.parametrize(
    "argv",
    [
        ["--size", "65508"],
        ["--batch", "0"],
        ["--batch", "1025"],
        ["--rate", "-1"],
        ["--run-id", str(2**32)],
        ["--ttl", "256"],
        ["--duration", "0"],
        ["--gso", "--size", "40000"],
        ["--gso", "--size", "0"],
        ["--raw", "eth1", "--gso"],
        ["--raw-mode", "ring"],
        ["--raw", "eth1", "--raw-mode", "sendfile"],
    ],
)
def test_generator_rejects(argv: Sequence[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        generator.parse_args(["--group", "239.1.1.1", "--port", "5001", "--interface", "10.0.0.1", *argv])
    assert exc.value.code == 2


def test_raw_mode_needs_a_multicast_group() -> None:
    with pytest.raises(SystemExit):
        generator.parse_args(["--group", "10.0.0.9", "--port", "5001", "--interface", "10.0.0.1", "--raw", "eth1"])


def test_raw_frame_header_is_what_the_udp_socket_would_send() -> None:
    config = generator.parse_args(
        ["--group", "239.1.2.3", "--port", "5001", "--interface", "10.0.0.1", "--size", "100", "--ttl", "7"]
    )
    header = generator.frame_header(config, bytes.fromhex("020000000042"))
    (ver_ihl, total, flags, ttl, proto, src, dst, _sport, dport, udp_len) = struct.unpack(
        "!BxHxxHBBxx4s4sHHHxx", header[14:]
    )
    assert bytes(header[:14]) == bytes.fromhex("01005e0102030200000000420800")
    assert (ver_ihl, total, flags, ttl, proto, dport, udp_len) == (0x45, 128, 0x4000, 7, 17, 5001, 108)
    assert (IPv4Address(src), IPv4Address(dst)) == (IPv4Address("10.0.0.1"), IPv4Address("239.1.2.3"))
    assert ipv4_checksum(bytes(header[14:34])) == 0
    assert header[40:42] == b"\0\0"  # no UDP checksum: the payload varies, the header is shared


@pytest.mark.parametrize(
    ("groups", "ports", "pairs"),
    [
        (["239.1.1.1"], [5001], [("239.1.1.1", 5001)]),
        (["239.1.1.1", "239.1.1.2"], [5001], [("239.1.1.1", 5001), ("239.1.1.2", 5001)]),
        (["239.1.1.1", "239.1.1.2"], [5001, 5002], [("239.1.1.1", 5001), ("239.1.1.2", 5002)]),
        (["239.1.1.1"], [5001, 5002], [("239.1.1.1", 5001), ("239.1.1.1", 5002)]),
    ],
)
def test_sink_stream_pairing(groups: list[str], ports: list[int], pairs: list[tuple[str, int]]) -> None:
    specs = sink.streams_from([IPv4Address(g) for g in groups], ports)
    assert [(str(s.group), s.port) for s in specs] == pairs


@pytest.mark.parametrize(("groups", "ports"), [(["239.1.1.1"] * 2, [5001]), (["239.1.1.1"] * 3, [1, 2])])
def test_sink_stream_pairing_errors(groups: list[str], ports: list[int]) -> None:
    with pytest.raises(ValueError):
        sink.streams_from([IPv4Address(g) for g in groups], ports)
