"""Acquisition: one thread per source that moves its chunks into a :class:`Stream`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from rtbci.devices.base import Source, SourceLost
from rtbci.health import Heartbeat
from rtbci.stream import Stream, StreamInfo

log = logging.getLogger("rtbci.acquisition")


class Acquisition:
    """Drive ``source`` in a dedicated thread: wait for the stream, then poll and ingest.

    The thread waits in the source for data (up to ``wait_s`` at a time, so a stop request is
    honoured within that) and writes each chunk into the stream's ring buffer in place. A stream
    that is not there yet is waited for; one that vanishes is re-opened when it comes back
    (pylsl recovers streams with a source_id by itself; the timestamp jump counts as a gap).

    Parameters
    ----------
    source : Source
    make_stream : callable(StreamInfo) -> Stream
        Builds the stream when the source first opens.
    on_stream : callable(Stream)
        Called once (in this thread) when the stream exists.
    stall_s : float
        A stream silent for this long is reported as stalled (logged once until it resumes).
    """

    def __init__(self, source: Source, make_stream: Callable[[StreamInfo], Stream],
                 on_stream: Callable[[Stream], None] = lambda stream: None,
                 wait_s: float = 0.1, stall_s: float = 1.0):
        self.source = source
        self.make_stream = make_stream
        self.on_stream = on_stream
        self.wait_s = wait_s
        self.stall_s = stall_s
        self.stream: Stream | None = None
        self.state = "waiting"  # waiting | streaming | stalled | failed | stopped
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"acq-{source.name}", daemon=True)
        self._remap: ChannelMap | None = None  # a stream that came back in another order
        self.thread = self._thread  # watched by the engine's health watch
        self.heartbeat = Heartbeat()  # beats once per read (a read waits at most wait_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._open():
                    self._pump()
        except Exception as exc:  # a broken source must not take the engine down
            self.state, self.error = "failed", f"{self.source.describe()}: {exc}"
            log.error("source %r failed: %s", self.source.name, exc)
        finally:
            self.source.close()
            if self.state != "failed":
                self.state = "stopped"

    def _open(self) -> bool:
        waited = 0.0
        while not self._stop.is_set():
            self.heartbeat.idle = True  # waiting for the stream is no stall
            info = self.source.open(timeout=1.0)
            self.heartbeat.idle = False
            self.heartbeat.beat()
            if info is not None:
                self._attach(info)
                log.info("source %r connected: %s (%d ch @ %g Hz)", self.source.name,
                         self.source.describe(), info.n_channels, info.srate)
                self.state = "streaming"
                return True
            if waited % 5.0 == 0.0:
                log.info("waiting for stream %s (source %r)", self.source.describe(),
                         self.source.name)
            waited += 1.0
        return False

    def _attach(self, info: StreamInfo) -> None:
        if self.stream is None:
            self.stream = self.make_stream(info)
            self.on_stream(self.stream)
            return
        # a returning stream: compared with the raw stream it replaces (not the preprocessed)
        old = self.stream.raw_info
        self._remap = None
        mapping = ChannelMap.between(old, info, used_channels(self.stream))
        if mapping is not None:
            self._remap = mapping
            log.warning("source %r: the stream came back with %s; re-mapped by channel name",
                        self.source.name, mapping.change)

    def _pump(self) -> None:
        source, stream, stop, beat = self.source, self.stream, self._stop, self.heartbeat
        last_data = time.monotonic()
        while not stop.is_set():
            beat.at = time.monotonic()
            try:
                chunk = source.read(self.wait_s)
                arrived = stream.clock()  # the pull: engine latency and `late` count from here
            except SourceLost as exc:
                log.warning("source %r: %s; waiting for it to come back", source.name, exc)
                source.close()
                self.state = "waiting"
                return
            if chunk is not None:
                remap = self._remap
                stream.ingest(chunk.data if remap is None else remap(chunk.data),
                              chunk.timestamps, arrived)
                if self.state == "stalled":
                    log.info("source %r resumed after %.1f s", source.name,
                             time.monotonic() - last_data)
                    self.state = "streaming"
                last_data = time.monotonic()
                continue  # more may be waiting
            if self.state == "streaming" and time.monotonic() - last_data > self.stall_s:
                self.state = "stalled"
                log.warning("source %r: no data for %.1f s", source.name, self.stall_s)


class StreamChanged(ValueError):
    """A returning stream differs from the one it replaces in a way that cannot be re-mapped."""


def used_channels(stream: Stream) -> set[str]:
    """Names of the raw channels ``stream`` uses: its picks and named reference, else all."""
    config = stream.preprocess.config if stream.preprocess is not None else None
    if config is None or config.picks is None:
        return set(stream.raw_info.ch_names)
    used = set(config.picks)
    if isinstance(config.reference, list):
        used |= set(config.reference)
    return used


class ChannelMap:
    """Puts a returning stream's columns back in the order of the stream it replaces.

    ``map(data)`` (shape (n_samples, n_new)) → (n_samples, n_old), written into a buffer
    kept between chunks (grown only for a longer chunk): column ``i`` is the new stream's
    channel named like old channel ``i``; NaN for an old channel that is gone (only channels
    the engine does not use may go). Valid until the next call.
    """

    def __init__(self, columns: np.ndarray, missing: np.ndarray, change: str):
        self.columns, self.missing, self.change = columns, missing, change
        self._out = np.empty((0, len(columns)), dtype=np.float32)

    def __call__(self, data: np.ndarray) -> np.ndarray:
        n = len(data)
        if n > len(self._out) or data.dtype != self._out.dtype:
            self._out = np.empty((max(n, 4096), len(self.columns)), dtype=data.dtype)
        out = np.take(data, self.columns, axis=1, out=self._out[:n], mode="clip")
        if len(self.missing):
            out[:, self.missing] = np.nan
        return out

    @classmethod
    def between(cls, old: StreamInfo, new: StreamInfo, used: set[str]) -> ChannelMap | None:
        """None when ``new`` is ``old`` again (rate, channel names, order, types and units);
        a map when ``new`` holds every used channel of ``old`` by name, with the same type
        and unit, at the same rate.

        Raises
        ------
        StreamChanged
            Otherwise, naming every difference.
        """
        same = (new.srate == old.srate and new.ch_names == old.ch_names
                and new.ch_types == old.ch_types and new.ch_units == old.ch_units)
        if same:
            return None
        problems = []
        if new.srate != old.srate:
            problems.append(f"rate {new.srate:g} Hz instead of {old.srate:g} Hz")
        index = {name: i for i, name in enumerate(new.ch_names)}
        doubled = sorted({n for n in new.ch_names if new.ch_names.count(n) > 1} & used)
        if doubled:
            problems.append(f"channel names used twice: {_names(doubled)}")
        gone = [n for n in old.ch_names if n in used and n not in index]
        if gone:
            problems.append(f"channels gone: {_names(gone)}")
        for i, name in enumerate(old.ch_names):
            j = index.get(name)
            if name in used and j is not None:
                for what, was, now in (("type", old.ch_types[i], new.ch_types[j]),
                                       ("unit", old.ch_units[i], new.ch_units[j])):
                    if was != now:
                        problems.append(f"{what} of {name!r} {now!r} instead of {was!r}")
        if problems:
            added = [n for n in new.ch_names if n not in set(old.ch_names)]
            more = f"; new channel names: {_names(added)}" if added else ""
            raise StreamChanged(
                f"stream {old.name!r} came back changed ({new.n_channels} ch @ {new.srate:g} Hz "
                f"instead of {old.n_channels} ch @ {old.srate:g} Hz): " + "; ".join(problems)
                + more + "; stopped rather than mislabel its data: restart the engine to use "
                "the new stream")
        columns = np.array([index.get(name, 0) for name in old.ch_names], dtype=np.intp)
        missing = np.array([i for i, n in enumerate(old.ch_names) if n not in index], np.intp)
        if np.array_equal(columns, np.arange(new.n_channels)):
            change = "other types or units on channels it does not use"
        elif new.n_channels == old.n_channels and not len(missing):
            change = "its channels in another order"
        else:
            change = (f"{new.n_channels} channels instead of {old.n_channels} (every channel "
                      "used is still there" + (f"; unused and gone, NaN: "
                                                f"{_names([old.ch_names[i] for i in missing])}"
                                                if len(missing) else "") + ")")
        return cls(columns, missing, change)


def _names(names: list[str], most: int = 8) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(map(repr, names[:most])) + more
