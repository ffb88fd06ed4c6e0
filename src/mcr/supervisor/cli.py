"""`multicast_relay` (alias `mcrd`): the supervisor's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from mcr import __version__
from mcr.linux.cpus import online_cpus
from mcr.logs import configure_logging
from mcr.model.config import Config, Settings, parse_config, unserved_notes
from mcr.model.cpus import absent_cpus_problem, cpu_list_text, parse_cpu_list
from mcr.model.errors import ConfigError, ValidationError
from mcr.model.levels import Severity
from mcr.model.rules import DEFAULT_MULTICAST_TTL, Limits
from mcr.protocol.control import DEFAULT_SOCKET, SOCKET_ENV
from mcr.supervisor.cleanup import cleanup, supervisor_running
from mcr.supervisor.main import SupervisorConfig, default_pin_dir, run_supervisor

log = logging.getLogger("mcr.supervisor")


def default_socket_path() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


MULTICAST_TTL_ENV = "MCR_MULTICAST_TTL"  # the original's variable for the same setting


def _ttl(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if not 1 <= value <= 255:
        raise argparse.ArgumentTypeError(f"{value} is out of range; valid TTL range is 1-255")
    return value


def env_multicast_ttl() -> int | None:
    """MCR_MULTICAST_TTL, as the original reads it; a bad value is a ValidationError naming the variable."""
    text = os.environ.get(MULTICAST_TTL_ENV)
    if not text:
        return None
    try:
        return _ttl(text)
    except argparse.ArgumentTypeError as e:
        raise ValidationError(f"{MULTICAST_TTL_ENV}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multicast_relay", description="MCR multicast relay daemon")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(  # the original's place for it: `mcrd --log-json supervisor`
        "--log-json", dest="log_json_first", action="store_true", help="structured JSON log lines"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sup = sub.add_parser("supervisor", help="run the privileged supervisor (as root)")
    sup.add_argument(
        "--config",
        default=None,
        help="config file: ours (TOML, settings and static rules) or the original's (JSON5, by its .json5 "
        "extension or its content); SIGHUP reloads it",
    )
    sup.add_argument("--state-file", default=None, help="where runtime rules are saved; restored at start")
    sup.add_argument("--control-socket-path", default=None, help=f"control socket (default {DEFAULT_SOCKET})")
    sup.add_argument("--control-group", default=None, help="group allowed to use the control socket")
    sup.add_argument(
        "--read-only-group",
        default=None,
        help="group allowed only the read-only requests (list, stats, ping, version, list-workers, ...)",
    )
    sup.add_argument("--user", default=None, help="user the workers run as (default nobody)")
    sup.add_argument("--group", default=None, help="group the workers run as (default nogroup)")
    sup.add_argument("--num-workers", type=_positive, default=None, help="data-plane workers (default: CPU count)")
    sup.add_argument(
        "--worker-cpus",
        type=_cpu_list,
        default=None,
        metavar="LIST",
        help="pin worker k to the k-th of these CPUs (like 2-3 or 1,3; round robin); default: not pinned",
    )
    sup.add_argument("--log-level", default=None, help="global log level (default info)")
    sup.add_argument("--log-json", action="store_true", default=None, help="structured JSON log lines")
    sup.add_argument("--metrics-addr", default=None, help="serve Prometheus metrics on HOST:PORT")
    sup.add_argument(
        "--engine",
        choices=("auto", "userspace", "kernel"),
        default=None,
        help="auto (default): the eBPF kernel engine where it loads and can serve the rule, userspace otherwise",
    )
    sup.add_argument(
        "--multicast-ttl",
        type=_ttl,
        default=None,
        metavar="N",
        help=f"TTL of multicast outputs that set none (default {DEFAULT_MULTICAST_TTL}; ${MULTICAST_TTL_ENV}); "
        "unicast outputs that set none keep the kernel's default",
    )
    defaults = Limits()
    for f in fields(Limits):
        sup.add_argument(
            "--" + f.name.replace("_", "-"),
            type=_positive,
            default=None,
            metavar="N",
            help=f"limit (default {getattr(defaults, f.name)}; [limits] {f.name} in the config file)",
        )
    sup.add_argument(
        "--no-seccomp",
        dest="seccomp",
        action="store_false",
        help="run the workers without their seccomp system call filter (they stay unprivileged and chrooted)",
    )
    sup.add_argument(
        "--keep-data-plane",
        action="store_true",
        default=None,
        help="on SIGTERM/SIGINT leave the data plane relaying for the next supervisor to take over (a restart)",
    )
    sup.add_argument(
        "--worker-orphan-timeout",
        type=float,
        default=None,
        metavar="S",
        help="how long workers relay on without a supervisor, waiting to be taken over (default 30; 0: they "
        "exit with it)",
    )
    sup.add_argument(
        "--bpf-pin-dir",
        default=None,
        help="where the kernel engine pins its program, maps and links (default /sys/fs/bpf/mcr/<instance>)",
    )
    # Accepted for compatibility with the original MCR's scripts; they have no effect here.
    sup.add_argument("--interface", default=None, help=argparse.SUPPRESS)
    sup.add_argument("--relay-command-socket-path", default=None, help=argparse.SUPPRESS)
    clean = sub.add_parser(
        "cleanup",
        help="end a data plane left running without a supervisor (orphaned workers, pinned kernel engine)",
    )
    clean.add_argument("--control-socket-path", default=None, help=f"control socket (default {DEFAULT_SOCKET})")
    clean.add_argument("--bpf-pin-dir", default=None, help="the kernel engine's pins (default: the instance's)")
    sub.add_parser("worker", help="internal: a data-plane worker started by the supervisor", add_help=False)
    return parser


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    return parse_config(text, path)


def merge_limits(args: argparse.Namespace, file: Limits) -> Limits:
    """Each limit: the flag, else the config file's [limits], else the default."""
    flags = {f.name: getattr(args, f.name) for f in fields(Limits) if getattr(args, f.name) is not None}
    return replace(file, **flags)


