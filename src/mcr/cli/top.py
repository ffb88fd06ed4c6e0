"""`control_client top`, the pure part: what the view holds, how keys change it, and how it is drawn.

No sockets, no terminal: polls and key presses come in as values, a `rich` renderable goes out. The
terminal side (cbreak keyboard, `rich.live.Live`, the poll loop) is `mcr.cli.screen`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum

from rich import box
from rich.console import Group, JustifyMethod, RenderableType
from rich.table import Table
from rich.text import Text

from mcr.cli.render import endpoint, format_bit_rate, format_bytes
from mcr.membership.querier import QuerierView
from mcr.model.status import FlowStats, KernelStatus, RuleState, RuleView, WorkerInfo

_QUIT_KEYS = frozenset({"q", "Q", "\x03"})  # \x03: Ctrl-C should the terminal ever deliver it as a byte
_PREFIXES = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))
_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("Rule  input / outputs", "left"),
    ("Pkt/s", "right"),
    ("Bit/s", "right"),
    ("Packets", "right"),
    ("Bytes", "right"),
    ("Errors", "right"),
    ("Drops", "right"),
)


class SortKey(Enum):
    """The keys that choose the order of the flows; the value is the key the operator presses."""

    PPS = "p"
    BIT_RATE = "b"
    RULE_ID = "n"
    ERRORS = "e"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def descending_first(self) -> bool:
        """Busiest (or most broken) first; names read A to Z."""
        return self is not SortKey.RULE_ID


_LABELS = {
    SortKey.PPS: "packet rate",
    SortKey.BIT_RATE: "bit rate",
    SortKey.RULE_ID: "rule id",
    SortKey.ERRORS: "errors+drops",
}


@dataclass(frozen=True, slots=True)
class Controls:
    """What the operator chose with the keyboard."""

    sort: SortKey = SortKey.PPS
    descending: bool = True
    quit: bool = False


def on_key(controls: Controls, key: str) -> Controls:
    """One key press. A sort key picks that order; pressing it again reverses it. Other keys do nothing."""
    if key in _QUIT_KEYS:
        return replace(controls, quit=True)
    try:
        sort = SortKey(key.lower())
    except ValueError:
        return controls
    if sort is controls.sort:
        return replace(controls, descending=not controls.descending)
    return Controls(sort=sort, descending=sort.descending_first, quit=controls.quit)


def split_keys(data: str) -> list[str]:
    """The single keys in one read from the terminal, without escape sequences.

    An arrow or function key arrives as `ESC [ ... final` or `ESC O final`; its letters must not count
    as key presses (the down arrow, `ESC [ B`, is not `b`).
    """
    keys: list[str] = []
    i = 0
    while i < len(data):
        ch = data[i]
        i += 1
        if ch != "\x1b":
            keys.append(ch)
            continue
        if i < len(data) and data[i] in "[O":
            i += 1
            while i < len(data) and not "\x40" <= data[i] <= "\x7e":  # parameters, up to the final byte
                i += 1
            i += 1
        elif i < len(data):
            i += 1  # ESC + one character (Alt+key)
    return keys


def on_keys(controls: Controls, data: str) -> Controls:
    """Every key of one read, in order (a paste or a held key arrives as several)."""
    for key in split_keys(data):
        controls = on_key(controls, key)
    return controls


@dataclass(frozen=True, slots=True)
class TopView:
    """The latest answers. After a failed poll the last good numbers stay, marked by the error."""

    flows: tuple[FlowStats, ...] = ()
    workers: tuple[WorkerInfo, ...] = ()
    states: tuple[tuple[str, RuleState], ...] = ()  # rule id -> state, for the rules that are not active
    refreshed_at: datetime | None = None  # the last successful poll
    error: str | None = None
    error_at: datetime | None = None
    kernel: KernelStatus | None = None  # None: the supervisor does not report one
    queriers: tuple[QuerierView, ...] = ()  # IGMP/MLD queriers and trackers


def on_poll(
    view: TopView,
    flows: Sequence[FlowStats],
    workers: Sequence[WorkerInfo],
    now: datetime,
    rules: Sequence[RuleView] = (),
    kernel: KernelStatus | None = None,
    queriers: Sequence[QuerierView] = (),
) -> TopView:
    states = tuple((v.rule.rule_id, v.state) for v in rules if v.state is not RuleState.ACTIVE)
    return TopView(
        flows=tuple(flows),
        workers=tuple(workers),
        states=states,
        refreshed_at=now,
        kernel=kernel,
        queriers=tuple(queriers),
    )


def on_poll_error(view: TopView, message: str, now: datetime) -> TopView:
    return replace(view, error=message, error_at=now)


# -------------------------------------------------------------------------------------------- sorting


def flow_errors(flow: FlowStats) -> int:
    """Everything that went wrong for a flow: send errors on all outputs plus the flow's own drops."""
    return sum(out.send_errors for out in flow.outputs) + sum(flow.drops.values())


