"""`control_client doctor`, the pure part: host facts, rules and workers in, findings with their fixes out.

The collector (`mcr.cli.host`) reads /proc/sys, /sys/class/net and `ethtool -k` into `HostFacts`;
`diagnose` never touches the system, so every pitfall is a table-driven unit test on a fake host.
Checks report `ok` when clean, so the output is also the list of what was checked.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from rich import box
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from mcr.model.config import SECTION_PROTOCOLS
from mcr.model.cpus import cpu_list_text
from mcr.model.rules import DEFAULT_MULTICAST_TTL, effective_ttl
from mcr.model.status import ConfigView, KernelStatus, RuleState, RuleView, WorkerInfo

BUFFER_MIN = 8 << 20  # rmem_max/wmem_max below this are worth raising for a relay
DEFAULT_IGMP_MAX_MEMBERSHIPS = 20  # the kernel's default, what MCR assumes when it cannot read the sysctl
_UDP_IP_HEADERS = 28
_RP_MODES = {0: "off", 1: "strict", 2: "loose"}
# Features of `ethtool -k` that merge received frames before AF_PACKET sees them, and their `ethtool -K` names.
MERGING_OFFLOADS = {
    "generic-receive-offload": "gro",
    "large-receive-offload": "lro",
    "rx-gro-hw": "rx-gro-hw",
    "rx-udp-gro-forwarding": "rx-udp-gro-forwarding",
    "rx-gro-list": "rx-gro-list",
}


class Severity(Enum):
    OK = "ok"
    INFO = "info"  # worth knowing, nothing to fix for MCR
    WARNING = "warning"  # MCR runs, but something will be lost or surprising
    ERROR = "error"  # a flow, or part of one, is not being relayed

    @property
    def is_problem(self) -> bool:
        return self in (Severity.WARNING, Severity.ERROR)


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    check: str  # stable name of the check: rp_filter, igmp, buffers, offloads, ttl, mtu, rules, workers, ...
    title: str
    detail: str = ""
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Offload:
    """One line of `ethtool -k`: `generic-receive-offload: on [fixed]`."""

    on: bool
    fixed: bool = False


@dataclass(frozen=True, slots=True)
class InterfaceFacts:
    name: str
    mtu: int | None = None
    rp_filter: int | None = None
    offloads: Mapping[str, Offload] | None = None  # None: not read, `offloads_note` says why
    offloads_note: str = ""


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the collector found; None where a value could not be read. Only existing interfaces are listed."""

    rp_filter_all: int | None = None
    rp_filter_default: int | None = None
    igmp_max_memberships: int | None = None
    rmem_max: int | None = None
    wmem_max: int | None = None
    interfaces: Mapping[str, InterfaceFacts] = field(default_factory=dict)
    # Kernel engines pinned under `pin_root` (instance -> pin names); None: could not be read (not root, no bpffs)
    pinned: Mapping[str, tuple[str, ...]] | None = field(default_factory=dict)
    pin_root: str = "/sys/fs/bpf/mcr"
    handover_sockets: tuple[str, ...] = ()  # workers' handover sockets next to the control socket


def parse_ethtool_features(text: str) -> dict[str, Offload]:
    """`ethtool -k IFACE` output -> feature name -> state. Lines that are not `name: on|off` are skipped."""
    features: dict[str, Offload] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        words = rest.split()
        if not sep or not words or words[0] not in ("on", "off") or " " in name.strip():
            continue
        features[name.strip()] = Offload(on=words[0] == "on", fixed="[fixed]" in words)
    return features


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _mib(value: int) -> str:
    return f"{value / (1 << 20):g} MiB" if value >= 1 << 20 else f"{value} bytes"


# --------------------------------------------------------------------------------------------- checks


def inputs_of(rules: Sequence[RuleView]) -> list[str]:
    """The input interfaces the rules name: where receive offloads and rp_filter matter."""
    return sorted({v.rule.input_interface for v in rules})


_RP_DETAIL = (
    "Expected and harmless for relaying: MCR captures at layer 2, before the reverse-path check, so it relays "
    "sources this host cannot route back to. But the kernel drops those packets for local sockets: a receiver "
    "on this host itself gets nothing."
)