def report_config_notes(config: Config) -> None:
    """Log what a config file has that is ignored (unknown keys) or not served (protocol sections)."""
    for text in config.warnings:
        log.warning("%s", text)
    for text in unserved_notes(config.path, config.original):
        log.warning("%s", text)


def merge_settings(args: argparse.Namespace, static: Config | None) -> SupervisorConfig:
    """Command-line flags win over the config file, which wins over the defaults."""
    file = static.settings if static else Settings()

    def pick(flag: object, setting: object, default: object) -> Any:
        return flag if flag is not None else setting if setting is not None else default

    level = pick(args.log_level, file.log_level, "info")
    Severity.parse(level)  # fail early on a bad level
    state = pick(args.state_file, file.state_file, None)
    return SupervisorConfig(
        control_socket_path=Path(pick(args.control_socket_path, file.control_socket_path, default_socket_path())),
        control_group=pick(args.control_group, file.control_group, None),
        user=pick(args.user, file.user, "nobody"),
        group=pick(args.group, file.group, None),
        num_workers=pick(args.num_workers, file.num_workers, os.cpu_count() or 1),
        log_level=level,
        log_json=bool(pick(True if args.log_json_first else args.log_json, file.log_json, False)),
        limits=merge_limits(args, static.limits if static else Limits()),
        read_only_group=pick(args.read_only_group, file.read_only_group, None),
        state_file=Path(state) if state else None,
        config=static,
        metrics_addr=pick(args.metrics_addr, file.metrics_addr, None),
        engine=pick(args.engine, file.engine, "auto"),
        seccomp=args.seccomp,
        multicast_ttl=pick(
            args.multicast_ttl, file.multicast_ttl, pick(env_multicast_ttl(), None, DEFAULT_MULTICAST_TTL)
        ),
        keep_data_plane=bool(pick(args.keep_data_plane, file.keep_data_plane, False)),
        bpf_pin_dir=Path(args.bpf_pin_dir) if args.bpf_pin_dir else None,
        kernel_variant=_test_variant(),
        worker_orphan_timeout=_non_negative(pick(args.worker_orphan_timeout, None, 30.0)),
        worker_cpus=_online(pick(args.worker_cpus, file.worker_cpus, ())),
    )


def _cpu_list(text: str) -> tuple[int, ...]:
    try:
        return parse_cpu_list(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _online(cpus: tuple[int, ...]) -> tuple[int, ...]:
    """The worker CPUs, when every one is online here (a pinned worker on none would never start)."""
    problem = absent_cpus_problem(cpus, online_cpus())
    if problem:
        raise ConfigError(f"worker CPUs {cpu_list_text(cpus)}: {problem}")
    return cpus


def _non_negative(value: float) -> float:
    if not value >= 0:
        raise ConfigError(f"--worker-orphan-timeout must be 0 or more seconds, not {value}")
    return float(value)


def _test_variant() -> int:
    """MCR_TEST_KERNEL_VARIANT: build a kernel program that differs from this version's by one dead
    instruction, so that tests can start an "upgraded" supervisor."""
    try:
        return int(os.environ.get("MCR_TEST_KERNEL_VARIANT", "0"))
    except ValueError:
        return 0


def run_cleanup(args: argparse.Namespace) -> int:
    configure_logging(logging.INFO, False, prefix="cleanup")
    sock = Path(args.control_socket_path or default_socket_path())
    if supervisor_running(sock):
        print(f"multicast_relay: a supervisor answers on {sock}: the data plane is its own", file=sys.stderr)
        return 1
    found = sorted(sock.parent.glob(f"{sock.name}.worker*"))
    pin_dir = Path(args.bpf_pin_dir) if args.bpf_pin_dir else default_pin_dir(sock)
    for line in cleanup(sock, found, pin_dir).lines():
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        from mcr.worker.main import main as worker_main

        return worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "cleanup":
        return run_cleanup(args)
    try:
        static = load_config(args.config) if args.config else None
        config = merge_settings(args, static)
    except (ConfigError, ValidationError) as e:
        print(f"multicast_relay: {e}", file=sys.stderr)
        return 2
    configure_logging(Severity.parse(config.log_level).python_level, config.log_json, prefix="supervisor")
    if args.interface or args.relay_command_socket_path:
        log.warning("--interface and --relay-command-socket-path are ignored: each rule names its input interface")
    if static is not None:
        report_config_notes(static)
    try:
        asyncio.run(run_supervisor(config))
    except ConfigError as e:
        print(f"multicast_relay: {e}", file=sys.stderr)
        return 1
    except PermissionError as e:
        print(
            f"multicast_relay: {e} (the supervisor needs root or CAP_NET_RAW/CAP_NET_ADMIN/CAP_SETUID)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
