"""Prometheus metrics (`--metrics-addr HOST:PORT`), served from an immutable snapshot.

A scrape asks the asyncio loop for a snapshot (`source`, which the loop computes between two of its
tasks) unless the last one is under a second old; the exporter's HTTP thread only reads that immutable
value, so a scrape never touches live state. The work is paid per scrape, at most once a second, not
every second whether anyone scrapes or not: at 10,000 rules a snapshot is tens of milliseconds of the
loop's time.
"""

from __future__ import annotations

import gzip
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder
from prometheus_client.registry import Collector

from mcr import __version__
from mcr.linux import heap
from mcr.membership.querier import GroupView, QuerierView
from mcr.model.errors import ConfigError
from mcr.model.rules import ForwardingRule, address_text, source_text
from mcr.model.status import (
    Counted,
    KernelStatus,
    RuleView,
    WorkerInfo,
    flow_stats,
    template_literal,
)
from mcr.protocol.packedtext import RunTexts

log = logging.getLogger("mcr.stats")


@dataclass(frozen=True, slots=True)
class Snapshot:
    flows: tuple[Counted, ...] = ()  # each rule with its counts (`StatsBook.counted`)
    rules: tuple[RuleView, ...] = ()
    workers: tuple[WorkerInfo, ...] = ()
    queriers: tuple[QuerierView, ...] = ()
    groups: tuple[GroupView, ...] = ()
    kernel: KernelStatus | None = None
    routing: tuple[tuple[str, int], ...] = ()  # `pim.rx_hello`, `msdp.sa_received`, ... (GetRoutingCounters)


def parse_listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics-addr must be HOST:PORT (e.g. 127.0.0.1:9431), got '{text}'")
    return host.strip("[]") or "0.0.0.0", int(port)


def membership_families(snap: Snapshot) -> Iterator[Metric]:
    """The queriers: role, membership table size, and their counters (queries sent, reports by version, leaves,
    packets dropped by reason)."""
    labels = ["interface", "protocol"]
    role = GaugeMetricFamily("mcr_querier_is_querier", "1 when this relay is the elected querier", labels=labels)
    groups = GaugeMetricFamily("mcr_membership_groups", "Groups with receivers on an interface", labels=labels)
    events = CounterMetricFamily(
        "mcr_membership_messages", "Membership messages sent, received and dropped, by kind", labels=[*labels, "kind"]
    )
    sizes: dict[tuple[str, str], int] = {}
    for g in snap.groups:
        key = (g.interface, g.family.protocol)
        sizes[key] = sizes.get(key, 0) + 1
    for q in snap.queriers:
        key = (q.interface, q.family.protocol)
        role.add_metric(list(key), int(q.is_querier))
        groups.add_metric(list(key), sizes.get(key, 0))
        for kind, n in sorted(q.counters.items()):
            events.add_metric([*key, kind], n)
    yield from (role, groups, events)


def metric_families(snap: Snapshot) -> Iterator[Metric]:
    """The metric families for one snapshot (pure: tested without a server)."""
    info = InfoMetricFamily("mcr_build", "MCR build information")
    info.add_metric([], {"version": __version__, "implementation": "mcr-python"})
    yield info

    yield from flow_families(snap)
    yield from other_families(snap)


# The per-flow counter families, in the order they are exposed: (name, help, label names).
_FLOW_LABELS: Final = ("rule_id", "input_interface", "input_group", "input_port", "input_source")
_OUT_LABELS: Final = ("rule_id", "output", "group", "port", "interface")
FLOW_FAMILIES: Final = (
    ("mcr_rule_packets", "Input packets relayed by a rule", _FLOW_LABELS),
    ("mcr_rule_bytes", "UDP payload bytes relayed by a rule", _FLOW_LABELS),
    ("mcr_rule_drops", "Frames of a rule's flow dropped, by reason", ("rule_id", "reason")),
    ("mcr_output_packets", "Packets sent to an output", _OUT_LABELS),
    ("mcr_output_bytes", "Payload bytes sent to an output", _OUT_LABELS),
    ("mcr_output_errors", "Packets an output failed to send", _OUT_LABELS),
)


