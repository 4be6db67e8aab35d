"""Decoder families: size, accuracy on simulated data (vs chance and linear), CPU latency.

For each family of ``rtbci train`` (``motor-gnn``, ``seeg-words``, ``image-retrieval``,
``speech``; ``models/families.py``):

1. **Parameters** of the network at ``SMALL`` (what ``rtbci train`` uses by default) and at the
   paper's sizes (``HPARAMS``; image-retrieval also NICE's ``TSCONV_HPARAMS``), for the
   simulated task's input shape and for the papers' input shapes:
   motor GNN EEG 64 × 250 → 2 classes; Du-IN sEEG 16 × 3000 and 16 × 4000 → 61 words; image
   EEG 63 × 250 → 1024; speech MEG 208 × 360 and 273 × 360 → 1024. One subject; the
   parameters each further subject adds are listed separately.
2. **Accuracy vs chance vs linear**: per ``--snrs`` value and seed, ``save_task`` writes the
   family's simulated recording (its default number of trials, subject 0) and
   ``train(family, TrainOptions(...))`` trains the ``SMALL`` network for ``--epochs`` on it with
   ``rtbci train``'s own split (by trial for classes, by item — zero-shot — for retrieval) and
   fits its linear baseline (logistic / ridge regression on time-binned windows) on the same
   split. Recorded: the validation accuracy (classes) or top-1 / top-5 among the held-out
   candidates (retrieval; speech also with time-pooled candidates), chance, the linear
   baseline's, and the training time. One torch thread.
3. **Latency**: for every network of step 1 (untrained weights: the cost does not depend on
   them), ``load_runtime(backend, net.inference_module(None), (1, n_samples, n_channels),
   "cpu", "fp32", threads=1)`` for torch and onnxruntime (export, warm-up and output check
   included in ``build_s``; a fresh ONNX cache in a temporary folder), then
   ``measure_latency(runtime, --calls)`` → p50 / p99 / max ms per window, batch 1. On a CUDA
   machine also torch eager on CUDA and cudagraph fp32 / fp16.

Prints one line per step and markdown tables; writes ``benchmarks/results/decoders.json`` and
``decoders.png``. ``--families speech`` re-measures one family and keeps the others' entries
of an existing ``decoders.json``.

Run: ``python benchmarks/bench_decoders.py`` (``--skip-accuracy`` or ``--skip-latency`` for one
part, ``--replot`` to redraw the PNG from the JSON). Results: benchmarks/README.md, "Decoder
families".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from rtbci.devices.tasks import TARGET_DIM, TASKS, save_task
from rtbci.errors import RtbciError
from rtbci.models.families import FAMILIES, get_family
from rtbci.models.options import TrainOptions
from rtbci.models.runtimes import load_runtime, measure_latency
from rtbci.models.runtimes.select import importable
from rtbci.models.training import train
from rtbci.models.windows import load_windows

RESULTS = Path(__file__).with_name("results")
REPO = Path(__file__).resolve().parent.parent

FAMILY_ORDER = ["motor-gnn", "seeg-words", "image-retrieval", "speech"]
# the papers' input shapes: (label, n_channels, n_samples, n_outputs, srate)
PAPER_SHAPES = {
    "motor-gnn": [("EEG 64×250 → 2", 64, 250, 2, 250.0)],
    "seeg-words": [("sEEG 16×3000 → 61", 16, 3000, 61, 1000.0),
                   ("sEEG 16×4000 → 61", 16, 4000, 61, 1000.0)],
    "image-retrieval": [("EEG 63×250 → 1024", 63, 250, 1024, 250.0)],
    "speech": [("MEG 208×360 → 1024", 208, 360, 1024, 120.0),
               ("MEG 273×360 → 1024", 273, 360, 1024, 120.0)],
}
# extra training options per family (as tests/models/test_training.py and the README use them)
TRAIN_EXTRA = {"seeg-words": {"channels": ["A*"]}, "speech": {"batch_size": 32}}
# GPU figures measured by others, quoted (never as rtbci measurements of this script)
REFERENCE_GPU = [
    {"source": "rtbci team, H100, 2026-11-22 (not this script)", "device": "H100",
     "runtime": "CUDA graph incl. copies", "batch": 1, "rows": [
         {"network": "speech brain module, MEG 273×360 (7.19 M)", "p50_ms": 0.63, "p99_ms": 0.69},
         {"network": "image-retrieval TSConv, EEG 63×250 → 1024 (2.63 M)", "p50_ms": 0.14,
          "p99_ms": 0.17},
         {"network": "motor dense GCN, EEG 64×500 (17 k)", "p50_ms": 0.11, "p99_ms": 0.13}]},
    {"source": "rtbci team, H100 (not this script)", "device": "H100",
     "runtime": "CUDA graph fp32 / fp16", "batch": 1, "rows": [
         {"network": "Défossez module", "p50_ms": "0.47 / 0.45"},
         {"network": "UBP-style encoder", "p50_ms": 0.026}]},
]


# --- networks ----------------------------------------------------------------------------

def hemisphere(n: int, radius: float = 0.1) -> np.ndarray:
    """``n`` sensor positions spread evenly over the upper half of a sphere (metres)."""
    k = np.arange(n) + 0.5
    z = 1 - k / n  # (0, 1]: upper hemisphere
    phi = np.pi * (3 - np.sqrt(5)) * k
    r = np.sqrt(1 - z**2)
    return radius * np.column_stack([r * np.cos(phi), r * np.sin(phi), z])


def sizes(family: str) -> list[tuple[str, dict]]:
    """``(label, hparams)`` of the sizes measured: SMALL, the paper's (and NICE's TSConv)."""
    module = get_family(family).load()
    if module.SMALL == module.HPARAMS:
        return [("small = paper", module.HPARAMS)]
    out = [("small", module.SMALL), ("paper", module.HPARAMS)]
    if family == "image-retrieval":
        out = [("small (TSConv, 8 filters)", module.SMALL), ("paper UBP", module.HPARAMS),
               ("paper TSConv (NICE)", module.TSCONV_HPARAMS)]
    return out


def simulated_shape(family: str, folder: Path) -> dict:
    """The simulated task's input as ``rtbci train`` cuts it (a short recording, same cuts)."""
    fif, targets = save_task(folder / f"{family}-shape_raw.fif", family, trials=12)
    opts = TrainOptions(data=[fif], out=folder / "unused.pt", targets=targets,
                        **TRAIN_EXTRA.get(family, {}))
    win = load_windows([fif], get_family(family), opts)
    spec = TASKS[family]
    n_out = TARGET_DIM if spec.retrieval else spec.items
    kind = get_family(family).kind
    label = (f"sim {win.info.type} {win.x.shape[2]}×{win.x.shape[1]} → {n_out}"
             + (" classes" if kind == "classes" else ""))
    positions = None if win.info.positions is None else np.asarray(win.info.positions, float)
    if positions is None:  # what training gets too (speech: MEG positions are lost in FIF)
        label += " (no positions)"
    return {"label": label, "n_channels": int(win.x.shape[2]), "n_samples": int(win.x.shape[1]),
            "n_outputs": n_out, "srate": float(win.info.srate), "positions": positions,
            "has_positions": positions is not None}


