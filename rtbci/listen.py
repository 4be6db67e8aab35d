"""``rtbci listen``: an MQTT client that prints results live and measures their latency.

It connects like the MQTT sink (``mqtts://``, CA file, user name, password: see
:mod:`rtbci.mqtt_connection`). A message on the session's topics that is not an rtbci message
gets one warning line per topic and is counted (``"#foreign"`` in the summary); so is a
malformed result (a field missing or of the wrong type: :func:`rtbci.messages.result_problem`).
The listener keeps going. At most :data:`MAX_DECODERS` decoder names are tracked; results of
further names are counted (``"#untracked"``), not stored, so a peer that invents names
cannot grow the listener's memory. It also watches the retained ``rtbci/+/status`` messages:
when no result has come for the session after :data:`HINT_AFTER_S` (or at exit), it says so
in one line and names the sessions it has seen on the broker.

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
from rtbci.messages import MAX_DECODER_NAMES, as_result, decode
from rtbci.mqtt_connection import MQTTConnection
from rtbci.sinks.console import summarize_dict
from rtbci.sinks.mqtt import valid_topic_level

log = logging.getLogger("rtbci.listen")
_QUIET_CLIENT_LOG = logging.getLogger("rtbci.listen.client")  # paho's chatter, at DEBUG


class LatencyLog:
    """Per-decoder receive statistics; percentiles over each decoder's last ``WINDOW`` results."""

    WINDOW = 100_000

    def __init__(self, max_decoders: int | None = None):
        self.received: dict[str, int] = {}
        self.e2e: dict[str, LatencyWindow] = {}
        self.engine: dict[str, LatencyWindow] = {}
        self.late: dict[str, int] = {}
        self.max_decoders = MAX_DECODERS if max_decoders is None else max_decoders
        self.untracked = 0  # results of decoder names beyond max_decoders

    def add(self, message: dict, received_at: float) -> bool:
        """Record a well-formed result; False (counted in :attr:`untracked`) if its decoder
        is a new name beyond :attr:`max_decoders`."""
        name = message["decoder"]
        if name not in self.received:
            if len(self.received) >= self.max_decoders:
                if not self.untracked:
                    log.warning("more than %d decoder names on this session; results of "
                                "further names are only counted (\"%s\" in the summary)",
                                self.max_decoders, UNTRACKED_KEY)
                self.untracked += 1
                return False
            self.received[name], self.late[name] = 0, 0
            self.e2e[name], self.engine[name] = (LatencyWindow(self.WINDOW),
                                                 LatencyWindow(self.WINDOW))
        self.received[name] += 1
        self.late[name] += bool(message["late"])
        self.e2e[name].record(received_at - message["window_end"])
        self.engine[name].record(message["t_published"] - message["t_arrived"])
        return True

    def summary(self) -> dict:
        return {name: {"received": n, "late": self.late[name],
                       "end_to_end_ms": self.e2e[name].summary_ms(),
                       "engine_ms": self.engine[name].summary_ms()}
                for name, n in self.received.items()}


FOREIGN_KEY = "#foreign"  # in the summary: never a decoder name (names are [A-Za-z0-9_.-]+)
UNTRACKED_KEY = "#untracked"  # results of decoder names beyond MAX_DECODERS
MAX_DECODERS = MAX_DECODER_NAMES  # decoder names tracked; foreign topics, sessions kept
HINT_AFTER_S = 2.0  # no result for the session after this: say so, name the sessions seen


class Foreign:
    """Messages on the session's topics that are not rtbci's: counted, one warning per topic
    (for the first :data:`MAX_DECODERS` topics; then one line, and only counted)."""

    def __init__(self):
        self.count = 0
        self.topics: set[str] = set()

    def add(self, topic: str) -> None:
        self.count += 1
        if topic in self.topics or len(self.topics) > MAX_DECODERS:
            return
        self.topics.add(topic)
        if len(self.topics) > MAX_DECODERS:
            log.warning("foreign messages on more than %d topics; further ones are only "
                        "counted", MAX_DECODERS)
        else:
            log.warning("ignoring a foreign message on %s (not an rtbci message, or a "
                        "malformed result); further ones on this topic are only counted",
                        topic)


