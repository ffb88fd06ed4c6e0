"""`control_client` (alias `mcrctl`): send one command to the supervisor and show its answer (DESIGN §4).

Flags and error texts follow the original MCR's client; unlike it, we exit non-zero on an `Error`
response and never send an empty rule_id. Global flags may come before or after the command.
Two commands are more than one request: `top` (a live view, `mcr.cli.top` and `mcr.cli.screen`) and
`doctor` (host and rule checks, `mcr.cli.doctor` and `mcr.cli.host`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import NoReturn, TextIO, assert_never

from rich.console import Console

from mcr import __version__
from mcr.cli.doctor import diagnose, findings_json, has_problems, inputs_of, interfaces_of, render_findings
from mcr.cli.host import collect_host_facts
from mcr.cli.render import render_error, render_kernel_drops, render_querier_counters, render_response
from mcr.cli.screen import Keyboard, Snapshot, poll_supervisor, run_live
from mcr.cli.top import Controls, TopView, on_poll, render_top
from mcr.cli.transport import (
    DEFAULT_TIMEOUT_S,
    ErrorAnswer,
    UnreachableError,
    ask,
    ask_config,
    ask_kernel_status,
    ask_queriers,
    exchange,
)
from mcr.membership.querier import INTEGER_TIMERS, TimerChanges
from mcr.membership.wire import Family
from mcr.model.config import Config, ConfigDialect, parse_config, unserved_notes
from mcr.model.errors import ConfigError, McrError, ProtocolError, ValidationError
from mcr.model.levels import Facility, Severity
from mcr.model.original_config import OriginalConfig
from mcr.model.ratelimit import RateUnit, make_rate_limit, parse_rate
from mcr.model.rules import (
    InputProtocol,
    IPAddress,
    OutputDestination,
    SourcePrefix,
    name_problem,
    parse_group,
    parse_output_spec,
    parse_source,
)
from mcr.model.status import IMPLEMENTATION, ConfigView, KernelStatus, RuleState, RuleView, WorkerInfo
from mcr.protocol.control import (
    DEFAULT_SOCKET,
    SOCKET_ENV,
    AddRule,
    ConfigDocument,
    Error,
    LoadConfig,
    Query,
    RemoveRule,
    RemoveRuleByName,
    Request,
    Rules,
    SaveConfig,
    SetFacilityLogLevel,
    SetGlobalLogLevel,
    SetQuerier,
    SetQuerierTimers,
    Stats,
    Version,
    Workers,
    decode_response_document,
    encode_request,
    load_response,
)
from mcr.protocol.routing import (
    AddMsdpPeer,
    DisablePim,
    EnablePim,
    RemoveMsdpPeer,
    RoutingQuery,
    SetRpAddress,
    SetStaticRp,
)
from mcr.routing.config import MAX_DR_PRIORITY, MAX_HELLO_PERIOD, MIN_HELLO_PERIOD
from mcr.routing.pim_joins import parse_group_prefix

PROG = "control_client"
_PORT_MAX = 65535
_WIDE = 200  # columns when stdout is not a terminal: grep-able rows rather than wrapped cells
TOP_INTERVAL_S = 1.0
TOP_TIMEOUT_S = 2.0  # per request in `top` unless --timeout says otherwise: a hung supervisor must not freeze it
PENDING_GRACE_S = 5.0  # how long `doctor` asks again while a rule is pending before it reports it


class ExitCode(IntEnum):
    OK = 0
    ERROR_RESPONSE = 1  # the supervisor answered {"Error": ...}
    USAGE = 2  # rejected before connecting
    UNREACHABLE = 3  # no answer, or an answer we cannot read


@dataclass(frozen=True, slots=True)
class Invocation:
    """A command that is one request and its answer."""

    request: Request
    socket_path: str
    json_output: bool
    timeout_s: float


@dataclass(frozen=True, slots=True)
class TopInvocation:
    socket_path: str
    timeout_s: float
    interval_s: float
    once: bool


@dataclass(frozen=True, slots=True)
class DoctorInvocation:
    socket_path: str
    json_output: bool
    timeout_s: float


@dataclass(frozen=True, slots=True)
class ConfigCheckInvocation:
    path: str


@dataclass(frozen=True, slots=True)
class ConfigLoadInvocation:
    """`config load`: the file is read here (either format), its rules sent in a LoadConfig."""

    path: str
    replace: bool
    target: Invocation  # where and how to send it (its request is replaced by the LoadConfig)


Command = Invocation | TopInvocation | DoctorInvocation | ConfigCheckInvocation | ConfigLoadInvocation


# ------------------------------------------------------------------------------------- argument types


def _group(text: str) -> IPAddress:
    try:
        return parse_group(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {'IPv6' if ':' in text else 'IPv4'} address '{text}'") from None


def _source(text: str) -> SourcePrefix:
    if "/" not in text:
        return ip_network(_group(text))
    try:
        return parse_source(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _port(text: str) -> int:
    # Syntax only, as the original's u16: port 0 reaches the supervisor, which explains the valid range.
    if not text.isascii() or not text.isdigit() or int(text) > _PORT_MAX:
        raise argparse.ArgumentTypeError(f"invalid port '{text}'; expected a number 0-{_PORT_MAX}")
    return int(text)


def _protocol(text: str) -> InputProtocol:
    found = {"udp": InputProtocol.UDP, "17": InputProtocol.UDP, "esp": InputProtocol.ESP, "50": InputProtocol.ESP}
    protocol = found.get(text.strip().lower())
    if protocol is None:
        raise argparse.ArgumentTypeError(f"invalid protocol '{text}'; expected udp (17) or esp (50)")
    return protocol


def _ttl(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 255:
        raise argparse.ArgumentTypeError(f"invalid TTL '{text}'; valid TTL range is 1-255")
    return int(text)


def _name(text: str) -> str:
    problem = name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid timeout '{text}'; expected a positive number of seconds")
    return value


def _seconds(text: str) -> float:
    """A number of seconds for a querier timer (its range is the supervisor's to check, by the timer's name)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid number of seconds '{text}'")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid whole number '{text}'") from None


