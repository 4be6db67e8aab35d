"""The engine: sources → streams → scheduler → decoders → sinks, on one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable
from functools import partial

import numpy as np

from rtbci import __version__, diagnostics
from rtbci import reload as decoder_reload
from rtbci.acquisition import Acquisition
from rtbci.builds import BuildCancelled, in_daemon_thread
from rtbci.config import Config, DecoderConfig
from rtbci.control import ControlServer, model_hash
from rtbci.devices import make_source
from rtbci.devices.lsl import MarkerReader
from rtbci.devices.recording import Recording
from rtbci.errors import RtbciError
from rtbci.health import HealthWatch, Heartbeat, Watched, watch_thread
from rtbci.latency import local_clock
from rtbci.messages import Result
from rtbci.models import load_decoder, source_preprocess
from rtbci.offline import run_offline
from rtbci.preprocess import Preprocessor
from rtbci.presence import SessionPresence
from rtbci.scheduler import DecoderTask, Scheduler, TriggerSpec
from rtbci.scheduler.process import ProcessDecoder
from rtbci.scheduler.routing import DirectSinks
from rtbci.scheduler.workers import choose_placement
from rtbci.sinks import Sink, make_sink
from rtbci.stream import Stream, StreamInfo

log = logging.getLogger("rtbci.engine")

WATCHDOG_S = 0.05
FIRST_LOOK_S = 0.15  # start-up: how long to look for an earlier engine before publishing
SESSION_SINKS = ("mqtt", "lsl")  # sinks that publish under the session's name on the network


def in_config_order(entries: dict, configs) -> dict:
    """``entries`` (by source or decoder name) in the order of ``configs`` (the status lists
    them so: the display opens on the first source); names not configured last."""
    names = [cfg.name for cfg in configs]
    return dict(sorted(entries.items(),
                       key=lambda item: names.index(item[0]) if item[0] in names else len(names)))


class Engine:
    """Runs a validated :class:`~rtbci.config.Config`.

    Threads: the event loop's thread runs :meth:`run`, :meth:`shutdown`, :meth:`reload`, the
    decoders' attachment and the sinks' publishing of results that need the loop; each
    source's acquisition thread runs :meth:`_on_stream` (once) and then the scheduler's
    ``on_data`` per chunk (its fast decoders with it); marker reader threads run
    :meth:`_on_marker` (its scheduling goes to the loop); builds run in daemon threads
    (:mod:`rtbci.builds`), one at a time. :meth:`stats`, :meth:`status` and
    :meth:`problems` may be called from any thread.

    Parameters
    ----------
    config : Config
    clock : callable
        Seconds on the LSL clock; stamps arrivals and every timing field (default:
        :func:`rtbci.latency.local_clock`).
    sinks : list of Sink | None
        Extra sinks besides the configured ones (e.g. a test's collector).
    """

    def __init__(self, config: Config, clock: Callable[[], float] | None = None,
                 sinks: list[Sink] | None = None):
        self.config = config
        self.clock = clock or local_clock()
        self.session = config.engine.session
        self.acquisitions: dict[str, Acquisition] = {}
        self.markers: dict[str, deque[tuple[float, str]]] = {}  # per source: (timestamp, text)
        self.markers_received: dict[str, int] = {}
        self.sinks: list[Sink] = [make_sink(s, self.session, config) for s in config.sinks]
        self.sinks += sinks or []
        self.decoder_status: dict[str, dict] = {}  # status(): running or failed decoders
        # stats(): every configured decoder's state: loading → running | failed
        self.decoder_states: dict[str, str] = {cfg.name: "loading" for cfg in config.decoders}
        self.quiet_decoders = {  # event-locked decoders none of whose markers matched yet
            cfg.name: cfg for cfg in config.decoders if cfg.on_marker}
        self._streams: dict[str, Stream] = {}
        self.scheduler: Scheduler | None = None
        self._marker_readers: list[MarkerReader] = []
        self._marker_sources: list[str] = []  # the source each marker reader serves
        self._companions: list = []
        self._presence: SessionPresence | None = None  # live runs: this engine's announcement
        self.unmatched: dict[str, str] = {}  # offline: source → why no recorded stream
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attaching: set[asyncio.Future] = set()
        # one decoder build at a time, whichever source it is for: torch.export (the ONNX
        # export) traces with process-wide state, and a module built or run by another build
        # meanwhile ended up in its graph ("Unexpected key _export_root.features")
        self._build_lock = threading.Lock()
        self.placement: dict[str, tuple[str, str]] = {}  # decoder → (placement, why): its build
        self._stopping = threading.Event()  # set by shutdown: queued builds never start
        self.preprocess = {cfg.name: source_preprocess(cfg, config) for cfg in config.sources}
        self.health = HealthWatch(on_change=self._health_changed)
        self._loop_beat = Heartbeat()
        self._control: ControlServer | None = None  # live runs: rtbci ctl's socket
        self.reloaded: dict[str, DecoderConfig] = {}  # decoder → its config since a reload
        self.reloading: set[str] = set()  # decoders being reloaded now

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
            source.marker_handler = partial(self._on_marker, cfg.name)
            if marker_query:
                reader = MarkerReader(marker_query, partial(self._on_marker, cfg.name),
                                      max_marker_bytes=self.config.engine.max_marker_bytes)
                self._marker_readers.append(reader.start())
                self._marker_sources.append(cfg.name)

            def make_stream(info: StreamInfo, cfg=cfg) -> Stream:
                return Stream(info, cfg.buffer_seconds, self.clock,
                              Preprocessor(self.preprocess[cfg.name], info))

            acq = Acquisition(source, make_stream, on_stream=partial(self._on_stream, cfg.name))
            self.acquisitions[cfg.name] = acq
            acq.start()

    def _on_stream(self, name: str, stream: Stream) -> None:
        """Acquisition thread: a source's stream exists; attach its decoders on the loop; its
        chunks fire the decoders' triggers from this thread."""
        self._streams[name] = stream
        for sink in self.sinks:
            sink.stream_added(name, stream)
        self._loop.call_soon_threadsafe(self._attach_decoders, name, stream)

        def wake() -> None:  # on this acquisition thread: due windows go to their workers now
            try:
                self.scheduler.on_data(stream)
            except Exception:  # keep acquiring; the decoders' counters show the damage
                log.exception("source %r: scheduling failed", name)

        stream.add_listener(wake)

    def _attach_decoders(self, source: str, stream: Stream) -> None:
        """On the loop: start building ``source``'s decoders (they attach when ready)."""
        task = asyncio.ensure_future(self._attach_all(source, stream))
        self._attaching.add(task)
        task.add_done_callback(self._attaching.discard)

    async def _attach_all(self, source: str, stream: Stream) -> None:
        """Build each decoder of ``source`` in a worker thread (loading, compiling and
        warming up can take seconds: the loop keeps running), then register it."""
        try:
            await self._build_each(source, stream)
        except asyncio.CancelledError:  # the engine stops: what is not built yet never runs
            for cfg in self.config.decoders:
                if cfg.source == source and self.decoder_states[cfg.name] == "loading":
                    self.decoder_states[cfg.name] = "cancelled"
            raise
        for sink in self.sinks:
            sink.status_changed(self.status())

    async def _build_each(self, source: str, stream: Stream) -> None:
        """Build and register ``source``'s decoders one after another, each in a daemon
        thread (:func:`~rtbci.builds.in_daemon_thread`): a stop abandons the one compiling."""
        for i, cfg in enumerate(self.config.decoders):
            if cfg.source != source:
                continue
            where = f"decoders[{i}]"
            try:
                decoder, trigger = await in_daemon_thread(self.build, cfg, stream, where)
                model = await in_daemon_thread(model_hash, cfg, self.config.base_dir)
            except BuildCancelled:
                self.decoder_states[cfg.name] = "cancelled"
                continue
            except Exception as exc:  # one decoder that cannot start must not stop the others
                message = str(exc) if isinstance(exc, RtbciError) else (
                    f"{where} ({cfg.name!r}): failed to start: {type(exc).__name__}: {exc}")
                log.error("%s", message)
                self.decoder_status[cfg.name] = {"error": message}
                self.decoder_states[cfg.name] = "failed"
                continue
            self._register_decoder(cfg, decoder, trigger, stream, model)

    def build(self, cfg: DecoderConfig, stream: Stream, where: str):
        """Load and warm up a decoder, and work out its trigger in samples (any thread).

        Raises :class:`BuildCancelled` instead when the engine stops before it starts."""
        self._acquire_build_lock()
        try:
            if cfg.isolation == "process":  # built and warmed up in its worker process
                decoder = ProcessDecoder(cfg, stream.info, where, self.config.base_dir,
                                         self.preprocess[cfg.source]).start()
            else:
                decoder = load_decoder(cfg, stream.info, where, self.config.base_dir,
                                       self.preprocess[cfg.source])
            start, length = decoder.window_start, decoder.n_samples
            window = np.zeros((length, stream.info.n_channels), np.float32)
            decoder(window)  # warm-up
            self.placement[cfg.name] = choose_placement(cfg, decoder, window)
        finally:
            self._build_lock.release()
        every = round(cfg.every_ms * 1e-3 * stream.info.srate) if cfg.every_ms else 0
        if cfg.every_ms and every < 1:
            raise RtbciError(f"{where}.every_ms: {cfg.every_ms} ms is under one sample")
        if length > stream.buffer.capacity:
            raise RtbciError(f"{where}.window_ms: longer than sources.buffer_seconds")
        return decoder, TriggerSpec(length=length, every=every, marker=cfg.on_marker,
                                    start=start)

    def _acquire_build_lock(self) -> None:
        """Wait for the one build at a time; raise :class:`BuildCancelled` once stopping."""
        while not self._build_lock.acquire(timeout=0.05):
            if self._stopping.is_set():
                raise BuildCancelled
        if self._stopping.is_set():
            self._build_lock.release()
            raise BuildCancelled

    def _register_decoder(self, cfg: DecoderConfig, decoder, trigger: TriggerSpec,
                          stream: Stream, model: str | None = None) -> None:
        start, length, every = trigger.start, trigger.length, trigger.every
        placement, why = self.placement.get(cfg.name, (cfg.placement, "configured"))
        task = DecoderTask(cfg.name, decoder, stream, trigger, cfg.budget_ms, cfg.timeout_ms,
                           self.session, placement, model)
        self.scheduler.add(task, cfg.device)
        worker = self.scheduler.workers.get(cfg.name)
        if worker is not None and self._loop is not None and not self.scheduler.inline:
            self.health.add(watch_thread("worker", cfg.name, worker.thread))
            supervisor = self.scheduler.pool.supervisor
            if isinstance(decoder, ProcessDecoder) and supervisor.decoders == [decoder]:
                self.health.add(watch_thread("supervisor", "", supervisor.thread))
        self.decoder_states[cfg.name] = "running"
        self.decoder_status[cfg.name] = {
            "source": cfg.source, "kind": decoder.kind, "labels": decoder.labels,
            "output_size": decoder.output_size, "window": [start, length],
            "every": every, "on_marker": cfg.on_marker, "budget_ms": cfg.budget_ms,
            "runtime": decoder.describe(), "channels": getattr(decoder, "channel_names", None),
            "model": model, "spec": cfg.model}
        log.info("decoder %r on %r: %s, window %d samples, %s, budget %g ms, placement %s (%s), "
                 "%s", cfg.name, cfg.source, decoder.kind, length,
                 f"every {every} samples" if every else f"on marker {cfg.on_marker!r}",
                 cfg.budget_ms, placement, why, decoder.describe())

    def _on_marker(self, source: str, timestamp: float, text: str,
                   on_loop: bool = False) -> None:
        """Keep a marker and trigger event-locked decoders: from a marker reader thread (via
        the loop), or ``on_loop``: on the loop's own thread (offline replay)."""
        self.markers[source].append((timestamp, text))
        self.markers_received[source] += 1
        diagnostics.hint_unmatched(self, source, text)
        for sink in self.sinks:
            sink.marker(source, timestamp, text)
        stream = self._streams.get(source)
        if stream is None or self._loop is None:
            return
        if on_loop:
            self.scheduler.on_marker(stream, timestamp, text)
        else:
            self._loop.call_soon_threadsafe(self.scheduler.on_marker, stream, timestamp, text)

    def status(self) -> dict:
        """The engine's status (sent retained on MQTT): session, streams, decoders."""
        streams = {name: {"lsl_name": s.raw_info.name, "source_id": s.raw_info.source_id,
                          "type": s.info.type, "n_channels": s.info.n_channels,
                          "srate": s.info.srate, "ch_names": list(s.info.ch_names)}
                   for name, s in in_config_order(self.streams, self.config.sources).items()}
        return {"session": self.session, "version": __version__, "streams": streams,
                "decoders": in_config_order(self.decoder_status, self.config.decoders),
                "threads": self.health.report()}

    def _health_changed(self) -> None:
        """Health watch thread: a thread died, stalled or recovered: tell the sinks now."""
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._push_status)

    def _push_status(self) -> None:
        for sink in self.sinks:
            try:
                sink.status_changed(self.status())
            except Exception as exc:
                log.error("sink %s failed: %s", sink.kind, exc)

    def _watch(self) -> None:
        """Register what runs off the loop with the health watch, and the loop itself."""
        for name, acq in self.acquisitions.items():  # a source that failed said so itself
            self.health.add(Watched("acquisition", name, lambda acq=acq: acq.thread.is_alive()
                                    or acq.state == "failed", acq.heartbeat,
                                    thread=acq.thread))
        for reader, source in zip(self._marker_readers, self._marker_sources):
            self.health.add(watch_thread("markers", source, reader.thread, reader.heartbeat))
        for i, sink in enumerate(self.sinks):
            for entry in sink.watched():
                entry.name = f"{sink.kind}[{i}] {entry.name}".rstrip()
                self.health.add(entry)
        presence = self._presence
        if presence is not None:  # it ends by itself only to refuse (then the run stops)
            self.health.add(Watched("presence", self.session, lambda: presence.thread.is_alive()
                                    or presence.refusal is not None, thread=presence.thread))
        self.health.add(Watched("loop", "engine", lambda: True, self._loop_beat))

    # --- running --------------------------------------------------------------------------

    def _publish(self, result: Result, worker_safe: bool | None = None) -> None:
        """Hand ``result`` to every sink (``worker_safe`` True / False: only those that are /
        are not ``worker_safe``; the former on the decoder's worker thread)."""
        for sink in self.sinks:
            if worker_safe is not None and sink.worker_safe != worker_safe:
                continue
            try:
                sink.publish(result)
            except Exception as exc:  # a broken sink must not stop the others
                log.error("sink %s failed: %s", sink.kind, exc)

    def _loop_sinks(self) -> bool:
        """Whether a sink needs results on the event loop (not every sink is worker-safe)."""
        return not all(sink.worker_safe for sink in self.sinks)

    def _limit_blas(self) -> None:
        """Cap numpy's BLAS pool (process-wide) at the most ``compute_threads`` a CPU decoder
        asks for (default 1): idle OpenBLAS threads spin and would take the cores the sources, the
        sinks and the other decoders need."""
        from threadpoolctl import threadpool_limits

        here = [d for d in self.config.decoders if d.isolation == "thread"]  # the others:
        cpu = [d.compute_threads or 1 for d in here if d.device == "cpu"]  # theirs: own cap
        self.blas_threads = max(cpu, default=1)
        threadpool_limits(self.blas_threads, user_api="blas")
        users = [d.name for d in here
                 if d.model.startswith("python:") and d.compute_threads is None]
        if users:  # their numpy runs with the cap too: say so, once
            log.warning("numpy's BLAS is capped at %d thread(s) for the whole engine, the "
                        "python: decoder(s) %s included; set a decoder's compute_threads to "
                        "raise it",
                        self.blas_threads, ", ".join(map(repr, users)))

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_S)
            self._loop_beat.beat()
            self.scheduler.check_hung()

    async def run(self, duration: float | None = None, stop: asyncio.Event | None = None,
                  on_tick: Callable[[Engine], None] | None = None) -> dict:
        """Run until ``duration`` seconds passed or ``stop`` is set; return :meth:`stats`.

        ``on_tick(engine)`` is called every ``engine.stats_interval_s`` (live stats).
        """
        self._loop = asyncio.get_running_loop()
        self.scheduler = Scheduler(self._loop, self.clock, self._publish,
                                   direct=DirectSinks(partial(self._publish, worker_safe=True),
                                                      partial(self._publish, worker_safe=False),
                                                      self._loop_sinks))
        self._limit_blas()
        stop = stop or asyncio.Event()
        switch_s = sys.getswitchinterval()  # process-wide: put back when the run ends
        sys.setswitchinterval(self.config.engine.switch_interval_ms * 1e-3)
        self.health.start()  # before any thread starts: a crash at once is still named
        try:
            self._presence = await self._announce(stop)
            self._control = await ControlServer(self).start()
            for sink in self.sinks:
                await sink.start(self.status())
            self._start_sources()
            self._watch()
        except BaseException:
            self.health.stop()
            sys.setswitchinterval(switch_s)
            raise
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await self._wait(duration, stop, on_tick)
        finally:
            watchdog.cancel()
            for task in list(self._attaching):
                task.cancel()
            await self.shutdown()
            sys.setswitchinterval(switch_s)
        if self._presence is not None and self._presence.refusal:
            raise RtbciError(self._presence.refusal)
        return self.stats()

    async def _announce(self, stop: asyncio.Event) -> SessionPresence | None:
        """Announce this engine on its session (see :mod:`rtbci.presence`) when it publishes
        under it (an MQTT or LSL sink); an engine that started earlier on the session makes
        this one stop. Looks first, before the sinks publish (answers take milliseconds; the
        watch goes on in the background)."""
        if not any(sink.kind in SESSION_SINKS for sink in self.sinks):
            return None
        loop = self._loop
        presence = SessionPresence(self.session, lambda _: loop.call_soon_threadsafe(stop.set))
        presence.start()
        await asyncio.to_thread(presence.conflict.wait, FIRST_LOOK_S)
        if presence.refusal:
            presence.stop()
            raise RtbciError(presence.refusal)
        return presence

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

    # --- control (rtbci ctl: rtbci.control, rtbci.reload) --------------------------------

    def control_status(self) -> list[dict]:
        """Each configured decoder: name, state, model hash, model spec, reloads, results."""
        return decoder_reload.control_status(self)

    async def reload(self, name: str, model: str | None = None,
                     settings: dict | None = None) -> dict:
        """Swap running decoder ``name`` for one with ``model`` / ``settings`` applied
        (:func:`rtbci.reload.reload`)."""
        return await decoder_reload.reload(self, name, model, settings)

    # --- offline replay -------------------------------------------------------------------

    async def run_offline(self, recording: Recording, speed: float | None = None,
                          progress: Callable[[float], None] | None = None) -> dict:
        """Run the same pipeline straight from a recording, on a virtual clock.

        Chunks (10 ms, as :func:`rtbci.devices.replay.schedule` cuts them) and markers are
        fed in timestamp order (replay order across clock jumps: the schedule's), each
        stream to the sources bound to it and each marker to the sources its marker stream
        pairs with (:func:`~rtbci.offline.bind_sources`, :func:`~rtbci.offline.marker_routes`:
        the machinery lives in :mod:`rtbci.offline`); every decoder runs inline,
        so nothing is skipped and the windows and outputs equal a live run's. The clock reads
        the current chunk's last replay time plus the real time spent since it was fed, so
        latency fields show compute time. ``speed`` paces the
        replay (None: as fast as the machine allows); ``progress(seconds)`` is called with
        the recording time advanced.
        """
        return await run_offline(self, recording, speed, progress)

    async def shutdown(self) -> None:
        self._stopping.set()  # decoder builds not started yet never start
        self.health.stop()  # from here on threads end on purpose
        if self._control is not None:
            await self._control.stop()
        if self._presence is not None:
            await asyncio.to_thread(self._presence.stop)
        stoppers = [*self.acquisitions.values(), *self._marker_readers]
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in stoppers))
        await asyncio.sleep(0)  # let results already handed back reach the sinks
        self.scheduler.close()
        await self._close_sinks()
        for companion in self._companions:
            companion.stop()

    def stats(self) -> dict:
        """The ``--stats-json`` document (:func:`rtbci.diagnostics.engine_stats`)."""
        return diagnostics.engine_stats(self)

    def problems(self, stats: dict) -> list[str]:
        """The end of a run's ``rtbci: error:`` lines (:func:`rtbci.diagnostics.problems`)."""
        return diagnostics.problems(self, stats)

    async def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                await sink.close()
            except Exception as exc:
                log.error("closing sink %s: %s", sink.kind, exc)
