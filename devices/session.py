"""The rtbci session directory: written by the ``record`` sink, read back for replay.

Layout (all open formats; every file is appended and flushed incrementally, so a session cut
short by a crash opens with everything up to the last flush)::

    session.json        format, rtbci/package versions, start time, resolved config
    <source>.json       the source's StreamInfo (names, types, units, positions, rate)
    <source>.f32        raw samples as received, float32 little-endian, (n_samples, n_channels)
    <source>.ts.f64     their LSL timestamps, float64 little-endian, (n_samples,)
    markers.jsonl       one {"source", "timestamp", "text"} per line (the source it came to)
    results.msgpack     every result message, concatenated (read with msgpack.Unpacker)
    <source>_raw.fif    on a clean stop: the same samples and that source's markers, MNE Raw

Writing: each batch (a flush's samples of one source, its markers, its results) is appended
whole or not at all: a failed write (a full disk, an I/O error) is cut back to the last whole
batch, so samples and timestamps keep the same count. Reading tolerates a torn tail anyway
(a partial float, a cut-off line or message: read up to the last whole record).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from rtbci.devices.recorded import (
    RecordedStream,
    Recording,
    owned_markers,
    stream_info_from_json,
    stream_info_to_json,
    to_mne_raw,
)
from rtbci.errors import RtbciError
from rtbci.messages import decode_all
from rtbci.stream import StreamInfo

log = logging.getLogger("rtbci.devices.session")

FORMAT = "rtbci-session"
PRIVATE_MODES = (0o700, 0o600)  # session directory, its files: the owner's only
DEFAULT_MODES = (0o777, 0o666)  # … or as the umask says
_write = os.write  # the file-write boundary (one place to inject a failing disk in tests)


def read_session(path: Path) -> Recording:
    """Read a (possibly half-written) session directory: each source's stream, and its
    markers as the marker stream that stream owns (``<stream name>-markers``)."""
    if not (path / "session.json").exists():
        raise RtbciError(f"{path}: not an rtbci session directory (no session.json)")
    streams = []
    for meta in sorted(path.glob("*.json")):
        if meta.name == "session.json":
            continue
        stream = _read_stream(meta)
        if stream is not None:
            streams.append(stream)
    if not streams:
        raise RtbciError(f"{path}: the session holds no samples")
    markers = read_markers(path)
    return Recording(path, streams, [owned_markers(i, s.info.name, [
        (m["timestamp"], m["text"]) for m in markers if m["source"] == s.source])
        for i, s in enumerate(streams)])


def _read_stream(meta: Path) -> RecordedStream | None:
    """One source's stream (``meta`` its ``<source>.json``); None without a whole sample.
    A file cut short (a crash, a full disk) is read up to its last whole sample."""
    source = meta.stem
    try:
        fields = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        samples = meta.parent / f"{source}.f32"
        if not samples.is_file() or not samples.stat().st_size:  # cut short before any sample
            log.warning("%s: not valid JSON, and no samples: left out", meta)
            return None
        raise RtbciError(f"{meta}: not valid JSON ({exc})") from None
    info = stream_info_from_json(fields, str(meta))
    data = _mapped(meta.parent / f"{source}.f32", "<f4")  # mapped, not read: a long session
    times = _mapped(meta.parent / f"{source}.ts.f64", "<f8")  # stays on disk
    n = min(len(data) // info.n_channels, len(times))  # a crash may cut either file short
    if not n:
        return None
    return RecordedStream(info, data[:n * info.n_channels].reshape(n, info.n_channels),
                          np.array(times[:n]), source)


def _mapped(file: Path, dtype: str) -> np.ndarray:
    """``file``'s whole values of ``dtype`` (a partial one at the end is left out), mapped."""
    size = file.stat().st_size if file.is_file() else 0
    n = size // np.dtype(dtype).itemsize
    return np.memmap(file, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)


def read_markers(path: Path) -> list[dict]:
    """The markers of a session directory, ``{"source", "timestamp", "text"}`` each.

    A cut-off last line is ignored; any other line that is not such a marker (not JSON, a
    timestamp that is not a finite number, a text or source that is not a string) is skipped
    and logged once, with how many and the first one's line number and reason."""
    out, skipped = [], []
    file = path / "markers.jsonl"
    if not file.exists():
        return out
    text = file.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    torn = lines.pop()  # after the last newline: "" or a line cut short
    for number, line in enumerate(lines, 1):
        marker, why = _marker(line)
        if marker is None:
            skipped.append((number, why))
        else:
            out.append(marker)
    if torn and _marker(torn)[0] is not None:  # whole, only its newline missing
        out.append(_marker(torn)[0])
    if skipped:
        number, why = skipped[0]
        log.warning("%s: skipped %d line(s) that are not markers (line %d: %s)", file,
                    len(skipped), number, why)
    return out


