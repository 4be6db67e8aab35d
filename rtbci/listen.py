"""``rtbci listen``: an MQTT client that prints results live and measures their latency.

It connects like the MQTT sink (``mqtts://``, CA file, user name, password: see
:mod:`rtbci.mqtt_connection`). A message on the session's topics that is not an rtbci message
gets one warning line per topic and is counted (``"#foreign"`` in the summary); the listener
keeps going.

End-to-end latency = receive time − ``window_end`` (the window's last sample's acquisition
timestamp); both are on the LSL clock, so the client must run on the engine's machine (or
a machine whose clock is synchronised to it) for that figure to mean anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path

import pylsl

from rtbci.errors import RtbciError
from rtbci.latency import LatencyWindow
from rtbci.messages import decode
from rtbci.mqtt_connection import MQTTConnection
from rtbci.sinks.console import summarize_dict
from rtbci.sinks.mqtt import valid_topic_level

log = logging.getLogger("rtbci.listen")
_QUIET_CLIENT_LOG = logging.getLogger("rtbci.listen.client")  # paho's chatter, at DEBUG


class LatencyLog:
    """Per-decoder receive statistics; percentiles over each decoder's last ``WINDOW`` results."""

    WINDOW = 100_000

    def __init__(self):
        self.received: dict[str, int] = {}
        self.e2e: dict[str, LatencyWindow] = {}
        self.engine: dict[str, LatencyWindow] = {}
        self.late: dict[str, int] = {}

    def add(self, message: dict, received_at: float) -> None:
        name = message["decoder"]
        if name not in self.received:
            self.received[name], self.late[name] = 0, 0
            self.e2e[name], self.engine[name] = (LatencyWindow(self.WINDOW),
                                                 LatencyWindow(self.WINDOW))
        self.received[name] += 1
        self.late[name] += bool(message["late"])
        self.e2e[name].record(received_at - message["window_end"])
        self.engine[name].record(message["t_published"] - message["t_arrived"])

    def summary(self) -> dict:
        return {name: {"received": n, "late": self.late[name],
                       "end_to_end_ms": self.e2e[name].summary_ms(),
                       "engine_ms": self.engine[name].summary_ms()}
                for name, n in self.received.items()}


FOREIGN_KEY = "#foreign"  # in the summary: never a decoder name (names are [A-Za-z0-9_.-]+)
_RESULT_FIELDS = ("decoder", "seq", "late", "window_end", "t_published", "t_arrived")


def as_result(payload: bytes) -> dict | None:
    """The rtbci result in ``payload``, or None if it is not one (foreign or damaged)."""
    try:
        message = decode(payload)
    except Exception:  # noqa: BLE001 - any undecodable payload is foreign
        return None
    if not isinstance(message, dict) or not all(k in message for k in _RESULT_FIELDS):
        return None
    if not isinstance(message["decoder"], str) or not all(
            isinstance(message[k], int | float) for k in _RESULT_FIELDS[1:]):
        return None
    return message


class Foreign:
    """Messages on the session's topics that are not rtbci's: counted, one warning per topic."""

    def __init__(self):
        self.count = 0
        self.topics: set[str] = set()

    def add(self, topic: str) -> None:
        self.count += 1
        if topic not in self.topics:
            self.topics.add(topic)
            log.warning("ignoring a foreign message on %s (not an rtbci message); further "
                        "ones on this topic are only counted", topic)


async def listen(connection: MQTTConnection, session: str, duration: float | None,
                 stats_json: Path | None, quiet: bool = False) -> dict:
    """Subscribe to ``rtbci/<session>/#`` and print one line per result (unless quiet).

    Returns the per-decoder summary (``{decoder: {received, late, end_to_end_ms,
    engine_ms}}``, plus ``"#foreign": n`` when foreign messages arrived).

    Raises
    ------
    RtbciError
        The session cannot be a topic level, the broker cannot be reached or refuses the
        login or the subscription, or the connection is lost (the summary is written first).
    """
    import aiomqtt

    if not valid_topic_level(session):
        raise RtbciError(f"--session: {session!r} is not a session name (no '/', '+', '#'; "
                         "wildcards are not allowed)")
    log_ = LatencyLog()
    foreign = Foreign()
    topic = f"rtbci/{session}/#"
    subscribed = False
    lost = None
    try:
        async with aiomqtt.Client(**connection.client_kwargs(connection.tls_context("--tls-ca")),
                                  logger=_QUIET_CLIENT_LOG) as client:
            granted = await client.subscribe(topic)
            if any(int(getattr(code, "value", code)) >= 0x80 for code in granted):
                raise RtbciError(f"{connection.url}: the broker refused the subscription to "
                                 f"{topic} (not allowed for this user?)")
            subscribed = True
            await _receive(client, log_, foreign, duration, quiet)
    except aiomqtt.MqttError as exc:
        if not subscribed:
            raise RtbciError(f"--url: cannot connect to {connection.url}: {exc}") from None
        lost = exc
    summary = log_.summary()
    if foreign.count:
        summary[FOREIGN_KEY] = foreign.count
    if stats_json is not None:
        stats_json.write_text(json.dumps(summary, indent=2) + "\n")
    if not quiet:
        print(json.dumps(summary, indent=2), file=sys.stderr)
    if lost is not None:
        raise RtbciError(f"lost the connection to {connection.url}: {lost}")
    return summary


async def _receive(client, log_: LatencyLog, foreign: Foreign, duration: float | None,
                   quiet: bool) -> None:
    """Handle messages until ``duration`` s have passed (forever if None)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(duration):
            async for msg in client.messages:
                now = pylsl.local_clock()
                topic = str(msg.topic)
                level = topic.rsplit("/", 1)[-1]
                if level == "status":
                    _print_status(msg.payload, topic, foreign, quiet)
                    continue
                if level == "stats":  # the engine's statistics, once a second
                    continue
                message = as_result(msg.payload)
                if message is None:
                    foreign.add(topic)
                    continue
                log_.add(message, now)
                if not quiet:
                    print(f"{message['decoder']:<12} seq {message['seq']:>6}  "
                          f"e2e {(now - message['window_end']) * 1e3:7.2f} ms  "
                          f"{summarize_dict(message)}", flush=True)


def _print_status(payload: bytes, topic: str, foreign: Foreign, quiet: bool) -> None:
    if not payload:  # a cleared retained status
        return
    try:
        message = decode(payload)
        state = message["state"]
    except Exception:  # noqa: BLE001 - a foreign status is counted, not fatal
        foreign.add(topic)
        return
    if not quiet:
        print(f"status: {state}", flush=True)
