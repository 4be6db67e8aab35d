"""Engine identity on the network: one live engine per ``engine.session``.

Each live engine announces itself with a tiny LSL outlet (no samples): name
``rtbci-session-<session>``, type ``rtbci-session``, source_id
``<host>:<pid>:<start time, ms since the epoch>:<random>``. A background resolver looks for the
others' announcements of the same session, from the engine's start and while it runs.

The rule: of two engines on one session, the one that started later refuses (ties broken by
the source_id): it stops with one ``rtbci: error:`` line naming the session and the other
engine's host and pid; the earlier one logs one warning and runs on. Two engines on one
session would publish to the same MQTT topics and LSL result streams; so only engines with
an MQTT or LSL sink announce themselves and check (one that publishes nothing under its
session name collides with none).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import pylsl

log = logging.getLogger("rtbci.presence")

PRESENCE_TYPE = "rtbci-session"
START_CHECK_S = 1.5  # polled often for this long after the start: a second engine refuses
POLL_S = 0.1  # the polling period then
RUNNING_POLL_S = 2.0  # afterwards


def announcement_name(session: str) -> str:
    return f"rtbci-session-{session}"


class Announcement:
    """Another engine's announcement, from its source_id ``host:pid:started_ms:random``."""

    def __init__(self, source_id: str):
        self.source_id = source_id
        parts = source_id.rsplit(":", 3)
        if len(parts) != 4:
            parts = [source_id, "?", "0", ""]
        self.host, self.pid = parts[0], parts[1]
        self.started_ms = int(parts[2]) if parts[2].isdigit() else 0

    @property
    def key(self) -> tuple[int, str]:
        """Order of start: the smaller key started first."""
        return (self.started_ms, self.source_id)

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.started_ms / 1000)) \
            if self.started_ms else "?"
        return f"host {self.host}, pid {self.pid}, started {since}"


class SessionPresence:
    """Announce this engine on ``session`` and watch for another engine on it.

    Parameters
    ----------
    session : str
    on_conflict : callable(str)
        Called once (from the watch thread) with the error line when this engine must
        refuse: an engine that started earlier runs the same session.
    """

    def __init__(self, session: str, on_conflict: Callable[[str], None]):
        self.session = session
        self.on_conflict = on_conflict
        started_ms = int(time.time() * 1000)
        self.source_id = (f"{socket.gethostname()}:{os.getpid()}:{started_ms}:"
                          f"{uuid.uuid4().hex[:8]}")
        self.me = Announcement(self.source_id)
        self._outlet: pylsl.StreamOutlet | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"presence-{session}")
        self._seen: set[str] = set()
        self.refusal: str | None = None  # the error line, once this engine must refuse
        self.conflict = threading.Event()  # set with it

    def start(self) -> SessionPresence:
        """Publish the announcement and start watching (returns at once)."""
        info = pylsl.StreamInfo(announcement_name(self.session), PRESENCE_TYPE, 1,
                                pylsl.IRREGULAR_RATE, pylsl.cf_int32, self.source_id)
        self._outlet = pylsl.StreamOutlet(info)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(2.0)
        self._outlet = None  # unpublishes the announcement

    def _run(self) -> None:
        pred = (f"type='{PRESENCE_TYPE}' and name='{announcement_name(self.session)}'")
        resolver = pylsl.ContinuousResolver(pred=pred, forget_after=5.0)
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                if self._check(resolver):
                    return
            except Exception as exc:  # the check must never take the engine down
                log.warning("session %r: checking for other engines failed: %s",
                            self.session, exc)
            early = time.monotonic() - started < START_CHECK_S
            self._stop.wait(POLL_S if early else RUNNING_POLL_S)

    def _check(self, resolver: pylsl.ContinuousResolver) -> bool:
        """Look at the announcements there; True once this engine must refuse."""
        for info in resolver.results():
            other = Announcement(info.source_id())
            if other.source_id == self.source_id or other.source_id in self._seen:
                continue
            self._seen.add(other.source_id)
            if other.key < self.me.key:
                self.refusal = (f"engine.session {self.session!r} is already run by another "
                                f"engine ({other.describe()}); stop that engine or give this "
                                "one another engine.session")
                self.conflict.set()
                self.on_conflict(self.refusal)
                return True
            log.warning("session %r: another engine (%s) started on this session after "
                        "this one; it refuses to run", self.session, other.describe())
        return False
