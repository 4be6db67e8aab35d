"""``rtbci evaluate`` serial vs on a local Ray: speed-up, identical reports, Ray's overhead.

Writes ``--files`` simulated 64 ch @ 1 kHz EEG recordings of ``--minutes`` each (FIF, by
MNE) and evaluates the demo's EEG decoders on them (``bandpower`` sliding at 20 Hz, ``trial``
with the demo classifier, which travels through Ray's object store) twice: serially in this
process (``--ray off``) and as one Ray task per file on a local Ray with ``--workers`` CPUs.
Also measured: Ray's start-up, and its per-task overhead (the mean time of a no-op task
through the same :func:`rtbci.cluster.parallel_map`, ``--workers`` in flight).

Run:  python benchmarks/bench_cluster.py [--files 8] [--minutes 10] [--workers 2]
Writes benchmarks/results/cluster.json and cluster.png.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from rtbci.cluster import connect, disconnect, parallel_map
from rtbci.config import parse_config
from rtbci.devices.simulate import save_recording
from rtbci.evaluate import evaluate

RESULTS = Path(__file__).parent / "results"
CLASSIFIER = Path(__file__).parents[1] / "rtbci" / "demo_bandpower.npz"
CONFIG = {  # the demo's decoders on its 64-channel EEG (rtbci demo --print-config)
    "sources": [{"name": "eeg", "kind": "lsl", "stream": {"type": "EEG"},
                 "buffer_seconds": 30}],
    "decoders": [
        {"name": "bandpower", "model": "builtin:bandpower", "source": "eeg", "window_ms": 500,
         "every_ms": 50, "budget_ms": 10},
        {"name": "trial", "model": "builtin:bandpower", "source": "eeg", "window_ms": [0, 600],
         "on_marker": "stim", "budget_ms": 10,
         "options": {"bands": [[1, 4], [4, 8], [8, 13]], "classifier": CLASSIFIER.name}}]}
NO_OP_TASKS = 200


def scores(report: dict) -> list[dict]:
    """Each file's figures without its timings: what must be identical serial and on Ray."""
    return [{name: {k: v for k, v in d.items() if k != "compute_ms"}
             for name, d in e.get("decoders", {}).items()} | {"error": e.get("error")}
            for e in report["files"]]


def no_op(item: int) -> int:
    return item


def warm_up(item: int) -> int:
    """Import what a file's evaluation imports (the engine, MNE's reader and, where it is
    installed, torch for the decoders' compiled runtime): a one-off per process, done before
    the timing both in this process (serial) and in each Ray worker."""
    import importlib.util

    import rtbci.devices.recording
    import rtbci.engine
    import rtbci.report  # noqa: F401

    if importlib.util.find_spec("torch") is not None:
        import torch  # noqa: F401
    return item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8, help="recordings (default 8)")
    parser.add_argument("--minutes", type=float, default=10.0, help="each (default 10)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="Ray CPUs (default: all cores)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    config = parse_config(CONFIG, base_dir=CLASSIFIER.parent)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as folder:
        files = []
        for k in range(args.files):
            files.append(save_recording(Path(folder) / f"s{k:02d}_raw.fif", "eeg64",
                                        args.minutes * 60, seed=k + 1, snr=0.5))
            print(f"wrote {files[-1].name} ({k + 1}/{args.files})", flush=True)
        warm_up(0)
        serial = evaluate(config, files, None)
        print(f"serial: {serial['executor']['wall_s']:.1f} s", flush=True)
        started = time.perf_counter()
        session = connect("local", args.workers)
        ray_start_s = time.perf_counter() - started
        try:
            # workers up and their imports done, as the serial run's process (the serial
            # timing does not count imports either)
            parallel_map(warm_up, range(args.workers))
            started = time.perf_counter()
            parallel_map(no_op, range(NO_OP_TASKS))
            overhead_ms = (time.perf_counter() - started) / NO_OP_TASKS * 1e3
            on_ray = evaluate(config, files, session)
        finally:
            disconnect()
    serial_s, ray_s = serial["executor"]["wall_s"], on_ray["executor"]["wall_s"]
    per_file = serial_s / args.files
    result = {
        "files": args.files, "minutes": args.minutes, "workers": session.workers,
        "serial_s": serial_s, "ray_s": ray_s, "speedup": round(serial_s / ray_s, 2),
        "ray_start_s": round(ray_start_s, 2),
        "speedup_with_start": round(serial_s / (ray_s + ray_start_s), 2),
        "per_file_s": round(per_file, 2),
        "per_file_in_ray_task_s": round(on_ray["executor"]["serial_s_estimate"] / args.files, 2),
        "no_op_task_ms": round(overhead_ms, 2),
        "ray_per_file_overhead_s": round(ray_s * session.workers / args.files - per_file, 2),
        "identical_reports": scores(serial) == scores(on_ray),
        "failed": len(serial["failed"]) + len(on_ray["failed"]),
        "trial_accuracy": on_ray["decoders"]["trial"].get("accuracy"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(args.out / "cluster.png", result)
    for key, value in result.items():
        print(f"{key:<26} {value}")
    if not result["identical_reports"] or result["failed"]:
        raise SystemExit("bench_cluster: the serial and Ray reports differ or files failed")


def plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.4))
    bars = {"serial": result["serial_s"], f"Ray local ({result['workers']} workers)":
            result["ray_s"], "Ray start-up": result["ray_start_s"]}
    ax.barh(list(bars), list(bars.values()), color=["C0", "C1", "0.6"])
    for y, v in enumerate(bars.values()):
        ax.text(v, y, f" {v:.1f} s", va="center")
    ax.set(xlabel="wall time (s)", title=f"rtbci evaluate: {result['files']} × "
           f"{result['minutes']:g} min, 64 ch @ 1 kHz; speed-up {result['speedup']}×")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
