"""Human-readable views of control responses: typed values in, `rich` renderables or strings out.

Pure functions, so every view is testable without a socket or a terminal. `--json` output does not
come through here: it prints the supervisor's own document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import assert_never

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mcr.membership.querier import FilterMode, GroupView, QuerierView, Timers
from mcr.membership.wire import Family
from mcr.model.original_config import ESP, UDP
from mcr.model.rules import ForwardingRule, Limits, OutputDestination
from mcr.model.status import (
    ConfigView,
    FlowStats,
    KernelStatus,
    LogLevels,
    RuleView,
    VersionInfo,
    WorkerInfo,
    flow_stats,
)
from mcr.protocol.control import (
    ConfigResponse,
    ConfigValidation,
    ControlPlaneConfig,
    CountedStats,
    Error,
    KernelStatusResponse,
    LogLevelsResponse,
    MembershipGroups,
    QuerierStates,
    Response,
    Rules,
    Stats,
    Success,
    Version,
    Workers,
)
from mcr.protocol.routing import (
    MrouteInfo,
    Mroutes,
    MsdpPeerInfo,
    MsdpPeers,
    MsdpSaCache,
    MsdpSaInfo,
    PimInterfaceInfo,
    PimInterfaces,
    PimNeighborInfo,
    PimNeighbors,
    PimUpstream,
    PimUpstreamInfo,
    RoutingCounters,
)

_BIT_UNITS = (("Tbit/s", 1e12), ("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3))
_BYTE_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
_NONE = "-"


def format_bit_rate(bits_per_second: float) -> str:
    """`1234567.0` -> `1.2 Mbit/s` (SI units, as link speeds are quoted)."""
    for unit, scale in _BIT_UNITS:
        if bits_per_second >= scale:
            return f"{bits_per_second / scale:.1f} {unit}"
    return f"{bits_per_second:.0f} bit/s"


def format_bytes(count: int) -> str:
    """`1536` -> `1.5 KiB` (IEC units); small counts stay exact."""
    for unit, scale in _BYTE_UNITS:
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def format_pps(packets_per_second: float) -> str:
    return f"{packets_per_second:.0f}" if packets_per_second >= 100 else f"{packets_per_second:.1f}"


def format_counters(counters: Mapping[str, int]) -> str:
    """Non-zero counters as `name=N, ...` sorted by name, or `-` when there are none."""
    shown = [f"{name}={value}" for name, value in sorted(counters.items()) if value]
    return ", ".join(shown) if shown else _NONE


def _table(*columns: str, numeric: Sequence[str] = ()) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in columns:
        table.add_column(name, justify="right" if name in numeric else "left", overflow="fold")
    return table


def _add_row(table: Table, *cells: str) -> None:
    """Cells are plain text: a `[` in a reason or name must not be read as rich markup."""
    table.add_row(*(Text(c) for c in cells))


def render_success(text: str) -> str:
    return text


def endpoint(group: str, port: int, protocol: int = UDP) -> str:
    """`group:port`, with an IPv6 group in brackets (stats carry groups as text); ` esp` after an ESP flow's."""
    text = f"[{group}]:{port}" if ":" in group else f"{group}:{port}"
    return text if protocol == UDP else f"{text} {_PROTOCOL_NUMBERS.get(protocol, 'proto')}"


def render_error(text: str) -> str:
    return f"error: {text}"


def ttl_text(out: OutputDestination) -> str:
    """` ttl N` for an output that sets its TTL; nothing for one that takes the default (the supervisor's
    multicast_ttl for a group, the kernel's for a unicast destination)."""
    return "" if out.ttl is None else f" ttl {out.ttl}"


def _rule_input(r: ForwardingRule) -> str:
    text = r.input_text if r.input_protocol == UDP else f"{r.input_text} {_PROTOCOLS.get(r.input_protocol, 'proto')}"
    return text if r.rate_limit is None else f"{text}\nlimit {r.rate_limit.text}"


