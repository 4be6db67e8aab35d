"""Thread health: every engine thread (and sink task) is watched; one that dies or stalls is
said at once, in the log, the statistics, the MQTT status and the display.

The engine registers what it runs (acquisition, marker readers, decoder workers, sinks'
threads and tasks) as :class:`Watched` entries. A :class:`HealthWatch` thread looks at them
every :data:`CHECK_S` seconds: an entry whose ``alive()`` turned False while the engine runs
is ``dead``; one whose heartbeat (``beat()``: :func:`time.monotonic` of its latest loop
iteration) is older than its ``stall_s`` is ``stalled`` until it beats again. Each change is
logged once (ERROR for dead and stalled, INFO when a stalled one recovers) and handed to
``on_change`` (the engine then pushes its status to the sinks). An exception that ended a
thread is caught by :func:`threading.excepthook` and named in the report, including
``SystemExit`` (which Python's default hook ignores silently).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("rtbci.health")

CHECK_S = 0.2  # period of the health checks: a death is reported well within 1 s
_LABELS = {"acquisition": "acquisition thread of source {name!r}",
           "markers": "marker reader of source {name!r}",
           "worker": "worker thread of decoder {name!r}",
           "presence": "the check for other engines on session {name!r}",
           "supervisor": "the supervisor of the decoders' worker processes",
           "sink": "sink {name}", "loop": "the engine's event loop"}


class Heartbeat:
    """The time of a loop's latest iteration (one float store per :meth:`beat`).

    ``idle`` marks a wait that is not a stall (e.g. a blocking read with its own timeout
    longer than the watch's ``stall_s``): :meth:`age` is 0 while it is set.
    """

    __slots__ = ("at", "idle")

    def __init__(self) -> None:
        self.at = time.monotonic()
        self.idle = False

    def beat(self) -> None:
        self.at = time.monotonic()

    def age(self, now: float) -> float:
        """Seconds since the latest beat (0 while ``idle``)."""
        return 0.0 if self.idle else now - self.at


@dataclass
class Watched:
    """One thing the engine runs off the event loop, as the health watch sees it.

    ``kind``: ``acquisition`` | ``markers`` | ``worker`` | ``sink`` | ``loop``; ``name``: what
    it serves (a source, a decoder, ``record[0]``); ``alive()``: False once it ended;
    ``heartbeat``: None when only death is watched; ``stall_s``: heartbeat age that counts as
    a stall; ``thread``: its thread, whose uncaught exception is named in the report.
    """

    kind: str
    name: str
    alive: Callable[[], bool]
    heartbeat: Heartbeat | None = None
    stall_s: float = 1.0
    thread: threading.Thread | None = None
    state: str = field(default="ok")  # ok | stalled | dead
    why: str = ""
    stalls: int = 0  # times it stalled so far
    since: float = 0.0  # time.monotonic() of the latest change

    @property
    def label(self) -> str:
        """What it is, for a log line: ``marker reader of source 'eeg'``."""
        return _LABELS.get(self.kind, "{kind} {name}").format(kind=self.kind, name=self.name)


def watch_thread(kind: str, name: str, thread: threading.Thread,
                 heartbeat: Heartbeat | None = None, stall_s: float = 1.0) -> Watched:
    """A :class:`Watched` for ``thread`` (alive while :meth:`threading.Thread.is_alive`)."""
    return Watched(kind, name, thread.is_alive, heartbeat, stall_s, thread)


class HealthWatch:
    """Checks the watched entries from its own thread; see the module docstring.

    Parameters
    ----------
    on_change : callable()
        Called from the watch thread after any entry changed state.
    """

    def __init__(self, on_change: Callable[[], None] = lambda: None):
        self.on_change = on_change
        self._entries: list[Watched] = []
        self._lock = threading.Lock()
        self._crashes: dict[int, str] = {}  # thread ident → "ExcType: message"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_hook = None

    def add(self, entry: Watched) -> Watched:
        with self._lock:
            self._entries.append(entry)
        return entry

    def start(self) -> HealthWatch:
        self._previous_hook = threading.excepthook
        threading.excepthook = self._excepthook
        self._thread = threading.Thread(target=self._run, name="rtbci-health", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (before the watched threads are stopped on purpose)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * CHECK_S + 1.0)
        if threading.excepthook == self._excepthook:
            threading.excepthook = self._previous_hook

    def _excepthook(self, args) -> None:
        if args.thread is not None:
            self._crashes[args.thread.ident] = f"{args.exc_type.__name__}: {args.exc_value}"
        if args.exc_type is not SystemExit and self._previous_hook is not None:
            self._previous_hook(args)

    def _run(self) -> None:
        while not self._stop.wait(CHECK_S):
            self.check()

    def check(self) -> bool:
        """Update every entry's state; log and call ``on_change`` if any changed."""
        now, changed = time.monotonic(), False
        with self._lock:
            entries = list(self._entries)
        for entry in entries:
            changed |= self._update(entry, now)
        if changed:
            try:
                self.on_change()
            except Exception:  # the watch must outlive what it reports to
                log.exception("reporting a health change failed")
        return changed

    def _update(self, entry: Watched, now: float) -> bool:
        if entry.state == "dead":
            return False
        if not entry.alive():
            crash = self._crashes.get(entry.thread.ident) if entry.thread else None
            entry.state, entry.since = "dead", now
            entry.why = crash or "it ended"
            log.error("%s died (%s); what it did is no longer done: the run will exit with "
                      "status 1", entry.label, entry.why)
            return True
        age = entry.heartbeat.age(now) if entry.heartbeat is not None else 0.0
        if entry.state == "ok" and age > entry.stall_s:
            entry.state, entry.since = "stalled", now
            entry.stalls += 1
            entry.why = f"no progress for {age:.1f} s"
            log.error("%s stalled: no progress for %.1f s", entry.label, age)
            return True
        if entry.state == "stalled" and age <= entry.stall_s:
            log.info("%s resumed after %.1f s", entry.label, now - entry.since)
            entry.state, entry.why, entry.since = "ok", "", now
            return True
        return False

    def problems(self) -> list[Watched]:
        """Entries that are dead or stalled now."""
        with self._lock:
            return [e for e in self._entries if e.state != "ok"]

    def dead(self) -> list[Watched]:
        with self._lock:
            return [e for e in self._entries if e.state == "dead"]

    def report(self) -> dict[str, dict]:
        """``{"<kind> <name>": {"state", "why", "stalls"}}`` of every entry that is not
        ``ok`` or has stalled before (the ``threads`` field of the statistics and the status;
        empty while all is well)."""
        with self._lock:
            return {f"{e.kind} {e.name}": {"state": e.state, "why": e.why, "stalls": e.stalls}
                    for e in self._entries if e.state != "ok" or e.stalls}
