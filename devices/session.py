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
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from rtbci.devices.recording import (
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

FORMAT = "rtbci-session"


def read_session(path: Path) -> Recording:
    """Read a (possibly half-written) session directory: each source's stream, and its
    markers as the marker stream that stream owns (``<stream name>-markers``)."""
    if not (path / "session.json").exists():
        raise RtbciError(f"{path}: not an rtbci session directory (no session.json)")
    streams = []
    for meta in sorted(path.glob("*.json")):
        if meta.name == "session.json":
            continue
        info = stream_info_from_json(json.loads(meta.read_text()))
        source = meta.stem
        file = path / f"{source}.f32"  # mapped, not read: a long session stays on disk
        data = (np.memmap(file, dtype="<f4", mode="r") if file.stat().st_size
                else np.zeros(0, "<f4"))
        times = np.fromfile(path / f"{source}.ts.f64", dtype="<f8")
        n = min(len(data) // info.n_channels, len(times))  # a crash may cut either file short
        if n:
            streams.append(RecordedStream(info, data[:n * info.n_channels].reshape(
                n, info.n_channels), times[:n], source))
    if not streams:
        raise RtbciError(f"{path}: the session holds no samples")
    markers = read_markers(path)
    return Recording(path, streams, [owned_markers(i, s.info.name, [
        (m["timestamp"], m["text"]) for m in markers if m.get("source") == s.source])
        for i, s in enumerate(streams)])


def read_markers(path: Path) -> list[dict]:
    """The markers of a session directory (a cut-off last line is ignored)."""
    out = []
    file = path / "markers.jsonl"
    if file.exists():
        for line in file.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def read_results(path: Path) -> list[dict]:
    """The result messages of a session directory (a cut-off last message is dropped)."""
    file = Path(path) / "results.msgpack"
    return decode_all(file.read_bytes()) if file.exists() else []


class SessionWriter:
    """Appends one session's files; not thread-safe (one writer thread calls it)."""

    def __init__(self, path: Path, header: dict):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise RtbciError(f"{self.path}: the session directory exists already") from None
        (self.path / "session.json").write_text(json.dumps({"format": FORMAT, "version": 1,
                                                            **header}, indent=2, default=str))
        self._files: dict[str, tuple] = {}
        self._markers = open(self.path / "markers.jsonl", "a")  # noqa: SIM115 - kept open while recording
        self._results = open(self.path / "results.msgpack", "ab")  # noqa: SIM115 - kept open while recording

    def add_stream(self, source: str, info: StreamInfo) -> None:
        (self.path / f"{source}.json").write_text(json.dumps(stream_info_to_json(info),
                                                             indent=2))
        self._files[source] = (open(self.path / f"{source}.f32", "ab"),  # noqa: SIM115 - kept open while recording
                               open(self.path / f"{source}.ts.f64", "ab"))  # noqa: SIM115 - kept open while recording

    def write_samples(self, source: str, data: np.ndarray, timestamps: np.ndarray) -> None:
        samples, stamps = self._files[source]
        samples.write(np.ascontiguousarray(data, dtype="<f4").tobytes())
        stamps.write(np.ascontiguousarray(timestamps, dtype="<f8").tobytes())

    def write_marker(self, source: str, timestamp: float, text: str) -> None:
        self._markers.write(json.dumps({"source": source, "timestamp": timestamp,
                                        "text": text}) + "\n")

    def write_result(self, payload: bytes) -> None:
        self._results.write(payload)

    def flush(self) -> None:
        """Push everything to the operating system (survives a crash of this process)."""
        for f in self._all():
            f.flush()
            os.fsync(f.fileno())

    def _all(self):
        for pair in self._files.values():
            yield from pair
        yield self._markers
        yield self._results

    def close(self) -> None:
        self.flush()
        for f in self._all():
            f.close()
        for source in self._files:
            write_fif(self.path, source)


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
