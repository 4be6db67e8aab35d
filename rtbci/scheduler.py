"""The scheduler: sample-counted triggers → one inference thread per decoder → results.

Triggers count samples, not wall time, so a replay fires exactly the windows a live run
fires. A decoder still busy when its next sliding trigger fires skips that trigger (counted;
its ``seq`` is left out) and the freshest window always wins (a marker's window waits
instead, below). Each decoder runs on its own worker thread, so a slow decoder never delays
another; one that runs past its ``timeout_ms`` is reported (the others keep running on their
own threads). Whatever a decoder call does — raise any exception, ``SystemExit`` and
``KeyboardInterrupt`` included, or return something that is not a
:class:`~rtbci.models.base.DecoderOutput` (``None``) — is counted as an error on that window
(``errors``, ``last_error`` naming it) and its worker goes on with the next window.

A decoder with ``thread = "source"`` (config: the engine's own ``builtin:`` decoders only, never
user code) runs instead on its source's acquisition thread, right after the chunk that
completes its window landed, on a zero-copy, read-only view of the ring buffer (an in-place
write raises inside the decoder: an error on that window, the ring is untouched): no thread
wake-up and no window copy. It delays that source's next chunk while it runs, so one
that takes longer than ``SOURCE_THREAD_MAX_MS`` for ``SOURCE_THREAD_STRIKES`` windows in a
row moves to its own worker for the rest of the run (logged). A window that a marker
completes (the marker arriving after its samples) runs on the worker too.

A decoder with per-channel importance (``options.importance``) computes it on its own worker
*after* its result was handed to the sinks; the importance travels with the decoder's next
result, with ``importance_seq`` naming the result it belongs to (docs/messages.md).

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

Outputs are checked before they are published: a non-finite value, or a shape that does not
match the decoder's ``kind`` and ``output_size`` (probabilities ≠ ``labels``, embedding ≠
``output_size``, retrieval ids/scores ≠ ``output_size / 2``), is counted as
``invalid_outputs``, logged (the first, then the 10th, 100th … time) and not published.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rtbci.events import MarkerMatcher
from rtbci.latency import LatencyWindow
from rtbci.messages import Result
from rtbci.models.base import Decoder, DecoderOutput
from rtbci.ringbuffer import RingBuffer
from rtbci.stream import Stream

log = logging.getLogger("rtbci.scheduler")

LATENCY_WINDOW = 4096  # results per decoder that the latency percentiles cover
MAX_PENDING_MARKERS = 4096  # markers waiting for their window, per decoder
MAX_QUEUED_WINDOWS = 64  # complete marker windows (copies) waiting for a busy decoder
SOURCE_THREAD_MAX_MS = 2.0  # a decoder on its source's thread taking longer …
SOURCE_THREAD_STRIKES = 3  # … for this many windows in a row moves to its own worker


@dataclass
class TriggerSpec:
    """When a decoder fires, in samples of its stream.

    ``every`` > 0: windows of ``length`` samples ending at ``length + k * every``.
    ``marker``: windows ``[onset + start, onset + start + length)`` around each marker that
    the pattern(s) select (:mod:`rtbci.events`: exact name, ``prefix`` of ``prefix/…``, or
    ``re:<regex>``).
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


@dataclass
class Job:
    """A window to decode: ``window`` is the task's copy, a queued marker window's own copy,
    or (``on_source``: on the source's thread) a read-only view of the ring buffer, shape
    ``(n_samples, n_channels)``."""

    task: DecoderTask
    result: Result
    window: np.ndarray
    on_source: bool = False  # runs on its source's thread, on a view of the ring buffer


class DecoderTask:
    """One decoder's scheduling state and counters. Triggers and markers are touched under
    the scheduler's lock (a source's acquisition thread, or the event loop); ``busy`` and
    the result counters by one thread at a time: the loop, or, when no sink needs the loop,
    the thread that decoded (its worker, or its source's thread)."""

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
        self.busy = False
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


def run_job(job: Job, clock: Callable[[], float]) -> tuple[DecoderOutput | None, str | None]:
    """Run a job's decoder on its window, timing it. Anything it raises (``SystemExit`` and
    ``KeyboardInterrupt`` included: user code must not end the worker) or a return value that
    is not a :class:`DecoderOutput` becomes an error string."""
    job.result.t_started = clock()
    output = error = None
    try:
        output = job.task.decoder(job.window)
        if not isinstance(output, DecoderOutput):
            error = f"returned {type(output).__name__}, not a DecoderOutput"
    except BaseException as exc:  # isolate the decoder; report, keep running
        error = describe_exception(exc)
        log.debug("decoder %r raised:\n%s", job.task.name, traceback.format_exc())
    job.result.t_finished = clock()
    return output, error


