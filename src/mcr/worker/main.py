"""Entry point of a data-plane worker process.

The supervisor starts it as root with two inherited descriptors (the command channel and the stats
pipe). Before it touches any packet it drops to --uid/--gid with no capabilities and no_new_privs;
only then does it receive the capture sockets, over the channel, with SCM_RIGHTS. Every module the
worker needs is imported before the drop, since the interpreter's files may not be readable by
the unprivileged user.
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

from mcr.linux.privileges import drop_privileges, set_parent_death_signal
from mcr.logs import configure_logging
from mcr.worker import loop as _loop

log = logging.getLogger("mcr.worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multicast_relay worker", description="MCR data-plane worker (internal)")
    parser.add_argument("--worker-id", type=int, required=True)
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-json", action="store_true")
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
    parent = os.getppid()
    creds = drop_privileges(args.uid, args.gid)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:
        return 0  # the supervisor died while we were starting
    os.set_blocking(stats_fd, False)
    channel = socket.socket(fileno=channel_fd)
    plane = _loop.DataPlane(args.worker_id, channel, stats_fd)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        plane.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log.info("worker %d running as uid %d with no capabilities", args.worker_id, creds.uid)
    plane.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
