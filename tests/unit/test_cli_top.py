"""control_client top: keys, sorting, formatting and the drawn view, plus the loop on a pseudo-terminal."""

from __future__ import annotations

import ast
import io
import json
import os
import termios
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from rich.console import Console, RenderableType

from mcr.cli import top as top_module
from mcr.cli.control_client import ExitCode, TopInvocation, main, parse_command
from mcr.cli.screen import Keyboard, Snapshot, refresh, run_live
from mcr.cli.top import (
    Controls,
    SortKey,
    TopView,
    fitting,
    flow_errors,
    format_rate,
    on_key,
    on_keys,
    on_poll,
    on_poll_error,
    render_top,
    sort_flows,
    split_keys,
)
from mcr.cli.transport import UnreachableError
from mcr.model.rules import Engine, ForwardingRule
from mcr.model.status import FlowStats, KernelStatus, OutputStats, RuleState, RuleView, WorkerInfo
from tests.fake_supervisor import FakeSupervisor, Respond, by_command

T0 = datetime(2024, 5, 1, 12, 34, 56)
T1 = datetime(2024, 5, 1, 12, 35, 1)


def text(renderable: RenderableType, width: int = 160) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, highlight=False).print(renderable)
    return out.getvalue()


def squeezed(renderable: RenderableType) -> list[str]:
    return [" ".join(line.split()) for line in text(renderable).splitlines() if line.strip(" ─")]


def flow(rule_id: str, pps: float = 0.0, bps: float = 0.0, errors: int = 0, drops: int = 0, **kw: object) -> FlowStats:
    out = OutputStats("239.2.2.2", 6000, "eth1", packets_sent=int(pps * 10), send_errors=errors)
    return FlowStats(
        input_group="239.1.1.1",
        input_port=5000,
        packets_relayed=int(pps * 10),
        bytes_relayed=int(bps),
        packets_per_second=pps,
        bits_per_second=bps,
        rule_id=rule_id,
        input_interface="eth0",
        outputs=(out,),
        drops={"truncated": drops} if drops else {},
        **kw,  # type: ignore[arg-type]
    )


FLOWS = (
    flow("beta", pps=500, bps=1e6, errors=0, drops=3),
    flow("alpha", pps=100, bps=9e6, errors=7),
    flow("gamma", pps=500, bps=2e6),
    flow("delta", pps=0, bps=0),
)
WORKERS = (
    WorkerInfo(pid=101, worker_type="DataPlane", core_id=None, worker_id=0, restarts=2, kernel_drops=5),
    WorkerInfo(
        pid=102, worker_type="DataPlane", core_id=None, worker_id=1, status="Starting", kernel_drops=1, ring_resyncs=1
    ),
)


# ----------------------------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("start", "key", "expected"),
    [
        (Controls(), "b", Controls(SortKey.BIT_RATE, descending=True)),
        (Controls(), "n", Controls(SortKey.RULE_ID, descending=False)),  # names read A to Z first
        (Controls(), "e", Controls(SortKey.ERRORS, descending=True)),
        (Controls(), "p", Controls(SortKey.PPS, descending=False)),  # the current key again: reversed
        (Controls(SortKey.RULE_ID, descending=False), "n", Controls(SortKey.RULE_ID, descending=True)),
        (Controls(SortKey.RULE_ID, descending=True), "p", Controls(SortKey.PPS, descending=True)),
        (Controls(), "B", Controls(SortKey.BIT_RATE, descending=True)),  # caps lock on
        (Controls(), "q", Controls(quit=True)),
        (Controls(), "Q", Controls(quit=True)),
        (Controls(), "\x03", Controls(quit=True)),
        (Controls(SortKey.ERRORS), "x", Controls(SortKey.ERRORS)),  # anything else: nothing happens
        (Controls(), " ", Controls()),
        (Controls(), "\n", Controls()),
    ],
)
def test_on_key(start: Controls, key: str, expected: Controls) -> None:
    assert on_key(start, key) == expected


@pytest.mark.parametrize(
    ("data", "keys"),
    [
        ("p", ["p"]),
        ("nq", ["n", "q"]),
        ("\x1b[B", []),  # down arrow is not `b`
        ("\x1b[A\x1b[Bb", ["b"]),
        ("\x1bOP", []),  # F1
        ("\x1b[15~e", ["e"]),  # F5, then e
        ("\x1b[1;5Cn", ["n"]),  # Ctrl+right, then n
        ("\x1bb", []),  # Alt+b
        ("\x1b", []),  # a lone Escape
    ],
)
def test_split_keys_drops_escape_sequences(data: str, keys: list[str]) -> None:
    assert split_keys(data) == keys


