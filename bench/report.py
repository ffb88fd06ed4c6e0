"""Summaries, ratios, the Markdown table and the plots, from the list of steps (pure except the writers).

`python3 bench/report.py bench/results/latest.json` re-renders latest.md and the PNGs from a results file.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Step = dict[str, Any]

LOSSLESS_PCT = 0.1
MEASURED = ("ladder", "max", "refine", "overload")
DOCS_BEGIN = "<!-- bench:results:begin -->"
DOCS_END = "<!-- bench:results:end -->"


_SENDERS = {
    "raw": "prebuilt frames on an AF_PACKET socket, UDP checksum 0 over IPv4",
    "ring": "prebuilt frames in a PACKET_TX_RING, UDP checksum 0 over IPv4",
    "udp": "sendmmsg on a UDP socket",
}


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
    # no step above the best one lost anything: the sender (the rig), not the path, set the limit
    out["lossless_is_lower_bound"] = best is not None and not any(
        not _lossless(s) and s["offered_pps"] > best["offered_pps"] for s in mine
    )
    # the highest rung of the ladder below its first lossy one: a single lucky step above rungs that lost does
    # not raise it (the lossless rate above takes any step), so two paths compare on what each held throughout
    ladder = sorted((s for s in mine if s["label"] == "ladder"), key=lambda s: s["target_pps"] or float("inf"))
    held = 0.0
    for s in ladder:
        if not _lossless(s):
            break
        held = max(held, s["offered_pps"])
    out["lossless_below_first_loss_pps"] = round(held)
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
        beyond = [s for s in mine if s["offered_pps"] >= best["offered_pps"] * 1.05]
        marked = [s for s in beyond if s["label"] == "overload"]
        pick = marked[-1] if marked else (max(beyond, key=lambda s: s["offered_pps"]) if beyond else None)
        if pick is not None:
            out["overload"] = {
                "offered_pps": round(pick["offered_pps"]),
                "factor": round(pick["offered_pps"] / best["offered_pps"], 2),
                "delivered_pps": round(pick["delivered_pps"]),
                "delivered_pct": round(100 * pick["delivered"] / pick["expected"], 1) if pick["expected"] else None,
                "of_lossless_pct": round(100 * pick["delivered_pps"] / best["delivered_pps"], 1),
            }
    out["corrupted"] = sum(int(s.get("corrupted", 0)) for s in mine)
    out["foreign_cpu_s_max"] = max(float(s["cpu"]["foreign_proc_s"]) for s in mine)
    return out


def ratios(summary: Sequence[dict[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    """MCR-1's lossless rate and CPU per packet against the other paths; `bounds` marks ratios that are only
    bounds because a lossless rate was the sender's limit (>= for MCR-1, <= for the other path)."""

    def row(path: str, size: int) -> dict[str, Any]:
        return next((r for r in summary if r["path"] == path and r["size"] == size), {})

    out: dict[str, Any] = {}
    for size in sizes:
        r: dict[str, Any] = {}
        bounds: dict[str, str] = {}
        m1 = row("mcr1", size)
        for other in ("socat", "nft", "smcroute", "ceiling", "mcr2"):
            o = row(other, size)
            num, den = (o, m1) if other == "mcr2" else (m1, o)
            name = "mcr2_lossless_over_mcr1" if other == "mcr2" else f"mcr1_lossless_over_{other}"
            if num.get("lossless_pps") and den.get("lossless_pps"):
                r[name] = round(num["lossless_pps"] / den["lossless_pps"], 2)
                lower, upper = num.get("lossless_is_lower_bound"), den.get("lossless_is_lower_bound")
                if lower and not upper:
                    bounds[name] = "≥"
                elif upper and not lower:
                    bounds[name] = "≤"
                elif lower and upper:
                    bounds[name] = "~"
            else:
                r[name] = None
        for other in ("socat", "nft", "smcroute"):
            o = row(other, size)
            a, b = m1.get("cpu_us_per_pkt"), o.get("cpu_us_per_pkt")
            r[f"mcr1_cpu_over_{other}"] = round(a / b, 2) if a and b else None
        mk, nft = row("mcrk", size), row("nft", size)
        if mk.get("lossless_pps") and nft.get("lossless_pps"):
            r["mcrk_lossless_over_nft"] = round(mk["lossless_pps"] / nft["lossless_pps"], 2)
            lower, upper = mk.get("lossless_is_lower_bound"), nft.get("lossless_is_lower_bound")
            if lower or upper:
                bounds["mcrk_lossless_over_nft"] = "~" if lower and upper else ("≥" if lower else "≤")
        else:
            r["mcrk_lossless_over_nft"] = None
        a, b = mk.get("cpu_us_per_pkt"), nft.get("cpu_us_per_pkt")
        r["mcrk_cpu_over_nft"] = round(a / b, 2) if a and b else None
        r["bounds"] = bounds
        r["flows"] = many_flows(summary, size)
        out[str(size)] = r
    return out


