"""Soak: 306 ch @ 1 kHz for 10 minutes through 3 decoders, MQTT and the recorder.

A simulated 306-channel MEG amplifier (``meg306``, 10 ms chunks) is published on LSL from
this process; it starts pushing only once the engine's inlet has subscribed, so the engine
must receive every sample pushed. ``rtbci run`` (its own process) decodes it with three
decoders — band power every 50 ms (numpy), band power on each ``stim`` marker, band power
over 1 s every 100 ms in ONNX Runtime — and publishes every result to mosquitto
(``set_tcp_nodelay true``) and to the session recorder. Every 5 s while the amplifier pushes,
the engine's resident memory (``VmRSS``) is sampled; its peak during shutdown (the recorder
then converts the session to FIF) is reported apart.

Pass criteria, checked and written to the JSON: 0 gaps, 0 overflows, samples received ==
samples pushed == samples recorded, every result delivered to MQTT and recorded, and a flat
RSS (growth over the second half under 20 MB).

Run:  python benchmarks/bench_soak.py [--duration 600]
Writes benchmarks/results/soak.json and soak.png (needs mosquitto).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from rtbci.bench.run import free_port, start_mosquitto  # loopback, TCP_NODELAY

RESULTS = Path(__file__).parent / "results"
RSS_PERIOD_S = 5.0
RSS_GROWTH_LIMIT_MB = 20.0

CONFIG = """
[engine]
session = "soak"
stats_interval_s = 5.0
[[sources]]
name = "meg"
kind = "lsl"
stream = {{ name = "{name}" }}
markers = {{ name = "{name}-markers" }}
buffer_seconds = 30
[[decoders]]
name = "sliding"
model = "builtin:bandpower"
source = "meg"
window_ms = 500
every_ms = 50
budget_ms = 25
runtime = "numpy"
[[decoders]]
name = "evoked"
model = "builtin:bandpower"
source = "meg"
on_marker = "stim"
window_ms = [0, 500]
budget_ms = 25
runtime = "numpy"
[[decoders]]
name = "onnx"
model = "builtin:bandpower"
source = "meg"
window_ms = 1000
every_ms = 100
budget_ms = 50
runtime = "onnxruntime"
[[sinks]]
kind = "mqtt"
url = "mqtt://127.0.0.1:{port}"
qos = 0
[[sinks]]
kind = "record"
path = "{record}"
"""


def rss_mb(pid: int) -> float | None:
    """Resident set size of process ``pid`` in MB (Linux ``/proc``), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sample_rss(pid: int, stop: threading.Event, rows: list[tuple[float, float]],
               period: float = RSS_PERIOD_S) -> None:
    started = time.monotonic()
    while not stop.wait(period):
        mb = rss_mb(pid)
        if mb is None:
            return
        rows.append((time.monotonic() - started, mb))


def run(duration: float) -> dict:
    from rtbci.devices.simulate import SimulatedAmplifier

    RESULTS.mkdir(exist_ok=True)
    name, port = f"soak-meg-{int(time.time())}", free_port()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        broker = start_mosquitto(tmp, port)
        (tmp / "soak.toml").write_text(CONFIG.format(name=name, port=port,
                                                     record=tmp / "session"))
        amp = SimulatedAmplifier("meg306", name=name, seed=1, snr=1.0)
        amp.open()
        engine = subprocess.Popen([sys.executable, "-m", "rtbci", "-q", "run",
                                   str(tmp / "soak.toml"), "--duration", str(duration + 30),
                                   "--stats-json", str(tmp / "stats.json")])
        if not amp.wait_for_consumers(60):
            engine.kill()
            raise SystemExit("the engine did not subscribe to the stream within 60 s")
        rss, stop = [], threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(engine.pid, stop, rss))
        sampler.start()
        print(f"pushing 306 ch @ 1 kHz for {duration:g} s ...", flush=True)
        amp.run(duration)
        stop.set()
        sampler.join()
        print(f"pushed {amp.samples_pushed} samples and {len(amp.events)} markers; waiting "
              "for the engine to stop ...", flush=True)
        shutdown, done = [], threading.Event()
        peak = threading.Thread(target=sample_rss, args=(engine.pid, done, shutdown, 0.5))
        peak.start()
        returncode = engine.wait()
        done.set()
        peak.join()
        broker.terminate()
        broker.wait()
        if returncode:
            raise SystemExit(f"the engine failed (exit {returncode})")
        stats = json.loads((tmp / "stats.json").read_text())
    exit_peak = max((mb for _, mb in shutdown), default=None)
    return summarise(stats, rss, amp.samples_pushed, len(amp.events), duration, exit_peak)