def test_on_keys_applies_every_key_in_order() -> None:
    assert on_keys(Controls(), "nn") == Controls(SortKey.RULE_ID, descending=True)
    assert on_keys(Controls(), "\x1b[Bq").quit
    assert on_keys(Controls(), "\x1b[B") == Controls()


# -------------------------------------------------------------------------------------------- sorting


@pytest.mark.parametrize(
    ("controls", "order"),
    [
        (Controls(SortKey.PPS, True), ["beta", "gamma", "alpha", "delta"]),  # ties by rule id
        (Controls(SortKey.PPS, False), ["delta", "alpha", "beta", "gamma"]),
        (Controls(SortKey.BIT_RATE, True), ["alpha", "gamma", "beta", "delta"]),
        (Controls(SortKey.RULE_ID, False), ["alpha", "beta", "delta", "gamma"]),
        (Controls(SortKey.RULE_ID, True), ["gamma", "delta", "beta", "alpha"]),
        (Controls(SortKey.ERRORS, True), ["alpha", "beta", "delta", "gamma"]),  # 7 send errors, 3 drops, 0, 0
    ],
)
def test_sort_flows(controls: Controls, order: list[str]) -> None:
    assert [f.rule_id for f in sort_flows(FLOWS, controls)] == order


def test_flow_errors_counts_send_errors_and_drops() -> None:
    both = FlowStats(
        "239.1.1.1",
        5000,
        0,
        0,
        0.0,
        0.0,
        rule_id="r",
        outputs=(OutputStats("239.2.2.2", 1, "a", send_errors=2), OutputStats("239.2.2.3", 1, "b", send_errors=3)),
        drops={"truncated": 1, "bad_udp_length": 4},
    )
    assert flow_errors(both) == 10


@pytest.mark.parametrize(
    ("rate", "shown"),
    [
        (0.0, "0.0"),
        (12.34, "12.3"),
        (99.96, "100"),
        (950.0, "950"),
        (999.6, "1.00k"),
        (1_000.0, "1.00k"),
        (12_345.0, "12.3k"),
        (123_456.0, "123k"),
        (999_999.0, "1.00M"),  # never "1000k"
        (1_500_000.0, "1.50M"),
        (224e6, "224M"),
        (3e9, "3.00G"),
        (1.2e13, "12.0T"),
    ],
)
def test_format_rate(rate: float, shown: str) -> None:
    assert format_rate(rate) == shown


# -------------------------------------------------------------------------------------------- drawing


def test_footer_shows_the_kernel_engine_when_it_is_loaded() -> None:
    kernel = KernelStatus(True, "auto", rules=3, drops={"fragment": 4, "no_rule": 1})
    lines = squeezed(render_top(on_poll(TopView(), FLOWS, WORKERS, T0, (), kernel), Controls(), 1.0))
    assert "kernel engine 3 rules drops 5" in lines
    unloaded = KernelStatus(False, "auto", "no CAP_BPF")
    lines = squeezed(render_top(on_poll(TopView(), FLOWS, WORKERS, T0, (), unloaded), Controls(), 1.0))
    assert not any("kernel engine" in line for line in lines)


def test_view_shows_flows_outputs_and_footer() -> None:
    view = on_poll(TopView(), FLOWS, WORKERS, T0)
    lines = squeezed(render_top(view, Controls(), 1.0))
    assert lines[0] == "MCR top 4 flows, sorted by packet rate (high to low) p b n e: sort q: quit"
    assert lines[1] == "Rule input / outputs Pkt/s Bit/s Packets Bytes Errors Drops"
    assert "beta eth0 239.1.1.1:5000 500 1.00M 5000 976.6 KiB 0 3" in lines
    assert "alpha eth0 239.1.1.1:5000 100 9.00M 1000 8.6 MiB 7 0" in lines
    assert "-> 239.2.2.2:6000 eth1 1000 0 B 7" in lines  # alpha's output: packets, bytes, send errors
    assert lines[-2:] == [
        "workers 2 (1 running) restarts 2 kernel drops 6 ring resyncs 1",
        "total 1.10k pkt/s, 12.0 Mbit/s refreshed 12:34:56",
    ]
    rows = [line.split()[0] for line in lines if line.split()[0] in {"alpha", "beta", "gamma", "delta"}]
    assert rows == ["beta", "gamma", "alpha", "delta"]  # by packet rate, ties by name


