"""Stream metadata, chunks, and :class:`Stream`: one source's ring buffer plus its counters."""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from rtbci.latency import LatencyWindow
from rtbci.ringbuffer import RingBuffer

if TYPE_CHECKING:
    from rtbci.preprocess import Preprocessor

log = logging.getLogger("rtbci.stream")


@dataclass(frozen=True)
class StreamInfo:
    """What a source says about its stream.

    Attributes
    ----------
    name, type, source_id : str
        LSL identity (``type`` is e.g. ``"EEG"``, ``"MEG"``, ``"sEEG"``, ``"Markers"``).
    srate : float
        Nominal sampling rate in Hz (0 for irregular streams such as markers).
    ch_names, ch_types, ch_units : tuple of str
        One entry per channel; types are MNE channel types (``"eeg"``, ``"mag"``, ``"grad"``,
        ``"seeg"``, ``"misc"`` …), units as LSL writes them (``"microvolts"``, ``"T"`` …).
    positions : array, shape (n_channels, 3) | None
        Sensor positions in metres (head coordinates), NaN where unknown.
    hostname : str
        Machine that publishes the stream.
    """

    name: str
    type: str
    source_id: str
    srate: float
    ch_names: tuple[str, ...]
    ch_types: tuple[str, ...]
    ch_units: tuple[str, ...]
    positions: np.ndarray | None = field(default=None, compare=False, repr=False)
    hostname: str = ""

    def __post_init__(self) -> None:
        n = len(self.ch_names)
        if len(self.ch_types) != n or len(self.ch_units) != n:
            raise ValueError(
                f"stream {self.name!r}: {n} channel names but {len(self.ch_types)} types "
                f"and {len(self.ch_units)} units"
            )
        if self.positions is not None and np.shape(self.positions) != (n, 3):
            raise ValueError(
                f"stream {self.name!r}: positions must have shape ({n}, 3), "
                f"got {np.shape(self.positions)}"
            )

    @property
    def n_channels(self) -> int:
        return len(self.ch_names)


class Chunk(NamedTuple):
    """A block of consecutive samples.

    data : array, shape (n_samples, n_channels), float32
    timestamps : array, shape (n_samples,), float64 seconds on the local LSL clock
    """

    data: np.ndarray
    timestamps: np.ndarray


class NonFinite(NamedTuple):
    """Non-finite input in one chunk, and the output samples it affects.

    samples : int
        Input samples (time points) with a NaN or ±Inf in a channel that is used.
    start, stop : int
        Output samples ``[start, stop)`` affected, counted from the chunk's first output
        sample; ``stop`` may lie beyond the chunk (filters still settling after it).
    """

    samples: int
    start: int
    stop: int


def find_nonfinite(x: np.ndarray) -> NonFinite | None:
    """The non-finite rows of ``x`` (shape (n_samples, n_channels)), None if all are finite.

    One BLAS dot product (``x · x``, NaN or ±Inf when a value is) for a finite chunk: a
    fraction of a ufunc reduction's cost on a cold cache; the mask is only built when it
    fails. The affected span runs from the first to the last non-finite row (finite rows
    between them included).
    """
    flat = x.reshape(-1)
    if math.isfinite(np.dot(flat, flat)):
        return None
    rows = ~np.isfinite(x).all(axis=1)
    if not rows.any():  # the sum of squares overflowed; every value is finite
        return None
    first, last = int(np.argmax(rows)), len(rows) - int(np.argmax(rows[::-1]))
    return NonFinite(int(np.count_nonzero(rows)), first, last)