def _rp_finding(where: str, values: Mapping[str, int | None], effective: int, iface: str) -> Finding:
    shown = ", ".join(f"{k}={'?' if v is None else v}" for k, v in values.items())
    if effective == 0:
        return Finding(Severity.OK, "rp_filter", f"rp_filter off {where} ({shown})")
    return Finding(
        Severity.INFO,
        "rp_filter",
        f"rp_filter {_RP_MODES.get(effective, str(effective))} {where} ({shown})",
        _RP_DETAIL,
        "Nothing to do for MCR. Only if this host must also receive the groups locally: sysctl -w "
        f"net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{iface}.rp_filter=0 (or 2, loose, with a route back "
        "to the source)",
    )


def check_rp_filter(facts: HostFacts, rules: Sequence[RuleView]) -> list[Finding]:
    """Reverse-path filtering: information only. MCR works regardless; local receivers would not."""
    inputs = [n for n in inputs_of(rules) if n in facts.interfaces]
    if not inputs:  # nothing to relay yet: what new interfaces will get
        values = {"all": facts.rp_filter_all, "default": facts.rp_filter_default}
        effective = max((v for v in values.values() if v is not None), default=0)
        return [_rp_finding("for new interfaces", values, effective, "IFACE")]
    findings = []
    for name in inputs:
        # The kernel applies max(conf.all, conf.IFACE) to an existing interface; `default` no longer matters.
        values = {"all": facts.rp_filter_all, name: facts.interfaces[name].rp_filter}
        effective = max((v for v in values.values() if v is not None), default=0)
        findings.append(_rp_finding(f"on input {name}", values, effective, name))
    return findings


def check_igmp(facts: HostFacts, rules: Sequence[RuleView]) -> list[Finding]:
    """Input groups per interface against net.ipv4.igmp_max_memberships (a per-socket limit).

    MCR spreads its joins over ceil(groups / limit) sockets per interface, so more groups than the limit
    is not a failure: it is reported as information (how many sockets, and that a single-socket
    receiver on this host would fail). Only a limit of 0 breaks MCR: no join succeeds, so NICs and
    snooping switches never deliver the groups. There is deliberately no "limit x factor" warning: with
    at most 10,000 rules the extra sockets cost nothing, and a warning would fail a healthy host.
    """
    limit = facts.igmp_max_memberships
    groups: dict[str, set[str]] = {}
    for view in rules:
        if view.rule.input_group.is_multicast:  # a unicast input is the host's own address: nothing to join
            groups.setdefault(view.rule.input_interface, set()).add(str(view.rule.input_group))
    if limit is None:
        return [
            Finding(
                Severity.INFO,
                "igmp",
                "net.ipv4.igmp_max_memberships: not readable",
                f"MCR then assumes the kernel default ({DEFAULT_IGMP_MAX_MEMBERSHIPS}) groups per socket.",
            )
        ]
    if limit <= 0:
        return [
            Finding(
                Severity.ERROR if groups else Severity.WARNING,
                "igmp",
                f"net.ipv4.igmp_max_memberships is {limit}: no multicast group can be joined",
                "MCR joins every input group so that the NIC and IGMP-snooping switches deliver it; every join "
                "fails with ENOBUFS, so on real networks the input traffic never arrives.",
                "sysctl -w net.ipv4.igmp_max_memberships=20 (the kernel default), and persist it in /etc/sysctl.d/",
            )
        ]
    crowded = {name: len(g) for name, g in sorted(groups.items()) if len(g) > limit}
    if not crowded:
        most = max((len(g) for g in groups.values()), default=0)
        plural = "s" if most > 1 else ""
        title = f"no input groups yet; igmp_max_memberships is {limit} per socket"
        if groups:
            title = f"at most {most} input group{plural} per interface, within igmp_max_memberships ({limit})"
        return [Finding(Severity.OK, "igmp", title)]
    findings = []
    for name, count in crowded.items():
        sockets = math.ceil(count / limit)
        findings.append(
            Finding(
                Severity.INFO,
                "igmp",
                f"{count} input groups on {name}, more than igmp_max_memberships ({limit}) per socket",
                f"MCR spreads the joins over {sockets} sockets, so relaying works. A program on this host that "
                f"joins these groups on one socket would get ENOBUFS after {limit}.",
                f"Optional: sysctl -w net.ipv4.igmp_max_memberships={count} (one socket per interface; "
                "persist it in /etc/sysctl.d/).",
            )
        )
    return findings


