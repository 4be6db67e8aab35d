"""Throughput of :class:`rtbci.RingBuffer` against an mne-lsl-style ``np.roll`` buffer.

Measures, for 64 channels of float32 in a 30 s ring at 1 kHz (30,000 samples):

* ``write`` per chunk for chunk sizes 1, 10, 32, 100 and 1000 samples, as time per chunk,
  samples/s and channel-samples/s;
* ``write`` followed by a reader's ``since()`` (zero-copy view of the new samples);
* the mne-lsl way of buffering the same chunk: ``np.roll`` of the whole data and timestamp
  buffers, then assigning the tail (a full copy and allocation per chunk);
* reads: ``latest(n)`` (zero-copy views) and ``window(...)`` followed by ``.copy()``, for
  n = 250 and 1000 samples.

Every figure is the median over many timed batches (``time.perf_counter_ns``); a batch
repeats the operation until it lasts at least ``--batch-ms``. Prints markdown tables and
writes ``benchmarks/results/ringbuffer.json`` and ``benchmarks/results/ringbuffer.png``.

Run: ``python benchmarks/bench_ringbuffer.py``. Results: benchmarks/README.md, "Ring buffer".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from rtbci import RingBuffer

N_CHANNELS = 64
SRATE = 1000.0
CAPACITY = int(30 * SRATE)  # 30 s @ 1 kHz
CHUNK_SIZES = (1, 10, 32, 100, 1000)
READ_SIZES = (250, 1000)
RESULTS = Path(__file__).with_name("results")


def time_op(op: Callable[[], object], batches: int, batch_ns: int) -> dict[str, float]:
    """Median (and spread) of the time one call of ``op`` takes, in nanoseconds.

    The number of calls per batch is calibrated so that a batch lasts about ``batch_ns``;
    ``batches`` batches are timed and the per-call time of each is kept.
    """
    for _ in range(3):  # warm up caches and the allocator
        op()
    calls = 1
    while True:  # calibrate
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            op()
        elapsed = time.perf_counter_ns() - t0
        if elapsed >= batch_ns or calls >= 1 << 20:
            break
        calls = max(calls * 2, int(calls * batch_ns / max(elapsed, 1)))
    per_call = np.empty(batches)
    for b in range(batches):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            op()
        per_call[b] = (time.perf_counter_ns() - t0) / calls
    p10, p50, p90 = np.percentile(per_call, [10, 50, 90])
    return {"median_ns": float(p50), "p10_ns": float(p10), "p90_ns": float(p90),
            "calls_per_batch": calls, "batches": batches}


def chunk_stream(chunk: int, n_chunks: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of data and ``n_chunks`` chunks' worth of regular timestamps (1 kHz)."""
    rng = np.random.default_rng(chunk)
    data = rng.standard_normal((chunk, N_CHANNELS)).astype(np.float32)
    stamps = np.arange(chunk * n_chunks) / SRATE
    return data, stamps.reshape(n_chunks, chunk)


def rtbci_writer(chunk: int, with_read: bool) -> Callable[[], object]:
    """A call that writes one chunk into a RingBuffer (and reads it back with ``since``)."""
    rb = filled_ring()  # every page touched: no first-write page faults in the timing
    data, stamps = chunk_stream(chunk)
    n_blocks = len(stamps)
    state = {"i": 0, "counter": rb.count}

    def write() -> None:
        i = state["i"]
        rb.write(data, stamps[i % n_blocks])
        state["i"] = i + 1

    def write_and_read() -> None:
        write()
        _, _, state["counter"] = rb.since(state["counter"])

    return write_and_read if with_read else write


def roll_writer(chunk: int) -> Callable[[], object]:
    """A call that buffers one chunk the mne-lsl way: roll everything, assign the tail."""
    data, stamps = chunk_stream(chunk)
    n_blocks = len(stamps)
    state = {"i": 0, "buffer": np.zeros((CAPACITY, N_CHANNELS), np.float32),
             "times": np.zeros(CAPACITY)}

    def write() -> None:
        i = state["i"]
        buffer = np.roll(state["buffer"], -chunk, axis=0)
        times = np.roll(state["times"], -chunk, axis=0)
        buffer[-chunk:, :] = data
        times[-chunk:] = stamps[i % n_blocks]
        state["buffer"], state["times"], state["i"] = buffer, times, i + 1

    return write


def filled_ring() -> RingBuffer:
    """A ring that has wrapped around a few times (reads straddle the wrap point)."""
    rb = RingBuffer(CAPACITY, N_CHANNELS, srate=SRATE)
    data, stamps = chunk_stream(1000, n_chunks=int(2.5 * CAPACITY / 1000) + 7)
    for block in stamps:
        rb.write(data, block)
    return rb