def test_fits_an_80_column_terminal() -> None:
    wide = FlowStats(
        "239.1.1.1", 5000, 123456789, 172838400, 20000.0, 224e6, rule_id="feed-a", input_interface="enp3s0f1",
        outputs=(OutputStats("239.10.1.1", 6000, "enp4s0", 123450, 172830000, 6),), drops={"truncated": 2},
    )  # fmt: skip
    shown = text(render_top(on_poll(TopView(), (wide,), WORKERS, T0), Controls(), 1.0), width=80).splitlines()
    assert all(len(line.rstrip()) <= 80 for line in shown)
    rows = [" ".join(line.split()) for line in shown]
    # The numbers stay whole on the rule's line; the input may wrap under the id, but is never cut.
    (row,) = [r for r in rows if r.startswith("feed-a")]
    assert row == "feed-a enp3s0f1 20.0k 224M 123456789 164.8 MiB 6 2", row
    assert rows[rows.index(row) + 1] == "239.1.1.1:5000"
    assert "-> 239.10.1.1:6000 enp4s0 123450 164.8 MiB 6" in rows


@pytest.mark.parametrize(("lines", "shown"), [(None, 4), (100, 4), (8, 4), (7, 3), (4, 2), (3, 1), (1, 1), (0, 1)])
def test_fitting_counts_a_line_per_rule_and_per_output(lines: int | None, shown: int) -> None:
    assert fitting(FLOWS, lines) == shown  # every flow of FLOWS has one output: two lines each


def test_a_short_terminal_shows_the_top_flows_and_keeps_the_status_lines() -> None:
    view = on_poll(TopView(), FLOWS, WORKERS, T0)
    shown = text(render_top(view, Controls(), 1.0, height=12)).splitlines()
    assert len(shown) <= 12
    rows = [line.split()[0] for line in shown if line and line.split()[0] in {"alpha", "beta", "gamma", "delta"}]
    assert rows == ["beta", "gamma"]  # the busiest two
    assert "... and 2 more flows (taller terminal to see)" in shown
    assert shown[-1].startswith("total ")
    failing = on_poll_error(view, "cannot reach the supervisor", T1)
    shown = text(render_top(failing, Controls(), 1.0, height=15)).splitlines()
    assert len(shown) <= 15 and "cannot reach the supervisor" in shown[-1]


def test_snapshot_has_no_key_help() -> None:
    view = on_poll(TopView(), FLOWS[:1], WORKERS, T0)
    assert "q: quit" not in text(render_top(view, Controls(), 1.0, live=False))
    assert "1 flow," in text(render_top(view, Controls(), 1.0, live=False))


def test_an_error_keeps_the_last_numbers_and_says_so() -> None:
    good = on_poll(TopView(), FLOWS, WORKERS, T0)
    bad = on_poll_error(good, "cannot reach the supervisor: control socket /x does not exist", T1)
    assert bad.flows == good.flows and bad.refreshed_at == T0
    shown = text(render_top(bad, Controls(), 2.0))
    assert "beta" in shown and "refreshed 12:34:56" in shown
    assert "12:35:01 cannot reach the supervisor: control socket /x does not exist" in shown
    assert "retrying every 2 s; numbers above are from the last answer" in shown
    recovered = on_poll(bad, FLOWS[:1], WORKERS, T1)
    assert recovered.error is None
    assert "cannot reach" not in text(render_top(recovered, Controls(), 2.0))


@pytest.mark.parametrize(
    ("view", "shown"),
    [
        (TopView(), "waiting for the supervisor"),
        (on_poll_error(TopView(), "nobody home", T0), "no answer yet"),
        (on_poll(TopView(), (), WORKERS, T0), "no flows: add a rule"),
    ],
)
def test_empty_views_say_why(view: TopView, shown: str) -> None:
    assert shown in text(render_top(view, Controls(), 1.0))