def check_buffers(facts: HostFacts) -> list[Finding]:
    """net.core.rmem_max / wmem_max cap the buffers a socket may ask for (global, not per namespace)."""
    findings = []
    for name, value, why in (
        (
            "rmem_max",
            facts.rmem_max,
            "It caps the receive buffer any socket may ask for with SO_RCVBUF: receivers on this host "
            "(traffic_sink, your applications) lose bursts larger than that. MCR's own capture reads a "
            "memory-mapped ring and forces its buffer size, so relaying itself is not limited by it.",
        ),
        (
            "wmem_max",
            facts.wmem_max,
            "It caps the send buffer of every socket that cannot force it: MCR's unprivileged workers ask for "
            "4 MiB per output and get less when wmem_max is lower; a burst that does not fit fails with "
            "EAGAIN and is counted as send errors on that output. 8 MiB leaves room for bursts at high rates.",
        ),
    ):
        key = f"net.core.{name}"
        if value is None:
            findings.append(Finding(Severity.INFO, "buffers", f"{key}: not readable"))
        elif value < BUFFER_MIN:
            findings.append(
                Finding(
                    Severity.WARNING,
                    "buffers",
                    f"{key} is {_mib(value)}, below {_mib(BUFFER_MIN)}",
                    why,
                    f"sysctl -w {key}={BUFFER_MIN} (and persist it in /etc/sysctl.d/90-mcr.conf)",
                )
            )
        else:
            findings.append(Finding(Severity.OK, "buffers", f"{key} is {_mib(value)}"))
    return findings


def check_offloads(facts: HostFacts, rules: Sequence[RuleView]) -> list[Finding]:
    """GRO/LRO on input interfaces: frames merged before capture break one-frame-one-datagram."""
    findings = []
    for name in inputs_of(rules):
        iface = facts.interfaces.get(name)
        if iface is None:
            continue  # missing: the rules check reports it
        if iface.offloads is None:
            findings.append(
                Finding(
                    Severity.INFO,
                    "offloads",
                    f"receive offloads on {name}: not checked",
                    iface.offloads_note,
                    "install ethtool (apt-get install ethtool) and run doctor again"
                    if "not installed" in iface.offloads_note
                    else "",
                )
            )
            continue
        on = {feature: state for feature, state in iface.offloads.items() if feature in MERGING_OFFLOADS and state.on}
        if not on:
            findings.append(Finding(Severity.OK, "offloads", f"GRO/LRO off on {name}"))
            continue
        changeable = [MERGING_OFFLOADS[f] for f, state in on.items() if not state.fixed]
        fixed = [f for f, state in on.items() if state.fixed]
        fix = f"ethtool -K {name} {' '.join(f'{short} off' for short in changeable)}" if changeable else ""
        if fixed:
            fix += ("; " if fix else "") + f"{', '.join(fixed)} cannot be changed on this driver ([fixed])"
        findings.append(
            Finding(
                Severity.WARNING,
                "offloads",
                f"{', '.join(on)} on for input interface {name}",
                "Receive offloads can merge consecutive frames of a flow into one large frame before the capture "
                "socket sees it. MCR relays what it captures, one frame as one datagram, so merged frames leave "
                "as wrong-sized datagrams or are counted as drops, and the counts stop matching the sender.",
                fix + " (persist it in the interface configuration)" if changeable else fix,
            )
        )
    return findings


