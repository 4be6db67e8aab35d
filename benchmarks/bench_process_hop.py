"""The process hop of ``isolation = "process"`` against the floor of a bare pipe.

Two measurements, interleaved call by call so both see the same load, each one call every
``--gap-ms`` (as a decoder every 10 ms):

- ``hop``: a :class:`rtbci.scheduler.process.ProcessDecoder` running ``builtin:bandpower`` on
  64 ch × 500 samples; the hop is its call time less the decode in the worker (the decoder's
  own ``hop_ms``, as in ``--stats-json``);
- ``pipe``: a bare ``multiprocessing`` pipe round trip to a spawned child that echoes a few
  bytes: two process wake-ups, no work; what no pipe-based hop on this machine can beat.

Run:  python benchmarks/bench_process_hop.py [--calls 1500] [--gap-ms 10]
Writes benchmarks/results/process_hop.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import numpy as np

from rtbci.config import DecoderConfig
from rtbci.latency import summary
from rtbci.scheduler.process import ProcessDecoder
from rtbci.stream import StreamInfo

OUT = Path(__file__).parent / "results" / "process_hop.json"


def _echo(conn) -> None:
    """The bare pipe's child: send back what it receives until ``b"q"``."""
    while (message := conn.recv_bytes()) != b"q":
        conn.send_bytes(message)


def _band_power_in_a_process() -> ProcessDecoder:
    """``builtin:bandpower`` on 64 ch × 500 samples in its own worker process, started."""
    config = DecoderConfig(name="bp", model="builtin:bandpower", source="eeg", window_ms=500,
                           every_ms=10, isolation="process")
    names = tuple(f"ch{i}" for i in range(64))
    info = StreamInfo("eeg", "EEG", "bench", 1000.0, names, ("eeg",) * 64, ("uV",) * 64)
    return ProcessDecoder(config, info, "decoders[0]").start()


def measure(calls: int, gap_s: float) -> tuple[dict, dict]:
    """The process hop and the bare pipe's round trip (ms summaries), interleaved call by
    call so both see the same load; ``gap_s`` of sleep before each."""
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_echo, args=(theirs,), daemon=True)
    child.start()
    decoder = _band_power_in_a_process()
    try:
        window = decoder.input_buffer
        window[:] = np.random.default_rng(0).standard_normal(window.shape)
        for _ in range(10):  # warm-up: the echo child starting (the decoder warmed up in start)
            ours.send_bytes(b"call")
            ours.recv_bytes()
        pipe = np.empty(calls)
        for i in range(calls):
            time.sleep(gap_s)
            decoder(window)
            time.sleep(gap_s)
            started = time.perf_counter()
            ours.send_bytes(b"call")
            ours.recv_bytes()
            pipe[i] = time.perf_counter() - started
        return decoder.hop.summary_ms(), summary(pipe * 1e3)
    finally:
        decoder.close()
        ours.send_bytes(b"q")
        child.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    gap_s = args.gap_ms * 1e-3
    load = os.getloadavg()[0]
    print(f"{args.calls} process hops and bare pipe round trips, interleaved, one every "
          f"{args.gap_ms:g} ms …", flush=True)
    hop, pipe = measure(args.calls, gap_s)
    for name, s in (("process hop", hop), ("bare pipe round trip", pipe)):
        print(f"  {name}: p50 / p99 / max {s['p50']:.3f} / {s['p99']:.3f} / {s['max']:.3f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M"), "calls": args.calls, "gap_ms": args.gap_ms,
        "machine": {"cpus": os.cpu_count(), "loadavg_1min_at_start": load,
                    "python": platform.python_version()},
        "hop_ms": hop, "pipe_round_trip_ms": pipe}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
