"""LSL sample-to-ring latency: rtbci's ingest path against plain pylsl and mne-lsl readers.

A separate sender process (this script with ``--send``) publishes 64 channels at 1 kHz as
10-sample chunks every 10 ms. Each chunk is stamped with ``pylsl.local_clock()`` at push
time: its last sample gets the push time, earlier ones are back-dated by 1/srate (explicit
per-sample timestamps). Channel 0 carries the sample index, so the receiver knows which
samples it got; the sender saves every sample's push stamp for the receiver to read back.

The sender first pushes ``WARMUP_S`` of warm-up chunks, excluded from the figures: with
clocksync, liblsl holds the first samples back until its first clock-offset estimate, so
the first read after connecting returns that backlog at once (it is reported separately as
``first_sample_wait_ms``; its value: benchmarks/README.md, "LSL ingest latency"). After the
last push the sender reports on stdout and keeps its outlet open until the receiver has closed
its inlet.

Receivers, one phase each, every phase with a fresh sender:

* ``rtbci`` — the real engine path: ``Engine(parse_config(...))`` with an LSL source and
  ``processing = ["clocksync"]``; a listener registered with ``Stream.add_listener`` stamps
  the moment each chunk is in the ring buffer;
* ``rtbci-dejitter`` — the same with ``["clocksync", "dejitter"]`` (rtbci's default);
* ``pull-0.2`` — a pylsl ``pull_chunk(timeout=0.2)`` loop;
* ``pull-0.2-min1`` — ``pull_chunk(timeout=0.2, min_samples=1)``: blocking, returns early;
* ``poll-0.5ms`` — ``pull_chunk(timeout=0.0)`` polled every 0.5 ms;
* ``mne-lsl`` — ``mne_lsl.stream.StreamLSL`` (its own 1 ms acquisition thread), when
  ``mne_lsl`` is importable (it is not a dependency of rtbci).

The pylsl baselines use ``processing_flags=proc_clocksync`` and ``as_numpy=True``.

Figures, all in ms on the local LSL clock (sender and receiver share the machine):

* ``latency``: per sent chunk, when the reader could first see it minus the push time of
  its last sample — the sample-to-ring latency;
* ``per_read``: per read that returned data, read time minus the newest sample's
  timestamp *as received* (after clocksync/dejitter) — the figure usually quoted for pylsl
  readers, and what
  rtbci's ``Stream.ingest_latency_ms`` reports;
* ``timestamp_error``: received timestamp minus push time (what dejitter changes).

Run: ``python benchmarks/bench_ingest_latency.py`` (one phase of ``--duration`` seconds per
reader). Writes ``benchmarks/results/ingest_latency.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pylsl

import rtbci  # noqa: F401  (sets LSLAPICFG: liblsl logs errors only, here and in the sender)

N_CHANNELS = 64
SRATE = 1000.0
CHUNK = 10  # samples per push
PERIOD = CHUNK / SRATE  # seconds between pushes
SETTLE_S = 0.3  # sender waits this long after the receiver connected, before pushing
WARMUP_S = 1.0  # pushed before the measured period, excluded from the figures
LINGER_S = 0.5  # sender waits this long after the last push before reporting
BUFFER_S = 30.0  # ring / mne-lsl buffer length
RESULTS = Path(__file__).with_name("results")
METHODS = ("rtbci", "rtbci-dejitter", "pull-0.2", "pull-0.2-min1", "poll-0.5ms", "mne-lsl")
LABELS = {
    "rtbci": 'rtbci Engine, processing ["clocksync"]',
    "rtbci-dejitter": 'rtbci Engine, processing ["clocksync", "dejitter"]',
    "pull-0.2": "pylsl pull_chunk(timeout=0.2)",
    "pull-0.2-min1": "pylsl pull_chunk(timeout=0.2, min_samples=1)",
    "poll-0.5ms": "pylsl pull_chunk(timeout=0.0) every 0.5 ms",
    "mne-lsl": "mne-lsl StreamLSL (1 ms acquisition thread)",
}


# --------------------------------------------------------------------------- sender
def stream_info(name: str) -> pylsl.StreamInfo:
    """64-channel EEG stream info with channel labels, types and units."""
    info = pylsl.StreamInfo(name, "EEG", N_CHANNELS, SRATE, pylsl.cf_float32, name)
    channels = info.desc().append_child("channels")
    for i in range(N_CHANNELS):
        ch = channels.append_child("channel")
        ch.append_child_value("label", f"EEG{i + 1:03d}")
        ch.append_child_value("type", "EEG")
        ch.append_child_value("unit", "microvolts")
    return info


def send(name: str, duration: float, stamps_path: Path | None) -> None:
    """Publish warm-up + ``duration`` s of 64 ch @ 1 kHz once a receiver connects.

    Runs in the sender process. Prints one JSON line when done, then keeps the outlet open
    until stdin closes (the receiver closes it after closing its inlet).
    """
    outlet = pylsl.StreamOutlet(stream_info(name), chunk_size=0, max_buffered=360)
    if not outlet.wait_for_consumers(timeout=30.0):
        print(json.dumps({"error": "no receiver connected within 30 s"}), flush=True)
        sys.exit(2)
    time.sleep(SETTLE_S)
    n_chunks = int(round((WARMUP_S + duration) / PERIOD))
    stamps = np.zeros(n_chunks * CHUNK)
    back = (CHUNK - 1 - np.arange(CHUNK)) / SRATE
    data = np.random.default_rng(0).standard_normal((CHUNK, N_CHANNELS)).astype(np.float32)
    late = 0
    t0 = pylsl.local_clock()
    for k in range(n_chunks):
        delay = t0 + (k + 1) * PERIOD - pylsl.local_clock()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1e-3:
            late += 1
        ts = pylsl.local_clock() - back
        data[:, 0] = np.arange(k * CHUNK, (k + 1) * CHUNK)
        outlet.push_chunk(data, timestamp=ts.tolist())
        stamps[k * CHUNK:(k + 1) * CHUNK] = ts
    time.sleep(LINGER_S)
    if stamps_path is not None:
        np.save(stamps_path, stamps)
    print(json.dumps({"sent": len(stamps), "late_pushes": late}), flush=True)
    sys.stdin.read()  # until the receiver is done with the stream


class Sender:
    """This script spawned as the sender process; ``done`` is set once it reported."""

    def __init__(self, name: str, duration: float, stamps_path: Path):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--send", name,
               "--duration", str(duration), "--stamps", str(stamps_path)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.done = threading.Event()
        self.report: dict = {"error": "the sender did not report"}
        threading.Thread(target=self._wait_report, daemon=True).start()

    def _wait_report(self) -> None:
        line = self.proc.stdout.readline()
        if line.strip():
            self.report = json.loads(line)
        self.done.set()

    def finish(self) -> dict:
        """Let the sender close its outlet and exit; return its report."""
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.done.set()
        return self.report


# --------------------------------------------------------------------------- recording
@dataclass
class Reads:
    """What a receiver saw, one row per read that returned data (preallocated arrays).

    ``arrival``: local clock when the samples were visible to the reader; ``last_ts``: the
    newest sample's timestamp as received; ``last_idx``: its sample index (channel 0);
    ``count``: samples received so far, this read included.
    """

    size: int
    n: int = 0
    arrival: np.ndarray = field(init=False)
    last_ts: np.ndarray = field(init=False)
    last_idx: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.arrival = np.zeros(self.size)
        self.last_ts = np.zeros(self.size)
        self.last_idx = np.zeros(self.size, dtype=np.int64)
        self.count = np.zeros(self.size, dtype=np.int64)

    def add(self, arrival: float, last_ts: float, last_idx: float, count: int) -> None:
        """Record one read (silently ignores reads beyond ``size``)."""
        i = self.n
        if i < self.size:
            self.arrival[i], self.last_ts[i] = arrival, last_ts
            self.last_idx[i], self.count[i] = int(last_idx), count
            self.n = i + 1

    def trimmed(self) -> Reads:
        """Views of the rows filled so far."""
        out = Reads(0)
        out.n = out.size = self.n
        for name in ("arrival", "last_ts", "last_idx", "count"):
            setattr(out, name, getattr(self, name)[: self.n])
        return out


def capacity(duration: float) -> int:
    """Rows enough for one read per sample of the run, plus slack."""
    return int((WARMUP_S + duration + 5) * SRATE)


# --------------------------------------------------------------------------- receivers
def receive_rtbci(name: str, duration: float, done: threading.Event,
                  processing: list[str]) -> tuple[Reads, dict]:
    """Run the real engine on the stream until the sender is done; listener-stamped reads."""
    return asyncio.run(_engine_phase(name, duration, done, processing))


async def _engine_phase(name: str, duration: float, done: threading.Event,
                        processing: list[str]) -> tuple[Reads, dict]:
    from rtbci.config import parse_config  # imported here: keeps the sender's start fast
    from rtbci.engine import Engine

    config = parse_config({  # engine defaults; the source as a user would write it
        "sources": [{"name": "bench", "kind": "lsl", "stream": {"name": name},
                     "processing": processing, "buffer_seconds": BUFFER_S}],
    })
    engine = Engine(config)
    reads = Reads(capacity(duration))
    stop = asyncio.Event()

    async def attach() -> None:
        while "bench" not in engine.streams and not stop.is_set():
            await asyncio.sleep(0.001)
        if not stop.is_set():
            stream = engine.streams["bench"]
            stream.add_listener(make_listener(stream, reads))

    async def wait_sender() -> None:
        await asyncio.to_thread(done.wait)
        stop.set()

    tasks = [asyncio.create_task(attach()), asyncio.create_task(wait_sender())]
    stats = await engine.run(stop=stop)
    await asyncio.gather(*tasks)
    extra = {"engine_stats": stats["streams"].get("bench", {})}
    stream = engine.streams.get("bench")
    if stream is not None:
        extra["received"] = stream.buffer.count
        extra["ring_sequence_ok"] = ring_sequence_ok(stream.buffer)
    return reads.trimmed(), extra


def make_listener(stream, reads: Reads):
    """A ``Stream`` listener that records each chunk as it lands in the ring."""
    buf, clock = stream.buffer, stream.clock

    def on_chunk() -> None:
        reads.add(clock(), buf.last_timestamp, buf.latest(1)[0][0, 0], buf.count)

    return on_chunk


def ring_sequence_ok(buf) -> bool:
    """True if the samples held in the ring are consecutive sample indices (channel 0)."""
    data, _ = buf.window(buf.oldest, buf.count)
    return bool(np.all(np.diff(data[:, 0].astype(np.int64)) == 1)) if len(data) > 1 else True


def open_inlet(name: str) -> pylsl.StreamInlet:
    """A pylsl inlet (clocksync) on the stream called ``name``."""
    found = pylsl.resolve_byprop("name", name, timeout=10.0)
    if not found:
        raise RuntimeError(f"stream {name!r} did not appear within 10 s")
    inlet = pylsl.StreamInlet(found[0], max_buflen=int(BUFFER_S),
                              processing_flags=pylsl.proc_clocksync)
    inlet.open_stream(timeout=5.0)
    return inlet


def receive_pull(name: str, duration: float, done: threading.Event, timeout: float,
                 min_samples: int | None = None, poll_s: float = 0.0) -> tuple[Reads, dict]:
    """A pylsl ``pull_chunk`` loop until the sender is done; sleeps ``poll_s`` after empty reads."""
    inlet = open_inlet(name)
    reads = Reads(capacity(duration))
    received = 0
    clock = pylsl.local_clock
    while not done.is_set():
        data, ts = inlet.pull_chunk(timeout=timeout, max_samples=1024,
                                    min_samples=min_samples, as_numpy=True)
        if len(ts):
            received += len(ts)
            reads.add(clock(), ts[-1], data[-1, 0], received)
        elif poll_s:
            time.sleep(poll_s)
    inlet.close_stream()
    return reads.trimmed(), {"received": received}


def receive_mne_lsl(name: str, duration: float, done: threading.Event) -> tuple[Reads, dict]:
    """mne-lsl's ``StreamLSL`` with its 1 ms acquisition thread; reads hooked in that thread."""
    import mne_lsl
    from mne_lsl.stream import StreamLSL

    mne_lsl.set_log_level("WARNING")
    stream = StreamLSL(bufsize=BUFFER_S, name=name)
    reads = Reads(capacity(duration))
    submit = stream._submit_acquisition_job  # called right after each buffer update
    clock = pylsl.local_clock
    last = [np.nan]

    def hooked() -> None:
        ts = stream._timestamps
        if ts is not None and ts[-1] != last[0]:
            last[0] = ts[-1]
            reads.add(clock(), ts[-1], stream._buffer[-1, 0], stream._n_new_samples)
        submit()

    stream._submit_acquisition_job = hooked
    stream.connect(acquisition_delay=0.001, processing_flags=["clocksync"], timeout=10)
    done.wait()
    received = int(stream._n_new_samples)
    stream.disconnect()
    return reads.trimmed(), {"received": received, "mne_lsl": mne_lsl.__version__}


