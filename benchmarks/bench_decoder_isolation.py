"""Decoder isolation: does a 30 ms decoder on the same device make a fast decoder late?

One engine in this process, a simulated 64 ch @ 1 kHz source over LSL, ``builtin:bandpower``
(500 ms window every 50 ms, numpy) measured twice: alone, then with a second decoder on the
same device that takes ``--slow-ms`` (30 ms) per window, every 47 ms (out of step with the
fast one, so its windows keep landing while the fast decoder's are due). Each decoder has its
own worker thread, so the fast decoder's engine-latency p99 should move by ≤ 1 ms.

The slow decoder does real work that releases the GIL, as inference does: ``numpy`` (a
single-threaded BLAS matmul loop on the CPU) or ``torch`` (matmuls on ``--device``, e.g.
cuda, on its own CUDA stream); ``sleep`` only waits.

Run:  python benchmarks/bench_decoder_isolation.py [--duration 60] [--slow numpy|torch|sleep]
      [--device cpu|cuda]
Writes benchmarks/results/decoder_isolation_WORK.json (WORK: the --slow kind).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the slow decoder uses one core, as one inference does

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from rtbci.models import Decoder, DecoderOutput  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODULE = Path(__file__).stem


class SlowDecoder(Decoder):
    """Takes ``ms`` milliseconds per window doing ``work`` (numpy, torch or sleep)."""

    kind = "embedding"

    def __init__(self, n_samples, n_channels, srate, ms=30.0, work="numpy", device="cpu"):
        self.n_samples, self.n_channels, self.output_size = n_samples, n_channels, 4
        self.ms, self.work, self.device = ms, work, device
        if work == "torch":
            import torch

            self._torch = torch
            self._a = torch.randn(512, 512, device=device)
            self._stream = torch.cuda.Stream(device) if device.startswith("cuda") else None
        else:
            self._a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)

    def __call__(self, window):
        end = time.perf_counter() + self.ms * 1e-3
        if self.work == "sleep":
            time.sleep(self.ms * 1e-3)
        while time.perf_counter() < end:
            if self.work == "numpy":
                self._a @ self._a
            elif self.work == "torch":
                self._torch_step()
            else:
                break
        return DecoderOutput(embedding=np.zeros(4, np.float32))

    def _torch_step(self):
        torch = self._torch
        stream = torch.cuda.stream(self._stream) if self._stream else None
        if stream is None:
            self._a @ self._a
            return
        with stream:
            self._a @ self._a
        self._stream.synchronize()

    def describe(self):
        return {"backend": self.work, "device": self.device, "precision": "fp32",
                "input": [self.n_samples, self.n_channels], "output": [4]}


def slow_decoder(n_samples, n_channels, srate, **options):
    return SlowDecoder(n_samples, n_channels, srate, **options)


def config(slow: dict | None, device: str) -> dict:
    fast = {"name": "fast", "model": "builtin:bandpower", "source": "eeg", "window_ms": 500,
            "every_ms": 50, "budget_ms": 10, "runtime": "numpy", "device": device}
    decoders = [fast]
    if slow is not None:
        decoders.append({"name": "slow", "model": f"python:{MODULE}:slow_decoder",
                         "source": "eeg", "window_ms": 500, "every_ms": 47, "budget_ms": 100,
                         "device": device, "options": slow})
    return {"engine": {"session": "bench"},
            "sources": [{"name": "eeg", "kind": "simulate",
                         "stream_name": f"isolation-{uuid.uuid4().hex[:8]}"}],
            "decoders": decoders}


def measure(slow: dict | None, device: str, duration: float) -> dict:
    """Run the engine for ``duration`` s; the fast decoder's engine latency and the stats."""
    from rtbci.config import parse_config
    from rtbci.engine import Engine
    from rtbci.sinks.base import Sink

    class Keep(Sink):
        kind = "keep"

        def __init__(self):
            self.rows = []

        def publish(self, result):
            self.rows.append((result.decoder, result.latency_ms))

    keep = Keep()
    engine = Engine(parse_config(config(slow, device)), sinks=[keep])
    stats = asyncio.run(engine.run(duration))
    fast = np.array([ms for name, ms in keep.rows if name == "fast"])
    fast = fast[len(fast) // 10:]  # leave out the start-up (decoders attaching, warm-up)
    if not fast.size:
        raise SystemExit("the fast decoder produced no result")
    return {"fast_engine_latency_ms": {"p50": round(float(np.percentile(fast, 50)), 3),
                                       "p99": round(float(np.percentile(fast, 99)), 3),
                                       "max": round(float(fast.max()), 3), "n": int(fast.size)},
            "stats": stats["decoders"]}


def run(duration: float, slow_ms: float, work: str, device: str) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))  # the slow decoder's python: module
    print(f"fast decoder alone, {duration:g} s ...", flush=True)
    alone = measure(None, device, duration)
    print(f"fast decoder with a {slow_ms:g} ms {work} decoder on {device}, {duration:g} s ...",
          flush=True)
    shared = measure({"ms": slow_ms, "work": work, "device": device}, device, duration)
    shift = (shared["fast_engine_latency_ms"]["p99"] - alone["fast_engine_latency_ms"]["p99"])
    result = {
        "setup": f"one engine, simulated 64 ch @ 1 kHz over LSL; fast = bandpower (numpy) every "
                 f"50 ms; slow = {slow_ms:g} ms of {work} work every 47 ms on {device}; "
                 f"first 10 % of results left out",
        "duration_s": duration,
        "alone": alone,
        "with_slow_decoder": shared,
        "p99_shift_ms": round(shift, 3),
        "goal": "p99 shift <= 1 ms",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"decoder_isolation_{work}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--slow-ms", type=float, default=30.0)
    parser.add_argument("--slow", choices=["numpy", "torch", "sleep"], default="numpy")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result = run(args.duration, args.slow_ms, args.slow, args.device)
    a, s = result["alone"], result["with_slow_decoder"]
    print(f"fast p99 alone {a['fast_engine_latency_ms']['p99']:.3f} ms, with the slow decoder "
          f"{s['fast_engine_latency_ms']['p99']:.3f} ms: shift {result['p99_shift_ms']:+.3f} ms "
          f"(goal <= 1 ms); slow decoder results {s['stats']['slow']['results']}, skipped "
          f"{s['stats']['slow']['skipped']}")


if __name__ == "__main__":
    main()