def run_explain(job: Job) -> tuple[np.ndarray | None, str | None]:
    """The per-channel importance of the job's window (after its result was published); like
    :func:`run_job`, anything it raises becomes an error string."""
    try:
        return job.task.decoder.importance(job.window), None
    except BaseException as exc:
        log.debug("decoder %r importance raised:\n%s", job.task.name, traceback.format_exc())
        return None, f"importance: {describe_exception(exc)}"


def describe_exception(exc: BaseException) -> str:
    """``"ValueError: boom"``; the type alone when there is no message (``KeyboardInterrupt``)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Worker:
    """One decoder's inference thread: runs ``work(job)`` for each submitted job.

    The scheduler never submits a job while the decoder is busy, so at most one job waits.
    ``running`` is ``(job, start time)`` while a job runs (read by the hung-decoder watchdog).
    """

    def __init__(self, name: str, clock: Callable[[], float], work: Callable[[Job], None]):
        self.name, self.clock, self.work = name, clock, work
        self._job: Job | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.running: tuple[Job, float] | None = None
        self.reported = False  # the running job was reported hung
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"infer-{name}")
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._job is not None:
                raise RuntimeError(f"decoder {self.name!r}: a job is already waiting")
            self._job = job
            self._cond.notify()

    def run_here(self, job: Job) -> None:
        """Run ``job`` in the calling thread, seen by the watchdog as this worker's."""
        self.reported = False
        self.running = (job, self.clock())
        self.work(job)
        self.running = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job, self._job = self._job, None
                self.reported = False
                self.running = (job, self.clock())
            self.work(job)
            self.running = None