_PROTOCOLS = {UDP: "udp", ESP: "esp"}
_PROTOCOL_NUMBERS: dict[int, str] = {int(p): name for p, name in _PROTOCOLS.items()}  # stats carry numbers


def _rule_id(r: ForwardingRule) -> str:
    rule_id = r.rule_id or _NONE  # the original's config schema has no ids
    return rule_id if r.name is None else f"{rule_id}\n({r.name})"


def _output_text(o: OutputDestination) -> str:
    return f"{o.spec}{ttl_text(o)}" + (f" from {o.source_ip}" if o.source_ip is not None else "")


def _rule_state(view: RuleView) -> str:
    state = view.state.value
    return f"{state} ({view.state_reason})" if view.state_reason else state


def render_rules(rules: Sequence[RuleView]) -> RenderableType:
    if not rules:
        return Text("no rules")
    table = _table("ID", "Input", "Outputs", "Engine", "State")
    for view in sorted(rules, key=lambda v: v.rule.rule_id):
        outputs = "\n".join(_output_text(o) for o in view.rule.outputs) or "(none)"
        _add_row(table, _rule_id(view.rule), _rule_input(view.rule), outputs, view.engine.value, _rule_state(view))
    return table


def render_stats(flows: Sequence[FlowStats]) -> RenderableType:
    """One row per rule, then one row per output and a row of drop counters when there are any."""
    if not flows:
        return Text("no statistics yet")
    table = _table(
        "Rule",
        "Flow",
        "Packets",
        "Bytes",
        "Pkt/s",
        "Bit rate",
        "Errors",
        numeric=("Packets", "Bytes", "Pkt/s", "Errors"),
    )
    for flow in sorted(flows, key=lambda f: (f.rule_id, f.input_group, f.input_port)):
        source = f"{flow.input_interface} " if flow.input_interface else ""
        _add_row(
            table,
            flow.rule_id or _NONE,
            f"{source}{endpoint(flow.input_group, flow.input_port, flow.input_protocol)}"
            + (f" from {flow.input_source}" if flow.input_source else ""),
            str(flow.packets_relayed),
            format_bytes(flow.bytes_relayed),
            format_pps(flow.packets_per_second),
            format_bit_rate(flow.bits_per_second),
            "",
        )
        for out in flow.outputs:
            _add_row(
                table,
                "",
                f"  -> {endpoint(out.group, out.port)}:{out.interface}",
                str(out.packets_sent),
                format_bytes(out.bytes_sent),
                "",
                "",
                str(out.send_errors),
            )
        if any(flow.drops.values()):
            _add_row(table, "", f"  drops: {format_counters(flow.drops)}", "", "", "", "", "")
    return table


def render_workers(workers: Sequence[WorkerInfo]) -> RenderableType:
    if not workers:
        return Text("no workers")
    table = _table(
        "PID",
        "Type",
        "ID",
        "Core",
        "Status",
        "UID",
        "Restarts",
        "Kernel pkts",
        "Kernel drops",
        "Ring resyncs",
        "Drops",
        numeric=("PID", "ID", "Core", "UID", "Restarts", "Kernel pkts", "Kernel drops", "Ring resyncs"),
    )
    for w in sorted(workers, key=lambda w: (w.worker_type, w.worker_id, w.pid)):
        drops = dict(w.drops)
        if w.stats_pipe_errors:
            drops["stats_pipe_errors"] = w.stats_pipe_errors
        _add_row(
            table,
            str(w.pid),
            w.worker_type if w.interface is None else f"{w.worker_type} ({w.interface})",
            str(w.worker_id),
            _NONE if w.core_id is None else str(w.core_id),
            f"{w.status} (in {w.backoff_ms} ms)" if w.backoff_ms else w.status,
            _NONE if w.uid is None else str(w.uid),
            str(w.restarts),
            str(w.kernel_packets),
            str(w.kernel_drops),
            str(w.ring_resyncs),
            format_counters(drops),
        )
    return table


