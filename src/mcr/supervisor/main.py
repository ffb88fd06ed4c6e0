"""The supervisor process: owns the rules, the control socket and the workers; forwards nothing itself."""

from __future__ import annotations

import asyncio
import gc
import grp
import hashlib
import heapq
import json
import logging
import os
import pwd
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path
from typing import Any, assert_never

from mcr import PROTOCOL_VERSION, __version__
from mcr.kernel import bpf
from mcr.kernel.bpf import BpfError
from mcr.kernel.engine import KernelRelay, OutputEntry, output_counts_reset, remove_pins
from mcr.kernel.engine import RuleCounters as KernelRuleCounters
from mcr.linux import heap
from mcr.linux.cpus import pin
from mcr.linux.packet_socket import Fanout, join_fanout, open_capture_socket
from mcr.linux.privileges import raise_open_file_limit
from mcr.linux.raw_egress import open_esp_socket
from mcr.membership.querier import Listeners
from mcr.membership.settings import MembershipSettings
from mcr.membership.wire import Family
from mcr.model.config import Config, ConfigDialect, parse_config, unserved_notes
from mcr.model.cpus import cpu_list_text, worker_cpu
from mcr.model.errors import ConfigError, ValidationError, WorkerError
from mcr.model.levels import Facility, Severity
from mcr.model.links import Link
from mcr.model.original_config import OriginalSections, encode_original_config
from mcr.model.rules import (
    DEFAULT_MULTICAST_TTL,
    FlowIndex,
    ForwardingRule,
    Limits,
    RuleSource,
    endpoint_text,
    limits_exceeded,
)
from mcr.model.status import ConfigView, KernelStatus, LogLevels, RuleView, VersionInfo, WorkerInfo
from mcr.netlink.links import LinkWatcher
from mcr.packet.parse import DropReason
from mcr.protocol.control import (
    AddRule,
    CheckConfig,
    ConfigResponse,
    ConfigValidation,
    ControlPlaneConfig,
    CountedStats,
    Error,
    KernelStatusResponse,
    LoadConfig,
    LogLevelsResponse,
    MembershipGroups,
    QuerierStates,
    Query,
    RemoveRule,
    RemoveRuleByName,
    Request,
    Response,
    Rules,
    SaveConfig,
    SetFacilityLogLevel,
    SetGlobalLogLevel,
    SetQuerier,
    SetQuerierTimers,
    Success,
    Version,
    Workers,
)
from mcr.protocol.controlplane import ControlPlaneRequest
from mcr.protocol.routing import (
    AddMsdpPeer,
    DisablePim,
    EnablePim,
    Mroutes,
    MsdpPeers,
    MsdpSaCache,
    PimInterfaces,
    PimNeighbors,
    PimUpstream,
    RemoveMsdpPeer,
    RoutingCounters,
    RoutingQuery,
    SetRpAddress,
    SetStaticRp,
)
from mcr.protocol.worker import (
    MAX_FDS_PER_MESSAGE,
    CloseEgress,
    CloseSockets,
    HoldSockets,
    OpenEgress,
    OpenSockets,
    RawEgress,
    Ready,
    Released,
    ReleaseSockets,
    RuleCounters,
    SetLogLevels,
    Shutdown,
    StatsReport,
    Sync,
    SyncAck,
    Update,
    WorkerRule,
    worker_version,
)
from mcr.routing.msdp_wire import SaEntry
from mcr.supervisor.access import AccessPolicy
from mcr.supervisor.cleanup import stop_orphan
from mcr.supervisor.control import ControlServer, resolve_group
from mcr.supervisor.core import Changes, KernelRule, Resolver, RuleTable, StatsBook, SyncTracker
from mcr.supervisor.memberships import Memberships
from mcr.supervisor.metrics import MetricsExporter, Snapshot
from mcr.supervisor.msdp import MsdpService, local_sources
from mcr.supervisor.notify import Notifier
from mcr.supervisor.pim import MergedRules, PimService
from mcr.supervisor.queriers import Queriers
from mcr.supervisor.state import StateError, StateStore, encode_record, write_atomically
from mcr.supervisor.workers import (
    AdoptedProcess,
    WorkerHandle,
    WorkerStatus,
    handover_path,
    spawn_worker,
    take_over_worker,
)

log = logging.getLogger("mcr.supervisor")

SYNC_WAIT_S = 2.0  # how long AddRule/RemoveRule wait for the ready workers to confirm the change
READY_WAIT_S = 30.0  # how long start-up and a reload wait for every worker before telling systemd READY anyway
GC_PERIOD_S = 30.0  # a full garbage collection this often (see tick)
FREEZE_STEP = 1000  # after a full collection, what survived is frozen when the table grew by this many rules
# Python's own full passes come every 10 passes of the middle generation (when the old one has grown by a
# quarter since the last); here every 1,000: the periodic one above is what frees old cycles. A GetStats at
# 10,000 counting rules builds ~50,000 objects that live until the next one, which set off a full pass at
# nearly every answer (bench/statsbuild.py, A/B: flow_stats 175-289 -> 130-152 ms, a scrape 299-471 -> 264-296).
OLDEST_EVERY = 1000
KERNEL_REPORT = -1  # the kernel engine's counters are booked like a worker's, under this id
SHUTDOWN_GRACE_S = 3.0
BPF_ROOT = Path("/sys/fs/bpf")
DEFAULT_SOCKET_PATH = Path("/run/mcr/control.sock")


def instance_name(control_socket_path: Path) -> str:
    """Names what one supervisor leaves behind (pins, handover sockets): `default` for the default control
    socket, else a hash of its path, so that two supervisors on one host never take each other's."""
    if control_socket_path == DEFAULT_SOCKET_PATH:
        return "default"
    return hashlib.sha256(str(control_socket_path).encode()).hexdigest()[:12]


def initial_mount_namespace() -> bool:
    """Whether this process shares init's mount namespace (False when that cannot be told)."""
    try:
        return os.stat("/proc/self/ns/mnt").st_ino == os.stat("/proc/1/ns/mnt").st_ino
    except OSError:
        return False


def default_pin_dir(control_socket_path: Path) -> Path:
    return BPF_ROOT / "mcr" / instance_name(control_socket_path)


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    control_socket_path: Path
    control_group: str | None
    user: str
    group: str | None
    num_workers: int
    log_level: str
    log_json: bool
    limits: Limits = field(default_factory=Limits)
    state_file: Path | None = None
    config: Config | None = None
    metrics_addr: str | None = None
    engine: str = "auto"
    read_only_group: str | None = None
    seccomp: bool = True  # the workers' system call filter; --no-seccomp turns it off
    multicast_ttl: int = DEFAULT_MULTICAST_TTL  # of multicast outputs that name no TTL
    keep_data_plane: bool = False  # SIGTERM leaves the data plane running for the next supervisor
    bpf_pin_dir: Path | None = None  # where the kernel engine pins its objects (None: default_pin_dir)
    kernel_variant: int = 0  # tests of an upgrade: a kernel program that differs by a dead instruction
    worker_orphan_timeout: float = 30.0  # how long workers relay on without a supervisor (0: they exit with it)
    worker_cpus: tuple[int, ...] = ()  # worker k runs on the k-th of these CPUs (round robin); (): not pinned


def resolve_user(user: str, group: str | None) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"User '{user}' not found") from None
    if group is None:
        for candidate in ("nogroup", "nobody"):
            try:
                return pw.pw_uid, grp.getgrnam(candidate).gr_gid
            except KeyError:
                continue
        return pw.pw_uid, pw.pw_gid
    try:
        return pw.pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"Group '{group}' not found") from None


