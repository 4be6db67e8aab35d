"""Process isolation: a decoder in its own worker process, and the supervisor that keeps it up.

A decoder with ``isolation = "process"`` is built and run in a child process (started with
``spawn``: a fork of the engine would copy its LSL and event-loop threads' locks; a GPU decoder
owns its CUDA context there). The engine keeps a :class:`ProcessDecoder` in its place: the
same :class:`~rtbci.models.base.Decoder` interface, so the scheduler's thread worker, the
strike-free routing and offline replay work unchanged.

The hop, without pickling an array:

- the window the scheduler copies out of the ring (the one copy a thread worker gets too) is
  written straight into a shared-memory segment (``input_buffer``: the task's window lives
  there) that the child maps **read-only** (``mmap`` with ``PROT_READ``: an in-place edit
  raises in the decoder and cannot reach the engine);
- a few bytes (msgpack) over a pipe wake the child (:mod:`rtbci.scheduler.worker_process`, its
  side); it decodes the mapped window without a copy and writes the output's arrays into a
  second shared segment;
- a few bytes back say which arrays are where; the parent copies them out (vectors of a few
  hundred values).

The child never sees the live ring: a decoder slower than the ring is long could otherwise
read samples the acquisition is overwriting.

Supervision (:class:`Supervisor`, one thread for all, every ``CHECK_S``):

- a child that dies (``os._exit``, a segfault, the out-of-memory killer) is restarted with
  backoff (``BACKOFF_S`` doubling up to ``BACKOFF_MAX_S``); the window it was decoding is an
  error naming the cause; windows due while it restarts are errors too (``worker process
  restarting``);
- a call that runs past ``kill_after`` × ``budget_ms`` is killed (``SIGKILL``) and restarted;
- an RSS over ``max_memory_mb`` is killed and restarted;
- ``MAX_DEATHS`` deaths within ``DEATH_WINDOW_S`` mark the decoder ``failed`` (no more
  restarts; the run's exit status says so).

Each restart, kill and death is one log line; :meth:`ProcessDecoder.worker_stats` gives
``pid``, ``state``, ``restarts``, ``kills``, ``rss_mb``, ``cpu_percent``, ``last_exit`` and
the hop's latency for ``--stats-json``, the console, the display and MQTT.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import os
import select
import signal
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import msgpack
import numpy as np
import psutil

from rtbci.errors import RtbciError, WorkerFault
from rtbci.latency import LatencyWindow
from rtbci.models.base import Decoder, DecoderOutput
from rtbci.scheduler.worker_process import OUTPUT_BYTES, REQUESTS, child_main, read_message

log = logging.getLogger("rtbci.scheduler")

START_TIMEOUT_S = 300.0  # a child's build and warm-up (a TensorRT build can take minutes)
CHECK_S = 0.2  # the supervisor's period: RSS, CPU, deaths while idle, restarts due
BACKOFF_S = 0.1  # first restart delay, doubled per death in a row …
BACKOFF_MAX_S = 5.0  # … up to this
MAX_DEATHS = 5  # deaths within DEATH_WINDOW_S that mark the decoder failed
DEATH_WINDOW_S = 60.0


SPAWN_HINT = (" (its traceback is above; a Python script that starts an engine with isolation = "
              "\"process\" must do so under `if __name__ == \"__main__\":`, as spawned "
              "processes import the script)")
SUPERVISOR_SAID = "worker process "  # how the faults the supervisor logged itself begin


def describe_exit(code: int | None) -> str:
    """``"killed by SIGSEGV"`` / ``"exited with status 3"`` from a process's exit code."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the out-of-memory killer?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with status {code}"


