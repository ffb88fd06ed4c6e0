"""`python -m mcr demo`: a relay across an unroutable boundary, in throw-away namespaces, with live counters.

source ns (10.200.1.2) --veth--> relay ns [rin 10.200.9.1 | strict rp_filter | rout 10.200.3.1] --veth--> sink ns
The kernel would drop the source's multicast (no route back, rp_filter=1); MCR captures it at layer 2
and republishes it on the other side.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.live import Live
from rich.table import Table

from mcr.cli.control_client import console_for
from mcr.lab import SRC_IP, Lab
from mcr.model.status import FlowStats
from mcr.protocol.control import Stats, decode_response

IN_GROUP, IN_PORT = "239.1.1.1", 5001
OUT_GROUP, OUT_PORT = "239.2.2.2", 6001


def _mcr(*args: str) -> list[str]:
    return [sys.executable, "-m", "mcr", *args]


def _stats_table(flows: tuple[FlowStats, ...], sent_target: int, elapsed: float) -> Table:
    table = Table(title=f"MCR relay — live counters ({elapsed:4.1f} s)")
    for col in ("rule", "input", "packets", "bytes", "pps", "Mbit/s", "outputs (sent/errors)"):
        table.add_column(col, justify="left" if col in ("rule", "input", "outputs (sent/errors)") else "right")
    for flow in flows:
        outs = ", ".join(f"{o.group}:{o.port}@{o.interface} {o.packets_sent}/{o.send_errors}" for o in flow.outputs)
        table.add_row(
            flow.rule_id,
            f"{flow.input_interface} {flow.input_group}:{flow.input_port}",
            f"{flow.packets_relayed}/{sent_target}",
            str(flow.bytes_relayed),
            f"{flow.packets_per_second:,.0f}",
            f"{flow.bits_per_second / 1e6:,.1f}",
            outs,
        )
    return table


def run_demo(rate: int, count: int, size: int, workers: int) -> int:
    console = console_for(sys.stdout)
    if os.geteuid() != 0:
        console.print("[red]the demo builds network namespaces: run it as root[/red]")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="mcr-demo-"))
    sock = str(workdir / "control.sock")
    lab = Lab()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        console.print(f"building namespaces {lab.src}, {lab.relay}, {lab.sink} ...")
        lab.up()
        log = open(workdir / "supervisor.log", "wb")  # noqa: SIM115 - closed with the process below
        sup = subprocess.Popen(
            lab.exec_argv(lab.relay, _mcr("supervisor", "--control-socket-path", sock, "--num-workers", str(workers))),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(sup)
        ctl = _mcr("control", "--socket-path", sock)
        deadline = time.monotonic() + 15
        while subprocess.run([*ctl, "ping"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or sup.poll() is not None:
                console.print((workdir / "supervisor.log").read_text())
                return 1
            time.sleep(0.1)
        add = [
            *ctl,
            "add",
            "--rule-id",
            "demo",
            "--input-interface",
            "rin",
            "--input-group",
            IN_GROUP,
            "--input-port",
            str(IN_PORT),
            "--outputs",
            f"{OUT_GROUP}:{OUT_PORT}:rout",
        ]
        console.print(subprocess.run(add, capture_output=True, text=True, check=True).stdout.strip())
        ready = workdir / "sink.ready"
        sink = subprocess.Popen(
            lab.exec_argv(
                lab.sink,
                _mcr(
                    "sink",
                    "--group",
                    OUT_GROUP,
                    "--port",
                    str(OUT_PORT),
                    "--interface",
                    "snk0",
                    "--expect",
                    str(count),
                    "--idle-timeout",
                    "3",
                    "--ready-file",
                    str(ready),
                    "--json",
                ),
            ),
            stdout=subprocess.PIPE,
        )
        procs.append(sink)
        while not ready.exists() and sink.poll() is None:
            time.sleep(0.05)
        gen = subprocess.Popen(
            lab.exec_argv(
                lab.src,
                _mcr(
                    "generate",
                    "--group",
                    IN_GROUP,
                    "--port",
                    str(IN_PORT),
                    "--interface",
                    SRC_IP,
                    "--rate",
                    str(rate),
                    "--size",
                    str(size),
                    "--count",
                    str(count),
                    "--quiet",
                ),
            ),
        )
        procs.append(gen)
        start = time.monotonic()

        def show(live: Live) -> None:
            out = subprocess.run([*ctl, "--json", "stats"], capture_output=True, text=True)
            response = decode_response(out.stdout.encode()) if out.returncode == 0 else None
            if isinstance(response, Stats):
                live.update(_stats_table(response.flows, count, time.monotonic() - start))

        with Live(console=console, refresh_per_second=4) as live:
            while sink.poll() is None and time.monotonic() - start < count / max(rate, 1) + 20:
                show(live)
                time.sleep(0.5)
            show(live)  # the final counters, once the sink is done
        if not console.is_terminal:
            console.line()  # off a terminal, Live leaves its last frame without a line end
        gen.wait(timeout=10)
        report_text = sink.communicate(timeout=10)[0].decode()
        report = json.loads(report_text)
        totals = report.get("totals", report)
        console.print(
            f"sink: received {totals.get('received')} of {count} sent, lost {totals.get('lost')}, "
            f"duplicated {totals.get('duplicated')}, corrupted {totals.get('corrupted')}"
        )
        ok = totals.get("received") == count and not totals.get("corrupted")
        console.print("[green]relay OK[/green]" if ok else "[yellow]relay finished with loss[/yellow]")
        return 0 if ok else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=6)
                except subprocess.TimeoutExpired:
                    proc.kill()
        lab.down()
        console.print("namespaces removed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mcr demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=20_000, help="packets per second (default 20000)")
    parser.add_argument("--count", type=int, default=100_000, help="packets to send (default 100000)")
    parser.add_argument("--size", type=int, default=1400, help="UDP payload bytes (default 1400)")
    parser.add_argument("--workers", type=int, default=1, help="data-plane workers (default 1)")
    args = parser.parse_args(argv)
    return run_demo(args.rate, args.count, args.size, args.workers)


if __name__ == "__main__":
    sys.exit(main())
