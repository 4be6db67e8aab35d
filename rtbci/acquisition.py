"""Acquisition: one thread per source that moves its chunks into a :class:`Stream`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rtbci.devices.base import Source, SourceLost
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
            info = self.source.open(timeout=1.0)
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
        old = self.stream.info
        if (info.n_channels, info.srate) != (old.n_channels, old.srate):
            raise ValueError(
                f"stream came back with {info.n_channels} ch @ {info.srate:g} Hz instead of "
                f"{old.n_channels} ch @ {old.srate:g} Hz")

    def _pump(self) -> None:
        source, stream, stop = self.source, self.stream, self._stop
        last_data = time.monotonic()
        while not stop.is_set():
            try:
                chunk = source.read(self.wait_s)
            except SourceLost as exc:
                log.warning("source %r: %s; waiting for it to come back", source.name, exc)
                source.close()
                self.state = "waiting"
                return
            if chunk is not None:
                stream.ingest(chunk.data, chunk.timestamps)
                if self.state == "stalled":
                    log.info("source %r resumed after %.1f s", source.name,
                             time.monotonic() - last_data)
                    self.state = "streaming"
                last_data = time.monotonic()
                continue  # more may be waiting
            if self.state == "streaming" and time.monotonic() - last_data > self.stall_s:
                self.state = "stalled"
                log.warning("source %r: no data for %.1f s", source.name, self.stall_s)
