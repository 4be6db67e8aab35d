"""The scheduler: sample-counted triggers → jobs with deadlines → inference workers → results.

Triggers count samples, not wall time, so a replay fires exactly the windows a live run
fires. A decoder still busy when its next trigger fires skips that trigger (counted; its
``seq`` is left out) and the freshest window always wins. Jobs waiting for the same worker
run earliest-deadline-first; a decoder that raises is isolated; one that runs past its
``timeout_ms`` is reported and its worker replaced so the other decoders keep running.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rtbci.messages import Result
from rtbci.models.base import Decoder, DecoderOutput
from rtbci.stream import Stream

log = logging.getLogger("rtbci.scheduler")

LATENCY_HISTORY = 100_000


@dataclass
class TriggerSpec:
    """When a decoder fires, in samples of its stream.

    ``every`` > 0: windows of ``length`` samples ending at ``length + k * every``.
    ``marker``: windows ``[onset + start, onset + start + length)`` around each marker whose
    text is ``marker`` or starts with ``marker + "/"``.
    """

    length: int
    every: int = 0
    marker: str | None = None
    start: int = 0  # marker-relative offset of the first sample

    def matches(self, text: str) -> bool:
        return self.marker is not None and (text == self.marker
                                            or text.startswith(self.marker + "/"))


@dataclass(order=True)
class Job:
    deadline: float
    order: int
    task: DecoderTask = field(compare=False)
    result: Result = field(compare=False)


class DecoderTask:
    """One decoder's scheduling state and counters."""

    def __init__(self, name: str, decoder: Decoder, stream: Stream, trigger: TriggerSpec,
                 budget_ms: float, timeout_ms: float, session: str = ""):
        self.name, self.decoder, self.stream, self.trigger = name, decoder, stream, trigger
        self.budget_ms, self.timeout_ms, self.session = budget_ms, timeout_ms, session
        self.window = np.zeros((trigger.length, stream.info.n_channels), dtype=np.float32)
        # Sliding windows end at counters length + k * every; start at the first one still to
        # come (a decoder attached to a running stream has missed nothing it could have seen).
        k = 0
        if trigger.every and stream.buffer.count > trigger.length:
            k = -(-(stream.buffer.count - trigger.length) // trigger.every)
        self.next_end = trigger.length + k * trigger.every  # counter after its last sample
        self.seq = k
        self.busy = False
        self.pending: list[tuple[int | None, float, str]] = []  # (onset counter, timestamp, text)
        self.results = self.late = self.skipped = self.errors = self.timeouts = 0
        self.invalid_windows = 0  # not decoded: non-finite input, or overwritten while copied
        self.last_error: str | None = None
        self._latency = np.zeros(LATENCY_HISTORY)

    def record_latency(self, seconds: float) -> None:
        self._latency[(self.results - 1) % LATENCY_HISTORY] = seconds

    def stats(self) -> dict:
        lat = self._latency[: min(self.results, LATENCY_HISTORY)] * 1e3
        figures = ({"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                    "max": float(lat.max())} if lat.size else
                   {"p50": None, "p99": None, "max": None})
        out = {"results": self.results, "late": self.late, "skipped": self.skipped,
               "errors": self.errors, "timeouts": self.timeouts,
               "invalid_windows": self.invalid_windows, "latency_ms": figures}
        if self.last_error:
            out["last_error"] = self.last_error
        return out


def run_job(job: Job, clock: Callable[[], float]) -> tuple[Job, DecoderOutput | None, str | None]:
    """Run a job's decoder on its window, timing it; an exception becomes an error string."""
    job.result.t_started = clock()
    output = error = None
    try:
        output = job.task.decoder(job.task.window)
    except Exception as exc:  # isolate the decoder; report, keep running
        error = f"{type(exc).__name__}: {exc}"
        log.debug("decoder %r raised:\n%s", job.task.name, traceback.format_exc())
    job.result.t_finished = clock()
    return job, output, error


class Worker:
    """An inference thread for one device, taking queued jobs earliest-deadline-first.

    ``on_done(job, output, error)`` is called from the worker thread after each job.
    """

    def __init__(self, device: str, clock: Callable[[], float],
                 on_done: Callable[[Job, DecoderOutput | None, str | None], None]):
        self.device, self.clock, self.on_done = device, clock, on_done
        self._queue: list[Job] = []
        self._cond = threading.Condition()
        self._order = itertools.count()
        self._closed = False
        self._generation = 0
        self.running: tuple[Job, float] | None = None  # (job, start time)
        self._spawn()

    def _spawn(self) -> None:
        self._generation += 1
        threading.Thread(target=self._run, args=(self._generation,), daemon=True,
                         name=f"infer-{self.device}-{self._generation}").start()

    def submit(self, task: DecoderTask, result: Result, deadline: float) -> None:
        with self._cond:
            heapq.heappush(self._queue, Job(deadline, next(self._order), task, result))
            self._cond.notify()

    def replace_thread(self) -> None:
        """Abandon a thread stuck in a hung decoder and carry on with a fresh one."""
        with self._cond:
            self.running = None
            self._spawn()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self, generation: int) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed and generation == self._generation:
                    self._cond.wait()
                if self._closed or generation != self._generation:
                    return
                job = heapq.heappop(self._queue)
                self.running = (job, self.clock())
            job, output, error = run_job(job, self.clock)
            with self._cond:
                if generation == self._generation:
                    self.running = None
            self.on_done(job, output, error)
            if generation != self._generation:
                return  # this thread was replaced while it hung


class Scheduler:
    """Fires decoder jobs from stream data and markers; hands results to ``publish``.

    All methods except the workers' callbacks run on the event loop's thread. With
    ``inline`` (offline replay) each job runs at once in the calling thread.

    Parameters
    ----------
    loop : asyncio loop
    clock : callable, seconds on the LSL clock
    publish : callable(Result)
        Called on the loop thread with each finished result (``t_published`` set).
    """

    def __init__(self, loop, clock: Callable[[], float], publish: Callable[[Result], None],
                 inline: bool = False):
        self.loop, self.clock, self.publish, self.inline = loop, clock, publish, inline
        self.tasks: dict[str, DecoderTask] = {}
        self.workers: dict[str, Worker] = {}
        self._by_stream: dict[int, list[DecoderTask]] = {}
        self._worker_of: dict[str, Worker] = {}

    def add(self, task: DecoderTask, device: str = "cpu") -> None:
        self.tasks[task.name] = task
        self._by_stream.setdefault(id(task.stream), []).append(task)
        if device not in self.workers:
            self.workers[device] = Worker(device, self.clock, self._done_threadsafe)
        self._worker_of[task.name] = self.workers[device]

    def on_data(self, stream: Stream) -> None:
        """New samples in ``stream``: fire every trigger whose window is complete."""
        for task in self._by_stream.get(id(stream), ()):
            if task.trigger.every:
                self._fire_sliding(task)
            if task.pending:
                self._fire_markers(task)

    def on_marker(self, stream: Stream, timestamp: float, text: str) -> None:
        """A marker on ``stream``'s marker stream: queue its window for matching decoders."""
        for task in self._by_stream.get(id(stream), ()):
            if task.trigger.matches(text):
                task.pending.append((None, timestamp, text))
                self._fire_markers(task)

    @staticmethod
    def _onset(stream: Stream, timestamp: float) -> int | None:
        """Counter of the sample nearest ``timestamp`` (the first stamped after
        ``timestamp − half a period``), or None while that sample has not arrived.

        Markers are placed by looking their timestamp up among the samples' timestamps only
        once those are in, so the window is the same whether a marker arrives before or after
        its samples (live) or in timestamp order (offline replay).
        """
        buf, half = stream.buffer, 0.5 / stream.info.srate
        if not buf.count or timestamp - half > buf.last_timestamp:
            return None
        _, times = buf.window(buf.oldest, buf.count)
        return buf.oldest + int(np.searchsorted(times, timestamp - half))

    def _fire_sliding(self, task: DecoderTask) -> None:
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
        self._submit(task, end - trig.length, end, "every", None)
        task.seq += 1

    def _fire_markers(self, task: DecoderTask) -> None:
        buf = task.stream.buffer
        for i, (onset, timestamp, text) in enumerate(task.pending):
            if onset is None and (onset := self._onset(task.stream, timestamp)) is not None:
                task.pending[i] = (onset, timestamp, text)
        ready = [p for p in task.pending
                 if p[0] is not None and p[0] + task.trigger.start + task.trigger.length
                 <= buf.count]
        for item in ready:
            task.pending.remove(item)
            start, _, text = item[0] + task.trigger.start, item[1], item[2]
            if start < buf.oldest:
                task.errors += 1
                task.last_error = f"marker {text!r}: window already left the buffer"
                continue
            if task.busy:
                task.skipped += 1
            else:
                self._submit(task, start, start + task.trigger.length, "marker", text)
            task.seq += 1

    def _submit(self, task: DecoderTask, start: int, end: int, trigger: str,
                marker: str | None) -> None:
        stream = task.stream
        data, times = stream.buffer.window(start, end)
        np.copyto(task.window, data)
        arrived = stream.arrival(end - 1)
        result = Result(decoder=task.name, seq=task.seq, trigger=trigger, marker=marker,
                        window_start=float(times[0]), window_end=float(times[-1]),
                        kind=task.decoder.kind, t_arrived=arrived, t_queued=self.clock(),
                        budget_ms=task.budget_ms, session=task.session)
        if not stream.clean(start, end):  # after the copy: non-finite input, or torn
            task.invalid_windows += 1
            return
        deadline = arrived + task.budget_ms * 1e-3
        if self.inline:  # offline: decode now, in this thread; nothing is ever busy
            self._done(*run_job(Job(deadline, 0, task, result), self.clock))
            return
        task.busy = True
        self._worker_of[task.name].submit(task, result, deadline)

    def _done_threadsafe(self, job: Job, output: DecoderOutput | None, error: str | None):
        self.loop.call_soon_threadsafe(self._done, job, output, error)

    def _done(self, job: Job, output: DecoderOutput | None, error: str | None) -> None:
        task, result = job.task, job.result
        task.busy = False
        if error is not None:
            task.errors += 1
            if task.last_error != error:
                log.error("decoder %r failed on window %d: %s", task.name, result.seq, error)
            task.last_error = error
            return
        result.labels = output.labels
        result.probabilities, result.ids = output.probabilities, output.ids
        result.scores, result.embedding = output.scores, output.embedding
        result.importance = output.importance
        result.t_published = self.clock()
        result.late = result.t_published - result.t_arrived > task.budget_ms * 1e-3
        task.results += 1
        task.late += result.late
        task.record_latency(result.t_published - result.t_arrived)
        self.publish(result)

    def check_hung(self) -> None:
        """Report decoders running past their ``timeout_ms`` and free their worker."""
        now = self.clock()
        for worker in self.workers.values():
            running = worker.running
            if running is None:
                continue
            job, started = running
            task = job.task
            if now - started > task.timeout_ms * 1e-3:
                task.timeouts += 1
                task.last_error = f"hung: no result after {task.timeout_ms:g} ms"
                log.error("decoder %r hung (running for %.0f ms > timeout_ms %g); its worker "
                          "is replaced, it stays busy until it returns", task.name,
                          (now - started) * 1e3, task.timeout_ms)
                worker.replace_thread()

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
