"""Stream metadata, chunks, and :class:`Stream`: one source's ring buffer plus its counters."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from rtbci.latency import LatencyWindow
from rtbci.ringbuffer import RingBuffer

if TYPE_CHECKING:
    from rtbci.preprocess import Preprocessor


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


class Stream:
    """One source's samples as the engine sees them: a ring buffer written by one producer.

    The producer (an acquisition thread, or the offline replayer) calls :meth:`ingest`;
    readers take windows from :attr:`buffer` by sample counter. Listeners registered with
    :meth:`add_listener` are called (in the producer's thread) after every chunk.

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
    """

    LATENCY_HISTORY = 4096  # chunks whose ingest latency is kept for the percentiles

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
        self._arrivals = np.zeros(capacity, dtype=np.float64)  # arrival time per sample
        self._latency = LatencyWindow(self.LATENCY_HISTORY)  # seconds, per chunk
        self._first_timestamp = np.nan
        self._listeners: list[Callable[[], None]] = []
        self._raw_listeners: list[Callable[[np.ndarray, np.ndarray], None]] = []
        self._lock = threading.Lock()

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

    def ingest(self, data: np.ndarray, timestamps: np.ndarray) -> None:
        """Write a chunk and wake the listeners.

        Parameters
        ----------
        data : array, shape (n_samples, n_channels)
        timestamps : array, shape (n_samples,), seconds on the local LSL clock
        """
        arrived = self.clock()
        if len(timestamps) == 0:
            return
        latency = arrived - timestamps[-1]  # of the raw chunk, before any resampling
        for callback in self._raw_listeners:
            callback(data, timestamps)
        if self.preprocess is not None:
            data, timestamps = self.preprocess.process(data, timestamps)
        n = len(timestamps)
        if n == 0:
            return
        buf = self.buffer
        if buf.count == 0:
            self._first_timestamp = float(timestamps[0])
        start = buf.count
        buf.write(data, timestamps)
        self._mark_arrival(start, buf.count, arrived)
        if start:  # the first chunk holds the backlog from before the connection
            self._latency.record(latency)
        for callback in self._listeners:
            callback()

    def _mark_arrival(self, start: int, stop: int, arrived: float) -> None:
        cap = self.buffer.capacity
        start = max(start, stop - cap)
        i, j = start % cap, (stop - 1) % cap + 1
        if i < j:
            self._arrivals[i:j] = arrived
        else:
            self._arrivals[i:] = arrived
            self._arrivals[:j] = arrived

    def arrival(self, counter: int) -> float:
        """Local time (seconds) at which sample ``counter`` arrived in the engine."""
        if not (self.buffer.oldest <= counter < self.buffer.count):
            raise IndexError(f"sample {counter} is not in stream {self.info.name!r}'s buffer")
        return float(self._arrivals[counter % self.buffer.capacity])

    def ingest_latency_ms(self) -> dict[str, float]:
        """Percentiles of (chunk arrival − its last sample's timestamp) over recent chunks, ms."""
        return self._latency.summary_ms(empty=float("nan"))

    def stats(self) -> dict:
        """Counters as written to ``--stats-json``.

        ``rate_hz`` is the sampling rate measured from the timestamps, time inside gaps excluded.
        """
        buf = self.buffer
        span = buf.last_timestamp - self._first_timestamp - buf.gap_seconds if buf.count > 1 else 0
        rate = (buf.count - 1) / span if span > 0 else 0.0
        return {
            "samples": buf.count,
            "gaps": buf.gaps,
            "gap_seconds": round(buf.gap_seconds, 6),
            "overflows": buf.overflows,
            "rate_hz": round(rate, 3),
            "ingest_latency_ms": self.ingest_latency_ms(),
        }