class Stream:
    """One source's samples as the engine sees them: a ring buffer written by one producer.

    The producer (an acquisition thread, or the offline replayer) calls :meth:`ingest`;
    readers take windows from :attr:`buffer` by sample counter. Listeners registered with
    :meth:`add_listener` are called (in the producer's thread) after every chunk.

    Thread-safety contract: :meth:`ingest` is called by one thread only (the producer), which
    also runs the listeners. :meth:`stats`, :meth:`arrival`, :meth:`clean` and the buffer's
    reads may be called from any thread at any time (see :class:`RingBuffer`): a sample is
    visible (``counter < buffer.count``) only once its data, timestamp, arrival time and its
    non-finite bookkeeping are complete. A reader copies a window ``[start, stop)`` and then
    calls ``clean(start, stop)``, which is False when the copy may be torn. Listeners are
    added and removed under a lock.

    Non-finite input (NaN, ±Inf): detected per chunk (one reduction when the chunk is finite),
    counted (:attr:`nonfinite_samples`, :attr:`nonfinite_chunks`) and logged once per burst.
    With preprocessing, the affected output samples are NaN in every channel and the filters
    restart on the first finite sample (see :class:`~rtbci.preprocess.Preprocessor`); without,
    the samples are stored as received. :meth:`clean` tells whether a window is affected.

    Clock jumps (timestamps stepping back, or forward by more than the arrival time did; see
    :class:`RingBuffer`): counted (``clock_jumps`` in :meth:`stats`) and logged, one line per
    jump naming its size and direction (each of the first ``JUMP_LOG_ALL``, then the 100th,
    1,000th …). A window spanning a jump is not :meth:`clean`; markers are looked up among the
    samples after the newest jump only (see :mod:`rtbci.scheduler`).

    Parameters
    ----------
    info : StreamInfo
    buffer_seconds : float
        Length of history kept, in seconds.
    clock : callable
        Returns the current time in seconds on the LSL clock (``pylsl.local_clock``); it
        stamps each chunk's arrival.
    preprocess : Preprocessor | None
        Applied to each chunk before it is written; :attr:`info` then describes its output
        (:attr:`raw_info` the source's stream).

    Attributes
    ----------
    nonfinite_samples : int
        Input samples with a NaN or ±Inf in a used channel, since the start.
    nonfinite_chunks : int
        Chunks that held at least one of them.
    """

    LATENCY_HISTORY = 4096  # chunks whose ingest latency is kept for the percentiles
    AFFECTED_HISTORY = 1024  # spans of affected samples remembered for clean()
    JUMP_LOG_ALL = 10  # clock jumps each logged; beyond: the 100th, 1,000th …

    def __init__(self, info: StreamInfo, buffer_seconds: float, clock: Callable[[], float],
                 preprocess: Preprocessor | None = None):
        if info.srate <= 0:
            raise ValueError(f"stream {info.name!r}: only regularly sampled streams are buffered")
        self.raw_info = info
        self.preprocess = preprocess if preprocess and not preprocess.is_identity else None
        info = self.preprocess.info if self.preprocess else info
        self.info = info
        self.clock = clock
        capacity = max(1, int(round(buffer_seconds * info.srate)))
        self.buffer = RingBuffer(capacity, info.n_channels, srate=info.srate)
        self._latency = LatencyWindow(self.LATENCY_HISTORY)  # seconds, per chunk
        self._first_timestamp = np.nan
        self._listeners: list[Callable[[], None]] = []
        self._raw_listeners: list[Callable[[np.ndarray, np.ndarray], None]] = []
        self._lock = threading.Lock()
        self.nonfinite_samples = 0
        self.nonfinite_chunks = 0
        # Affected spans [start, stop) of sample counters, oldest first, disjoint and sorted.
        self._affected: deque[tuple[int, int]] = deque(maxlen=self.AFFECTED_HISTORY)
        self._affected_end = 0  # stop of the newest span (0: none)
        self._forgotten_end = 0  # stop of the newest span dropped from the history
        self._affected_lock = threading.Lock()
        self._burst_samples = 0  # non-finite samples in the burst under way (0: none)
        self._jumps_seen = 0  # clock jumps logged (or passed over) so far

    def __repr__(self) -> str:
        i = self.info
        return (
            f"<Stream: {i.name} ({i.type}, {i.n_channels} ch @ {i.srate:g} Hz) | "
            f"{self.buffer.count} samples | gaps {self.buffer.gaps}>"
        )

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each ingested chunk (from the producer's thread)."""
        with self._lock:
            self._listeners.append(callback)

    def add_raw_listener(self, callback: Callable[[np.ndarray, np.ndarray], None]) -> None:
        """Call ``callback(data, timestamps)`` with each chunk as received, before any
        preprocessing (producer's thread; the arrays are only valid during the call)."""
        with self._lock:
            self._raw_listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.remove(callback)

    def ingest(self, data: np.ndarray, timestamps: np.ndarray,
               arrived: float | None = None) -> None:
        """Write a chunk and wake the listeners (producer thread only).

        Parameters
        ----------
        data : array, shape (n_samples, n_channels)
        timestamps : array, shape (n_samples,), seconds on the local LSL clock
        arrived : float | None
            When the producer pulled the chunk, seconds on :attr:`clock` (None: now, before
            any listener or preprocessing). Engine latency and ``late`` count from it.
        """
        if arrived is None:
            arrived = self.clock()
        if len(timestamps) == 0:
            return
        latency = arrived - timestamps[-1]  # of the raw chunk, before any resampling
        for callback in self._raw_listeners:
            callback(data, timestamps)
        if self.preprocess is not None:
            data, timestamps = self.preprocess.process(data, timestamps)
            nonfinite = self.preprocess.nonfinite
        else:
            nonfinite = find_nonfinite(data)
        buf = self.buffer
        start = buf.count
        if nonfinite is not None:
            self._note_nonfinite(start, nonfinite)
        elif self._burst_samples and start >= self._affected_end:
            self._end_burst()
        if len(timestamps) == 0:
            return
        if start == 0:
            self._first_timestamp = float(timestamps[0])
        buf.write(data, timestamps, arrived)  # publishes the samples last
        if buf.jumps != self._jumps_seen:
            self._log_jump()
        if start:  # the first chunk holds the backlog from before the connection
            self._latency.record(latency)
        for callback in self._listeners:
            callback()

    def _note_nonfinite(self, first: int, nonfinite: NonFinite) -> None:
        """Count a chunk's non-finite samples; remember the counters they affect (before the
        chunk is published, so that no reader sees them without it)."""
        start, stop = first + nonfinite.start, first + nonfinite.stop
        with self._affected_lock:
            spans = self._affected
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(stop, spans[-1][1]))
            else:
                if len(spans) == spans.maxlen:
                    self._forgotten_end = spans[0][1]
                spans.append((start, stop))
            self._affected_end = spans[-1][1]
        self.nonfinite_samples += nonfinite.samples
        self.nonfinite_chunks += 1
        if not self._burst_samples:
            log.warning("stream %r: non-finite samples (NaN/Inf) in its data; windows holding "
                        "them are not decoded until it is finite again", self.raw_info.name)
        self._burst_samples += nonfinite.samples

    def _log_jump(self) -> None:
        """Log the newest clock jump once its timestamps settled (its total size: LSL's
        dejitter spreads a jump over seconds of samples), or once it has gone on for a whole
        buffer; a chunk holding several jumps gives one line saying how many."""
        buf, first = self.buffer, self._jumps_seen + 1
        if buf.settling and buf.count - buf.jump_start < buf.capacity:
            return
        self._jumps_seen = buf.jumps
        if not any(n <= self.JUMP_LOG_ALL or str(n).rstrip("0") == "1"
                   for n in range(first, buf.jumps + 1)):
            return
        several = f"{buf.jumps - first + 1} clock jumps, the last " if buf.jumps > first else ""
        log.warning("stream %r: %sclock jumped %s by %.3f s at sample %d%s (%d so far); windows "
                    "across it are not decoded, markers stamped before it are dropped as stale",
                    self.raw_info.name, several, "back" if buf.last_jump < 0 else "forward",
                    abs(buf.last_jump), buf.jump_start,
                    f" (over {buf.anchor - buf.jump_start + 1} samples)"
                    if buf.anchor > buf.jump_start else "", buf.jumps)

    def _end_burst(self) -> None:
        log.info("stream %r: data finite again; %d non-finite samples in that burst",
                 self.raw_info.name, self._burst_samples)
        self._burst_samples = 0

    def clean(self, start: int, stop: int) -> bool:
        """Whether samples ``[start, stop)`` are fit to decode, as copied just before.

        False when one of them is affected by non-finite input (the non-finite samples and,
        after preprocessing, the filters' settling after them), when the window spans a clock
        jump, or when a sample was overwritten, or is being overwritten, while the window was
        copied (the copy may be torn). No scan of the
        samples: a comparison, and a walk over the remembered bursts only when there is one
        near the window.
        """
        if not self.buffer.intact(start) or not self.buffer.continuous(start, stop):
            return False
        if start >= self._affected_end:
            return True
        with self._affected_lock:
            if start < self._forgotten_end:
                return False
            for first, end in reversed(self._affected):
                if first < stop:  # the newest span that begins before the window's end
                    return end <= start
        return True

    def arrival(self, counter: int) -> float:
        """Local time (seconds) at which sample ``counter`` arrived in the engine."""
        try:
            return self.buffer.arrival(counter)
        except IndexError:
            raise IndexError(f"sample {counter} is not in stream {self.info.name!r}'s "
                             "buffer") from None
    def ingest_latency_ms(self) -> dict[str, float]:
        """Percentiles of (chunk arrival − its last sample's timestamp) over recent chunks, ms."""
        return self._latency.summary_ms(empty=float("nan"))

    def stats(self) -> dict:
        """Counters as written to ``--stats-json``.

        ``rate_hz`` is the sampling rate measured from the timestamps, time inside gaps and
        clock jumps excluded.
        """
        buf = self.buffer
        span = (buf.last_timestamp - self._first_timestamp - buf.gap_seconds - buf.jump_seconds
                if buf.count > 1 else 0)
        rate = (buf.count - 1) / span if span > 0 else 0.0
        return {
            "samples": buf.count,
            "gaps": buf.gaps,
            "gap_seconds": round(buf.gap_seconds, 6),
            "overflows": buf.overflows,
            "clock_jumps": buf.jumps,
            "nonfinite_samples": self.nonfinite_samples,
            "nonfinite_chunks": self.nonfinite_chunks,
            "rate_hz": round(rate, 3),
            "ingest_latency_ms": self.ingest_latency_ms(),
        }
