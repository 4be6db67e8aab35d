"""Routing: a decoded window's result, completed, counted and handed on.

A result goes to the sinks on the event loop (``publish``), or — :class:`DirectSinks`, for a
decoder without importance — to the thread-safe sinks from the thread that decoded it as soon
as it is complete, then to the others on the loop with its bookkeeping; when no sink needs the
loop, the bookkeeping is done on that thread too and the loop is not woken at all. An output that
:func:`~rtbci.scheduler.workers.output_problem` finds wrong is counted (``invalid_outputs``),
logged the 1st, 10th, 100th … time and not published.

A decoder with per-channel importance (``options.importance``) computes it on its own worker
*after* its result was handed to the sinks; the importance travels with the decoder's next
result, with ``importance_seq`` naming the result it belongs to (docs/messages.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rtbci.errors import describe_exception
from rtbci.messages import Result
from rtbci.models.base import DecoderOutput
from rtbci.scheduler.process import SUPERVISOR_SAID
from rtbci.scheduler.task import DecoderTask, Job
from rtbci.scheduler.workers import output_problem, run_explain, run_job

log = logging.getLogger("rtbci.scheduler")

@dataclass(frozen=True)
class DirectSinks:
    """Results handed on without the event loop, for decoders without importance.

    ``here(result)`` runs on the decoding thread as soon as a result is complete (the sinks
    that may publish from any thread); ``rest(result)`` runs on the loop thread with the
    bookkeeping (the other sinks, instead of ``publish``); ``loop_needed()`` says whether any
    sink needs the loop at all: when not, the bookkeeping is done on the decoding thread too
    and the loop is not woken."""

    here: Callable[[Result], None]
    rest: Callable[[Result], None]
    loop_needed: Callable[[], bool]


@dataclass
class Decoded:
    """One decoded window on its way out: the decoder's ``output`` or its ``error``;
    ``invalid``: what is wrong with the output (counted, not published); ``frees``: finishing
    it frees the decoder (not on the source's thread, which frees it there, nor while its
    importance runs); ``handed``: already completed and given to ``DirectSinks.here``."""

    job: Job
    output: DecoderOutput | None
    error: str | None
    invalid: str | None
    frees: bool
    handed: bool


class Router:
    """Decodes a job on the thread it was given to and routes its result.

    Threads: :meth:`work` on the decoder's worker or its source's thread (offline: the
    caller's); :meth:`_on_loop` and :meth:`_explained` on the loop (through :meth:`_call`);
    :meth:`_count` on the loop, or on the decoding thread when the result was handed to
    ``direct`` and no sink needs the loop (the result counters have one writer at a time).
    With ``inline`` everything runs at once in the calling thread.

    Parameters
    ----------
    loop : asyncio loop
    clock : callable, seconds on the LSL clock
    publish : callable(Result)
        Called on the loop thread with each finished result (``t_published`` set).
    inline : bool
        Offline replay: no trip to the loop.
    direct : DirectSinks | None
        The sinks served from the decoding thread (None: every result goes through the loop).
    free : callable(DecoderTask)
        The decoder finished a window (its next queued window runs, or it is free).
    """

    def __init__(self, loop, clock: Callable[[], float], publish: Callable[[Result], None],
                 inline: bool, direct: DirectSinks | None,
                 free: Callable[[DecoderTask], None]):
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
        handed = good and not explain and self.direct is not None
        if handed:  # complete the result here and hand it to the thread-safe sinks at once
            _fill(job.result, output, job.task.budget_ms, self.clock())
            self.direct.here(job.result)
        decoded = Decoded(job, output, error, invalid, frees=not explain and not job.on_source,
                          handed=handed)
        if handed and not self.direct.loop_needed():  # nothing for the loop: count it here
            self._count(decoded)
        else:
            self._call(self._on_loop, decoded)
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
            log.debug("a decoder returned after the engine stopped (%s)", method.__name__)

    def _on_loop(self, decoded: Decoded) -> None:
        """On the loop: count the result, then publish it to the sinks that have not had it."""
        if not self._count(decoded):
            return
        if decoded.handed:
            self.direct.rest(decoded.job.result)
        else:
            self.publish(decoded.job.result)

    def _count(self, decoded: Decoded) -> bool:
        """Free the decoder if due, count the window's error, invalid output or result
        (completing a result not yet handed on); whether there is a result to publish."""
        task, result = decoded.job.task, decoded.job.result
        if decoded.frees:
            self.free(task)
        if decoded.error is not None:
            self._error(task, result.seq, decoded.error)
            return False
        if decoded.invalid is not None:
            task.invalid_outputs += 1
            if str(task.invalid_outputs).rstrip("0") == "1":
                log.error("decoder %r: invalid output for window %d, not published: %s "
                          "(%d so far)", task.name, result.seq, decoded.invalid,
                          task.invalid_outputs)
            return False
        if not decoded.handed:
            pending = None
            if decoded.output.importance is None:  # computed after the previous result
                pending, task.importance = task.importance, None
            _fill(result, decoded.output, task.budget_ms, self.clock(), pending)
        task.results += 1
        task.late += result.late
        task.latency.record(result.t_published - result.t_arrived)
        return True

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
