"""Triggers: when a decoder's window is due, and the one snapshot it is read from.

Triggers count samples, not wall time, so a replay fires exactly the windows a live run
fires. A decoder still busy when its next sliding trigger fires skips that trigger (counted;
its ``seq`` is left out) and the freshest window always wins (a marker's window waits
instead, below).

Markers wait in a per-decoder heap ordered by timestamp, so each chunk looks at the earliest
one only. A marker stamped before the oldest sample held (or, offline, before the first
sample) is dropped as ``stale_markers``; one stamped more than the buffer's length after
the newest sample and the clock (a marker on another clock, e.g. ``time.time()``) is dropped
as ``future_markers``; at most ``MAX_PENDING_MARKERS`` wait per decoder, more are dropped as
``dropped_markers``. Dropped markers produce no result. A marker whose window is complete
while its decoder is busy is not skipped: a copy of its window waits (at most
``MAX_QUEUED_WINDOWS`` per decoder, in order) and runs as soon as the decoder is free; one
more is dropped as ``dropped_markers`` too (each drop is logged the 1st, 10th, 100th … time).

Clock jumps (a stream's timestamps stepping back, or forward by more than its arrival time
did: :class:`~rtbci.ringbuffer.RingBuffer`): markers are looked up among the samples after the
newest jump only (their clock); a marker waiting when a jump happened and stamped later than
the new clock's newest sample (plus ``JUMP_TOLERANCE_S``), or stamped before the first sample
after the jump, was stamped on the old clock: dropped as ``stale_markers``. After a jump a
marker counts as future against the stream's own clock (its newest timestamp plus the time
since that sample arrived) instead of the engine's. A window spanning a jump is not decoded
(``invalid_windows``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rtbci.events import MarkerMatcher
from rtbci.messages import Result
from rtbci.ringbuffer import RingBuffer
from rtbci.scheduler.task import DecoderTask, Job
from rtbci.stream import Stream

log = logging.getLogger("rtbci.scheduler")

MAX_PENDING_MARKERS = 4096  # markers waiting for their window, per decoder
MAX_QUEUED_WINDOWS = 64  # complete marker windows (copies) waiting for a busy decoder


@dataclass
class TriggerSpec:
    """When a decoder fires, in samples of its stream.

    ``every`` > 0: windows of ``length`` samples ending at ``length + k * every``.
    ``marker``: windows ``[onset + start, onset + start + length)`` around each marker that
    the pattern(s) select (:mod:`rtbci.events`: exact name, ``prefix`` of ``prefix/…``, or
    ``re:<regex>``).

    Threads: fixed once built; :meth:`label` from any thread (the scheduler calls it under
    its lock).
    """

    length: int
    every: int = 0
    marker: str | Sequence[str] | None = None
    start: int = 0  # marker-relative offset of the first sample
    matcher: MarkerMatcher | None = field(init=False, default=None)

    def __post_init__(self):
        if self.marker is not None:
            self.matcher = MarkerMatcher(self.marker)

    def label(self, text: str) -> str | None:
        """The label the marker patterns give ``text``; None if it does not select this."""
        return None if self.matcher is None else self.matcher.label(text)


class Triggers:
    """Fires each decoder's windows from its stream's samples and markers.

    A due window becomes a :class:`~rtbci.scheduler.task.Job` read from one snapshot of the
    buffer's count; the task is claimed (busy) and the job goes to ``dispatch`` — or, when it
    runs on its source's thread, back to :meth:`on_data`'s caller.

    Threads: :meth:`add`, :meth:`on_data`, :meth:`on_marker` and :meth:`finished` take
    ``lock``, so they may run on different threads — :meth:`on_data` on a source's
    acquisition thread (offline: the caller's), :meth:`on_marker` on the event loop,
    :meth:`finished` on whichever thread a decoder finished on (its worker, its source's
    thread, the loop). The ``_`` methods and ``dispatch`` run with ``lock`` held.

    Parameters
    ----------
    clock : callable, seconds on the LSL clock
    dispatch : callable(Job)
        Runs a job that is not for the source's thread (its worker; offline: at once).
    inline : bool
        Offline replay: no job runs on a source's thread.
    """

    def __init__(self, clock: Callable[[], float], dispatch: Callable[[Job], None],
                 inline: bool = False):
        self.clock, self.dispatch, self.inline = clock, dispatch, inline
        self.tasks: dict[str, DecoderTask] = {}
        self._by_stream: dict[int, list[DecoderTask]] = {}
        self._order = itertools.count()
        self.lock = threading.RLock()  # trigger and marker state: acquisition threads, loop

    def add(self, task: DecoderTask) -> None:
        with self.lock:
            self.tasks[task.name] = task
            self._by_stream.setdefault(id(task.stream), []).append(task)

    def on_data(self, stream: Stream) -> list[Job]:
        """New samples in ``stream`` (on its producer's thread): fire every trigger whose
        window is complete; return the jobs of decoders with ``thread = "source"``, for the
        caller to run after the lock."""
        here: list[Job] = []
        with self.lock:
            for task in self._by_stream.get(id(stream), ()):
                if task.anchor_seen != stream.buffer.anchor:
                    self._after_jump(task)
                if task.trigger.every:
                    self._fire_sliding(task, here)
                if task.pending:
                    self._fire_markers(task, here)
        return here

    def on_marker(self, stream: Stream, timestamp: float, text: str) -> None:
        """A marker on ``stream``'s marker stream: queue its window for matching decoders."""
        with self.lock:
            for task in self._by_stream.get(id(stream), ()):
                label = task.trigger.label(text)
                if label is None:
                    continue
                if task.anchor_seen != stream.buffer.anchor:
                    self._after_jump(task)
                if self._plausible(task, timestamp, text):
                    heapq.heappush(task.pending, (timestamp, next(self._order), text, label))
                    self._fire_markers(task)

    def finished(self, task: DecoderTask) -> Job | None:
        """``task``'s decoder finished a window: its next queued marker window (for the caller
        to run; it stays busy), else None (it is free)."""
        with self.lock:
            return task.release()

    def _after_jump(self, task: DecoderTask) -> None:
        """The stream's clock jumped since ``task`` last looked: the markers waiting then that
        are stamped later than the new clock's newest sample (plus ``JUMP_TOLERANCE_S``) were
        stamped on the old clock; they can no longer be placed: stale."""
        buf = task.stream.buffer
        anchor, count = buf.anchor, buf.count
        if anchor >= count:
            return  # the chunk after the jump is not published yet: look at the next one
        task.anchor_seen = anchor
        newest = buf.last_timestamp
        keep = [m for m in task.pending if m[0] <= newest + RingBuffer.JUMP_TOLERANCE_S]
        if len(keep) == len(task.pending):
            return
        for timestamp, _, text, _ in task.pending:
            if not timestamp <= newest + RingBuffer.JUMP_TOLERANCE_S:
                task.stale_markers += 1
                _log_drop(task, task.stale_markers, "stamped on the clock before a clock jump",
                          text, timestamp, newest)
        heapq.heapify(keep)
        task.pending = keep

    def _plausible(self, task: DecoderTask, timestamp: float, text: str) -> bool:
        """False (and counted) for a marker stamped more than the buffer's length after the
        newest sample and the clock (or not finite), or beyond the pending-list bound. After
        a clock jump the clock is the stream's own: its newest timestamp plus the time since
        that sample arrived."""
        buf = task.stream.buffer
        now = self.clock()
        if buf.count:
            if buf.jumps:
                now = buf.last_timestamp + max(0.0, now - buf.last_arrival)
            else:
                now = max(now, buf.last_timestamp)
        if not timestamp <= now + buf.capacity / task.stream.info.srate:
            task.future_markers += 1
            _log_drop(task, task.future_markers, "stamped in the future (another clock?)",
                      text, timestamp, now)
            return False
        if len(task.pending) >= MAX_PENDING_MARKERS:
            task.dropped_markers += 1
            _log_drop(task, task.dropped_markers, f"over {MAX_PENDING_MARKERS} waiting", text,
                      timestamp, now)
            return False
        return True

    def _fire_sliding(self, task: DecoderTask, here: list[Job] | None = None) -> None:
        count, trig = task.stream.buffer.count, task.trigger
        if count < task.next_end:
            return
        due = (count - task.next_end) // trig.every + 1  # triggers now complete
        end = task.next_end + (due - 1) * trig.every  # the freshest wins
        skipped = due - 1 + (1 if task.busy else 0)
        task.skipped += skipped
        task.seq += due - 1
        task.next_end = end + trig.every
        if task.busy:
            task.seq += 1
            return
        self._submit(task, end - trig.length, end, count, "every", None, None, here)
        task.seq += 1

    def _fire_markers(self, task: DecoderTask, here: list[Job] | None = None) -> None:
        """Fire the earliest waiting markers whose windows are complete; drop stale ones.

        Markers are placed by looking their timestamp up among the samples' timestamps only
        once those are in, so the window is the same whether a marker arrives before or after
        its samples (live) or in timestamp order (offline replay). Only the samples on the
        stream's current clock (after its newest clock jump) are searched. Each marker reads
        one snapshot of the buffer's count, and checks the copy is intact after the search.
        """
        buf, trig = task.stream.buffer, task.trigger
        half = 0.5 / task.stream.info.srate
        while task.pending:
            count = buf.count  # one snapshot per marker
            oldest = max(0, count - buf.capacity)
            first = min(max(oldest, buf.anchor), count)  # the first sample on the current clock
            if first == count:
                return  # no sample on the current clock yet
            _, times = buf.window(first, count, count)
            timestamp, _, text, label = task.pending[0]
            if timestamp - half > times[-1]:
                return  # its sample has not arrived; nor have the later markers'
            onset = first + int(np.searchsorted(times, timestamp - half))
            head = float(times[0])
            if not buf.intact(first):
                continue  # the writer overwrote the oldest samples meanwhile: look again
            start = onset + trig.start
            if timestamp < head - half or start < first:
                heapq.heappop(task.pending)
                task.stale_markers += 1
                _log_drop(task, task.stale_markers, "older than the buffer" if first == oldest
                          else "older than the stream's clock jump", text, timestamp, head)
                continue
            if start + trig.length > count:
                return  # its window is not complete yet
            heapq.heappop(task.pending)
            if task.busy:
                self._queue(task, start, start + trig.length, count, text, label, timestamp)
            else:
                self._submit(task, start, start + trig.length, count, "marker", text, label,
                             here)
            task.seq += 1

    def _queue(self, task: DecoderTask, start: int, end: int, count: int, text: str,
               label: str, timestamp: float) -> None:
        """A marker window complete while its decoder is busy: a copy waits for it (up to
        ``MAX_QUEUED_WINDOWS``; beyond, dropped and counted as ``dropped_markers``)."""
        if len(task.queued) >= MAX_QUEUED_WINDOWS:
            task.dropped_markers += 1
            _log_drop(task, task.dropped_markers, f"decoder busy with {MAX_QUEUED_WINDOWS} "
                      "windows queued", text, timestamp, self.clock())
            return
        job = self._job(task, start, end, count, "marker", text, label, None, False)
        if job is not None:
            task.queued.append(job)

    def _submit(self, task: DecoderTask, start: int, end: int, count: int, trigger: str,
                marker: str | None, label: str | None, here: list[Job] | None = None) -> None:
        """Claim the task for the window ``[start, end)`` (of the buffer's snapshot
        ``count``): to ``here`` (run on the source's thread, on a view: its writer waits for
        it) when the task runs there, else to ``dispatch``."""
        on_source = here is not None and task.placement == "source" and not self.inline
        job = self._job(task, start, end, count, trigger, marker, label, task.window, on_source)
        if job is None:
            return
        task.claim()
        if on_source:
            here.append(job)
        else:
            self.dispatch(job)

    def _job(self, task: DecoderTask, start: int, end: int, count: int, trigger: str,
             marker: str | None, label: str | None, into: np.ndarray | None,
             on_source: bool) -> Job | None:
        """The job for window ``[start, end)``: a view (``on_source``), a copy into ``into``,
        or a new copy (``into`` None); None (counted) when the window is not clean."""
        stream = task.stream
        data, times = stream.buffer.window(start, end, count)
        if on_source:
            window = data
        elif into is not None:
            window = into
            np.copyto(into, data)
        else:
            window = data.copy()
        try:
            arrived = stream.arrival(end - 1)
        except IndexError:  # overwritten meanwhile: clean() says so below
            arrived = np.nan
        result = Result(decoder=task.name, seq=task.seq, trigger=trigger, marker=marker,
                        label=label, window_start=float(times[0]),
                        window_end=float(times[-1]), kind=task.decoder.kind,
                        t_arrived=arrived, t_queued=self.clock(),
                        budget_ms=task.budget_ms, session=task.session, model=task.model)
        if not stream.clean(start, end):  # after the copy: non-finite input, a clock jump, torn
            task.invalid_windows += 1
            return None
        return Job(task, result, window, on_source)


def _log_drop(task: DecoderTask, n: int, why: str, text: str, timestamp: float,
              reference: float) -> None:
    """Warn about a dropped marker the 1st, 10th, 100th, … time (never a line per marker)."""
    if str(n).rstrip("0") == "1":
        log.warning("decoder %r: marker %r at %.3f s dropped, %s (reference %.3f s); %d so far",
                    task.name, text, timestamp, why, reference, n)