def _sort_value(flow: FlowStats, key: SortKey) -> float | str:
    if key is SortKey.PPS:
        return flow.packets_per_second
    if key is SortKey.BIT_RATE:
        return flow.bits_per_second
    if key is SortKey.ERRORS:
        return flow_errors(flow)
    return flow.rule_id


def sort_flows(flows: Sequence[FlowStats], controls: Controls) -> list[FlowStats]:
    """Flows in the chosen order; ties always by rule id A to Z, so rows do not jump between refreshes."""
    by_id = sorted(flows, key=lambda f: (f.rule_id, f.input_interface, f.input_group, f.input_port))
    if controls.sort is SortKey.RULE_ID:
        return by_id[::-1] if controls.descending else by_id
    return sorted(by_id, key=lambda f: _sort_value(f, controls.sort), reverse=controls.descending)


# ----------------------------------------------------------------------------------------- formatting


def format_rate(per_second: float) -> str:
    """A compact SI rate, three significant digits: `950.0` -> `950`, `12345.0` -> `12.3k`, `1.5e6` -> `1.50M`.

    Narrow on purpose, so that the table fits an 80-column ssh session; the column header gives the unit.
    """
    for prefix, scale in _PREFIXES:
        if per_second >= scale * 0.9995:  # 999_999 is 1.00M, not 1000k
            value = per_second / scale
            digits = 2 if value < 9.995 else 1 if value < 99.95 else 0
            return f"{value:.{digits}f}{prefix}"
    if per_second >= 99.95:
        return f"{per_second:.0f}"
    return f"{per_second:.1f}"


def format_clock(moment: datetime | None) -> str:
    return "never" if moment is None else moment.strftime("%H:%M:%S")


# -------------------------------------------------------------------------------------------- drawing


def fitting(flows: Sequence[FlowStats], lines: int | None) -> int:
    """How many of `flows` (already sorted) fit in `lines` table lines: one per rule plus one per output.

    At least one is always shown. Wrapping in a very narrow terminal can still overflow; what is cut
    then is the end of the table, never the status under it, which has its own lines reserved.
    """
    if lines is None:
        return len(flows)
    used = shown = 0
    for flow in flows:
        used += 1 + len(flow.outputs)
        if used > lines and shown:
            break
        shown += 1
    return shown


_STATE_STYLES = {RuleState.PENDING: "yellow", RuleState.WAITING: "red"}


def flow_table(flows: Sequence[FlowStats], controls: Controls, states: Mapping[str, RuleState] | None = None) -> Table:
    """One row per rule, then one indented row per output with its packets and send errors. A rule that is
    not active says so after its id (`pending`: the workers are applying it; `waiting`: its input is missing).

    `flows` are drawn in the order given; `sort_flows` chooses it.
    """
    states = states or {}
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0, 0, 1), expand=False)
    for name, justify in _COLUMNS:
        # In a narrow terminal only the text column gives way: it wraps at its spaces (the input goes under
        # the rule id), while the numbers stay whole. One line per rule and per output when there is room.
        table.add_column(name, justify=justify, no_wrap=justify == "right", overflow="fold")
    for flow in flows:
        drops = sum(flow.drops.values())
        errors = sum(out.send_errors for out in flow.outputs)
        source = f"{flow.input_interface} " if flow.input_interface else ""
        label = Text(flow.rule_id or "-", style="bold")
        state = states.get(flow.rule_id)
        if state is not None:
            label.append(f" {state.value}", style=_STATE_STYLES.get(state, ""))
        via = f" from {flow.input_source}" if flow.input_source else ""
        label.append(f"  {source}{endpoint(flow.input_group, flow.input_port)}{via}", style="")
        table.add_row(
            label,
            Text(format_rate(flow.packets_per_second)),
            Text(format_rate(flow.bits_per_second)),
            Text(str(flow.packets_relayed)),
            Text(format_bytes(flow.bytes_relayed)),
            Text(str(errors), style="red" if errors else ""),
            Text(str(drops), style="yellow" if drops else ""),
        )
        for out in flow.outputs:
            table.add_row(
                Text(f"  -> {endpoint(out.group, out.port)} {out.interface}", style="dim"),
                Text(""),
                Text(""),
                Text(str(out.packets_sent), style="dim"),
                Text(format_bytes(out.bytes_sent), style="dim"),
                Text(str(out.send_errors), style="red" if out.send_errors else "dim"),
                Text(""),
            )
    return table