def check_ttl(rules: Sequence[RuleView], multicast_ttl: int = DEFAULT_MULTICAST_TTL) -> list[Finding]:
    """Outputs sent with TTL 1 never cross a router. An output that sets no TTL sends with the supervisor's
    `multicast_ttl` (a multicast group) or the kernel's default (unicast: never 1)."""
    findings = []
    for view in sorted(rules, key=lambda v: v.rule.rule_id):
        low = [o for o in view.rule.outputs if effective_ttl(o, multicast_ttl) == 1]
        if not low:
            continue
        findings.append(
            Finding(
                Severity.WARNING,
                "ttl",
                f"rule {view.rule.rule_id}: {_count(len(low), 'output')} sent with TTL 1",
                f"{', '.join(o.spec for o in low)}: receivers on the output's own link get them, receivers "
                "behind a router do not (the router drops packets whose TTL reaches 0).",
                f"if receivers sit behind routers: control_client remove --rule-id {shlex.quote(view.rule.rule_id)}"
                ", then add it again with --ttl N (N = router hops + 1)",
            )
        )
    if not findings and any(v.rule.outputs for v in rules):
        findings.append(Finding(Severity.OK, "ttl", "every output has a TTL above 1"))
    return findings


def check_mtu(facts: HostFacts, rules: Sequence[RuleView]) -> list[Finding]:
    """An output interface with a smaller MTU than its input: the largest datagrams do not fit."""
    pairs: dict[tuple[str, str], list[str]] = {}
    for view in sorted(rules, key=lambda v: v.rule.rule_id):
        for out in view.rule.outputs:
            pairs.setdefault((view.rule.input_interface, out.interface), []).append(view.rule.rule_id)
    findings = []
    compared = 0
    for (src, dst), rule_ids in sorted(pairs.items()):
        mtu_in = facts.interfaces[src].mtu if src in facts.interfaces else None
        mtu_out = facts.interfaces[dst].mtu if dst in facts.interfaces else None
        if mtu_in is None or mtu_out is None:
            continue
        compared += 1
        if mtu_out >= mtu_in:
            continue
        ids = list(dict.fromkeys(rule_ids))  # in order, once each
        findings.append(
            Finding(
                Severity.WARNING,
                "mtu",
                f"MTU of output {dst} ({mtu_out}) is smaller than input {src} ({mtu_in})",
                f"{'Rule' if len(ids) == 1 else 'Rules'} {', '.join(ids)}: a datagram with more than "
                f"{mtu_out - _UDP_IP_HEADERS} bytes of payload arrives "
                f"whole on {src} but does not fit one frame on {dst}. The kernel sends it as IP fragments: "
                "receivers and firewalls that do not reassemble drop it, and losing one fragment loses the "
                "whole datagram.",
                f"ip link set {dst} mtu {mtu_in} (if the link allows it), or make the senders keep payloads "
                f"at or below {mtu_out - _UDP_IP_HEADERS} bytes",
            )
        )
    if not findings and compared:
        findings.append(Finding(Severity.OK, "mtu", "no output interface has a smaller MTU than its input"))
    return findings


_REASON = re.compile(
    r"(?:input interface|output\[\d+\]) (\S+) (does not exist|is down|has no IPv4 address|has no carrier)"
)


_FOREIGN_INPUT = re.compile(r"input (\S+) is not an address of (\S+)")  # a unicast input (supervisor.core)


def _reason_fix(reason: str) -> str:
    """The fix for each part of a `state_reason` (`input interface eth3 is down; output[1] eth4 ...`)."""
    fixes: list[str] = []
    for name, problem in _REASON.findall(reason):
        if problem == "does not exist":
            fix = f"check the name {name} (ip -br link); the rule starts by itself when it appears"
        elif problem == "is down":
            fix = f"ip link set {name} up"
        elif problem == "has no carrier":
            fix = (
                f"check {name}'s cable, switch port or peer (ip -br link shows NO-CARRIER); "
                "packets resume by themselves"
            )
        else:
            fix = f"give {name} an address: ip addr add A.B.C.D/P dev {name}"
        if fix not in fixes:
            fixes.append(fix)
    return "; ".join(fixes) or "see the reason; the rule resumes by itself once its interfaces are usable"


