"""Offline replay speed: how many times faster than real time the engine runs a recording.

A 10-minute simulated 64 ch @ 1 kHz EEG recording (FIF, written by MNE) is run through
``Engine.run_offline`` — the code path of ``rtbci run CONFIG --replay FILE`` — with several
decoder/preprocessing setups, each on the same file.

Run:  python benchmarks/bench_offline.py [--minutes 10]
Writes benchmarks/results/offline.json and offline.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from rtbci.config import parse_config
from rtbci.devices.recording import read_recording
from rtbci.devices.simulate import save_recording
from rtbci.engine import Engine

RESULTS = Path(__file__).parent / "results"
CLASSIFIER = Path(__file__).parents[1] / "rtbci" / "demo_bandpower.npz"

SLIDING = {"name": "bandpower", "model": "builtin:bandpower", "source": "eeg",
           "window_ms": 500, "every_ms": 50, "runtime": "numpy"}
TRIAL = {"name": "trial", "model": "builtin:bandpower", "source": "eeg", "window_ms": [0, 600],
         "on_marker": "stim", "runtime": "numpy",
         "options": {"bands": [[1, 4], [4, 8], [8, 13]],
                                          "classifier": str(CLASSIFIER)}}
SETUPS = {
    "ingest only (no decoder)": ([], {}),
    "bandpower at 20 Hz": ([SLIDING], {}),
    "bandpower at 20 Hz + trial classifier": ([SLIDING, TRIAL], {}),
    "same + band-pass 1-40 Hz and 50 Hz notch": ([SLIDING, TRIAL],
                                                 {"bandpass": [1, 40], "notch": 50}),
}


def run_setup(recording, decoders: list[dict], preprocess: dict) -> dict:
    config = parse_config({"sources": [{"name": "eeg", "kind": "simulate",
                                        "stream_name": "rtbci-eeg64",
                                        "preprocess": preprocess}],
                           "decoders": decoders})
    engine = Engine(config)
    started = time.perf_counter()
    stats = asyncio.run(engine.run_offline(recording))
    wall = time.perf_counter() - started
    duration = recording.streams[0].duration
    return {"wall_s": round(wall, 2), "x_real_time": round(duration / wall, 1),
            "results": {n: d["results"] for n, d in stats["decoders"].items()},
            "compute_p50_ms": {n: round(d["latency_ms"]["p50"], 3)
                               for n, d in stats["decoders"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sim_raw.fif"
        print(f"writing a {args.minutes:g}-minute 64 ch @ 1 kHz recording ...", flush=True)
        save_recording(path, "eeg64", args.minutes * 60, seed=1, snr=0.5)
        recording = read_recording(path)
    out = {"recording": f"{args.minutes:g} min simulated eeg64 (64 ch @ 1 kHz, FIF)",
           "setups": {}}
    for name, (decoders, preprocess) in SETUPS.items():
        print(f"{name} ...", flush=True)
        out["setups"][name] = result = run_setup(recording, decoders, preprocess)
        print(f"    {result['x_real_time']}× real time ({result['wall_s']} s)", flush=True)
    (RESULTS / "offline.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(out)
    print("| setup | wall s | × real time |\n|---|---:|---:|")
    for name, r in out["setups"].items():
        print(f"| {name} | {r['wall_s']} | {r['x_real_time']} |")


def plot(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["setups"])
    speeds = [out["setups"][n]["x_real_time"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh(names[::-1], speeds[::-1], color="#4878d0")
    for y, speed in enumerate(speeds[::-1]):
        ax.text(speed, y, f" {speed:g}×", va="center")
    ax.set_xlabel("× real time (higher is faster)")
    ax.set_title(f"offline replay, {out['recording']}", fontsize=9)
    ax.set_xlim(0, max(speeds) * 1.2)
    fig.tight_layout()
    fig.savefig(RESULTS / "offline.png", dpi=120)


if __name__ == "__main__":
    main()
