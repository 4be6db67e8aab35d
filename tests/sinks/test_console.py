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
    seqs = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]  # trigger 3 was skipped
    for i, seq in enumerate(seqs):
        sink.publish(result(seq, 10.0 + 0.1 * i, late=(seq == 5),
                            latency_ms=4.0 if seq == 5 else 2.0))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("bp") and "10.0 /s" in line  # 11 results 0.1 s apart
    assert "p50   2.00 ms" in line and "late 1" in line and "skipped 1" in line
    assert line.endswith("move 0.80")
