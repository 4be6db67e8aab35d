"""Preallocated single-writer ring buffer of multichannel samples with timestamps."""

from __future__ import annotations

import numpy as np


class Overtaken(RuntimeError):
    """The writer overwrote the samples a read was looking at, on every try: no answer is
    given rather than one from torn data (the reader fell a whole buffer behind)."""


class RingBuffer:
    """A ring of the last ``capacity`` samples, addressed by an ever-increasing sample counter.

    Every sample is written twice (at ``i`` and ``i + capacity`` of a ``2 * capacity`` array),
    so any run of up to ``capacity`` consecutive samples is contiguous in memory and reads
    return zero-copy views. Writing allocates nothing.

    Thread-safety contract (one writer, any number of readers, no lock):

    - One thread (the stream's producer) calls :meth:`write`. It first announces the counters
      it is about to write (:meth:`intact` turns False for the slots they overwrite), then
      writes samples, timestamps and arrival times, and publishes :attr:`count` last, in one
      assignment. A reader that sees ``count == c`` therefore sees samples, timestamps and
      arrival times of every counter below ``c`` complete.
    - Readers (the event loop, sinks' threads, the display) read :attr:`count` once per
      operation: :meth:`window`, :meth:`latest`, :meth:`since` and :meth:`search` each take
      a single snapshot. Their views point into the ring and are read-only (views of one
      read-only alias of the ring's storage, made once: writing into one raises
      ``ValueError``, so no reader can change what the others see), and the writer keeps
      writing: a
      reader copies what it needs, then checks :meth:`intact` for the first counter it read.
      True means the copy is whole; False means the writer overwrote (part of) it meanwhile
      (the reader fell behind by a whole buffer: discard the copy).
    - :attr:`gaps`, :attr:`gap_seconds` and the clock-jump fields are written by the writer
      only (a jump before the chunk holding it is published), :attr:`overflows` by readers
      (:meth:`since`); each is a single int/float that readers may read at any time.

    Clock jumps: a step between consecutive timestamps back by more than ``GAP_FACTOR``
    sample periods and ``JUMP_BACK_TOLERANCE_S``, or forward by more than the arrival time
    advanced (since the previous chunk) plus ``JUMP_TOLERANCE_S``, is a jump of the source's
    clock (an amplifier's clock reset, a clock stepped by hand), not a gap: a stream that
    paused advances its timestamps about as much as the arrival time. Steps beyond
    ``GAP_FACTOR`` periods in the same direction right after a jump's last step continue it
    (one jump, not many): LSL's dejitter turns a clock jump into a ramp of such steps over
    seconds while it settles on the new clock (:attr:`settling`). The samples after the
    newest jump carry times on the source's new clock (:attr:`anchor` is the first of them);
    a window spanning a jump is not :meth:`continuous`. A step forward without arrival times
    (``arrived`` NaN) is a gap.

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
        Samples written (and published) since creation; sample ``k`` (0-based) lives at
        ``k % capacity``.
    gaps : int
        Timestamp jumps larger than 1.5 sample periods (between or within chunks; a chunk
        whose span matches its sample count within half a period is not scanned inside).
    gap_seconds : float
        Total time missing across those jumps, in seconds.
    overflows : int
        Reads that asked for samples already overwritten (the reader fell behind).
    jumps : int
        Clock jumps (either way) since creation.
    jump_seconds : float
        Their total size, in seconds (signed: back is negative), less one sample period per
        step.
    last_jump : float
        Size of the newest jump so far, seconds (signed; 0.0 before the first).
    jump_start, anchor : int
        Counters of the first sample after the newest jump's first and last step (0 before
        any): ``anchor`` is the first sample on the current clock.
    """

    GAP_FACTOR = 1.5
    JUMP_TOLERANCE_S = 1.0  # a step forward this much beyond the arrival time's is a jump
    JUMP_BACK_TOLERANCE_S = 0.1  # a step back more than this (and 1.5 periods) is a jump;
    # a smaller one is a sender's timestamp jitter (chunks stamped at push time, no dejitter)
    JUMP_HISTORY = 64  # newest jumps whose counters :meth:`continuous` checks

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
        # what readers get: read-only aliases of the same memory (a view is still zero-copy)
        self._data_out, self._times_out = self._data.view(), self._times.view()
        self._data_out.flags.writeable = self._times_out.flags.writeable = False
        self._arrivals = np.full(self.capacity, np.nan)  # arrival time per sample, seconds
        self._dt = np.empty(self.capacity, dtype=np.float64)  # scratch for gap detection
        self._max_step = self.GAP_FACTOR / self.srate if self.srate > 0 else np.inf
        self._period = 1.0 / self.srate if self.srate > 0 else 0.0
        self._claimed = 0  # counters below this are written or being written
        self.count = 0
        self.gaps = 0
        self.gap_seconds = 0.0
        self.overflows = 0
        self.jumps = 0
        self.jump_seconds = 0.0
        self.last_jump = 0.0
        self.jump_start = self.anchor = 0
        # the newest jumps' (jump_start, anchor), oldest overwritten first
        self._jump_at = np.zeros((self.JUMP_HISTORY, 2), dtype=np.int64)
        self._last_arrived = np.nan  # arrival time of the previous chunk

    def __repr__(self) -> str:
        return (
            f"<RingBuffer: {self.count} samples written | capacity {self.capacity} × "
            f"{self.n_channels} ch | gaps {self.gaps} | clock jumps {self.jumps} | "
            f"overflows {self.overflows}>"
        )

    @property
    def oldest(self) -> int:
        """Counter of the oldest sample still held."""
        return max(0, self.count - self.capacity)

    @property
    def last_timestamp(self) -> float:
        """Timestamp of the newest sample (NaN before the first write)."""
        count = self.count
        return float(self._times[(count - 1) % self.capacity]) if count else np.nan

    @property
    def last_arrival(self) -> float:
        """Arrival time of the newest sample (NaN before the first write or without one)."""
        count = self.count
        return float(self._arrivals[(count - 1) % self.capacity]) if count else np.nan

    def intact(self, counter: int) -> bool:
        """Whether samples from ``counter`` on are held and not being overwritten.

        A reader calls it after copying a window (from :meth:`window`, :meth:`latest` or
        :meth:`since`) that starts at ``counter``: True means the copy is whole.
        """
        return counter >= self._claimed - self.capacity

    @property
    def settling(self) -> bool:
        """Whether the newest sample was reached by a jump's step (the jump may go on)."""
        return bool(self.jumps) and self.anchor == self.count - 1

    def continuous(self, start: int, stop: int) -> bool:
        """Whether samples ``[start, stop)`` are all on one clock (no clock jump inside).

        A comparison with :attr:`anchor`, and a look at the newest ``JUMP_HISTORY`` jumps only
        when the window begins before the newest one.
        """
        if start >= self.anchor:
            return True
        held = min(self.jumps, self.JUMP_HISTORY)
        firsts, lasts = self._jump_at[:held, 0], self._jump_at[:held, 1]
        if held == self.JUMP_HISTORY and start < firsts.min():
            return False  # older than the jumps remembered: assume one lies inside
        return not bool(np.any((firsts < stop) & (lasts > start)))

    def write(self, data: np.ndarray, timestamps: np.ndarray, arrived: float = np.nan) -> None:
        """Append a chunk (writer thread only; publishes :attr:`count` last).

        Parameters
        ----------
        data : array, shape (n_samples, n_channels)
        timestamps : array, shape (n_samples,), seconds
        arrived : float
            When the chunk arrived, seconds on the engine's clock (see :meth:`arrival`).
        """
        n = len(timestamps)
        if n == 0:
            return
        if data.shape != (n, self.n_channels):
            raise ValueError(
                f"chunk shape {data.shape} does not match (n_samples={n}, "
                f"n_channels={self.n_channels})"
            )
        self._check_steps(timestamps, n, arrived)
        count = self.count
        if n > self.capacity:  # only the newest `capacity` samples can be kept
            count += n - self.capacity
            n = self.capacity
            data, timestamps = data[-n:], timestamps[-n:]
        self._claimed = count + n  # readers' copies of counters < count + n - capacity: torn
        start = count % self.capacity
        first = min(n, self.capacity - start)  # samples before the wrap point
        for offset in (start, start + self.capacity):
            self._data[offset : offset + first] = data[:first]
            self._times[offset : offset + first] = timestamps[:first]
        self._arrivals[start : start + first] = arrived
        if first < n:  # wrapped: the rest goes to the start of both halves
            rest = n - first
            for offset in (0, self.capacity):
                self._data[offset : offset + rest] = data[first:]
                self._times[offset : offset + rest] = timestamps[first:]
            self._arrivals[:rest] = arrived
        self.count = count + n  # publish: everything below it is complete

    def _check_steps(self, timestamps: np.ndarray, n: int, arrived: float) -> None:
        """Count the gaps and clock jumps before and inside a chunk: the first sample's step,
        then a scan only when the chunk's span does not match its sample count."""
        if self._max_step == np.inf:
            return
        elapsed = arrived - self._last_arrived  # NaN without arrival times
        self._last_arrived = arrived
        if self.count:
            self._note_step(float(timestamps[0] - self.last_timestamp), self.count, elapsed)
        if n > 1:
            span = float(timestamps[n - 1] - timestamps[0])
            if abs(span - (n - 1) * self._period) <= 0.5 * self._period:
                return  # spans its sample count: no sample missing (no scan, ~µs)
            if n - 1 > len(self._dt):  # oversized chunk (rare): grow the scratch once
                self._dt = np.empty(n - 1, dtype=np.float64)
            dt = self._dt[: n - 1]
            np.subtract(timestamps[1:], timestamps[:-1], out=dt)
            if dt.max() > self._max_step or dt.min() < -self._max_step:
                for i in np.flatnonzero(np.abs(dt) > self._max_step):
                    self._note_step(float(dt[i]), self.count + int(i) + 1, elapsed)

    def _note_step(self, step: float, counter: int, elapsed: float) -> None:
        """A step of ``step`` s from sample ``counter - 1`` to ``counter``; ``elapsed``: the
        arrival time since the previous chunk (NaN: unknown)."""
        if not abs(step) > self._max_step:
            return
        if self.jumps and counter == self.anchor + 1 and (step < 0) == (self.last_jump < 0):
            self._jump_at[(self.jumps - 1) % self.JUMP_HISTORY, 1] = counter  # it goes on
            self.jump_seconds += step - self._period
            self.last_jump += step
            self.anchor = counter
        elif step < -self.JUMP_BACK_TOLERANCE_S or step - elapsed > self.JUMP_TOLERANCE_S:
            self._jump_at[self.jumps % self.JUMP_HISTORY] = counter
            self.jump_seconds += step - self._period
            self.last_jump = step
            self.jump_start = self.anchor = counter
            self.jumps += 1
        elif step > 0:
            self.gaps += 1
            self.gap_seconds += step - self._period
        # else a small step back: timestamps jittered by the sender (no dejitter), no jump

    def window(self, start: int, stop: int,
               count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Samples with counters in ``[start, stop)`` as zero-copy, read-only views.

        The views stay valid until ``capacity - (stop - start)`` further samples are written;
        a reader in another thread than the writer copies them, then checks
        ``intact(start)``. ``count``: the reader's snapshot of :attr:`count` that it chose
        ``start`` and ``stop`` from; the range is checked against it, not against a fresh
        read (which a writer may have advanced past ``start`` meanwhile: then ``intact``
        says so after the copy).

        Returns
        -------
        data : array, shape (stop - start, n_channels)
        timestamps : array, shape (stop - start,), seconds

        Raises
        ------
        IndexError
            If the range is not fully held (not yet written, or already overwritten) in the
            snapshot.
        """
        if count is None:
            count = self.count
        if not (max(0, count - self.capacity) <= start <= stop <= count):
            raise IndexError(
                f"samples [{start}, {stop}) are not in the buffer (it holds "
                f"[{max(0, count - self.capacity)}, {count}))"
            )
        i = start % self.capacity
        j = i + (stop - start)
        return self._data_out[i:j], self._times_out[i:j]

    def latest(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``n`` samples (fewer if fewer were written); see :meth:`window`."""
        data, times, _ = self._newest(n)
        return data, times

    def _newest(self, n: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The newest ``min(n, held)`` samples of one snapshot of :attr:`count`, and their first
        counter."""
        count = self.count
        n = min(n, count, self.capacity)
        i = (count - n) % self.capacity
        return self._data_out[i : i + n], self._times_out[i : i + n], count - n

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
        if counter > count:
            raise IndexError(f"sample {counter} is not written yet (count {count})")
        if counter < count - self.capacity:
            self.overflows += 1
            counter = count - self.capacity
        i = counter % self.capacity
        j = i + (count - counter)
        return self._data_out[i:j], self._times_out[i:j], count

    SEARCH_TRIES = 8  # snapshots a search takes before it gives up (Overtaken)

    def search(self, timestamp: float) -> int:
        """Counter of the first held sample stamped at or after ``timestamp`` (binary search).

        Returns the oldest held counter if every held sample is at or after ``timestamp``, and
        :attr:`count` if none is. Safe against a concurrent writer: the answer always comes from
        a snapshot that was intact after the search; one that the writer overtook (it overwrote
        the oldest samples meanwhile) is repeated on a fresh snapshot.

        Raises
        ------
        Overtaken
            If the writer overtook all ``SEARCH_TRIES`` snapshots (never a guess).
        """
        for _ in range(self.SEARCH_TRIES):
            _, times, oldest = self._newest(self.capacity)
            found = oldest + int(np.searchsorted(times, timestamp))
            if self.intact(oldest):
                return found
        raise Overtaken(f"search for {timestamp:.6f} s: the writer overwrote the samples "
                        f"being searched {self.SEARCH_TRIES} times in a row")

    def arrival(self, counter: int) -> float:
        """When sample ``counter`` arrived (the ``arrived`` given to :meth:`write`), seconds.

        Raises
        ------
        IndexError
            If the sample is not held.
        """
        count = self.count
        if not (max(0, count - self.capacity) <= counter < count):
            raise IndexError(f"sample {counter} is not in the buffer (it holds "
                             f"[{max(0, count - self.capacity)}, {count}))")
        return float(self._arrivals[counter % self.capacity])
