"""The console sink's live line."""

import io

import numpy as np

from rtbci.messages import Result
from rtbci.sinks.console import ConsoleSink, ConsoleSinkConfig


def result(seq, t, late=False, latency_ms=2.0):
    return Result("bp", seq, "every", t - 0.5, t, "classes", t_arrived=t,
                  t_published=t + latency_ms / 1e3, late=late,
                  probabilities=np.array([0.2, 0.8], np.float32), labels=["rest", "move"])


def test_one_line_per_interval_with_rate_latency_and_misses():
    out = io.StringIO()
    sink = ConsoleSink(ConsoleSinkConfig(interval_s=1.0), out)
    # the scheduler's own counters: 1 trigger skipped while busy, 2 windows that raised (the
    # holes in seq are those 3; the console no longer guesses from them)
    sink.stats_tick({"decoders": {"bp": {"skipped": 1, "errors": 2, "late": 1}}})
    seqs = [0, 1, 2, 4, 5, 6, 9, 10, 11, 12, 13]
    for i, seq in enumerate(seqs):
        sink.publish(result(seq, 10.0 + 0.1 * i, late=(seq == 5),
                            latency_ms=4.0 if seq == 5 else 2.0))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("bp") and "10.0 /s" in line  # 11 results 0.1 s apart
    assert "p50   2.00 ms" in line and "late 1" in line
    assert "skipped 1 " in line and "errors 2 " in line and "stale" not in line
    assert line.endswith("move 0.80")


def test_marker_locked_lines_show_dropped_markers_and_accuracy_by_label():
    out = io.StringIO()
    sink = ConsoleSink(ConsoleSinkConfig(interval_s=1.0), out)
    sink.stats_tick({"decoders": {"bp": {"skipped": 0, "errors": 0, "stale_markers": 2,
                                         "future_markers": 3, "dropped_markers": 0}}})
    for i in range(3):
        r = result(i, 10.0 + 0.6 * i)
        r.trigger, r.marker, r.label = "marker", "trial_move", "move"
        sink.publish(r)
    line = out.getvalue().splitlines()[0]
    assert "stale 5 " in line and line.endswith("accuracy 1.00 (n=3)")