def receive(method: str, name: str, duration: float, done: threading.Event):
    """Dispatch to the receiver of ``method``."""
    if method == "rtbci":
        return receive_rtbci(name, duration, done, ["clocksync"])
    if method == "rtbci-dejitter":
        return receive_rtbci(name, duration, done, ["clocksync", "dejitter"])
    if method == "pull-0.2":
        return receive_pull(name, duration, done, timeout=0.2)
    if method == "pull-0.2-min1":
        return receive_pull(name, duration, done, timeout=0.2, min_samples=1)
    if method == "poll-0.5ms":
        return receive_pull(name, duration, done, timeout=0.0, poll_s=0.0005)
    if method == "mne-lsl":
        return receive_mne_lsl(name, duration, done)
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


# --------------------------------------------------------------------------- analysis
def percentiles(values_s: np.ndarray) -> dict[str, float]:
    """p50 / p99 / max (and n) of a sample of seconds, in ms."""
    if values_s.size == 0:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p99 = np.percentile(values_s, [50, 99]) * 1e3
    return {"n": int(values_s.size), "p50": round(float(p50), 3),
            "p99": round(float(p99), 3), "max": round(float(values_s.max() * 1e3), 3)}


def chunk_latencies(reads: Reads, stamps: np.ndarray, first: int) -> np.ndarray:
    """Per sent chunk from sample ``first`` on: arrival of the first read that contains its
    last sample minus that sample's push time. Chunks never received are left out.
    """
    last = np.arange(first + CHUNK - 1, len(stamps), CHUNK)
    if reads.n == 0:
        return np.zeros(0)
    first_idx = reads.last_idx - np.diff(reads.count, prepend=0) + 1  # first sample of read
    r = np.searchsorted(reads.last_idx, last, side="left")
    ok = r < reads.n
    ok[ok] &= first_idx[r[ok]] <= last[ok]
    return reads.arrival[r[ok]] - stamps[last[ok]]


