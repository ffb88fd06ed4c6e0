"""Measure what a supervisor restart costs the traffic: a steady numbered flow through the relay while the
supervisor is stopped or killed and started again with its --state-file; the sink counts lost and duplicated.

`Service` is one relay instance across restarts (same control socket, state file and options, as systemd
would start it again); `measure` runs the flow around an `event` on it and returns the sink's counts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .netns import Chain
from .relay import Supervisor, start_generator, start_sink

IN_GROUP, IN_PORT = "239.1.1.1", 5001
# The steady flow's rate: 2,000 pps by default; MCR_HITLESS_RATE=N runs the same events at N pps (a benchmark
# at half the lossless rate: docs/benchmarks.md, "Restarts").
RATE = int(os.environ.get("MCR_HITLESS_RATE", "2000"))
OUT_GROUP, OUT_PORT = "239.2.2.2", 6001


@contextmanager
def bpffs(where: Path) -> Iterator[Path]:
    """A bpf file system of our own at `where` (in the host's mount namespace, so pins outlive the
    `ip netns exec` that runs a supervisor), unmounted afterwards with whatever is still pinned in it."""
    where.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(where)], check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False, capture_output=True)


@dataclass
class Service:
    """One relay instance: every start uses the same control socket, state file and options."""

    chain: Chain
    engine: str
    num_workers: int = 2
    extra: Sequence[str] = ()
    pin_dir: Path | None = None  # --bpf-pin-dir
    env: dict[str, str] = field(default_factory=dict)
    sup: Supervisor | None = None
    starts: int = 0
    state_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.state_file = self.chain.lab.workdir / "rules.json"

    def start(self) -> Supervisor:
        previous = self.sup
        argv = ["--engine", self.engine, "--state-file", str(self.state_file), *self.extra]
        if self.pin_dir is not None:
            argv += ["--bpf-pin-dir", str(self.pin_dir)]
        self.sup = Supervisor.start(
            self.chain.lab,
            self.chain.relay,
            num_workers=self.num_workers,
            extra=argv,
            socket_path=previous.socket_path if previous is not None else None,
            env=self.env,
        )
        self.starts += 1
        return self.sup

    @property
    def current(self) -> Supervisor:
        assert self.sup is not None, "the service was never started"
        return self.sup

    def kill(self, signum: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        """Send `signum` to the supervisor and wait for it to exit; its exit status."""
        proc = self.current.proc
        proc.signal(signum)
        return proc.wait(timeout)

    def restart(self, signum: int = signal.SIGKILL) -> Supervisor:
        self.kill(signum)
        return self.start()

    def log(self) -> str:
        """The current supervisor's stderr (its log)."""
        return self.current.proc.err()


@dataclass(frozen=True)
class Outcome:
    sent: int
    received: int
    lost: int
    duplicated: int
    corrupted: int

    @property
    def clean(self) -> bool:
        return (self.received, self.lost, self.duplicated, self.corrupted) == (self.sent, 0, 0, 0)


def add_flow(service: Service, rule_id: str = "flow") -> str:
    return service.current.add_rule(
        rule_id=rule_id, group=IN_GROUP, port=IN_PORT, outputs=[f"{OUT_GROUP}:{OUT_PORT}:{service.chain.relay_out}"]
    )


def measure(
    service: Service,
    event: Callable[[Service], object],
    *,
    rate: int = RATE,
    seconds: float = 6.0,
    event_at: float = 2.0,
    size: int = 200,
    sink_duration: float | None = None,
) -> Outcome:
    """Send `rate` pps for `seconds` through the running service, run `event` `event_at` s in; the sink's counts."""
    chain = service.chain
    count = int(rate * seconds)
    duration = seconds + 30 if sink_duration is None else sink_duration
    sink = start_sink(chain.lab, chain.sink, [(OUT_GROUP, OUT_PORT)], expect=count, duration=duration)
    gen = start_generator(chain, IN_GROUP, IN_PORT, rate=rate, size=size, count=count)
    time.sleep(event_at)
    event(service)
    sent = gen.json(timeout=seconds + 30)
    report = sink.report(timeout=seconds + 30)
    assert sent["sent"] == count and sent["errors"] == 0, sent
    return Outcome(count, report["received"], report["lost"], report["duplicated"], report["corrupted"])