def render_kernel(k: KernelStatus) -> RenderableType:
    """`control_client kernel`: one key/value table."""
    table = _table("Kernel engine", "")
    if not k.loaded:
        _add_row(table, "loaded", "no")
        _add_row(table, "mode", k.mode)
        _add_row(table, "why", k.reason or _NONE)
        return table
    _add_row(table, "loaded", f"yes ({k.instructions} instructions, tc ingress)")
    _add_row(table, "mode", k.mode)
    _add_row(table, "rules", f"{k.rules} of {k.max_rules} (up to {k.max_outputs} outputs each)")
    _add_row(table, "interfaces", ", ".join(k.interfaces) or _NONE)
    _add_row(table, "drops", format_counters(k.drops))
    return table


def render_kernel_drops(k: KernelStatus) -> str:
    """The line `stats` prints under the flows when the kernel engine is loaded."""
    drops = format_counters(k.drops)
    return f"kernel engine drops: {'none' if drops == _NONE else drops}"


def render_log_levels(levels: LogLevels) -> RenderableType:
    head = Text(f"global: {levels.global_level}")
    if not levels.facility_overrides:
        return Group(head, Text("facility overrides: none"))
    table = _table("Facility", "Level")
    for facility, level in sorted(levels.facility_overrides.items()):
        _add_row(table, facility, level)
    return Group(head, Text("facility overrides:"), table)


def render_version(info: VersionInfo) -> str:
    return f"version {info.version}\nprotocol {info.protocol_version}\nimplementation {info.implementation}"


def render_config(view: ConfigView) -> RenderableType:
    settings = _table("Setting", "Value")
    _add_row(settings, "config file", view.path or "(none)")
    for key, value in view.settings:
        _add_row(settings, key, "(unset)" if value is None else str(value))
    for key in Limits.__dataclass_fields__:
        _add_row(settings, f"limits.{key}", str(getattr(view.limits, key)))
    original = view.original
    if original.multicast_ttl is not None:
        _add_row(settings, "multicast_ttl", str(original.multicast_ttl))
    for interface, cores in original.pinning:
        _add_row(settings, f"pinning.{interface}", ", ".join(map(str, cores)))
    for name in original.unserved:
        _add_row(settings, name, "accepted, not served")
    rules = _table("ID", "Source", "Input", "Outputs")
    for r in view.rules:
        outputs = "\n".join(_output_text(o) for o in r.outputs) or "(none)"
        _add_row(rules, _rule_id(r), r.source.value, _rule_input(r), outputs)
    return Group(settings, rules if view.rules else Text("no rules"))


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def render_pim_neighbors(neighbors: Sequence[PimNeighborInfo]) -> RenderableType:
    if not neighbors:
        return Text("no PIM neighbours")
    table = _table(
        "Interface", "Neighbour", "DR priority", "DR", "Uptime", "Expires", "GenID", numeric=("DR priority",)
    )
    for n in neighbors:
        priority = str(n.dr_priority) if n.dr_priority_advertised else f"{n.dr_priority} (none sent)"
        genid = _NONE if n.generation_id is None else f"0x{n.generation_id:08x}"
        _add_row(
            table,
            n.interface,
            str(n.address),
            priority,
            "yes" if n.is_dr else "",
            _duration(n.uptime_secs),
            _duration(n.expires_in_secs),
            genid,
        )
    return table


def _secs(value: float) -> str:
    return f"{value:.0f}s"


def render_groups(groups: Sequence[GroupView]) -> RenderableType:
    if not groups:
        return Text("no groups have receivers")
    table = _table("Interface", "Group", "Mode", "Sources", "Expires", "Version", "Last reporter", "Querier")
    for g in groups:
        sources = "\n".join(
            f"{s.address} {_secs(s.expires_in)}" if s.expires_in > 0 else f"{s.address} (blocked)" for s in g.sources
        )
        _add_row(
            table,
            g.interface,
            str(g.group),
            g.filter_mode.value,
            sources or ("(any)" if g.filter_mode is FilterMode.EXCLUDE else ""),
            _secs(g.expires_in),
            f"{'IGMP' if g.family is Family.IPV4 else 'MLD'}v{g.version}",
            str(g.last_reporter or "-"),
            "yes" if g.is_querier else "no",
        )
    return table


