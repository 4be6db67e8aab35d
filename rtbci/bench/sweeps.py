"""Scaling sweeps of rtbci (full run only): channels, streams, decoders, rates, a fast
decoder next to a 30 ms one, and where the decoders run. Each point runs the ``rtbci`` row
(LSL sink; band power on the source's thread unless the point says ``own``) against its own
sender; rates keep 10 ms chunks (``rate / 100`` samples), as amplifiers do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtbci.bench.run import Sender, latencies, run_segment
from rtbci.latency import summary

# sweep → [(label, sender settings, decoders per stream, slow decoder ms[, variant])];
# variant: the rtbci row's thread ("source", the default, or "own"), or "pylsl-naive"
POINTS: dict[str, list[tuple]] = {
    "channels": [(f"{c} ch", {"channels": c}, 1, 0.0) for c in (64, 306, 1024, 4096)],
    "streams": [(f"{s} stream{'s' * (s > 1)}", {"streams": s}, 1, 0.0) for s in (1, 4, 16)],
    "decoders": [(f"{d} decoder{'s' * (d > 1)}", {}, d, 0.0) for d in (1, 8, 32)]
    + [("306 ch × 3 decoders", {"channels": 306}, 3, 0.0)],
    "rates": [(f"{r // 1000} kHz", {"rate": float(r), "chunk": r // 100}, 1, 0.0)
              for r in (1000, 2000, 10000, 30000)],
    "fast next to slow": [("fast decoder alone", {}, 1, 0.0),
                          ("fast decoder + 30 ms decoder", {}, 1, 30.0)],
    "thread": [("64 ch, thread = source", {}, 1, 0.0, "source"),
               ("64 ch, thread = own", {}, 1, 0.0, "own"),
               ("306 ch × 3 decoders, thread = source", {"channels": 306}, 3, 0.0, "source"),
               ("306 ch × 3 decoders, thread = own", {"channels": 306}, 3, 0.0, "own"),
               ("306 ch × 3 band powers, pylsl-naive (LSL + compute only)", {"channels": 306},
                3, 0.0, "pylsl-naive")],
}
LOSS_AT = 0.01  # a point saturates when more than 1 % of its results are lost


def run_point(settings: dict, decoders: int, slow_ms: float, duration: float,
              variant: str = "source") -> dict:
    """One sweep point: figures of the fast decoders (all but the slow one)."""
    sender = Sender(**settings)
    proc = sender.start(duration + 90)
    row, thread = ("pylsl-naive", "source") if variant == "pylsl-naive" else ("rtbci", variant)
    try:
        seg = run_segment(row, sender, duration, decoders=decoders, slow_ms=slow_ms,
                          thread=thread)
    finally:
        proc.terminate()
        proc.wait()
    fast = list(range(sender.streams * decoders))  # the slow outlet sorts last
    return figures(latencies([seg], fast), seg)


def figures(f: dict, seg) -> dict:
    ms = summary(f["latencies"])
    return {"p50_ms": ms["p50"], "p99_ms": ms["p99"], "cpu_percent": round(f["cpu_percent"], 1),
            "lost": f["lost"], "expected": f["expected"],
            "loss_fraction": round(f["lost"] / f["expected"], 4) if f["expected"] else None,
            "overhead_p99_ms": overhead_p99(seg), "engine_p99_ms": engine_p99(seg)}


def overhead_p99(seg) -> float | None:
    """p99 of (end-to-end − inference) over the first decoder's results: the engine's share."""
    from rtbci.bench.run import stages

    s = stages([seg])
    if s is None:
        return None
    total = sum(s.values()) - s["inference"]
    return summary(total)["p99"]


def engine_p99(seg) -> float | None:
    """p99 of the engine's own share, over every fast decoder's results: ``t_arrived`` →
    ``t_published`` minus the decoder's inference (ring, scheduling, waiting for the decoders
    ahead of it on its thread or cores, hand-off; no LSL transport on either side)."""
    rows = [r for r in seg.timing or () if r[0] != "slow" and seg.t0 <= r[2] < seg.t1]
    if not rows:
        return None
    arrived, _, started, finished, published = np.array([r[3:] for r in rows]).T
    return summary(((published - arrived) - (finished - started)) * 1e3)["p99"]


def run_config(config: dict, duration: float, workdir: Path):
    """A segment of the rtbci row on an engine ``config`` that brings its own source."""
    return run_segment("rtbci", Sender(), duration, config=config)


def run_all(duration: float, workdir: Path, points: dict | None = None) -> dict:
    """Every sweep: ``{sweep: {"points": [{"label", …figures}], "saturates_at": label|None}}``."""
    out = {}
    for sweep, pts in (points or POINTS).items():
        rows = []
        for label, settings, decoders, slow_ms, *thread in pts:
            print(f"sweep {sweep}: {label}, {duration:g} s …", flush=True)
            rows.append({"label": label,
                         **run_point(settings, decoders, slow_ms, duration, *thread)})
        lossy = [r["label"] for r in rows
                 if r["loss_fraction"] is None or r["loss_fraction"] > LOSS_AT]
        out[sweep] = {"points": rows, "saturates_at": lossy[0] if lossy else None}
    return out
