"""Preallocated single-writer ring buffer of multichannel samples with timestamps."""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """A ring of the last ``capacity`` samples, addressed by an ever-increasing sample counter.

    Every sample is written twice (at ``i`` and ``i + capacity`` of a ``2 * capacity`` array),
    so any run of up to ``capacity`` consecutive samples is contiguous in memory and reads
    return zero-copy views. Writing allocates nothing.

    Parameters
    ----------
    capacity : int
        Number of samples kept, ``> 0``.
    n_channels : int
        Number of channels, ``> 0``.
    srate : float
        Nominal sampling rate in Hz, used for gap detection (0 = irregular: no gap detection).
    dtype : numpy dtype
        Sample type, float32 by default.

    Attributes
    ----------
    count : int
        Samples written since creation; sample ``k`` (0-based) lives at ``k % capacity``.
    gaps : int
        Timestamp jumps larger than 1.5 sample periods (between or within chunks).
    gap_seconds : float
        Total time missing across those jumps, in seconds.
    overflows : int
        Reads that asked for samples already overwritten (the reader fell behind).
    """

    GAP_FACTOR = 1.5

    def __init__(self, capacity: int, n_channels: int, srate: float = 0.0, dtype=np.float32):
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        if n_channels <= 0:
            raise ValueError(f"n_channels must be > 0, got {n_channels}")
        self.capacity = int(capacity)
        self.n_channels = int(n_channels)
        self.srate = float(srate)
        self._data = np.zeros((2 * self.capacity, self.n_channels), dtype=dtype)
        self._times = np.zeros(2 * self.capacity, dtype=np.float64)
        self._dt = np.empty(self.capacity, dtype=np.float64)  # scratch for gap detection
        self._max_step = self.GAP_FACTOR / self.srate if self.srate > 0 else np.inf
        self.count = 0
        self.gaps = 0
        self.gap_seconds = 0.0
        self.overflows = 0

    def __repr__(self) -> str:
        return (
            f"<RingBuffer: {self.count} samples written | capacity {self.capacity} × "
            f"{self.n_channels} ch | gaps {self.gaps} | overflows {self.overflows}>"
        )

    @property
    def oldest(self) -> int:
        """Counter of the oldest sample still held."""
        return max(0, self.count - self.capacity)

    @property
    def last_timestamp(self) -> float:
        """Timestamp of the newest sample (NaN before the first write)."""
        return float(self._times[(self.count - 1) % self.capacity]) if self.count else np.nan

    def write(self, data: np.ndarray, timestamps: np.ndarray) -> None:
        """Append a chunk.

        Parameters
        ----------
        data : array, shape (n_samples, n_channels)
        timestamps : array, shape (n_samples,), seconds
        """
        n = len(timestamps)
        if n == 0:
            return
        if data.shape != (n, self.n_channels):
            raise ValueError(
                f"chunk shape {data.shape} does not match (n_samples={n}, "
                f"n_channels={self.n_channels})"
            )
        self._count_gaps(timestamps, n)
        if n > self.capacity:  # only the newest `capacity` samples can be kept
            self.count += n - self.capacity
            n = self.capacity
            data, timestamps = data[-n:], timestamps[-n:]
        start = self.count % self.capacity
        first = min(n, self.capacity - start)  # samples before the wrap point
        for offset in (start, start + self.capacity):
            self._data[offset : offset + first] = data[:first]
            self._times[offset : offset + first] = timestamps[:first]
        if first < n:  # wrapped: the rest goes to the start of both halves
            rest = n - first
            for offset in (0, self.capacity):
                self._data[offset : offset + rest] = data[first:]
                self._times[offset : offset + rest] = timestamps[first:]
        self.count += n

    def _count_gaps(self, timestamps: np.ndarray, n: int) -> None:
        if self._max_step == np.inf:
            return
        if self.count:
            self._note_step(timestamps[0] - self.last_timestamp)
        if n > 1:
            if n - 1 > len(self._dt):  # oversized chunk (rare): grow the scratch once
                self._dt = np.empty(n - 1, dtype=np.float64)
            dt = self._dt[: n - 1]
            np.subtract(timestamps[1:], timestamps[:-1], out=dt)
            if dt.max() > self._max_step:
                for step in dt[dt > self._max_step]:
                    self._note_step(step)

    def _note_step(self, step: float) -> None:
        if step > self._max_step:
            self.gaps += 1
            self.gap_seconds += float(step) - 1.0 / self.srate

    def window(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples with counters in ``[start, stop)`` as zero-copy views.

        The views stay valid until ``capacity - (stop - start)`` further samples are written;
        copy them to keep them longer.

        Returns
        -------
        data : array, shape (stop - start, n_channels)
        timestamps : array, shape (stop - start,), seconds

        Raises
        ------
        IndexError
            If the range is not fully held (not yet written, or already overwritten).
        """
        if not (self.oldest <= start <= stop <= self.count):
            raise IndexError(
                f"samples [{start}, {stop}) are not in the buffer (it holds "
                f"[{self.oldest}, {self.count}))"
            )
        i = start % self.capacity
        j = i + (stop - start)
        return self._data[i:j], self._times[i:j]

    def latest(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``n`` samples (fewer if fewer were written); see :meth:`window`."""
        n = min(n, self.count, self.capacity)
        return self.window(self.count - n, self.count)

    def since(self, counter: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Samples from ``counter`` up to the newest, for a reader that keeps its position.

        If the reader fell behind (samples from ``counter`` were overwritten), the overflow is
        counted and the read starts at the oldest sample held.

        Returns
        -------
        data, timestamps : views, see :meth:`window`
        next_counter : int
            The counter to pass to the next call.
        """
        count = self.count
        if counter < count - self.capacity:
            self.overflows += 1
            counter = count - self.capacity
        data, times = self.window(counter, count)
        return data, times, count