def _header(view: TopView, controls: Controls, live: bool) -> Text:
    order = "high to low" if controls.descending else "low to high"
    if controls.sort is SortKey.RULE_ID:
        order = "Z to A" if controls.descending else "A to Z"
    count = len(view.flows)
    head = Text("MCR top", style="bold")
    head.append(f"  {count} flow{'s' if count != 1 else ''}, sorted by {controls.sort.label} ({order})")
    for state, style in _STATE_STYLES.items():
        n = sum(1 for _, s in view.states if s is state)
        if n:
            head.append(f"  {n} {state.value}", style=style)
    if live:
        head.append("   p b n e: sort  q: quit", style="dim")
    return head


def membership_line(queriers: Sequence[QuerierView]) -> Text:
    """One line for the IGMP/MLD queriers: each interface's role, then reports, leaves and drops in all."""
    line = Text("membership ")
    roles = []
    for q in queriers:
        role = "querier" if q.is_querier else f"non-querier ({q.querier or 'no querier'})"
        roles.append(f"{q.interface} {q.family.protocol} {role if q.active else 'passive, ' + role}")
    line.append(", ".join(roles))
    reports = sum(n for q in queriers for k, n in q.counters.items() if k.startswith("reports_"))
    leaves = sum(q.counters.get("leaves", 0) for q in queriers)
    dropped = sum(n for q in queriers for k, n in q.counters.items() if k.startswith("dropped_"))
    line.append(f"  reports {reports}  leaves {leaves}  dropped ")
    line.append(str(dropped), style="yellow" if dropped else "")
    return line


def _footer(view: TopView, interval_s: float) -> Text:
    workers = view.workers
    running = sum(1 for w in workers if w.status == "Running")
    restarts = sum(w.restarts for w in workers)
    kernel_drops = sum(w.kernel_drops for w in workers)
    resyncs = sum(w.ring_resyncs for w in workers)
    total_pps = sum(f.packets_per_second for f in view.flows)
    total_bps = sum(f.bits_per_second for f in view.flows)
    foot = Text(f"workers {len(workers)} ({running} running)  restarts ")
    foot.append(str(restarts), style="yellow" if restarts else "")
    foot.append("  kernel drops ")
    foot.append(str(kernel_drops), style="red" if kernel_drops else "")
    foot.append("  ring resyncs ")
    foot.append(str(resyncs), style="yellow" if resyncs else "")
    if view.kernel is not None and view.kernel.loaded:
        engine_drops = sum(view.kernel.drops.values())
        foot.append(f"\nkernel engine {view.kernel.rules} rule{'s' if view.kernel.rules != 1 else ''}  drops ")
        foot.append(str(engine_drops), style="yellow" if engine_drops else "")
    if view.queriers:
        foot.append("\n")
        foot.append(membership_line(view.queriers))
    foot.append(f"\ntotal {format_rate(total_pps)} pkt/s, {format_bit_rate(total_bps)}")
    foot.append(f"  refreshed {format_clock(view.refreshed_at)}")
    if view.error is not None:
        foot.append("\n")
        foot.append(
            f"{format_clock(view.error_at)} {view.error} (retrying every {interval_s:g} s"
            f"{'; numbers above are from the last answer' if view.refreshed_at else ''})",
            style="bold red",
        )
    return foot


_CHROME_LINES = 7  # header, blank, table head and rule, blank, two status lines
_ERROR_LINES = 3


def render_top(
    view: TopView, controls: Controls, interval_s: float, live: bool = True, height: int | None = None
) -> RenderableType:
    """The whole screen: header, the flow table (or why there is none), status lines.

    `live=False` is a snapshot for a pipe or `--once`: no key help, every flow. With a `height` (the
    terminal's), only the flows that fit are drawn, in the chosen order, and a line says how many are not.
    """
    body: RenderableType
    hidden = 0
    if view.flows:
        ordered = sort_flows(view.flows, controls)
        room = None
        if height is not None:
            room = height - _CHROME_LINES - (_ERROR_LINES if view.error is not None else 0) - 1
            room -= 1 if view.queriers else 0  # the membership line
        shown = fitting(ordered, room)
        hidden = len(ordered) - shown
        body = flow_table(ordered[:shown], controls, dict(view.states))
    elif view.refreshed_at is None:
        body = Text("waiting for the supervisor..." if view.error is None else "no answer yet", style="dim")
    else:
        body = Text("no flows: add a rule with `control_client add`", style="dim")
    parts: list[RenderableType] = [_header(view, controls, live), Text(""), body]
    if hidden:
        parts.append(
            Text(f"... and {hidden} more flow{'s' if hidden != 1 else ''} (taller terminal to see)", style="dim")
        )
    parts += [Text(""), _footer(view, interval_s)]
    return Group(*parts)
