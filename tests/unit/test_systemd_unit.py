"""The systemd unit keeps restarts hitless (docs/operations.md, "Restarts"): checked on the file itself, since
the tests do not run systemd. What each setting does is exercised by tests/e2e/test_hitless.py: a SIGTERM to
the supervisor alone (KillMode=process) with --keep-data-plane, a SIGKILL (Restart=on-failure), SIGHUP."""

from __future__ import annotations

import shlex
from pathlib import Path

from mcr.supervisor.cli import build_parser

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "mcrd.service"


def service_settings() -> dict[str, list[str]]:
    """[Service] key -> values (a key may repeat), with backslash-continued lines joined."""
    text = UNIT.read_text().replace("\\\n", " ")
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value.strip())
    return settings


def test_restart_keeps_the_data_plane() -> None:
    s = service_settings()
    (exec_start,) = s["ExecStart"]
    argv = shlex.split(exec_start)
    assert "--keep-data-plane" in argv, "SIGTERM from systemctl restart must leave the data plane"
    args = build_parser().parse_args(argv[1:])  # the unit's command line is one the supervisor accepts
    assert args.keep_data_plane
    assert s["KillMode"] == ["process"], "systemd must signal the supervisor only, not the workers"
    assert s["RuntimeDirectoryPreserve"] == ["yes"], "the workers' handover sockets live in /run/mcr"
    assert "-/sys/fs/bpf" in s["ReadWritePaths"], "the kernel engine pins under /sys/fs/bpf"
    assert s["Restart"] == ["on-failure"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"], "a reload applies only the difference (SIGHUP)"
