"""The supervisor's flags that reach the workers."""

from __future__ import annotations

from mcr.supervisor.cli import build_parser, merge_settings


def test_seccomp_is_on_by_default_and_no_seccomp_turns_it_off() -> None:
    parser = build_parser()
    assert merge_settings(parser.parse_args(["supervisor"]), None).seccomp is True
    assert merge_settings(parser.parse_args(["supervisor", "--no-seccomp"]), None).seccomp is False
