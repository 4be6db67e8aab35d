"""The engine: sources → streams → scheduler → decoders → sinks, on one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from functools import partial

import numpy as np
import pylsl

from rtbci import __version__
from rtbci.acquisition import Acquisition
from rtbci.config import Config, DecoderConfig, SourceConfig, summarize_markers
from rtbci.devices import make_source
from rtbci.devices.lsl import MarkerReader
from rtbci.devices.recording import Recording
from rtbci.devices.replay import schedule
from rtbci.errors import RtbciError
from rtbci.messages import Result
from rtbci.models import checkpoint_path, is_checkpoint, load_decoder
from rtbci.models.checkpoint import load_checkpoint
from rtbci.preprocess import PreprocessConfig, Preprocessor
from rtbci.scheduler import DecoderTask, Scheduler, TriggerSpec
from rtbci.sinks import Sink, make_sink
from rtbci.stream import Stream, StreamInfo

log = logging.getLogger("rtbci.engine")

WATCHDOG_S = 0.05
MARKER_HINT_AFTER = 10  # markers on a source before saying an on_marker decoder matched none


class Engine:
    """Runs a validated :class:`~rtbci.config.Config`.

    Parameters
    ----------
    config : Config
    clock : callable
        Seconds on the LSL clock; stamps arrivals and every timing field.
    sinks : list of Sink | None
        Extra sinks besides the configured ones (e.g. a test's collector).
    """

    def __init__(self, config: Config, clock: Callable[[], float] = pylsl.local_clock,
                 sinks: list[Sink] | None = None):
        self.config = config
        self.clock = clock
        self.session = config.engine.session
        self.acquisitions: dict[str, Acquisition] = {}
        self.markers: dict[str, deque[tuple[float, str]]] = {}  # per source: (timestamp, text)
        self.markers_received: dict[str, int] = {}
        self.sinks: list[Sink] = [make_sink(s, self.session, config) for s in config.sinks]
        self.sinks += sinks or []
        self.decoder_status: dict[str, dict] = {}  # status(): running or failed decoders
        # stats(): every configured decoder's state: loading → running | failed
        self.decoder_states: dict[str, str] = {cfg.name: "loading" for cfg in config.decoders}
        self._unmatched = {cfg.name: cfg for cfg in config.decoders if cfg.on_marker}
        self._streams: dict[str, Stream] = {}
        self.scheduler: Scheduler | None = None
        self._marker_readers: list[MarkerReader] = []
        self._companions: list = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attaching: set[asyncio.Future] = set()
        self.preprocess = {cfg.name: source_preprocess(cfg, config) for cfg in config.sources}

    def __repr__(self) -> str:
        return f"<Engine: session {self.session} | streams {list(self.streams)}>"

    def _register(self, source: str) -> None:
        self.markers[source] = deque(maxlen=10_000)
        self.markers_received[source] = 0

    @property
    def streams(self) -> dict[str, Stream]:
        """The streams that exist so far (a source's stream appears when it first connects)."""
        return dict(self._streams)

    # --- start-up -------------------------------------------------------------------------

    def _start_sources(self) -> None:
        for cfg in self.config.sources:
            source, marker_query, companion = make_source(cfg)
            if companion is not None:
                self._companions.append(companion)
            self._register(cfg.name)
            if marker_query:
                reader = MarkerReader(marker_query, partial(self._on_marker, cfg.name))
                self._marker_readers.append(reader.start())

            def make_stream(info: StreamInfo, cfg=cfg) -> Stream:
                return Stream(info, cfg.buffer_seconds, self.clock,
                              Preprocessor(self.preprocess[cfg.name], info))

            acq = Acquisition(source, make_stream, on_stream=partial(self._on_stream, cfg.name))
            self.acquisitions[cfg.name] = acq
            acq.start()

    def _on_stream(self, name: str, stream: Stream) -> None:
        """Acquisition thread: a source's stream exists; attach its decoders on the loop."""
        self._streams[name] = stream
        for sink in self.sinks:
            sink.stream_added(name, stream)
        self._loop.call_soon_threadsafe(self._attach_decoders, name, stream)
        pending = [False]

        def wake() -> None:  # coalesce wake-ups: one scheduled call at a time
            if not pending[0]:
                pending[0] = True
                self._loop.call_soon_threadsafe(run)

        def run() -> None:
            pending[0] = False
            self.scheduler.on_data(stream)

        stream.add_listener(wake)

    def _attach_decoders(self, source: str, stream: Stream) -> None:
        """On the loop: start building ``source``'s decoders (they attach when ready)."""
        task = asyncio.ensure_future(self._attach_all(source, stream))
        self._attaching.add(task)
        task.add_done_callback(self._attaching.discard)

    async def _attach_all(self, source: str, stream: Stream) -> None:
        """Build each decoder of ``source`` in a worker thread (loading, compiling and
        warming up can take seconds: the loop keeps running), then register it."""
        for i, cfg in enumerate(self.config.decoders):
            if cfg.source != source:
                continue
            where = f"decoders[{i}]"
            try:
                decoder, trigger = await asyncio.to_thread(self._build, cfg, stream, where)
            except Exception as exc:  # one decoder that cannot start must not stop the others
                message = str(exc) if isinstance(exc, RtbciError) else (
                    f"{where} ({cfg.name!r}): failed to start: {type(exc).__name__}: {exc}")
                log.error("%s", message)
                self.decoder_status[cfg.name] = {"error": message}
                self.decoder_states[cfg.name] = "failed"
                continue
            self._register_decoder(cfg, decoder, trigger, stream)
        for sink in self.sinks:
            sink.status_changed(self.status())

    def _build(self, cfg: DecoderConfig, stream: Stream, where: str):
        """Load and warm up a decoder, and work out its trigger in samples (any thread)."""
        decoder = load_decoder(cfg, stream.info, where, self.config.base_dir,
                               self.preprocess[cfg.source])
        start, length = decoder.window_start, decoder.n_samples
        decoder(np.zeros((length, stream.info.n_channels), np.float32))  # warm-up, off the clock
        every = round(cfg.every_ms * 1e-3 * stream.info.srate) if cfg.every_ms else 0
        if cfg.every_ms and every < 1:
            raise RtbciError(f"{where}.every_ms: {cfg.every_ms} ms is under one sample")
        if length > stream.buffer.capacity:
            raise RtbciError(f"{where}.window_ms: longer than sources.buffer_seconds")
        return decoder, TriggerSpec(length=length, every=every, marker=cfg.on_marker,
                                    start=start)

    def _register_decoder(self, cfg: DecoderConfig, decoder, trigger: TriggerSpec,
                          stream: Stream) -> None:
        start, length, every = trigger.start, trigger.length, trigger.every
        task = DecoderTask(cfg.name, decoder, stream, trigger, cfg.budget_ms, cfg.timeout_ms,
                           self.session)
        self.scheduler.add(task, cfg.device)
        self.decoder_states[cfg.name] = "running"
        self.decoder_status[cfg.name] = {
            "source": cfg.source, "kind": decoder.kind, "labels": decoder.labels,
            "output_size": decoder.output_size, "window": [start, length],
            "every": every, "on_marker": cfg.on_marker, "budget_ms": cfg.budget_ms,
            "runtime": decoder.describe(), "channels": getattr(decoder, "channel_names", None)}
        log.info("decoder %r on %r: %s, window %d samples, %s, budget %g ms, %s", cfg.name,
                 cfg.source, decoder.kind, length,
                 f"every {every} samples" if every else f"on marker {cfg.on_marker!r}",
                 cfg.budget_ms, decoder.describe())

    def _on_marker(self, source: str, timestamp: float, text: str, direct: bool = False) -> None:
        """Keep a marker and trigger event-locked decoders: from a marker reader thread (via
        the loop), or ``direct`` on the loop's own thread (offline replay)."""
        self.markers[source].append((timestamp, text))
        self.markers_received[source] += 1
        self._hint_unmatched(source, text)
        for sink in self.sinks:
            sink.marker(source, timestamp, text)
        stream = self._streams.get(source)
        if stream is None or self._loop is None:
            return
        if direct:
            self.scheduler.on_marker(stream, timestamp, text)
        else:
            self._loop.call_soon_threadsafe(self.scheduler.on_marker, stream, timestamp, text)

    def _hint_unmatched(self, source: str, text: str) -> None:
        """Warn once per event-locked decoder whose ``on_marker`` matched none of the first
        :data:`MARKER_HINT_AFTER` markers of its source, naming the markers there are."""
        tasks = self.scheduler.tasks if self.scheduler else {}
        for name, cfg in list(self._unmatched.items()):
            if cfg.source != source or name not in tasks:
                continue
            if tasks[name].trigger.matches(text):
                del self._unmatched[name]
            elif self.markers_received[source] >= MARKER_HINT_AFTER:
                del self._unmatched[name]
                i = self.config.decoders.index(cfg)
                log.warning("decoders[%d] (%r).on_marker %r matched none of the %d markers on "
                            "source %r so far; markers there: %s", i, name, cfg.on_marker,
                            self.markers_received[source], source,
                            summarize_markers(t for _, t in self.markers[source]))

    def status(self) -> dict:
        """The engine's status (sent retained on MQTT): session, streams, decoders."""
        streams = {name: {"lsl_name": s.raw_info.name, "source_id": s.raw_info.source_id,
                          "type": s.info.type, "n_channels": s.info.n_channels,
                          "srate": s.info.srate, "ch_names": list(s.info.ch_names)}
                   for name, s in self.streams.items()}
        return {"session": self.session, "version": __version__, "streams": streams,
                "decoders": dict(self.decoder_status)}

    # --- running --------------------------------------------------------------------------

    def _publish(self, result: Result) -> None:
        for sink in self.sinks:
            try:
                sink.publish(result)
            except Exception as exc:  # a broken sink must not stop the others
                log.error("sink %s failed: %s", sink.kind, exc)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_S)
            self.scheduler.check_hung()

    async def run(self, duration: float | None = None, stop: asyncio.Event | None = None,
                  on_tick: Callable[[Engine], None] | None = None) -> dict:
        """Run until ``duration`` seconds passed or ``stop`` is set; return :meth:`stats`.

        ``on_tick(engine)`` is called every ``engine.stats_interval_s`` (live stats).
        """
        self._loop = asyncio.get_running_loop()
        self.scheduler = Scheduler(self._loop, self.clock, self._publish)
        stop = stop or asyncio.Event()
        for sink in self.sinks:
            await sink.start(self.status())
        self._start_sources()
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await self._wait(duration, stop, on_tick)
        finally:
            watchdog.cancel()
            for task in list(self._attaching):
                task.cancel()
            await self.shutdown()
        return self.stats()

    async def _wait(self, duration, stop, on_tick) -> None:
        deadline = None if duration is None else self._loop.time() + duration
        interval = self.config.engine.stats_interval_s
        while not stop.is_set():
            timeout = interval if deadline is None else min(interval,
                                                            deadline - self._loop.time())
            if timeout <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout)
            stats = self.stats()
            for sink in self.sinks:
                sink.stats_tick(stats)
            if on_tick is not None:
                on_tick(self)

    # --- offline replay -------------------------------------------------------------------

    async def run_offline(self, recording: Recording, speed: float | None = None,
                          progress: Callable[[float], None] | None = None) -> dict:
        """Run the same pipeline straight from a recording, on a virtual clock.

        Chunks (10 ms, as :func:`rtbci.devices.replay.schedule` cuts them) and markers are
        fed in timestamp order; every decoder runs inline, so nothing is skipped and the
        windows and outputs equal a live run's. The clock reads the current chunk's last
        timestamp plus the real time spent since it was fed, so latency fields show compute
        time. ``speed`` paces the replay (None: as fast as the machine allows);
        ``progress(seconds)`` is called with the recording time advanced.
        """
        self._loop = asyncio.get_running_loop()
        clock = VirtualClock()
        self.clock = clock
        self.scheduler = Scheduler(self._loop, clock, self._publish, inline=True)
        for sink in self.sinks:
            await sink.start(self.status())
        streams = await self._offline_streams(recording)
        started, previous = time.perf_counter(), recording.start
        for n, event in enumerate(schedule(recording)):
            clock.set(event[0])
            if event[1] == "marker":
                for name in self._streams:
                    self._on_marker(name, event[0], event[2], direct=True)
            else:
                _, _, i, start, stop = event
                source = recording.streams[i]
                streams[i].ingest(source.data[start:stop], source.times[start:stop])
            if progress is not None:
                progress(event[0] - previous)
                previous = event[0]
            if speed is not None:
                await asyncio.sleep(max(0.0, (event[0] - recording.start) / speed
                                        - (time.perf_counter() - started)))
            elif n % 100 == 0:
                await asyncio.sleep(0)  # let network sinks send
        await self._close_sinks()
        return self.stats()

    async def _offline_streams(self, recording: Recording) -> dict:
        """Build each source's Stream from its recorded stream; index → Stream."""
        by_index = {}
        for cfg in self.config.sources:
            i = match_source(cfg, recording)
            stream = Stream(recording.streams[i].info, cfg.buffer_seconds, self.clock,
                            Preprocessor(self.preprocess[cfg.name],
                                         recording.streams[i].info))
            self._register(cfg.name)
            self._streams[cfg.name] = stream
            by_index[i] = stream
            for sink in self.sinks:
                sink.stream_added(cfg.name, stream)
            stream.add_listener(partial(self.scheduler.on_data, stream))
            await self._attach_all(cfg.name, stream)
        return by_index

    async def shutdown(self) -> None:
        stoppers = [*self.acquisitions.values(), *self._marker_readers]
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in stoppers))
        await asyncio.sleep(0)  # let results already handed back reach the sinks
        self.scheduler.close()
        await self._close_sinks()
        for companion in self._companions:
            companion.stop()

    async def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                await sink.close()
            except Exception as exc:
                log.error("closing sink %s: %s", sink.kind, exc)

    def stats(self) -> dict:
        """The ``--stats-json`` document: per-stream counters, per-decoder figures, sinks."""
        streams = {}
        for name in self.markers_received:
            stream, acq = self._streams.get(name), self.acquisitions.get(name)
            entry = stream.stats() if stream else {"samples": 0, "gaps": 0, "overflows": 0,
                                                    "rate_hz": 0.0}
            entry["markers"] = self.markers_received[name]
            entry["state"] = acq.state if acq else "replayed"
            if acq and acq.error:
                entry["error"] = acq.error
            streams[name] = entry
        tasks = self.scheduler.tasks if self.scheduler else {}
        decoders = {}
        for name in [*self.decoder_states, *(n for n in tasks if n not in self.decoder_states)]:
            entry = tasks[name].stats() if name in tasks else {"results": 0}
            entry["state"] = self.decoder_states.get(name, "running")
            if "error" in self.decoder_status.get(name, {}):
                entry["error"] = self.decoder_status[name]["error"]
            decoders[name] = entry
        sinks = {f"{s.kind}[{i}]": s.stats() for i, s in enumerate(self.sinks) if s.stats()}
        return {"streams": streams, "decoders": decoders, "sinks": sinks}