def analyse(method: str, reads: Reads, extra: dict, stamps: np.ndarray, sender: dict,
            wall_s: float, cpu_s: float) -> tuple[dict, np.ndarray]:
    """The figures of one phase, plus the raw per-chunk latencies for the histogram."""
    first = int(round(WARMUP_S * SRATE))
    latency = chunk_latencies(reads, stamps, first)
    measured = reads.last_idx >= first
    idx = np.clip(reads.last_idx[measured], 0, len(stamps) - 1)
    ts_error = reads.last_ts[measured] - stamps[idx]
    received = int(extra.pop("received", reads.count[-1] if reads.n else 0))
    sent = int(sender.get("sent", 0))
    result = {
        "method": method, "label": LABELS[method],
        "latency_ms": percentiles(latency),
        "per_read_ms": percentiles(reads.arrival[measured] - reads.last_ts[measured]),
        "timestamp_error_ms": percentiles(np.abs(ts_error)),
        "timestamp_offset_p50_ms": round(float(np.median(ts_error) * 1e3), 3)
        if ts_error.size else float("nan"),
        "first_sample_wait_ms": round(float(
            reads.arrival[0] - stamps[reads.last_idx[0] - reads.count[0] + 1]) * 1e3, 1)
        if reads.n else float("nan"),
        "reads": int(measured.sum()), "sent": sent, "received": received,
        "lost": sent - received,
        "sequence_ok": bool(np.all(np.diff(reads.last_idx) == np.diff(reads.count))),
        "sender_late_pushes": sender.get("late_pushes"),
        "receiver_cpu_percent": round(100 * cpu_s / wall_s, 1),
        **extra,
    }
    return result, latency


