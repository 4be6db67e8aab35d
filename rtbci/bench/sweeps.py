"""Scaling sweeps of rtbci (full run only): channels, streams, decoders, rates, a fast
decoder next to a 30 ms one, and where the decoders run. Each point runs the ``rtbci`` row
(LSL sink; the engine's defaults unless the point names a placement,
``rtbci.bench.peers.PLACEMENTS``) against its own sender, for ``SWEEP_S`` seconds with the
band power every ``SWEEP_EVERY_MS`` ms: at least ~1,000 results per decoder for its p99 (each
point prints its count); rates keep 10 ms chunks (``rate / 100`` samples), as amplifiers do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtbci.bench.peers import EVERY_S
from rtbci.bench.run import Sender, latencies, run_segment
from rtbci.latency import summary

SWEEP_S = 11.0  # seconds measured per point
SWEEP_EVERY_MS = 10.0  # the band power's period in the sweeps: 100 results/s per decoder
BRAND = {"channels": 1024, "rate": 30000.0, "chunk": 30}  # 1,024 ch × 30 kHz in 1 ms chunks
# its decoder: band power in 300–1,000 / 1,000–3,000 / 3,000–6,000 Hz over 10 ms windows
SPIKE_BAND = {"window_ms": 10, "options": {"bands": [[300, 1000], [1000, 3000], [3000, 6000]]}}
# sweep → [(label, sender settings, decoders per stream, slow decoder ms[, placement[,
# band-power keys]])]; placement: a key of PLACEMENTS ("defaults" if left out), or
# "pylsl-naive" (that peer instead of rtbci)
POINTS: dict[str, list[tuple]] = {
    "channels": [(f"{c} ch", {"channels": c}, 1, 0.0) for c in (64, 306, 1024, 4096)],
    "streams": [(f"{s} stream{'s' * (s > 1)}", {"streams": s}, 1, 0.0) for s in (1, 4, 16)],
    "decoders": [(f"{d} decoder{'s' * (d > 1)}", {}, d, 0.0) for d in (1, 8, 32)]
    + [("306 ch × 3 decoders", {"channels": 306}, 3, 0.0)],
    "rates": [(f"{r // 1000} kHz", {"rate": float(r), "chunk": r // 100}, 1, 0.0)
              for r in (1000, 2000, 10000, 30000)],
    "fast next to slow": [("fast decoder alone", {}, 1, 0.0),
                          ("fast decoder + 30 ms decoder (a thread)", {}, 1, 30.0),
                          ("fast decoder + 30 ms decoder in its own process", {}, 1, 30.0,
                           "slow-process"),
                          ("fast decoder + 30 ms decoder in its own process, nice 10", {}, 1,
                           30.0, "slow-process-nice"),
                          ("fast decoder + 30 ms decoder in its own process, nice 19, on the "
                           "last core", {}, 1, 30.0, "slow-process-pinned")],
    "placement": [("64 ch, defaults", {}, 1, 0.0, "defaults"),
                  ("64 ch, placement = own, runtime = numpy", {}, 1, 0.0, "own"),
                  ("64 ch, placement = source, runtime = numpy", {}, 1, 0.0, "source"),
                  ("64 ch, isolation = process", {}, 1, 0.0, "process"),
                  ("306 ch, defaults (0.5 ms GIL switch interval)", {"channels": 306}, 1,
                   0.0, "defaults"),
                  ("306 ch, Python's 5 ms GIL switch interval", {"channels": 306}, 1, 0.0,
                   "python-switch"),
                  ("306 ch × 3 decoders, defaults", {"channels": 306}, 3, 0.0, "defaults"),
                  ("306 ch × 3 decoders, placement = source", {"channels": 306}, 3, 0.0,
                   "source"),
                  ("306 ch × 3 band powers, pylsl-naive (LSL + compute only)",
                   {"channels": 306}, 3, 0.0, "pylsl-naive"),
                  ("BRAND: 1,024 ch × 30 kHz in 1 ms chunks, spike-band power over 10 ms, "
                   "process", BRAND, 1, 0.0, "process", SPIKE_BAND)],
}
LOSS_AT = 0.01  # a point saturates when more than 1 % of its results are lost


def run_point(settings: dict, decoders: int, slow_ms: float, duration: float,
              placement: str = "defaults", decoder: dict | None = None) -> dict:
    """One sweep point: figures of the fast decoders (all but the slow one)."""
    sender = Sender(**settings)
    proc = sender.start(duration + 90)
    row = "pylsl-naive" if placement == "pylsl-naive" else "rtbci"
    try:
        seg = run_segment(row, sender, duration, decoders=decoders, slow_ms=slow_ms,
                          placement="defaults" if row != "rtbci" else placement,
                          decoder={"every_ms": SWEEP_EVERY_MS, **(decoder or {})})
    finally:
        proc.terminate()
        proc.wait()
    fast = list(range(sender.streams * decoders))  # the slow outlet sorts last
    every_s = SWEEP_EVERY_MS * 1e-3 if row == "rtbci" else EVERY_S  # the peer's own period
    return figures(latencies([seg], fast, every_s), seg)


def figures(f: dict, seg) -> dict:
    ms = summary(f["latencies"])
    return {"results": int(len(f["latencies"])), "p50_ms": ms["p50"], "p99_ms": ms["p99"],
            "hop_p99_ms": hop_p99(seg), "cpu_percent": round(f["cpu_percent"], 1),
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


def hop_p99(seg) -> float | None:
    """The worst p99 of the process hop over the fast decoders in worker processes (their
    ``worker.hop_ms`` in the engine's statistics: the window handed to the worker → its result
    back, less the decode itself), None when none runs in one."""
    hops = [d["worker"]["hop_ms"]["p99"] for name, d in
            ((seg.stats or {}).get("decoders") or {}).items()
            if name != "slow" and "worker" in d and d["worker"]["hop_ms"].get("p99") is not None]
    return max(hops) if hops else None


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
        for label, settings, decoders, slow_ms, *placement in pts:
            print(f"sweep {sweep}: {label}, {duration:g} s …", flush=True)
            rows.append({"label": label,
                         **run_point(settings, decoders, slow_ms, duration, *placement)})
            point = rows[-1]
            hop = f", process hop p99 {point['hop_p99_ms']:.3f} ms" \
                if point["hop_p99_ms"] is not None else ""
            p99 = "–" if point["p99_ms"] is None else f"{point['p99_ms']:.2f}"
            print(f"  {point['results']} results, p99 {p99} ms, lost {point['lost']} of "
                  f"{point['expected']}{hop}", flush=True)
        lossy = [r["label"] for r in rows
                 if r["loss_fraction"] is None or r["loss_fraction"] > LOSS_AT]
        out[sweep] = {"points": rows, "saturates_at": lossy[0] if lossy else None}
    return out