#: the flags of `igmp|mld set-timers`, one per querier timer: (metavar, help)
_TIMER_FLAGS: dict[str, tuple[str, str]] = {
    "robustness": ("N", "robustness variable, 1-7"),
    "query_interval": ("S", "seconds between general queries, 1-31744"),
    "query_response_interval": ("S", "Max Resp Time of general queries, 0.1-3174.4 s, less than the query interval"),
    "last_member_query_interval": ("S", "Max Resp Time and spacing of group-specific queries, 0.1-25.5 s"),
    "last_member_query_count": ("N", "group-specific queries after a leave, 1-7 (0: the robustness)"),
    "startup_query_interval": ("S", "seconds between startup queries (0: a quarter of the query interval)"),
    "startup_query_count": ("N", "startup queries, 1-7 (0: the robustness)"),
    "other_querier_present_interval": ("S", "silence after which a lower querier is taken over (0: the RFC's)"),
    "version": ("V", "highest version spoken: IGMP 1-3, MLD 1-2 (0: the highest)"),
}


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"invalid interval '{text}'; expected 0.1 to 3600 seconds")
    return value


def _rule_id(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("rule id must not be empty")
    return text


def _outputs(text: str) -> tuple[OutputDestination, ...]:
    """One `--outputs` value: comma-separated `group:port:interface` specs; an empty value is no outputs."""
    if not text:
        return ()
    found: list[OutputDestination] = []
    for spec in text.split(","):
        try:
            out = parse_output_spec(spec)
        except ValidationError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not 0 <= out.port <= _PORT_MAX:  # the original parsed a u16 here
            raise argparse.ArgumentTypeError(f"Invalid port: '{spec.strip().split(':')[1]}' in '{spec}'")
        found.append(out)
    return tuple(found)


def _rate(text: str) -> tuple[int, RateUnit]:
    try:
        return parse_rate(text)
    except ValidationError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _burst(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid burst '{text}'; expected a positive whole number")
    return int(text)


def _severity(text: str) -> Severity:
    try:
        return Severity.parse(text)
    except ValidationError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _facility(text: str) -> Facility:
    try:
        return Facility.parse(text)
    except ValidationError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# -------------------------------------------------------------------------------------------- parser


def _global_flags() -> argparse.ArgumentParser:
    """Flags accepted before the command (the original's place) and after it.

    Every default is SUPPRESS so that a subcommand that does not see the flag leaves the value the
    main parser found alone; `parse_invocation` fills in the real defaults.
    """
    flags = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    flags.add_argument(
        "--socket-path",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"control socket (default: ${SOCKET_ENV} or {DEFAULT_SOCKET})",
    )
    flags.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the raw JSON response")
    flags.add_argument(
        "--timeout",
        type=_timeout,
        default=argparse.SUPPRESS,
        metavar="S",
        help=f"seconds to wait for the supervisor (default {DEFAULT_TIMEOUT_S:g})",
    )
    return flags


def _bounded_int(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
    return value


def _group_prefix(text: str) -> IPv4Network | IPv6Network:
    try:
        return parse_group_prefix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _unicast(text: str) -> IPv4Address | IPv6Address:
    try:
        address = ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an IP address") from None
    if address.is_multicast or address.is_unspecified:
        raise argparse.ArgumentTypeError(f"{address} is not a unicast address")
    return address


def _peer_address(text: str) -> IPv4Address:
    try:
        address = IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an IPv4 address") from None
    if address.is_multicast or address.is_unspecified or address.is_loopback:
        raise argparse.ArgumentTypeError(f"{address} is not a unicast peer address")
    return address


def _dr_priority(text: str) -> int:
    return _bounded_int(text, 0, MAX_DR_PRIORITY)


def _hello_period(text: str) -> int:
    return _bounded_int(text, MIN_HELLO_PERIOD, MAX_HELLO_PERIOD)


def build_parser() -> argparse.ArgumentParser:
    common = _global_flags()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Send one command to the MCR supervisor over its control socket.",
        parents=[common],
        allow_abbrev=False,
        epilog="exit status: 0 success, 1 the supervisor answered an error, 2 usage error, "
        "3 supervisor unreachable or malformed answer",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, aliases=list(aliases), parents=[common], allow_abbrev=False)
        sub.set_defaults(command=name, usage_error=sub.error)
        return sub

    add = command("add", "add a forwarding rule")
    add.add_argument("--rule-id", type=_rule_id, help="rule id (default: the supervisor generates one)")
    add.add_argument("--name", type=_name, help="a name for the rule, unique like its id (remove --name finds it)")
    add.add_argument("--input-interface", required=True, metavar="IF", help="interface to capture on")
    add.add_argument(
        "--input-group", required=True, type=_group, metavar="G", help="input multicast group (IPv4 or IPv6)"
    )
    add.add_argument("--input-port", type=_port, metavar="P", help="input UDP port (ESP: 0, the default)")
    add.add_argument(
        "--input-protocol",
        type=_protocol,
        default=InputProtocol.UDP,
        metavar="udp|esp",
        help="what the rule relays: UDP (17, the default) or IPsec ESP (50, no ports; outputs' ports unused)",
    )
    add.add_argument(
        "--input-source",
        type=_source,
        metavar="S[/LEN]",
        help="only relay datagrams from this source host or prefix; joins source-specifically (IGMPv3/MLDv2)",
    )
    add.add_argument(
        "--outputs",
        type=_outputs,
        action="append",
        default=[],
        metavar="G:P:IF[,[G6]:P:IF...]",
        help="output destinations; repeatable (default: none)",
    )
    add.add_argument(
        "--ttl",
        type=_ttl,
        metavar="N",
        help="TTL (hop limit) of every output (default: the supervisor's multicast_ttl for a group, "
        "the kernel's default for a unicast destination)",
    )
    add.add_argument(
        "--follow-receivers",
        action="store_true",
        help="every output sends only while its interface has IGMP/MLD receivers for its group",
    )
    add.add_argument(
        "--rate-limit",
        type=_rate,
        metavar="RATE",
        help="relay at most RATE: packets (10000pps, 10kpps) or payload bits (50mbps, 1gbps) per second",
    )
    add.add_argument(
        "--burst",
        type=_burst,
        metavar="N",
        help="burst of --rate-limit: packets for pps, bytes for bps (default: 0.1 s worth, at least 65535 bytes)",
    )

    remove = command("remove", "remove a forwarding rule")
    which_rule = remove.add_mutually_exclusive_group()
    which_rule.add_argument("--rule-id", type=_rule_id, help="id of the rule to remove")
    which_rule.add_argument("--name", type=_name, help="name of the rule to remove")

    command("list", "list the forwarding rules", aliases=["list-rules"])
    command("stats", "show per-rule and per-output counters")
    command("list-workers", "list the worker processes")
    command("kernel", "show the eBPF kernel engine: loaded or why not, rules, interfaces, drops")
    command("ping", "check that the supervisor and its workers answer")
    command("version", "show the supervisor's version and protocol version")

    top = command("top", "live per-flow view: rates, counters, errors (keys: p b n e sort, q quit)")
    top.add_argument(
        "--interval",
        type=_interval,
        default=TOP_INTERVAL_S,
        metavar="S",
        help=f"seconds between refreshes (default {TOP_INTERVAL_S:g})",
    )
    top.add_argument(
        "--once", action="store_true", help="print one snapshot and exit (the default when stdout is not a terminal)"
    )
    command("doctor", "check the host and the rules for known pitfalls (exit 1 when something is wrong)")

    config = command("config", "show, check, load or save the configuration")
    config_actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")

    def config_action(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = config_actions.add_parser(name, help=help_text, parents=[common], allow_abbrev=False)
        sub.set_defaults(usage_error=sub.error)
        return sub

    config_action("show", "settings and rules the supervisor runs with")
    check = config_action("check", "validate a config file, TOML or JSON5 (here; nothing is applied)")
    check.add_argument("file", nargs="?", metavar="FILE", help="the config file to check")
    check.add_argument("--file", dest="file_flag", metavar="FILE", help="the same, as the original's client has it")
    load = config_action("load", "add the rules of a config file (TOML or JSON5) as runtime rules")
    load.add_argument("--file", dest="file_flag", required=True, metavar="FILE", help="the config file")
    load.add_argument("--replace", action="store_true", help="replace every runtime rule (default: merge)")
    save = config_action("save", "write every rule in the original's JSON5 schema (default: the --config file)")
    save.add_argument("--file", dest="file_flag", metavar="FILE", help="where to write (root only)")
    config_action("control-plane", "the control-plane integration settings (not served yet)")

    for proto, family_name in (("igmp", "IGMP"), ("mld", "MLD")):
        membership = command(proto, f"{family_name} membership table and querier")
        actions = membership.add_subparsers(dest="membership_command", required=True, metavar="ACTION")
        for action, help_text in (
            ("groups", f"the {family_name} membership table: groups, sources, filter mode, timers"),
            ("queriers", "each interface's querier: role, elected querier, version, counters"),
            ("enable-querier", f"send {family_name} queries on an interface (and take part in the election)"),
            ("disable-querier", "stop querying on an interface (memberships are still tracked)"),
            ("set-timers", "change querier timers at run time (the fields given; at the next timer, no restart)"),
        ):
            sub = actions.add_parser(action, help=help_text, parents=[common])
            sub.set_defaults(usage_error=sub.error)
            if action.endswith("-querier"):
                sub.add_argument("--interface", required=True, metavar="IF", help="the interface")
            if action == "set-timers":
                sub.add_argument(
                    "--interface", metavar="IF", help="only this interface (default: every interface of the family)"
                )
                for name, (metavar, text) in _TIMER_FLAGS.items():
                    sub.add_argument(
                        "--" + name.replace("_", "-"),
                        dest=f"timer_{name}",
                        type=_whole if name in INTEGER_TIMERS else _seconds,
                        metavar=metavar,
                        help=text,
                    )
    pim = command("pim", "PIM-SM: neighbours, and enabling it on interfaces")
    pim_actions = pim.add_subparsers(dest="pim_command", required=True, metavar="ACTION")
    neighbors = pim_actions.add_parser("neighbors", help="the PIM neighbours and DRs", parents=[common])
    neighbors.set_defaults(usage_error=neighbors.error)
    counters = pim_actions.add_parser(
        "counters", help="PIM and MSDP messages sent, received, dropped", parents=[common]
    )
    counters.set_defaults(usage_error=counters.error)
    interfaces = pim_actions.add_parser(
        "interfaces", help="the interfaces PIM runs (or waits) on, with their DR", parents=[common]
    )
    interfaces.set_defaults(usage_error=interfaces.error)
    upstream = pim_actions.add_parser(
        "upstream",
        help="what PIM asks upstream: Joins, (S,G,rpt) Prunes, Registers (as DR), sources switched to the SPT",
        parents=[common],
    )
    upstream.set_defaults(usage_error=upstream.error)
    enable = pim_actions.add_parser("enable", help="run PIM on an interface", parents=[common])
    enable.set_defaults(usage_error=enable.error)
    enable.add_argument("--interface", required=True, metavar="IF", help="interface to run PIM on")
    enable.add_argument("--dr-priority", type=_dr_priority, metavar="N", help="DR priority (default 1)")
    enable.add_argument("--hello-period", type=_hello_period, metavar="S", help="seconds between Hellos (default 30)")
    mode = enable.add_mutually_exclusive_group()
    mode.add_argument(
        "--passive",
        action="store_const",
        const=True,
        dest="passive",
        help="no Hellos sent or taken there: only register the interface's directly connected sources",
    )
    mode.add_argument("--active", action="store_const", const=False, dest="passive", help="Hellos again (the default)")
    disable = pim_actions.add_parser("disable", help="stop PIM on an interface (sends a Goodbye)", parents=[common])
    disable.set_defaults(usage_error=disable.error)
    disable.add_argument("--interface", required=True, metavar="IF", help="interface to stop PIM on")
    set_rp = pim_actions.add_parser("set-rp", help="map a group prefix to a static RP", parents=[common])
    set_rp.set_defaults(usage_error=set_rp.error)
    set_rp.add_argument("--group", required=True, type=_group_prefix, metavar="PREFIX", help="e.g. 239.1.0.0/16")
    set_rp.add_argument("--rp", required=True, type=_unicast, metavar="ADDRESS", help="the RP's address")
    set_rp_address = pim_actions.add_parser(
        "set-rp-address", help="make this router the RP for 224.0.0.0/4 at one of its addresses", parents=[common]
    )
    set_rp_address.set_defaults(usage_error=set_rp_address.error)
    set_rp_address.add_argument("--address", required=True, type=_peer_address, metavar="IP", help="a local address")
    command("mroute", "the multicast routing table: static rules and PIM (*,G) and (S,G) state")

    msdp = command("msdp", "MSDP: peers and the SA cache")
    msdp_actions = msdp.add_subparsers(dest="msdp_command", required=True, metavar="ACTION")
    for name, text in (
        ("peers", "the MSDP peers and their sessions"),
        ("sa-cache", "the Source-Active cache (our own sources first)"),
        ("clear-sa-cache", "forget every learned SA"),
    ):
        sub = msdp_actions.add_parser(name, help=text, parents=[common])
        sub.set_defaults(usage_error=sub.error)
    add_peer = msdp_actions.add_parser("add-peer", help="peer with an MSDP speaker (TCP 639)", parents=[common])
    add_peer.set_defaults(usage_error=add_peer.error)
    add_peer.add_argument("--address", required=True, type=_peer_address, metavar="IP", help="the peer's IPv4 address")
    add_peer.add_argument("--description", metavar="TEXT", help="free text shown in `msdp peers`")
    add_peer.add_argument("--mesh-group", metavar="NAME", help="mesh group (SAs from it are not flooded back into it)")
    add_peer.add_argument("--default-peer", action="store_true", help="accept every SA from it (peer-RPF)")
    add_peer.add_argument(
        "--sa-filter",
        type=_group_prefix,
        action="append",
        default=[],
        metavar="PREFIX",
        help="never take SAs for these groups from the peer nor send it any; repeatable",
    )
    remove_peer = msdp_actions.add_parser("remove-peer", help="end and forget an MSDP peering", parents=[common])
    remove_peer.set_defaults(usage_error=remove_peer.error)
    remove_peer.add_argument("--address", required=True, type=_peer_address, metavar="IP", help="the peer's address")

    log_level = command("log-level", "get or set log levels")
    levels = log_level.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    get = levels.add_parser("get", help="show the global level and facility overrides", parents=[common])
    get.set_defaults(usage_error=get.error)
    set_ = levels.add_parser("set", help="set the global or one facility's level", parents=[common])
    set_.set_defaults(usage_error=set_.error)
    which = set_.add_mutually_exclusive_group()
    which.add_argument("--global", dest="global_level", type=_severity, metavar="LEVEL", help="global level")
    which.add_argument("--facility", type=_facility, metavar="FACILITY", help="facility (exact name)")
    set_.add_argument("--level", type=_severity, metavar="LEVEL", help="level for --facility")
    return parser


_QUERIES: dict[str, Query | RoutingQuery] = {
    "list": Query.LIST_RULES,
    "stats": Query.GET_STATS,
    "list-workers": Query.LIST_WORKERS,
    "ping": Query.PING,
    "version": Query.GET_VERSION,
    "mroute": RoutingQuery.GET_MROUTE,
    "kernel": Query.GET_KERNEL_STATUS,
}


def _request(args: argparse.Namespace) -> Request:
    fail: Callable[[str], NoReturn] = args.usage_error  # the command's parser: prints usage, exits 2
    command: str = args.command
    if command == "add":
        outputs = tuple(out for group in args.outputs for out in group)
        if args.ttl is not None:
            outputs = tuple(replace(out, ttl=args.ttl) for out in outputs)
        if args.follow_receivers:
            outputs = tuple(replace(out, follow_receivers=True) for out in outputs)
        rate_limit = None
        if args.rate_limit is not None:
            try:
                rate, unit = args.rate_limit
                rate_limit = make_rate_limit(rate, unit, args.burst)
            except ValidationError as e:
                fail(f"argument --rate-limit: {e}")
        elif args.burst is not None:
            fail("argument --burst: requires --rate-limit RATE")
        port = args.input_port
        if port is None:
            if args.input_protocol is not InputProtocol.ESP:
                fail("the following arguments are required: --input-port")
            port = 0
        return AddRule(
            rule_id=args.rule_id,
            input_interface=args.input_interface,
            input_group=args.input_group,
            input_port=port,
            outputs=outputs,
            input_source=args.input_source,
            rate_limit=rate_limit,
            name=args.name,
            input_protocol=args.input_protocol,
        )
    if command == "remove":
        if args.rule_id is None and args.name is None:
            fail("Must specify either --rule-id or --name")
        return RemoveRule(args.rule_id) if args.rule_id is not None else RemoveRuleByName(args.name)
    if command in ("igmp", "mld"):
        family = Family.IPV4 if command == "igmp" else Family.IPV6
        action: str = args.membership_command
        if action == "groups":
            return Query.GET_IGMP_GROUPS if family is Family.IPV4 else Query.GET_MLD_GROUPS
        if action == "queriers":
            return Query.GET_QUERIERS
        if action == "set-timers":
            changes = TimerChanges(**{name: getattr(args, f"timer_{name}") for name in _TIMER_FLAGS})
            if not changes.given():
                flags = ", ".join("--" + name.replace("_", "-") for name in _TIMER_FLAGS)
                fail(f"give at least one timer to change: {flags}")
            return SetQuerierTimers(family, args.interface, changes)
        return SetQuerier(family, args.interface, action == "enable-querier")
    if command == "pim":
        if args.pim_command == "enable":
            return EnablePim(args.interface, args.dr_priority, args.hello_period, args.passive)
        if args.pim_command == "disable":
            return DisablePim(args.interface)
        if args.pim_command == "counters":
            return RoutingQuery.GET_ROUTING_COUNTERS
        if args.pim_command == "interfaces":
            return RoutingQuery.GET_PIM_INTERFACES
        if args.pim_command == "upstream":
            return RoutingQuery.GET_PIM_UPSTREAM
        if args.pim_command == "set-rp-address":
            return SetRpAddress(args.address)
        if args.pim_command == "set-rp":
            if args.rp.version != args.group.version:
                fail(f"argument --rp: {args.rp} is not of the family of {args.group}")
            return SetStaticRp(args.group, args.rp)
        return RoutingQuery.GET_PIM_NEIGHBORS
    if command == "msdp":
        if args.msdp_command == "add-peer":
            if any(p.version != 4 for p in args.sa_filter):
                fail("argument --sa-filter: MSDP carries IPv4 groups only")
            return AddMsdpPeer(
                args.address, args.description, args.mesh_group, args.default_peer, tuple(args.sa_filter)
            )
        if args.msdp_command == "remove-peer":
            return RemoveMsdpPeer(args.address)
        return {
            "peers": RoutingQuery.GET_MSDP_PEERS,
            "sa-cache": RoutingQuery.GET_MSDP_SA_CACHE,
            "clear-sa-cache": RoutingQuery.CLEAR_MSDP_SA_CACHE,
        }[args.msdp_command]
    if command == "log-level":
        if args.log_command == "get":
            return Query.GET_LOG_LEVELS
        if args.facility is not None:
            if args.level is None:
                fail("argument --facility: requires --level LEVEL")
            return SetFacilityLogLevel(args.facility, args.level)
        if args.global_level is not None:
            if args.level is not None:
                fail("argument --level: not allowed with argument --global")
            return SetGlobalLogLevel(args.global_level)
        fail("Must specify either --global <LEVEL> or --facility <FACILITY> --level <LEVEL>")
    return _QUERIES[command]


def parse_command(argv: Sequence[str], env: Mapping[str, str]) -> Command:
    """Parse the command line into what to do and where; usage errors exit 2 through argparse."""
    args = build_parser().parse_args(list(argv))
    socket_path = getattr(args, "socket_path", None) or env.get(SOCKET_ENV) or DEFAULT_SOCKET
    json_output: bool = getattr(args, "json", False)
    timeout_s: float = getattr(args, "timeout", DEFAULT_TIMEOUT_S)
    if args.command == "top":
        if json_output:
            args.usage_error("top has no JSON output; use `stats --json` and `list-workers --json`")
        return TopInvocation(
            socket_path=socket_path,
            timeout_s=getattr(args, "timeout", TOP_TIMEOUT_S),
            interval_s=args.interval,
            once=args.once,
        )
    if args.command == "doctor":
        return DoctorInvocation(socket_path=socket_path, json_output=json_output, timeout_s=timeout_s)
    if args.command == "config":
        return _config_command(args, socket_path, json_output, timeout_s)
    return Invocation(request=_request(args), socket_path=socket_path, json_output=json_output, timeout_s=timeout_s)


def _config_command(args: argparse.Namespace, socket_path: str, json_output: bool, timeout_s: float) -> Command:
    fail: Callable[[str], NoReturn] = args.usage_error
    action: str = args.config_command
    file: str | None = getattr(args, "file_flag", None)
    if action == "check":
        path: str | None = args.file or file
        if path is None or (args.file is not None and file is not None):
            fail("give the file to check once: config check FILE (or --file FILE)")
        return ConfigCheckInvocation(path=path)
    request: Request
    if action == "show":
        request = Query.GET_CONFIG
    elif action == "control-plane":
        request = Query.GET_CONTROL_PLANE_CONFIG
    elif action == "save":
        request = SaveConfig(None if file is None else os.path.abspath(file))  # the supervisor's cwd is not ours
    else:
        assert file is not None
        return ConfigLoadInvocation(file, args.replace, Invocation(Query.PING, socket_path, json_output, timeout_s))
    return Invocation(request, socket_path=socket_path, json_output=json_output, timeout_s=timeout_s)


def parse_invocation(argv: Sequence[str], env: Mapping[str, str]) -> Invocation:
    """Like `parse_command`, for the commands that are one request (all but `top` and `doctor`)."""
    command = parse_command(argv, env)
    if not isinstance(command, Invocation):
        raise TypeError(f"{type(command).__name__} is not a single request; use parse_command")
    return command


# ---------------------------------------------------------------------------------------------- main


def console_for(out: TextIO) -> Console:
    """A console for `out`: the terminal's width and colours, or plain and wide (never cut at 80 columns) when
    `out` is a pipe or a file."""
    terminal = out.isatty()
    return Console(
        file=out,
        highlight=False,
        width=None if terminal or "COLUMNS" in os.environ else _WIDE,
        color_system="auto" if terminal else None,
    )


def unsupported_by_peer(invocation: Invocation) -> str | None:
    """Why an AddRule must not be sent: it has `--input-source`, `--rate-limit` or `--follow-receivers` and the
    supervisor is one of the originals, which would ignore them (relay every source without a limit, send to
    every output). None: send it."""
    req = invocation.request
    if not isinstance(req, AddRule):
        return None
    follow = any(o.follow_receivers for o in req.outputs)
    if req.input_source is None and req.rate_limit is None and not follow:
        return None
    try:
        info = ask(invocation.socket_path, Query.GET_VERSION, Version, invocation.timeout_s).info
        if info.implementation == IMPLEMENTATION:
            return None
        who = f"it says implementation '{info.implementation}'"
    except ErrorAnswer as e:
        who = f"it answers GetVersion with: {e.text}"
    except ProtocolError as e:
        who = f"its GetVersion answer is not ours: {e}"
    named = (("--input-source", req.input_source), ("--rate-limit", req.rate_limit), ("--follow-receivers", follow))
    flags = " and ".join(f for f, v in named if v)
    effects = []
    if req.input_source is not None or req.rate_limit is not None:
        effects.append("relay the group from every source, without a limit")
    if follow:
        effects.append("send to every output whether anyone listens there or not")
    return (
        f"the supervisor at {invocation.socket_path} is not MCR in Python ({who}): it would ignore {flags} "
        f"and {', and '.join(effects)}; the rule was not sent"
    )


def run(invocation: Invocation, out: TextIO, err: TextIO) -> ExitCode:
    """Send the request, print the answer, and say how it went."""
    try:
        refusal = unsupported_by_peer(invocation)
    except UnreachableError as e:
        print(f"{PROG}: {e}", file=err)
        return ExitCode.UNREACHABLE
    if refusal is not None:
        print(render_error(refusal), file=err)
        return ExitCode.ERROR_RESPONSE
    try:
        raw = exchange(invocation.socket_path, encode_request(invocation.request), invocation.timeout_s)
        doc = load_response(raw)  # parsed once: checked below, and printed as it came with --json
        response = decode_response_document(doc)
    except UnreachableError as e:
        print(f"{PROG}: {e}", file=err)
        return ExitCode.UNREACHABLE
    except ProtocolError as e:
        print(f"{PROG}: malformed answer from the supervisor at {invocation.socket_path}: {e}", file=err)
        return ExitCode.UNREACHABLE
    if invocation.json_output:
        print(json.dumps(doc, indent=2, ensure_ascii=False), file=out)
    if isinstance(response, Error):
        print(render_error(response.text), file=err)
        return ExitCode.ERROR_RESPONSE
    if not invocation.json_output:
        console = console_for(out)
        console.print(render_response(response), markup=False)
        if isinstance(response, Stats):
            _print_kernel_drops(invocation, console)
            _print_querier_counters(invocation, console)
    return ExitCode.OK


def _print_kernel_drops(invocation: Invocation, console: Console) -> None:
    """Under `stats`: the kernel engine's drops, from a supervisor that reports them (nothing otherwise)."""
    try:
        kernel = ask_kernel_status(invocation.socket_path, invocation.timeout_s)
    except McrError:
        return  # the flows are already printed; the kernel line is extra
    if kernel is not None and kernel.loaded:
        console.print(render_kernel_drops(kernel), markup=False)


def _print_querier_counters(invocation: Invocation, console: Console) -> None:
    """Under `stats`: each IGMP/MLD querier's counters, from a supervisor that reports them (nothing otherwise)."""
    try:
        queriers = ask_queriers(invocation.socket_path, invocation.timeout_s)
    except McrError:
        return  # the flows are already printed; the querier lines are extra
    for q in queriers:
        console.print(render_querier_counters(q), markup=False)


def run_top(invocation: TopInvocation, out: TextIO, err: TextIO, keys: TextIO) -> ExitCode:
    """The live view when stdout is a terminal; otherwise (or with --once) one snapshot."""

    def poll() -> Snapshot:
        return poll_supervisor(invocation.socket_path, invocation.timeout_s)

    console = console_for(out)
    if invocation.once or not out.isatty():
        try:
            flows, workers, rules, kernel, queriers = poll()
        except ErrorAnswer as e:
            print(render_error(e.text), file=err)
            return ExitCode.ERROR_RESPONSE
        except McrError as e:
            print(f"{PROG}: {e}", file=err)
            return ExitCode.UNREACHABLE
        view = on_poll(TopView(), flows, workers, datetime.now(), rules, kernel, queriers)
        console.print(render_top(view, Controls(), invocation.interval_s, live=False))
        return ExitCode.OK
    try:
        run_live(poll, console, Keyboard(keys), invocation.interval_s)
    except KeyboardInterrupt:
        pass  # Ctrl-C is the other way out; the screen and the terminal are already restored
    return ExitCode.OK


def _read_config(path: str, err: TextIO) -> Config | None:
    """A config file of either format, its warnings and notes printed; None (and why) when it is invalid."""
    try:
        with open(path, encoding="utf-8") as f:
            config = parse_config(f.read(), path)
    except OSError as e:
        print(f"{PROG}: cannot read {path}: {e.strerror}", file=err)
        return None
    except ConfigError as e:
        print(render_error(str(e)), file=err)
        return None
    for text in config.warnings + unserved_notes(path, config.original):
        print(f"warning: {text}", file=err)
    return config


def run_config_check(invocation: ConfigCheckInvocation, out: TextIO, err: TextIO) -> ExitCode:
    """Validate a config file the way the supervisor would, without applying anything."""
    config = _read_config(invocation.path, err)
    if config is None:
        return ExitCode.ERROR_RESPONSE
    dialect = " (JSON5, the original's format)" if config.dialect is ConfigDialect.JSON5 else ""
    print(f"{invocation.path}: OK, {len(config.rules)} rules{dialect}", file=out)
    return ExitCode.OK


def run_config_load(invocation: ConfigLoadInvocation, out: TextIO, err: TextIO) -> ExitCode:
    """Send the rules of a config file (read here, as the original's client does) in a LoadConfig."""
    config = _read_config(invocation.path, err)
    if config is None:
        return ExitCode.ERROR_RESPONSE
    found = OriginalConfig(config.rules, config.original, config.warnings)
    request = LoadConfig(ConfigDocument(found), invocation.replace)
    return run(replace(invocation.target, request=request), out, err)


def settled_rules(socket_path: str, timeout_s: float, grace_s: float | None = None) -> Sequence[RuleView]:
    """ListRules, asked again for up to `grace_s` (PENDING_GRACE_S) while a rule is pending: a rule set being
    applied is normal for a moment; a rule that stays pending is what doctor reports."""
    deadline = time.monotonic() + (PENDING_GRACE_S if grace_s is None else grace_s)
    while True:
        rules = ask(socket_path, Query.LIST_RULES, Rules, timeout_s).rules
        if not any(v.state is RuleState.PENDING for v in rules) or time.monotonic() >= deadline:
            return rules
        time.sleep(0.25)


def run_doctor(invocation: DoctorInvocation, out: TextIO) -> ExitCode:
    """Ask for the rules and workers (if the supervisor answers), read the host, report; 1 if anything is wrong."""
    rules: Sequence[RuleView] | None = None
    workers: Sequence[WorkerInfo] | None = None
    kernel: KernelStatus | None = None
    config: ConfigView | None = None
    problem: str | None = None
    try:
        rules = settled_rules(invocation.socket_path, invocation.timeout_s)
        workers = ask(invocation.socket_path, Query.LIST_WORKERS, Workers, invocation.timeout_s).workers
        kernel = ask_kernel_status(invocation.socket_path, invocation.timeout_s)
        config = ask_config(invocation.socket_path, invocation.timeout_s)
    except ErrorAnswer as e:
        problem = f"the supervisor answered: {e.text}"
    except McrError as e:
        problem = str(e)
    known = rules or ()
    facts = collect_host_facts(
        interfaces_of(known), offloads_of=inputs_of(known), control_socket=Path(invocation.socket_path)
    )
    findings = diagnose(facts, rules, workers, supervisor_error=problem, kernel=kernel, config=config)
    if invocation.json_output:
        print(json.dumps(findings_json(findings), indent=2, ensure_ascii=False), file=out)
    else:
        console_for(out).print(render_findings(findings))
    return ExitCode.ERROR_RESPONSE if has_problems(findings) else ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        command = parse_command(sys.argv[1:] if argv is None else argv, os.environ)
    except SystemExit as e:  # argparse: --help/--version (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else ExitCode.USAGE
    match command:
        case Invocation():
            return run(command, sys.stdout, sys.stderr)
        case TopInvocation():
            return run_top(command, sys.stdout, sys.stderr, sys.stdin)
        case DoctorInvocation():
            return run_doctor(command, sys.stdout)
        case ConfigCheckInvocation():
            return run_config_check(command, sys.stdout, sys.stderr)
        case ConfigLoadInvocation():
            return run_config_load(command, sys.stdout, sys.stderr)
        case _:
            assert_never(command)


if __name__ == "__main__":
    sys.exit(main())
