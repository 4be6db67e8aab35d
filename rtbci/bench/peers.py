"""The processors a bench row runs: the same job through rtbci and through its peers.

The job, for every row: a 500 ms window every 50 ms of each input stream, log band power in
3 bands × every channel (:class:`rtbci.models.bandpower.BandPower`'s formula), the result
out as one LSL sample stamped with the window's last-sample timestamp (or, for ``rtbci-mqtt``,
an rtbci result message through mosquitto).

Each row runs in its own process (``python -m rtbci.bench.peers ROW …``), started and
stopped by :mod:`rtbci.bench.run`; the receiver (:mod:`rtbci.bench.receiver`) is another.

Rows: ``rtbci`` (the engine, LSL sink), ``rtbci-mqtt`` (the engine, MQTT sink), ``pylsl-naive``
(blocking ``pull_chunk(timeout=0.2, min_samples=1)`` + numpy), ``mne-lsl`` (a ``StreamLSL``
polling loop), ``timeflux`` (a Timeflux graph in its own virtualenv, :mod:`rtbci.bench.timeflux`),
``null`` (reads the stream, sends nothing: proves the bench reports loss).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pylsl

WINDOW_S, EVERY_S = 0.5, 0.05
RESULT_TYPE = "bench.result"


def result_outlet(name: str, n_values: int) -> pylsl.StreamOutlet:
    """An irregular float32 outlet for one decoder's results."""
    info = pylsl.StreamInfo(name, RESULT_TYPE, n_values, pylsl.IRREGULAR_RATE, pylsl.cf_float32,
                            name)
    return pylsl.StreamOutlet(info)


def open_inlet(name: str, flags: int = pylsl.proc_clocksync) -> pylsl.StreamInlet:
    found = pylsl.resolve_byprop("name", name, timeout=10.0)
    if not found:
        raise SystemExit(f"stream {name!r} did not appear within 10 s")
    inlet = pylsl.StreamInlet(found[0], max_buflen=30, processing_flags=flags)
    inlet.open_stream(timeout=10.0)
    return inlet


def job(n_channels: int, srate: float):
    """The band-power decoder of the job: ``window (n_samples, n_channels) → (3 n_channels,)``,
    with numpy's BLAS at one thread, as the rtbci engine runs it (idle OpenBLAS threads spin)."""
    from threadpoolctl import threadpool_limits

    from rtbci.models.bandpower import BandPower

    threadpool_limits(1, user_api="blas")
    return BandPower(round(WINDOW_S * srate), n_channels, srate)


# --- rtbci ---------------------------------------------------------------------------------

# where the band-power decoders run (config keys): the engine's defaults (placement auto,
# runtime auto, isolation thread), or a tuned setting, named by what it changes
PLACEMENTS = {
    "defaults": {},
    "source": {"placement": "source", "runtime": "numpy"},
    "own": {"placement": "own", "runtime": "numpy"},
    "process": {"isolation": "process"},
    "slow-process": {},  # defaults; the slow neighbour runs in its own process
    "slow-process-nice": {},  # … at nice 10
    "slow-process-pinned": {},  # … at nice 19 on the last core only
    "python-switch": {},  # defaults, but the engine keeps Python's 5 ms GIL switch interval
}
# engine settings per placement (the [engine] table), besides the session
ENGINE_SETTINGS = {"python-switch": {"switch_interval_ms": 5.0}}
# the slow neighbour's own process settings, per placement
SLOW_NICE = {"slow-process-nice": {"nice": 10},
             "slow-process-pinned": {"nice": 19, "cpu": [max(os.sched_getaffinity(0))]}}


