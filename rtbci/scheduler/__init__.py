"""The scheduler: sample-counted triggers → one inference worker per decoder → results.

It is split along what it does; each part documents its behaviour:

- :mod:`rtbci.scheduler.triggers`: when a window is due (sliding, markers, clock jumps), and
  the one snapshot of the ring it is read from;
- :mod:`rtbci.scheduler.workers`: where a decoder runs (its own thread, or its source's
  thread under a strike policy), what its call may do, the hung-decoder check;
- :mod:`rtbci.scheduler.routing`: completing a result and handing it to the sinks;
- :mod:`rtbci.scheduler.task`: one decoder's state (:class:`DecoderTask`, whose ``busy``
  changes only through ``claim`` / ``release``) and a window to decode (:class:`Job`).

:class:`Scheduler` composes them.
"""

from __future__ import annotations

from collections.abc import Callable

from rtbci.messages import Result
from rtbci.scheduler.routing import DirectSinks, Router
from rtbci.scheduler.task import LATENCY_WINDOW, DecoderTask, Job, Swap
from rtbci.scheduler.triggers import MAX_PENDING_MARKERS, MAX_QUEUED_WINDOWS, Triggers, TriggerSpec
from rtbci.scheduler.workers import SOURCE_THREAD_MAX_MS, SOURCE_THREAD_STRIKES, Worker, Workers
from rtbci.stream import Stream

__all__ = ["LATENCY_WINDOW", "MAX_PENDING_MARKERS", "MAX_QUEUED_WINDOWS", "SOURCE_THREAD_MAX_MS",
           "SOURCE_THREAD_STRIKES", "DecoderTask", "Job", "Scheduler", "Swap", "TriggerSpec"]


class Scheduler:
    """Fires decoder jobs from stream data and markers; hands results to ``publish``.

    ``triggers`` (:class:`~rtbci.scheduler.triggers.Triggers`) decides when a window is due,
    ``pool`` (:class:`~rtbci.scheduler.workers.Workers`) runs it, ``router``
    (:class:`~rtbci.scheduler.routing.Router`) hands its result on. ``tasks`` and
    ``workers`` are by decoder name.

    Threads: :meth:`on_data` may run on a source's acquisition thread, right after a chunk
    lands (no trip through the event loop before a decoder's worker wakes); :meth:`add`,
    :meth:`on_data` and :meth:`on_marker` hold the triggers' lock, so they may run on
    different threads. :meth:`check_hung` and :meth:`close` run on the event loop's thread,
    and so does a result's bookkeeping, except when no sink needs the loop (``direct``).
    With ``inline`` (offline replay) each job runs at once in the calling thread.

    Parameters
    ----------
    loop : asyncio loop
    clock : callable, seconds on the LSL clock
    publish : callable(Result)
        Called on the loop thread with each finished result (``t_published`` set).
    direct : DirectSinks | None
        The sinks that may publish from any thread: each result of a decoder without
        importance goes to ``direct.here`` on its decoding thread as soon as it is complete
        (no event-loop hop), then to ``direct.rest`` (instead of ``publish``) on the loop
        thread with the bookkeeping — unless ``direct.loop_needed()`` says no sink needs the
        loop: then the bookkeeping is done on the decoding thread too, and the loop is not
        woken at all.
    """

    def __init__(self, loop, clock: Callable[[], float], publish: Callable[[Result], None],
                 inline: bool = False, direct: DirectSinks | None = None):
        self.loop, self.clock, self.inline = loop, clock, inline
        self.router = Router(loop, clock, publish, inline, None if inline else direct,
                             self._free)
        self.pool = Workers(clock)
        self.triggers = Triggers(clock, self._dispatch, inline)
        self.tasks: dict[str, DecoderTask] = self.triggers.tasks
        self.workers: dict[str, Worker] = self.pool.workers

    def add(self, task: DecoderTask, device: str = "cpu") -> None:
        """Schedule ``task``; it gets its own worker thread (named after it and ``device``)."""
        with self.triggers.lock:
            if not self.inline:
                self.pool.add(task, device, self.router.work)
            self.pool.supervise(task)
            self.triggers.add(task)

    def on_data(self, stream: Stream) -> None:
        """New samples in ``stream`` (on its producer's thread): fire every trigger whose
        window is complete; decoders with ``thread = "source"`` run here, after the lock."""
        for job in self.triggers.on_data(stream):
            self.pool.run_on_source(job, self._free)

    def on_marker(self, stream: Stream, timestamp: float, text: str) -> None:
        """A marker on ``stream``'s marker stream: queue its window for matching decoders."""
        self.triggers.on_marker(stream, timestamp, text)

    def swap(self, name: str, swap: Swap) -> None:
        """Put ``swap.decoder`` in place of decoder ``name``'s between two of its windows
        (:meth:`DecoderTask.swap`; any thread): ``swap.applied`` says when."""
        with self.triggers.lock:
            self.tasks[name].swap(swap)

    def cancel_swap(self, name: str, swap: Swap) -> bool:
        """Withdraw a swap not applied yet (True), else False (any thread)."""
        with self.triggers.lock:
            return self.tasks[name].cancel_swap(swap)

    def check_hung(self) -> None:
        """Report (once) each decoder running past its ``timeout_ms`` (on the loop)."""
        self.pool.check_hung()

    def close(self) -> None:
        """No more jobs: workers end, worker processes stop (online and offline)."""
        self.pool.close()

    def _dispatch(self, job: Job) -> None:
        """A claimed job: to its worker (offline: decoded now, in this thread)."""
        if self.inline:
            self.router.work(job)
        else:
            self.pool.submit(job)

    def _free(self, task: DecoderTask) -> None:
        """The decoder finished a window: the next queued marker window goes to its worker
        (it stays busy), else it is free."""
        job = self.triggers.finished(task)
        if job is not None:
            self._dispatch(job)
