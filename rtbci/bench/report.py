"""The bench's outputs: bench.json, bench.md (tables, ratios vs rtbci) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rtbci.bench.run import STAGES
from rtbci.latency import summary


def stage_summary(stage: dict[str, np.ndarray]) -> dict:
    """``{stage: {"p50", "p99"}}`` in ms, plus the result count."""
    out = {name: {k: summary(v)[k] for k in ("p50", "p99")} for name, v in stage.items()}
    out["n"] = int(len(next(iter(stage.values()))))
    return out


def _fmt(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ratio(row: dict, ref: dict | None, key: str) -> str:
    if ref is None or not row.get("latency_ms") or not ref.get("latency_ms"):
        return "–"
    a, b = row["latency_ms"][key], ref["latency_ms"][key]
    return "–" if a is None or b in (None, 0) else f"{a / b:.2f}×"


def table(doc: dict) -> str:
    """The comparison table: one row per system, ratios of p50/p99 to the rtbci row."""
    ref = next((r for r in doc["rows"] if r["system"] == "rtbci" and r.get("latency_ms")), None)
    lines = ["| system | results/s | p50 / p99 / max (ms) | p50, p99 vs rtbci | CPU | lost |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in doc["rows"] + doc.get("gpu_rows", []):
        if r.get("status"):
            lines.append(f"| {r['system']} | {r['status']} | | | | |")
            continue
        lat = r["latency_ms"]
        lines.append(f"| {r['system']} | {r['results_per_s']:.1f} | {_fmt(lat['p50'])} / "
                     f"{_fmt(lat['p99'])} / {_fmt(lat['max'])} | {_ratio(r, ref, 'p50')}, "
                     f"{_ratio(r, ref, 'p99')} | {r['cpu_percent']:.1f} % | {r['lost']} |")
    return "\n".join(lines)


def stage_table(stages: dict) -> str:
    rows = list(stages)
    lines = ["| stage | " + " | ".join(f"{r} p50 / p99 (ms)" for r in rows) + " |",
             "|---|" + "---:|" * len(rows)]
    for name in STAGES:
        cells = [f"{stages[r][name]['p50']:.3f} / {stages[r][name]['p99']:.3f}" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_tables(sweeps: dict) -> str:
    parts = []
    for sweep, s in sweeps.items():
        parts += [f"### {sweep}", "",
                  "| point | results | p50 / p99 (ms) | end to end − inference p99, first "
                  "decoder (ms) | engine's share p99, all decoders (ms) | process hop p99 "
                  "(ms) | CPU | lost / expected |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for p in s["points"]:
            parts.append(f"| {p['label']} | {p.get('results', '–')} | "
                         f"{_fmt(p['p50_ms'])} / {_fmt(p['p99_ms'])} | "
                         f"{_fmt(p['overhead_p99_ms'])} | {_fmt(p.get('engine_p99_ms'))} | "
                         f"{_fmt(p.get('hop_p99_ms'), 3)} | "
                         f"{p['cpu_percent']:.1f} % | "
                         f"{p['lost']} / {p['expected']} |")
        where = s["saturates_at"]
        parts += ["", f"Loss (> 1 % of results) begins at: **{where}**." if where else
                  "No loss at any point of this sweep.", ""]
    return "\n".join(parts)


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [f"# rtbci bench ({doc['mode']} run, {doc['duration_s']:g} s per row × "
             f"{doc['repeats']} interleaved repeats)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; load average at start "
             f"{m['load_average']}; {m['date']}. Versions: "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".", "",
             "Job: 64 ch @ 1 kHz in 10-sample chunks from one sender process (stamped at "
             "push); log band power, 3 bands × 64 ch, over 500 ms every 50 ms; result out. "
             "Latency = receiver process's receive time − the window's last-sample timestamp. "
             "CPU: the processing process (and its children), one core = 100 %.", "",
             table(doc), "", doc["gpu"], "", "![latency histograms](bench_latency.png)", ""]
    if doc.get("stages_ms"):
        lines += ["## Stage breakdown (rtbci)", "", stage_table(doc["stages_ms"]), "",
                  "![stage breakdown](bench_stages.png)", ""]
    if doc.get("sweeps"):
        lines += ["## Scaling sweeps (rtbci, LSL sink)", "", sweep_tables(doc["sweeps"]),
                  "![sweeps](bench_sweeps.png)", ""]
    return "\n".join(lines)


def write(out: Path, doc: dict, raw: dict[str, np.ndarray], stages: dict) -> None:
    """bench.json, bench.md, bench_latency.png, bench_stages.png, bench_sweeps.png."""
    (out / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(doc))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_histograms(plt, raw, out / "bench_latency.png")
    if stages:
        plot_stages(plt, doc["stages_ms"], out / "bench_stages.png")
    if doc.get("sweeps"):
        plot_sweeps(plt, doc["sweeps"], out / "bench_sweeps.png")


def plot_histograms(plt, raw: dict[str, np.ndarray], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.logspace(-1, 2.5, 90)
    for name, ms in raw.items():
        if ms.size:
            ax.hist(ms, bins=bins, histtype="step", linewidth=1.5,
                    label=f"{name}: p50 {np.percentile(ms, 50):.2f} / p99 "
                          f"{np.percentile(ms, 99):.2f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms): receive − window's last-sample timestamp")
    ax.set_ylabel("results")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_stages(plt, stages: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5), sharey=True)
    for ax, q in zip(axes, ("p50", "p99")):
        rows = list(stages)
        bottom = np.zeros(len(rows))
        for name in STAGES:
            v = np.array([stages[r][name][q] for r in rows])
            ax.bar(rows, v, bottom=bottom, label=name)
            bottom += v
        ax.set_title(f"each stage's {q} (stacked)")
        ax.set_ylabel("ms")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweeps(plt, sweeps: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(sweeps), figsize=(3.2 * len(sweeps), 3.5))
    for ax, (sweep, s) in zip(np.atleast_1d(axes), sweeps.items()):
        labels = [p["label"] for p in s["points"]]
        x = np.arange(len(labels))
        for key in ("p50_ms", "p99_ms"):
            ax.plot(x, [np.nan if p[key] is None else p[key] for p in s["points"]], "o-",
                    label=key[:3])
        for i, p in enumerate(s["points"]):
            if p["lost"]:
                ax.annotate(f"lost {p['lost']}", (i, p["p99_ms"] or 0), fontsize=6, color="r")
        ax.set_xticks(x, labels, rotation=30, fontsize=6, ha="right")
        ax.set_yscale("log")
        ax.set_title(sweep, fontsize=8)
        ax.set_ylabel("ms")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