def rtbci_config(streams: list[str], decoders: int, out: str, mqtt_port: int | None,
                 slow_ms: float = 0.0, placement: str = "defaults",
                 decoder: dict | None = None) -> dict:
    """The engine config of a row: a source per stream, ``decoders`` band-power decoders each,
    placed as ``PLACEMENTS[placement]`` says; ``decoder``: keys that replace the band power's
    (``window_ms``, ``every_ms``).

    ``slow_ms`` > 0 adds a decoder that takes that long per window on the first stream (the
    fast-next-to-slow check; in its own process with ``slow-process``)."""
    sources, decs = [], []
    for i, name in enumerate(streams):
        sources.append({"name": f"s{i}", "kind": "lsl", "stream": {"name": name},
                        "processing": ["clocksync"]})
        for d in range(decoders):
            decs.append({"name": f"bp{i}x{d}", "model": "builtin:bandpower", "source": f"s{i}",
                         "window_ms": WINDOW_S * 1e3, "every_ms": EVERY_S * 1e3,
                         "budget_ms": 50, **PLACEMENTS[placement], **(decoder or {})})
    if slow_ms:
        decs.append({"name": "slow", "model": "python:rtbci.bench.peers:slow_decoder",
                     "source": "s0", "window_ms": 500, "every_ms": 47, "budget_ms": 200,
                     "options": {"ms": slow_ms},
                     **({"isolation": "process"} if placement.startswith("slow-process")
                        else {}),
                     **SLOW_NICE.get(placement, {})})
    sinks = [{"kind": "mqtt", "url": f"mqtt://127.0.0.1:{mqtt_port}", "qos": 0}
             if mqtt_port else {"kind": "lsl", "prefix": out}]
    return {"engine": {"session": "bench", **ENGINE_SETTINGS.get(placement, {})},
            "sources": sources, "decoders": decs, "sinks": sinks}


def slow_decoder(n_samples: int, n_channels: int, srate: float, ms: float = 30.0):
    """A decoder that computes for ``ms`` ms per window (numpy matmuls, releasing the GIL)."""
    from rtbci.models import Decoder, DecoderOutput

    class Slow(Decoder):
        kind, output_size = "embedding", 1

        def __init__(self):
            self.n_samples, self.n_channels = n_samples, n_channels
            self._a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
            self._out = np.zeros(1, np.float32)

        def __call__(self, window):
            end = time.perf_counter() + ms * 1e-3
            while time.perf_counter() < end:
                self._a @ self._a
            return DecoderOutput(embedding=self._out)

        def describe(self):
            return {"backend": "numpy", "device": "cpu", "precision": "fp32",
                    "input": [n_samples, n_channels], "output": [1]}

    return Slow()


def run_rtbci(streams: list[str], out: str, duration: float, decoders: int = 1,
              mqtt_port: int | None = None, timing: Path | None = None,
              slow_ms: float = 0.0, config: dict | None = None, placement: str = "defaults",
              decoder: dict | None = None) -> None:
    """The engine with an LSL (or MQTT) sink; ``timing`` gets every result's ``t_*`` fields,
    and ``timing`` with the suffix ``.stats.json`` the engine's statistics at the end.

    ``config`` replaces the generated engine config (the GPU rows)."""
    from rtbci.config import parse_config
    from rtbci.engine import Engine
    from rtbci.sinks.base import Sink

    class Timing(Sink):
        """Keeps (decoder, seq, window_end, t_arrived … t_published) of each result."""

        kind = "bench-timing"
        worker_safe = True  # list.append is atomic: no loop hop that the LSL sink doesn't need

        def __init__(self):
            self.rows: list[tuple] = []

        def publish(self, r):
            self.rows.append((r.decoder, r.seq, r.window_end, r.t_arrived, r.t_queued,
                              r.t_started, r.t_finished, r.t_published))

    keep = Timing()
    config = parse_config(config or rtbci_config(streams, decoders, out, mqtt_port, slow_ms,
                                                 placement, decoder))
    engine = Engine(config, sinks=[keep])

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await engine.run(duration, stop=stop)

    asyncio.run(main())
    if timing is not None:
        timing.write_text(json.dumps(keep.rows))
        timing.with_suffix(".stats.json").write_text(json.dumps(engine.stats()))


# --- peers ---------------------------------------------------------------------------------

class Windows:
    """A linear buffer that yields the freshest due window (the naive loops' bookkeeping).

    Windows of ``length`` samples end at ``length + k * every`` samples received."""

    def __init__(self, n_channels: int, length: int, every: int):
        self.length, self.every = length, every
        self.data = np.zeros((8 * length, n_channels), np.float32)
        self.times = np.zeros(8 * length)
        self.fill = self.count = 0
        self.next_end = length

    def add(self, data: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, float] | None:
        """Append a chunk ``(n, n_channels)``; the due window and its last timestamp, if any."""
        n = len(times)
        if self.fill + n > len(self.times):
            keep = self.length
            self.data[:keep] = self.data[self.fill - keep:self.fill]
            self.times[:keep] = self.times[self.fill - keep:self.fill]
            self.fill = keep
        self.data[self.fill:self.fill + n] = data
        self.times[self.fill:self.fill + n] = times
        self.fill += n
        self.count += n
        if self.count < self.next_end:
            return None
        due = (self.count - self.next_end) // self.every  # windows due beyond the first
        end = self.next_end + due * self.every
        self.next_end = end + self.every
        stop = self.fill - (self.count - end)
        return self.data[stop - self.length:stop], float(self.times[stop - 1])


