"""Latency percentiles: the one place rtbci computes p50 / p99 / max of latencies.

A :class:`LatencyWindow` keeps the last ``size`` values in a preallocated ring, so recording
is O(1) and allocation-free, and a summary costs one ``np.percentile`` over at most ``size``
values however long the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

WINDOW = 4096  # values a summary covers by default: the most recent ones


def percentiles(values, qs: Sequence[float] = (50, 99)) -> tuple[float, ...]:
    """Percentiles ``qs`` (0–100) of a sequence of numbers; NaN for each if it is empty."""
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return tuple(float("nan") for _ in qs)
    return tuple(float(p) for p in np.percentile(v, qs))


def summary(values, digits: int = 3) -> dict[str, float | None]:
    """``{"p50", "p99", "max"}`` of ``values`` (in the unit wanted, e.g. ms), rounded to
    ``digits``; None for each if there are none. For a finished run's array (benchmarks);
    live figures use :class:`LatencyWindow`."""
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = percentiles(v)
    return {"p50": round(p50, digits), "p99": round(p99, digits),
            "max": round(float(v.max()), digits)}


class LatencyWindow:
    """The last ``size`` latencies, in seconds, and their p50 / p99 / max.

    Parameters
    ----------
    size : int
        Values kept (older ones are overwritten), > 0.

    Attributes
    ----------
    total : int
        Values recorded since creation (or the last :meth:`clear`), including overwritten ones.
    """

    def __init__(self, size: int = WINDOW):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = int(size)
        self._values = np.zeros(self.size, dtype=np.float64)
        self.total = 0

    def __len__(self) -> int:
        """Values the summary covers: ``min(total, size)``."""
        return min(self.total, self.size)

    def __repr__(self) -> str:
        return f"<LatencyWindow: {len(self)} of the last {self.size} values>"

    def record(self, seconds: float) -> None:
        """Add one latency (seconds); O(1), allocates nothing."""
        self._values[self.total % self.size] = seconds
        self.total += 1

    def clear(self) -> None:
        self.total = 0

    def summary_ms(self, empty: float | None = None) -> dict[str, float | None]:
        """``{"p50", "p99", "max"}`` in milliseconds over the window (``empty`` for each
        while nothing was recorded)."""
        n = len(self)
        if not n:
            return {"p50": empty, "p99": empty, "max": empty}
        values = self._values[:n]
        p50, p99 = percentiles(values)
        return {"p50": p50 * 1e3, "p99": p99 * 1e3, "max": float(values.max()) * 1e3}


def local_clock() -> Callable[[], float]:
    """The LSL clock (seconds) as the cheapest function that reads it.

    liblsl's clock is the C++ steady clock, which is ``CLOCK_MONOTONIC`` on Linux (and the
    mach clock on macOS), the clock :func:`time.monotonic` reads: a C call that keeps
    the GIL, where ``pylsl.local_clock`` is a ctypes call that releases and retakes it. Returns
    :func:`time.monotonic` when both read the same (checked here), else
    ``pylsl.local_clock``.
    """
    import pylsl

    before, mono, after = pylsl.local_clock(), time.monotonic(), pylsl.local_clock()
    if before - 1e-4 <= mono <= after + 1e-4:
        return time.monotonic
    return pylsl.local_clock