class Sessions:
    """The sessions whose retained status the broker holds (``rtbci/+/status``), for the
    line that says no result came for the session listened to."""

    def __init__(self, session: str):
        self.session = session
        self.states: dict[str, str] = {}  # at most MAX_DECODERS
        self.hinted = False

    async def collect(self, connection: MQTTConnection, wait: float = 0.5) -> None:
        """Read the retained ``rtbci/+/status`` messages for ``wait`` s on a connection of
        its own (the listening one would get the session's own status twice); a broker that
        refuses it leaves the list empty."""
        import aiomqtt

        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with aiomqtt.Client(**connection.client_kwargs(), timeout=wait + 2.0,
                                      logger=_QUIET_CLIENT_LOG) as client:
                await client.subscribe("rtbci/+/status")
                async with asyncio.timeout(wait):
                    async for msg in client.messages:
                        self.add(str(msg.topic).split("/")[1], msg.payload)

    def add(self, name: str, payload: bytes) -> None:
        if not payload or (name not in self.states and len(self.states) >= MAX_DECODERS):
            return
        try:
            state = decode(payload)["state"]
        except Exception:  # noqa: BLE001 - not an rtbci status
            return
        self.states[name] = state if isinstance(state, str) else "?"

    def hint(self) -> str:
        """``rtbci listen: no results for session 'dmeo' yet; sessions on the broker: …``."""
        seen = [f"{name!r}" + ("" if state == "online" else f" ({state})")
                for name, state in sorted(self.states.items())]
        shown = ", ".join(seen[:10]) + (f" and {len(seen) - 10} more" if len(seen) > 10 else "")
        return (f"rtbci listen: no results for session {self.session!r} yet; sessions on the "
                f"broker: {shown or 'none seen'}")

    def say(self) -> None:
        """Print :meth:`hint` once, on stderr."""
        if not self.hinted:
            self.hinted = True
            print(self.hint(), file=sys.stderr, flush=True)


async def listen(connection: MQTTConnection, session: str, duration: float | None,
                 stats_json: Path | None, quiet: bool = False) -> dict:
    """Subscribe to ``rtbci/<session>/#`` and print one line per result (unless quiet).

    Returns the per-decoder summary (``{decoder: {received, late, end_to_end_ms,
    engine_ms}}``, plus ``"#foreign": n`` when foreign or malformed messages arrived and
    ``"#untracked": n`` for results of decoder names beyond :data:`MAX_DECODERS`).

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
    sessions = Sessions(session)
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
            hint = asyncio.create_task(_hint_after(HINT_AFTER_S, connection, log_, sessions))
            try:
                await _receive(client, session, log_, foreign, sessions, duration, quiet)
            finally:
                hint.cancel()
    except aiomqtt.MqttError as exc:
        if not subscribed:
            raise RtbciError(f"--url: cannot connect to {connection.url}: {exc}") from None
        lost = exc
    if subscribed and not log_.received and not log_.untracked and not sessions.hinted:
        await sessions.collect(connection)
        sessions.say()
    summary = log_.summary()
    if foreign.count:
        summary[FOREIGN_KEY] = foreign.count
    if log_.untracked:
        summary[UNTRACKED_KEY] = log_.untracked
    if stats_json is not None:
        stats_json.write_text(json.dumps(summary, indent=2) + "\n")
    if not quiet:
        print(json.dumps(summary, indent=2), file=sys.stderr)
    if lost is not None:
        raise RtbciError(f"lost the connection to {connection.url}: {lost}")
    return summary


async def _hint_after(delay: float, connection: MQTTConnection, log_: LatencyLog,
                      sessions: Sessions) -> None:
    await asyncio.sleep(delay)
    if not log_.received and not log_.untracked:
        await sessions.collect(connection)
        if not log_.received and not log_.untracked:
            sessions.say()


async def _receive(client, session: str, log_: LatencyLog, foreign: Foreign,
                   sessions: Sessions, duration: float | None, quiet: bool) -> None:
    """Handle messages until ``duration`` s have passed (forever if None)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(duration):
            async for msg in client.messages:
                now = pylsl.local_clock()
                topic = str(msg.topic)
                level = topic.split("/", 2)[-1]
                if level == "status":
                    sessions.add(session, msg.payload)
                    _print_status(msg.payload, topic, foreign, quiet)
                    continue
                if level == "stats":  # the engine's statistics, once a second
                    continue
                message = as_result(msg.payload)
                if message is None:
                    foreign.add(topic)
                    continue
                if log_.add(message, now) and not quiet:
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