class VirtualClock:
    """Offline time: the current chunk's timestamp plus the real time spent since it was fed."""

    def __init__(self):
        self._at, self._since = 0.0, time.perf_counter()

    def set(self, timestamp: float) -> None:
        self._at, self._since = timestamp, time.perf_counter()

    def __call__(self) -> float:
        return self._at + (time.perf_counter() - self._since)


def source_preprocess(source: SourceConfig, config: Config) -> PreprocessConfig:
    """A source's preprocessing: its ``preprocess`` table if the config sets one, else the
    preprocessing its first checkpoint decoder was trained with (the default: none).

    A checkpoint that cannot be read here is skipped; its decoder reports why when it starts.
    """
    if "preprocess" in source.model_fields_set:
        return source.preprocess
    for dec in config.decoders:
        if dec.source == source.name and is_checkpoint(dec.model):
            try:
                contract = load_checkpoint(checkpoint_path(dec.model, config.base_dir)).contract
            except RtbciError:
                continue
            log.info("source %r: preprocessing from %s: %s", source.name, dec.model,
                     contract.input.preprocess)
            return contract.input.preprocess_config()
    return source.preprocess


def match_source(cfg, recording: Recording) -> int:
    """Index of the recorded stream a ``[[sources]]`` entry reads: by LSL name, then type;
    a single source takes a single stream. Raises RtbciError naming the source."""
    names = {cfg.name}
    if cfg.kind == "lsl":
        names |= {cfg.stream.name} - {None}
    elif cfg.kind == "simulate":
        names.add(cfg.stream_name or cfg.name)
    infos = [s.info for s in recording.streams]
    for i, info in enumerate(infos):
        if info.name in names:
            return i
    wanted_type = cfg.stream.type if cfg.kind == "lsl" else None
    for i, info in enumerate(infos):
        if wanted_type and info.type == wanted_type:
            return i
    if len(infos) == 1:
        return 0
    raise RtbciError(f"source {cfg.name!r}: no stream of {recording.path} matches it (streams: "
                     f"{', '.join(i.name for i in infos)}); name one in its stream.name")
