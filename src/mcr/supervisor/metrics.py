"""Prometheus metrics (`--metrics-addr HOST:PORT`), served from an immutable snapshot.

A scrape asks the asyncio loop for a snapshot (`source`, which the loop computes between two of its
tasks) unless the last one is under a second old; the exporter's HTTP thread only reads that immutable
value, so a scrape never touches live state. The work is paid per scrape, at most once a second, not
every second whether anyone scrapes or not: at 10,000 rules a snapshot is tens of milliseconds of the
loop's time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from mcr import __version__
from mcr.membership.querier import GroupView, QuerierView
from mcr.model.errors import ConfigError
from mcr.model.status import FlowStats, KernelStatus, RuleView, WorkerInfo

log = logging.getLogger("mcr.stats")


@dataclass(frozen=True, slots=True)
class Snapshot:
    flows: tuple[FlowStats, ...] = ()
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

    flow_labels = ["rule_id", "input_interface", "input_group", "input_port", "input_source"]
    packets = CounterMetricFamily("mcr_rule_packets", "Input packets relayed by a rule", labels=flow_labels)
    payload = CounterMetricFamily("mcr_rule_bytes", "UDP payload bytes relayed by a rule", labels=flow_labels)
    drops = CounterMetricFamily(
        "mcr_rule_drops", "Frames of a rule's flow dropped, by reason", labels=["rule_id", "reason"]
    )
    out_labels = ["rule_id", "output", "group", "port", "interface"]
    out_packets = CounterMetricFamily("mcr_output_packets", "Packets sent to an output", labels=out_labels)
    out_bytes = CounterMetricFamily("mcr_output_bytes", "Payload bytes sent to an output", labels=out_labels)
    out_errors = CounterMetricFamily("mcr_output_errors", "Packets an output failed to send", labels=out_labels)
    for f in snap.flows:
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


class _SnapshotCollector(Collector):
    def __init__(self, source: Callable[[], Snapshot] | None = None) -> None:
        self.snapshot = Snapshot()
        self.source = source
        self.taken = float("-inf")
        self.lock = threading.Lock()  # one scrape at a time asks for a snapshot

    def collect(self) -> Iterator[Metric]:
        if self.source is not None:
            with self.lock:
                if time.monotonic() - self.taken >= FRESH_S:
                    try:
                        self.snapshot = self.source()
                        self.taken = time.monotonic()
                    except (TimeoutError, RuntimeError, CancelledError) as e:  # the loop is busy or stopping
                        log.warning("metrics snapshot unavailable, serving the last one: %s", e)
        return metric_families(self.snapshot)


class MetricsExporter:
    def __init__(self, address: str, source: Callable[[], Snapshot] | None = None) -> None:
        """`source`: called from the HTTP thread for a fresh snapshot (None: only what `publish` gave)."""
        self.host, self.port = parse_listen_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = _SnapshotCollector(source)
        self.registry.register(self.collector)
        self.server: WSGIServer | None = None

    def start(self) -> None:
        try:
            self.server, _thread = start_http_server(self.port, self.host, registry=self.registry)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {self.host}:{self.port}: {e.strerror}") from None
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def publish(self, snapshot: Snapshot) -> None:
        self.collector.snapshot = snapshot  # one reference swap: atomic for the reader thread

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