def check_rules(rules: Sequence[RuleView]) -> list[Finding]:
    """Rules waiting for their input interface, rules still pending (the caller asked again for a few seconds
    first), and outputs that cannot be served (from ListRules)."""
    findings = []
    for view in sorted(rules, key=lambda v: v.rule.rule_id):
        rid = view.rule.rule_id
        if view.state is RuleState.WAITING:
            findings.append(
                Finding(
                    Severity.ERROR,
                    "rules",
                    f"rule {rid} is waiting: {view.state_reason or 'no reason given'}",
                    "Nothing is captured or relayed for this rule until its input interface exists and is up.",
                    _reason_fix(view.state_reason),
                )
            )
        elif view.state is RuleState.PENDING:
            findings.append(
                Finding(
                    Severity.WARNING,
                    "rules",
                    f"rule {rid} stays pending: {view.state_reason or 'no reason given'}",
                    "Not every worker has confirmed the rule set that holds it, so flows hashed to such a worker "
                    "are not relayed; applying a rule set normally takes well under a second (a few seconds for "
                    "a thousand rules).",
                    "control_client list-workers (a worker Starting, or restarting again and again?) and the "
                    "supervisor's log (journalctl -u mcr)",
                )
            )
        elif view.state_reason:
            skipped: list[str] = []
            for note in view.state_reason.split("; "):
                foreign = _FOREIGN_INPUT.fullmatch(note)
                if foreign is None:
                    skipped.append(note)
                    continue
                address, name = foreign.groups()
                findings.append(
                    Finding(
                        Severity.WARNING,
                        "rules",
                        f"rule {rid}: {note}",
                        f"A unicast input is relayed from frames sent to {address} on {name}; without that "
                        "address there, only a promiscuous interface receives them.",
                        f"ip addr add {address}/P dev {name}, or correct the rule's input address",
                    )
                )
            rest = "; ".join(skipped)
            if not rest:
                continue
            findings.append(
                Finding(
                    Severity.WARNING,
                    "rules",
                    f"rule {rid} skips outputs: {rest}",
                    "The rule relays to its other outputs; these get nothing until their interface is usable.",
                    _reason_fix(rest),
                )
            )
    if not findings:
        title = f"{_count(len(rules), 'rule')} active with every output" if rules else "no rules configured"
        findings.append(Finding(Severity.OK if rules else Severity.INFO, "rules", title))
    return findings


def check_workers(workers: Sequence[WorkerInfo]) -> list[Finding]:
    """Restarted workers, kernel drops, resynchronised rings and workers that are not running (from ListWorkers)."""
    findings = []
    for w in sorted(workers, key=lambda w: (w.worker_type, w.worker_id, w.pid)):
        who = f"worker {w.worker_id} (pid {w.pid})"
        if w.status != "Running":
            findings.append(
                Finding(
                    Severity.ERROR,
                    "workers",
                    f"{who} is {w.status}",
                    "Flows hashed to this worker are not relayed until it runs again (it is restarted with backoff).",
                    "read the supervisor's log for why it stopped (journalctl -u mcr)",
                )
            )
        if w.restarts > 0:
            findings.append(
                Finding(
                    Severity.WARNING,
                    "workers",
                    f"{who} was restarted {_count(w.restarts, 'time')}",
                    "Each restart loses the packets that arrived while the worker was down.",
                    "read the supervisor's log for the exit status of each restart (journalctl -u mcr)",
                )
            )
        if w.kernel_drops > 0:
            findings.append(
                Finding(
                    Severity.WARNING,
                    "workers",
                    f"{who}: the kernel dropped {w.kernel_drops} frames it could not queue to the worker",
                    f"Out of {w.kernel_packets} frames: the worker does not keep up with its share of the input.",
                    "run more workers (--num-workers; flows are spread by hash), spread outputs over more "
                    "workers, or give the workers CPU that is not busy with interrupts",
                )
            )
        if w.ring_resyncs > 0:
            findings.append(
                Finding(
                    Severity.WARNING,
                    "workers",
                    f"{who}: its capture ring was resynchronised {_count(w.ring_resyncs, 'time')}",
                    "After an overload its reads had drifted from the order the kernel fills the ring in; it "
                    "recovered by itself, but frames were late or dropped until then.",
                    "nothing if the count stays put; if it grows, the worker is overloaded: run more workers "
                    "(--num-workers), as for kernel drops",
                )
            )
    if not findings:
        title = (
            f"{_count(sum(w.worker_type == 'DataPlane' for w in workers), 'worker')} running, no restarts, "
            "no kernel drops"
            if workers
            else "no workers reported"
        )
        findings.append(Finding(Severity.OK if workers else Severity.WARNING, "workers", title))
    return findings


