"""One decoder's scheduling state (:class:`DecoderTask`) and a window to decode (:class:`Job`).

``busy`` changes in one place: :meth:`DecoderTask.claim` when a window goes to the decoder,
:meth:`DecoderTask.release` when it finished one (both under the scheduler's lock).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
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


@dataclass
class Swap:
    """A decoder to put in place of a task's (:meth:`DecoderTask.swap`).

    ``applied(swap)`` is called under the scheduler's lock, on whichever thread freed the
    task, once ``old`` holds the decoder it replaced.
    """

    decoder: Decoder
    model: str
    budget_ms: float
    timeout_ms: float
    applied: Callable[[Swap], None]
    old: Decoder | None = None


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
    - ``decoder``, ``model``, ``budget_ms``, ``timeout_ms``, ``reloads``: replaced only by
      :meth:`swap` / :meth:`release` under the scheduler's lock, while no window is claimed;
    - :meth:`stats`: the loop (a snapshot of the counters).
    """

    def __init__(self, name: str, decoder: Decoder, stream: Stream, trigger: TriggerSpec,
                 budget_ms: float, timeout_ms: float, session: str = "", placement: str = "own",
                 model: str | None = None):
        self.name, self.decoder, self.stream, self.trigger = name, decoder, stream, trigger
        self.model = model  # the decoder's identity (rtbci.control.model_hash), on each result
        self.reloads = 0  # decoders swapped in while running (rtbci ctl … reload)
        self._swap: Swap | None = None  # staged while busy: applied by release()
        self.budget_ms, self.timeout_ms, self.session = budget_ms, timeout_ms, session
        self.explains = bool(getattr(decoder, "explains", False))
        if placement == "source" and self.explains:
            log.warning("decoder %r: its importance runs after each result, on its own thread; "
                        "placement = 'source' ignored", name)
        self.placement = "own" if self.explains else placement  # "own" | "source"
        self.strikes = 0  # windows in a row over SOURCE_THREAD_MAX_MS on the source's thread
        shape = (trigger.length, stream.info.n_channels)
        shared = getattr(decoder, "input_buffer", None)  # a worker process's mapped window
        self.window = shared if shared is not None and shared.shape == shape else \
            np.zeros(shape, dtype=np.float32)
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
        window, which the caller runs (the decoder stays busy), else None (it is free; a
        staged :class:`Swap` is applied now, between two windows)."""
        if self.queued:
            return self.queued.popleft()
        self._busy = False
        if self._swap is not None:
            self._apply(self._swap)
        return None

    def swap(self, swap: Swap) -> None:
        """Replace the decoder (under the scheduler's lock): now if it is free, else when it
        finished the windows it holds (:meth:`release`): a window is decoded wholly by the old
        decoder or wholly by the new one, and its result names that one's ``model``."""
        if self._busy:
            self._swap = swap
        else:
            self._apply(swap)

    def cancel_swap(self, swap: Swap) -> bool:
        """Withdraw ``swap`` if it is still staged (under the scheduler's lock); False once it
        was applied."""
        if self._swap is swap:
            self._swap = None
            return True
        return False

    def _apply(self, swap: Swap) -> None:
        self._swap = None
        swap.old, self.decoder, self.model = self.decoder, swap.decoder, swap.model
        self.budget_ms, self.timeout_ms = swap.budget_ms, swap.timeout_ms
        self.explains = bool(getattr(swap.decoder, "explains", False))
        if self.explains:
            self.placement = "own"
        self.importance = None  # computed by the old decoder: not sent with the new one's
        shared = getattr(swap.decoder, "input_buffer", None)  # a worker process's mapped window
        self.window = shared if shared is not None and shared.shape == self.window.shape else \
            np.zeros_like(self.window)
        self.reloads += 1
        swap.applied(swap)

    def stats(self) -> dict:
        out = {"placement": self.placement, "model": self.model, "reloads": self.reloads,
               "results": self.results, "late": self.late,
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
        worker_stats = getattr(self.decoder, "worker_stats", None)  # isolation = "process"
        out["isolation"] = "process" if worker_stats else "thread"
        if worker_stats:
            out["worker"] = worker_stats()
        return out
