"""MQTT sink: every result as one msgpack message, with a retained online/offline status.

Topics (``<session>`` from the engine, ``<decoder>`` from the result)::

    rtbci/<session>/<decoder>   one message per result (rtbci.messages.encode)
    rtbci/<session>/status      retained: {"state": "online", ...engine status} while
                                connected; {"state": "offline", "session": ...} after a clean
                                close or, as the broker's last will, after a lost connection

``publish`` only appends to a bounded outbox; one background task owns the connection,
drains the outbox and reconnects with exponential backoff when the broker goes away.
During an outage results are buffered; when the outbox is full the oldest is dropped
(and counted), so the engine never waits on the network.

The sink speaks MQTT 5 and falls back to 3.1.1 (one warning) when the broker refuses MQTT 5
(e.g. ``rtbci broker``). Only MQTT 5 tells a publisher that the broker refused a message (a
PUBACK reason code >= 0x80, e.g. 0x87 Not authorized from an ACL): such a result counts as
``dropped`` and ``refused``, never ``delivered``. Under 3.1.1 a broker acknowledges a
publish its ACL discards like any other (mosquitto 2.0 does), so nothing can tell.

Brokers should disable Nagle's algorithm (mosquitto: ``set_tcp_nodelay true``); the client
side always does. Without it each QoS 1 round trip waits for TCP's delayed acknowledgement.

(Over 500 lines on purpose: one connection's state machine — outbox, reconnect, protocol
fallback, refusals — whose parts share all its state.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from rtbci.errors import RtbciError
from rtbci.messages import Result, encode
from rtbci.mqtt_connection import DEFAULT_PORTS, URL_FORM, parse_url
from rtbci.sinks.base import Sink
from rtbci.sinks.configs import MQTTSinkConfig

__all__ = ["DEFAULT_PORTS", "URL_FORM", "MQTTSink", "MQTTSinkConfig", "parse_url",
           "result_topic", "status_topic", "valid_topic_level"]

logger = logging.getLogger(__name__)


class _ClientLog(logging.LoggerAdapter):
    """aiomqtt's and paho's own log, demoted to DEBUG under ``rtbci.sinks.mqtt.client``.

    The sink logs each connection state change once, with its reason; the libraries would add
    an ERROR line (e.g. "failed to receive on socket") for the same event.
    """

    def log(self, level: int, msg: object, *args, **kwargs) -> None:  # noqa: D102
        super().log(logging.DEBUG, msg, *args, **kwargs)


_CLIENT_LOG = _ClientLog(logging.getLogger(f"{__name__}.client"), {})

TOPIC_ROOT = "rtbci"
_OP_TIMEOUT_S = 5.0  # CONNACK, PUBACK and DISCONNECT waits of one connection
_BAD_TOPIC_CHARS = frozenset("+#/\0")
V5, V311 = aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311
_PROTOCOL_NAMES = {V5: "5", V311: "3.1.1"}
_UNSUPPORTED_PROTOCOL = (0x01, 0x84)  # CONNACK: 3.1.1 and MQTT 5 codes
# a broker's DISCONNECT that blames the packet in flight: not authorized, topic name invalid,
# packet too large, quota exceeded, payload format invalid, retain / QoS not supported
_PACKET_FAULTS = frozenset({0x87, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B})
MAX_TRIES = 3  # a result in flight at this many lost connections in a row is dropped


class _Client(aiomqtt.Client):
    """``aiomqtt.Client`` that keeps the broker's refusal of a publish, which aiomqtt ignores.

    :meth:`publish_checked` returns the PUBACK's failure reason code (MQTT 5, >= 0x80), or
    None when the broker accepted the message. One publish at a time (the sink's sender).
    """

    _refusal: ReasonCode | None = None

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if isinstance(reason_code, ReasonCode) and reason_code.is_failure:
            self._refusal = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_checked(self, topic: str, payload: bytes, qos: int,
                              **kwargs) -> ReasonCode | None:
        """Publish and return the broker's refusal (None: accepted, or QoS 0 written)."""
        self._refusal = None
        await self.publish(topic, payload, qos=qos, **kwargs)
        refusal, self._refusal = self._refusal, None
        return refusal


def describe_code(code: ReasonCode | int | None) -> str:
    """An MQTT reason code as ``0x87 Not authorized``."""
    value = int(getattr(code, "value", code or 0))
    return f"0x{value:02X} {code}" if isinstance(code, ReasonCode) else f"0x{value:02X}"


def status_topic(session: str) -> str:
    """The retained status topic of a session: ``rtbci/<session>/status``."""
    return f"{TOPIC_ROOT}/{session}/status"


def result_topic(session: str, decoder: str) -> str:
    """The topic of one decoder's results: ``rtbci/<session>/<decoder>``."""
    return f"{TOPIC_ROOT}/{session}/{decoder}"


def valid_topic_level(name: str) -> bool:
    """Whether ``name`` can be one MQTT topic level: non-empty, no ``/``, ``+``, ``#``, NUL."""
    return bool(name) and not _BAD_TOPIC_CHARS.intersection(name)


class MQTTSink(Sink):
    """Publish results to an MQTT broker without ever blocking the engine.

    Parameters
    ----------
    config : MQTTSinkConfig
        Broker address, QoS, credentials, outbox size and backoff.
    session : str
        Session name; the second level of every topic (no ``/``, ``+``, ``#``).

    Notes
    -----
    All methods must be called from the engine's event loop. ``stats()`` holds
    ``produced == delivered + dropped + queued`` at all times; ``delivered`` counts messages
    the broker acknowledged (QoS 1) or, at QoS 0, written to the socket on a topic the broker
    has accepted a QoS 1 probe on during this connection (MQTT 5: each topic's first result
    of a connection, and every result after a refusal, goes at QoS 1). ``refused`` (part of
    ``dropped``) counts results the broker refused.
    """

    kind = "mqtt"

    def __init__(self, config: MQTTSinkConfig, session: str) -> None:
        if not valid_topic_level(session):
            raise RtbciError(
                f"MQTT sink: session {session!r} cannot be an MQTT topic level "
                "(must be non-empty, without '/', '+', '#')"
            )
        self.config = config
        self.session = session
        self._tls_context = config.tls_context("MQTT sink: tls_ca")
        self._address = f"{config.host}:{config.port}"
        self._status_topic = status_topic(session)
        self._stats_topic = f"rtbci/{session}/stats"
        self._will_payload = encode({"state": "offline", "session": session,
                                     "reason": "connection lost"})
        self._online_payload = b""
        self._status_pending = False
        self._stats_payload: bytes | None = None  # latest engine statistics, not yet sent
        self._topics: dict[str, str | None] = {}
        self._outbox: collections.deque[tuple[str, bytes]] = collections.deque(
            maxlen=config.outbox_size
        )
        self._inflight: tuple[str, bytes] | None = None
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._produced = self._delivered = self._dropped = self._refused = 0
        self._protocol = V5
        self._accepted: set[str] = set()  # topics the broker accepted this connection
        self._refused_topics: set[str] = set()  # logged once each
        self._status_refused = False
        self._lost_inflight: tuple[str, bytes] | None = None  # in flight when the link broke
        self._lost_rc: ReasonCode | int | None = None
        self._suspect: tuple[str, bytes] | None = None  # in flight at the last lost links
        self._suspect_losses = 0
        self._connections = 0
        self._down_since: float | None = None
        self._warned_full = False

    def __repr__(self) -> str:
        state = "ON" if self._connected.is_set() else "OFF"
        return (f"<MQTTSink: {state} | {self.config.url} (session: {self.session}, "
                f"queued: {self._queued()})>")

    # -- Sink API ------------------------------------------------------------------------------

    async def start(self, status: dict) -> None:
        """Start the connection task; returns at once, even if the broker is down.

        Parameters
        ----------
        status : dict
            Engine status (session, streams, decoders) sent in the retained online status.
        """
        if self._task is not None or self._closed:
            return
        self._online_payload = self._online(status)
        self._task = asyncio.create_task(self._run(), name=f"rtbci-mqtt-{self.session}")

    def status_changed(self, status: dict) -> None:
        """Replace the retained online status (sent at once if connected; never blocks)."""
        try:
            self._online_payload = self._online(status)
        except Exception as exc:  # noqa: BLE001 - a bad status must not reach the engine
            logger.warning("MQTT sink: cannot encode the engine status (%s)", exc)
            return
        self._status_pending = True
        self._wake.set()

    def stats_tick(self, stats: dict) -> None:
        """Send the engine statistics on ``rtbci/<session>/stats`` (QoS 0, not retained).

        Only the latest is kept: while disconnected older ones are replaced, never queued.
        """
        try:
            self._stats_payload = encode({"session": self.session, **stats})
        except Exception as exc:  # noqa: BLE001 - statistics must not reach the engine
            logger.warning("MQTT sink: cannot encode the engine statistics (%s)", exc)
            return
        self._wake.set()

    def publish(self, result: Result) -> None:
        """Queue one result (never blocks, never raises); full outbox drops the oldest."""
        self._produced += 1
        try:
            topic = self._topic(result.decoder)
            item = None if topic is None else (topic, encode(result))
        except Exception as exc:  # noqa: BLE001 - a bad result must not reach the engine
            logger.warning("MQTT sink: cannot encode result of %r (%s); dropped",
                           getattr(result, "decoder", result), exc)
            item = None
        if item is None or self._closed:
            self._dropped += 1
            return
        if len(self._outbox) == self._outbox.maxlen:
            self._dropped += 1  # the deque evicts the oldest on append
            self._warn_full()
        self._outbox.append(item)
        self._wake.set()

    async def close(self, timeout: float = 2.0) -> None:
        """Flush for at most ``timeout`` s, publish the retained offline status, disconnect.

        Results still queued after that (broker down or too slow) are counted as dropped.
        """
        if self._closed:
            return
        self._closing.set()
        self._wake.set()
        task = self._task
        try:
            if task is not None:
                done, _ = await asyncio.wait({task}, timeout=timeout)
                if not done:
                    logger.warning("MQTT sink: could not flush to %s within %.1f s",
                                   self._address, timeout)
        finally:
            await _cancel(task)
            self._closed = True
            self._connected.clear()
            self._drop_queued()

    def stats(self) -> dict:
        """Counters: produced, delivered, dropped (refused included), refused, queued,
        connected, reconnects, protocol (``"5"`` or ``"3.1.1"``)."""
        return {
            "produced": self._produced,
            "delivered": self._delivered,
            "dropped": self._dropped,
            "refused": self._refused,
            "queued": self._queued(),
            "connected": self._connected.is_set(),
            "reconnects": max(self._connections - 1, 0),
            "protocol": _PROTOCOL_NAMES[self._protocol],
        }

    def watched(self) -> list:
        """The connection task: one that ended (an uncaught error) sends nothing more."""
        from rtbci.health import Watched

        task = self._task
        return [] if task is None else [Watched("sink", "connection", lambda: not task.done())]

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected to the broker; return whether it is, after ``timeout`` s."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self._connected.is_set()

    # -- outbox --------------------------------------------------------------------------------

    def _online(self, status: dict) -> bytes:
        fields = {k: v for k, v in status.items() if k != "state"}
        fields.setdefault("session", self.session)
        return encode({"state": "online", **fields})

    def _topic(self, decoder: str) -> str | None:
        try:
            return self._topics[decoder]
        except KeyError:
            ok = valid_topic_level(decoder) and decoder != "status"
            topic = self._topics[decoder] = result_topic(self.session, decoder) if ok else None
            if not ok:
                logger.warning("MQTT sink: decoder name %r cannot be a topic level ('/', '+', "
                               "'#' or 'status'); its results are dropped", decoder)
            return topic

    def _queued(self) -> int:
        return len(self._outbox) + (self._inflight is not None)

    def _requeue(self, item: tuple[str, bytes]) -> None:
        if len(self._outbox) < self._outbox.maxlen:
            self._outbox.appendleft(item)
        else:
            self._dropped += 1

    def _drop_queued(self) -> None:
        lost = self._queued()
        if lost:
            logger.warning("MQTT sink: %d undelivered results dropped at close", lost)
        self._dropped += lost
        self._outbox.clear()
        self._inflight = None

    def _warn_full(self) -> None:
        if not self._warned_full:
            self._warned_full = True
            logger.warning("MQTT outbox full (%d results); dropping the oldest",
                           self._outbox.maxlen)

    # -- connection task -----------------------------------------------------------------------

    def _make_client(self) -> _Client:
        cfg = self.config
        return _Client(
            **cfg.client_kwargs(self._tls_context), identifier=cfg.client_id,
            protocol=self._protocol,
            logger=_CLIENT_LOG,  # type: ignore[arg-type]  # a Logger-compatible adapter
            will=aiomqtt.Will(self._status_topic, self._will_payload, qos=1, retain=True),
            keepalive=cfg.keepalive_s, timeout=_OP_TIMEOUT_S,
        )

    async def _run(self) -> None:
        delay = self.config.reconnect_min_s
        while not self._closing.is_set():
            try:
                async with self._make_client() as client:
                    self._on_connected()
                    delay = self.config.reconnect_min_s
                    await self._serve(client)
            except MqttConnectError as exc:
                if self._fall_back(exc):
                    continue
                self._on_disconnected(str(exc), delay)
            except aiomqtt.MqttError as exc:
                self._judge_inflight(str(exc))
                self._on_disconnected(str(exc), delay)
            except Exception as exc:  # noqa: BLE001 - keep the task alive whatever happens
                if self._down_since is None:
                    logger.exception("MQTT sink: unexpected error")
                self._on_disconnected(repr(exc), delay)
            else:
                self._connected.clear()
                logger.info("MQTT disconnected from %s (closed; %d delivered, %d dropped)",
                            self._address, self._delivered, self._dropped)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
            delay = min(2 * delay, self.config.reconnect_max_s)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Send the status, drain the outbox until closing; raise MqttError on a lost link."""
        watch = asyncio.create_task(self._watch(client))
        drain = asyncio.create_task(self._send(client))
        try:
            done, _ = await asyncio.wait({watch, drain}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # engine torn down without close(): still say offline
            await _cancel(watch, drain)
            await self._publish_offline(client, timeout=0.5)
            raise
        await _cancel(watch, drain)
        for task in done:
            task.result()  # raises the MqttError of a lost connection
        await self._publish_offline(client, timeout=1.0)

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Return never; raise MqttError as soon as the connection is lost."""
        try:
            async for _ in client.messages:  # never subscribed: it only ends on disconnection
                pass
        except aiomqtt.MqttError as exc:
            cause = exc.__cause__
            self._lost_rc = getattr(cause, "rc", None)
            raise aiomqtt.MqttError(f"connection lost: {cause}" if cause else str(exc)) from None

    async def _send(self, client: aiomqtt.Client) -> None:
        self._status_pending = True
        while self._outbox or not self._closing.is_set():
            if self._status_pending:
                self._status_pending = False
                refusal = await client.publish_checked(self._status_topic, self._online_payload,
                                                       qos=1, retain=True)
                self._check_status(refusal)
            elif self._stats_payload is not None:
                payload, self._stats_payload = self._stats_payload, None
                await client.publish(self._stats_topic, payload, qos=0)
            elif self._outbox:
                await self._publish_next(client)
            else:
                self._wake.clear()
                await self._wake.wait()

    async def _publish_next(self, client: _Client) -> None:
        item = self._inflight = self._outbox.popleft()
        topic = item[0]
        try:
            refusal = await client.publish_checked(*item, qos=self._qos(topic))
        except (aiomqtt.MqttError, asyncio.CancelledError):
            self._requeue(item)
            self._lost_inflight = item
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a payload paho refuses: drop it
            logger.warning("MQTT sink: cannot publish to %s (%s); dropped", topic, exc)
            self._dropped += 1
        else:
            if refusal is None:
                self._delivered += 1
                self._accepted.add(topic)
            else:
                self._refuse(topic, describe_code(refusal))
        finally:
            self._inflight = None

    def _qos(self, topic: str) -> int:
        """The configured QoS; under MQTT 5 QoS 1 for a topic not yet accepted this connection
        (a QoS 0 message the broker discards is never reported: the probe is)."""
        if self.config.qos == 0 and self._protocol is V5 and topic not in self._accepted:
            return 1
        return self.config.qos

    def _refuse(self, topic: str, reason: str, refused: bool = True) -> None:
        """Count one result the broker refused (or that broke the link) as dropped; one log
        line per topic."""
        self._dropped += 1
        self._refused += refused
        self._accepted.discard(topic)
        if topic not in self._refused_topics:
            self._refused_topics.add(topic)
            logger.warning("MQTT broker %s refused a result on %s (%s); results it refuses "
                           "are counted as dropped", self._address, topic, reason)

    def _check_status(self, refusal: ReasonCode | None) -> None:
        if refusal is not None and not self._status_refused:
            self._status_refused = True
            logger.warning("MQTT broker %s refused the status on %s (%s)", self._address,
                           self._status_topic, describe_code(refusal))

    def _judge_inflight(self, reason: str) -> None:
        """After a lost connection: drop the result that was in flight if the broker blamed
        it (MQTT 5 DISCONNECT reason, e.g. 0x87 or 0x95), or if it was in flight at
        :data:`MAX_TRIES` lost connections in a row; it stays queued otherwise."""
        item, rc = self._lost_inflight, self._lost_rc
        self._lost_inflight = self._lost_rc = None
        if item is None:
            return
        self._suspect_losses = self._suspect_losses + 1 if item is self._suspect else 1
        self._suspect = item
        blamed = int(getattr(rc, "value", 0) or 0) in _PACKET_FAULTS
        if not blamed and self._suspect_losses < MAX_TRIES:
            return
        self._suspect, self._suspect_losses = None, 0
        if self._outbox and self._outbox[0] is item:
            self._outbox.popleft()
            why = (f"disconnected: {describe_code(rc)}" if blamed else
                   f"the connection was lost {MAX_TRIES} times while it was in flight: "
                   f"{reason}")
            self._refuse(item[0], why, refused=blamed)

    def _fall_back(self, exc: MqttConnectError) -> bool:
        """Switch to MQTT 3.1.1 if the broker refused MQTT 5; return whether it did."""
        code = int(getattr(exc.rc, "value", exc.rc) or 0)
        if self._protocol is not V5 or code not in _UNSUPPORTED_PROTOCOL:
            return False
        self._protocol = V311
        logger.warning("MQTT broker %s does not speak MQTT 5; using 3.1.1, under which a "
                       "result the broker refuses (e.g. by its ACL) cannot be told from a "
                       "delivered one", self._address)
        return True

    async def _publish_offline(self, client: aiomqtt.Client, timeout: float) -> None:
        payload = encode({"state": "offline", "session": self.session, "reason": "closed"})
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(self._status_topic, payload, qos=1, retain=True,
                                 timeout=timeout)

    # -- state changes (one log line each) -----------------------------------------------------

    def _on_connected(self) -> None:
        self._connections += 1
        self._accepted.clear()
        self._connected.set()
        self._warned_full = False
        if self._down_since is None:
            logger.info("MQTT connected to %s (session %r, QoS %d, MQTT %s)", self._address,
                        self.session, self.config.qos, _PROTOCOL_NAMES[self._protocol])
        else:
            logger.info("MQTT connected to %s after %.1f s offline; %d results queued, "
                        "%d dropped so far", self._address, time.monotonic() - self._down_since,
                        self._queued(), self._dropped)
        self._down_since = None

    def _on_disconnected(self, reason: str, delay: float) -> None:
        self._connected.clear()
        first = self._down_since is None
        if first:
            self._down_since = time.monotonic()
        logger.log(logging.WARNING if first else logging.DEBUG,
                   "MQTT broker %s unreachable (%s); buffering results, retrying in %.1f s",
                   self._address, reason, delay)


async def _cancel(*tasks: asyncio.Task | None, grace: float = 1.0) -> None:
    """Cancel tasks and wait for them; cancel again if one ignores the first request."""
    pending = {task for task in tasks if task is not None and not task.done()}
    for _ in range(3):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=grace)
