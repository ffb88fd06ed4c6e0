from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcr.lab import Lab
from tests.e2e.harness import Relay

_counter = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.netns)
            # a process killed on purpose leaves pipes that the garbage collector closes later, in
            # whichever test runs then: not that test's fault
            item.add_marker(pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"))


@pytest.fixture(scope="session")
def root_with_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests build network namespaces: run them as root")
    if shutil.which("ip") is None or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode:
        pytest.skip("iproute2 with network namespace support is required")


def _make_lab(mtu: int) -> Lab:
    return Lab(prefix=f"mt{os.getpid() % 100000}x{next(_counter)}", mtu=mtu)


@pytest.fixture
def lab(root_with_netns: None) -> Iterator[Lab]:
    with _make_lab(1500) as built:
        yield built


@pytest.fixture
def jumbo_lab(root_with_netns: None) -> Iterator[Lab]:
    with _make_lab(9000) as built:
        yield built


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path


@pytest.fixture
def public_workdir() -> Iterator[Path]:
    """A work directory every user can traverse (pytest's own tmp root is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="mcr-e2e-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["userspace", "kernel"])
def engine(request: pytest.FixtureRequest) -> str:
    """For tests that must hold for both engines: the relay fixture then runs with each in turn."""
    return str(request.param)


@pytest.fixture
def relay(lab: Lab, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Relay]:
    marker = request.node.get_closest_marker("workers")
    engine = request.getfixturevalue("engine") if "engine" in request.fixturenames else "userspace"
    r = Relay(lab, workdir, num_workers=marker.args[0] if marker else 1, extra=["--engine", engine]).start()
    yield r
    r.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(r.log()[-5000:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
