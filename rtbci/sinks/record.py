"""``record``: the session recorder (raw streams, markers, results, config, versions), to a
session directory or (``format = "xdf"``) one XDF file.

Decoding never waits for the disk: raw chunks are copied into a ring buffer per stream in
the acquisition thread, markers and results into lists, and a writer thread appends them to
the session directory (format: ``rtbci.devices.session``) every ``flush_s`` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import platform
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

from rtbci import __version__
from rtbci.devices.session import SessionWriter
from rtbci.errors import RtbciError
from rtbci.messages import Result, encode
from rtbci.ringbuffer import RingBuffer
from rtbci.sinks.base import Sink
from rtbci.sinks.configs import RecordSinkConfig
from rtbci.stream import Stream

log = logging.getLogger("rtbci.sinks.record")

PACKAGES = ("numpy", "scipy", "pylsl", "mne", "msgpack", "aiomqtt", "pydantic", "torch",
            "onnxruntime")


def record_path(config: RecordSinkConfig, session: str, start: str, engine_config=None) -> Path:
    """Where a record sink writes: its session directory, or its ``.xdf`` file."""
    path = Path(config.path.format(session=session, start=start))
    if engine_config is not None:
        path = engine_config.resolve(path)
    if config.format == "xdf" and path.suffix.lower() != ".xdf":
        path = path.with_name(path.name + ".xdf")
    return path


def path_problem(path: Path) -> str | None:
    """Why ``path`` (a session directory or XDF file to create) cannot be written, or None.

    Checked by creating and removing a probe directory in the nearest existing folder above
    it: permission bits alone do not say what root may write, nor whether the filesystem is
    read-only."""
    if path.exists():
        return f"{path} exists already"
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot create {path}: {folder} is not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rtbci-probe-", dir=folder))
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror} (in {folder})"
    return None


def path_problems(config) -> list[str]:
    """``sinks[i].path: …`` for each record sink of ``config`` (a whole Config) that could not
    write its session (``rtbci check``)."""
    start = time.strftime("%Y%m%d-%H%M%S")
    problems = []
    for i, sink in enumerate(config.sinks):
        if sink.kind == "record":
            problem = path_problem(record_path(sink, config.engine.session, start, config))
            if problem:
                problems.append(f"sinks[{i}].path: {problem}")
    return problems


def versions() -> dict:
    out = {"rtbci": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


class RecordSink(Sink):
    """Writes one session directory (see ``rtbci.devices.session`` for the layout) or one
    XDF file (``rtbci.devices.xdf``) per run.

    A write error (a full disk, a read-only or failing filesystem) never stops the writer
    thread: it is logged once, the sink's ``state`` turns ``failing`` and it tries again every
    ``retry_s``; samples wait in the buffer meanwhile, markers and results in memory (up to
    ``PENDING_LIMIT`` each). What could not be written is counted (``lost_*``); the counts of
    what was recorded are of what was written."""

    kind = "record"
    PENDING_LIMIT = 100_000  # markers, and results, waiting while the disk fails

    def __init__(self, config: RecordSinkConfig, session: str, engine_config=None):
        self.config, self.session, self.engine_config = config, session, engine_config
        self.path: Path | None = None
        self._lock = threading.Lock()
        self._new_streams: list[tuple[str, Stream, RingBuffer]] = []
        self._rings: dict[str, tuple[RingBuffer, int]] = {}  # source → (ring, written up to)
        self._markers: list[tuple[str, float, str]] = []
        self._results: list[bytes] = []
        self._samples: dict[str, int] = {}  # source → samples written
        self._counts = {"results": 0, "markers": 0}
        self._lost = {"lost_samples": 0, "lost_markers": 0, "lost_results": 0}
        self._write_errors = 0
        self._failing_since: float | None = None  # monotonic time of the first failed write
        self._retry_at = 0.0
        self._last_error = ""
        self._gave_up = False  # XDF after a write error: nothing more is written
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._writer = None  # a SessionWriter or an XdfSessionWriter

    @property
    def where(self) -> str:
        """``sinks[i].path``: this sink's path key in the config, for messages."""
        sinks = self.engine_config.sinks if self.engine_config is not None else []
        i = next((i for i, s in enumerate(sinks) if s is self.config), None)
        return "record path" if i is None else f"sinks[{i}].path"

    async def start(self, status: dict) -> None:
        start = time.strftime("%Y%m%d-%H%M%S")
        path = record_path(self.config, self.session, start, self.engine_config)
        header = {"session": self.session, "started": start, "versions": versions(),
                  "config": self.engine_config.model_dump(mode="json")
                  if self.engine_config is not None else None}
        try:
            self._writer = self._open(path, header)
        except RtbciError as exc:
            raise RtbciError(f"{self.where}: {exc}") from None
        except OSError as exc:
            raise RtbciError(f"{self.where}: cannot create {path}: "
                             f"{exc.strerror or exc}") from None
        self.path = path
        log.info("recording the session to %s", path)
        self._thread.start()

    def _open(self, path: Path, header: dict):
        if self.config.format == "xdf":
            from rtbci.devices.xdf import XdfSessionWriter

            writer = XdfSessionWriter(path, header)
            if self.config.private:
                os.chmod(path, 0o600)
            return writer
        return SessionWriter(path, header, private=self.config.private)

    def watched(self) -> list:
        """The writer thread (death only: an fsync on a slow disk may legitimately take
        seconds, and write errors are reported by ``state``)."""
        from rtbci.health import watch_thread

        return [watch_thread("recorder", "", self._thread)] if self._thread.ident else []

    def stream_added(self, name: str, stream: Stream) -> None:
        info = stream.raw_info
        ring = RingBuffer(int(self.config.buffer_seconds * info.srate) + 1, info.n_channels,
                          srate=0.0)
        stream.add_raw_listener(ring.write)
        with self._lock:
            self._new_streams.append((name, stream, ring))

    def marker(self, source: str, timestamp: float, text: str) -> None:
        with self._lock:
            self._markers.append((source, timestamp, text))

    def publish(self, result: Result) -> None:
        payload = encode(result)
        with self._lock:
            self._results.append(payload)

    def _run(self) -> None:
        while not self._stop.wait(self.config.flush_s):
            try:
                self._flush()
            except Exception as exc:  # a bug must not silently end the recording
                self._failed(exc)

    def _flush(self, final: bool = False) -> None:
        """Write what arrived since the last flush; while failing, only every ``retry_s``
        (and a last time when ``final``)."""
        if self._gave_up:
            self._drop_pending()
            return
        if self._failing_since is not None and not final and time.monotonic() < self._retry_at:
            return
        try:
            self._write_pending()
            self._writer.flush()
        except OSError as exc:
            self._failed(exc)
        else:
            self._recovered()

    def _write_pending(self) -> None:
        """Append every pending stream, sample, marker and result: each batch whole or not
        at all (what fails stays pending, raising the first OSError)."""
        with self._lock:
            new, self._new_streams = self._new_streams, []
            markers, self._markers = self._markers, []
            results, self._results = self._results, []
        error = None
        for item in new:
            try:
                self._writer.add_stream(item[0], item[1].raw_info)
                self._rings[item[0]] = (item[2], 0)
                self._samples[item[0]] = 0
            except OSError as exc:
                error = error or exc
                with self._lock:
                    self._new_streams.append(item)
        for name in list(self._rings):
            try:
                self._write_samples(name)
            except OSError as exc:
                error = error or exc
        error = self._write_batch(markers, self._write_markers, "markers") or error
        error = self._write_batch(results, self._write_results, "results") or error
        if error is not None:
            raise error

    def _write_samples(self, name: str) -> None:
        ring, position = self._rings[name]
        data, stamps, start, end = self._copy_since(name, ring, position)
        if start > position:  # fell a whole buffer behind (e.g. while the disk failed)
            self._lost["lost_samples"] += start - position
            self._rings[name] = (ring, start)
        if len(stamps):
            self._writer.write_samples(name, data, stamps)
        self._rings[name] = (ring, end)
        self._samples[name] += len(stamps)

    @staticmethod
    def _copy_since(name: str, ring, position: int) -> tuple:
        """A whole copy of the samples from ``position`` (or from where the ring still holds
        them) to the newest: ``(data, timestamps, start, end)``. A copy the producer overtook
        while it was taken (it overwrote the oldest samples meanwhile) is torn: it is never
        written; the read starts again half a buffer later, those samples counted as lost."""
        while True:
            data, stamps, end = ring.since(position)
            data, stamps = data.copy(), stamps.copy()  # the producer writes on meanwhile
            start = end - len(stamps)
            if ring.intact(start):
                return data, stamps, start, end
            ring.overflows += 1
            log.warning("record: stream %r fell a whole buffer behind; samples lost", name)
            position = max(start, ring.count - ring.capacity // 2)

    def _write_markers(self, markers: list[tuple[str, float, str]]) -> None:
        if isinstance(self._writer, SessionWriter):
            self._writer.write_markers(markers)
        else:
            for marker in markers:
                self._writer.write_marker(*marker)

    def _write_results(self, payloads: list[bytes]) -> None:
        if isinstance(self._writer, SessionWriter):
            self._writer.write_results(payloads)
        else:
            for payload in payloads:
                self._writer.write_result(payload)

    def _write_batch(self, batch: list, write, kind: str) -> OSError | None:
        """Write ``batch`` (markers or results); on failure put it back in front of what
        arrived meanwhile, dropping (and counting) the oldest above ``PENDING_LIMIT``."""
        if not batch:
            return None
        try:
            write(batch)
        except OSError as exc:
            with self._lock:
                pending = batch + getattr(self, f"_{kind}")
                excess = max(0, len(pending) - self.PENDING_LIMIT)
                setattr(self, f"_{kind}", pending[excess:])
            self._lost[f"lost_{kind}"] += excess
            return exc
        self._counts[kind] += len(batch)
        return None

    def _failed(self, exc: BaseException) -> None:
        self._write_errors += 1
        self._retry_at = time.monotonic() + self.config.retry_s
        if self._failing_since is not None:
            return
        self._failing_since = time.monotonic()
        self._gave_up = self.config.format == "xdf"  # no whole-batch appends in XDF chunks
        if isinstance(exc, OSError):
            name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
            self._last_error = (f"cannot write {exc.filename or self.path}: "
                                f"{exc.strerror or exc}" + (f" ({name})" if name else ""))
        else:
            self._last_error = f"{type(exc).__name__}: {exc}"
        if self._gave_up:
            log.error("record: %s; decoding goes on, recording stops (an XDF file cannot be "
                      "appended to safely after a failed write)", self._last_error)
        else:
            log.error("record: %s; decoding goes on, the recorder retries every %g s",
                      self._last_error, self.config.retry_s)

    def _recovered(self) -> None:
        if self._failing_since is None:
            return
        log.warning("record: writing %s again after %.0f s (lost so far: %d samples, %d "
                    "markers, %d results)", self.path, time.monotonic() - self._failing_since,
                    *self._lost.values())
        self._failing_since = None

    async def close(self) -> None:
        import asyncio

        if self._writer is None:
            return
        self._stop.set()
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self._flush, True)
        await asyncio.to_thread(self._drop_pending)
        try:
            await asyncio.to_thread(self._writer.close)
        except OSError as exc:
            self._failed(exc)
        self._closed = True
        log.info("session recorded in %s", self.path)

    def _drop_pending(self) -> None:
        """Count everything still pending as lost and drop it (at the end, and after giving
        up: memory stays bounded)."""
        with self._lock:
            self._lost["lost_markers"] += len(self._markers)
            self._lost["lost_results"] += len(self._results)
            self._markers, self._results = [], []
            new, self._new_streams = self._new_streams, []
        for name, _, ring in new:
            self._rings[name] = (ring, 0)
            self._samples.setdefault(name, 0)
        for name, (ring, position) in list(self._rings.items()):
            count = ring.count
            self._lost["lost_samples"] += count - position
            self._rings[name] = (ring, count)

    def problem(self) -> str | None:
        """At the end of a run: what the recording lacks, in one line (None if nothing),
        e.g. ``recording lost 5000 samples, 0 markers, 0 results (cannot write …)``."""
        lost = self._lost.values()
        if not any(lost) and self._failing_since is None and not self._gave_up:
            return None
        return ("recording lost {} samples, {} markers, {} results".format(*lost)
                + (f" ({self._last_error})" if self._last_error else ""))

    def stats(self) -> dict:
        """``path``, ``state`` (``recording``; ``failing`` after a write error until a retry
        succeeds; ``failed`` if the writer thread died, or XDF after a write error;
        ``stopped`` when closed), what was written (``samples`` per source, ``markers``,
        ``results``), ``lost_samples`` / ``_markers`` / ``_results``, ``write_errors``
        (failed write attempts), ``overflows``; ``error`` while failing or failed."""
        state = ("failed" if self._gave_up else "failing" if self._failing_since is not None
                 else "stopped" if self._closed else "recording")
        if self._thread.ident is not None and not self._thread.is_alive() and \
                not self._stop.is_set():
            state = "failed"
        out = {"path": str(self.path), "state": state, "samples": dict(self._samples),
               **self._counts, **self._lost, "write_errors": self._write_errors,
               "overflows": sum(ring.overflows for ring, _ in list(self._rings.values()))}
        if state in ("failing", "failed"):
            out["error"] = self._last_error or "the recorder thread stopped"
        return out