def shapes(family: str, folder: Path) -> list[dict]:
    """The simulated shape then the paper's (merged when they are the same)."""
    sim = simulated_shape(family, folder)
    out = [sim]
    for label, n_ch, n_samples, n_out, srate in PAPER_SHAPES[family]:
        if (n_ch, n_samples, n_out) == (sim["n_channels"], sim["n_samples"], sim["n_outputs"]):
            sim["label"] = f"{sim['label']} (= paper)"
            continue
        out.append({"label": f"paper {label}", "n_channels": n_ch, "n_samples": n_samples,
                    "n_outputs": n_out, "srate": srate, "positions": hemisphere(n_ch),
                    "has_positions": True})
    return out


def build(family: str, hparams: dict, shape: dict, n_subjects: int = 1) -> torch.nn.Module:
    """The family's network (untrained, seed 0) for one size and input shape."""
    fam = get_family(family)
    torch.manual_seed(0)
    cls = getattr(fam.load(), fam.net)
    return cls(shape["n_channels"], shape["n_samples"], shape["n_outputs"], srate=shape["srate"],
               positions=shape["positions"], n_subjects=n_subjects, **hparams)


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --- measurements ------------------------------------------------------------------------

def accuracy_runs(family: str, snrs: list[float], seeds: list[int], epochs: int,
                  folder: Path) -> list[dict]:
    """Simulate, train and score the SMALL network once per (snr, seed)."""
    rows = []
    for snr in snrs:
        for seed in seeds:
            t0 = time.perf_counter()
            fif, targets = save_task(folder / f"{family}-snr{snr}-seed{seed}_raw.fif", family,
                                     snr=snr, seed=seed)
            t1 = time.perf_counter()
            metrics = train(family, TrainOptions(
                data=[fif], out=folder / f"{family}-snr{snr}-seed{seed}.pt", targets=targets,
                epochs=epochs, seed=seed, progress=False, **TRAIN_EXTRA.get(family, {})))
            row = {"snr": snr, "seed": seed, "simulate_s": round(t1 - t0, 1),
                   "train_s": round(time.perf_counter() - t1, 1), **metrics}
            rows.append(row)
            print(f"  accuracy {family} snr {snr} seed {seed}: {format_score(row)} "
                  f"({row['simulate_s']:.0f} s simulate, {row['train_s']:.0f} s train)",
                  flush=True)
    return rows


