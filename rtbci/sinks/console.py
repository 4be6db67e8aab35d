"""``console``: one compact live line per decoder (rate, latency, misses, last output)."""

from __future__ import annotations

import sys
from typing import TextIO

import numpy as np

from rtbci.latency import LatencyWindow
from rtbci.messages import Result
from rtbci.scoring import predicted_label, true_label
from rtbci.sinks.base import Sink
from rtbci.sinks.configs import ConsoleSinkConfig


class _DecoderLine:
    def __init__(self):
        self.n = self.late = self.scored = self.correct = 0
        self.in_interval = 0  # results after the interval's first one
        self.latencies = LatencyWindow()  # of the current interval (its last 4096 results)
        self.last: Result | None = None
        self.first_time = None


def summarize(result: Result) -> str:
    """The output in a few characters: argmax class, top candidate, or embedding norm."""
    return summarize_dict(vars(result))


def summarize_dict(message: dict) -> str:
    """:func:`summarize` for a decoded message (a dict with the result fields)."""
    probabilities, ids, labels = message["probabilities"], message["ids"], message["labels"]
    if probabilities is not None:
        k = int(np.argmax(probabilities))
        return f"{labels[k] if labels else k} {probabilities[k]:.2f}"
    if ids is not None and len(ids):
        return f"top1 {labels[0] if labels else ids[0]} {message['scores'][0]:.2f}"
    if message["embedding"] is not None:
        emb = message["embedding"]
        return f"embedding[{len(emb)}] |x|={np.linalg.norm(emb):.2f}"
    return "-"


class ConsoleSink(Sink):
    """Prints, every ``interval_s`` per decoder: results/s, engine latency p50/p99 (ms) over the
    interval, late results since start, the scheduler's own counters from the latest engine
    statistics (``skipped`` triggers while busy, ``errors``, and for marker-locked decoders
    ``stale`` = markers dropped as stale, in the future or over the pending bound), the last
    output, and for marker-locked class decoders the running accuracy against the marker's
    label (``Result.label``)."""

    kind = "console"

    def __init__(self, config: ConsoleSinkConfig, stream: TextIO | None = None):
        self.config = config
        self.out = stream or sys.stdout
        self.lines: dict[str, _DecoderLine] = {}
        self.counters: dict[str, dict] = {}  # per decoder, from the latest stats tick

    def stats_tick(self, stats: dict) -> None:
        self.counters = stats.get("decoders", {})

    def publish(self, result: Result) -> None:
        line = self.lines.setdefault(result.decoder, _DecoderLine())
        line.n += 1
        line.late += result.late
        line.latencies.record(result.t_published - result.t_arrived)
        line.last = result
        truth = true_label(result)
        if truth is not None:
            line.scored += 1
            line.correct += predicted_label(result) == truth
        if line.first_time is None:
            line.first_time = result.t_published
        else:
            line.in_interval += 1
        if result.t_published - line.first_time >= self.config.interval_s:
            self._print(result.decoder, line, result.t_published - line.first_time)
            line.latencies.clear()
            line.first_time, line.in_interval = result.t_published, 0

    def _print(self, name: str, line: _DecoderLine, span: float) -> None:
        latency = line.latencies.summary_ms()
        rate = line.in_interval / span if span > 0 else 0.0
        accuracy = (f"  accuracy {line.correct / line.scored:.2f} (n={line.scored})"
                    if line.scored else "")
        print(f"{name:<12} {rate:6.1f} /s  latency p50 {latency['p50']:6.2f} ms p99 "
              f"{latency['p99']:6.2f} ms  late {line.late:<5} {self._counters(name)}"
              f"{summarize(line.last)}{accuracy}", file=self.out, flush=True)

    def _counters(self, name: str) -> str:
        """``skipped N errors N [stale N]`` from the scheduler's statistics (0 before the
        first stats tick)."""
        c = self.counters.get(name, {})
        text = f"skipped {c.get('skipped', 0):<5} errors {c.get('errors', 0):<3} "
        if "stale_markers" in c:
            stale = c["stale_markers"] + c["future_markers"] + c["dropped_markers"]
            text += f"stale {stale:<3} "
        worker = c.get("worker")  # isolation = "process"
        if worker:
            text += (f"proc {worker['state']} restarts {worker['restarts']} kills "
                     f"{worker['kills']} rss {worker['rss_mb']:.0f} MB ")
        return text