def _tell(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def collector_settings() -> None:
    """The supervisor's garbage collection: Python's own passes, but its full ones rarely (OLDEST_EVERY), and
    everything alive now frozen out of them (see `Supervisor.tick` for the periodic full pass)."""
    young, middle, _oldest = gc.get_threshold()
    gc.set_threshold(young, middle, OLDEST_EVERY)
    gc.freeze()


def freeze_due(rules: int, frozen_at: int) -> tuple[bool, int]:
    """Whether to freeze what survived a full collection, with `rules` in the table now and `frozen_at` at
    the last freeze; and the count to remember. A table that shrank counts its growth from its new size."""
    frozen_at = min(frozen_at, rules)
    if rules >= frozen_at + FREEZE_STEP:
        return True, rules
    return False, frozen_at


def _slot_key(kr: KernelRule) -> tuple[object, ...]:
    """What a kernel rule keeps its slot (and counters) by: its input, and the epoch it was added in."""
    return (kr.ifindex, kr.group, kr.port, kr.protocol, kr.epoch)


def _restarts(held: KernelRule, new: KernelRule | None) -> bool:
    """Whether the counters a kernel rule `held` has counted so far restart when it becomes `new`."""
    if new is None or _slot_key(new) != _slot_key(held):
        return True
    return output_counts_reset(held.outputs, new.outputs)


class Supervisor:
    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.uid, self.gid = resolve_user(config.user, config.group)
        policy = AccessPolicy(
            os.geteuid(),
            resolve_group(config.control_group),
            resolve_group(config.read_only_group, "read-only group"),
            config.control_group,
            config.read_only_group,
        )
        self.table = RuleTable(config.limits)
        self.store = StateStore(config.state_file) if config.state_file is not None else None
        self.config_file = config.config
        self.stats = StatsBook()
        self.load_rules()
        self.links: dict[str, Link] = {}
        self.resolver = Resolver(multicast_ttl=config.multicast_ttl)
        self.generation = 0
        self.sync_state = SyncTracker()
        self.tasks: set[asyncio.Task[None]] = set()
        self.workers = [WorkerHandle(i) for i in range(config.num_workers)]
        self.memberships = Memberships()
        self.fanout_ids: dict[int, int] = {}
        self.global_level = Severity.parse(config.log_level)
        self.overrides: dict[Facility, Severity] = {}
        self.stopping = asyncio.Event()
        # the waits of `wait_synced`: (generation, every worker?, what the wait is told), met at a SyncAck
        self.sync_waiters: list[tuple[int, bool, asyncio.Future[bool]]] = []
        self.loop = asyncio.get_running_loop()
        self.control = ControlServer(config.control_socket_path, self.handle, policy, config.limits)
        self.watcher = LinkWatcher(self.on_links)
        self.metrics = MetricsExporter(config.metrics_addr, self.snapshot_from_thread) if config.metrics_addr else None
        self.notifier = Notifier()
        self.kernel: KernelRelay | None = None
        self.kernel_unavailable = "--engine userspace" if config.engine == "userspace" else "not started yet"
        self.kernel_slots: dict[str, tuple[int, KernelRule]] = {}
        self.kernel_rule_at: dict[int, str] = {}  # slot -> the rule in it (kernel_slots the other way round)
        self.kernel_gone: set[str] = set()  # rules that left their slot since the last kernel report
        self.free_slots: list[int] = []  # a heap: the lowest free slot is taken first
        self.kernel_inputs: Counter[int] = Counter()  # ifindex -> kernel rules on it (tcx attached there)
        file = self.config_file
        self.listeners = Listeners()
        self.queriers = Queriers(
            self.loop,
            file.igmp if file is not None else MembershipSettings(),
            file.mld if file is not None else MembershipSettings(),
            self.on_membership,
        )
        self.worker_version = worker_version(__version__, os.environ)
        self.stale_pins: Path | None = None  # see note_stale_pins
        self.pim = PimService(self.loop, self.on_pim_routes, self.on_registered_sources)
        self.pim6 = PimService(self.loop, self.on_pim_routes, family=6)  # the same interfaces, over IPv6
        self.pim6.rps = self.pim.rps  # one RP table for both families
        self.data_rules = MergedRules(self.table, (self.pim, self.pim6))  # the rules with PIM's outputs added
        self.msdp = MsdpService(self.loop, self.on_msdp_sources, file.msdp if file else None)
        if file is not None:
            self.pim.configure(file.pim)
            self.pim6.configure(file.pim)

    # --------------------------------------------------------------------------- kernel engine

    def start_kernel(self) -> None:
        if self.config.engine == "userspace":
            self.note_stale_pins()
            return
        try:
            slots = max(256, self.config.limits.max_rules, len(self.table.rules))  # a restored table may be over
            pin_dir = self.pin_dir()
            self.kernel = KernelRelay(
                max_rules=slots, max_outputs=64, pin_dir=pin_dir, variant=self.config.kernel_variant
            )
        except (BpfError, OSError) as e:
            if self.config.engine == "kernel":
                raise ConfigError(f"the kernel engine cannot be loaded: {e}") from None
            log.warning("kernel engine unavailable, every rule is served in userspace: %s", e)
            self.kernel_unavailable = str(e)
            self.note_stale_pins()
            return
        self.kernel_unavailable = ""
        self.free_slots = list(range(self.kernel.max_rules))
        self.resolver.kernel_max_outputs = self.kernel.max_outputs
        log.info("kernel engine loaded (%d instructions, tcx ingress)", len(self.kernel.insns))
        if pin_dir is not None:
            log.info("kernel engine pinned in %s: %s", pin_dir, self.kernel.adoption.describe())

    def note_stale_pins(self) -> None:
        """A kernel engine an earlier supervisor pinned while this one serves every rule in userspace: it
        relays until the workers have the rules (so that the switch loses nothing), then it is removed (it
        would send every packet a second time)."""
        pinned = self.config.bpf_pin_dir or default_pin_dir(self.config.control_socket_path)
        try:
            found = pinned.is_dir() and any(pinned.iterdir())
        except OSError:
            found = False
        if found:
            log.info("a kernel engine is pinned in %s: removed once the workers have the rules", pinned)
            self.stale_pins = pinned

    def remove_stale_pins(self) -> None:
        if self.stale_pins is not None:
            log.info("removed the earlier kernel engine's pins: %s", ", ".join(remove_pins(self.stale_pins)))
            self.stale_pins = None

    def pin_dir(self) -> Path | None:
        """Where the kernel engine pins its objects, on a bpf file system (mounted at /sys/fs/bpf when none
        is); None, with a warning, when there is none: the engine then goes away with this process."""
        wanted = self.config.bpf_pin_dir or default_pin_dir(self.config.control_socket_path)
        if wanted.is_relative_to(BPF_ROOT) and not bpf.is_bpffs(BPF_ROOT):
            # Only in the host's mount namespace: a bpf file system mounted in a private one (`ip netns exec`,
            # a container) lives only as long as that namespace, so the next supervisor would not find the
            # pins, attach a second program, and every packet would be relayed twice while the old one lasts.
            if initial_mount_namespace():
                try:
                    bpf.mount_bpffs(BPF_ROOT)
                    log.info("mounted a bpf file system at %s", BPF_ROOT)
                except OSError as e:
                    log.warning("%s", e)
            else:
                log.warning(
                    "kernel engine not pinned (a restart interrupts its flows): no bpf file system at %s "
                    "and this is a private mount namespace; mount one on the host or pass --bpf-pin-dir",
                    BPF_ROOT,
                )
                return None
        try:
            wanted.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            log.warning("kernel engine not pinned (a restart will interrupt its flows): %s", e)
            return None
        if not bpf.is_bpffs(wanted):
            log.warning(
                "kernel engine not pinned (a restart will interrupt its flows): %s is not on a bpf file system", wanted
            )
            return None
        return wanted

    def take_slot(self, preferred: int | None) -> int:
        """The lowest free kernel slot, or `preferred` when it is free."""
        if preferred is not None and preferred in self.free_slots:
            self.free_slots.remove(preferred)
            heapq.heapify(self.free_slots)
            return preferred
        return heapq.heappop(self.free_slots)

    def kernel_outputs(self) -> int | None:
        return self.kernel.max_outputs if self.kernel is not None else None

    def sync_kernel(self, changes: Changes) -> None:
        """Install the kernel-served rules that changed in the maps; nothing else is touched."""
        kernel = self.kernel
        if kernel is None:
            return
        moves: list[tuple[str, KernelRule | None]] = []
        for rule_id, before, after in changes.rules:
            new = after.kernel if after is not None else None
            held = self.kernel_slots.get(rule_id)
            if (before is not None and before.kernel is not None) or new is not None or held is not None:
                moves.append((rule_id, new))
        # A rule that stays but leaves its slot (re-resolved, moved to userspace), or whose counters restart in
        # it (an output before another one came or went): its counts so far are read first, and again once
        # the change is made, so that StatsBook sees them go back and keeps them.
        relocated = any(
            rule_id in self.table.rules and _restarts(held[1], new)
            for rule_id, new in moves
            if (held := self.kernel_slots.get(rule_id)) is not None
        )
        if relocated:
            self.collect_kernel(self.generation - 1)  # the counts of the rule set before this change
        touched: set[int] = set()
        for rule_id, new in moves:
            held = self.kernel_slots.get(rule_id)
            if held is not None and (new is None or _slot_key(new) != _slot_key(held[1])):
                kernel.remove_rule(held[0])
                heapq.heappush(self.free_slots, held[0])
                del self.kernel_slots[rule_id]
                del self.kernel_rule_at[held[0]]
                self.kernel_gone.add(rule_id)
                self._count_input(held[1].ifindex, -1, touched)
                held = None
            if new is None or (held is not None and held[1] == new):
                continue
            if held is not None:
                slot = held[0]
            else:  # a rule an earlier supervisor left pinned keeps its slot (and its counters)
                slot = self.take_slot(kernel.adopted_slot(new.ifindex, new.group, new.port, new.protocol))
            outputs = [
                OutputEntry(o.ifindex, o.group, o.port, o.source, o.src_mac, o.ttl, protocol=o.protocol)
                for o in new.outputs
            ]
            kernel.set_rule(
                slot, new.ifindex, new.group, new.port, outputs, new.rate_limit, new.source, protocol=new.protocol
            )
            self.kernel_slots[rule_id] = (slot, new)
            self.kernel_rule_at[slot] = rule_id
            if held is None:
                self._count_input(new.ifindex, +1, touched)
        for ifindex in touched:
            if ifindex not in self.kernel_inputs and ifindex in kernel.attached:
                kernel.detach(ifindex)
            elif ifindex in self.kernel_inputs and ifindex not in kernel.attached:
                try:
                    kernel.attach(ifindex)
                except BpfError as e:
                    log.error("cannot attach the kernel engine to ifindex %d: %s", ifindex, e)
        if relocated:
            self.collect_kernel()

    def _count_input(self, ifindex: int, delta: int, touched: set[int]) -> None:
        self.kernel_inputs[ifindex] += delta
        if self.kernel_inputs[ifindex] <= 0:
            del self.kernel_inputs[ifindex]
        touched.add(ifindex)

    @staticmethod
    def _kernel_counters(kr: KernelRule, counted: KernelRuleCounters) -> RuleCounters:
        outputs = tuple(
            (kr.outputs[i].index, o.packets, o.bytes, o.errors)
            for i, o in enumerate(counted.outputs)
            if i < len(kr.outputs)
        )
        drops = ((DropReason.RATE_LIMITED.key, counted.rate_limited),) if counted.rate_limited else ()
        return RuleCounters(counted.packets, counted.bytes, outputs, drops)

    def collect_kernel(self, generation: int | None = None) -> None:
        """Book the kernel engine's counters, as taken under `generation` (default: the current one)."""
        if self.kernel is None:
            return
        counted = self.kernel.counters()
        rules = []
        for slot in counted.changed:  # a delta: the rules whose counters moved, and those that left their slot
            rule_id = self.kernel_rule_at[slot]
            rules.append((rule_id, self._kernel_counters(self.kernel_slots[rule_id][1], counted.rules[slot])))
        gone = tuple(self.kernel_gone.difference(self.kernel_slots))
        self.kernel_gone.clear()
        drops = tuple(counted.drops.items())  # every reason it counts, zeros too
        taken = self.generation if generation is None else generation
        report = StatsReport(KERNEL_REPORT, os.getpid(), tuple(rules), drops, 0, 0, 0, taken, delta=True, gone=gone)
        self.stats.on_report(report, time.monotonic())

    # ---------------------------------------------------------------------------- persistence

    def load_rules(self) -> None:
        """Static rules from the config file, then the runtime rules saved in the state file."""
        if self.config_file is not None:
            for rule in self.config_file.rules:
                try:
                    self.table.insert(rule, shaped=True)  # checked as the file was read
                except ValidationError as e:  # the file's rules fit its [limits], not lower ones from flags
                    raise ConfigError(f"{self.config_file.path}: rule '{rule.rule_id}': {e}") from None
                self.stats.track(rule.rule_id, 0)
        if self.store is None:
            return
        try:
            saved = self.store.load()
        except StateError as e:
            log.error("%s; starting without its rules", e)
            return
        refusals, excesses = self.table.restore(replace(rule, source=RuleSource.RUNTIME) for rule in saved)
        for text in refusals:
            log.error("%s", text)
        log.info("restored %d rules from %s", len(saved) - len(refusals), self.config.state_file)
        if excesses:
            log.warning(
                "the restored rules are over the limits: %s; all are kept, new rules are refused until "
                "enough are removed",
                "; ".join(excesses),
            )
        for rule_id in self.table.rules:
            self.stats.track(rule_id, 0)

    def save_all(self) -> None:
        """Put every runtime rule on disk as a new snapshot (a change of many rules at once)."""
        if self.store is not None:
            self.store.compact(self.table.runtime_rules())

    def save(self, added: ForwardingRule | None = None, removed: str | None = None, flush: bool = True) -> None:
        """Put one change of the runtime rules (already made in the table) on disk: a journal record, or a
        new snapshot of every runtime rule when the journal is due for one. Raises StateError. With `flush`
        False, a record may be left for the store's `flush` (see `commit`)."""
        if self.store is None:
            return
        if self.store.due(len(self.table.rules)):
            self.store.compact(self.table.runtime_rules())
        else:
            self.store.append(encode_record(added, removed), flush=flush)

    def commit(
        self, rule_id: str, undo: Callable[[], object], added: ForwardingRule | None = None, removed: str | None = None
    ) -> int:
        """One add or remove, already made in the table: its record written, the change sent to the workers,
        then the record flushed, so that the disk works while the workers do. Returns the generation that
        holds the change. Raises StateError with the change taken back: `undo` puts the table back, and the
        data plane follows where the change had reached it."""
        try:
            self.save(added=added, removed=removed, flush=False)
        except StateError:
            undo()
            raise
        generation = self.apply([rule_id])
        try:
            if self.store is not None:
                self.store.flush()
        except StateError:
            undo()
            self.apply([rule_id])
            raise
        return generation

    def reload(self) -> None:
        """SIGHUP: re-read the config file and apply only the difference in its rules."""
        if self.config_file is None:
            log.warning("SIGHUP ignored: the supervisor was started without --config")
            return
        path = self.config_file.path
        self.notifier.reloading()
        try:
            with open(path, encoding="utf-8") as f:
                new = parse_config(f.read(), path, previous=self.config_file)
            added, changed, removed = self.table.replace_config_rules(new.rules)
            old = self.config_file
            if (new.igmp, new.mld) != (old.igmp, old.mld):
                self.queriers.configure(new.igmp, new.mld)
                log.info("reload of %s: querier settings applied", path)
            if (new.settings, new.limits) != (old.settings, old.limits):
                what = "multicast_ttl" if new.dialect is ConfigDialect.JSON5 else "[supervisor] and [limits]"
                log.warning("reload of %s: %s changes take effect at the next start", path, what)
            if (new.pim, new.msdp) != (old.pim, old.msdp):
                what = "pim and msdp" if new.dialect is ConfigDialect.JSON5 else "[pim] and [msdp]"
                log.warning("reload of %s: %s changes take effect at the next start", path, what)
            for text in new.warnings + unserved_notes(path, new.original):
                log.warning("reload: %s", text)
        except (OSError, ConfigError, ValidationError) as e:
            log.error("reload of %s refused, nothing changed: %s", path, e)
            self.notifier.ready(f"reload refused: {e}")
            return
        self.config_file = new
        for rule_id in changed + removed:
            self.stats.forget_rule(rule_id)
        log.info("reloaded %s: %d added, %d changed, %d removed", path, len(added), len(changed), len(removed))
        if not (added or changed or removed):
            self.notifier.ready(self.status_text())
            return
        for rule_id in added + changed:  # a changed rule's counters restart from zero
            self.stats.track(rule_id, self.generation + 1)
        self.background(self.ready_when_synced(self.apply(added + changed + removed)))

    # ------------------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        before, after = raise_open_file_limit()
        if after != before:
            log.info("open-file limit raised from %d to %d (rule outputs are sockets in every worker)", before, after)
        self.start_kernel()
        await self.watcher.start()  # its first dump applies the rules: the kernel engine has them all now
        if self.kernel is not None:
            try:
                self.kernel.settle()
            except (BpfError, OSError) as e:
                log.error("cannot clean up what the earlier kernel engine left pinned: %s", e)
        await self.control.start()
        await self.msdp.start()
        if self.metrics is not None:
            self.metrics.start()
        now = time.monotonic()
        if self.config.seccomp:
            log.info("workers contained: empty read-only root, no privileges, seccomp system call allow-list")
        else:
            log.warning("workers contained without their seccomp filter (--no-seccomp): empty root, no privileges")
        for handle in self.workers:
            if not self.take_over(handle, now):
                self.start_worker(handle, now)
        await self.stop_surplus_workers()
        if len(self.workers) > 1:
            log.info("PACKET_FANOUT enabled (%d workers)", len(self.workers))
        else:
            log.info("PACKET_FANOUT disabled (single worker)")
        ticker = asyncio.create_task(self.tick())
        self.background(self.ready_when_synced(self.generation))
        await self.stopping.wait()
        for task in list(self.tasks):
            task.cancel()
        self.notifier.stopping()
        log.info("received shutdown signal, stopping")
        ticker.cancel()
        await self.shutdown()

    def status_text(self) -> str:
        return f"{len(self.workers)} workers, {len(self.table.rules)} rules"

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task the supervisor holds until it ends (and cancels at shutdown)."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def ready_when_synced(self, generation: int) -> None:
        """Tell systemd READY (at start-up, after a reload) once every worker runs the rule set of
        `generation`, so that `systemctl start`/`reload` returning means the rules relay; after
        READY_WAIT_S it is said anyway, and the log names the generation that was not confirmed."""
        if await self.wait_synced(generation, every=True, timeout=READY_WAIT_S):
            log.info("every worker confirmed rule generation %d (%d rules): ready", generation, len(self.table.rules))
        self.remove_stale_pins()
        self.notifier.ready(self.status_text())

    async def tick(self) -> None:
        last_rates = last_watchdog = 0.0
        # Memory stays flat only with a full collection now and then: the netlink dumps leave reference cycles
        # that outlive a young-generation pass (a dump spans several loop turns) and die in the old generation,
        # which Python collects only when it has grown by a quarter (minutes to hours on a quiet supervisor; a
        # 10-minute soak showed +2.7 kB/s). What start-up loaded is frozen, so the full pass walks little.
        # Rules added at run time are frozen too, after the full collection that follows a growth of the table
        # by FREEZE_STEP rules: at 10,000 rules the full pass took ~80 ms of the loop (an add's p99) walking
        # long-lived rule objects. Frozen objects are still freed by their reference counts; only garbage
        # in cycles among them would stay, so freezing is kept to such growths, not done at every pass.
        collector_settings()
        frozen_at = len(self.table.rules)
        last_gc = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if now - last_gc >= GC_PERIOD_S:
                last_gc = now
                gc.collect()
                freeze, frozen_at = freeze_due(len(self.table.rules), frozen_at)
                if freeze:
                    gc.freeze()
                heap.release()  # what the collection freed, and what the C heap held free since
            else:
                heap.release_if_due()  # a large answer (ListRules, GetStats, a scrape) was freed
            interval = self.notifier.watchdog_interval
            if interval is not None and now - last_watchdog >= interval:
                last_watchdog = now
                self.notifier.watchdog()
            for handle in self.workers:
                if handle.status is WorkerStatus.RESTARTING and now >= handle.restart_at:
                    self.start_worker(handle, now)
                elif handle.status is WorkerStatus.STARTING and handle.proc is None and now >= handle.adopt_deadline:
                    self.give_up_takeover(handle, now)
            if now - last_rates >= 1.0:
                last_rates = now
                if self.memberships.failed:  # e.g. the operator has raised net.ipv4.igmp_max_memberships
                    self.memberships.retry()
                self.collect_kernel()
                self.stats.tick(self.table.rules, now)
                self.sync_state.settle(self.acked_generations())

    def snapshot_from_thread(self) -> Snapshot:
        """`snapshot`, taken in the loop, for the metrics exporter's HTTP thread."""

        async def take() -> Snapshot:
            return self.snapshot()

        return asyncio.run_coroutine_threadsafe(take(), self.loop).result(timeout=10)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            flows=self.stats.counted(self.table.rules.values()),
            rules=self.rule_views(),
            workers=self.workers_info(),
            queriers=tuple(self.queriers.views()),
            groups=tuple(self.queriers.groups(Family.IPV4) + self.queriers.groups(Family.IPV6)),
            kernel=self.kernel_status(),
            routing=self.routing_counters(),
        )

    async def shutdown(self) -> None:
        self.queriers.close()
        await self.control.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.config.keep_data_plane and self.config.worker_orphan_timeout > 0:
            self.leave_workers()
        else:
            await self.stop_workers()
        if self.config.keep_data_plane:
            self.memberships.release()  # worker 0 holds copies: the host stays a member
        else:
            self.memberships.close()
        goodbye = not self.config.keep_data_plane  # a hitless restart says no Goodbye: neighbours keep us
        self.pim.close(goodbye)
        self.pim6.close(goodbye)
        await self.msdp.close()
        if self.store is not None:
            self.store.close()
        if self.kernel is not None:
            self.collect_kernel()
            if not self.config.keep_data_plane:
                self.kernel.unpin()
            self.kernel.close()
        await self.watcher.stop()
        for flow in self.stats.flow_stats(self.table.rules.values()):
            log.info(
                "final counters: rule %s %s packets=%d bytes=%d",
                flow.rule_id,
                endpoint_text(ip_address(flow.input_group), flow.input_port),
                flow.packets_relayed,
                flow.bytes_relayed,
            )
        log.info("shutdown complete")

    def all_workers(self) -> list[WorkerHandle]:
        """Every worker process: the slots' and the successors waiting to replace one."""
        return [*self.workers, *(h.successor for h in self.workers if h.successor is not None)]

    async def stop_workers(self) -> None:
        """A full stop: every worker is told to end (killed after SHUTDOWN_GRACE_S); its last counts kept."""
        for handle in self.all_workers():
            if handle.channel is not None:
                try:
                    handle.send(Shutdown())
                except WorkerError:
                    pass
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while (
            any(h.proc is not None and h.proc.poll() is None for h in self.all_workers())
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)
        for handle in self.all_workers():
            if handle.proc is not None and handle.proc.poll() is None:
                log.warning("worker %d (pid %d) did not stop in time; killing it", handle.worker_id, handle.pid)
                handle.proc.kill()
                handle.proc.wait()
            self.collect(handle)
            handle.status = WorkerStatus.STOPPED
            self.stats.on_worker_exit(handle.worker_id, self.table.rules)
            if handle.pidfd >= 0:
                self.loop.remove_reader(handle.pidfd)
            handle.close_io()
        for handle in self.all_workers():
            path = self.handover_path(handle)
            if path is not None:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass

    def leave_workers(self) -> None:
        """--keep-data-plane: close our ends only; the workers relay on (for at most the orphan timeout)
        until the next supervisor takes them over through their handover sockets."""
        for handle in self.all_workers():
            self.collect(handle)
            handle.status = WorkerStatus.STOPPED
            if handle.pidfd >= 0:
                self.loop.remove_reader(handle.pidfd)
            if handle.channel is not None:
                self.loop.remove_reader(handle.channel.fileno())
            if handle.stats_fd >= 0:
                self.loop.remove_reader(handle.stats_fd)
            handle.close_io()
        log.info(
            "data plane left running for the next supervisor (workers wait %.0f s for it)",
            self.config.worker_orphan_timeout,
        )

    # -------------------------------------------------------------------------------- workers

    async def stop_surplus_workers(self) -> None:
        """Workers an earlier supervisor left beyond this one's --num-workers: taken over and shut down (their
        fanout share moves to the others), so that none relays stale rules until its orphan timeout."""
        sock = self.config.control_socket_path
        for path in sorted(sock.parent.glob(f"{sock.name}.worker*")):
            suffix = path.name.removeprefix(f"{sock.name}.worker")
            if not suffix.isdigit() or int(suffix) < len(self.workers):
                continue
            pid = await asyncio.to_thread(stop_orphan, path)
            if pid is not None:
                log.info("stopped worker %s (pid %d) of the earlier supervisor: beyond --num-workers", suffix, pid)

    def handover_path(self, handle: WorkerHandle) -> Path | None:
        if self.config.worker_orphan_timeout <= 0:
            return None
        return handover_path(self.config.control_socket_path, handle.worker_id)

    def take_over(self, handle: WorkerHandle, now: float) -> bool:
        """Offer the worker an earlier supervisor left in this slot a new channel; False when there is none."""
        path = self.handover_path(handle)
        if path is None or not take_over_worker(handle, path, now):
            return False
        assert handle.channel is not None
        self.loop.add_reader(handle.channel.fileno(), self.on_channel, handle)
        self.loop.add_reader(handle.stats_fd, self.on_stats, handle)
        return True

    def start_worker(self, handle: WorkerHandle, now: float, stats: bool = True) -> None:
        try:
            spawn_worker(
                handle,
                self.uid,
                self.gid,
                logging.getLevelName(self.global_level.python_level),
                self.config.log_json,
                self.config.seccomp,
                self.handover_path(handle),
                self.config.worker_orphan_timeout,
            )
        except OSError as e:
            log.error("cannot start worker %d: %s", handle.worker_id, e)
            handle.status = WorkerStatus.RESTARTING
            handle.restart_at = now + handle.backoff.on_exit(now)
            return
        handle.backoff.on_start(now)
        self.pin(handle)
        assert handle.channel is not None
        self.loop.add_reader(handle.channel.fileno(), self.on_channel, handle)
        if stats:  # a successor's counts are read once its predecessor's last ones are booked
            self.loop.add_reader(handle.stats_fd, self.on_stats, handle)
        self.loop.add_reader(handle.pidfd, self.on_exit, handle)

    def pin(self, handle: WorkerHandle) -> None:
        """Run the worker on its CPU of --worker-cpus (a new one, or one taken over, which may have run
        elsewhere); one the kernel refuses (gone offline, outside a cpuset) runs unpinned, logged."""
        cpu = worker_cpu(self.config.worker_cpus, handle.worker_id)
        handle.cpu = None
        if cpu is None:
            return
        try:
            pin(handle.pid, cpu)
        except OSError as e:
            log.warning("worker %d runs unpinned: cannot pin it to CPU %d: %s", handle.worker_id, cpu, e.strerror)
            return
        handle.cpu = cpu

    def collect(self, handle: WorkerHandle) -> None:
        for report in handle.read_stats():
            # when the worker took the counts (the same clock), else when they arrived (an older worker)
            at = report.taken_at if report.taken_at is not None else time.monotonic()
            self.stats.on_report(report, at)

    def on_stats(self, handle: WorkerHandle) -> None:
        self.collect(handle)

    def on_channel(self, handle: WorkerHandle) -> None:
        replies, closed = handle.read_replies()
        if closed and handle.channel is not None:
            self.loop.remove_reader(handle.channel.fileno())
            handle.channel.close()
            handle.channel = None
        for reply in replies:
            match reply:
                case Ready():
                    if handle.proc is None and not self.adopted(handle, reply):
                        continue
                    handle.uid = reply.uid
                    handle.status = WorkerStatus.RUNNING
                    log.info("worker %d (pid %d) ready as uid %d", handle.worker_id, reply.pid, reply.uid)
                    self.push(handle, Sync(self.generation, self.worker_rules))
                case SyncAck():
                    handle.acked_generation = reply.generation
                    self.wake_synced()
                    if handle.replacing and reply.generation >= self.generation:
                        self.ask_release(handle)
                    if self.stale_pins is not None and all(h.acked_generation >= self.generation for h in self.workers):
                        self.remove_stale_pins()  # the workers relay now: as soon as possible, or twice
                case Released():
                    self.hand_sockets_on(handle, reply)
                case _:
                    assert_never(reply)

    # ------------------------------------------------------------------- replacing an outdated worker
    #
    # A taken-over worker of another version (an upgrade) is replaced without a gap: a successor is started
    # beside it and given the rules; once it has confirmed them the old worker relays what its rings hold and
    # sends the capture sockets back (Released); the successor reads on from the same rings, and the old
    # worker exits. Nothing is read twice (the old one stops before it lets go) and nothing is lost (frames
    # wait in the rings meanwhile).

    def start_successor(self, old: WorkerHandle) -> None:
        succ = WorkerHandle(old.worker_id, replacing=True)
        self.start_worker(succ, time.monotonic(), stats=False)
        if succ.proc is None:
            log.error("cannot start a successor for worker %d; it keeps running its version", old.worker_id)
            return
        old.successor = succ

    def ask_release(self, succ: WorkerHandle) -> None:
        old = self.workers[succ.worker_id]
        if old.successor is not succ or old.release_asked:
            return
        try:
            old.send(ReleaseSockets())
        except WorkerError as e:
            log.error("%s; the successor opens new capture sockets", e)
            return
        old.release_asked = True

    def hand_sockets_on(self, old: WorkerHandle, reply: Released) -> None:
        succ = old.successor
        fds, old.released_fds = old.released_fds, []
        try:
            if succ is None or self.workers[old.worker_id] is not old:
                log.warning("worker %d released capture sockets nobody waits for", old.worker_id)
                return
            try:
                succ.send(OpenSockets(reply.ifindexes, reply.positions), fds)
            except WorkerError as e:
                log.error("%s; it opens new capture sockets", e)
            else:
                succ.captures = set(reply.ifindexes)
        finally:
            for fd in fds:
                os.close(fd)
        succ.replacing = False
        self.workers[old.worker_id] = succ
        old.status = WorkerStatus.STOPPED
        log.info(
            "worker %d replaced: pid %d reads on from pid %d's capture rings (ifindex %s)",
            succ.worker_id,
            succ.pid,
            old.pid,
            list(reply.ifindexes),
        )
        self.push(succ, Sync(self.generation, self.worker_rules))  # its sockets are the ones it needs

    def retired(self, old: WorkerHandle) -> None:
        """The replaced worker exited: book its last counts, then start reading its successor's."""
        self.collect(old)
        self.stats.on_worker_exit(old.worker_id, self.table.rules)
        old.close_io()
        succ = old.successor
        old.successor = None
        if succ is not None and succ.stats_fd >= 0:
            self.loop.add_reader(succ.stats_fd, self.on_stats, succ)
            self.collect(succ)

    def adopted(self, handle: WorkerHandle, reply: Ready) -> bool:
        """A worker we offered a handover answered: watch its process; it keeps the capture sockets it has."""
        try:
            proc = AdoptedProcess(reply.pid)
        except OSError as e:
            log.warning("worker %d answered the handover but its pid %d is gone: %s", handle.worker_id, reply.pid, e)
            return False
        handle.proc = proc
        handle.pidfd = proc.pidfd
        self.pin(handle)
        self.loop.add_reader(handle.pidfd, self.on_exit, handle)
        handle.captures = {ifindex for ifindex, _ in reply.captures}
        for ifindex, group_id in reply.captures:
            if group_id >= 0:
                self.fanout_ids.setdefault(ifindex, group_id)
        if reply.version != self.worker_version:
            log.info(
                "worker %d runs version %s, this supervisor %s: it is replaced by a new worker without a gap",
                handle.worker_id,
                reply.version or "(unknown)",
                self.worker_version,
            )
            self.loop.call_soon(self.start_successor, handle)
        log.info(
            "took over worker %d (pid %d) with its capture sockets on ifindex %s",
            handle.worker_id,
            reply.pid,
            sorted(handle.captures),
        )
        return True

    def give_up_takeover(self, handle: WorkerHandle, now: float) -> None:
        log.warning("worker %d did not answer the handover; starting a new one", handle.worker_id)
        if handle.channel is not None:
            self.loop.remove_reader(handle.channel.fileno())
        if handle.stats_fd >= 0:
            self.loop.remove_reader(handle.stats_fd)
        handle.close_io()
        self.start_worker(handle, now)

    def synced(self, generation: int, every: bool) -> bool:
        """Whether the ready workers (`every`: all workers) have confirmed `generation`."""
        return all(h.acked_generation >= generation for h in self.workers if every or h.ready)

    def wake_synced(self) -> None:
        """A worker confirmed a generation: the waits it meets end."""
        waiting = []
        for generation, every, told in self.sync_waiters:
            if told.done():
                continue  # timed out or cancelled
            if self.synced(generation, every):
                told.set_result(True)
            else:
                waiting.append((generation, every, told))
        self.sync_waiters = waiting

    def on_exit(self, handle: WorkerHandle) -> None:
        assert handle.proc is not None
        self.loop.remove_reader(handle.pidfd)
        if handle.channel is not None:
            self.loop.remove_reader(handle.channel.fileno())
        self.loop.remove_reader(handle.stats_fd)
        status = handle.proc.wait()
        if self.workers[handle.worker_id] is not handle:  # a replaced worker, or a successor that died early
            if handle.replacing:
                log.error("the successor of worker %d exited (status %d) before taking over", handle.worker_id, status)
                self.workers[handle.worker_id].successor = None
                handle.close_io()
            else:
                self.retired(handle)
            return
        self.collect(handle)
        self.stats.on_worker_exit(handle.worker_id, self.table.rules)
        handle.close_io()
        if self.stopping.is_set():
            handle.status = WorkerStatus.STOPPED
            return
        now = time.monotonic()
        delay = handle.backoff.on_exit(now)
        handle.status = WorkerStatus.RESTARTING
        handle.restart_at = now + delay
        handle.restarts += 1
        log.warning(
            "worker %d (pid %d) exited with status %d; restarting in %.2f s",
            handle.worker_id,
            handle.pid,
            status,
            delay,
        )

    def push(self, handle: WorkerHandle, rules: Sync | Update) -> None:
        """Bring one ready worker in line: capture sockets, then its rules (the whole set, or a change). A
        successor still waiting for its predecessor's capture sockets gets the rules only."""
        captures = self.resolver.captures
        try:
            if handle.replacing:
                handle.send(rules)
                if isinstance(rules, Sync):
                    handle.send(self.log_levels_command())
                return
            gone = sorted(handle.captures - set(captures))
            if gone:
                handle.send(CloseSockets(tuple(gone)))
                handle.captures -= set(gone)
            new = sorted(set(captures) - handle.captures)
            if new:
                socks = [self.capture_socket(ifindex, captures[ifindex]) for ifindex in new]
                try:
                    handle.send(OpenSockets(tuple(new)), [s.fileno() for s in socks])
                finally:
                    for s in socks:
                        s.close()
                handle.captures |= set(new)
            self.open_egress(handle)
            handle.send(rules)
            self.close_egress(handle)  # after the rules: none of the worker's uses them any more
            if isinstance(rules, Sync):
                handle.send(self.log_levels_command())
            if handle.worker_id == 0 and self.config.worker_orphan_timeout > 0:
                self.hold_sockets(handle)
        except (WorkerError, OSError) as e:
            log.error("%s; killing the worker so that it restarts clean", e)
            if handle.proc is not None and handle.proc.poll() is None:
                handle.proc.kill()

    def hold_sockets(self, handle: WorkerHandle) -> None:
        """Give worker 0 copies of the join sockets (they keep the memberships while no supervisor runs) when
        the set changed since it last got them: in messages of at most MAX_FDS_PER_MESSAGE descriptors (one
        SCM_RIGHTS message carries at most 253; 10,000 groups take 500 sockets at igmp_max_memberships 20)."""
        held = tuple(self.memberships.sockets())
        if held == handle.held:  # the same socket objects (compared by identity): nothing to send
            return
        fds = [s.fileno() for s in held]
        handle.send(HoldSockets(len(fds[:MAX_FDS_PER_MESSAGE])), fds[:MAX_FDS_PER_MESSAGE])
        for i in range(MAX_FDS_PER_MESSAGE, len(fds), MAX_FDS_PER_MESSAGE):
            chunk = fds[i : i + MAX_FDS_PER_MESSAGE]
            handle.send(HoldSockets(len(chunk), append=True), chunk)
        handle.held = held

    def close_egress(self, handle: WorkerHandle) -> None:
        """Take back the raw ESP output sockets no rule needs any more (once the Sync without them is sent)."""
        gone = tuple(k for k in handle.egress if k not in self.resolver.raw_egress)
        if gone:
            handle.send(CloseEgress(gone))
            handle.egress -= set(gone)

    def open_egress(self, handle: WorkerHandle) -> None:
        """Give the worker the raw ESP output sockets the rules need (it cannot open them), at most
        MAX_FDS_PER_MESSAGE per message, before the Sync that uses them. A socket that cannot be opened is
        logged and left out: that output's sends count as errors until the next rule change retries it."""
        new = [k for k in self.resolver.raw_egress if k not in handle.egress]
        opened: list[tuple[RawEgress, socket.socket]] = []
        try:
            for key in new:
                try:
                    opened.append((key, open_esp_socket(key)))
                except OSError as e:
                    log.error("cannot open a raw ESP socket to %s on ifindex %d: %s", key.group, key.ifindex, e)
            for start in range(0, len(opened), MAX_FDS_PER_MESSAGE):
                chunk = opened[start : start + MAX_FDS_PER_MESSAGE]
                handle.send(OpenEgress(tuple(k for k, _ in chunk)), [sock.fileno() for _, sock in chunk])
                handle.egress |= {k for k, _ in chunk}
        finally:
            for _, sock in opened:
                sock.close()

    def capture_socket(self, ifindex: int, name: str) -> socket.socket:
        sock = open_capture_socket(name)
        if len(self.workers) > 1:
            try:
                self.fanout_ids[ifindex] = join_fanout(sock, self.fanout_ids.get(ifindex), Fanout.HASH)
            except OSError:
                self.fanout_ids[ifindex] = join_fanout(sock, None, Fanout.HASH)
        return sock

    @property
    def worker_rules(self) -> tuple[WorkerRule, ...]:
        """Every rule the workers serve, as a full Sync gives them."""
        return self.resolver.worker_rules(self.data_rules)

    def advertise_local_sources(self) -> None:
        """MSDP originates SAs for the rules' single sources in groups whose RP is one of our addresses, and
        for the sources DRs registered with us."""
        ours = frozenset(a for link in self.links.values() for a in link.ipv4)
        rp, entries = local_sources(self.table.rules.values(), self.pim.rps, ours)
        registered = [s for s in self.pim.registers.sources() if isinstance(s.rp, IPv4Address)]
        if registered:
            rp = rp or IPv4Address(registered[0].rp)
            entries |= {SaEntry(IPv4Address(s.source), IPv4Address(s.group)) for s in registered}
        self.msdp.set_local_sources(rp, entries)

    def routing_counters(self) -> tuple[tuple[str, int], ...]:
        """PIM and MSDP counters, every one named `pim.` or `msdp.` (zeros for what the cores count too)."""
        pim, msdp = self.pim, self.msdp
        counters = {f"pim.{k}": v for k, v in pim.counters.items()}
        counters |= {f"pim6.{k}": v for k, v in self.pim6.counters.items()}
        counters |= {f"pim.{k}": v for k, v in pim.core_counters().items()}
        counters |= {f"pim6.{k}": v for k, v in self.pim6.core_counters().items()}
        counters |= {
            "pim.neighbors_table_full": pim.core.table_full + self.pim6.core.table_full,
            "pim.joins_table_full": pim.joins.table_full + self.pim6.joins.table_full,
        }
        counters |= {f"msdp.{k}": v for k, v in msdp.counters.items()}
        peers = msdp.core.peers.values()
        counters |= {
            "msdp.rejected_connections": msdp.core.counters.rejected_connections,
            "msdp.sa_cache_expired": msdp.core.counters.sa_cache_expired,
            "msdp.sa_cache_full": msdp.core.counters.sa_cache_full,
            "msdp.rpf_failures": sum(p.rpf_failures for p in peers),
            "msdp.sa_received": sum(p.sa_received for p in peers),
            "msdp.sa_sent": sum(p.sa_sent for p in peers),
            "msdp.peers_established": len(msdp.established()),
            "msdp.sa_cache_entries": len(msdp.core.cache()),
        }
        return tuple(sorted(counters.items()))

    def on_registered_sources(self) -> None:
        """A DR registered a new source with us (or one expired): MSDP announces it, rules join its tree."""
        self.advertise_local_sources()
        self.on_msdp_sources()

    def on_msdp_sources(self) -> None:
        """Rules and learned SAs together decide which trees PIM joins (SA-triggered (S,G) Joins)."""
        registered = {
            SaEntry(IPv4Address(s.source), IPv4Address(s.group))
            for s in self.pim.registers.sources()
            if s.group.version == 4
        }
        self.pim.set_rules(self.table.rules.values(), self.msdp.core.learned_pairs() | registered)
        self.pim6.set_rules(self.table.rules.values())

    def on_pim_routes(self) -> None:
        """PIM's outgoing interfaces changed: the rules for those groups get (or lose) outputs."""
        self.apply()  # every rule re-resolved (PIM changes are rare); only what changed reaches the data plane

    def rule_views(self) -> tuple[RuleView, ...]:
        """The rules as ListRules shows them: a userspace rule is active once every worker has it."""
        return self.sync_state.views(self.resolver.views(self.data_rules), self.acked_generations())

    def acked_generations(self) -> list[int]:
        return [h.acked_generation for h in self.workers if h.status is not WorkerStatus.STOPPED]

    def apply(self, changed: Iterable[str] | None = None) -> int:
        """Bring the data plane in line with the rules `changed` (added, changed or removed; None: every rule,
        after a change of links): the kernel maps, the memberships and a change of the next generation to
        every ready worker. Only those rules are touched. Returns the generation that holds the change."""
        if changed is None:
            changes = self.resolver.update(self.data_rules, [*self.table.rules, *self.resolver.parts], self.links,
                                           self.stats.since)  # fmt: skip
        else:
            changes = self.resolver.update(self.data_rules, changed, epochs=self.stats.since)
        if not changes.rules:
            return self.generation
        self.generation += 1
        self.sync_state.on_changes(changes, self.generation)
        self.advertise_local_sources()
        self.on_msdp_sources()
        if changed is None or any(
            part.view.rule.follows_receivers
            for _rule_id, before, after in changes.rules
            for part in (before, after)
            if part is not None
        ):
            self.queriers.follow(
                {
                    (out.interface, Family.IPV4 if out.group.version == 4 else Family.IPV6)
                    for rule in self.table.rules.values()
                    if rule.follows_receivers
                    for out in rule.outputs
                    if out.follow_receivers
                }
            )
        self.memberships.change(changes.join, changes.leave)
        self.sync_kernel(changes)
        ready = [h for h in self.workers if h.ready]
        ready += [h.successor for h in self.workers if h.successor is not None and h.successor.ready]
        if ready:  # a worker that is not ready yet is given the whole set (Sync) when it is
            update = Update(self.generation, *changes.worker_update())
            for handle in ready:
                self.push(handle, update)
        return self.generation

    async def wait_synced(self, generation: int, every: bool = False, timeout: float = SYNC_WAIT_S) -> bool:
        """Wait until the ready workers (`every`: all workers, also those still starting) have confirmed
        `generation`; False, and a warning in the log, when they have not within `timeout`. A future told
        by `wake_synced` or by a timer, not a task and a condition: this wait is part of every add and remove."""
        if self.synced(generation, every):
            return True
        told: asyncio.Future[bool] = self.loop.create_future()
        self.sync_waiters.append((generation, every, told))
        timer = self.loop.call_later(timeout, _tell, told, False)
        try:
            met = await told
        finally:
            timer.cancel()
        if not met:
            log.warning("not every worker confirmed rule generation %d within %.1f s", generation, timeout)
        return met

    def on_membership(self) -> None:
        """A group's receivers changed on some interface: outputs that follow receivers start or stop (every
        rule is re-resolved, as after a change of links)."""
        self.listeners = Listeners.of(self.queriers.groups(Family.IPV4) + self.queriers.groups(Family.IPV6))
        if self.listeners != self.resolver.listeners:
            self.resolver.listeners = self.listeners
            self.apply()

    def on_links(self, links: dict[str, Link]) -> None:
        self.queriers.on_links(links)
        self.pim.on_links(links)
        self.pim6.on_links(links)
        if links != self.links:
            self.links = links
            self.apply()
        self.advertise_local_sources()  # an address of ours may be an RP's

    # ------------------------------------------------------------------------------- control

    def log_levels_command(self) -> SetLogLevels:
        return SetLogLevels(
            self.global_level.python_level,
            tuple((f.logger_name, s.python_level) for f, s in self.overrides.items()),
        )

    def set_levels(self) -> None:
        logging.getLogger().setLevel(self.global_level.python_level)
        for facility in Facility:
            sev = self.overrides.get(facility)
            logging.getLogger(facility.logger_name).setLevel(sev.python_level if sev else logging.NOTSET)
        for handle in self.workers:
            if handle.ready:
                try:
                    handle.send(self.log_levels_command())
                except WorkerError as e:
                    log.warning("%s", e)

    async def handle(self, req: Request) -> Response:
        try:
            return await self._handle(req)
        except ValidationError as e:
            return Error(str(e))

    async def _handle(self, req: Request) -> Response:
        match req:
            case AddRule():
                rule = self.table.add(req)
                self.stats.track(rule.rule_id, self.generation + 1)

                def unadd() -> None:
                    self.table.remove(rule.rule_id)
                    self.stats.forget_rule(rule.rule_id)

                try:
                    generation = self.commit(rule.rule_id, unadd, added=rule)
                except StateError as e:
                    return Error(f"Rule {rule.rule_id} not added: {e}")
                if log.isEnabledFor(logging.INFO):  # its arguments cost more than the rest of the line
                    log.info("rule %s added: %s -> %d outputs", rule.rule_id, rule.input_text, len(rule.outputs))
                await self.wait_synced(generation)
                return Success(f"Rule {rule.rule_id} added")
            case RemoveRule():
                failed = await self.remove_rule(req.rule_id)
                return failed or Success(f"Rule {req.rule_id} removed")
            case RemoveRuleByName():
                named = self.table.named(req.name)
                if named is None:
                    return Error(f"No rule found with name '{req.name}'. Use 'mcrctl list' to see available rules.")
                failed = await self.remove_rule(named.rule_id)
                return failed or Success(f"Removed rule '{req.name}' (id: {named.rule_id})")
            case LoadConfig():
                return await self.load_config(req)
            case CheckConfig():
                return self.check_config(req)
            case SaveConfig():
                return self.save_config(req.path)
            case ControlPlaneRequest():
                return self.control_plane(req)
            case Query.GET_CONTROL_PLANE_CONFIG:
                sections = self.config_file.original if self.config_file is not None else OriginalSections()
                return ControlPlaneConfig(sections.control_plane)
            case SetGlobalLogLevel():
                self.global_level = req.level
                self.set_levels()
                return Success(f"Global log level set to {req.level.name.upper()}")
            case SetFacilityLogLevel():
                self.overrides[req.facility] = req.level
                self.set_levels()
                return Success(f"Log level for {req.facility.name} set to {req.level.name.upper()}")
            case Query.LIST_RULES:
                return Rules(self.rule_views())
            case Query.GET_STATS:
                for handle in self.workers:
                    self.collect(handle)
                self.collect_kernel()
                return CountedStats(self.stats.counted(self.table.rules.values()))
            case Query.LIST_WORKERS:
                return Workers(self.workers_info())
            case Query.GET_KERNEL_STATUS:
                self.collect_kernel()  # its drops as fresh as GetStats' counters
                return KernelStatusResponse(self.kernel_status())
            case Query.PING:
                ready = sum(1 for h in self.workers if h.ready)
                if ready < len(self.workers):
                    return Error(f"Only {ready}/{len(self.workers)} workers ready")
                return Success(f"pong: {ready}/{len(self.workers)} workers ready")
            case Query.GET_VERSION:
                return Version(VersionInfo(__version__, PROTOCOL_VERSION))
            case Query.GET_CONFIG:
                return ConfigResponse(self.config_view())
            case Query.GET_IGMP_GROUPS:
                return MembershipGroups(Family.IPV4, tuple(self.queriers.groups(Family.IPV4)))
            case Query.GET_MLD_GROUPS:
                return MembershipGroups(Family.IPV6, tuple(self.queriers.groups(Family.IPV6)))
            case Query.GET_QUERIERS:
                return QuerierStates(tuple(self.queriers.views()))
            case SetQuerier():
                text = self.queriers.set_querier(req.family, req.interface, req.enabled)
                log.info("%s", text)
                return Success(text)
            case SetQuerierTimers():
                text = self.queriers.set_timers(req.family, req.interface, req.changes)
                log.info("%s", text)
                return Success(text)
            case Query.GET_LOG_LEVELS:
                return LogLevelsResponse(
                    LogLevels(self.global_level.name, {f.name: s.name for f, s in self.overrides.items()})
                )
            case RoutingQuery.GET_PIM_NEIGHBORS:
                return PimNeighbors(self.pim.neighbor_infos() + self.pim6.neighbor_infos())
            case EnablePim():
                text = self.pim.enable(req)
                self.pim6.enable(req)  # IPv6 too, where the interface has a link-local address
                return Success(text)
            case DisablePim():
                text = self.pim.disable(req)
                self.pim6.disable(req)
                return Success(text)
            case SetStaticRp():
                text = self.pim.set_static_rp(req)
                self.pim6.set_static_rp(req)
                self.advertise_local_sources()  # we may have become (or stopped being) the RP of a source's group
                return Success(text)
            case SetRpAddress():
                ours = {a for link in self.links.values() for a in link.ipv4}
                if req.address not in ours:
                    return Error(f"{req.address} is not an address of this router; an RP address must be local")
                all_groups = SetStaticRp(ip_network("224.0.0.0/4"), req.address)
                self.pim.set_static_rp(all_groups)
                self.pim6.set_static_rp(all_groups)
                self.advertise_local_sources()
                return Success(f"This router is the RP at {req.address} for 224.0.0.0/4 (more specific static RPs win)")
            case RoutingQuery.GET_MROUTE:
                rules = self.table.rules.values()
                return Mroutes(self.pim.mroutes(rules) + self.pim6.mroutes(rules, static=False))
            case RoutingQuery.GET_MSDP_PEERS:
                return MsdpPeers(self.msdp.peer_infos())
            case RoutingQuery.GET_MSDP_SA_CACHE:
                return MsdpSaCache(self.msdp.sa_infos())
            case RoutingQuery.GET_PIM_UPSTREAM:
                return PimUpstream(self.pim.upstream_infos() + self.pim6.upstream_infos())
            case RoutingQuery.GET_PIM_INTERFACES:
                running6 = tuple(i for i in self.pim6.interface_infos() if i.state == "running")
                return PimInterfaces(self.pim.interface_infos() + running6)
            case RoutingQuery.GET_ROUTING_COUNTERS:
                return RoutingCounters(self.routing_counters())
            case RoutingQuery.CLEAR_MSDP_SA_CACHE:
                return Success(self.msdp.clear_cache())
            case AddMsdpPeer():
                text = await self.msdp.add_peer(req)
                self.advertise_local_sources()
                return Success(text)
            case RemoveMsdpPeer():
                return Success(self.msdp.remove_peer(req))
            case _:
                assert_never(req)

    async def remove_rule(self, rule_id: str) -> Error | None:
        """Remove a runtime rule; the error when it cannot be (unknown, from the config file, not saved)."""
        existing = self.table.rules.get(rule_id)
        if existing is not None and existing.source is RuleSource.CONFIG:
            where = self.config_file.path if self.config_file else "the config file"
            return Error(f"Rule {rule_id} comes from {where}; remove it there and reload (SIGHUP)")
        rule = self.table.remove(rule_id)
        try:  # taken back, the rule is as it was, counters and all
            generation = self.commit(rule_id, lambda: self.table.insert(rule, shaped=True), removed=rule_id)
        except StateError as e:
            return Error(f"Rule {rule.rule_id} not removed: {e}")
        self.stats.forget_rule(rule.rule_id)
        log.info("rule %s removed", rule.rule_id)
        await self.wait_synced(generation)
        return None

    async def load_config(self, req: LoadConfig) -> Response:
        """LoadConfig: the rules of a configuration in the original's schema become runtime rules (saved in
        the state file, like added ones); its other sections are not taken (as in the original)."""
        config = req.document.config
        if config is None:
            return Error(f"Invalid configuration: {req.document.error}")
        before = self.table.index
        try:
            added, removed, skipped = self.table.load(config.rules, req.replace)
        except ValidationError as e:
            return Error(f"Invalid configuration: {e}")
        try:
            self.save_all()
        except StateError as e:
            self.table.index = before
            return Error(f"Configuration not loaded: {e}")
        for rule_id in removed + added:
            self.stats.forget_rule(rule_id)
        for rule_id in added:
            self.stats.track(rule_id, self.generation + 1)
        log.info(
            "configuration loaded over the control socket: %d rules added, %d removed, %d skipped",
            len(added),
            len(removed),
            len(skipped),
        )
        if added or removed:
            await self.wait_synced(self.apply(added + removed))
        if req.replace:
            return Success(f"Configuration loaded ({len(self.table.rules)} rules, replaced existing)")
        return Success(f"Configuration merged ({len(added)} rules added, {len(skipped)} skipped as duplicates)")

    def check_config(self, req: CheckConfig) -> ConfigValidation:
        config = req.document.config
        if config is None:
            return ConfigValidation(False, (req.document.error,))
        over = limits_exceeded(config.rules, self.config.limits)
        if over:
            return ConfigValidation(False, tuple(f"over a limit: {text}" for text in over), config.warnings)
        return ConfigValidation(True, (), config.warnings + unserved_notes("config", config.sections))

    def save_config(self, path: str | None) -> Response:
        """SaveConfig: every rule, in the original's JSON5 schema (with our ids and extras), to `path` or to
        the JSON5 file the supervisor was started with. Saved over that file, the runtime rules become the
        file's rules (they leave the state file), so that a reload or a restart finds each rule once."""
        started_with = self.config_file
        if path is None:
            if started_with is None:
                return Error("No path specified and the supervisor was not started with --config")
            if started_with.dialect is not ConfigDialect.JSON5:
                return Error(
                    f"the supervisor's config file {started_with.path} is TOML and `config save` writes the "
                    "original's JSON5 schema; give a path to write to (config save --file FILE.json5)"
                )
            path = started_with.path
        elif not os.path.isabs(path):
            return Error(
                f"SaveConfig path '{path}' is relative: give an absolute path (the supervisor's working "
                "directory is not the client's)"
            )
        target = Path(os.path.abspath(path))
        sections = started_with.original if started_with is not None else OriginalSections()
        doc = encode_original_config(tuple(self.table.rules.values()), sections)
        text = json.dumps(doc, indent=2) + "\n"
        try:
            write_atomically(target, text.encode())
        except OSError as e:
            return Error(f"Failed to save configuration: {target}: {e.strerror}")
        if started_with is not None and target == Path(os.path.abspath(started_with.path)):
            saved = parse_config(text, started_with.path)
            self.table.index = FlowIndex(
                replace(r, source=RuleSource.CONFIG) if r.source is RuleSource.RUNTIME else r
                for r in self.table.rules.values()
            )
            self.config_file = replace(saved, settings=started_with.settings, limits=started_with.limits)
            # only where each rule comes from changed: the data plane keeps its forms (no rule goes pending),
            # the views are re-resolved
            self.apply(list(self.table.rules))
            try:
                self.save_all()
            except StateError as e:
                log.error("%s; the saved rules are also still in the state file", e)
        log.info("configuration saved to %s (%d rules)", target, len(self.table.rules))
        return Success(f"Configuration saved to {target}")

    def control_plane(self, req: ControlPlaneRequest) -> Response:
        """The one place the original's IGMP, PIM, MSDP, mroute and subscription requests are answered."""
        return Error(req.refusal)

    def config_view(self) -> ConfigView:
        c = self.config
        settings: tuple[tuple[str, str | int | bool | None], ...] = (
            ("control_socket_path", str(c.control_socket_path)),
            ("control_group", c.control_group),
            ("read_only_group", c.read_only_group),
            ("user", c.user),
            ("group", c.group),
            ("num_workers", c.num_workers),
            ("worker_cpus", cpu_list_text(c.worker_cpus) if c.worker_cpus else None),
            (
                "engine",
                c.engine if self.kernel is not None or c.engine == "userspace" else f"{c.engine} (userspace only)",
            ),
            ("log_level", self.global_level.name),
            ("log_json", c.log_json),
            ("state_file", None if c.state_file is None else str(c.state_file)),
            ("metrics_addr", c.metrics_addr),
        )
        f = self.config_file
        rules = tuple(self.table.rules.values())
        if f is None:
            return ConfigView(None, settings, c.limits, rules, OriginalSections(multicast_ttl=c.multicast_ttl))
        original = replace(f.original, multicast_ttl=c.multicast_ttl)  # in force: flag, file, environment or 1
        return ConfigView(f.path, settings, c.limits, rules, original, f.dialect.value)

    def workers_info(self) -> tuple[WorkerInfo, ...]:
        """The data-plane worker processes (the kernel engine is none: see kernel_status)."""
        return tuple(self.worker_info(h) for h in self.workers if h.proc is not None)

    def kernel_status(self) -> KernelStatus:
        kernel = self.kernel
        if kernel is None:
            return KernelStatus(False, self.config.engine, self.kernel_unavailable)
        report = self.stats.latest.get(KERNEL_REPORT)
        names = {link.ifindex: name for name, link in self.links.items()}
        return KernelStatus(
            loaded=True,
            mode=self.config.engine,
            instructions=len(kernel.insns),
            interfaces=tuple(sorted(names.get(i, f"ifindex {i}") for i in kernel.attached)),
            rules=len(self.kernel_slots),
            max_rules=kernel.max_rules,
            max_outputs=kernel.max_outputs,
            drops=dict(report.drops) if report else {},
        )

    def worker_info(self, h: WorkerHandle) -> WorkerInfo:
        report = self.stats.latest.get(h.worker_id)
        backoff = h.restart_at - time.monotonic() if h.status is WorkerStatus.RESTARTING else 0.0
        return WorkerInfo(
            pid=h.pid,
            worker_type="DataPlane",
            core_id=h.cpu,
            worker_id=h.worker_id,
            status=h.status.value,
            uid=h.uid,
            restarts=h.restarts,
            drops=dict(report.drops) if report else {},
            kernel_packets=report.kernel_packets if report else 0,
            kernel_drops=report.kernel_drops if report else 0,
            stats_pipe_errors=report.pipe_errors if report else 0,
            ring_resyncs=report.ring_resyncs if report else 0,
            backoff_ms=max(0, round(backoff * 1000)),
        )


async def run_supervisor(config: SupervisorConfig) -> None:
    heap.one_arena()  # before the metrics thread: what it frees is given back with the rest
    supervisor = Supervisor(config)
    await supervisor.run()
