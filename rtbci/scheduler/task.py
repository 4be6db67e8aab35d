"""One decoder's scheduling state (:class:`DecoderTask`) and a window to decode (:class:`Job`).

``busy`` changes in one place: :meth:`DecoderTask.claim` when a window goes to the decoder,
:meth:`DecoderTask.release` when it finished one (both under the scheduler's lock).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rtbci.latency import LatencyWindow
from rtbci.messages import Result
from rtbci.models.base import Decoder
from rtbci.stream import Stream

if TYPE_CHECKING:
    from rtbci.scheduler.triggers import TriggerSpec

log = logging.getLogger("rtbci.scheduler")

LATENCY_WINDOW = 4096  # results per decoder that the latency percentiles cover


@dataclass
class Job:
    """A window to decode: ``window`` is the task's copy, a queued marker window's own copy,
    or (``on_source``: on the source's thread) a read-only view of the ring buffer, shape
    ``(n_samples, n_channels)``.

    Threads: built under the scheduler's lock, then owned by the one thread that decodes it
    (the decoder's worker, its source's thread, offline the caller); its ``result`` then goes
    to the loop or, ``direct``, to the sinks from that thread (:mod:`rtbci.scheduler.routing`).
    """

    task: DecoderTask
    result: Result
    window: np.ndarray
    on_source: bool = False  # runs on its source's thread, on a view of the ring buffer


class DecoderTask:
    """One decoder's scheduling state and counters.

    Threads:

    - trigger and marker state (``next_end``, ``seq``, ``pending``, ``queued``,
      ``anchor_seen``, ``skipped``, ``invalid_windows``, the marker counters) and
      :meth:`claim` / :meth:`release`: under the scheduler's lock only (a source's acquisition
      thread, the event loop, or the thread a decoder finished on);
    - ``busy``: read under that lock (it decides skip / queue / submit), read anywhere else
      only as a hint;
    - the result counters (``results``, ``late``, ``latency``, ``errors``, ``last_error``,
      ``invalid_outputs``, ``importance``): one thread at a time — the loop, or, when no sink
      needs the loop, the thread that decoded (its worker, or its source's thread);
      ``timeouts``: the loop (the hung-decoder check);
    - ``thread`` and ``strikes``: its source's acquisition thread (the strike policy);
    - :meth:`stats`: the loop (a snapshot of the counters).
    """

    def __init__(self, name: str, decoder: Decoder, stream: Stream, trigger: TriggerSpec,
                 budget_ms: float, timeout_ms: float, session: str = "", thread: str = "own"):
        self.name, self.decoder, self.stream, self.trigger = name, decoder, stream, trigger
        self.budget_ms, self.timeout_ms, self.session = budget_ms, timeout_ms, session
        self.explains = bool(getattr(decoder, "explains", False))
        if thread == "source" and self.explains:
            log.warning("decoder %r: its importance runs after each result, on its own thread; "
                        "thread = 'source' ignored", name)
        self.thread = "own" if self.explains else thread  # "own" | "source"
        self.strikes = 0  # windows in a row over SOURCE_THREAD_MAX_MS on the source's thread
        self.window = np.zeros((trigger.length, stream.info.n_channels), dtype=np.float32)
        # Sliding windows end at counters length + k * every; start at the first one still to
        # come (a decoder attached to a running stream has missed nothing it could have seen).
        k = 0
        if trigger.every and stream.buffer.count > trigger.length:
            k = -(-(stream.buffer.count - trigger.length) // trigger.every)
        self.next_end = trigger.length + k * trigger.every  # counter after its last sample
        self.seq = k
        self._busy = False  # a window is running or waiting on its worker: claim / release
        self.importance: tuple[int, np.ndarray] | None = None  # (seq, importance) to send
        # markers waiting for their window: a heap of (timestamp, arrival order, text, label)
        self.pending: list[tuple[float, int, str, str]] = []
        self.queued: deque[Job] = deque()  # marker windows (copies) waiting while busy
        self.anchor_seen = stream.buffer.anchor  # the stream's clock jumps already handled
        self.results = self.late = self.skipped = self.errors = self.timeouts = 0
        # not decoded: non-finite input, spans a clock jump, or overwritten while copied
        self.invalid_windows = 0
        self.invalid_outputs = 0  # decoded, not published: non-finite or wrong shape
        self.stale_markers = self.future_markers = self.dropped_markers = 0
        self.last_error: str | None = None
        self.latency = LatencyWindow(LATENCY_WINDOW)

    @property
    def busy(self) -> bool:
        """A window of this decoder is running or waiting for its worker (read-only: it
        changes only through :meth:`claim` and :meth:`release`)."""
        return self._busy

    def claim(self) -> None:
        """A window goes to the decoder (under the scheduler's lock): busy until released."""
        self._busy = True

    def release(self) -> Job | None:
        """The decoder finished a window (under the scheduler's lock): the next queued marker
        window, which the caller runs (the decoder stays busy), else None (it is free)."""
        if self.queued:
            return self.queued.popleft()
        self._busy = False
        return None

    def stats(self) -> dict:
        out = {"thread": self.thread, "results": self.results, "late": self.late,
               "skipped": self.skipped,
               "errors": self.errors, "timeouts": self.timeouts,
               "invalid_windows": self.invalid_windows,
               "invalid_outputs": self.invalid_outputs,
               "latency_ms": self.latency.summary_ms()}
        if self.trigger.marker is not None:
            out.update(stale_markers=self.stale_markers, future_markers=self.future_markers,
                       dropped_markers=self.dropped_markers)
        if self.last_error:
            out["last_error"] = self.last_error
        return out
