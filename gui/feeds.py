"""Data acquisition for the display, off the GUI thread: MQTT results and LSL signals.

Nothing here imports Qt. Each feed owns one background thread and exposes thread-safe state
that the window polls from a ``QTimer`` (see :mod:`rtbci.gui.window`):

- :class:`MqttFeed`: subscribes to ``rtbci/<session>/#`` with aiomqtt on its own asyncio
  loop; keeps the retained status, the latest statistics and a queue of received results,
  each stamped with its receive time on the LSL clock; reconnects when the broker comes back.
- :class:`SignalFeed`: one LSL stream read by :class:`~rtbci.devices.lsl.LSLSource` into a
  :class:`~rtbci.ringbuffer.RingBuffer`, plus the stream's ``NAME-markers`` marker stream.
- :class:`StreamDiscovery`: the numeric, regularly sampled LSL streams on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import pylsl

from rtbci.devices.base import SourceLost
from rtbci.devices.lsl import LSLSource, MarkerReader
from rtbci.messages import MAX_DECODER_NAMES, as_result, decode
from rtbci.mqtt_connection import MQTTConnection
from rtbci.ringbuffer import RingBuffer
from rtbci.stream import StreamInfo

log = logging.getLogger("rtbci.gui")

RESULT_TYPE = "rtbci.result"  # LSL type of the engine's result outlets: not signals to plot


class MqttFeed:
    """The engine's MQTT messages of one session, received in a background thread.

    Parameters
    ----------
    connection : MQTTConnection or str
        Broker and login (TLS, CA, credentials), or only its URL, ``mqtt://HOST[:PORT]`` or
        ``mqtts://HOST[:PORT]``.
    session : str
        Engine session; the feed subscribes to ``rtbci/<session>/#``.
    history : int
        Results kept until :meth:`take_results` collects them (older ones are dropped).
    reconnect_s : tuple of float
        Minimum and maximum delay between connection attempts, in seconds.

    Attributes
    ----------
    status : dict | None
        The latest retained status message (``{"state": "online", …}``), None before any.
    stats : dict | None
        The latest engine statistics (``rtbci/<session>/stats``).
    stats_at : float
        ``time.monotonic()`` when :attr:`stats` arrived (NaN before).
    connected : bool
        Whether the subscription is active.
    error : str | None
        Why the last connection attempt failed.
    received, bad_messages : int
        Messages received; messages that are not rtbci's or malformed results (a field
        missing or of the wrong type: :func:`rtbci.messages.result_problem`), ignored.
    decoders : set of str
        Decoder names whose results are kept, at most ``MAX_DECODER_NAMES`` (256).
    untracked : int
        Results of further decoder names: counted, not kept.
    """

    def __init__(self, connection: MQTTConnection | str, session: str, history: int = 5000,
                 reconnect_s: tuple[float, float] = (0.25, 2.0)):
        if isinstance(connection, str):
            connection = MQTTConnection(url=connection)
        self.connection = connection
        self.host, self.port = connection.host, connection.port
        self.url, self.session = connection.url, session
        self.topic = f"rtbci/{session}/#"
        self._client_kwargs = connection.client_kwargs()  # the TLS context, built once
        self._reconnect = reconnect_s
        self._results: deque[tuple[dict, float]] = deque(maxlen=history)
        self._lock = threading.Lock()
        self.status: dict | None = None
        self.stats: dict | None = None
        self.stats_at = float("nan")
        self.connected = False
        self.error: str | None = None
        self.received = self.bad_messages = self.untracked = 0
        self.decoders: set[str] = set()
        self._bad_topics: set[str] = set()  # warned once each, at most MAX_DECODER_NAMES
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, daemon=True,
                                        name=f"gui-mqtt-{session}")

    def __repr__(self) -> str:
        state = "ON" if self.connected else "OFF"
        return f"<MqttFeed: {state} | {self.url} (session: {self.session})>"

    def start(self) -> MqttFeed:
        """Start the background thread; returns at once, whether the broker is up or not."""
        self._thread.start()
        self._started.wait(5.0)
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Disconnect and end the thread."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def take_results(self) -> list[tuple[dict, float]]:
        """Results received since the last call, oldest first, as ``(message, received_at)``.

        ``received_at`` is the receive time on the LSL clock (``pylsl.local_clock()``).
        """
        with self._lock:
            items = list(self._results)
            self._results.clear()
        return items

    # -- background thread ---------------------------------------------------------------------

    def _thread_main(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._started.set()
        task = asyncio.create_task(self._connect_loop())
        await self._stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _connect_loop(self) -> None:
        import aiomqtt

        delay = self._reconnect[0]
        while True:
            try:
                await self._serve(aiomqtt)
            except aiomqtt.MqttError as exc:
                self._set_down(str(exc))
            await asyncio.sleep(delay)
            delay = min(2 * delay, self._reconnect[1])

    async def _serve(self, aiomqtt) -> None:
        async with aiomqtt.Client(**self._client_kwargs, keepalive=5, timeout=5.0,
                                  logger=logging.getLogger("rtbci.gui.mqtt")) as client:
            await client.subscribe(self.topic)
            self.connected, self.error = True, None
            log.info("MQTT connected to %s:%d, subscribed to %s", self.host, self.port,
                     self.topic)
            async for message in client.messages:
                self._handle(str(message.topic), message.payload)

    def _set_down(self, reason: str) -> None:
        if self.connected or self.error is None:
            log.info("MQTT broker %s:%d unreachable (%s); retrying", self.host, self.port,
                     reason)
        self.connected, self.error = False, reason

    def _handle(self, topic: str, payload: bytes) -> None:
        received_at = pylsl.local_clock()
        self.received += 1
        level = topic.rsplit("/", 1)[-1]
        if not payload:  # a cleared retained message
            if level == "status":
                self.status = None
            return
        if level not in ("status", "stats"):
            self._add_result(topic, as_result(payload), received_at)
            return
        try:
            message = decode(payload)
        except Exception:  # noqa: BLE001 - a foreign payload must not end the feed
            message = None
        if not isinstance(message, dict):
            self._bad(topic)
        elif level == "status":
            self.status = message
        else:
            self.stats, self.stats_at = message, time.monotonic()

    def _add_result(self, topic: str, message: dict | None, received_at: float) -> None:
        """Keep a well-formed result of a tracked decoder; count anything else."""
        if message is None:
            self._bad(topic)
            return
        name = message["decoder"]
        if name not in self.decoders:
            if len(self.decoders) >= MAX_DECODER_NAMES:
                if not self.untracked:
                    log.warning("more than %d decoder names on %s; results of further names "
                                "are ignored", MAX_DECODER_NAMES, self.topic)
                self.untracked += 1
                return
            self.decoders.add(name)
        with self._lock:
            self._results.append((message, received_at))

    def _bad(self, topic: str) -> None:
        self.bad_messages += 1
        if topic not in self._bad_topics and len(self._bad_topics) < MAX_DECODER_NAMES:
            self._bad_topics.add(topic)
            log.warning("ignoring a message on %s: not an rtbci message, or a malformed "
                        "result; further ones on this topic are only counted", topic)


class SignalFeed:
    """One LSL signal stream read into a display ring buffer, and its marker stream.

    A background thread waits for the stream, then pulls every chunk into :attr:`ring`
    (allocated when the stream is found), under :attr:`lock`. A stream that vanishes is
    waited for and followed when it comes back.

    Parameters
    ----------
    name : str
        LSL name of the stream.
    source_id : str | None
        LSL source id, to tell apart streams of the same name.
    buffer_seconds : float
        Seconds of signal kept for display.
    markers : str | None
        LSL name of the marker stream drawn as lines (default ``NAME-markers``; ``""``: none).

    Attributes
    ----------
    info : StreamInfo | None
        The stream's metadata, once found (kept, with the samples, if the stream goes away).
    ring : RingBuffer | None
        The displayed samples, shape ``(capacity, n_channels)``; read it under :attr:`lock`.
    markers : deque of (float, str)
        Recent markers ``(timestamp, text)`` on the local LSL clock.
    state : str
        ``waiting`` (not found yet, or lost), ``streaming`` or ``stalled`` (no data for 1 s).
    """

    STALL_S = 1.0

    def __init__(self, name: str, source_id: str | None = None, buffer_seconds: float = 30.0,
                 markers: str | None = None):
        self.name = name
        self.buffer_seconds = float(buffer_seconds)
        self.source = LSLSource(name, {"name": name, "source_id": source_id or ""},
                                ("clocksync", "dejitter"))
        self.lock = threading.Lock()
        self.info: StreamInfo | None = None
        self.ring: RingBuffer | None = None
        self.markers: deque[tuple[float, str]] = deque(maxlen=1000)
        self.state = "waiting"
        self._connected = False
        self._last_data = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"gui-lsl-{name}")
        marker_name = f"{name}-markers" if markers is None else markers
        self._marker_reader = MarkerReader({"name": marker_name}, self._on_marker) \
            if marker_name else None

    def __repr__(self) -> str:
        shape = f"{self.info.n_channels} ch @ {self.info.srate:g} Hz" if self.info else "-"
        return f"<SignalFeed: {self.state} | {self.name} ({shape})>"

    def start(self) -> SignalFeed:
        """Start reading (and waiting for the stream) in background threads."""
        self._thread.start()
        if self._marker_reader is not None:
            self._marker_reader.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """End the reader threads and close the inlet."""
        self._stop.set()
        if self._marker_reader is not None:
            self._marker_reader.stop(timeout)
        self._thread.join(timeout)

    def _on_marker(self, timestamp: float, text: str) -> None:
        self.markers.append((timestamp, text))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._connected:
                    self._open()
                else:
                    self._read()
        finally:
            self.source.close()

    def _open(self) -> None:
        try:
            info = self.source.open(timeout=0.5)
        except Exception as exc:  # noqa: BLE001 - e.g. a string stream of that name
            log.warning("LSL stream %r cannot be shown: %s", self.name, exc)
            self._stop.wait(2.0)
            return
        if info is None:
            return
        with self.lock:
            if self.ring is None or self.ring.n_channels != info.n_channels:
                capacity = max(1, round(self.buffer_seconds * info.srate))
                self.ring = RingBuffer(capacity, info.n_channels, srate=info.srate)
            self.info = info
        self._connected = True
        self.state, self._last_data = "streaming", time.monotonic()
        log.info("LSL stream %r connected (%d ch @ %g Hz)", self.name, info.n_channels,
                 info.srate)

    def _read(self) -> None:
        try:
            chunk = self.source.read(timeout=0.1)
        except SourceLost:
            log.info("LSL stream %r lost; waiting for it", self.name)
            self.source.close()
            self._connected, self.state = False, "waiting"
            return
        now = time.monotonic()
        if chunk is None:
            if now - self._last_data > self.STALL_S:
                self.state = "stalled"
            return
        with self.lock:
            self.ring.write(chunk.data, chunk.timestamps)
        self.state, self._last_data = "streaming", now


@dataclass(frozen=True)
class StreamSummary:
    """A stream seen on the network: enough to open it and to label it."""

    name: str
    type: str
    source_id: str
    n_channels: int
    srate: float
    hostname: str

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the stream: ``(name, source_id or hostname)``."""
        return self.name, self.source_id or self.hostname


def is_signal(info: pylsl.StreamInfo) -> bool:
    """Whether an LSL stream is one to plot: numeric, regularly sampled, not an rtbci result."""
    return (info.channel_format() != pylsl.cf_string and info.nominal_srate() > 0
            and info.type() != RESULT_TYPE)


class StreamDiscovery:
    """Lists the plottable LSL streams on the network every ``period_s`` in a thread.

    Attributes
    ----------
    streams : dict
        ``{key: StreamSummary}`` of every signal stream seen so far (never shrinks).
    """

    def __init__(self, period_s: float = 2.0, wait_s: float = 1.0):
        self.period_s, self.wait_s = period_s, wait_s
        self.streams: dict[tuple[str, str], StreamSummary] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="gui-discovery")

    def start(self) -> StreamDiscovery:
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            streams = dict(self.streams)  # replaced, never mutated: readers need no lock
            for info in pylsl.resolve_streams(wait_time=self.wait_s):
                if is_signal(info):
                    found = StreamSummary(info.name(), info.type(), info.source_id(),
                                          info.channel_count(), info.nominal_srate(),
                                          info.hostname())
                    streams.setdefault(found.key, found)
            self.streams = streams
            self._stop.wait(self.period_s)
