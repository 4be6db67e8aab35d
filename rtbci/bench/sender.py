"""The bench's amplifier: one process publishing ``streams`` LSL outlets, stamped at push.

Each stream: ``channels`` float32 channels at ``rate`` Hz, pushed as chunks every
``chunk`` samples; the chunk's last sample is stamped with ``pylsl.local_clock()`` at push
time and earlier ones are back-dated by one sample period each. Channel 0 holds the sample
index, the others noise. Runs until ``duration`` s pass or it is terminated.

Run: ``python -m rtbci.bench.sender --name NAME [--channels 64] [--rate 1000] [--chunk 10]``
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import pylsl


def outlets(name: str, n: int, channels: int, rate: float) -> list[pylsl.StreamOutlet]:
    """``n`` EEG outlets ``NAME`` (n = 1) or ``NAME-0 … NAME-(n-1)``."""
    names = [name] if n == 1 else [f"{name}-{i}" for i in range(n)]
    return [pylsl.StreamOutlet(stream_info(s, channels, rate), chunk_size=0, max_buffered=10)
            for s in names]


def stream_info(name: str, channels: int, rate: float) -> pylsl.StreamInfo:
    """EEG stream metadata with channel labels (``index``, ``EEG001`` …) in microvolts."""
    info = pylsl.StreamInfo(name, "EEG", channels, rate, pylsl.cf_float32, name)
    chans = info.desc().append_child("channels")
    for i in range(channels):
        ch = chans.append_child("channel")
        ch.append_child_value("label", "index" if i == 0 else f"EEG{i:03d}")
        ch.append_child_value("type", "EEG")
        ch.append_child_value("unit", "microvolts")
    return info


def send(name: str, channels: int = 64, rate: float = 1000.0, chunk: int = 10,
         streams: int = 1, duration: float = 3600.0) -> None:
    """Push chunks of ``chunk`` samples on time until ``duration`` s have passed."""
    outs = outlets(name, streams, channels, rate)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((64, chunk, channels)).astype(np.float32)  # reused blocks
    back = np.arange(chunk - 1, -1, -1) / rate  # (chunk,) s before the newest sample
    stamps = np.empty(chunk)
    period = chunk / rate
    start = time.perf_counter()
    k = 0
    while (due := start + k * period) < start + duration:
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        block = noise[k % len(noise)]
        block[:, 0] = np.arange(k * chunk, (k + 1) * chunk)
        now = pylsl.local_clock()
        np.subtract(now, back, out=stamps)
        for out in outs:
            out.push_chunk(block, stamps)
        k += 1


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--duration", type=float, default=3600.0)
    a = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        send(a.name, a.channels, a.rate, a.chunk, a.streams, a.duration)


if __name__ == "__main__":
    main()
