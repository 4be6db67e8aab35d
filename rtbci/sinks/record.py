"""``record``: the session recorder (raw streams, markers, results, config, versions), to a
session directory or (``format = "xdf"``) one XDF file.

Decoding never waits for the disk: raw chunks are copied into a ring buffer per stream in
the acquisition thread, markers and results into lists, and a writer thread appends them to
the session directory (format: ``rtbci.devices.session``) every ``flush_s`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import string
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rtbci import __version__
from rtbci.devices.session import SessionWriter
from rtbci.messages import Result, encode
from rtbci.ringbuffer import RingBuffer
from rtbci.sinks.base import Sink
from rtbci.stream import Stream

log = logging.getLogger("rtbci.sinks.record")

PATH_KEYS = ("session", "start")  # the {key}s of a record path
PACKAGES = ("numpy", "scipy", "pylsl", "mne", "msgpack", "aiomqtt", "pydantic", "torch",
            "onnxruntime")


class RecordSinkConfig(BaseModel):
    """The ``[[sinks]]`` entry of kind ``record``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["record"] = "record"
    path: str = Field("sessions/{session}-{start}",
                      description="session directory; {session} and {start} "
                                  "(YYYYmmdd-HHMMSS) are filled in")
    format: Literal["session", "xdf"] = Field(
        "session", description="session: a session directory (rtbci.devices.session); xdf: "
                               "one XDF file, PATH.xdf (rtbci.devices.xdf)")
    flush_s: float = Field(1.0, gt=0, le=60, description="at most this much is lost in a crash")
    buffer_seconds: float = Field(30.0, gt=0, description="raw history awaiting the writer")

    @field_validator("path")
    @classmethod
    def _known_keys(cls, path: str) -> str:
        try:
            fields = [(key, spec, conv) for _, key, spec, conv in string.Formatter().parse(path)
                      if key is not None]
        except ValueError as exc:  # a lone { or }
            raise ValueError(f"{exc} (write {{{{ and }}}} for braces)") from None
        unknown = sorted({key if not (spec or conv) else f"{key}{'!' if conv else ':'}"
                          f"{conv or spec}" for key, spec, conv in fields} - set(PATH_KEYS))
        if unknown:
            raise ValueError(f"unknown {{{unknown[0]}}}; the path may use "
                             + ", ".join(f"{{{k}}}" for k in PATH_KEYS))
        return path


def versions() -> dict:
    out = {"rtbci": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


class RecordSink(Sink):
    """Writes one session directory (see ``rtbci.devices.session`` for the layout) or one
    XDF file (``rtbci.devices.xdf``) per run."""

    kind = "record"

    def __init__(self, config: RecordSinkConfig, session: str, engine_config=None):
        self.config, self.session, self.engine_config = config, session, engine_config
        self.path: Path | None = None
        self._lock = threading.Lock()
        self._new_streams: list[tuple[str, Stream, RingBuffer]] = []
        self._rings: dict[str, tuple[RingBuffer, int]] = {}  # source → (ring, written up to)
        self._markers: list[tuple[str, float, str]] = []
        self._results: list[bytes] = []
        self._counts = {"results": 0, "markers": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._writer = None  # a SessionWriter or an XdfSessionWriter

    async def start(self, status: dict) -> None:
        start = time.strftime("%Y%m%d-%H%M%S")
        path = Path(self.config.path.format(session=self.session, start=start))
        if self.engine_config is not None:
            path = self.engine_config.resolve(path)
        header = {"session": self.session, "started": start, "versions": versions(),
                  "config": self.engine_config.model_dump(mode="json")
                  if self.engine_config is not None else None}
        if self.config.format == "xdf":
            from rtbci.devices.xdf import XdfSessionWriter

            path = path if path.suffix.lower() == ".xdf" else path.with_name(path.name + ".xdf")
            self._writer = XdfSessionWriter(path, header)
        else:
            self._writer = SessionWriter(path, header)
        self.path = path
        log.info("recording the session to %s", path)
        self._thread.start()

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
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            new, self._new_streams = self._new_streams, []
            markers, self._markers = self._markers, []
            results, self._results = self._results, []
        writer = self._writer
        for name, stream, ring in new:
            writer.add_stream(name, stream.raw_info)
            self._rings[name] = (ring, 0)
        for name, (ring, position) in self._rings.items():
            data, stamps, position = ring.since(position)
            data, stamps = data.copy(), stamps.copy()  # the producer writes on meanwhile
            if not ring.intact(position - len(stamps)):  # overtaken while copying
                ring.overflows += 1
                log.warning("record: stream %r fell a whole buffer behind; samples lost", name)
            writer.write_samples(name, data, stamps)
            self._rings[name] = (ring, position)
        for source, timestamp, text in markers:
            writer.write_marker(source, timestamp, text)
        for payload in results:
            writer.write_result(payload)
        self._counts["markers"] += len(markers)
        self._counts["results"] += len(results)
        writer.flush()

    async def close(self) -> None:
        import asyncio

        if self._writer is None:
            return
        self._stop.set()
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self._flush)
        await asyncio.to_thread(self._writer.close)
        log.info("session recorded in %s", self.path)

    def stats(self) -> dict:
        rings = {name: ring.count for name, (ring, _) in self._rings.items()}
        return {"path": str(self.path), "samples": rings, **self._counts,
                "overflows": sum(ring.overflows for ring, _ in self._rings.values())}