def many_flows(summary: Sequence[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """Each many-flows path (`mcr1x1000`, `mcrkx1000`) against its single-flow path of the same run: the
    aggregate lossless rate over all the flows ÷ the single flow's (issue 18 asks for at least 0.9)."""
    rows = []
    for many in summary:
        m = re.fullmatch(r"(mcr(?:\d+|k))x(\d+)", many["path"])
        if many["size"] != size or many["outputs"] != 1 or not m:
            continue
        one = next((r for r in summary if r["path"] == m.group(1) and r["size"] == size and r["outputs"] == 1), {})
        row: dict[str, Any] = {"path": many["path"], "single": m.group(1), "flows": int(m.group(2))}
        for name, r in (("many", many), ("one", one)):
            row[f"{name}_lossless_pps"] = r.get("lossless_pps")
            row[f"{name}_lower_bound"] = bool(r.get("lossless_is_lower_bound"))
            row[f"{name}_cpu_us_per_pkt"] = r.get("cpu_us_per_pkt")
        if row["many_lossless_pps"] and row["one_lossless_pps"]:
            row["ratio"] = round(row["many_lossless_pps"] / row["one_lossless_pps"], 2)
        held_many, held_one = many.get("lossless_below_first_loss_pps"), one.get("lossless_below_first_loss_pps")
        if held_many and held_one:
            row["ratio_below_first_loss"] = round(held_many / held_one, 2)
        rows.append(row)
    return rows


def _n(v: Any, digits: int = 0) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float) and digits:
        return f"{v:,.{digits}f}"
    if isinstance(v, (int, float)):
        return f"{round(v):,}"
    return str(v)


def _profile_lines(profiles: list[dict[str, Any]]) -> list[str]:
    """Where the relay CPU's time went in each profile step: share of the sampled CPU time and microseconds per
    relayed packet (the step's CPU cost per packet split by the relay's shares, so the relay's rows add up to it)."""
    if not profiles:
        return []
    lines = ["## Where the relay's CPU goes (perf on the relay CPU)", ""]
    for prof in profiles:
        head = f"### {prof['path']}, {prof['size']} B"
        if "error" in prof:
            lines += [head, "", f"error: {prof['error']}", ""]
            continue
        step = prof["step"]
        pps = step.get("delivered_pps") or 0
        lines += [
            f"{head} at {_n(prof['rate'])} pps offered (delivered {_n(pps)} pps, loss "
            f"{_n(step.get('loss_pct'), 3)} %, CPU {_n(step.get('cpu_us_per_pkt'), 2)} µs/pkt)",
            "",
            "| part | share of the CPU | µs per packet | heaviest symbols |",
            "|---|--:|--:|---|",
        ]
        # perf samples only busy time on this VM (no idle samples), so the relay's parts are scaled to the step's
        # own CPU cost per packet (relay processes + the relay CPU's softirq) rather than to wall-clock time
        others = ("idle", "other processes (not the relay's)")
        relay_pct = sum(v for k, v in prof["shares_pct"].items() if k not in others)
        cost = step.get("cpu_us_per_pkt")
        for part, pct in prof["shares_pct"].items():
            per = cost * pct / relay_pct if cost and relay_pct and part not in others else None
            syms = ", ".join(f"{sym} {p:.1f}" for p, sym in prof.get("parts_top", {}).get(part, [])[:3])
            lines.append(f"| {part} | {pct:.1f} % | {_n(per, 2)} | {syms} |")
        top = ", ".join(f"{sym} {pct:.1f} %" for pct, _comm, sym in prof["top"][:8])
        lines += ["", f"Top symbols: {top}", ""]
    return lines


def _footcell(soak: dict[str, Any], key: str) -> str:
    """`start → end` of one footprint total (RSS or descriptors) of a soak row; results before it had none."""
    foot = soak.get("footprint")
    if not foot:
        return "–"
    peak = max((x[key] for x in foot.get("samples", [])), default=None)
    during = f" (max {_n(peak)} during)" if peak is not None else ""
    return f"{_n(foot['start'][key])} → {_n(foot['end'][key])}{during}"


def _latcell(lat: dict[str, Any] | None) -> str:
    if not lat or lat.get("p50") is None:
        return "–"
    return f"{lat['p50']:,.0f} / {lat['p99']:,.0f}"


def _added(row: dict[str, Any]) -> str:
    added = row.get("latency_added_p50_us")
    if added is None or row["path"] == "ceiling":
        return ""
    return f" (p50 {'+' if added >= 0 else '−'}{abs(added):,.0f})"


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
        f"Sender ({_SENDERS[opts.get('sender', 'udp')]}) and sink on CPU 0, relay on CPU 1; "
        "*lossless* = highest offered rate with < 0.1 % loss; "
        "CPU figures are taken at that step (µs per delivered packet: relay process + CPU 1 softirq; "
        "CPU 1 busy = everything CPU 1 did); latency is arrival − send time from the payload stamps, "
        f"p50 / p99 in µs, at {opts['latency_rate']:,} pps offered (in brackets: p50 added over the rig ceiling's) "
        "and at the lossless rate (where queueing dominates).",
        "",
    ]
    d = results.get("disturbance")
    if d and d.get("steps"):
        lines += [
            f"Other load on the machine: during the {d['steps']} steps other processes used "
            f"{d['foreign_cpu_s_total']:,.0f} CPU-seconds in {d['wall_s_total']:,.0f} s "
            f"({d['foreign_cpu_s_total'] / max(d['wall_s_total'], 1):.2f} CPUs on average); "
            f"{d['foreign_over_quarter_cpu']} steps ran beside more than 0.25 CPU of it, "
            f"{d['started_busy']} started while it was above 0.15 CPU after waiting up to "
            f"{opts.get('quiet_wait_s', 0):.0f} s. The benchmark runs at nice {opts.get('nice', 0)}.",
            "",
        ]
    for size in opts["sizes"]:
        lines += [
            f"## {size}-byte payloads",
            "",
            "| path | lossless pps | max delivered pps (loss) | overload: offered → delivered | "
            "CPU µs/pkt | proc CPU s/Mpkt | CPU 1 busy µs/pkt | CPU 1 util | "
            f"latency @{opts['latency_rate'] // 1000}k | latency @lossless |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for row in results["summary"]:
            if row["size"] != size or row["outputs"] != 1 or "lossless_pps" not in row:
                continue
            ov = row.get("overload")
            ovcell = (
                f"{_n(ov['offered_pps'])} ({ov['factor']:.1f}×) → {_n(ov['delivered_pps'])}"
                + (f" = {ov['of_lossless_pct']:.0f} % of lossless" if "of_lossless_pct" in ov else "")
                if ov
                else "–"
            )
            lines.append(
                f"| {labels.get(row['path'], row['path'])} | "
                f"**{'≥' if row.get('lossless_is_lower_bound') else ''}{_n(row['lossless_pps'])}** | "
                f"{_n(row['max_delivered_pps'])} ({_n(row['max_delivered_loss_pct'], 2)} %) | {ovcell} | "
                f"{_n(row['cpu_us_per_pkt'], 2)} | {_n(row['proc_cpu_s_per_mpkt'], 2)} | "
                f"{_n(row['relay_cpu_busy_us_per_pkt'], 2)} | {_n(row['relay_cpu_util_pct'], 1)} % | "
                f"{_latcell(row['latency_ref_rate'])}{_added(row)} | {_latcell(row['latency_lossless'])} |"
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
            "MCR-kernel ÷ nft | CPU/pkt MCR-1 ÷ socat | CPU/pkt MCR-1 ÷ nft | CPU/pkt MCR-kernel ÷ nft |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for size, r in rat.items():
            b = r.get("bounds", {})

            def cell(key: str, r: dict[str, Any] = r, b: dict[str, str] = b) -> str:
                return f"{b.get(key, '')}{_n(r.get(key), 2)}"

            lines.append(
                f"| {size} | {cell('mcr1_lossless_over_socat')} | {cell('mcr1_lossless_over_nft')} | "
                f"{cell('mcr1_lossless_over_smcroute')} | {cell('mcr1_lossless_over_ceiling')} | "
                f"{cell('mcr2_lossless_over_mcr1')} | {cell('mcrk_lossless_over_nft')} | "
                f"{cell('mcr1_cpu_over_socat')} | {cell('mcr1_cpu_over_nft')} | {cell('mcrk_cpu_over_nft')} |"
            )
        lines += [
            "",
            "≥ / ≤: a lossless rate in the ratio was the sender's limit, not the path's (no loss up to the "
            "highest rate the sender reached), so the ratio is only a bound; ~: both were. CPU/pkt below 1 means "
            "MCR-1 needs less CPU per packet.",
            "",
        ]
        flows = [(size, f) for size, r in rat.items() for f in r.get("flows", [])]
        if flows:
            lines += [
                "## Many flows (aggregate lossless rate over N flows ÷ the single flow's, same run)",
                "",
                "| path | size | flows | lossless pps, N flows | lossless pps, 1 flow | ratio | ratio below the first "
                "loss | CPU µs/pkt N flows | CPU µs/pkt 1 flow |",
                "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
            ]
            for size, f in flows:
                many = f"{'≥' if f['many_lower_bound'] else ''}{_n(f['many_lossless_pps'])}"
                one = f"{'≥' if f['one_lower_bound'] else ''}{_n(f['one_lossless_pps'])}"
                bound = "~" if f["many_lower_bound"] or f["one_lower_bound"] else ""
                lines.append(
                    f"| {labels.get(f['path'], f['path'])} | {size} | {f['flows']:,} | **{many}** | {one} | "
                    f"{bound}{_n(f.get('ratio'), 2)} | {_n(f.get('ratio_below_first_loss'), 2)} | "
                    f"{_n(f['many_cpu_us_per_pkt'], 2)} | "
                    f"{_n(f['one_cpu_us_per_pkt'], 2)} |"
                )
            lines += [
                "",
                "≥: no loss up to the highest rate the sender reached, so the rate is the sender's and a ratio with "
                "it (~) is only a bound. The ratio below the first loss compares each path's highest ladder rung "
                "below its first lossy one, so that one lucky step above rungs that lost decides neither side.",
                "",
            ]
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
                f"**{'≥' if row.get('lossless_is_lower_bound') else ''}{_n(row.get('lossless_pps'))}** | "
                f"{_n(row.get('lossless_output_pps'))} | "
                f"{_n(row.get('cpu_us_per_pkt'), 2)} | {_n(row.get('relay_cpu_util_pct'), 1)} % | "
                f"{_latcell(row.get('latency_lossless'))} |"
            )
        lines.append("")
    if results.get("soak"):
        lines += [
            "## Soak (MCR, 1 worker, a fraction of its lossless rate)",
            "",
            "| size | seconds | load | offered pps | sent | delivered | lost | corrupted | duplicated | CPU µs/pkt | "
            "latency p50 / p99 | RSS kB start → end | fds start → end | result |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for s in results["soak"]:
            if "error" in s:
                lines.append(f"| {s['size']} | {s['seconds']} |" + " – |" * 11 + f" error: {s['error']} |")
                continue
            lines.append(
                f"| {s['size']} | {s['seconds']} | {s.get('load', 0.5):.0%} | {_n(s['offered_pps'])} | "
                f"{_n(s['sent'])} | {_n(s['delivered'])} | "
                f"{s['lost']} | {s['corrupted']} | {s['duplicated']} | {_n(s['cpu_us_per_pkt'], 2)} | "
                f"{_latcell(s['latency_us'])} | {_footcell(s, 'rss_kb')} | {_footcell(s, 'fds')} | "
                f"{'**pass**' if s['pass'] else '**FAIL**'} |"
            )
        lines.append("")
    lines += _profile_lines(results.get("profiles", []))
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
    fig, (ax, lx) = plt.subplots(2, 1, figsize=(9, 8), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    top = 0.0
    for key in results["paths"]:
        steps = sorted(_measured(results["steps"], key, size, 1), key=lambda s: s["offered_pps"])
        if not steps:
            continue
        xs = [s["offered_pps"] / 1000 for s in steps]
        ys = [s["delivered_pps"] / 1000 for s in steps]
        loss = [max(float(s["loss_pct"]), 0.0) for s in steps]
        top = max(top, *xs, *ys)
        style = "--" if key == "ceiling" else "-"
        (line,) = ax.plot(xs, ys, style, marker="o", markersize=4, label=labels.get(key, key))
        lx.plot(xs, loss, style, marker="o", markersize=3, color=line.get_color())
    ax.plot([0, top * 1.05], [0, top * 1.05], ":", color="grey", linewidth=1, label="delivered = offered")
    ax.set_ylabel("delivered (kpps, intact and unique at the sink)")
    m = results["machine"]
    ax.set_title(
        f"MCR benchmark, {size}-byte UDP payloads — {m['cpu_model']}, {m['cpus']} CPUs, "
        f"kernel {m['kernel']}, {results['started_utc'][:10]}\n"
        "sender + sink on CPU 0, relay on CPU 1; each point is one step",
        fontsize=9,
    )
    ax.set_xlim(0, top * 1.05 if top else 1)
    ax.set_ylim(0, top * 1.05 if top else 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    lx.axhline(LOSSLESS_PCT, color="grey", linestyle=":", linewidth=1)
    lx.set_yscale("symlog", linthresh=0.1)
    lx.set_ylim(0, 100)
    lx.set_ylabel("loss %")
    lx.set_xlabel("offered (kpps, the sender's achieved rate)")
    lx.grid(True, alpha=0.3)
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
            note = f"no plot: {exc} (pip install -e '.[bench]')"
            errors = results.setdefault("errors", [])
            if note not in errors:  # a results file rendered again says it once
                errors.append(note)
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
    import argparse

    p = argparse.ArgumentParser(prog="bench/report.py", description="Re-render a results file.")
    p.add_argument("results", type=Path, help="e.g. bench/results/latest.json")
    p.add_argument("--docs", action="store_true", help="also refresh the results block in docs/benchmarks.md")
    args = p.parse_args(argv)
    results = json.loads(args.results.read_text())
    name = args.results.stem
    for kind, path in write_all(results, args.results.parent, name).items():
        print(f"{kind}: {path}")
    if args.docs:
        docs = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
        print(
            f"docs: {docs} {'refreshed' if update_docs(docs, results, '../bench/results', name) else 'has no markers'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
