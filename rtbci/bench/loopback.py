"""``rtbci bench --loopback``: the software part of a BCI2000-style hardware loopback.

A second process plays the amplifier: it publishes 64 EEG channels + a ``TTL`` channel at
1 kHz in 10-sample chunks (stamped at push), receives each rtbci result (LSL sink) and writes
a TTL pulse (the result's ``seq`` + 1) into its own stream at the first sample stamped after
the result arrived — what a stimulus/TTL line recorded back by the amplifier does. The loop
is measured the hardware way, in the amplifier's own samples: TTL sample − the window's last
sample (docs/latency.md). The engine sees its TTLs come back in its input stream.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pylsl

from rtbci.latency import summary

RATE, CHUNK, CHANNELS = 1000.0, 10, 64


def amplifier(name: str, prefix: str, duration: float, save: Path) -> None:
    """Publish ``name`` (64 ch + TTL) for ``duration`` s, echoing results as TTL pulses."""
    info = pylsl.StreamInfo(name, "EEG", CHANNELS + 1, RATE, pylsl.cf_float32, name)
    outlet = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=10)
    n_total = int(duration * RATE) + CHUNK
    stamps = np.zeros(n_total)
    ttl = np.zeros(n_total, np.float32)
    received: list[tuple[float, float, float]] = []  # (receive time, window_end, seq)
    stop = threading.Event()
    threading.Thread(target=_results, args=(prefix, received, stop), daemon=True).start()
    block = np.random.default_rng(0).standard_normal((CHUNK, CHANNELS + 1)).astype(np.float32)
    back = np.arange(CHUNK - 1, -1, -1) / RATE
    start, k, done = time.perf_counter(), 0, 0
    while (k + 1) * CHUNK <= n_total - CHUNK and not stop.is_set():
        delay = start + k * CHUNK / RATE - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        now = pylsl.local_clock()
        sl = slice(k * CHUNK, (k + 1) * CHUNK)
        stamps[sl] = now - back
        block[:, -1] = 0
        while done < len(received):  # results that arrived since the last chunk: one TTL each
            t_recv, _, seq = received[done]
            i = int(np.searchsorted(stamps[sl], t_recv))  # first sample stamped after arrival
            if i == CHUNK:  # arrived after this chunk's last stamp: next chunk
                break
            block[i, -1] = ttl[sl.start + i] = seq + 1
            done += 1
        outlet.push_chunk(block, stamps[sl])
        k += 1
    stop.set()
    echoed = np.array(received[:done]).reshape(-1, 3)  # the results turned into TTLs
    np.savez(save, stamps=stamps[:k * CHUNK], ttl=ttl[:k * CHUNK], results=echoed)


def _results(prefix: str, received: list, stop: threading.Event) -> None:
    found = []
    while not found and not stop.is_set():
        found = pylsl.resolve_bypred(f"starts-with(name,'{prefix}')", 0, 0.5)
    if stop.is_set():
        return
    inlet = pylsl.StreamInlet(found[0], max_buflen=30)
    seq_channel = inlet.info().channel_count() - 2
    clock = pylsl.local_clock
    while not stop.is_set():
        sample, stamp = inlet.pull_sample(timeout=0.2)
        if stamp is not None:
            received.append((clock(), stamp, sample[seq_channel]))


def analyse(data: dict) -> dict:
    """Loop latency per result: TTL sample − window's last sample, in ms of amplifier time."""
    stamps, ttl, results = data["stamps"], data["ttl"], data["results"]
    where = {int(v) - 1: i for i, v in enumerate(ttl) if v}
    loop, software = [], []
    for t_recv, window_end, seq in results[len(results) // 10:]:  # first 10 %: warm-up
        end = int(np.argmin(np.abs(stamps - window_end)))
        if int(seq) in where:
            loop.append((where[int(seq)] - end) / RATE * 1e3)
            software.append((t_recv - window_end) * 1e3)

    def pct(x):
        return {**summary(x), "n": len(x)} if len(x) else None

    return {"loop_in_samples_ms": pct(loop), "result_received_ms": pct(software),
            "results": int(len(results)), "ttl_pulses": len(where),
            "note": "loop = TTL sample − window's last sample (1 ms resolution, 10 ms chunks); "
                    "result_received = amplifier's receive time − window's last-sample stamp"}


def run(out: Path, duration: float) -> dict:
    """Amplifier process + the rtbci engine (LSL sink); writes out/loopback.json."""
    from rtbci.bench.run import Sender, processor_command

    out.mkdir(parents=True, exist_ok=True)
    name, prefix = f"loop-{uuid.uuid4().hex[:6]}", f"r{uuid.uuid4().hex[:6]}"
    save = out / "loopback_raw.npz"
    warm = 8.0  # engine start-up (imports, connecting, clock sync)
    amp = subprocess.Popen([sys.executable, "-m", "rtbci.bench.loopback", "--amp", name,
                            "--prefix", prefix, "--duration", str(duration + warm),
                            "--save", str(save)])
    cmd, env = processor_command("rtbci", Sender(name=name), prefix, out, duration + warm + 30)
    engine = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    print(f"loopback: amplifier + rtbci engine for {duration + warm:g} s …", flush=True)
    amp.wait()
    engine.terminate()
    engine.wait()
    result = analyse(dict(np.load(save)))
    (out / "timing.json").unlink(missing_ok=True)
    (out / "loopback.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="the loopback bench's amplifier process")
    p.add_argument("--amp", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--save", type=Path, required=True)
    a = p.parse_args(argv)
    amplifier(a.amp, a.prefix, a.duration, a.save)


if __name__ == "__main__":
    main()
