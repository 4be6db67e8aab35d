"""The one home of latency percentiles: a bounded window, O(1) record."""

import numpy as np
import pylsl
import pytest

from rtbci.latency import LatencyWindow, local_clock, percentiles, summary


def test_the_window_keeps_the_last_values_only():
    w = LatencyWindow(100)
    assert w.summary_ms() == {"p50": None, "p99": None, "max": None}
    for ms in range(1000):
        w.record(ms * 1e-3)
    assert len(w) == 100 and w.total == 1000
    last = np.arange(900, 1000)
    assert w.summary_ms() == {"p50": pytest.approx(np.percentile(last, 50)),
                              "p99": pytest.approx(np.percentile(last, 99)),
                              "max": pytest.approx(999.0)}
    w.clear()
    assert np.isnan(w.summary_ms(empty=float("nan"))["p99"])


def test_percentiles_of_a_sequence():
    assert percentiles([1.0, 2.0, 3.0]) == (2.0, pytest.approx(2.98))
    assert all(np.isnan(v) for v in percentiles([], (50, 90, 99)))


def test_summary_of_a_finished_run_rounds_and_says_none_when_empty():
    assert summary([]) == {"p50": None, "p99": None, "max": None}
    ms = np.arange(1, 101, dtype=float) / 3  # 0.333 … 33.333
    assert summary(ms) == {"p50": 16.833, "p99": 33.003, "max": 33.333}


def test_local_clock_reads_the_lsl_clock():
    clock = local_clock()
    for _ in range(100):
        before, now, after = pylsl.local_clock(), clock(), pylsl.local_clock()
        assert before - 1e-3 <= now <= after + 1e-3
