"""`multicast_relay cleanup`: end a data plane that a supervisor left behind (a crash, or a stop with
--keep-data-plane) without starting a new supervisor.

Each orphaned worker is taken over through its handover socket, exactly as a starting supervisor would, and
told to shut down; the kernel engine's pins are removed, so its program leaves the interfaces at once.
Refused while a supervisor answers on the control socket: the data plane is then its own.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from mcr.kernel.engine import remove_pins
from mcr.model.errors import ProtocolError, WorkerError
from mcr.protocol.worker import Ready, Shutdown, decode_reply
from mcr.supervisor.workers import WorkerHandle, take_over_worker

log = logging.getLogger("mcr.supervisor")

ANSWER_S = 2.0
EXIT_S = 5.0


@dataclass
class CleanupReport:
    workers: list[int] = field(default_factory=list)  # pids told to shut down
    stale: list[str] = field(default_factory=list)  # handover sockets nobody answered on (removed)
    pins: list[str] = field(default_factory=list)  # pins removed

    def lines(self) -> list[str]:
        out = [f"worker pid {pid} stopped" for pid in self.workers]
        out += [f"stale handover socket {path} removed" for path in self.stale]
        out += [f"pin {name} removed" for name in self.pins]
        return out or ["nothing to clean up"]


def supervisor_running(control_socket: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(control_socket))
        except OSError:
            return False
    return True


def stop_orphan(path: Path) -> int | None:
    """Take over the worker waiting at `path` and shut it down; its pid, or None when nobody answered."""
    handle = WorkerHandle(-1)
    if not take_over_worker(handle, path, time.monotonic(), ANSWER_S):
        return None
    assert handle.channel is not None
    pid = None
    try:
        if select.select([handle.channel], [], [], ANSWER_S)[0]:
            reply = decode_reply(handle.channel.recv(65536))
            if isinstance(reply, Ready):
                pid = reply.pid
                handle.send(Shutdown())
                deadline = time.monotonic() + EXIT_S  # the channel ends when the worker has exited
                while (left := deadline - time.monotonic()) > 0:
                    if select.select([handle.channel], [], [], left)[0] and not handle.channel.recv(65536):
                        break
    except (OSError, ProtocolError, WorkerError) as e:
        log.warning("worker at %s: %s", path, e)
    finally:
        handle.close_io()
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    return pid


def cleanup(control_socket: Path, handovers: list[Path], pin_dir: Path | None) -> CleanupReport:
    report = CleanupReport()
    for path in handovers:
        pid = stop_orphan(path)
        if pid is None:
            report.stale.append(str(path))
        else:
            report.workers.append(pid)
    if pin_dir is not None and pin_dir.is_dir():
        report.pins = [str(pin_dir / name) for name in remove_pins(pin_dir)]
    return report
