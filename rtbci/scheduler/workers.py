"""Workers: where a decoder runs, and what its call may do.

Each decoder runs on its own worker thread, so a slow decoder never delays another; one that
runs past its ``timeout_ms`` is reported (the others keep running on their own threads).
Whatever a decoder call does — raise any exception, ``SystemExit`` and ``KeyboardInterrupt``
included, or return something that is not a :class:`~rtbci.models.base.DecoderOutput`
(``None``) — is counted as an error on that window (``errors``, ``last_error`` naming it) and
its worker goes on with the next window.

A decoder with ``thread = "source"`` (config: the engine's own ``builtin:`` decoders only, never
user code) runs instead on its source's acquisition thread, right after the chunk that
completes its window landed, on a zero-copy, read-only view of the ring buffer (an in-place
write raises inside the decoder: an error on that window, the ring is untouched): no thread
wake-up and no window copy. It delays that source's next chunk while it runs, so one
that takes longer than ``SOURCE_THREAD_MAX_MS`` for ``SOURCE_THREAD_STRIKES`` windows in a
row moves to its own worker for the rest of the run (logged). A window that a marker
completes (the marker arriving after its samples) runs on the worker too.

Outputs are checked before they are published (:func:`output_problem`): a non-finite value,
or a shape that does not match the decoder's ``kind`` and ``output_size`` (probabilities ≠
``labels``, embedding ≠ ``output_size``, retrieval ids/scores ≠ ``output_size / 2``), is
counted as ``invalid_outputs``, logged (the first, then the 10th, 100th … time) and not
published (:mod:`rtbci.scheduler.routing`).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from rtbci.errors import describe_exception
from rtbci.models.base import Decoder, DecoderOutput
from rtbci.scheduler.process import ProcessDecoder, Supervisor
from rtbci.scheduler.task import DecoderTask, Job

log = logging.getLogger("rtbci.scheduler")

SOURCE_THREAD_MAX_MS = 2.0  # a decoder on its source's thread taking longer …
SOURCE_THREAD_STRIKES = 3  # … for this many windows in a row moves to its own worker
INLINE_MAX_MS = 0.5  # placement = "auto": a builtin: decoder measured under this runs inline
INLINE_CALLS = 5  # calls timed at start for that (their median)


def choose_placement(config, decoder: Decoder, window: np.ndarray) -> tuple[str, str]:
    """Where a decoder runs, and why: ``config.placement`` unless it is ``"auto"``; then
    ``"source"`` (its source's acquisition thread: no wake-up, no window copy) only for the
    engine's own ``builtin:`` decoders, in the engine, on the CPU, without importance, whose
    median over ``INLINE_CALLS`` timed calls on ``window`` (after the warm-up) is under
    ``INLINE_MAX_MS`` — the guard that keeps the acquisition thread fast (the strike policy
    still moves one that slows down later); else ``"own"`` (its own worker thread)."""
    if config.placement != "auto":
        return config.placement, "configured"
    if not config.model.startswith("builtin:"):
        return "own", "auto: user code never runs on an acquisition thread"
    if config.isolation != "thread" or config.device != "cpu" or decoder.explains:
        return "own", "auto: isolation, device or importance need a worker"
    took = []
    for _ in range(INLINE_CALLS):
        started = time.perf_counter()
        decoder(window)
        took.append((time.perf_counter() - started) * 1e3)
    median = float(np.median(took))
    if median < INLINE_MAX_MS:
        return "source", f"auto: {median:.3f} ms a window < {INLINE_MAX_MS:g} ms"
    return "own", f"auto: {median:.3f} ms a window ≥ {INLINE_MAX_MS:g} ms"


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


class Worker(ABC):
    """Where one decoder's jobs run: the interface a thread (and later a process) worker
    implements. It runs ``work(job)`` for each job.

    The scheduler never submits a job while the decoder is busy, so at most one job waits.
    ``running`` is ``(job, start time)`` while a job runs and ``reported`` says it was
    reported hung (both read by the hung-decoder check on the loop); ``thread`` is the
    thread the engine's health watch follows.

    Threads: :meth:`submit` from any thread (the one that claimed or released the decoder:
    a source's acquisition thread, the loop, the decoder's own worker); :meth:`run_here`
    on a source's acquisition thread; :meth:`close` on the loop.
    """

    thread: threading.Thread

    def __init__(self, name: str, clock: Callable[[], float], work: Callable[[Job], None]):
        self.name, self.clock, self.work = name, clock, work
        self.running: tuple[Job, float] | None = None
        self.reported = False  # the running job was reported hung

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Run ``job`` on the worker, soon; raises if one is already waiting."""

    @abstractmethod
    def run_here(self, job: Job) -> None:
        """Run ``job`` in the calling thread, seen by the watchdog as this worker's."""

    @abstractmethod
    def close(self) -> None:
        """No more jobs: the worker ends after the one it runs (if any)."""


class ThreadWorker(Worker):
    """One decoder's inference thread (``infer-<name>``); see :class:`Worker` for which
    thread calls which method. ``work`` runs on this thread, or in :meth:`run_here`'s
    caller."""

    def __init__(self, name: str, clock: Callable[[], float], work: Callable[[Job], None]):
        super().__init__(name, clock, work)
        self._job: Job | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"infer-{name}")
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._job is not None:
                raise RuntimeError(f"decoder {self.name!r}: a job is already waiting")
            self._job = job
            self._cond.notify()

    def run_here(self, job: Job) -> None:
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


