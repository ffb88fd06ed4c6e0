"""`control_client top` and `doctor` against the real relay: a snapshot, a live view on a pseudo-terminal,
and the pitfalls doctor must find when they are planted in the relay's namespace."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mcr.lab import Lab
from tests.e2e.harness import Relay, mcr, send, wait_for

_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78])")
ROWS, COLS = 40, 160


def squeezed(output: str) -> list[str]:
    return [" ".join(line.split()) for line in output.splitlines()]


def test_top_once_shows_the_rule_and_its_packets(lab: Lab, relay: Relay) -> None:
    relay.add("flow-a", "239.2.2.2:6001:rout")
    send(lab, count=300, rate=3000)
    relay.wait_relayed("flow-a", 300)
    result = relay.ctl("top", "--once")
    rows = squeezed(result.stdout)
    # rule and input, packet rate, bit rate, packets, payload bytes (300 x 1400), errors, drops
    flow = [r for r in rows if r.startswith("flow-a ")]
    assert len(flow) == 1 and re.fullmatch(r"flow-a rin 239\.1\.1\.1:5001 \S+ \S+ 300 410\.2 KiB 0 0", flow[0]), rows
    assert "-> 239.2.2.2:6001 rout 300 410.2 KiB 0" in rows, rows
    assert "workers 1 (1 running) restarts 0 kernel drops 0 ring resyncs 0" in rows, rows
    assert [(w["kernel_drops"], w["ring_resyncs"]) for w in relay.workers()] == [(0, 0)]
    assert "q: quit" not in result.stdout and "\x1b" not in result.stdout  # a snapshot, not a screen


class Terminal:
    """A pseudo-terminal of ROWS x COLS: what a person sees over ssh, and a keyboard."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.screen = b""

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env["TERM"] = "xterm-256color"

        def controlling_terminal() -> None:  # after setsid: Ctrl-C on this terminal signals the child
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            # as in a user's shell: a test run started in the background inherits SIGINT ignored, and top with it
            signal.signal(signal.SIGINT, signal.SIG_DFL)

        return subprocess.Popen(
            argv,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env,
            start_new_session=True,
            preexec_fn=controlling_terminal,
        )

    def read(self, timeout: float = 0.1) -> str:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                self.screen += os.read(self.master, 65536)
            except OSError:
                pass  # EIO: nothing holds the terminal open any more
        return _ANSI.sub("", self.screen.decode("utf-8", "replace"))

    def wait_for_text(self, text: str, timeout: float = 15.0) -> None:
        wait_for(lambda: text in self.read(), timeout, what=f"{text!r} on the screen")

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    t = Terminal()
    yield t
    t.close()


@pytest.mark.parametrize(("key", "how"), [(b"q", "q"), (b"\x03", "Ctrl-C")])
def test_top_live_on_a_terminal_exits_cleanly(key: bytes, how: str, relay: Relay, terminal: Terminal) -> None:
    relay.add("flow-live", "239.2.2.2:6001:rout")
    before = termios.tcgetattr(terminal.slave)
    proc = terminal.spawn(mcr("control", "--socket-path", relay.socket_path, "top", "--interval", "0.3"))
    try:
        terminal.wait_for_text("flow-live")
        assert "\x1b[?1049h" in terminal.screen.decode(errors="replace")  # the alternate screen
        assert termios.tcgetattr(terminal.slave)[3] & termios.ICANON == 0  # cbreak while it runs
        os.write(terminal.master, b"n")
        terminal.wait_for_text("sorted by rule id (A to Z)", 5)
        os.write(terminal.master, key)
        deadline = time.monotonic() + 5
        while proc.poll() is None and time.monotonic() < deadline:
            terminal.read(0.05)
        assert proc.returncode == 0, f"top did not exit 0 within 5 s after {how}: {proc.returncode}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    terminal.read(0.2)
    raw = terminal.screen.decode(errors="replace")
    assert raw.rfind("\x1b[?1049l") > raw.rfind("\x1b[?1049h"), "the alternate screen was not left"
    assert "Traceback" not in raw, raw[-2000:]
    assert termios.tcgetattr(terminal.slave) == before, "terminal settings were not restored"