def flow_families(snap: Snapshot) -> Iterator[Metric]:
    """The per-flow families (most of the samples: two per rule and three per output), as prometheus_client
    objects; `flow_text` renders the same samples directly."""
    packets, payload, drops, out_packets, out_bytes, out_errors = (
        CounterMetricFamily(name, doc, labels=list(labels)) for name, doc, labels in FLOW_FAMILIES
    )
    for f in (flow_stats(rule, counts) for rule, counts in snap.flows):
        key = [f.rule_id, f.input_interface, f.input_group, str(f.input_port), f.input_source]
        packets.add_metric(key, f.packets_relayed)
        payload.add_metric(key, f.bytes_relayed)
        for reason, n in sorted(f.drops.items()):
            drops.add_metric([f.rule_id, reason], n)
        for i, o in enumerate(f.outputs):
            okey = [f.rule_id, str(i), o.group, str(o.port), o.interface]
            out_packets.add_metric(okey, o.packets_sent)
            out_bytes.add_metric(okey, o.bytes_sent)
            out_errors.add_metric(okey, o.send_errors)
    yield from (packets, payload, drops, out_packets, out_bytes, out_errors)


def _label(v: str) -> str:
    """A label value escaped as in the text formats (backslash, newline, double quote)."""
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return v


def flow_lines(rules: Sequence[ForwardingRule]) -> tuple[str, str, str, str, str]:
    """The templates of the samples of a run of rules, their labels as prometheus_client writes them: the lines
    of each rule's packets, then of their bytes, then of their outputs' packets, bytes and errors (a line per
    output in each), with a %d for each value."""
    packets, payload, out_packets, out_bytes, out_errors = [], [], [], [], []
    for rule in rules:
        rid = _label(rule.rule_id)
        source = "" if rule.input_source is None else source_text(rule.input_source)
        labels = template_literal(
            f'{{input_group="{_label(address_text(rule.input_group))}",'
            f'input_interface="{_label(rule.input_interface)}",input_port="{rule.input_port}",'
            f'input_source="{_label(source)}",rule_id="{rid}"}} '
        )
        packets.append(f"mcr_rule_packets_total{labels}%d\n")
        payload.append(f"mcr_rule_bytes_total{labels}%d\n")
        for i, o in enumerate(rule.outputs):
            olabels = template_literal(
                f'{{group="{_label(address_text(o.group))}",interface="{_label(o.interface)}",output="{i}",'
                f'port="{o.port}",rule_id="{rid}"}} '
            )
            out_packets.append(f"mcr_output_packets_total{olabels}%d\n")
            out_bytes.append(f"mcr_output_bytes_total{olabels}%d\n")
            out_errors.append(f"mcr_output_errors_total{olabels}%d\n")
    return "".join(packets), "".join(payload), "".join(out_packets), "".join(out_bytes), "".join(out_errors)


def _drop_lines(flows: Iterable[Counted]) -> str:
    """The drop samples of the flows that have drops, by reason in order."""
    return "".join(
        f'mcr_rule_drops_total{{reason="{_label(reason)}",rule_id="{_label(rule.rule_id)}"}} {n}\n'
        for rule, counts in flows
        if counts.drops
        for reason, n in sorted(counts.drops)
    )


_PACKETS = itemgetter(0)
_BYTES = itemgetter(1)
_OUTPUTS = itemgetter(4)


def flow_line_runs() -> RunTexts[ForwardingRule]:
    """What the exporter keeps of the flows' line templates between scrapes (`flow_text`'s `cache`)."""
    return RunTexts(flow_lines, attrgetter("rule_id"))


