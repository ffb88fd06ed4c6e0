"""Summaries, ratios, the Markdown table and the plots, from the list of steps (pure except the writers).

`python3 bench/report.py bench/results/latest.json` re-renders latest.md and the PNGs from a results file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Step = dict[str, Any]

LOSSLESS_PCT = 0.1
MEASURED = ("ladder", "max", "refine", "overload")
DOCS_BEGIN = "<!-- bench:results:begin -->"
DOCS_END = "<!-- bench:results:end -->"


def _lossless(s: Step) -> bool:
    if "error" in s or not s.get("delivered") or s.get("loss_pct") is None:
        return False
    return bool(s["loss_pct"] < LOSSLESS_PCT)


def _measured(steps: Iterable[Step], path: str, size: int, outputs: int) -> list[Step]:
    return [
        s
        for s in steps
        if s["path"] == path
        and s["size"] == size
        and s["outputs"] == outputs
        and s["label"] in MEASURED
        and "error" not in s
    ]


def _lat(s: Step | None) -> dict[str, Any] | None:
    if s is None:
        return None
    lat = s.get("latency_us") or {}
    return {"p50": lat.get("p50"), "p99": lat.get("p99"), "at_offered_pps": round(s["offered_pps"])}


def summarize(
    steps: Sequence[Step], path: str, size: int, outputs: int = 1, latency_rate: int = 10_000
) -> dict[str, Any]:
    mine = _measured(steps, path, size, outputs)
    out: dict[str, Any] = {"path": path, "size": size, "outputs": outputs, "steps": len(mine)}
    if not mine:
        return out
    good = [s for s in mine if _lossless(s)]
    best = max(good, key=lambda s: s["offered_pps"]) if good else None
    top = max(mine, key=lambda s: s["delivered_pps"])
    out["sender_max_pps"] = round(max(s["offered_pps"] for s in mine))
    out["lossless_pps"] = round(best["offered_pps"]) if best else 0
    out["lossless_output_pps"] = round(best["offered_pps"] * outputs) if best else 0
    out["max_delivered_pps"] = round(top["delivered_pps"])
    out["max_delivered_at_offered_pps"] = round(top["offered_pps"])
    out["max_delivered_loss_pct"] = top["loss_pct"]
    ref = best or top
    out["cpu_at"] = "lossless" if best else "max_delivered"
    for key in ("cpu_us_per_pkt", "proc_cpu_s_per_mpkt", "relay_cpu_busy_us_per_pkt", "relay_cpu_util_pct"):
        out[key] = ref.get(key)
    lat_ref = [s for s in mine if s["label"] == "ladder" and s["target_pps"] == latency_rate]
    out["latency_ref_rate"] = _lat(lat_ref[0] if lat_ref else None)
    out["latency_lossless"] = _lat(best)
    if best is not None and outputs == 1:
        over = [s for s in mine if s["label"] == "overload"]
        if not over:
            beyond = [s for s in mine if s["offered_pps"] > best["offered_pps"] * 1.05]
            over = [max(beyond, key=lambda s: s["offered_pps"])] if beyond else []
        if over:
            o = over[-1]
            out["overload"] = {
                "offered_pps": round(o["offered_pps"]),
                "factor": round(o["offered_pps"] / best["offered_pps"], 2),
                "delivered_pps": round(o["delivered_pps"]),
                "delivered_pct": round(100 * o["delivered"] / o["expected"], 1) if o["expected"] else None,
            }
    out["corrupted"] = sum(int(s.get("corrupted", 0)) for s in mine)
    out["foreign_cpu_s_max"] = max(float(s["cpu"]["foreign_proc_s"]) for s in mine)
    return out


def ratios(summary: Sequence[dict[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    def get(path: str, size: int, key: str) -> float | None:
        for row in summary:
            if row["path"] == path and row["size"] == size and row.get(key):
                return float(row[key])
        return None

    out: dict[str, Any] = {}
    for size in sizes:
        r: dict[str, float | None] = {}
        mcr1 = get("mcr1", size, "lossless_pps")
        for other in ("socat", "nft", "smcroute", "ceiling"):
            o = get(other, size, "lossless_pps")
            r[f"mcr1_lossless_over_{other}"] = round(mcr1 / o, 2) if mcr1 and o else None
        m2 = get("mcr2", size, "lossless_pps")
        r["mcr2_lossless_over_mcr1"] = round(m2 / mcr1, 2) if m2 and mcr1 else None
        cpu1 = get("mcr1", size, "cpu_us_per_pkt")
        for other in ("socat", "nft", "smcroute"):
            o = get(other, size, "cpu_us_per_pkt")
            r[f"mcr1_cpu_over_{other}"] = round(cpu1 / o, 2) if cpu1 and o else None
        out[str(size)] = r
    return out


# --------------------------------------------------------------------------------------------- Markdown


def _n(v: Any, digits: int = 0) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float) and digits:
        return f"{v:,.{digits}f}"
    if isinstance(v, (int, float)):
        return f"{round(v):,}"
    return str(v)


def _latcell(lat: dict[str, Any] | None) -> str:
    if not lat or lat.get("p50") is None:
        return "–"
    return f"{lat['p50']:,.0f} / {lat['p99']:,.0f}"


def markdown(results: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    m = results["machine"]
    opts = results["options"]
    labels = {k: v["label"] for k, v in results["paths"].items()}
    lines = [
        f"# MCR benchmark — {results['started_utc'][:16].replace('T', ' ')} UTC",
        "",
        f"Machine: **{m['cpu_model']}**, {m['cpus']} CPUs, kernel {m['kernel']}, Python {m['python']}; "
        f"socat {m['tools'].get('socat')}, nftables {m['tools'].get('nftables')}, "
        f"smcroute {m['tools'].get('smcroute')}; "
        f"MCR at `{m['mcr_commit']}`{' (src modified)' if m.get('mcr_src_dirty') else ''}.",
        "",
        f"Run: `{results['command']}` — {opts['step_seconds']} s per step, sizes {opts['sizes']}, "
        f"took {results['duration_s'] / 60:.1f} min; load average at start {' '.join(m['loadavg_start'])}"
        f"{'; **incomplete: ' + results['incomplete'] + '**' if results.get('incomplete') else ''}.",
        "",
        "Sender and sink on CPU 0, relay on CPU 1; *lossless* = highest offered rate with < 0.1 % loss; "
        "CPU figures are taken at that step (µs per delivered packet: relay process + CPU 1 softirq; "
        "CPU 1 busy = everything CPU 1 did); latency is arrival − send time from the payload stamps, "
        f"p50 / p99 in µs, at {opts['latency_rate']:,} pps offered and at the lossless rate.",
        "",
    ]
    for size in opts["sizes"]:
        lines += [
            f"## {size}-byte payloads",
            "",
            "| path | lossless pps | max delivered pps (loss) | at 2× lossless: offered → delivered | "
            "CPU µs/pkt | proc CPU s/Mpkt | CPU 1 busy µs/pkt | CPU 1 util | "
            f"latency @{opts['latency_rate'] // 1000}k | latency @lossless |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for row in results["summary"]:
            if row["size"] != size or row["outputs"] != 1 or "lossless_pps" not in row:
                continue
            ov = row.get("overload")
            ovcell = f"{_n(ov['offered_pps'])} ({ov['factor']:.1f}×) → {ov['delivered_pct']:.0f} %" if ov else "–"
            lines.append(
                f"| {labels.get(row['path'], row['path'])} | **{_n(row['lossless_pps'])}** | "
                f"{_n(row['max_delivered_pps'])} ({_n(row['max_delivered_loss_pct'], 2)} %) | {ovcell} | "
                f"{_n(row['cpu_us_per_pkt'], 2)} | {_n(row['proc_cpu_s_per_mpkt'], 2)} | "
                f"{_n(row['relay_cpu_busy_us_per_pkt'], 2)} | {_n(row['relay_cpu_util_pct'], 1)} % | "
                f"{_latcell(row['latency_ref_rate'])} | {_latcell(row['latency_lossless'])} |"
            )
        if plots and str(size) in plots:
            lines += ["", f"![delivered vs offered, {size}-byte payloads]({plots[str(size)]})"]
        lines.append("")
    rat = results.get("ratios", {})
    if rat:
        lines += [
            "## Ratios (lossless rate; CPU per packet)",
            "",
            "| size | MCR-1 ÷ socat | MCR-1 ÷ nft | MCR-1 ÷ smcroute | MCR-1 ÷ rig ceiling | MCR-2 ÷ MCR-1 | "
            "CPU/pkt MCR-1 ÷ socat | CPU/pkt MCR-1 ÷ nft |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for size, r in rat.items():
            lines.append(
                f"| {size} | {_n(r['mcr1_lossless_over_socat'], 2)} | {_n(r['mcr1_lossless_over_nft'], 2)} | "
                f"{_n(r['mcr1_lossless_over_smcroute'], 2)} | {_n(r['mcr1_lossless_over_ceiling'], 2)} | "
                f"{_n(r['mcr2_lossless_over_mcr1'], 2)} | {_n(r['mcr1_cpu_over_socat'], 2)} | "
                f"{_n(r['mcr1_cpu_over_nft'], 2)} |"
            )
        lines.append("")
    if results.get("fanout"):
        lines += [
            "## Fan-out (one input, N outputs on rout, one sink process receiving every stream)",
            "",
            "| path | size | outputs | lossless input pps | = output pps | CPU µs/output pkt | CPU 1 util | "
            "latency @lossless |",
            "|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for row in results["fanout"]:
            lines.append(
                f"| {labels.get(row['path'], row['path'])} | {row['size']} | 1:{row['outputs']} | "
                f"**{_n(row.get('lossless_pps'))}** | {_n(row.get('lossless_output_pps'))} | "
                f"{_n(row.get('cpu_us_per_pkt'), 2)} | {_n(row.get('relay_cpu_util_pct'), 1)} % | "
                f"{_latcell(row.get('latency_lossless'))} |"
            )
        lines.append("")
    if results.get("soak"):
        lines += [
            "## Soak (MCR, 1 worker, half its lossless rate)",
            "",
            "| size | seconds | offered pps | sent | delivered | lost | corrupted | duplicated | CPU µs/pkt | "
            "latency p50 / p99 | result |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for s in results["soak"]:
            if "error" in s:
                lines.append(f"| {s['size']} | {s['seconds']} | – | – | – | – | – | – | – | – | error: {s['error']} |")
                continue
            lines.append(
                f"| {s['size']} | {s['seconds']} | {_n(s['offered_pps'])} | {_n(s['sent'])} | {_n(s['delivered'])} | "
                f"{s['lost']} | {s['corrupted']} | {s['duplicated']} | {_n(s['cpu_us_per_pkt'], 2)} | "
                f"{_latcell(s['latency_us'])} | {'**pass**' if s['pass'] else '**FAIL**'} |"
            )
        lines.append("")
    lines += ["## Paths", ""]
    for key, p in results["paths"].items():
        lines.append(f"- **{p['label']}** (`{key}`): {p['notes']}")
    lines.append("")
    if results.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in results["errors"]] + [""]
    lines += _step_details(results)
    return "\n".join(lines)


def _step_details(results: dict[str, Any]) -> list[str]:
    lines = [
        "<details><summary>Every step</summary>",
        "",
        "| path | size | out | label | target | offered | delivered pps | loss % | CPU µs/pkt | CPU 1 util | "
        "p50 / p99 µs | relay counters | CPU 1 backlog drops | sink rcvbuf drops | other procs CPU s |",
        "|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|",
    ]
    for s in results["steps"]:
        if "error" in s:
            lines.append(
                f"| {s['path']} | {s['size']} | {s['outputs']} | {s['label']} | {_n(s['target_pps'])} | "
                f"error: {s['error'][:80]} |||||||||"
            )
            continue
        rc = ", ".join(f"{k} {v:,}" for k, v in s["relay_counters"].items() if v)
        drops = s["softnet"]["dropped"]
        lines.append(
            f"| {s['path']} | {s['size']} | {s['outputs']} | {s['label']} | {_n(s['target_pps'])} | "
            f"{_n(s['offered_pps'])} | {_n(s['delivered_pps'])} | {s['loss_pct']:.3f} | "
            f"{_n(s['cpu_us_per_pkt'], 2)} | {_n(s['relay_cpu_util_pct'], 1)} % | {_latcell(s['latency_us'])} | "
            f"{rc or '–'} | {_n(drops[1] if len(drops) > 1 else None)} | {_n(s['sink_udp'].get('RcvbufErrors'))} | "
            f"{s['cpu']['foreign_proc_s']:.2f} |"
        )
    lines += ["", "</details>", ""]
    return lines


# ------------------------------------------------------------------------------------------------ plots


def plot(results: dict[str, Any], size: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {k: v["label"] for k, v in results["paths"].items()}
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    top = 0.0
    for key in results["paths"]:
        pts = sorted((s["offered_pps"], s["delivered_pps"]) for s in _measured(results["steps"], key, size, 1))
        if not pts:
            continue
        xs = [p[0] / 1000 for p in pts]
        ys = [p[1] / 1000 for p in pts]
        top = max(top, *xs, *ys)
        style = "--" if key == "ceiling" else "-"
        ax.plot(xs, ys, style, marker="o", markersize=4, label=labels.get(key, key))
    ax.plot([0, top * 1.05], [0, top * 1.05], ":", color="grey", linewidth=1, label="delivered = offered")
    ax.set_xlabel("offered (kpps, the sender's achieved rate)")
    ax.set_ylabel("delivered (kpps, intact and unique at the sink)")
    m = results["machine"]
    ax.set_title(
        f"MCR benchmark, {size}-byte UDP payloads — {m['cpu_model']}, {m['cpus']} CPUs, "
        f"kernel {m['kernel']}\n{results['started_utc'][:10]}",
        fontsize=9,
    )
    ax.set_xlim(0, top * 1.05 if top else 1)
    ax.set_ylim(0, top * 1.05 if top else 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def write_all(results: dict[str, Any], outdir: Path, name: str) -> dict[str, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    plots: dict[str, str] = {}
    for size in results["options"]["sizes"]:
        png = outdir / f"{name}-{size}.png"
        try:
            plot(results, size, png)
        except ImportError as exc:  # matplotlib is the `bench` extra; the numbers do not need it
            results.setdefault("errors", []).append(f"no plot: {exc} (pip install -e '.[bench]')")
            continue
        plots[str(size)] = png.name
        written[f"png{size}"] = png
    js = outdir / f"{name}.json"
    js.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    written["json"] = js
    md = outdir / f"{name}.md"
    md.write_text(markdown(results, plots))
    written["md"] = md
    return written


def update_docs(docs: Path, results: dict[str, Any], rel_results: str, name: str) -> bool:
    """Replace the block between the markers in docs/benchmarks.md with the latest tables and plots."""
    if not docs.exists():
        return False
    text = docs.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        return False
    plots = {str(s): f"{rel_results}/{name}-{s}.png" for s in results["options"]["sizes"]}
    body = markdown(results, plots)
    body = body.replace("\n# MCR benchmark", "\n### MCR benchmark").replace("\n## ", "\n#### ")
    if body.startswith("# "):
        body = "###" + body[1:]
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    docs.write_text(f"{head}{DOCS_BEGIN}\n\n{body}\n{DOCS_END}{tail}")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: report.py RESULTS.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    results = json.loads(path.read_text())
    name = path.stem
    for f, p in write_all(results, path.parent, name).items():
        print(f"{f}: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
