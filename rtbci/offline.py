"""Offline replay: an engine run straight from a recording, on a virtual clock.

Binding the config's sources to the recorded streams (:func:`bind_sources`), routing each
marker stream to its sources (:func:`marker_routes`), the virtual clock and the replay loop
behind :meth:`rtbci.engine.Engine.run_offline` (the public entry; it calls :func:`run_offline`).
Everything here runs on the engine's event loop; decoders run inline (``Scheduler(inline=True)``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from rtbci.devices.replay import schedule
from rtbci.preprocess import Preprocessor
from rtbci.scheduler import Scheduler
from rtbci.stream import Stream

if TYPE_CHECKING:
    from rtbci.devices.recording import Recording
    from rtbci.engine import Engine

__all__ = ["VirtualClock", "bind_sources", "marker_routes", "offline_streams", "run_offline"]

log = logging.getLogger("rtbci.engine")


async def run_offline(engine: Engine, recording: Recording, speed: float | None = None,
                      progress: Callable[[float], None] | None = None) -> dict:
    """:meth:`Engine.run_offline <rtbci.engine.Engine.run_offline>`: feed ``recording``'s
    chunks and markers to ``engine`` in replay order; returns ``engine.stats()``."""
    engine._loop = asyncio.get_running_loop()
    clock = VirtualClock()
    engine.clock = clock
    engine.scheduler = Scheduler(engine._loop, clock, engine._publish, inline=True)
    engine._limit_blas()
    for sink in engine.sinks:
        await sink.start(engine.status())
    try:
        streams, routes = await offline_streams(engine, recording)
        started, previous = time.perf_counter(), recording.start
        for n, event in enumerate(schedule(recording)):
            clock.set(event[0])
            if event[1] == "marker":
                for name in routes[event[2]]:
                    engine._on_marker(name, event[4], event[3], on_loop=True)
            else:
                _, _, i, start, stop = event
                source = recording.streams[i]
                for stream in streams[i]:
                    stream.ingest(source.data[start:stop], source.times[start:stop])
            if progress is not None:
                progress(event[0] - previous)
                previous = event[0]
            if speed is not None:
                await asyncio.sleep(max(0.0, (event[0] - recording.start) / speed
                                        - (time.perf_counter() - started)))
            elif n % 100 == 0:
                await asyncio.sleep(0)  # let network sinks send
        await engine._close_sinks()
        return engine.stats()
    finally:
        engine.scheduler.close()  # worker processes stop


async def offline_streams(engine: Engine, recording: Recording
                          ) -> tuple[dict, list[list[str]]]:
    """Build each bound source's Stream from its recorded stream.

    Returns (recorded stream index → its Streams, marker stream index → source names).
    Sources that match no recorded stream are logged and kept in ``engine.unmatched``.
    """
    bound = bind_sources(engine.config.sources, recording)
    by_index: dict[int, list[Stream]] = {i: [] for i in range(len(recording.streams))}
    for cfg in engine.config.sources:
        engine._register(cfg.name)
        i = bound.get(cfg.name)
        if i is None:
            engine.unmatched[cfg.name] = (f"matches no recorded stream (recorded: "
                                          f"{recording.describe()})")
            log.error("source %r %s; name one in its %s", cfg.name,
                      engine.unmatched[cfg.name],
                      "stream.name" if cfg.kind == "lsl" else "stream_name")
            continue
        info = recording.streams[i].info
        stream = Stream(info, cfg.buffer_seconds, engine.clock,
                        Preprocessor(engine.preprocess[cfg.name], info))
        engine._streams[cfg.name] = stream
        by_index[i].append(stream)
        for sink in engine.sinks:
            sink.stream_added(cfg.name, stream)
        stream.add_listener(partial(engine.scheduler.on_data, stream))
        await engine._attach_all(cfg.name, stream)
    routes = marker_routes(engine.config.sources, bound, recording)
    for ms, names in zip(recording.marker_streams, routes, strict=True):
        log.info("marker stream %r (%d markers) → %s", ms.name, len(ms.markers),
                 ", ".join(map(repr, names)) or "no source")
    return by_index, routes


class VirtualClock:
    """Offline time: the current chunk's timestamp plus the real time spent since it was fed."""

    def __init__(self):
        self._at, self._since = 0.0, time.perf_counter()

    def set(self, timestamp: float) -> None:
        self._at, self._since = timestamp, time.perf_counter()

    def __call__(self) -> float:
        return self._at + (time.perf_counter() - self._since)


def _query_matches(query, name: str, type_: str, source_id: str) -> bool:
    """Whether an LSL query (:class:`~rtbci.config.StreamQuery`) selects this stream."""
    return all(want is None or want == have for want, have in (
        (query.name, name), (query.type, type_), (query.source_id, source_id)))


def _names_explicitly(cfg, stream) -> bool:
    """Whether ``[[sources]]`` entry ``cfg`` names recorded stream ``stream`` by its LSL name
    or source_id (an lsl ``stream`` query with a name or source_id; a simulate source's
    ``stream_name`` or name)."""
    info = stream.info
    if cfg.kind == "lsl":
        return bool(cfg.stream.name or cfg.stream.source_id) and _query_matches(
            cfg.stream, info.name, info.type, info.source_id)
    return info.name == (cfg.stream_name or cfg.name)


def bind_sources(sources: list, recording: Recording) -> dict[str, int]:
    """Which recorded stream each ``[[sources]]`` entry reads: source name → stream index
    (sources matching nothing are left out).

    First every source takes the stream it recorded (session directories), else the stream
    it names explicitly (:func:`_names_explicitly`); several sources may name the same
    stream, as they may read the same LSL stream live. Then, among the streams still
    unbound, each other source takes the stream named like it, else the first of its
    ``stream.type``; and a config with a single source takes a recording's single stream.
    Such implicit matches bind a stream to at most one source.
    """
    streams = recording.streams
    bound: dict[str, int] = {}
    for cfg in sources:
        i = next((i for i, s in enumerate(streams) if s.source == cfg.name), None)
        if i is None:
            i = next((i for i, s in enumerate(streams) if _names_explicitly(cfg, s)), None)
        if i is not None:
            bound[cfg.name] = i
    taken = set(bound.values())
    for cfg in sources:
        if cfg.name in bound:
            continue
        wanted_type = cfg.stream.type if cfg.kind == "lsl" else None
        free = [i for i in range(len(streams)) if i not in taken]
        i = next((i for i in free if streams[i].info.name == cfg.name), None)
        if i is None and wanted_type:
            i = next((i for i in free if streams[i].info.type == wanted_type), None)
        if i is None and len(sources) == 1 and len(streams) == 1:
            i = 0
        if i is not None:
            bound[cfg.name] = i
            taken.add(i)
    return bound


def marker_routes(sources: list, bound: dict[str, int], recording: Recording) -> list[list[str]]:
    """The sources each marker stream of ``recording`` goes to (by index), as live: those
    bound to the signal stream that owns it (a file's annotations, a session source's
    markers, ``<signal>-markers``), and those whose ``markers`` query selects it."""
    routes = []
    for ms in recording.marker_streams:
        routes.append([cfg.name for cfg in sources if cfg.name in bound and (
            (ms.owner is not None and bound[cfg.name] == ms.owner)
            or (getattr(cfg, "markers", None) is not None
                and _query_matches(cfg.markers, ms.name, ms.type, ms.source_id)))])
    return routes