def test_rules_that_are_not_active_say_so_in_their_row_and_the_header() -> None:
    def view(rule_id: str, state: RuleState) -> RuleView:
        rule = ForwardingRule(rule_id, "eth0", IPv4Address("239.1.1.1"), 5000, ())
        return RuleView(rule, Engine.USERSPACE, state, "why")

    rules = (view("alpha", RuleState.PENDING), view("beta", RuleState.ACTIVE), view("gamma", RuleState.WAITING))
    lines = squeezed(render_top(on_poll(TopView(), FLOWS, WORKERS, T0, rules), Controls(), 1.0))
    assert lines[0].startswith("MCR top 4 flows, sorted by packet rate (high to low) 1 pending 1 waiting")
    assert {line.split()[0]: line.split()[1] for line in lines if line.split()[0] in {"alpha", "beta", "gamma"}} == {
        "alpha": "pending",
        "beta": "eth0",
        "gamma": "waiting",
    }
    assert "pending" not in squeezed(render_top(on_poll(TopView(), FLOWS, WORKERS, T0), Controls(), 1.0))[0]


def test_names_are_not_markup() -> None:
    odd = FlowStats("239.1.1.1", 5000, 1, 1, 1.0, 8.0, rule_id="[bold]x[/bold]", input_interface="eth0")
    assert "[bold]x[/bold]" in text(render_top(on_poll(TopView(), (odd,), (), T0), Controls(), 1.0))


def test_refresh_turns_a_failed_poll_into_an_error_line() -> None:
    def unreachable() -> Snapshot:
        raise UnreachableError("cannot reach the supervisor: nothing is listening on /s")

    view = refresh(TopView(), unreachable, now=lambda: T1)
    assert view.error == "cannot reach the supervisor: nothing is listening on /s" and view.error_at == T1
    view = refresh(view, lambda: (FLOWS, WORKERS, (), None, ()), now=lambda: T0)
    assert view.error is None and view.flows == FLOWS


@pytest.mark.parametrize("module", ["top.py", "doctor.py"])
def test_pure_parts_do_no_io(module: str) -> None:
    tree = ast.parse((Path(top_module.__file__).parent / module).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    io_modules = {"os", "socket", "subprocess", "select", "termios", "tty", "time", "shutil", "pathlib"}
    assert not {n for n in names if n.split(".")[0] in io_modules or n.startswith(("mcr.cli.", "rich.live"))} - {
        "mcr.cli.render"
    }


# ------------------------------------------------------------------------------------ keyboard and loop


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def test_keyboard_uses_cbreak_and_restores_the_terminal(pty_pair: tuple[int, int]) -> None:
    master, slave = pty_pair
    before = termios.tcgetattr(slave)
    with open(slave, closefd=False) as stream, Keyboard(stream) as keyboard:
        during = termios.tcgetattr(slave)
        assert not during[3] & (termios.ICANON | termios.ECHO)  # single keys, not echoed
        assert during[3] & termios.ISIG  # Ctrl-C is still a signal
        assert keyboard.wait(0.01) == ""
        os.write(master, b"p")
        assert keyboard.wait(2.0) == "p"  # no Enter needed
    assert termios.tcgetattr(slave) == before


def test_keyboard_without_a_terminal_has_no_keys(tmp_path: Path) -> None:
    stream = io.StringIO("qqq")  # no file descriptor at all
    with Keyboard(stream) as keyboard:
        assert keyboard.wait(0.01) == ""
    with (tmp_path / "f").open("w+") as f, Keyboard(f) as keyboard:
        assert keyboard.wait(0.01) == ""


def test_run_live_draws_then_quits_on_q_and_restores(pty_pair: tuple[int, int]) -> None:
    master, slave = pty_pair
    before = termios.tcgetattr(slave)
    polls: list[int] = []

    def poll() -> Snapshot:
        polls.append(1)
        if len(polls) == 2:
            os.write(master, b"n")  # sort by name: redrawn at once
        if len(polls) == 3:
            os.write(master, b"q")
        return FLOWS, WORKERS, (), None, ()

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=140, height=40, color_system=None)
    with open(slave, closefd=False) as stream:
        run_live(poll, console, Keyboard(stream), 0.05)
    assert len(polls) == 3
    drawn = screen.getvalue()
    assert "\x1b[?1049h" in drawn and "\x1b[?1049l" in drawn  # into the alternate screen and back out
    assert "sorted by rule id (A to Z)" in drawn
    assert termios.tcgetattr(slave) == before


# ------------------------------------------------------------------------------ command line and socket


