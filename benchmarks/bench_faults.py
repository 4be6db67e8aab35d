"""Faults with a figure: how fast a SIGTERM during slow decoder builds ends ``rtbci run``, and
how much memory a peer flooding 1 MB markers costs the engine.

Two measurements, each on a real ``rtbci run`` process:

- ``shutdown``: four ``python:`` decoders whose construction takes 8 s (a checkpoint
  compiling, in effect) on one simulated source; SIGTERM as soon as the first build started;
  the time from the signal to the process's exit (goal: ≤ 2 s), and which builds started.
- ``marker_flood``: an LSL source whose marker stream is a peer pushing 1 MB string markers at
  10 per second for 28 s; the engine's resident memory (VmRSS) sampled every 0.25 s, and its
  marker counters.

Results: benchmarks/README.md, "Faults with a figure".

Run: ``python benchmarks/bench_faults.py [--runs 10] [--out benchmarks/results]``; writes
``faults.json`` and ``faults_rss.png`` there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

SLOW_BUILD = '''
import pathlib
import time

from rtbci.models.bandpower import BandPower


def make(n_samples, n_channels, srate, flag="", seconds=8.0):
    pathlib.Path(flag).touch()
    time.sleep(seconds)
    return BandPower(n_samples, n_channels, srate)
'''


def _rtbci(args: list[str], folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.Popen([sys.executable, "-m", "rtbci", "-q", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def shutdown_once(folder: Path) -> dict:
    """One ``rtbci run`` stopped by SIGTERM while its first decoder builds."""
    import tomli_w

    for flag in folder.glob("*.started"):
        flag.unlink()
    names = [f"slow{i}" for i in range(4)]
    config = folder / "slow.toml"
    config.write_text(tomli_w.dumps({
        "engine": {"session": f"faults-{uuid.uuid4().hex[:6]}"},
        "sources": [{"name": "eeg", "kind": "simulate",
                     "stream_name": f"faults-{uuid.uuid4().hex[:8]}"}],
        "decoders": [{"name": name, "model": "python:slow_build:make", "source": "eeg",
                      "window_ms": 200, "every_ms": 100,
                      "options": {"flag": str(folder / f"{name}.started")}}
                     for name in names]}))
    proc = _rtbci(["run", str(config)], folder)
    try:
        deadline = time.monotonic() + 60
        while not (folder / "slow0.started").exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"no build started: {proc.stderr.read()[-500:]}")
            time.sleep(0.01)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    return {"exit_s": round(took, 3), "returncode": proc.returncode,
            "started": sorted(p.stem for p in folder.glob("*.started"))}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def marker_flood(folder: Path, seconds: float = 28.0, rate: float = 10.0,
                 size: int = 1 << 20) -> dict:
    """An engine whose marker peer pushes ``size``-byte markers at ``rate``/s."""
    import pylsl
    import tomli_w

    name = f"faults-{uuid.uuid4().hex[:8]}"
    data = pylsl.StreamOutlet(pylsl.StreamInfo(name, "EEG", 8, 100.0, pylsl.cf_float32, name))
    flood = pylsl.StreamOutlet(pylsl.StreamInfo(f"{name}-flood", "Markers", 1, 0.0,
                                                pylsl.cf_string, f"{name}-flood"))
    config = folder / "flood.toml"
    stats = folder / "flood.json"
    config.write_text(tomli_w.dumps({
        "engine": {"session": f"faults-{uuid.uuid4().hex[:6]}"},
        "sources": [{"name": "eeg", "kind": "lsl", "stream": {"name": name},
                     "markers": {"name": f"{name}-flood"}}]}))
    proc = _rtbci(["run", str(config), "--duration", str(seconds + 8),
                   "--stats-json", str(stats)], folder)
    stop = threading.Event()

    def push_data() -> None:
        chunk = np.zeros((10, 8), np.float32)
        while not stop.is_set():
            data.push_chunk(chunk)
            time.sleep(0.1)

    pusher = threading.Thread(target=push_data, daemon=True)
    pusher.start()
    samples, marker = [], "x" * size
    t0 = time.monotonic()
    try:
        while not flood.have_consumers():
            if time.monotonic() - t0 > 30 or proc.poll() is not None:
                raise RuntimeError("the engine never connected to the marker peer")
            time.sleep(0.05)
        time.sleep(1.0)
        start = time.monotonic()
        next_push = start
        while (now := time.monotonic()) - start < seconds:
            if now >= next_push:
                flood.push_sample([marker])
                next_push += 1.0 / rate
            samples.append((now - start, _rss_mb(proc.pid)))
            time.sleep(0.25 if now + 0.25 < next_push else max(0.0, next_push - now))
        proc.wait(60)
    finally:
        stop.set()
        proc.kill()
    rss = np.array([r for _, r in samples])
    stream = json.loads(stats.read_text())["streams"]["eeg"]
    return {"seconds": seconds, "rate_per_s": rate, "marker_bytes": size,
            "rss_start_mb": round(float(rss[0]), 1), "rss_max_mb": round(float(rss.max()), 1),
            "rss_growth_mb": round(float(rss.max() - rss[0]), 1),
            "markers": stream["markers"], "markers_truncated": stream["markers_truncated"],
            "trace": [[round(t, 2), round(r, 1)] for t, r in samples]}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    trace = np.array(result["marker_flood"]["trace"])
    a.plot(trace[:, 0], trace[:, 1])
    a.set(xlabel="s since the flood began", ylabel="engine RSS (MB)",
          title="1 MB markers at 10/s from an LSL peer")
    a.set_ylim(0, max(400.0, trace[:, 1].max() * 1.2))
    exits = [r["exit_s"] for r in result["shutdown"]["runs"]]
    b.bar(range(1, len(exits) + 1), exits)
    b.axhline(2.0, color="red", linestyle="--", label="goal 2 s")
    b.set(xlabel="run", ylabel="s from SIGTERM to exit",
          title="SIGTERM while decoders build (8 s each)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="SIGTERM runs (default 10)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "slow_build.py").write_text(SLOW_BUILD)
        runs = []
        for i in range(args.runs):
            runs.append(shutdown_once(folder))
            print(f"shutdown run {i + 1}/{args.runs}: exit {runs[-1]['exit_s']:.2f} s after "
                  f"SIGTERM, builds started {runs[-1]['started']}", flush=True)
        exits = np.array([r["exit_s"] for r in runs])
        print("marker flood: 28 s of 1 MB markers at 10/s …", flush=True)
        flood = marker_flood(folder)
    result = {
        "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "shutdown": {"runs": runs, "exit_p50_s": round(float(np.median(exits)), 3),
                     "exit_max_s": round(float(exits.max()), 3), "goal_s": 2.0},
        "marker_flood": flood}
    (args.out / "faults.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "faults_rss.png")
    print(f"shutdown: exit p50 {result['shutdown']['exit_p50_s']:.2f} s, max "
          f"{result['shutdown']['exit_max_s']:.2f} s (goal 2 s); marker flood: RSS "
          f"{flood['rss_start_mb']:.0f} → max {flood['rss_max_mb']:.0f} MB "
          f"(+{flood['rss_growth_mb']:.0f}), {flood['markers']} markers, "
          f"{flood['markers_truncated']} truncated; wrote {args.out / 'faults.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
