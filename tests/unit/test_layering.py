"""Imports run one way: the pure layers never reach for I/O, and worker and supervisor meet only in protocol."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "mcr"
PURE = (
    "model",
    "protocol",
    "packet",
    "membership",
    "routing",
    "linux/seccomp.py",
    "supervisor/core.py",
    "supervisor/access.py",
    "traffic/payload.py",
    "traffic/pacing.py",
    "traffic/tally.py",
)
IO_MODULES = {"socket", "subprocess", "asyncio", "pyroute2", "select", "mmap", "ctypes", "fcntl", "signal"}
IO_PACKAGES = (
    "mcr.linux",
    "mcr.netlink",
    "mcr.supervisor.main",
    "mcr.supervisor.control",
    "mcr.supervisor.workers",
    "mcr.worker.loop",
    "mcr.worker.egress",
    "mcr.cli",
    "mcr.lab",
    "mcr.demo",
)


# the address conversions of the socket module: computations that touch no socket (address_text uses them)
PURE_SOCKET_NAMES = {"inet_ntoa", "inet_ntop", "inet_aton", "inet_pton", "AF_INET", "AF_INET6"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "socket" and {alias.name for alias in node.names} <= PURE_SOCKET_NAMES:
                continue
            found.add(node.module)
    return found


def pure_files() -> list[Path]:
    files: list[Path] = []
    for entry in PURE:
        p = SRC / entry
        files.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p] if p.exists() else [])
    return files


@pytest.mark.parametrize("path", pure_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_pure_modules_do_no_io(path: Path) -> None:
    bad = {m for m in imports(path) if m.split(".")[0] in IO_MODULES or m.startswith(IO_PACKAGES)}
    assert not bad, f"{path.name} imports I/O modules {sorted(bad)}"


@pytest.mark.parametrize(("side", "other"), [("worker", "mcr.supervisor"), ("supervisor", "mcr.worker")])
def test_worker_and_supervisor_meet_only_in_protocol(side: str, other: str) -> None:
    for path in (SRC / side).rglob("*.py"):
        bad = {m for m in imports(path) if m.startswith(other)}
        if side == "supervisor" and path.name == "cli.py":
            bad.discard("mcr.worker.main")  # the console script dispatches `multicast_relay worker`
        assert not bad, f"{path} imports {sorted(bad)}"
