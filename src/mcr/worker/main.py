"""Entry point of a data-plane worker process.

The supervisor starts it as root with two inherited descriptors (the command channel and the stats
pipe). Before it touches any packet it contains itself (`mcr.linux.containment.contain`): an empty
read-only root, --uid/--gid with no capabilities and no_new_privs, and a seccomp allow-list (unless
--no-seccomp); only then does it receive the capture sockets, over the channel, with SCM_RIGHTS. Every
module the worker needs is imported before, since none of the interpreter's files are visible after.
"""

from __future__ import annotations

import argparse
import array  # noqa: F401 - socket.recv_fds imports it lazily, after the privilege drop
import encodings.idna  # noqa: F401 - same reason: host names in connect()
import logging
import os
import signal
import socket
import sys
from types import FrameType

from mcr import __version__
from mcr.linux.containment import contain
from mcr.logs import configure_logging
from mcr.protocol.worker import worker_version
from mcr.worker import loop as _loop

log = logging.getLogger("mcr.worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multicast_relay worker", description="MCR data-plane worker (internal)")
    parser.add_argument("--worker-id", type=int, required=True)
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-json", action="store_true")
    parser.add_argument("--no-seccomp", action="store_true")
    parser.add_argument("--orphan-timeout", type=float, default=0.0)
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_json, prefix=f"worker-{args.worker_id}")
    try:
        channel_fd = int(os.environ["MCR_CHANNEL_FD"])
        stats_fd = int(os.environ["MCR_STATS_PIPE_FD"])
    except (KeyError, ValueError):
        print(
            "multicast_relay worker: started without MCR_CHANNEL_FD/MCR_STATS_PIPE_FD; it is internal",
            file=sys.stderr,
        )
        return 2
    handover_fd = int(os.environ.get("MCR_HANDOVER_FD", "-1"))
    supervisor_uid = os.getuid()  # who may take this worker over (besides root)
    parent = os.getppid()
    # Without an orphan timeout the worker ends with its supervisor (parent death signal); with one it relays on
    # when the supervisor goes away, for at most that long, until a new supervisor takes it over.
    death_signal = 0 if args.orphan_timeout > 0 else signal.SIGTERM
    try:
        contained = contain(args.uid, args.gid, seccomp=not args.no_seccomp, death_signal=death_signal)
    except OSError as e:
        print(f"multicast_relay worker {args.worker_id}: cannot contain the worker: {e}", file=sys.stderr)
        return 1
    if os.getppid() != parent:
        return 0  # the supervisor died while we were starting
    os.set_blocking(stats_fd, False)
    channel = socket.socket(fileno=channel_fd)
    plane = _loop.DataPlane(args.worker_id, channel, stats_fd)
    if handover_fd >= 0:
        plane.enable_handover(
            socket.socket(fileno=handover_fd),
            args.orphan_timeout,
            supervisor_uid,
            worker_version(__version__, os.environ),
        )

    def stop(_signum: int, _frame: FrameType | None) -> None:
        plane.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log.info("worker %d running: %s", args.worker_id, contained.describe())
    plane.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