def test_top_keeps_running_while_the_supervisor_is_away(relay: Relay, terminal: Terminal) -> None:
    relay.add("flow-b", "239.2.2.2:6001:rout")
    proc = terminal.spawn(mcr("control", "--socket-path", relay.socket_path, "top", "--interval", "0.2"))
    try:
        terminal.wait_for_text("flow-b")
        relay.stop()
        terminal.wait_for_text("cannot reach the supervisor")
        assert proc.poll() is None, "top exited when the supervisor went away"
        relay.start()
        relay.add("flow-c", "239.2.2.3:6002:rout", group="239.1.1.2", port=5002)
        terminal.wait_for_text("flow-c")
        os.write(terminal.master, b"q")
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def doctor(lab: Lab, relay: Relay, *flags: str) -> subprocess.CompletedProcess[str]:
    """doctor inside the relay's namespace: the host facts it reads must be the relay's."""
    argv = mcr("control", "--socket-path", relay.socket_path, *flags, "doctor")
    return subprocess.run(lab.exec_argv(lab.relay, argv), capture_output=True, text=True, timeout=60)


def problems(doc: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    found: dict[str, list[dict[str, str]]] = {}
    for f in doc["findings"]:
        if f["severity"] in ("warning", "error") and f["check"] != "buffers":  # rmem/wmem: global, not ours
            found.setdefault(f["check"], []).append(f)
    return found


def test_doctor_finds_the_planted_pitfalls(lab: Lab, relay: Relay) -> None:
    relay.add("routed", "239.2.2.2:6001:rout", extra=["--ttl", "8"])
    clean = doctor(lab, relay, "--json")
    assert clean.stderr == ""
    assert problems(json.loads(clean.stdout)) == {}, clean.stdout
    rp = [f for f in json.loads(clean.stdout)["findings"] if f["check"] == "rp_filter"]
    assert [(f["severity"], f["title"]) for f in rp] == [("info", "rp_filter strict on input rin (all=1, rin=1)")]

    relay.add("ttl-one", "239.2.2.3:6002:rout", group="239.1.1.2", port=5002)
    relay.add("ghost", "239.2.2.4:6003:rout", iface="nosuch0", group="239.1.1.3", port=5003, extra=["--ttl", "8"])
    lab.netns(lab.relay, "ip", "link", "set", "rout", "mtu", "1000")
    lab.netns(lab.relay, "ethtool", "-K", "rin", "gro", "on")

    result = doctor(lab, relay, "--json")
    assert result.returncode == 1, result.stderr
    found = problems(json.loads(result.stdout))
    assert sorted(found) == ["mtu", "offloads", "rules", "ttl"], found
    assert [f["title"] for f in found["ttl"]] == ["rule ttl-one: 1 output sent with TTL 1"]
    assert [f["title"] for f in found["mtu"]] == ["MTU of output rout (1000) is smaller than input rin (1500)"]
    assert found["mtu"][0]["fix"].startswith("ip link set rout mtu 1500")
    assert [(f["severity"], f["title"]) for f in found["rules"]] == [
        ("error", "rule ghost is waiting: input interface nosuch0 does not exist")
    ]
    assert found["rules"][0]["fix"].startswith("check the name nosuch0")
    assert [f["title"] for f in found["offloads"]] == ["generic-receive-offload on for input interface rin"]
    assert found["offloads"][0]["fix"].startswith("ethtool -K rin gro off")

    human = doctor(lab, relay)
    assert human.returncode == 1
    text = " ".join(human.stdout.split())
    for shown in ("warning ttl", "warning mtu", "error rules", "warning offloads", "ethtool -K rin gro off"):
        assert shown in text, human.stdout
    assert re.search(r"\d+ problems found$", text), text[-200:]