class Scheduler:
    """Fires decoder jobs from stream data and markers; hands results to ``publish``.

    :meth:`on_data` may run on a source's acquisition thread, right after a chunk lands (no
    trip through the event loop before a decoder's worker wakes); :meth:`add`,
    :meth:`on_data` and :meth:`on_marker` hold the scheduler's lock, so they may run on
    different threads. Everything else runs on the event loop's thread, except a result's
    bookkeeping when no sink needs the loop (``direct``). With ``inline`` (offline replay)
    each job runs at once in the calling thread.

    Parameters
    ----------
    loop : asyncio loop
    clock : callable, seconds on the LSL clock
    publish : callable(Result)
        Called on the loop thread with each finished result (``t_published`` set).
    direct : (callable(Result), callable(Result), callable() -> bool) | None
        ``(on_worker, on_loop, loop_needed)``: hand each result of a decoder without
        importance to ``on_worker`` on its worker thread as soon as it is complete (sinks that
        may publish from any thread: no event-loop hop), then to ``on_loop`` (instead of
        ``publish``) on the loop thread with the bookkeeping — unless ``loop_needed()`` says
        no sink needs the loop: then the bookkeeping is done on the worker too, and the loop
        is not woken at all.
    """

    def __init__(self, loop, clock: Callable[[], float], publish: Callable[[Result], None],
                 inline: bool = False,
                 direct: tuple[Callable[[Result], None], Callable[[Result], None],
                               Callable[[], bool]] | None = None):
        self.loop, self.clock, self.publish, self.inline = loop, clock, publish, inline
        self.direct = None if inline else direct
        self.tasks: dict[str, DecoderTask] = {}
        self.workers: dict[str, Worker] = {}  # by decoder name
        self._by_stream: dict[int, list[DecoderTask]] = {}
        self._order = itertools.count()
        self._lock = threading.RLock()  # trigger and marker state: acquisition threads, loop

    def add(self, task: DecoderTask, device: str = "cpu") -> None:
        """Schedule ``task``; it gets its own worker thread (named after it and ``device``)."""
        with self._lock:
            if not self.inline:
                self.workers[task.name] = Worker(f"{task.name}@{device}", self.clock,
                                                 self._work)
            self.tasks[task.name] = task
            self._by_stream.setdefault(id(task.stream), []).append(task)

    def on_data(self, stream: Stream) -> None:
        """New samples in ``stream`` (on its producer's thread): fire every trigger whose
        window is complete; decoders with ``thread = "source"`` run here, after the lock."""
        here: list[Job] = []
        with self._lock:
            for task in self._by_stream.get(id(stream), ()):
                if task.anchor_seen != stream.buffer.anchor:
                    self._after_jump(task)
                if task.trigger.every:
                    self._fire_sliding(task, here)
                if task.pending:
                    self._fire_markers(task, here)
        for job in here:
            self._run_on_source(job)

    def on_marker(self, stream: Stream, timestamp: float, text: str) -> None:
        """A marker on ``stream``'s marker stream: queue its window for matching decoders."""
        with self._lock:
            for task in self._by_stream.get(id(stream), ()):
                label = task.trigger.label(text)
                if label is None:
                    continue
                if task.anchor_seen != stream.buffer.anchor:
                    self._after_jump(task)
                if self._plausible(task, timestamp, text):
                    heapq.heappush(task.pending, (timestamp, next(self._order), text, label))
                    self._fire_markers(task)

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
        """Queue the window ``[start, end)`` (of the buffer's snapshot ``count``): to ``here``
        (run on the source's thread, on a view: its writer waits for it) when the task runs
        there, else to its worker."""
        on_source = here is not None and task.thread == "source" and not self.inline
        job = self._job(task, start, end, count, trigger, marker, label, task.window, on_source)
        if job is None:
            return
        task.busy = True
        if self.inline:  # offline: decode now, in this thread
            self._work(job)
        elif on_source:
            here.append(job)
        else:
            self.workers[task.name].submit(job)

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
                        budget_ms=task.budget_ms, session=task.session)
        if not stream.clean(start, end):  # after the copy: non-finite input, a clock jump, torn
            task.invalid_windows += 1
            return None
        return Job(task, result, window, on_source)

    def _free(self, task: DecoderTask) -> None:
        """The decoder finished a window: the next queued marker window goes to its worker
        (it stays busy), else it is free."""
        with self._lock:
            if not task.queued:
                task.busy = False
                return
            job = task.queued.popleft()
        if self.inline:
            self._work(job)
        else:
            self.workers[task.name].submit(job)

    def _run_on_source(self, job: Job) -> None:
        """Decode ``job`` on the source's thread; a decoder over ``SOURCE_THREAD_MAX_MS`` for
        ``SOURCE_THREAD_STRIKES`` windows in a row moves to its own worker."""
        task, started = job.task, time.perf_counter()
        self.workers[task.name].run_here(job)
        self._free(task)
        took_ms = (time.perf_counter() - started) * 1e3
        task.strikes = task.strikes + 1 if took_ms > SOURCE_THREAD_MAX_MS else 0
        if task.strikes >= SOURCE_THREAD_STRIKES:
            task.thread = "own"
            log.warning("decoder %r took over %g ms on source %r's thread for %d windows in a "
                        "row (last %.1f ms): it runs on its own thread from now on", task.name,
                        SOURCE_THREAD_MAX_MS, task.stream.info.name, task.strikes, took_ms)

    def _call(self, method, *args) -> None:
        """Run ``method(*args)`` on the loop thread (at once when inline)."""
        if self.inline:
            method(*args)
            return
        try:
            self.loop.call_soon_threadsafe(method, *args)
        except RuntimeError:  # the loop has closed: a hung decoder returned after the run
            log.debug("decoder %r returned after the engine stopped", args[0].task.name)

    def _work(self, job: Job) -> None:
        """On the decoder's worker (or source thread): decode, hand the result over, then its
        importance."""
        output, error = run_job(job, self.clock)
        invalid = None
        if error is None:
            try:  # a DecoderOutput subclass is user code too
                invalid = output_problem(job.task.decoder, output)
            except BaseException as exc:
                error = f"checking its output raised {describe_exception(exc)}"
        good = error is None and invalid is None
        explain = good and job.task.explains
        sent = good and not explain and self.direct is not None
        if sent:  # complete the result here and hand it to the thread-safe sinks at once
            _fill(job.result, output, job.task.budget_ms, self.clock())
            self.direct[0](job.result)
        free = not explain and not job.on_source  # on the source: freed there
        if sent and not self.direct[2]():  # no sink needs the loop: count it here
            self._done(job, output, error, free, sent, False)
        else:
            self._call(self._done, job, output, error, free, sent, True, invalid)
        if explain:
            self._call(self._explained, job, *run_explain(job))

    def _done(self, job: Job, output: DecoderOutput | None, error: str | None,
              free: bool, sent: bool = False, on_loop: bool = True,
              invalid: str | None = None) -> None:
        """On the loop: count the result and publish it (``sent``: the worker completed it and
        handed it to the direct sinks already; the others get it now). On the worker when
        ``sent`` and no sink needs the loop (the counters have one writer at a time: the
        decoder's worker or source thread). ``invalid``: what is wrong with the output (it is
        counted, not published)."""
        task, result = job.task, job.result
        if free:
            self._free(task)
        if error is not None:
            self._error(task, result.seq, error)
            return
        if invalid is not None:
            task.invalid_outputs += 1
            if str(task.invalid_outputs).rstrip("0") == "1":
                log.error("decoder %r: invalid output for window %d, not published: %s "
                          "(%d so far)", task.name, result.seq, invalid, task.invalid_outputs)
            return
        if not sent:
            pending = None
            if output.importance is None:  # the importance computed after the previous result
                pending, task.importance = task.importance, None
            _fill(result, output, task.budget_ms, self.clock(), pending)
        task.results += 1
        task.late += result.late
        task.latency.record(result.t_published - result.t_arrived)
        if not sent:
            self.publish(result)
        elif on_loop:
            self.direct[1](result)

    def _explained(self, job: Job, importance: np.ndarray | None, error: str | None) -> None:
        task = job.task
        self._free(task)
        if error is not None:
            self._error(task, job.result.seq, error)
        else:
            task.importance = (job.result.seq, importance)

    @staticmethod
    def _error(task: DecoderTask, seq: int, error: str) -> None:
        task.errors += 1
        if task.last_error != error:
            log.error("decoder %r failed on window %d: %s", task.name, seq, error)
        task.last_error = error

    def check_hung(self) -> None:
        """Report (once) each decoder running past its ``timeout_ms``; it stays busy until it
        returns, on its own thread, so the other decoders keep running."""
        now = self.clock()
        for worker in self.workers.values():
            running = worker.running
            if running is None or worker.reported:
                continue
            job, started = running
            task = job.task
            if now - started > task.timeout_ms * 1e-3:
                worker.reported = True
                task.timeouts += 1
                task.last_error = f"hung: no result after {task.timeout_ms:g} ms"
                log.error("decoder %r hung (running for %.0f ms > timeout_ms %g); it skips its "
                          "triggers until it returns", task.name, (now - started) * 1e3,
                          task.timeout_ms)

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()