def render_mroutes(entries: Sequence[MrouteInfo]) -> RenderableType:
    if not entries:
        return Text("no multicast routes")
    table = _table("Source", "Group", "Type", "Input", "Outputs", "Age")
    for m in entries:
        source = "*" if m.source is None else str(m.source)
        outputs = ", ".join(m.output_interfaces) or _NONE
        _add_row(table, source, str(m.group), m.entry_type, m.input_interface or _NONE, outputs, _duration(m.age_secs))
    return table


def render_msdp_peers(peers: Sequence[MsdpPeerInfo]) -> RenderableType:
    if not peers:
        return Text("no MSDP peers")
    table = _table(
        "Peer",
        "State",
        "Side",
        "Uptime",
        "SA in",
        "SA out",
        "RPF fail",
        "Mesh group",
        "Description",
        numeric=("SA in", "SA out", "RPF fail"),
    )
    for p in peers:
        side = "connect" if p.is_active else "listen"
        mesh = p.mesh_group or _NONE
        if p.default_peer:
            mesh += " (default peer)"
        _add_row(
            table,
            str(p.address),
            p.state,
            side,
            _duration(p.uptime_secs) if p.uptime_secs is not None else _NONE,
            str(p.sa_received),
            str(p.sa_sent),
            str(p.rpf_failures),
            mesh,
            p.description or "",
        )
    return table


def render_queriers(queriers: Sequence[QuerierView]) -> RenderableType:
    if not queriers:
        return Text("no querier or membership tracking is configured on an interface that is up")
    table = _table("Interface", "Protocol", "Mode", "Role", "Querier", "Timers", "Counters")
    for q in queriers:
        role = "querier" if q.is_querier else "non-querier"
        elected = str(q.querier or "-")
        if q.querier is not None and not q.is_querier:
            elected += f" ({_secs(q.other_querier_expires_in)})"
        counters = " ".join(f"{k}={v}" for k, v in q.counters.items() if v)
        _add_row(
            table,
            q.interface,
            f"{q.family.protocol.upper()}v{q.version}",
            "query" if q.active else "passive",
            role,
            elected,
            _NONE if q.timers is None else format_timers(q.timers),
            counters or "-",
        )
    return table


def format_timers(t: Timers) -> str:
    """The querier timers in force, short: `QI 125s QRI 10s R 2 LMQI 1s`, then those set away from their 0."""
    parts = [
        f"QI {t.query_interval:g}s",
        f"QRI {t.query_response_interval:g}s",
        f"R {t.robustness}",
        f"LMQI {t.last_member_query_interval:g}s",
    ]
    if t.last_member_query_count:
        parts.append(f"LMQC {t.last_member_query_count}")
    if t.startup_query_interval:
        parts.append(f"SQI {t.startup_query_interval:g}s")
    if t.startup_query_count:
        parts.append(f"SQC {t.startup_query_count}")
    if t.other_querier_present_interval:
        parts.append(f"OQPI {t.other_querier_present_interval:g}s")
    if t.version:
        parts.append(f"max v{t.version}")
    return " ".join(parts)


def render_querier_counters(q: QuerierView) -> str:
    """The line `stats` prints under the flows for each IGMP/MLD querier or tracker: queries sent, reports by
    version, leaves, and packets dropped by reason."""
    counters = format_counters(q.counters)
    return f"{q.family.protocol.upper()} counters on {q.interface}: {'none' if counters == _NONE else counters}"


def render_sa_cache(entries: Sequence[MsdpSaInfo]) -> RenderableType:
    if not entries:
        return Text("MSDP SA cache is empty")
    table = _table("Source", "Group", "Origin RP", "Learned from", "Age", "Expires")
    for e in entries:
        learned = "local" if e.is_local else str(e.learned_from)
        expires = _NONE if e.is_local else _duration(e.expires_in_secs)
        _add_row(table, str(e.source), str(e.group), str(e.origin_rp), learned, _duration(e.age_secs), expires)
    return table


