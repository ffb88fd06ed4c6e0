"""`make install` / `make uninstall` into a private prefix: what an operator gets, and that removal is exact."""

from __future__ import annotations

import grp
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [
    "multicast_relay",
    "mcrd",
    "control_client",
    "mcrctl",
    "traffic_generator",
    "mcrgen",
    "traffic_sink",
    "mcrsink",
]


def make(target: str, dirs: dict[str, Path], group: str) -> subprocess.CompletedProcess[str]:
    settings = [f"{k}={v}" for k, v in dirs.items()] + [f"MCR_GROUP={group}", f"PYTHON={sys.executable}"]
    return subprocess.run(["make", "-C", str(ROOT), target, *settings], capture_output=True, text=True, timeout=600)


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@pytest.mark.slow
def test_install_then_uninstall_leaves_nothing_behind(tmp_path: Path) -> None:
    dirs = {
        k: tmp_path / v
        for k, v in (("PREFIX", "opt/mcr"), ("BINDIR", "bin"), ("UNITDIR", "unit"), ("CONFDIR", "etc/mcr"))
    }
    group = f"mcrt{os.getpid() % 100000}" if os.geteuid() == 0 else ""  # root-less: no group
    assert not group or not group_exists(group)
    done = make("install", dirs, group)
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        for command in COMMANDS:
            link = dirs["BINDIR"] / command
            assert link.is_symlink() and os.readlink(link) == str(dirs["PREFIX"] / "bin" / command)
        version = subprocess.run([dirs["BINDIR"] / "control_client", "--version"], capture_output=True, text=True)
        assert version.returncode == 0 and version.stdout.startswith("control_client "), version
        where = subprocess.run(
            [dirs["PREFIX"] / "bin" / "python", "-c", "import mcr; print(mcr.__file__)"], capture_output=True, text=True
        )
        assert where.stdout.startswith(str(dirs["PREFIX"])), "installed as a copy, not linked to the checkout"
        unit = (dirs["UNITDIR"] / "mcrd.service").read_text()
        assert f"ExecStart={dirs['PREFIX']}/bin/multicast_relay supervisor" in unit
        assert (dirs["CONFDIR"] / "mcr.toml").read_text() == (ROOT / "packaging" / "mcr.toml").read_text()
        assert not group or group_exists(group)
        again = make("install", dirs, group)
        assert again.returncode != 0 and "already installed" in again.stderr
    finally:
        gone = make("uninstall", dirs, group)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["bin", "etc", "opt", "unit"], left  # the directories it made, now empty
    assert not group or not group_exists(group)


@pytest.mark.slow
def test_uninstall_keeps_a_changed_config_and_a_foreign_command(tmp_path: Path) -> None:
    dirs = {
        k: tmp_path / v for k, v in (("PREFIX", "opt/mcr"), ("BINDIR", "bin"), ("UNITDIR", "unit"), ("CONFDIR", "etc"))
    }
    dirs["BINDIR"].mkdir()
    (dirs["BINDIR"] / "mcrctl").write_text("#!/bin/sh\n")  # someone else's command of that name
    refused = make("install", dirs, "")
    assert refused.returncode != 0 and "bin/mcrctl exists and is not ours" in refused.stderr
    assert not dirs["PREFIX"].exists()
    (dirs["BINDIR"] / "mcrctl").unlink()
    assert make("install", dirs, "").returncode == 0
    (dirs["CONFDIR"] / "mcr.toml").write_text("[supervisor]\nnum_workers = 4\n")
    gone = make("uninstall", dirs, "")
    assert gone.returncode == 0 and "kept" in gone.stdout and "it was changed" in gone.stdout
    assert (dirs["CONFDIR"] / "mcr.toml").exists() and not dirs["PREFIX"].exists()
    assert list(dirs["BINDIR"].iterdir()) == []


VENV_SH = ROOT / "packaging" / "venv.sh"


def test_an_unreachable_package_index_is_one_clear_line(tmp_path: Path) -> None:
    """pip pointed at a closed local port (nothing leaves the host): one line saying what to fix, no traceback."""
    env = {
        "PATH": os.environ["PATH"],
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_CACHE_DIR": "1",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "3",
    }
    argv = [str(VENV_SH), sys.executable, str(tmp_path / "venv"), "pyroute2==0.9.99"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: cannot install MCR's Python dependencies into ") and "index is unreachable" in line


def test_a_missing_python_is_one_clear_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(VENV_SH), "/nonexistent/python3", str(tmp_path / "v"), "."], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr == (
        "error: no Python at '/nonexistent/python3': install python3 (3.11 or newer) "
        "or run make PYTHON=/path/to/python3\n"
    )
