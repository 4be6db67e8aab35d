"""Per-window latency of the compiled runtimes, per decoder network, batch 1.

Networks (input shape, batch included):

* ``bandpower`` — the built-in decoder's torch twin (``BandPower(500, 64, 1000 Hz).to_torch()``,
  bands 4–8, 8–13, 13–30 Hz → 192 log powers), on ``(1, 500, 64)``; the numpy decoder itself
  is the reference row;
* ``conv-64x250`` — three Conv1d layers (64 → 32 → 32 → 16, kernel 7) on EEG ``(1, 64, 250)``;
* ``brain-273x360`` — a brain-module-like net (1×1 spatial merger 273 → 270, 7 residual blocks
  of dilated Conv1d 320 → 320 + BatchNorm + GELU with a GLU, 1×1 head to 2048, mean over time,
  ~7.4 M parameters) on MEG ``(1, 273, 360)``.

Backends: torch eager and onnxruntime at 1 and 2 CPU threads (``--threads``); with CUDA also
torch eager on CUDA, cudagraph (fp32, fp16) and, where ``import tensorrt`` works, tensorrt
(fp32, fp16). Each runtime is loaded (export, build, warm-up, output check against torch),
then ``--calls`` calls of ``Runtime.run`` on changing random inputs are timed one by one
(``time.perf_counter_ns``, host window in → host outputs out, copies included).

Prints a markdown table; writes ``benchmarks/results/runtimes.json`` and ``runtimes.png``.

Run: ``python benchmarks/bench_runtimes.py`` (``--skip-large`` leaves out the brain-module-like
net). Results: benchmarks/README.md, "Runtimes".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtbci.errors import RtbciError
from rtbci.models.bandpower import BandPower
from rtbci.models.runtimes import load_runtime, measure_latency
from rtbci.models.runtimes.select import importable

RESULTS = Path(__file__).with_name("results")


class SmallConvNet(nn.Module):
    """Three Conv1d layers on EEG ``(1, 64, 250)`` → ``(1, 16)``."""

    def __init__(self, n_channels: int = 64):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(n_channels, 32, 7, padding=3), nn.ReLU(),
            nn.Conv1d(32, 32, 7, padding=3), nn.ReLU(),
            nn.Conv1d(32, 16, 7, padding=3))

    def forward(self, x):
        return self.layers(x).mean(dim=-1)


class ResidualBlock(nn.Module):
    """Two dilated Conv1d + BatchNorm + GELU with a skip, then a 1×1 GLU."""

    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm1d(width), nn.GELU(),
            nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm1d(width), nn.GELU())
        self.glu = nn.Sequential(nn.Conv1d(width, 2 * width, 1), nn.GLU(dim=1))

    def forward(self, x):
        return self.glu(x + self.convs(x))


class BrainModuleLike(nn.Module):
    """Défossez et al. (2023)-style brain module on MEG ``(1, 273, 360)`` → ``(1, 2048)``."""

    def __init__(self, n_channels: int = 273, width: int = 320, blocks: int = 7,
                 out: int = 2048):
        super().__init__()
        self.merger = nn.Conv1d(n_channels, 270, 1)
        self.stem = nn.Conv1d(270, width, 1)
        self.blocks = nn.Sequential(*[ResidualBlock(width, 2 ** (k % 5)) for k in range(blocks)])
        self.head = nn.Sequential(nn.Conv1d(width, 2 * width, 1), nn.GELU(),
                                  nn.Conv1d(2 * width, out, 1))

    def forward(self, x):
        return self.head(self.blocks(self.stem(self.merger(x)))).mean(dim=-1)


def networks(skip_large: bool) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    nets = {"bandpower": (BandPower(500, 64, 1000.0).to_torch(), (1, 500, 64)),
            "conv-64x250": (SmallConvNet(), (1, 64, 250))}
    if not skip_large:
        nets["brain-273x360"] = (BrainModuleLike().eval(), (1, 273, 360))
    return nets


def backends(threads: list[int]) -> list[tuple[str, str, str, dict]]:
    """``(runtime, device, precision, options)`` to measure on this machine."""
    rows = [(b, "cpu", "fp32", {"threads": n}) for b in ("torch", "onnxruntime") for n in threads]
    if torch.cuda.is_available():
        rows += [("torch", "cuda", "fp32", {}), ("cudagraph", "cuda", "fp32", {}),
                 ("cudagraph", "cuda", "fp16", {})]
        if importable("tensorrt"):
            rows += [("tensorrt", "cuda", "fp32", {}), ("tensorrt", "cuda", "fp16", {})]
    return rows


class NumpyBandPower:
    """The numpy ``builtin:bandpower`` decoder behind the ``run`` of a runtime, for timing."""

    name, backend, device, precision, threads = "bandpower", "numpy", "cpu", "fp64", 1

    def __init__(self):
        self.decoder = BandPower(500, 64, 1000.0)
        self.input_shape = (500, 64)
        self.run: Callable = self.decoder


def measure(name: str, module: nn.Module, shape: tuple[int, ...], runtime: str, device: str,
            precision: str, options: dict, calls: int) -> dict:
    """Load one runtime and time it; a backend that cannot load gives an ``error`` row."""
    row = {"decoder": name, "backend": runtime, "device": device, "precision": precision,
           "threads": options.get("threads")}
    t0 = time.perf_counter()
    try:
        rt = load_runtime(runtime, module, shape, device, precision, name=name, **options)
    except RtbciError as exc:
        return {**row, "error": str(exc)}
    row["build_s"] = round(time.perf_counter() - t0, 2)
    row["device"] = rt.device
    if row["threads"] is None and rt.describe().get("threads"):
        row["threads"] = rt.describe()["threads"]
    row.update(measure_latency(rt, calls))
    return row


def run(args) -> dict:
    out = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "calls": args.calls,
           "machine": machine(), "networks": {}, "rows": []}
    for name, (module, shape) in networks(args.skip_large).items():
        params = sum(p.numel() for p in module.parameters())
        out["networks"][name] = {"input": list(shape), "parameters": params}
        if name == "bandpower":
            ref = NumpyBandPower()
            out["rows"].append({"decoder": name, "backend": "numpy", "device": "cpu",
                                "precision": "fp64", "threads": 1, "build_s": 0.0,
                                **measure_latency(ref, args.calls)})
            print(format_row(out["rows"][-1]), flush=True)
        for runtime, device, precision, options in backends(args.threads):
            row = measure(name, module, shape, runtime, device, precision, options, args.calls)
            out["rows"].append(row)
            print(format_row(row), flush=True)
    return out


def machine() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(),
            "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "numpy": np.__version__}
    if importable("onnxruntime"):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    if importable("tensorrt"):
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    return info


HEADER = ("| decoder | backend | device | precision | threads | p50 ms | p99 ms | max ms | "
          "build s |\n|---|---|---|---|---:|---:|---:|---:|---:|")


def format_row(r: dict) -> str:
    if "error" in r:
        return (f"| {r['decoder']} | {r['backend']} | {r['device']} | {r['precision']} | "
                f"{r['threads'] or ''} | — | — | — | {r['error']} |")
    return (f"| {r['decoder']} | {r['backend']} | {r['device']} | {r['precision']} | "
            f"{r['threads'] or ''} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['max_ms']:.3f} "
            f"| {r['build_s']:.1f} |")


def label(r: dict) -> str:
    threads = f" ×{r['threads']}" if r["threads"] and r["device"] == "cpu" else ""
    precision = f" {r['precision']}" if r["precision"] not in ("fp32", "fp64") else ""
    where = " cuda" if r["device"].startswith("cuda") and r["backend"] == "torch" else ""
    return f"{r['backend']}{where}{precision}{threads}"


def plot(out: dict, path: Path) -> None:
    """One panel per network: a p50 bar per backend, whisker up to p99, a dot at the max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["networks"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = [r for r in out["rows"] if r["decoder"] == name and "error" not in r]
        x = np.arange(len(rows))
        p50 = np.array([r["p50_ms"] for r in rows])
        p99 = np.array([r["p99_ms"] for r in rows])
        colors = ["#4878d0" if r["device"] == "cpu" else "#6acc64" for r in rows]
        ax.bar(x, p50, color=colors, yerr=[np.zeros_like(p50), p99 - p50], capsize=3,
               error_kw={"elinewidth": 1})
        ax.plot(x, [r["max_ms"] for r in rows], "k.", markersize=4)
        for xi, value in zip(x, p50):
            ax.text(xi, value / 2, f"{value:.3g}", ha="center", fontsize=7, color="white")
        ax.set_xticks(x, [label(r) for r in rows], rotation=40, ha="right", fontsize=8)
        ax.set_ylim(0, None)
        shape = "×".join(map(str, out["networks"][name]["input"][1:]))
        ax.set_title(f"{name} ({shape})", fontsize=9)
        ax.set_ylabel("ms per window (bar p50, whisker p99, dot max)", fontsize=7)
    cpu = out["machine"]
    fig.suptitle(f"batch 1, {out['calls']} calls; {cpu['cpus']} CPUs"
                 + (f", {cpu['gpu']}" if "gpu" in cpu else ", no GPU"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per backend")
    parser.add_argument("--threads", default="1,2",
                        help="CPU thread counts for torch and onnxruntime (default 1,2)")
    parser.add_argument("--skip-large", action="store_true",
                        help="leave out the brain-module-like 273×360 net")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw runtimes.png from the folder's runtimes.json")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads((args.out / "runtimes.json").read_text()), args.out / "runtimes.png")
        return
    args.threads = [int(n) for n in args.threads.split(",")]
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    print(HEADER, flush=True)
    out = run(args)
    out["machine"]["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    (args.out / "runtimes.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(out, args.out / "runtimes.png")
    print(f"\n{json.dumps(out['networks'])}\nwrote {args.out / 'runtimes.json'}, "
          f"{args.out / 'runtimes.png'}")


if __name__ == "__main__":
    main()
