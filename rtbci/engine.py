"""The engine: sources → streams → (scheduler → decoders) → sinks, on one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from functools import partial

import pylsl

from rtbci.acquisition import Acquisition
from rtbci.config import Config
from rtbci.devices import make_source
from rtbci.devices.lsl import MarkerReader
from rtbci.stream import Stream, StreamInfo

log = logging.getLogger("rtbci.engine")


class Engine:
    """Runs a validated :class:`~rtbci.config.Config`.

    Parameters
    ----------
    config : Config
    clock : callable
        Seconds on the LSL clock; stamps arrivals and every timing field.
    """

    def __init__(self, config: Config, clock: Callable[[], float] = pylsl.local_clock):
        self.config = config
        self.clock = clock
        self.acquisitions: dict[str, Acquisition] = {}
        self.markers: dict[str, deque[tuple[float, str]]] = {}  # per source: (timestamp, text)
        self.markers_received: dict[str, int] = {}
        self._marker_readers: list[MarkerReader] = []
        self._companions: list = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<Engine: session {self.config.engine.session} | streams {list(self.streams)}>"

    def _start_sources(self) -> None:
        for cfg in self.config.sources:
            source, marker_query, companion = make_source(cfg)
            if companion is not None:
                self._companions.append(companion)
            self.markers[cfg.name] = deque(maxlen=10_000)
            self.markers_received[cfg.name] = 0
            if marker_query:
                reader = MarkerReader(marker_query, partial(self._on_marker, cfg.name))
                self._marker_readers.append(reader.start())

            def make_stream(info: StreamInfo, cfg=cfg) -> Stream:
                return Stream(info, cfg.buffer_seconds, self.clock)

            acq = Acquisition(source, make_stream)
            self.acquisitions[cfg.name] = acq
            acq.start()

    def _on_marker(self, source: str, timestamp: float, text: str) -> None:
        """Called from a marker reader thread."""
        self.markers[source].append((timestamp, text))
        self.markers_received[source] += 1

    @property
    def streams(self) -> dict[str, Stream]:
        """The streams that exist so far (a source's stream appears when it first connects)."""
        return {name: a.stream for name, a in self.acquisitions.items() if a.stream is not None}

    async def run(self, duration: float | None = None, stop: asyncio.Event | None = None,
                  on_tick: Callable[[Engine], None] | None = None) -> dict:
        """Run until ``duration`` seconds passed or ``stop`` is set; return :meth:`stats`.

        ``on_tick(engine)`` is called every ``engine.stats_interval_s`` (live stats).
        """
        self._loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        self._start_sources()
        try:
            deadline = None if duration is None else self._loop.time() + duration
            interval = self.config.engine.stats_interval_s
            while not stop.is_set():
                timeout = interval if deadline is None else min(
                    interval, deadline - self._loop.time())
                if timeout <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout)
                if on_tick is not None:
                    on_tick(self)
        finally:
            await self.shutdown()
        return self.stats()

    async def shutdown(self) -> None:
        stoppers = [*self.acquisitions.values(), *self._marker_readers]
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in stoppers))
        for companion in self._companions:
            companion.stop()

    def stats(self) -> dict:
        """The ``--stats-json`` document: per-stream counters and per-decoder figures."""
        streams = {}
        for name, acq in self.acquisitions.items():
            stream = acq.stream
            entry = stream.stats() if stream else {"samples": 0, "gaps": 0, "overflows": 0,
                                                    "rate_hz": 0.0}
            entry["markers"] = self.markers_received[name]
            entry["state"] = acq.state
            if acq.error:
                entry["error"] = acq.error
            streams[name] = entry
        return {"streams": streams, "decoders": {}}