class ProcessDecoder(Decoder):
    """The engine's handle on a decoder running in its own process (see the module doc).

    Parameters
    ----------
    config : DecoderConfig
        The decoder's config (``isolation``, ``kill_after``, ``max_memory_mb``, ``cpu``,
        ``nice`` are read here; the child builds from the rest).
    info : StreamInfo
        Its source's stream (after preprocessing).
    where : str
        Config location for error lines (``decoders[0]``).
    base_dir, preprocess
        As :func:`rtbci.models.load_decoder` takes them.

    Threads: :meth:`__call__` and :meth:`importance` on the decoder's one worker thread (or
    offline the caller's); :meth:`check` on the supervisor's; :meth:`worker_stats` anywhere;
    the state changes under ``_lock``.
    """

    def __init__(self, config, info, where: str, base_dir: Path | None = None,
                 preprocess=None):
        self.config, self.info, self.where = config, info, where
        self.base_dir, self.preprocess = base_dir, preprocess
        self.name = config.name
        self.kill_after_s = config.kill_after * config.budget_ms * 1e-3
        self.kill_after_ms = math.ceil(self.kill_after_s * 1e3)
        self._lock = threading.Lock()
        self.state = "starting"  # starting | running | restarting | failed | closed
        self.restarts = self.kills = 0
        self.last_exit = ""  # why the last child ended
        self.hop = LatencyWindow(4096)  # call time in the parent less the decode in the child
        self._deaths: deque[float] = deque()
        self._kill_reason: str | None = None
        self._process: mp.Process | None = None
        self._conn: Connection | None = None
        self._reply: select.poll | None = None  # waits for the child's reply on _conn
        self._ps: psutil.Process | None = None
        self._rss_mb = self._cpu = 0.0
        self._restart_at: float | None = None
        self._input: SharedMemory | None = None
        self._output: SharedMemory | None = None

    # --- starting -------------------------------------------------------------------------

    def start(self) -> ProcessDecoder:
        """Start the child, build the decoder there and warm it up; raises RtbciError with the
        child's own error line when the build fails."""
        meta = self._spawn()
        for key in ("kind", "labels", "n_samples", "n_channels", "output_size",
                    "window_start", "explains", "channel_names"):
            setattr(self, key, meta.get(key))
        self._describe = meta["describe"]
        shape = (self.n_samples, self.info.n_channels)
        self._input = SharedMemory(create=True, size=max(1, int(np.prod(shape)) * 4))
        self._output = SharedMemory(create=True, size=OUTPUT_BYTES)
        self.input_buffer = np.ndarray(shape, np.float32, self._input.buf)
        self.input_buffer[:] = 0
        self._out = self._output.buf
        self._map()
        with self._lock:
            self.state = "running"
        return self

    def _spawn(self) -> dict:
        """Start a child and wait for its build: its metadata (raises RtbciError)."""
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=child_main, name=f"rtbci-decoder-{self.name}",
                              args=(child, self.config, self.info, self.where, self.base_dir,
                                    self.preprocess), daemon=True)
        process.start()
        child.close()
        ready = wait([parent, process.sentinel], START_TIMEOUT_S)
        if parent not in ready:
            process.kill()
            process.join(1.0)
            raise RtbciError(f"{self.where} ({self.name!r}): its worker process "
                             f"{describe_exit(process.exitcode) if ready else 'did not start'} "
                             f"while building the decoder{SPAWN_HINT}")
        try:
            meta = msgpack.unpackb(parent.recv_bytes())
        except (EOFError, OSError):
            process.join(1.0)
            raise RtbciError(f"{self.where} ({self.name!r}): its worker process "
                             f"{describe_exit(process.exitcode)} while building the decoder"
                             f"{SPAWN_HINT}") from None
        if "error" in meta:
            process.join(2.0)
            raise RtbciError(meta["error"])
        self._process, self._conn = process, parent
        self._reply = select.poll()  # one per pipe: cheaper than Connection.poll's selector
        self._reply.register(parent.fileno(), select.POLLIN)
        self._ps = psutil.Process(process.pid)
        self._ps.cpu_percent(None)  # the first call starts the measure
        return meta

    def _map(self) -> None:
        """Tell the (new) child where its input and output segments are."""
        self._conn.send_bytes(msgpack.packb(["map", self._input.name, self._output.name]))
        reply = msgpack.unpackb(self._conn.recv_bytes())
        if reply != "mapped":
            raise RtbciError(f"{self.where} ({self.name!r}): its worker process could not map "
                             f"its window: {reply}")

    # --- decoding -------------------------------------------------------------------------

    def __call__(self, window: np.ndarray) -> DecoderOutput:
        if window is not self.input_buffer:  # a queued marker window: its own copy
            np.copyto(self.input_buffer, window)
        started = time.perf_counter()
        reply = self._request("call")
        output = DecoderOutput(labels=reply.get("labels"), **self._arrays(reply))
        self.hop.record(time.perf_counter() - started - reply["took"])
        return output

    def importance(self, window: np.ndarray) -> np.ndarray | None:
        if window is not self.input_buffer:
            np.copyto(self.input_buffer, window)
        return self._arrays(self._request("importance")).get("importance")

    def _request(self, op: str) -> dict:
        """Send ``op`` for the window in the input segment and wait for the reply (killing the
        child past ``kill_after_s``); raises WorkerFault when no output comes."""
        with self._lock:
            if self.state != "running":
                raise WorkerFault(self.down_reason())
            conn, process, reply_ready = self._conn, self._process, self._reply
        try:
            os.write(conn.fileno(), REQUESTS[op])
            if reply_ready.poll(self.kill_after_ms):  # a child that dies closes it: EOFError
                reply = msgpack.unpackb(read_message(conn.fileno()))
                if reply.get("error") is not None:
                    raise WorkerFault(reply["error"])
                return reply
            self._kill(f"no result after {self.kill_after_s * 1e3:.0f} ms (kill_after "
                       f"{self.config.kill_after:g} × budget_ms {self.config.budget_ms:g})")
        except (EOFError, OSError):
            pass  # it died: its exit code says how
        process.join(1.0)
        if process.is_alive():  # the pipe broke, the process did not end: end it
            process.kill()
            process.join(1.0)
        raise WorkerFault(f"worker process {self._died(process)} during this window")

    def _arrays(self, reply: dict) -> dict[str, np.ndarray]:
        """The output's arrays from the result segment (copies: the next call overwrites)."""
        out = {}
        for name, dtype, shape, offset in reply.get("arrays", ()):
            out[name] = np.frombuffer(self._out, dtype, math.prod(shape), offset).reshape(
                shape).copy()
        return out

    # --- supervision ----------------------------------------------------------------------

    def _kill(self, reason: str) -> None:
        """SIGKILL the child for ``reason`` (counted in ``kills``)."""
        with self._lock:
            process = self._process
            if self.state != "running" or process is None:
                return
            self._kill_reason = reason
            self.kills += 1
        log.error("decoder %r: worker process %d killed: %s", self.name, process.pid, reason)
        process.kill()

    def _died(self, process: mp.Process) -> str:
        """``process`` ended: say why (once) and count it (:meth:`_death`). Returns why."""
        with self._lock:
            if process is not self._process or self.state != "running":
                return self.last_exit or describe_exit(process.exitcode)
            reason = self._kill_reason or describe_exit(process.exitcode)
            self._kill_reason = None
        self._death(reason, process.pid)
        return reason

    def _death(self, reason: str, pid: int | None) -> None:
        """Count a death: schedule a restart with backoff, or mark the decoder failed after
        ``MAX_DEATHS`` deaths within ``DEATH_WINDOW_S``."""
        with self._lock:
            if self.state == "closed":
                return
            self.last_exit = reason
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and now - self._deaths[0] > DEATH_WINDOW_S:
                self._deaths.popleft()
            failed = len(self._deaths) >= MAX_DEATHS
            delay = min(BACKOFF_S * 2 ** (len(self._deaths) - 1), BACKOFF_MAX_S)
            self.state = "failed" if failed else "restarting"
            self._restart_at = now + delay
        if failed:
            log.error("decoder %r: its worker process ended %d times within %g s (last: %s); "
                      "the decoder is failed", self.name, MAX_DEATHS, DEATH_WINDOW_S, reason)
        else:
            log.error("decoder %r: worker process %s %s; restarting in %.1f s", self.name,
                      pid, reason, delay)

    def down_reason(self) -> str:
        """Why no window can be decoded now (the state, and the last exit)."""
        if self.state == "failed":
            return (f"worker process failed: ended {MAX_DEATHS} times within "
                    f"{DEATH_WINDOW_S:g} s (last: {self.last_exit})")
        return f"worker process {self.state} (last: {self.last_exit or 'none'})"

    def check(self) -> None:
        """On the supervisor: sample RSS and CPU, kill over ``max_memory_mb``, notice a death
        while idle, and restart when due."""
        process, state = self._process, self.state
        if state == "running" and process is not None:
            if not process.is_alive():
                process.join(0.1)
                self._died(process)
                return
            try:
                self._rss_mb = self._ps.memory_info().rss / 2**20
                self._cpu = self._ps.cpu_percent(None)
            except psutil.Error:
                return
            limit = self.config.max_memory_mb
            if limit is not None and self._rss_mb > limit:
                self._kill(f"RSS {self._rss_mb:.0f} MB over max_memory_mb {limit:g}")
        elif state == "restarting" and time.monotonic() >= (self._restart_at or 0):
            self._restart()

    def _restart(self) -> None:
        """Start a new child (on the supervisor's thread; the others' checks wait)."""
        with contextlib.suppress(OSError):
            self._conn.close()
        try:
            self._spawn()
            self._map()
        except (RtbciError, OSError, EOFError) as exc:
            if self._process is not None and self._process.is_alive():
                self._process.kill()  # started, but could not map its window
            self._death(f"restart failed: {exc}", None)
            return
        with self._lock:
            closed = self.state == "closed"  # the engine stopped while it started
            if not closed:
                self.restarts += 1
                self.state = "running"
        if closed:
            self._process.kill()
            return
        log.warning("decoder %r: worker process restarted (pid %d, restart %d)", self.name,
                    self._process.pid, self.restarts)

    def worker_stats(self) -> dict:
        """``worker`` in the decoder's statistics (sizes in MB, CPU in % of one core)."""
        return {"pid": self._process.pid if self._process else None, "state": self.state,
                "restarts": self.restarts, "kills": self.kills,
                "rss_mb": round(self._rss_mb, 1), "cpu_percent": round(self._cpu, 1),
                "last_exit": self.last_exit, "hop_ms": self.hop.summary_ms()}

    def describe(self) -> dict:
        return {**self._describe, "isolation": "process"}

    def close(self) -> None:
        """Stop the child (a word, then SIGKILL after 1 s) and free the segments."""
        with self._lock:
            self.state = "failed" if self.state == "failed" else "closed"
            process, conn = self._process, self._conn
        if process is not None:
            with contextlib.suppress(OSError):
                conn.send_bytes(msgpack.packb(["stop"]))
            process.join(1.0)
            if process.is_alive():
                process.kill()
                process.join(1.0)
        for segment in (self._input, self._output):
            if segment is not None:
                segment.close()
                segment.unlink()
        self._input = self._output = None


class Supervisor:
    """One thread (``rtbci-supervisor``) that runs every process decoder's
    :meth:`ProcessDecoder.check` each ``CHECK_S``. Threads: :meth:`add` and :meth:`stop`
    from any thread."""

    def __init__(self) -> None:
        self.decoders: list[ProcessDecoder] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rtbci-supervisor", daemon=True)

    def add(self, decoder: ProcessDecoder) -> None:
        self.decoders.append(decoder)
        if not self.thread.is_alive() and not self._stop.is_set():
            self.thread.start()

    def remove(self, decoder) -> None:
        """Stop watching ``decoder`` (replaced by a reload; not one of ours: nothing)."""
        if decoder in self.decoders:
            self.decoders.remove(decoder)

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(2.0)

    def _run(self) -> None:
        while not self._stop.wait(CHECK_S):
            for decoder in list(self.decoders):
                try:
                    decoder.check()
                except Exception:  # one decoder's check must not end the others'
                    log.exception("decoder %r: supervising its worker process failed",
                                  decoder.name)