def flow_text(
    flows: Iterable[Counted], *, openmetrics: bool = False, cache: RunTexts[ForwardingRule] | None = None
) -> str:
    """The per-flow families in the Prometheus text format (or OpenMetrics' when `openmetrics`): the samples
    prometheus_client writes for `flow_families`, in its order and with its labels (sorted by name), without
    building its sample objects: at 10,000 rules these are ~50,000 samples, and building and rendering them
    through the library took about a second of CPU per scrape. The counts of a run of flows are written into
    the run's line templates (`flow_lines`) by one %-format per family, as the integers they are (both formats
    take an integer for a counter; the library writes a float's text, `1.4e+07`, which took two thirds of a
    scrape here and rounds a count past 2**53). With a `cache` (`RunTexts` of `flow_lines`, kept by the caller
    between scrapes), the templates of a run of the same rule objects as at the previous call are kept."""
    flows = tuple(flows)
    runs = (cache if cache is not None else flow_line_runs()).runs([rule for rule, _counts in flows])
    columns: tuple[list[str], ...] = ([], [], [], [], [], [])
    packets, payload, drops, out_packets, out_bytes, out_errors = columns
    for (t_packets, t_payload, t_out_packets, t_out_bytes, t_out_errors), where in runs:
        run = flows[where]
        counts = [c for _rule, c in run]
        outs = tuple(chain.from_iterable(map(_OUTPUTS, counts)))  # each output's packets, bytes, errors in turn
        packets.append(t_packets % tuple(map(_PACKETS, counts)))
        payload.append(t_payload % tuple(map(_BYTES, counts)))
        drops.append(_drop_lines(run))
        out_packets.append(t_out_packets % outs[0::3])
        out_bytes.append(t_out_bytes % outs[1::3])
        out_errors.append(t_out_errors % outs[2::3])
    parts: list[str] = []
    for (name, doc, _labels), column in zip(FLOW_FAMILIES, columns, strict=True):
        header = name if openmetrics else name + "_total"
        parts.append(f"# HELP {header} {doc}\n# TYPE {header} counter\n")
        parts.extend(column)
    return "".join(parts)


def other_families(snap: Snapshot) -> Iterator[Metric]:
    """Every family but the build information and the per-flow ones: a few samples per rule with a rate
    limit, per worker and per querier."""

    rules = GaugeMetricFamily("mcr_rules", "Rules by state and engine", labels=["state", "engine"])
    counts: dict[tuple[str, str], int] = {}
    for v in snap.rules:
        key2 = (v.state.value, v.engine.value)
        counts[key2] = counts.get(key2, 0) + 1
    for (state, engine), n in sorted(counts.items()):
        rules.add_metric([state, engine], n)
    yield rules

    limits = GaugeMetricFamily(
        "mcr_rule_rate_limit",
        "A rule's rate limit, in packets (pps) or payload bits (bps) per second",
        labels=["rule_id", "unit"],
    )
    for v in snap.rules:
        if v.rule.rate_limit is not None:
            limits.add_metric([v.rule.rule_id, v.rule.rate_limit.unit.value], v.rule.rate_limit.rate)
    yield limits

    worker = ["worker"]
    restarts = CounterMetricFamily("mcr_worker_restarts", "Restarts of a worker slot", labels=worker)
    up = GaugeMetricFamily("mcr_worker_up", "1 when the worker is running", labels=worker)
    kernel_packets = CounterMetricFamily("mcr_kernel_packets", "Frames the kernel queued to a worker", labels=worker)
    kernel_drops = CounterMetricFamily(
        "mcr_kernel_drops", "Frames the kernel could not queue to a worker (ring full)", labels=worker
    )
    worker_drops = CounterMetricFamily(
        "mcr_worker_drops", "Frames a worker rejected, by reason", labels=["worker", "reason"]
    )
    ring_resyncs = CounterMetricFamily(
        "mcr_ring_resyncs",
        "Times a worker found its capture ring out of step with the kernel's block order and resynchronised it",
        labels=worker,
    )
    pipe_errors = CounterMetricFamily("mcr_stats_pipe_errors", "Stats reports a worker could not push", labels=worker)
    for w in snap.workers:
        wid = [str(w.worker_id)]
        restarts.add_metric(wid, w.restarts)
        up.add_metric(wid, 1 if w.status == "Running" else 0)
        kernel_packets.add_metric(wid, w.kernel_packets)
        kernel_drops.add_metric(wid, w.kernel_drops)
        ring_resyncs.add_metric(wid, w.ring_resyncs)
        pipe_errors.add_metric(wid, w.stats_pipe_errors)
        for reason, n in sorted(w.drops.items()):
            worker_drops.add_metric([str(w.worker_id), reason], n)
    yield from (restarts, up, kernel_packets, kernel_drops, ring_resyncs, worker_drops, pipe_errors)
    yield from membership_families(snap)
    if snap.kernel is not None:
        yield from _kernel_families(snap.kernel)
    if snap.routing:
        routing = GaugeMetricFamily(
            "mcr_routing", "PIM and MSDP counters and gauges (see control_client pim counters)", labels=["name"]
        )
        for name, value in snap.routing:
            routing.add_metric([name], value)
        yield routing


