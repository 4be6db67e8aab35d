"""Frame time of the display's Traces panel (``rtbci.gui``), offscreen.

For 64 channels (``eeg64``) and 306 channels (``meg306``), 10 s shown at 1 kHz, a
:class:`~rtbci.gui.traces.TraceView` of the size it has in the default 1600 × 1000 window
draws the simulator's signal (with a marker every 1.5 s). Each frame, as in the live display:
the samples of one frame period (1 kHz / 30 fps = 33 samples) are written to the ring buffer,
then the view reads and reduces the new samples (min/max bins), rasterises the visible
traces into its image (:mod:`rtbci.gui.raster`), and Qt paints the scene into the offscreen
backing store (``processEvents``; a ``QGraphicsView`` paints there, not in ``repaint``). The
wall-clock time of refresh + paint is one frame; the GUI thread's CPU time for it
(``time.thread_time``) is recorded too, as it is less sensitive to other load on the machine.

Prints a markdown table and writes ``benchmarks/results/gui_frame_time.json`` and
``benchmarks/results/gui_frame_time.png`` (frame-time distributions, and a screenshot of the
306-channel view in ``gui_traces_306.png``).

Run: ``QT_QPA_PLATFORM=offscreen python benchmarks/bench_gui.py``. Results: benchmarks/README.md,
"Display frame time".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pyqtgraph as pg  # noqa: E402
from PySide6 import QtWidgets  # noqa: E402

from rtbci.devices.simulate import SignalModel, get_profile, stream_info  # noqa: E402
from rtbci.gui.feeds import SignalFeed  # noqa: E402
from rtbci.gui.traces import TraceView  # noqa: E402
from rtbci.gui.window import ensure_app  # noqa: E402
from rtbci.ringbuffer import RingBuffer  # noqa: E402

RESULTS = Path(__file__).with_name("results")
PROFILES = {64: "eeg64", 306: "meg306"}
VIEW_SIZE = (1010, 930)  # px: a little larger than the Traces panel in the default window
FPS = 30


def make_view(n_channels: int, seconds: float) -> tuple[TraceView, SignalFeed, SignalModel]:
    """A TraceView on a (never started) SignalFeed whose ring holds ``2 × seconds`` of signal."""
    profile = get_profile(PROFILES[n_channels])
    info = stream_info(profile, f"bench{n_channels}", f"bench{n_channels}")
    feed = SignalFeed(info.name, buffer_seconds=2 * seconds, markers="")
    feed.info, feed.state = info, "streaming"
    feed.ring = RingBuffer(round(2 * seconds * info.srate), info.n_channels, srate=info.srate)
    model = SignalModel(profile, seed=1, snr=1.0)
    view = TraceView(feed, seconds)
    view.resize(*VIEW_SIZE)
    view.show()
    return view, feed, model


def push(feed: SignalFeed, model: SignalModel, n: int) -> None:
    """Write the next ``n`` simulated samples (and their markers) into the feed."""
    srate = feed.info.srate
    first = feed.ring.count
    data, events = model.next(n)
    stamps = (first + np.arange(n)) / srate
    feed.ring.write(data, stamps)
    for sample, label in events:
        feed.markers.append((sample / srate, f"stim/{label}"))


def run_case(app, n_channels: int, seconds: float, frames: int) -> tuple[dict, TraceView]:
    """Time ``frames`` frames; return the figures and the view (for a screenshot)."""
    view, feed, model = make_view(n_channels, seconds)
    srate = feed.info.srate
    push(feed, model, round(seconds * srate))  # a full span before timing
    per_frame = round(srate / FPS)
    times, cpu = np.empty(frames), np.empty(frames)
    for i in range(-10, frames):  # 10 warm-up frames
        push(feed, model, per_frame)
        t0, c0 = time.perf_counter(), time.thread_time()
        view.refresh()
        app.processEvents()  # Qt paints the changed scene here (QWidget.repaint would not)
        elapsed, used = time.perf_counter() - t0, time.thread_time() - c0
        if i >= 0:
            times[i], cpu[i] = elapsed, used
    ms, cpu_ms = times * 1e3, cpu * 1e3
    figures = {"channels": n_channels, "seconds": seconds, "srate": srate, "frames": frames,
               "view_px": list(VIEW_SIZE), "raster_px": list(view.raster.shape[::-1]),
               "samples_per_bin": view.frame.k,
               "frame_ms": {"p50": float(np.percentile(ms, 50)),
                            "p99": float(np.percentile(ms, 99)), "max": float(ms.max()),
                            "mean": float(ms.mean())},
               "cpu_ms": {"p50": float(np.percentile(cpu_ms, 50)),
                          "p99": float(np.percentile(cpu_ms, 99))},
               "fps_at_p50": float(1e3 / np.percentile(ms, 50)),
               "fps_at_p99": float(1e3 / np.percentile(ms, 99)),
               "frame_ms_all": [round(float(v), 3) for v in ms],
               "cpu_ms_all": [round(float(v), 3) for v in cpu_ms]}
    return figures, view


def plot(results: list[dict], path: Path) -> None:
    """Frame-time distributions of each case, as a PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=120)
    for case, colour in zip(results, ("tab:blue", "tab:orange")):
        ms, cpu = np.sort(case["frame_ms_all"]), np.sort(case["cpu_ms_all"])
        frac = np.linspace(0, 1, len(ms))
        ax.plot(ms, frac, color=colour, label=f"{case['channels']} ch × {case['seconds']:g} s "
                f"@ {case['srate']:g} Hz, wall (p50 {case['frame_ms']['p50']:.1f} ms, "
                f"p99 {case['frame_ms']['p99']:.1f} ms)")
        ax.plot(cpu, frac, color=colour, linestyle=":", label=f"{case['channels']} ch, GUI "
                f"thread CPU (p50 {case['cpu_ms']['p50']:.1f}, p99 {case['cpu_ms']['p99']:.1f})")
    ax.axvline(1e3 / FPS, color="tab:red", linestyle="--", label=f"{FPS} fps budget")
    ax.set_xlabel("frame time (ms): read + min/max + raster + paint")
    ax.set_ylabel("fraction of frames")
    ax.set_title("rtbci display: Traces frame time (offscreen)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="timed frames per case")
    parser.add_argument("--seconds", type=float, default=10.0, help="span shown (s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args()
    load_before = os.getloadavg()
    app = ensure_app()
    pg.setConfigOptions(antialias=False)
    results = []
    for n_channels in PROFILES:
        figures, view = run_case(app, n_channels, args.seconds, args.frames)
        results.append(figures)
        if n_channels == 306:
            view.grab().save(str(args.out / "gui_traces_306.png"))
        view.close()
        QtWidgets.QApplication.processEvents()
    print("| channels | span | image px | frame p50 ms | frame p99 ms | fps (p50) | fps (p99) "
          "| CPU p50 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        f = r["frame_ms"]
        print(f"| {r['channels']} | {r['seconds']:g} s @ {r['srate']:g} Hz | "
              f"{r['raster_px'][0]} × {r['raster_px'][1]} | {f['p50']:.2f} | {f['p99']:.2f} | "
              f"{r['fps_at_p50']:.0f} | {r['fps_at_p99']:.0f} | {r['cpu_ms']['p50']:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"benchmark": "gui_frame_time", "date": datetime.now(UTC).isoformat(),
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "load_average_before": load_before,
                            "load_average_after": os.getloadavg(),
                            "platform": platform.platform(),
                            "qt_platform": os.environ.get("QT_QPA_PLATFORM")},
                "results": results}
    (args.out / "gui_frame_time.json").write_text(json.dumps(document, indent=1) + "\n")
    plot(results, args.out / "gui_frame_time.png")


if __name__ == "__main__":
    main()