def summarise(stats: dict, rss: list, pushed: int, markers: int, duration: float,
              exit_peak: float | None = None) -> dict:
    stream = stats["streams"]["meg"]
    sinks = stats["sinks"]
    mqtt = next(v for k, v in sinks.items() if k.startswith("mqtt"))
    record = next(v for k, v in sinks.items() if k.startswith("record"))
    results = sum(d["results"] for d in stats["decoders"].values())
    t, mb = np.array(rss).T if rss else (np.zeros(0), np.zeros(0))
    half = t >= t.max() / 2 if t.size else t.astype(bool)
    growth = float(mb[half][-1] - mb[half][0]) if half.sum() > 1 else float("nan")
    checks = {
        "no gaps": stream["gaps"] == 0,
        "no overflows": stream["overflows"] == 0 and record["overflows"] == 0,
        "samples received == pushed": stream["samples"] == pushed,
        "samples recorded == received": record["samples"]["meg"] == stream["samples"],
        "every marker received": stream["markers"] == markers,
        "every result delivered to MQTT": mqtt["delivered"] == results and mqtt["dropped"] == 0,
        "every result recorded": record["results"] == results,
        f"RSS growth over the second half < {RSS_GROWTH_LIMIT_MB:g} MB":
            growth < RSS_GROWTH_LIMIT_MB,
    }
    result = {
        "setup": "meg306 simulator (306 ch @ 1 kHz, 10 ms chunks) → LSL → rtbci run with 3 "
                 "decoders (bandpower 500 ms / 50 ms numpy; bandpower on stim markers; "
                 "bandpower 1 s / 100 ms onnxruntime) → mosquitto + session recorder; one "
                 "2-core machine",
        "duration_s": duration, "samples_pushed": pushed, "markers_pushed": markers,
        "stream": stream, "decoders": stats["decoders"], "mqtt": mqtt,
        "record": {k: v for k, v in record.items() if k != "path"},
        "rss_mb": {"first": float(mb[0]) if mb.size else None,
                   "last": float(mb[-1]) if mb.size else None,
                   "max": float(mb.max()) if mb.size else None,
                   "growth_second_half": round(growth, 2),
                   "shutdown_peak": exit_peak},
        "checks": checks, "passed": all(checks.values()),
    }
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(t, mb, result)
    return result


def plot(t: np.ndarray, mb: np.ndarray, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t / 60, mb, marker=".", linewidth=1)
    ax.set_xlabel("minutes")
    ax.set_ylabel("engine RSS (MB)")
    ax.set_ylim(0, max(mb.max() * 1.2, 1) if mb.size else 1)
    s = result["stream"]
    ax.set_title(f"soak, 306 ch @ 1 kHz: {s['samples']:,} samples, gaps {s['gaps']}, "
                 f"overflows {s['overflows']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "soak.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    args = parser.parse_args()
    result = run(args.duration)
    print(json.dumps(result, indent=2))
    if not result["passed"]:
        raise SystemExit("soak failed: " + ", ".join(k for k, v in result["checks"].items()
                                                     if not v))


if __name__ == "__main__":
    main()
