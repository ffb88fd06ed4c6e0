"""The supervisor's flags that reach the workers."""

from __future__ import annotations

import pytest

from mcr.model.config import parse_config
from mcr.model.errors import ValidationError
from mcr.supervisor.cli import MULTICAST_TTL_ENV, build_parser, merge_settings


def test_seccomp_is_on_by_default_and_no_seccomp_turns_it_off() -> None:
    parser = build_parser()
    assert merge_settings(parser.parse_args(["supervisor"]), None).seccomp is True
    assert merge_settings(parser.parse_args(["supervisor", "--no-seccomp"]), None).seccomp is False


def test_multicast_ttl_flag_then_file_then_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    file = parse_config("[supervisor]\nmulticast_ttl = 6\n", "mcr.toml")
    monkeypatch.delenv(MULTICAST_TTL_ENV, raising=False)
    assert merge_settings(parser.parse_args(["supervisor"]), None).multicast_ttl == 1
    monkeypatch.setenv(MULTICAST_TTL_ENV, "9")
    assert merge_settings(parser.parse_args(["supervisor"]), None).multicast_ttl == 9
    assert merge_settings(parser.parse_args(["supervisor"]), file).multicast_ttl == 6
    assert merge_settings(parser.parse_args(["supervisor", "--multicast-ttl", "3"]), file).multicast_ttl == 3
    monkeypatch.setenv(MULTICAST_TTL_ENV, "300")
    with pytest.raises(ValidationError, match="MCR_MULTICAST_TTL: 300 is out of range; valid TTL range is 1-255"):
        merge_settings(parser.parse_args(["supervisor"]), None)


def test_bad_multicast_ttl_flag_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["supervisor", "--multicast-ttl", "0"])
    assert "0 is out of range; valid TTL range is 1-255" in capsys.readouterr().err


def test_the_originals_command_line_is_accepted() -> None:
    """`mcrd --log-json supervisor --config F.json5 --interface eth0 --num-workers 2` (the original's spelling)."""
    parser = build_parser()
    args = parser.parse_args(
        ["--log-json", "supervisor", "--interface", "eth0", "--num-workers", "2", "--control-socket-path", "/tmp/s"]
    )
    config = merge_settings(args, None)
    assert (config.log_json, config.num_workers, str(config.control_socket_path)) == (True, 2, "/tmp/s")
    assert merge_settings(parser.parse_args(["supervisor", "--log-json"]), None).log_json is True
    assert merge_settings(parser.parse_args(["supervisor"]), None).log_json is False


@pytest.mark.parametrize(
    ("rules", "frozen_at", "expected"),
    [
        (0, 0, (False, 0)),
        (999, 0, (False, 0)),
        (1000, 0, (True, 1000)),  # grown by FREEZE_STEP: what survived the collection is frozen
        (10_000, 9_500, (False, 9_500)),
        (200, 5_000, (False, 200)),  # shrank: growth counts from the new size
        (1_200, 200, (True, 1_200)),
    ],
)
def test_freeze_after_the_table_grew(rules: int, frozen_at: int, expected: tuple[bool, int]) -> None:
    from mcr.supervisor.main import freeze_due

    assert freeze_due(rules, frozen_at) == expected


def test_the_supervisor_leaves_full_collections_to_its_periodic_pass() -> None:
    import gc

    from mcr.supervisor.main import OLDEST_EVERY, collector_settings

    before = gc.get_threshold()
    try:
        collector_settings()
        assert gc.get_threshold() == (before[0], before[1], OLDEST_EVERY)
        assert gc.get_freeze_count() > 0, "what is alive at the start is frozen out of the passes"
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_worker_cpus_flag_then_file_then_not_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    import mcr.supervisor.cli as cli

    monkeypatch.setattr(cli, "online_cpus", lambda: (0, 1, 2, 3))
    static = parse_config('[supervisor]\nworker_cpus = "2-3"\n', "f")
    assert static.settings.worker_cpus == (2, 3)
    assert parse_config("[supervisor]\nworker_cpus = [3, 1]\n", "f").settings.worker_cpus == (3, 1)
    assert merge_settings(build_parser().parse_args(["supervisor"]), static).worker_cpus == (2, 3)
    flag = build_parser().parse_args(["supervisor", "--worker-cpus", "1"])
    assert merge_settings(flag, static).worker_cpus == (1,)
    assert merge_settings(build_parser().parse_args(["supervisor"]), None).worker_cpus == ()


def test_worker_cpus_that_are_not_online_or_not_a_list_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mcr.supervisor.cli as cli
    from mcr.model.errors import ConfigError

    monkeypatch.setattr(cli, "online_cpus", lambda: (0, 1))
    args = build_parser().parse_args(["supervisor", "--worker-cpus", "1-3"])
    with pytest.raises(ConfigError, match=r"worker CPUs 1-3: CPU 2, 3 are not online on this host \(online: 0,1\)"):
        merge_settings(args, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["supervisor", "--worker-cpus", "2-1"])
    assert "'2-1' is not a CPU range" in capsys.readouterr().err
    for text, error in [
        ("worker_cpus = 2", "'worker_cpus' must be a CPU list like \"1-3\" or an array like [1, 2]"),
        ("worker_cpus = 'x'", "'worker_cpus': 'x' is not a CPU number or range (write CPUs as 0,2 or 1-3)"),
        ("worker_cpus = [1, 1]", "'worker_cpus': CPU 1 is named twice"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse_config(f"[supervisor]\n{text}\n", "mcr.toml")
        assert str(e.value) == f"mcr.toml: [supervisor]: {error}"