class Workers:
    """Every decoder's worker (``workers``, by decoder name), the source-thread strike policy
    and the hung-decoder check.

    Threads: :meth:`add`, :meth:`check_hung` and :meth:`close` on the loop (offline: the
    caller's); :meth:`submit` wherever a decoder is claimed or released (see :class:`Worker`);
    :meth:`run_on_source` on a source's acquisition thread.
    """

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.workers: dict[str, Worker] = {}  # by decoder name
        self.supervisor = Supervisor()  # the process decoders' (rtbci.scheduler.process)

    def add(self, task: DecoderTask, device: str, work: Callable[[Job], None]) -> None:
        """A worker thread for ``task`` (named after it and ``device``) that runs ``work``."""
        self.workers[task.name] = ThreadWorker(f"{task.name}@{device}", self.clock, work)

    def supervise(self, task: DecoderTask) -> None:
        """Watch ``task``'s worker process, if its decoder runs in one (online and offline)."""
        if isinstance(task.decoder, ProcessDecoder):
            self.supervisor.add(task.decoder)

    def submit(self, job: Job) -> None:
        self.workers[job.task.name].submit(job)

    def run_on_source(self, job: Job, free: Callable[[DecoderTask], None]) -> None:
        """Decode ``job`` on the source's thread, then ``free(task)``; a decoder over
        ``SOURCE_THREAD_MAX_MS`` for ``SOURCE_THREAD_STRIKES`` windows in a row moves to its
        own worker."""
        task, started = job.task, time.perf_counter()
        self.workers[task.name].run_here(job)
        free(task)
        took_ms = (time.perf_counter() - started) * 1e3
        task.strikes = task.strikes + 1 if took_ms > SOURCE_THREAD_MAX_MS else 0
        if task.strikes >= SOURCE_THREAD_STRIKES:
            task.placement = "own"
            log.warning("decoder %r took over %g ms on source %r's thread for %d windows in a "
                        "row (last %.1f ms): it runs on its own thread from now on", task.name,
                        SOURCE_THREAD_MAX_MS, task.stream.info.name, task.strikes, took_ms)

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
        """No more jobs; the worker processes stop (a job still running in one fails)."""
        self.supervisor.stop()
        for worker in self.workers.values():
            worker.close()
        for decoder in self.supervisor.decoders:
            decoder.close()
