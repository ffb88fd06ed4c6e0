"""`python -m mcr COMMAND ...`: supervisor, worker, control, generate, sink, demo."""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    command = argv[0] if argv else ""
    if command == "worker":  # the supervisor's re-exec: import only what a worker needs, start fast
        from mcr.worker.main import main as worker

        return worker(argv[1:])
    if command in ("control", "control_client", "ctl"):
        from mcr.cli.control_client import main as ctl

        return ctl(argv[1:])
    if command in ("generate", "traffic_generator", "gen"):
        from mcr.traffic.generator import main as gen

        return gen(argv[1:])
    if command in ("sink", "traffic_sink"):
        from mcr.traffic.sink import main as sink

        return sink(argv[1:])
    if command == "demo":
        from mcr.demo import main as demo

        return demo(argv[1:])
    from mcr.supervisor.cli import main as daemon

    return daemon(argv)


if __name__ == "__main__":
    sys.exit(main())