_OUTPUT_FIELDS = {"classes": ("probabilities",), "retrieval": ("ids", "scores"),
                  "embedding": ("embedding",)}


def output_problem(decoder: Decoder, output: DecoderOutput) -> str | None:
    """What is wrong with ``output`` for ``decoder`` (None: nothing): a field its ``kind``
    needs missing, a shape that does not match ``output_size`` / ``labels``, a non-finite
    value. A few comparisons and one finiteness test per field (the vectors are short)."""
    if not isinstance(output, DecoderOutput):
        return f"returned {type(output).__name__}, not a DecoderOutput"
    kind, size = getattr(decoder, "kind", "embedding"), getattr(decoder, "output_size", None)
    for name in _OUTPUT_FIELDS.get(kind, ()):
        if getattr(output, name) is None:
            return f"no {name} (kind {kind!r})"
    labels = getattr(decoder, "labels", None)
    expected = {"probabilities": len(labels) if kind == "classes" and labels else size,
                "embedding": size if kind == "embedding" else None,
                "ids": size // 2 if kind == "retrieval" and size else None}
    expected["scores"] = expected["ids"]
    for name in ("probabilities", "ids", "scores", "embedding"):
        value = getattr(output, name)
        if value is None:
            continue
        shape = np.shape(value)
        if expected[name] is not None and shape != (expected[name],):
            return f"{name} of shape {shape}, expected ({expected[name]},)"
        try:
            finite = bool(np.isfinite(np.asarray(value, dtype=np.float64)).all())
        except (TypeError, ValueError):
            return f"{name} is not numeric"
        if not finite:
            return f"{name} holds non-finite values (NaN or ±Inf)"
    vector = output.probabilities if kind == "classes" else output.ids
    if output.labels is not None and vector is not None and len(output.labels) != len(vector):
        return f"{len(output.labels)} labels for {len(vector)} outputs"
    return None


def _fill(result: Result, output: DecoderOutput, budget_ms: float, now: float,
          pending: tuple[int, np.ndarray] | None = None) -> None:
    """Complete ``result`` from the decoder's ``output``, published at ``now``; ``pending``:
    the importance computed after the previous result, ``(seq, importance)``."""
    result.labels = output.labels
    result.probabilities, result.ids = output.probabilities, output.ids
    result.scores, result.embedding = output.scores, output.embedding
    if output.importance is not None:  # computed with the output
        result.importance, result.importance_seq = output.importance, result.seq
    elif pending is not None:  # computed after the previous result
        result.importance_seq, result.importance = pending
    result.t_published = now
    result.late = result.t_published - result.t_arrived > budget_ms * 1e-3


def _log_drop(task: DecoderTask, n: int, why: str, text: str, timestamp: float,
              reference: float) -> None:
    """Warn about a dropped marker the 1st, 10th, 100th, … time (never a line per marker)."""
    if str(n).rstrip("0") == "1":
        log.warning("decoder %r: marker %r at %.3f s dropped, %s (reference %.3f s); %d so far",
                    task.name, text, timestamp, why, reference, n)