def bench_writes(batches: int, batch_ns: int) -> list[dict]:
    """Write figures for every chunk size: rtbci write, write + since, np.roll."""
    rows = []
    for chunk in CHUNK_SIZES:
        row = {"chunk": chunk}
        for key, op, n in (("rtbci_write", rtbci_writer(chunk, False), batches),
                           ("rtbci_write_since", rtbci_writer(chunk, True), batches),
                           ("np_roll", roll_writer(chunk), max(20, batches // 4))):
            timing = time_op(op, n, batch_ns)
            timing["samples_per_s"] = chunk / (timing["median_ns"] * 1e-9)
            timing["channel_samples_per_s"] = timing["samples_per_s"] * N_CHANNELS
            row[key] = timing
        row["speedup_vs_roll"] = row["np_roll"]["median_ns"] / row["rtbci_write"]["median_ns"]
        rows.append(row)
        print(f"  chunk {chunk:5d}: write {row['rtbci_write']['median_ns'] / 1e3:8.2f} µs, "
              f"np.roll {row['np_roll']['median_ns'] / 1e3:9.1f} µs", flush=True)
    return rows


def bench_reads(batches: int, batch_ns: int) -> list[dict]:
    """Read figures: ``latest(n)`` views and ``window(...)`` copies."""
    rb = filled_ring()
    rows = []
    for n in READ_SIZES:
        start = rb.count - n

        def copy(start=start, n=n) -> None:
            data, times = rb.window(start, start + n)
            data.copy()
            times.copy()

        rows.append({"n": n,
                     "latest_view": time_op(lambda n=n: rb.latest(n), batches, batch_ns),
                     "window_copy": time_op(copy, batches, batch_ns)})
    return rows


def fmt_rate(value: float) -> str:
    """A rate with an SI suffix (``12.3 M``)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f} {suffix}"
    return f"{value:.0f}"


def markdown(writes: list[dict], reads: list[dict]) -> str:
    """Both result tables as markdown."""
    lines = [
        "| chunk (samples) | rtbci write µs/chunk | samples/s | channel-samples/s "
        "| write + since() µs | np.roll µs/chunk | np.roll samples/s | rtbci speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in writes:
        w, ws, roll = r["rtbci_write"], r["rtbci_write_since"], r["np_roll"]
        lines.append(
            f"| {r['chunk']} | {w['median_ns'] / 1e3:.2f} | {fmt_rate(w['samples_per_s'])} "
            f"| {fmt_rate(w['channel_samples_per_s'])} | {ws['median_ns'] / 1e3:.2f} "
            f"| {roll['median_ns'] / 1e3:.0f} | {fmt_rate(roll['samples_per_s'])} "
            f"| {r['speedup_vs_roll']:.0f}× |")
    lines += ["", "| read n samples | latest(n) views µs | window(...).copy() µs |",
              "|---:|---:|---:|"]
    for r in reads:
        lines.append(f"| {r['n']} | {r['latest_view']['median_ns'] / 1e3:.2f} "
                     f"| {r['window_copy']['median_ns'] / 1e3:.2f} |")
    return "\n".join(lines)


def plot(writes: list[dict], path: Path) -> None:
    """Throughput (samples/s) against chunk size, log axes, rtbci vs np.roll."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chunks = [r["chunk"] for r in writes]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for key, label, style in (("rtbci_write", "rtbci RingBuffer.write", "o-"),
                              ("rtbci_write_since", "rtbci write + since()", "s--"),
                              ("np_roll", "np.roll whole buffer (mne-lsl style)", "^-")):
        ax.plot(chunks, [r[key]["samples_per_s"] for r in writes], style, label=label)
    ax.axhline(SRATE, color="grey", lw=0.8, ls=":")
    ax.text(chunks[0], SRATE * 1.3, "1 kHz stream (real time)", color="grey", fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="chunk size (samples)",
           ylabel="write throughput (samples/s)",
           title=f"Ring buffer write, {N_CHANNELS} ch float32, capacity {CAPACITY} samples")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def machine() -> dict[str, str]:
    """Python, numpy and CPU identification for the results file."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "numpy": np.__version__, "cpu": cpu,
            "cpus": str(os.cpu_count())}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=200, help="timed batches per figure")
    parser.add_argument("--batch-ms", type=float, default=2.0, help="minimum batch length")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    batch_ns = int(args.batch_ms * 1e6)
    print(f"RingBuffer benchmark: {N_CHANNELS} ch float32, capacity {CAPACITY} samples")
    writes = bench_writes(args.batches, batch_ns)
    print("  reads …", flush=True)
    reads = bench_reads(args.batches, batch_ns)
    table = markdown(writes, reads)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": "python benchmarks/bench_ringbuffer.py", "machine": machine(),
              "n_channels": N_CHANNELS, "capacity": CAPACITY, "writes": writes,
              "reads": reads, "markdown": table}
    (args.out / "ringbuffer.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(writes, args.out / "ringbuffer.png")
    print(f"\nwrote {args.out / 'ringbuffer.json'} and {args.out / 'ringbuffer.png'}")


if __name__ == "__main__":
    main()