def run_pylsl(stream: str, out: str, duration: float, send: bool = True,
              decoders: int = 1) -> None:
    """Blocking ``pull_chunk(timeout=0.2, min_samples=1)`` + numpy band power; ``decoders``
    band powers of each window, one after the other, each pushed to its own outlet."""
    inlet = open_inlet(stream)
    info = inlet.info()
    n, srate = info.channel_count(), info.nominal_srate()
    jobs = [(job(n, srate), result_outlet(f"{out}-bp{d}", 3 * n)) for d in range(decoders)]
    windows = Windows(n, jobs[0][0].n_samples, round(EVERY_S * srate))
    end = time.monotonic() + duration
    while time.monotonic() < end:
        data, ts = inlet.pull_chunk(timeout=0.2, max_samples=4096, min_samples=1,
                                    as_numpy=True)
        if not len(ts):
            continue
        due = windows.add(data, ts)
        if due is None:
            continue
        for decoder, outlet in jobs:
            values = decoder(due[0]).embedding
            if send:
                outlet.push_sample(values, due[1])


def run_mne_lsl(stream: str, out: str, duration: float) -> None:
    """mne-lsl's ``StreamLSL`` (1 ms acquisition thread), polled every 1 ms for new samples."""
    import mne_lsl
    from mne_lsl.stream import StreamLSL

    mne_lsl.set_log_level("WARNING")
    s = StreamLSL(bufsize=2.0, name=stream).connect(acquisition_delay=0.001,
                                                    processing_flags=["clocksync"], timeout=10)
    n, srate = len(s.ch_names), s.info["sfreq"]
    decoder = job(n, srate)
    every = round(EVERY_S * srate)
    outlet = result_outlet(f"{out}-bp", 3 * n)
    needed = decoder.n_samples  # a full window first, then ``every`` new samples each
    end = time.monotonic() + duration
    while time.monotonic() < end:
        if s.n_new_samples < needed:  # new since the last get_data()
            time.sleep(0.001)
            continue
        needed = every
        data, ts = s.get_data(winsize=WINDOW_S)
        outlet.push_sample(decoder(data.T.astype(np.float32)).embedding, float(ts[-1]))
    s.disconnect()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="run one bench row's processor")
    p.add_argument("row", choices=["rtbci", "rtbci-source", "rtbci-mqtt", "pylsl-naive",
                                   "mne-lsl", "null"])
    p.add_argument("--streams", required=True, help="comma-separated input stream names")
    p.add_argument("--out", required=True, help="result outlet name prefix")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--decoders", type=int, default=1)
    p.add_argument("--mqtt-port", type=int)
    p.add_argument("--timing", type=Path)
    p.add_argument("--slow-ms", type=float, default=0.0)
    p.add_argument("--config", type=Path, help="an engine config (JSON) for the rtbci row")
    p.add_argument("--placement", choices=list(PLACEMENTS), default="defaults",
                   help="where the rtbci row's band-power decoders run")
    p.add_argument("--decoder", type=json.loads, help="band-power config keys (JSON)")
    a = p.parse_args(argv)
    streams = a.streams.split(",")
    if a.row.startswith("rtbci"):
        config = json.loads(a.config.read_text()) if a.config else None
        run_rtbci(streams, a.out, a.duration, a.decoders, a.mqtt_port, a.timing, a.slow_ms,
                  config, a.placement, a.decoder)
    elif a.row == "pylsl-naive":
        run_pylsl(streams[0], a.out, a.duration, decoders=a.decoders)
    elif a.row == "null":
        run_pylsl(streams[0], a.out, a.duration, send=False)
    else:
        run_mne_lsl(streams[0], a.out, a.duration)


if __name__ == "__main__":
    main()
