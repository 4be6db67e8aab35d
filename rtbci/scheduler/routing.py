"""Routing: a decoded window's result, completed, counted and handed on.

A result goes to the sinks on the event loop (``publish``), or — ``direct``, for a decoder
without importance — to the thread-safe sinks from the thread that decoded it as soon as it is
complete, then to the others on the loop with its bookkeeping; when no sink needs the loop,
the bookkeeping is done on that thread too and the loop is not woken at all. An output that
:func:`~rtbci.scheduler.workers.output_problem` finds wrong is counted (``invalid_outputs``),
logged the 1st, 10th, 100th … time and not published.

A decoder with per-channel importance (``options.importance``) computes it on its own worker
*after* its result was handed to the sinks; the importance travels with the decoder's next
result, with ``importance_seq`` naming the result it belongs to (docs/messages.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from rtbci.messages import Result
from rtbci.models.base import DecoderOutput
from rtbci.scheduler.process import SUPERVISOR_SAID
from rtbci.scheduler.task import DecoderTask, Job
from rtbci.scheduler.workers import describe_exception, output_problem, run_explain, run_job

log = logging.getLogger("rtbci.scheduler")

Direct = tuple[Callable[[Result], None], Callable[[Result], None], Callable[[], bool]]


class Router:
    """Decodes a job on the thread it was given to and routes its result.

    Threads: :meth:`work` on the decoder's worker or its source's thread (offline: the
    caller's); :meth:`_done` and :meth:`_explained` on the loop (through :meth:`_call`),
    except :meth:`_done` on the decoding thread when ``direct`` and no sink needs the loop
    (the result counters have one writer at a time). With ``inline`` everything runs at once
    in the calling thread.

    Parameters
    ----------
    loop : asyncio loop
    clock : callable, seconds on the LSL clock
    publish : callable(Result)
        Called on the loop thread with each finished result (``t_published`` set).
    inline : bool
        Offline replay: no trip to the loop.
    direct : (callable(Result), callable(Result), callable() -> bool) | None
        ``(on_worker, on_loop, loop_needed)``, see :class:`~rtbci.scheduler.Scheduler`.
    free : callable(DecoderTask)
        The decoder finished a window (its next queued window runs, or it is free).
    """

    def __init__(self, loop, clock: Callable[[], float], publish: Callable[[Result], None],
                 inline: bool, direct: Direct | None, free: Callable[[DecoderTask], None]):
        self.loop, self.clock, self.publish, self.inline = loop, clock, publish, inline
        self.direct, self.free = direct, free

    def work(self, job: Job) -> None:
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

    def _call(self, method, *args) -> None:
        """Run ``method(*args)`` on the loop thread (at once when inline)."""
        if self.inline:
            method(*args)
            return
        try:
            self.loop.call_soon_threadsafe(method, *args)
        except RuntimeError:  # the loop has closed: a hung decoder returned after the run
            log.debug("decoder %r returned after the engine stopped", args[0].task.name)

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
            self.free(task)
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
        """On the loop: the importance of ``job``'s window is ready (sent with the next
        result); the decoder is free."""
        task = job.task
        self.free(task)
        if error is not None:
            self._error(task, job.result.seq, error)
        else:
            task.importance = (job.result.seq, importance)

    @staticmethod
    def _error(task: DecoderTask, seq: int, error: str) -> None:
        task.errors += 1
        said = error.startswith(SUPERVISOR_SAID)  # the supervisor logged the death already
        if task.last_error != error and not said:
            log.error("decoder %r failed on window %d: %s", task.name, seq, error)
        task.last_error = error


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