def score(metrics: dict) -> float:
    """Accuracy (classes) or top-1 (retrieval)."""
    return metrics.get("accuracy", metrics.get("top1"))


def format_score(row: dict) -> str:
    val, lin = row["val"], row["linear"]
    name = "acc" if "accuracy" in val else "top-1"
    text = (f"{name} {score(val):.3f}, linear {score(lin):.3f}, chance {val['chance']:.3f}")
    if "pooled" in val:
        text += f", pooled-bank top-1 {val['pooled']['top1']:.3f}"
    return text


ORDER = [("torch", "cpu", "fp32"), ("onnxruntime", "cpu", "fp32"), ("torch", "cuda", "fp32"),
         ("cudagraph", "cuda", "fp32"), ("cudagraph", "cuda", "fp16")]


def backends() -> list[tuple[str, str, str]]:
    """``(runtime, device, precision)`` to time on this machine."""
    return ORDER if torch.cuda.is_available() else ORDER[:2]


def network_rows(family: str, folder: Path, calls: int, latency: bool) -> list[dict]:
    """Parameters (and latency) of every size × input shape of a family."""
    rows = []
    for shape in shapes(family, folder):
        for size, hparams in sizes(family):
            net = build(family, hparams, shape)
            params = count(net)
            per_subject = count(build(family, hparams, shape, n_subjects=2)) - params
            row = {"size": size, "input": shape["label"], "n_channels": shape["n_channels"],
                   "n_samples": shape["n_samples"], "n_outputs": shape["n_outputs"],
                   "srate": shape["srate"], "positions": shape["has_positions"],
                   "parameters": params, "parameters_per_extra_subject": per_subject,
                   "latency": []}
            print(f"  params {family} {size} {shape['label']}: {params:,} "
                  f"(+{per_subject:,} per extra subject)", flush=True)
            if latency:
                module = net.eval().inference_module(None)
                example = (1, shape["n_samples"], shape["n_channels"])
                for backend, device, precision in backends():
                    row["latency"].append(time_runtime(backend, device, precision, module,
                                                       example, calls, family))
                    print(f"    {format_latency(row['latency'][-1])}", flush=True)
            rows.append(row)
    return rows


def time_runtime(backend: str, device: str, precision: str, module, example, calls: int,
                 name: str) -> dict:
    row = {"backend": backend, "device": device, "precision": precision, "threads": None}
    options = {"threads": 1} if device == "cpu" else {}
    t0 = time.perf_counter()
    try:
        rt = load_runtime(backend, module, example, device, precision, name=name, **options)
    except RtbciError as exc:
        return {**row, "error": str(exc)}
    row["build_s"] = round(time.perf_counter() - t0, 2)
    row["threads"] = rt.describe().get("threads")
    row.update(measure_latency(rt, calls))
    return row