FLOW_DOC = {
    "rule_id": "feed-a", "input_interface": "eth0", "input_group": "239.1.1.1", "input_port": 5000,
    "packets_relayed": 123456, "bytes_relayed": 172838400, "packets_per_second": 20000.0,
    "bits_per_second": 224e6, "drops": {},
    "outputs": [{"group": "239.10.1.1", "port": 6000, "interface": "eth1", "packets_sent": 123450,
                 "bytes_sent": 172830000, "send_errors": 6}],
}  # fmt: skip
WORKER_DOC = {"pid": 4242, "worker_type": "DataPlane", "core_id": None, "worker_id": 0, "status": "Running",
              "uid": 65534, "restarts": 1, "drops": {}, "kernel_packets": 9, "kernel_drops": 3}  # fmt: skip
RULE_DOC = {
    "rule_id": "feed-a", "input_interface": "eth0", "input_group": "239.1.1.1", "input_port": 5000,
    "input_source": None, "outputs": [{"group": "239.10.1.1", "port": 6000, "interface": "eth1", "ttl": 1}],
    "source": "runtime", "engine": "userspace", "state": "pending",
    "state_reason": "workers are applying the rule set (generation 3)",
}  # fmt: skip


@pytest.fixture
def supervisor(
    fake_supervisor: Callable[[Respond], FakeSupervisor],
) -> Callable[[Mapping[str, object]], FakeSupervisor]:
    """A fake supervisor answering each request by its text, like the real one."""
    return lambda answers: fake_supervisor(by_command(answers))


@pytest.mark.parametrize("argv", [["top", "--once"], ["top"]])  # stdout is not a terminal under pytest
def test_snapshot_from_the_supervisor(
    argv: list[str], supervisor: Callable[[Mapping[str, object]], FakeSupervisor], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = supervisor(
        {
            "GetStats": {"Stats": [FLOW_DOC]},
            "ListWorkers": {"Workers": [WORKER_DOC]},
            "ListRules": {"Rules": [RULE_DOC]},
        }
    )
    assert main(["--socket-path", str(fake.path), *argv]) == ExitCode.OK
    out = capsys.readouterr().out
    # GetKernelStatus and GetQueriers last: this fake knows neither (an Error, as from the original), so no
    # kernel line and no membership line
    assert [json.loads(r) for r in fake.requests] == [
        "GetStats",
        "ListWorkers",
        "ListRules",
        "GetKernelStatus",
        "GetQueriers",
    ]
    assert not any(line.startswith("membership") for line in out.splitlines())
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert lines[0] == "MCR top 1 flow, sorted by packet rate (high to low) 1 pending"
    assert "feed-a pending eth0 239.1.1.1:5000 20.0k 224M 123456 164.8 MiB 6 0" in lines
    assert "-> 239.10.1.1:6000 eth1 123450 164.8 MiB 6" in lines
    assert "workers 1 (1 running) restarts 1 kernel drops 3 ring resyncs 0" in lines  # an older supervisor: 0
    assert "\x1b" not in out


def test_snapshot_when_unreachable_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--socket-path", str(tmp_path / "none.sock"), "top", "--once"]) == ExitCode.UNREACHABLE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "control_client: cannot reach the supervisor: control socket" in captured.err


def test_snapshot_when_refused_exits_1(
    supervisor: Callable[[Mapping[str, object]], FakeSupervisor], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = supervisor({"GetStats": {"Error": "permission denied: uid 1000 is not allowed"}})
    assert main(["--socket-path", str(fake.path), "top", "--once"]) == ExitCode.ERROR_RESPONSE
    assert capsys.readouterr().err == "error: permission denied: uid 1000 is not allowed\n"


def test_top_arguments() -> None:
    assert parse_command(["top"], {}) == TopInvocation("/run/mcr/control.sock", 2.0, 1.0, once=False)
    assert parse_command(["--timeout", "5", "top", "--interval", "0.5", "--once"], {"MCR_CONTROL_SOCKET": "/s"}) == (
        TopInvocation("/s", 5.0, 0.5, once=True)
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["top", "--interval", "0"], "invalid interval '0'"),
        (["top", "--interval", "x"], "invalid interval 'x'"),
        (["top", "--json"], "top has no JSON output"),
    ],
)
def test_top_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == ExitCode.USAGE
    assert message in capsys.readouterr().err