def check_leftovers(facts: HostFacts, supervisor_up: bool) -> list[Finding]:
    """A data plane left without a supervisor: pinned kernel engines and workers' handover sockets (a crash,
    or a stop with --keep-data-plane). While a supervisor runs they are its own, so they are only listed."""
    pinned = facts.pinned or {}
    kernel = [
        f"{facts.pin_root}/{name} ({_count(sum(p.startswith('link_') for p in pins), 'link')})"
        for name, pins in sorted(pinned.items())
    ]
    parts = kernel + list(facts.handover_sockets)
    if not parts:
        if facts.pinned is None:
            return [
                Finding(
                    Severity.INFO,
                    "leftovers",
                    f"could not look for a pinned kernel engine under {facts.pin_root}",
                    "run doctor as root (the bpf file system is root's)",
                )
            ]
        return [Finding(Severity.OK, "leftovers", "no data plane left behind by an earlier supervisor")]
    if supervisor_up:
        return [Finding(Severity.INFO, "leftovers", "data plane that outlives the supervisor", "; ".join(parts))]
    return [
        Finding(
            Severity.WARNING,
            "leftovers",
            "a data plane is relaying without a supervisor",
            "; ".join(parts),
            "start the supervisor (it takes them over), or remove them by hand: `rm -r` the pin directory "
            "(the program leaves its interfaces at once) and delete the handover sockets (their workers exit "
            "after --worker-orphan-timeout)",
        )
    ]


def check_config(view: ConfigView) -> list[Finding]:
    """What the config file asks for that this relay accepts but does not do, or does otherwise (the
    original's JSON5 file: its protocol sections, and pinning that differs per interface)."""
    where = view.path or "the config file"
    findings = [
        Finding(
            Severity.WARNING,
            "config",
            f"{where}: section '{name}' is accepted but not served",
            f"{SECTION_PROTOCOLS[name]} is not implemented in this relay yet; it forwards by its rules only",
            f"remove the '{name}' section, or configure the routes it would learn as rules",
        )
        for name in view.original.unserved
    ]
    if view.original.pinning_joined:
        findings.append(
            Finding(
                Severity.INFO,
                "config",
                f"{where}: 'pinning' names different CPUs per interface; they are joined",
                "every worker serves every input here, spread by PACKET_FANOUT, so workers are pinned over "
                f"CPUs {cpu_list_text(view.original.pinned_cpus)} in turn; --num-workers sets how many",
            )
        )
    return findings


def diagnose(
    facts: HostFacts,
    rules: Sequence[RuleView] | None,
    workers: Sequence[WorkerInfo] | None,
    supervisor_error: str | None = None,
    kernel: KernelStatus | None = None,
    config: ConfigView | None = None,
) -> list[Finding]:
    """Every check, in a fixed order. `rules`/`workers` are None when the supervisor could not be asked:
    the host checks still run, the rule and worker checks are replaced by one error saying why."""
    findings: list[Finding] = []
    if supervisor_error is not None or rules is None or workers is None:
        findings.append(
            Finding(
                Severity.ERROR,
                "supervisor",
                "cannot ask the supervisor for its rules and workers",
                supervisor_error or "no answer",
                "start the supervisor, or point doctor at it with --socket-path / MCR_CONTROL_SOCKET; "
                "the host checks below ran without rules",
            )
        )
    known_rules = rules or ()
    findings += check_rp_filter(facts, known_rules)
    findings += check_igmp(facts, known_rules)
    findings += check_buffers(facts)
    findings += check_offloads(facts, known_rules)
    findings += check_ttl(known_rules)
    findings += check_mtu(facts, known_rules)
    if rules is not None:
        findings += check_rules(rules)
    if workers is not None:
        findings += check_workers(workers)
    if kernel is not None:
        findings += check_kernel(kernel, rules or ())
    if config is not None:
        findings += check_config(config)
    findings += check_leftovers(facts, supervisor_up=rules is not None)
    return findings