def format_latency(r: dict) -> str:
    where = f"{r['backend']} {r['device']} {r['precision']}"
    if "error" in r:
        return f"latency {where}: {r['error']}"
    return (f"latency {where}: p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms "
            f"(build {r['build_s']:.1f} s)")


# --- run ---------------------------------------------------------------------------------

def machine() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(),
            "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
            "processor": cpu_name(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__}
    for name in ("onnxruntime", "sklearn", "mne"):
        if importable(name):
            info[name] = __import__(name).__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_state() -> dict:
    """The commit and the uncommitted files under models/ and devices/ (the numbers depend on
    them)."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain").splitlines()
             if line[3:].startswith(("models/", "devices/"))]
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": dirty}


def run(args) -> dict:
    path = args.out / "decoders.json"
    partial = set(args.families) != set(FAMILIES)
    out = (json.loads(path.read_text()) if partial and path.exists()
           else {"families": {}, "runs": []})
    started = time.perf_counter()
    entry = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
             "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
             "families": args.families, "snrs": args.snrs, "seeds": args.seeds,
             "epochs": args.epochs, "calls": args.calls, "machine": machine(),
             "code": code_state()}
    out["runs"].append(entry)
    out["gpu"] = ({"measured": True, "device": entry["machine"]["gpu"]}
                  if torch.cuda.is_available() else
                  {"measured": False, "note": "GPU (H100): not measured in this session "
                   "(no CUDA device); see reference_gpu for figures measured by others"})
    out["reference_gpu"] = REFERENCE_GPU
    with tempfile.TemporaryDirectory(prefix="rtbci-bench-decoders-") as tmp:
        folder = Path(tmp)
        os.environ["RTBCI_CACHE"] = str(folder / "cache")  # fresh ONNX exports, no clutter
        for family in args.families:
            t0 = time.perf_counter()
            print(f"{family}:", flush=True)
            previous = out["families"].get(family, {})
            result = {"date": entry["date"], "epochs": args.epochs,
                      "train_options": TRAIN_EXTRA.get(family, {}),
                      "trials": TASKS[family].trials, "snrs": args.snrs, "seeds": args.seeds}
            if not args.skip_latency or not previous.get("networks"):
                result["networks"] = network_rows(family, folder, args.calls,
                                                  not args.skip_latency)
            else:
                result["networks"] = previous["networks"]
            if args.skip_accuracy:  # keep the earlier rows and the settings they were made with
                result["accuracy"] = previous.get("accuracy", [])
                result.update({k: previous[k] for k in ("epochs", "snrs", "seeds", "date")
                               if k in previous})
            else:
                result["accuracy"] = accuracy_runs(family, args.snrs, args.seeds, args.epochs,
                                                   folder)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            out["families"][family] = result
            out["families"] = {f: out["families"][f] for f in FAMILY_ORDER
                               if f in out["families"]}
            entry["seconds"] = round(time.perf_counter() - started, 1)
            path.write_text(json.dumps(out, indent=2, default=float) + "\n")  # after each
    entry["machine"]["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    entry["seconds"] = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return out


# --- tables and plot ---------------------------------------------------------------------

def params_table(out: dict) -> str:
    lines = ["| family | size | input | parameters | + per extra subject |",
             "|---|---|---|---:|---:|"]
    for family, result in out["families"].items():
        for r in result["networks"]:
            lines.append(f"| {family} | {r['size']} | {r['input']} | {r['parameters']:,} | "
                         f"{r['parameters_per_extra_subject']:,} |")
    return "\n".join(lines)


def mean_range(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ({min(values):.2f}–{max(values):.2f})"


def accuracy_table(out: dict) -> str:
    lines = ["| family | metric | SNR | SMALL net | linear | chance | top-5 net / linear | "
             "val windows (candidates) | train s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for family, result in out["families"].items():
        for snr in result["snrs"]:
            rows = [r for r in result["accuracy"] if r["snr"] == snr]
            if not rows:
                continue
            val = [r["val"] for r in rows]
            lin = [r["linear"] for r in rows]
            retrieval = "top1" in val[0]
            metric = "top-1" if retrieval else "accuracy"
            net = mean_range([score(v) for v in val])
            if "pooled" in val[0]:
                net += f" (pooled bank {mean_range([v['pooled']['top1'] for v in val])})"
            top5 = (f"{mean_range([v['top5'] for v in val])} / "
                    f"{mean_range([v['top5'] for v in lin])}" if retrieval else "—")
            n = (f"{rows[0]['n_val']} ({val[0]['n_candidates']})" if retrieval
                 else f"{rows[0]['n_val']}")
            lines.append(f"| {family} | {metric} | {snr:g} | {net} | "
                         f"{mean_range([score(v) for v in lin])} | "
                         f"{mean_range([v['chance'] for v in val])} | {top5} | {n} | "
                         f"{np.mean([r['train_s'] for r in rows]):.0f} |")
    return "\n".join(lines)


def ms(value: float) -> str:
    """About three significant digits: 0.117, 1.26, 18.3, 152."""
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else (
        f"{value:.1f}" if value < 100 else f"{value:.0f}")


def latency_table(out: dict) -> str:
    """One row per network, p50 / p99 ms per backend; a GPU column saying if none was timed."""
    present = [n for n in ORDER if any(
        (t["backend"], t["device"], t["precision"]) == n for result in out["families"].values()
        for r in result["networks"] for t in r["latency"])]
    gpu = not out.get("gpu", {}).get("measured")
    head = " | ".join(f"{b} {d}{'' if p == 'fp32' else ' ' + p} p50 / p99 ms"
                      for b, d, p in present)
    lines = [f"| family | size | input | parameters | {head} |"
             + (" GPU (H100) |" if gpu else ""),
             "|---|---|---|---:|" + "---:|" * len(present) + ("---|" if gpu else "")]
    for family, result in out["families"].items():
        for r in result["networks"]:
            if not r["latency"]:
                continue
            cells = []
            for name in present:
                t = next((t for t in r["latency"]
                          if (t["backend"], t["device"], t["precision"]) == name), None)
                cells.append("—" if t is None else t["error"] if "error" in t
                             else f"{ms(t['p50_ms'])} / {ms(t['p99_ms'])}")
            lines.append(f"| {family} | {r['size']} | {r['input']} | {r['parameters']:,} | "
                         + " | ".join(cells) + " |"
                         + (" not measured in this session |" if gpu else ""))
    return "\n".join(lines)


def short(label: str) -> str:
    return label.replace("paper ", "").replace(" (no positions)", "*").replace(" → ", "→")


def plot(out: dict, path: Path) -> None:
    """Top: model vs linear vs chance per SNR; bottom: CPU latency per network and backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(out["families"])
    fig, axes = plt.subplots(2, len(families), figsize=(4.4 * len(families), 7.6),
                             squeeze=False)
    for ax, family in zip(axes[0], families):
        result = out["families"][family]
        snrs = [s for s in result["snrs"] if any(r["snr"] == s for r in result["accuracy"])]
        if not snrs:
            ax.set_visible(False)
            continue
        series = {"SMALL net": lambda r: score(r["val"]), "linear": lambda r: score(r["linear"])}
        if any("pooled" in r["val"] for r in result["accuracy"]):
            series["net, pooled bank"] = lambda r: r["val"]["pooled"]["top1"]
        width = 0.8 / len(series)
        x = np.arange(len(snrs))
        colors = ["#4878d0", "#ee854a", "#6acc64"]
        for k, (name, get) in enumerate(series.items()):
            values = [np.mean([get(r) for r in result["accuracy"] if r["snr"] == s])
                      for s in snrs]
            pos = x - 0.4 + width * (k + 0.5)
            ax.bar(pos, values, width, label=name, color=colors[k])
            for xi, v in zip(pos, values):
                ax.text(xi, v + 0.01, f"{v:.2f}", ha="center", fontsize=6)
        chance = [np.mean([r["val"]["chance"] for r in result["accuracy"] if r["snr"] == s])
                  for s in snrs]
        for xi, c in zip(x, chance):
            ax.hlines(c, xi - 0.45, xi + 0.45, colors="k", linestyles="--", linewidth=1)
        ax.plot([], [], "k--", linewidth=1, label="chance")
        ax.set_xticks(x, [f"SNR {s:g}" for s in snrs])
        ax.set_ylim(0, 1.3)
        metric = "top-1 (zero-shot)" if result["accuracy"] and "top1" in \
            result["accuracy"][0]["val"] else "accuracy"
        ax.set_ylabel(metric, fontsize=8)
        ax.set_title(f"{family}: {result['epochs']} epochs, {result['trials']} trials",
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    for ax, family in zip(axes[1], families):
        rows = [(r, lat) for r in out["families"][family]["networks"] for lat in r["latency"]
                if "error" not in lat]
        if not rows:
            ax.set_visible(False)
            continue
        labels = [f"{r['size']}\n{short(r['input'])}" for r in
                  out["families"][family]["networks"]]
        names = sorted({(lat["backend"], lat["device"], lat["precision"]) for _, lat in rows},
                       key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
        width = 0.8 / len(names)
        x = np.arange(len(labels))
        for k, name in enumerate(names):
            p50, p99, pos = [], [], []
            for i, r in enumerate(out["families"][family]["networks"]):
                lat = next((t for t in r["latency"] if (t["backend"], t["device"],
                            t["precision"]) == name and "error" not in t), None)
                if lat:
                    p50.append(lat["p50_ms"])
                    p99.append(lat["p99_ms"])
                    pos.append(x[i] - 0.4 + width * (k + 0.5))
            p50, p99 = np.array(p50), np.array(p99)
            ax.bar(pos, p50, width, yerr=[np.zeros_like(p50), p99 - p50], capsize=2,
                   error_kw={"elinewidth": 0.8}, label=" ".join(n for n in name if n != "fp32"))
            for xi, value in zip(pos, p50):
                ax.text(xi, value * 0.8, f"{value:.3g}", ha="center", va="top", fontsize=6,
                        rotation=90, color="white")
        ax.set_yscale("log")
        ax.set_ylim(0.05, 400)
        ax.set_xticks(x, labels, fontsize=6, rotation=30, ha="right")
        ax.set_ylabel("ms per window, batch 1 (bar p50, whisker p99)", fontsize=7)
        note = " (* no positions)" if any(not r["positions"] for r, _ in rows) else ""
        ax.set_title(f"{family}: CPU latency, 1 thread{note}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    run_info = out["runs"][-1]["machine"]
    gpu = run_info.get("gpu", "no GPU: GPU rows not measured")
    fig.suptitle(f"rtbci decoder families on simulated data — {run_info['cpus']} CPUs "
                 f"({run_info['processor']}), {gpu}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILY_ORDER),
                        help=f"comma-separated subset of {', '.join(FAMILY_ORDER)}")
    parser.add_argument("--snrs", default="0.1,0.3,1.0",
                        help="simulated response RMS / background RMS (default 0.1,0.3,1.0)")
    parser.add_argument("--seeds", default="0", help="simulation and training seeds (default 0)")
    parser.add_argument("--epochs", type=int, default=30,
                        help="training epochs, all families (default 30, rtbci train's)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per runtime")
    parser.add_argument("--skip-accuracy", action="store_true",
                        help="no training (keeps the accuracy rows of an existing JSON)")
    parser.add_argument("--skip-latency", action="store_true",
                        help="parameter counts only, no runtime timing")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw decoders.png (and print the tables) from decoders.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.replot:
        args.families = [get_family(f.strip()).name for f in args.families.split(",")]
        args.snrs = [float(s) for s in args.snrs.split(",")]
        args.seeds = [int(s) for s in args.seeds.split(",")]
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        warnings.filterwarnings("ignore", category=UserWarning)  # export chatter
        torch.set_num_threads(1)  # two threads spin-wait on a loaded 2-core machine
        out = run(args)
    else:
        out = json.loads((args.out / "decoders.json").read_text())
    plot(out, args.out / "decoders.png")
    print(f"\n{params_table(out)}\n\n{accuracy_table(out)}\n\n{latency_table(out)}\n\n"
          f"wrote {args.out / 'decoders.json'}, {args.out / 'decoders.png'}")


if __name__ == "__main__":
    main()