def _kernel_families(k: KernelStatus) -> Iterator[Metric]:
    loaded = GaugeMetricFamily("mcr_kernel_engine_loaded", "1 when the eBPF kernel engine is loaded", labels=["mode"])
    loaded.add_metric([k.mode], 1 if k.loaded else 0)
    rules = GaugeMetricFamily("mcr_kernel_engine_rules", "Rules the kernel engine serves")
    rules.add_metric([], k.rules)
    drops = CounterMetricFamily(
        "mcr_kernel_engine_drops",
        "Frames to a configured interface and group the kernel engine did not relay, by reason",
        labels=["reason"],
    )
    for reason, n in sorted(k.drops.items()):
        drops.add_metric([reason], n)
    yield from (loaded, rules, drops)


FRESH_S = 1.0  # a snapshot younger than this serves the next scrape too


def _rest(snap: Snapshot) -> Collector:
    """Every family but the per-flow ones, for prometheus_client's encoders."""

    class Rest(Collector):
        def collect(self) -> Iterator[Metric]:
            families = metric_families(snap)
            yield next(families)  # the build information
            yield from other_families(snap)

    return Rest()


def exposition(snap: Snapshot, accept: str, cache: RunTexts[ForwardingRule] | None = None) -> tuple[bytes, str]:
    """The body and content type of a scrape with this `Accept` header: the format prometheus_client
    chooses for it (its text format, or OpenMetrics), the per-flow families written by `flow_text` and
    the few others by the library."""
    encoder, content_type = choose_encoder(accept)
    openmetrics = content_type.startswith("application/openmetrics-text")
    rest = encoder(_rest(snap))
    flows = flow_text(snap.flows, openmetrics=openmetrics, cache=cache).encode()
    if openmetrics and rest.endswith(_EOF):
        return rest[: -len(_EOF)] + flows + _EOF, content_type
    return rest + flows, content_type


_EOF: Final = b"# EOF\n"


class _SnapshotCollector(Collector):
    def __init__(self, source: Callable[[], Snapshot] | None = None) -> None:
        self.snapshot = Snapshot()
        self.source = source
        self.taken = float("-inf")
        self.lock = threading.Lock()  # one scrape at a time asks for a snapshot

    def fresh(self) -> Snapshot:
        """The snapshot to serve: a new one from `source` unless the last is under FRESH_S old."""
        if self.source is not None:
            with self.lock:
                if time.monotonic() - self.taken >= FRESH_S:
                    try:
                        self.snapshot = self.source()
                        self.taken = time.monotonic()
                    except (TimeoutError, RuntimeError, CancelledError) as e:  # the loop is busy or stopping
                        log.warning("metrics snapshot unavailable, serving the last one: %s", e)
        return self.snapshot

    def collect(self) -> Iterator[Metric]:
        return metric_families(self.fresh())


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class MetricsExporter:
    def __init__(self, address: str, source: Callable[[], Snapshot] | None = None) -> None:
        """`source`: called from the HTTP thread for a fresh snapshot (None: only what `publish` gave)."""
        self.host, self.port = parse_listen_address(address)
        self.collector = _SnapshotCollector(source)
        self.lines = flow_line_runs()  # the flows' line templates, kept
        self.lines_lock = threading.Lock()
        self.server: WSGIServer | None = None

    def app(self, environ: dict[str, Any], start_response: Callable[..., object]) -> list[bytes]:
        """The WSGI application: every path but /favicon.ico serves the metrics (as prometheus_client's)."""
        if environ.get("PATH_INFO") == "/favicon.ico":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b""]
        snap = self.collector.fresh()
        with self.lines_lock:  # the server has a thread per request
            body, content_type = exposition(snap, environ.get("HTTP_ACCEPT", ""), self.lines)
        heap.note_large(len(body))
        headers = [("Content-Type", content_type)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    def start(self) -> None:
        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        try:
            self.server = make_server(self.host, self.port, self.app, Server, handler_class=_QuietHandler)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {self.host}:{self.port}: {e.strerror}") from None
        threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True).start()
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def publish(self, snapshot: Snapshot) -> None:
        self.collector.snapshot = snapshot  # one reference swap: atomic for the reader thread

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
