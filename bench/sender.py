#!/usr/bin/env python3
"""The raw sender alone: the rate `mcr generate --raw` offers in each --raw-mode, size and IP family.

    python3 bench/sender.py [--seconds 5] [--sizes 64,1400] [--modes ring,mmsg] [--families 4,6] [--repeat 2]

It builds the benchmark's namespaces (bench/netlab.py), makes `snk1` drop every frame at ingress (an
nftables netdev chain with policy drop: a cheap receiver, so the number is the sender's), and runs the generator on
`src1` with --rate 0 for --seconds per case, pinned to the sender's CPU. Each line: packets the generator
reports sent, its rate, the frames snk1 counted (rx_packets, which must match), and the generator's CPU time
per packet with the rate that makes on a whole CPU (on a busy machine the wall-clock rate is what is left
of the CPU, the CPU cost per packet is the comparable figure). The namespaces are deleted
by exact name at the end, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from netlab import DIRECT_SRC_IP, DIRECT_SRC_IP6, SENDER_CPU, NetLab  # noqa: E402
from paths import IN_GROUP, IN_GROUP6  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--sizes", default="64,1400")
    p.add_argument("--modes", default="ring,mmsg")
    p.add_argument("--families", default="4,6")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/sender.py builds network namespaces: run it as root", file=sys.stderr)
        return 2
    os.environ["PYTHONPATH"] = str(HERE.parent / "src")  # this tree's mcr, whatever is installed
    with NetLab(prefix=f"mcrs{os.getpid() % 100000}") as lab:
        chain = "{ type filter hook ingress device snk1 priority 0; policy drop; }"
        lab.run(lab.sink, "nft", f"add table netdev bench; add chain netdev bench dropall {chain}")
        print("| family | size | mode | sent | pps | snk1 rx | CPU µs/pkt | pps per CPU |")
        print("|---|---|---|---|---|---|---|---|")
        for family in a.families.split(","):
            source, group = (DIRECT_SRC_IP, IN_GROUP) if family == "4" else (DIRECT_SRC_IP6, IN_GROUP6)
            for size in a.sizes.split(","):
                for mode in a.modes.split(","):
                    for _ in range(a.repeat):
                        argv_gen = [sys.executable, "-m", "mcr", "generate", "--group", group, "--port", "5001"]
                        argv_gen += ["--interface", source, "--rate", "0", "--size", size, "--duration"]
                        argv_gen += [str(a.seconds), "--batch", str(a.batch), "--raw", "src1", "--raw-mode", mode]
                        rx0 = int(lab.read(lab.sink, "/sys/class/net/snk1/statistics/rx_packets"))
                        pin = ["taskset", "-c", str(SENDER_CPU)]
                        done = lab.run(lab.src, *pin, *argv_gen, "--quiet", "--json", timeout=a.seconds + 30)
                        rx = int(lab.read(lab.sink, "/sys/class/net/snk1/statistics/rx_packets")) - rx0
                        g = json.loads(done.stdout)
                        cpu = g["cpu_s"] / g["sent"] * 1e6 if g["sent"] else 0.0
                        capacity = 1e6 / cpu if cpu else 0.0
                        print(
                            f"| IPv{family} | {size} | {mode} | {g['sent']} | {g['pps']:.0f} | {rx} | {cpu:.2f} "
                            f"| {capacity:.0f} |",
                            flush=True,
                        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