#: Kernel engine drops that say something is wrong upstream (the others, e.g. no_rule, are normal traffic).
_KERNEL_DROP_PROBLEMS = ("fragment", "truncated", "bad_ip_header", "bad_udp_length", "zero_udp_checksum")


def check_kernel(kernel: KernelStatus, rules: Sequence[RuleView]) -> list[Finding]:
    """The eBPF engine (from GetKernelStatus): not loaded though asked for, and the drops that point at the input."""
    if not kernel.loaded:
        if kernel.mode == "userspace":
            return [Finding(Severity.INFO, "kernel", "kernel engine off (--engine userspace): every rule in userspace")]
        return [
            Finding(
                Severity.WARNING if rules else Severity.INFO,
                "kernel",
                "kernel engine not loaded: every rule is served in userspace",
                kernel.reason or "no reason given",
                "run the supervisor as root or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN on a kernel with "
                "tc BPF (5.x or later); the userspace engine relays meanwhile",
            )
        ]
    findings = []
    bad = {k: n for k, n in kernel.drops.items() if k in _KERNEL_DROP_PROBLEMS and n}
    if bad:
        findings.append(
            Finding(
                Severity.WARNING,
                "kernel",
                f"kernel engine dropped {sum(bad.values())} frames of relayed groups",
                ", ".join(f"{k}={n}" for k, n in sorted(bad.items()))
                + ": fragments and malformed datagrams are never relayed.",
                "check the sender's datagram size against the path MTU (fragments) and its stack (malformed)",
            )
        )
    else:
        where = ", ".join(kernel.interfaces) or "no interface yet"
        findings.append(
            Finding(Severity.OK, "kernel", f"kernel engine loaded: {_count(kernel.rules, 'rule')} on {where}")
        )
    return findings


def has_problems(findings: Sequence[Finding]) -> bool:
    return any(f.severity.is_problem for f in findings)


def interfaces_of(rules: Sequence[RuleView]) -> list[str]:
    """Every interface the rules name, inputs and outputs: what the collector must look at."""
    names = {v.rule.input_interface for v in rules} | {o.interface for v in rules for o in v.rule.outputs}
    return sorted(names)


# ------------------------------------------------------------------------------------------------ output

_STYLES = {Severity.OK: "green", Severity.INFO: "cyan", Severity.WARNING: "yellow", Severity.ERROR: "bold red"}


def findings_json(findings: Sequence[Finding]) -> dict[str, object]:
    return {
        "ok": not has_problems(findings),
        "findings": [
            {"severity": f.severity.value, "check": f.check, "title": f.title, "detail": f.detail, "fix": f.fix}
            for f in findings
        ],
    }


def render_findings(findings: Sequence[Finding]) -> RenderableType:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, leading=1)
    table.add_column("Status", no_wrap=True)
    table.add_column("Check", no_wrap=True)
    table.add_column("Finding", ratio=3, overflow="fold")
    table.add_column("Fix", ratio=2, overflow="fold")
    for f in findings:
        finding = Text(f.title)
        if f.detail:
            finding.append("\n" + f.detail, style="dim")
        table.add_row(Text(f.severity.value, style=_STYLES[f.severity]), Text(f.check), finding, Text(f.fix))
    problems = sum(1 for f in findings if f.severity.is_problem)
    summary = Text(
        "nothing wrong found" if not problems else f"{_count(problems, 'problem')} found",
        style="green" if not problems else "bold red",
    )
    grid = Table.grid()
    grid.add_row(table)
    grid.add_row(Text(""))
    grid.add_row(summary)
    return grid