def run_phase(method: str, duration: float, workdir: Path) -> tuple[dict, np.ndarray]:
    """One sender process + one receiver; returns the analysed figures."""
    name = f"rtbci-bench-{os.getpid()}-{method}"
    stamps_path = workdir / f"{method}.npy"
    sender = Sender(name, duration, stamps_path)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        reads, extra = receive(method, name, duration, sender.done)
    finally:
        wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
        report = sender.finish()
    if "error" in report or not stamps_path.exists():
        raise RuntimeError(f"{method}: the sender failed: {report}")
    return analyse(method, reads, extra, np.load(stamps_path), report, wall_s, cpu_s)


# --------------------------------------------------------------------------- reporting
def markdown(results: list[dict]) -> str:
    """The results table as markdown."""
    lines = [
        "| reader | latency p50 / p99 / max ms | chunks | per-read p50 / p99 ms "
        "| timestamp error p50 / p99 ms | sent | lost | first sample waited ms "
        "| receiver CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lat, per, err = r["latency_ms"], r["per_read_ms"], r["timestamp_error_ms"]
        lines.append(
            f"| {r['label']} | {lat['p50']:.2f} / {lat['p99']:.2f} / {lat['max']:.2f} "
            f"| {lat['n']} | {per['p50']:.2f} / {per['p99']:.2f} "
            f"| {err['p50']:.3f} / {err['p99']:.3f} | {r['sent']} | {r['lost']} "
            f"| {r['first_sample_wait_ms']:.0f} | {r['receiver_cpu_percent']:.0f} % |")
    return "\n".join(lines)


def plot(results: list[dict], latencies: dict[str, np.ndarray], path: Path) -> None:
    """One histogram of per-chunk latency per method, log-x in ms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_ms = np.concatenate([v for v in latencies.values() if v.size]) * 1e3
    lo = max(0.05, np.percentile(all_ms, 0.01) / 1.5) if all_ms.size else 0.05
    hi = max(all_ms.max() * 1.5, 10) if all_ms.size else 1000
    bins = np.geomspace(lo, hi, 80)
    fig, axes = plt.subplots(len(results), 1, figsize=(7, 1.6 * len(results) + 0.8),
                             sharex=True, dpi=110, squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        ms = latencies[r["method"]] * 1e3
        ax.hist(np.clip(ms, lo, None), bins=bins, color="C0")
        lat = r["latency_ms"]
        ax.axvline(lat["p50"], color="C1", lw=1)
        ax.axvline(lat["p99"], color="C3", lw=1, ls="--")
        ax.set_title(f"{r['label']} — p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms",
                     fontsize=8, loc="left")
        ax.set_yscale("log")
        ax.set_ylabel("chunks", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xscale("log")
    axes[-1, 0].set_xlabel("sample-to-reader latency per chunk (ms, log)")
    fig.suptitle("LSL ingest latency, 64 ch @ 1 kHz, 10-sample chunks every 10 ms",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def versions() -> dict[str, str]:
    """Versions of what was measured."""
    import platform

    v = {"python": platform.python_version(), "numpy": np.__version__,
         "pylsl": pylsl.__version__, "liblsl": str(pylsl.library_version())}
    try:
        import mne_lsl

        v["mne_lsl"] = mne_lsl.__version__
    except ImportError:
        pass
    return v


def available(methods: list[str]) -> list[str]:
    """Drop ``mne-lsl`` (with a note) when it is not installed."""
    if "mne-lsl" in methods:
        try:
            import mne_lsl  # noqa: F401
        except ImportError:
            print("mne-lsl not installed: skipping it (pip install mne-lsl to include it)")
            methods = [m for m in methods if m != "mne-lsl"]
    return methods


def main(argv: list[str] | None = None) -> None:
    """Sender mode (``--send``) or the benchmark itself."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0,
                        help="seconds of streaming per method (default 15)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--send", metavar="NAME", help="run as the sender of stream NAME")
    parser.add_argument("--stamps", type=Path, help="(sender) where to save push stamps")
    args = parser.parse_args(argv)
    if args.send:
        send(args.send, args.duration, args.stamps)
        return
    methods = available([m.strip() for m in args.methods.split(",") if m.strip()])
    import rtbci.engine  # noqa: F401  (import time stays out of the first phase's figures)
    print(f"LSL ingest latency: {N_CHANNELS} ch @ {SRATE:g} Hz, {CHUNK}-sample chunks every "
          f"{PERIOD * 1e3:g} ms, {args.duration:g} s per method", flush=True)
    results, latencies = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, method in enumerate(methods, 1):
            print(f"[{i}/{len(methods)}] {LABELS[method]} …", flush=True)
            result, latency = run_phase(method, args.duration, Path(tmp))
            results.append(result)
            latencies[method] = latency
            lat = result["latency_ms"]
            print(f"      p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms  max "
                  f"{lat['max']:.2f} ms  chunks {lat['n']}  lost {result['lost']}", flush=True)
    table = markdown(results)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_ingest_latency.py" + (
        f" --duration {args.duration:g}" if args.duration != 15.0 else "")
    doc = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "command": command,
           "duration_s": args.duration, "versions": versions(), "cpus": os.cpu_count(),
           "results": results, "markdown": table}
    (args.out / "ingest_latency.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(results, latencies, args.out / "ingest_latency.png")
    print(f"\nwrote {args.out / 'ingest_latency.json'} and {args.out / 'ingest_latency.png'}")


if __name__ == "__main__":
    main()