def render_pim_upstream(entries: Sequence[PimUpstreamInfo]) -> RenderableType:
    if not entries:
        return Text("PIM asks nothing upstream")
    names = {"join": "Join", "rpt_prune": "Prune (S,G,rpt)", "register": "Register", "spt": "SPT source"}
    table = _table("What", "Source", "Group", "Interface", "Toward", "State", "Next")
    for e in entries:
        source = "*" if e.source is None else str(e.source)
        toward = _NONE if e.toward is None else str(e.toward)
        following = _NONE if e.next_secs is None else _duration(e.next_secs)
        _add_row(table, names.get(e.kind, e.kind), source, str(e.group), e.interface, toward, e.state, following)
    return table


def render_pim_interfaces(interfaces: Sequence[PimInterfaceInfo]) -> RenderableType:
    if not interfaces:
        return Text("PIM is not enabled on any interface")
    table = _table(
        "Interface",
        "State",
        "Address",
        "DR priority",
        "Hello",
        "DR",
        "GenID",
        "Neighbours",
        numeric=("DR priority", "Neighbours"),
    )
    for i in interfaces:
        dr = _NONE if i.dr is None else (f"{i.dr} (us)" if i.is_dr else str(i.dr))
        genid = _NONE if i.generation_id is None else f"0x{i.generation_id:08x}"
        address = _NONE if i.address is None else str(i.address)
        _add_row(
            table, i.name, i.state, address, str(i.dr_priority), f"{i.hello_period} s", dr, genid, str(i.neighbors)
        )
    return table


def render_routing_counters(counters: Sequence[tuple[str, int]]) -> RenderableType:
    table = _table("Counter", "Count", numeric=("Count",))
    for name, count in counters:
        _add_row(table, name, str(count))
    return table


def render_validation(resp: ConfigValidation) -> RenderableType:
    lines = ["configuration is valid" if resp.valid else "configuration is invalid"]
    lines += [f"error: {e}" for e in resp.errors] + [f"warning: {w}" for w in resp.warnings]
    return Text("\n".join(lines))


def render_control_plane(resp: ControlPlaneConfig) -> RenderableType:
    table = _table("Setting", "Value")
    _add_row(table, "rpf_provider", resp.settings.rpf_provider)
    _add_row(table, "external_neighbors_enabled", str(resp.settings.external_neighbors_enabled).lower())
    _add_row(table, "event_buffer_size", str(resp.settings.event_buffer_size))
    return table


def render_response(resp: Response) -> RenderableType:
    """The human view of any response (an `Error` renders as its `error: ...` line)."""
    match resp:
        case Success():
            return render_success(resp.text)
        case Error():
            return render_error(resp.text)
        case Rules():
            return render_rules(resp.rules)
        case Stats():
            return render_stats(resp.flows)
        case CountedStats():  # the supervisor's own form of Stats (a client decodes Stats)
            return render_stats(tuple(flow_stats(rule, counts) for rule, counts in resp.flows))
        case Workers():
            return render_workers(resp.workers)
        case LogLevelsResponse():
            return render_log_levels(resp.levels)
        case Version():
            return render_version(resp.info)
        case ConfigResponse():
            return render_config(resp.view)
        case PimNeighbors():
            return render_pim_neighbors(resp.neighbors)
        case Mroutes():
            return render_mroutes(resp.entries)
        case MsdpPeers():
            return render_msdp_peers(resp.peers)
        case MsdpSaCache():
            return render_sa_cache(resp.entries)
        case RoutingCounters():
            return render_routing_counters(resp.counters)
        case PimInterfaces():
            return render_pim_interfaces(resp.interfaces)
        case PimUpstream():
            return render_pim_upstream(resp.entries)
        case MembershipGroups():
            return render_groups(resp.groups)
        case QuerierStates():
            return render_queriers(resp.queriers)
        case ConfigValidation():
            return render_validation(resp)
        case ControlPlaneConfig():
            return render_control_plane(resp)
        case KernelStatusResponse():
            return render_kernel(resp.status)
        case _:
            assert_never(resp)