def _marker(line: str) -> tuple[dict | None, str]:
    """One line of markers.jsonl as a marker, or None and why not."""
    try:
        m = json.loads(line)
    except json.JSONDecodeError:
        return None, "not JSON"
    if not isinstance(m, dict):
        return None, "not a JSON object"
    stamp = m.get("timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
        return None, f"timestamp {stamp!r} is not a finite number"
    for key in ("source", "text"):
        if not isinstance(m.get(key), str):
            return None, f"{key} {m.get(key)!r} is not a string"
    return {"source": m["source"], "timestamp": float(stamp), "text": m["text"]}, ""


def read_results(path: Path) -> list[dict]:
    """The result messages of a session directory (a cut-off last message is dropped)."""
    file = Path(path) / "results.msgpack"
    return decode_all(file.read_bytes()) if file.exists() else []


class AppendFile:
    """One append-only file of whole records, written through its descriptor (no buffer).

    ``committed`` bytes are whole records. :meth:`append` writes one batch whole or not at
    all: when a write fails after part of the batch went out, the file is cut back to
    ``committed`` (now, or before the next append if the cut fails too). Raises OSError with
    the file's path."""

    def __init__(self, path: Path, mode: int):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
        self.committed = os.fstat(self.fd).st_size
        self._torn = False

    def append(self, data: bytes) -> None:
        """Append ``data`` whole, or raise OSError (naming the file) having appended nothing."""
        if self._torn:
            self.cut(self.committed)
        view, done = memoryview(data), 0
        try:
            while done < len(view):
                done += _write(self.fd, view[done:])
        except OSError as exc:
            if done:
                self._torn = True
                self.cut(self.committed, quiet=True)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        self.committed += len(view)

    def cut(self, size: int, quiet: bool = False) -> None:
        """Truncate to ``size`` bytes (the last whole record); a failure raises unless
        ``quiet`` (then the next :meth:`append` tries again)."""
        self.committed = size
        try:
            os.ftruncate(self.fd, size)
            self._torn = False
        except OSError as exc:
            self._torn = True
            if not quiet:
                raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def close(self) -> None:
        os.close(self.fd)


class SessionWriter:
    """Appends one session's files; not thread-safe (one writer thread calls it).

    ``private``: the directory is created 0700 and every file 0600 (a lab's recordings are
    personal data); False: as the umask says. Every write raises OSError naming its file on
    failure, leaving the files consistent (see the module docstring): the caller may retry.
    """

    def __init__(self, path: Path, header: dict, private: bool = True):
        self.path = Path(path)
        self._dir_mode, self._file_mode = PRIVATE_MODES if private else DEFAULT_MODES
        self.private = private
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.path.mkdir(mode=self._dir_mode)
        except FileExistsError:
            raise RtbciError(f"{self.path}: the session directory exists already") from None
        self._write_json(self.path / "session.json",
                         {"format": FORMAT, "version": 1, **header}, default=str)
        self._files: dict[str, tuple[AppendFile, AppendFile]] = {}
        self._markers = AppendFile(self.path / "markers.jsonl", self._file_mode)
        self._results = AppendFile(self.path / "results.msgpack", self._file_mode)

    def _write_json(self, file: Path, obj, **options) -> None:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self._file_mode)
        with open(fd, "w") as f:
            f.write(json.dumps(obj, indent=2, **options))

    def add_stream(self, source: str, info: StreamInfo) -> None:
        self._write_json(self.path / f"{source}.json", stream_info_to_json(info))
        self._files[source] = (AppendFile(self.path / f"{source}.f32", self._file_mode),
                               AppendFile(self.path / f"{source}.ts.f64", self._file_mode))

    def write_samples(self, source: str, data: np.ndarray, timestamps: np.ndarray) -> None:
        """Append ``data`` (n_samples, n_channels) and ``timestamps`` (n_samples,) s: both or
        neither (the samples are cut back when the timestamps fail)."""
        samples, stamps = self._files[source]
        before = samples.committed
        samples.append(np.ascontiguousarray(data, dtype="<f4").tobytes())
        try:
            stamps.append(np.ascontiguousarray(timestamps, dtype="<f8").tobytes())
        except OSError:
            samples.cut(before, quiet=True)
            raise

    def write_markers(self, markers: list[tuple[str, float, str]]) -> None:
        """Append ``(source, timestamp, text)`` markers, all or none."""
        if markers:
            self._markers.append("".join(
                json.dumps({"source": source, "timestamp": timestamp, "text": text}) + "\n"
                for source, timestamp, text in markers).encode())

    def write_marker(self, source: str, timestamp: float, text: str) -> None:
        self.write_markers([(source, timestamp, text)])

    def write_results(self, payloads: list[bytes]) -> None:
        """Append encoded result messages, all or none."""
        if payloads:
            self._results.append(b"".join(payloads))

    def write_result(self, payload: bytes) -> None:
        self.write_results([payload])

    def flush(self) -> None:
        """Push everything to the disk (survives a crash of this process and of the OS)."""
        for f in self._all():
            f.sync()

    def _all(self):
        for pair in self._files.values():
            yield from pair
        yield self._markers
        yield self._results

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for f in self._all():
                f.close()
        for source in self._files:
            out = write_fif(self.path, source)
            if out is not None and self.private:
                os.chmod(out, self._file_mode)


def write_fif(path: Path, source: str) -> Path | None:
    """``<source>_raw.fif``: the session's samples and markers as an MNE Raw file."""
    try:
        recording = read_session(path)
    except RtbciError:
        return None
    i = next((i for i, s in enumerate(recording.streams) if s.source == source), None)
    if i is None:
        return None
    stream, markers = recording.streams[i], recording.marker_streams[i].markers
    out = path / f"{source}_raw.fif"
    to_mne_raw(stream, markers).save(out, overwrite=True, verbose="error")
    return out
