"""Engine and end-to-end latency: amplifier → LSL → engine → mosquitto → MQTT subscriber.

Four processes, as in a lab: ``rtbci simulate`` (64 ch @ 1 kHz), ``rtbci run`` with
``builtin:bandpower`` every 50 ms (20 Hz) and an MQTT sink, mosquitto with
``set_tcp_nodelay true``, and a subscriber process (this script with ``--subscribe``) that
records every result's receive time on the LSL clock.

Run:  python benchmarks/bench_engine_latency.py [--duration 60]
Writes benchmarks/results/engine_latency.json and engine_latency.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rtbci.bench.run import free_port, start_mosquitto  # loopback, TCP_NODELAY

RESULTS = Path(__file__).parent / "results"

CONFIG = """
[engine]
session = "bench"
[[sources]]
name = "eeg"
kind = "lsl"
stream = {{ name = "{name}" }}
[[decoders]]
name = "bp"
model = "builtin:bandpower"
source = "eeg"
window_ms = 500
every_ms = 50
budget_ms = 10
runtime = "numpy"
[[sinks]]
kind = "mqtt"
url = "mqtt://127.0.0.1:{port}"
qos = 0
"""


async def subscribe(port: int, duration: float, out: Path) -> None:
    """Record (receive time, window_end, t_arrived, t_published, seq) of every result."""
    import aiomqtt
    import pylsl

    from rtbci.messages import decode

    rows = []
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    async with aiomqtt.Client("127.0.0.1", port, socket_options=nodelay) as client:
        await client.subscribe("rtbci/bench/bp")
        try:
            async with asyncio.timeout(duration):
                async for msg in client.messages:
                    now = pylsl.local_clock()
                    m = decode(msg.payload)
                    rows.append((now, m["window_end"], m["t_arrived"], m["t_published"],
                                 m["seq"]))
        except TimeoutError:
            pass
    np.save(out, np.array(rows))


def percentiles(ms: np.ndarray) -> dict:
    return {"p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3), "max": round(float(ms.max()), 3),
            "n": int(ms.size)}


def run(duration: float) -> dict:
    RESULTS.mkdir(exist_ok=True)
    name, port = f"bench-eeg-{int(time.time())}", free_port()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        broker = start_mosquitto(tmp, port)
        (tmp / "bench.toml").write_text(CONFIG.format(name=name, port=port))
        rtbci = [sys.executable, "-m", "rtbci", "-q"]
        sim = subprocess.Popen([*rtbci, "simulate", "--name", name, "--duration",
                                str(duration + 10)], stdout=subprocess.DEVNULL)
        sub = subprocess.Popen([sys.executable, __file__, "--subscribe", str(port),
                                "--duration", str(duration + 3), "--out", str(tmp / "rx.npy")])
        print(f"engine running for {duration:g} s (64 ch @ 1 kHz, bandpower at 20 Hz) ...",
              flush=True)
        engine = subprocess.run([*rtbci, "run", str(tmp / "bench.toml"), "--duration",
                                 str(duration), "--stats-json", str(tmp / "stats.json")])
        sub.wait()
        for proc in (sim, broker):
            proc.terminate()
            proc.wait()
        if engine.returncode:
            raise SystemExit("the engine failed")
        rows = np.load(tmp / "rx.npy")
        stats = json.loads((tmp / "stats.json").read_text())
    received, window_end, arrived, published, seq = rows.T
    engine_ms = (published - arrived) * 1e3
    e2e_ms = (received - window_end) * 1e3
    broker_ms = (received - published) * 1e3
    result = {
        "setup": "rtbci simulate (64 ch @ 1 kHz, 10 ms chunks) → LSL → rtbci run (bandpower, "
                 "500 ms window every 50 ms) → mosquitto (set_tcp_nodelay) → aiomqtt "
                 "subscriber process; QoS 0; all on one 2-core machine",
        "duration_s": duration,
        "engine_latency_ms": percentiles(engine_ms),
        "publish_to_subscriber_ms": percentiles(broker_ms),
        "end_to_end_ms": percentiles(e2e_ms),
        "results_received": int(len(rows)),
        "engine_stats": stats["decoders"]["bp"],
        "stream_stats": stats["streams"]["eeg"],
        "lost_in_transit": int(stats["decoders"]["bp"]["results"] - len(rows)),
    }
    (RESULTS / "engine_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(engine_ms, broker_ms, e2e_ms)
    return result


def plot(engine_ms, broker_ms, e2e_ms) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.logspace(-1.3, 2, 80)
    for ms, label in [(engine_ms, "engine (last sample arrived → published)"),
                      (broker_ms, "published → subscriber received"),
                      (e2e_ms, "end to end (last sample's timestamp → received)")]:
        ax.hist(ms, bins=bins, histtype="step", linewidth=1.5,
                label=f"{label}: p50 {np.percentile(ms, 50):.2f} / p99 "
                      f"{np.percentile(ms, 99):.2f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("results")
    ax.set_title("bandpower at 20 Hz on 64 ch @ 1 kHz, via mosquitto")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "engine_latency.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--subscribe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscribe:
        asyncio.run(subscribe(args.subscribe, args.duration, args.out))
        return
    print(json.dumps(run(args.duration), indent=2))


if __name__ == "__main__":
    main()
