"""The ``rtbci bench`` command: rows interleaved against one sender, then sweeps, the report."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from rtbci.bench import gpu, report, run, sweeps, timeflux
from rtbci.errors import RtbciError
from rtbci.latency import summary

ROWS = ("rtbci", "rtbci-source", "rtbci-mqtt", "pylsl-naive", "mne-lsl", "timeflux",
        "timeflux-rate")
EXTRA_ROWS = ("null",)  # on request only: reads the stream, sends nothing
SETTINGS = {
    "rtbci": "rtbci engine with its defaults: LSL source (clocksync), builtin:bandpower "
             "(runtime auto, placement auto, isolation thread), LSL result sink",
    "rtbci-source": "tuned: the same with placement = source, runtime = numpy (the decoder on "
                    "its source's acquisition thread)",
    "rtbci-mqtt": "rtbci engine with its defaults, MQTT sink (QoS 0) → mosquitto "
                  "(set_tcp_nodelay) → paho subscriber",
    "pylsl-naive": "pylsl pull_chunk(timeout=0.2, min_samples=1) + the same numpy band power, "
                   "LSL outlet",
    "mne-lsl": "mne-lsl StreamLSL (1 ms acquisition thread, clocksync), polled every 1 ms, "
               "get_data(0.5 s) + the same band power, LSL outlet",
    "timeflux": "Timeflux 0.17.2 graph, rate 0: lsl.Receive → window.Slide → log band power "
                "node → lsl.Send (own virtualenv, pylsl 1.16.2 + liblsl 1.18; BLAS 1 thread)",
    "timeflux-rate": f"the same Timeflux graph at rate {timeflux.GRAPH_RATE} (Hz)",
    "null": "reads the stream like pylsl-naive, sends nothing (checks loss reporting)",
}
QUICK = {"duration": 4.0, "repeats": 1}
FULL = {"duration": 12.0, "repeats": 3}


def missing(row: str) -> str | None:
    """Why ``row`` cannot run here (None if it can)."""
    if row == "rtbci-mqtt" and run.mosquitto_binary() is None:
        return "not installed (mosquitto)"
    if row == "mne-lsl" and importlib.util.find_spec("mne_lsl") is None:
        return "not installed (pip install 'rtbci[peers]')"
    if row.startswith("timeflux") and timeflux.python() is None:
        return f"not installed (rtbci bench --setup-timeflux builds {timeflux.venv()})"
    return None


def parse_peers(text: str | None) -> list[str]:
    if not text:
        return list(ROWS)
    rows = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS + EXTRA_ROWS]
    if unknown:
        raise RtbciError(f"--peers: unknown row {unknown[0]!r} (known: "
                         f"{', '.join(ROWS + EXTRA_ROWS)})")
    return rows


def machine() -> dict:
    """What the figures were measured on."""
    import psutil
    import pylsl

    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f
                   if line.startswith("model name"))
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "pylsl": pylsl.__version__, "liblsl": pylsl.library_version()}
    if importlib.util.find_spec("mne_lsl"):
        from importlib.metadata import version

        versions["mne_lsl"] = version("mne_lsl")
    if timeflux.python():
        versions["timeflux"] = "0.17.2 (own virtualenv)"
    return {"cpu": cpu, "cores": psutil.cpu_count(), "platform": platform.platform(),
            "load_average": [round(x, 2) for x in psutil.getloadavg()], "versions": versions,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def row_figures(system: str, figures: dict) -> dict:
    return {"system": system, "settings": SETTINGS.get(system, system),
            "results_per_s": round(figures["results_per_s"], 2),
            "latency_ms": summary(figures["latencies"]),
            "cpu_percent": round(figures["cpu_percent"], 1), "lost": figures["lost"],
            "expected": figures["expected"], "received": figures["received"]}


def compare(rows: list[str], duration: float, repeats: int, workdir: Path) -> tuple:
    """Every row, interleaved, ``repeats`` times, against one sender; rows and raw data."""
    sender = run.Sender()
    runnable = [r for r in rows if missing(r) is None]
    per_row = 10.0 + duration  # start-up, warm-up, measuring, stop
    sender_proc = sender.start(repeats * len(runnable) * per_row * 2 + 60)
    broker, port = None, None
    if "rtbci-mqtt" in runnable:
        port = run.free_port()
        broker = run.start_mosquitto(workdir, port)
    segments: dict[str, list] = {r: [] for r in runnable}
    try:
        for rep in range(repeats):
            for row in runnable:
                print(f"[{rep + 1}/{repeats}] {row}: {duration:g} s …", flush=True)
                segments[row].append(run.run_segment(row, sender, duration,
                                                 mqtt_port=port if row == "rtbci-mqtt" else None))
    finally:
        for proc in (sender_proc, broker):
            if proc is not None:
                proc.terminate()
                proc.wait()
    out, raw = [], {}
    for row in rows:
        why = missing(row)
        if why:
            out.append({"system": row, "settings": SETTINGS[row],
                        "status": why, "results_per_s": None, "latency_ms": None,
                        "cpu_percent": None, "lost": None})
            continue
        figures = run.latencies(segments[row])
        out.append(row_figures(row, figures))
        raw[row] = figures["latencies"]
    stage = {r: run.stages(segments[r]) for r in ("rtbci", "rtbci-mqtt") if r in segments}
    return out, raw, {r: s for r, s in stage.items() if s is not None}


def run_gpu(duration: float, workdir: Path) -> list[dict]:
    """GPU rows (empty without CUDA)."""
    if not gpu.cuda_available():
        return []
    rows = []
    for family in gpu.FAMILIES:
        for runtime in gpu.runtimes():
            name = f"rtbci-{runtime}:{family}"
            print(f"{name}: {duration:g} s …", flush=True)
            seg = sweeps.run_config(gpu.config(family, runtime, "{out}"), duration, workdir)
            rows.append(row_figures(name, run.latencies([seg], every_s=gpu.EVERY_S)))
    return rows


def bench(out: Path, quick: bool = False, peers: str | None = None,
          duration: float | None = None) -> dict:
    """Run the bench; write ``out``/bench.json, bench.md and the PNGs; return the document."""
    rows = parse_peers(peers)
    mode = QUICK if quick else FULL
    duration = duration or mode["duration"]
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    doc = {"mode": "quick" if quick else "full", "duration_s": duration,
           "repeats": mode["repeats"], "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="rtbci-bench-") as tmp:
        doc["rows"], raw, stage = compare(rows, duration, mode["repeats"], Path(tmp))
        doc["stages_ms"] = {r: report.stage_summary(s) for r, s in stage.items()}
        doc["gpu"] = gpu.status_line() or "CUDA available"
        doc["gpu_rows"] = run_gpu(duration, Path(tmp))
        if not quick:
            doc["sweeps"] = sweeps.run_all(sweeps.SWEEP_S, Path(tmp))
    print(doc["gpu"], flush=True)
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    report.write(out, doc, raw, stage)
    return doc


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="rtbci bench")
    p.description = ("Run the same job (64 ch @ 1 kHz in 10-sample chunks from one sender "
                     "process; log band power, 3 bands × 64 ch, over 500 ms every 50 ms; result "
                     "out) through rtbci and its peers, interleaved, with a separate receiver "
                     "stamping every result. Writes DIR/bench.json, bench.md and PNGs. "
                     "Full run (default, ≈ 16 min): 3 interleaved repeats + the stage breakdown "
                     "+ scaling sweeps; --quick (≈ 70 s): 1 repeat, no sweeps. docs/latency.md "
                     "explains the method.")
    p.add_argument("--quick", action="store_true", help="one short repeat, no sweeps (≈ 70 s)")
    p.add_argument("--out", type=Path, default=Path("bench-results"),
                   help="output folder (default ./bench-results)")
    p.add_argument("--peers", help=f"comma-separated rows (default all: {','.join(ROWS)}; "
                                   "also 'null', a processor that sends nothing)")
    p.add_argument("--duration", type=float,
                   help="seconds measured per row and repeat (default 12; --quick 4)")
    p.add_argument("--loopback", action="store_true",
                   help="instead: measure the software part of a hardware loopback (a second "
                        "process plays the amplifier and writes a TTL back; docs/latency.md)")
    p.add_argument("--setup-timeflux", action="store_true",
                   help="build the Timeflux row's own virtualenv (~/.cache/rtbci/peers/"
                        "timeflux, or $RTBCI_TIMEFLUX_VENV) and exit")
    return p


def run_args(args: argparse.Namespace) -> int:
    """Run what the parsed ``rtbci bench`` arguments ask for."""
    if args.duration is not None and args.duration <= 0:
        raise RtbciError("--duration: give a number of seconds > 0")
    if args.out.exists() and not args.out.is_dir():
        raise RtbciError(f"--out: {args.out} is a file; give a folder")
    if args.setup_timeflux:
        try:
            timeflux.setup()
        except (subprocess.CalledProcessError, OSError) as exc:
            raise RtbciError(f"--setup-timeflux: {exc}") from None
        return 0
    if args.loopback:
        from rtbci.bench import loopback

        loopback.run(args.out, args.duration or (5.0 if args.quick else 30.0))
        return 0
    doc = bench(args.out, args.quick, args.peers, args.duration)
    print(report.table(doc))
    print(f"wrote {args.out / 'bench.json'}, bench.md and PNGs ({doc['elapsed_s']:g} s)")
    return 0
