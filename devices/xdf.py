"""Writing XDF (the record sink's ``format = "xdf"``), laid out as LabRecorder writes it.

No maintained Python XDF writer exists (pyxdf only reads), so :class:`XdfWriter` writes the
XDF 1.0 container itself (https://github.com/sccn/xdf/wiki/Specifications): the magic
``XDF:``, then chunks ``[length-size byte][length][tag u16][content]``: FileHeader (1),
StreamHeader (2), Samples (3), ClockOffset (4), Boundary (5) and StreamFooter (6). Chunks are
appended as data comes, never the whole file in memory; a file cut short by a crash reads up
to its last complete chunk.

:class:`XdfSessionWriter` is the record sink's writer: each source's stream (float32, its
channel labels, types and units), its markers as the string stream ``<stream>-markers``
(how rtbci's replay pairs them back), and each decoder's results as the string stream
``rtbci-<session>-<decoder>`` (type ``rtbci.result``; one JSON result per sample, stamped
with ``window_end``). Timestamps are already on the recording machine's LSL clock (the
inlets correct them), so every ClockOffset chunk says 0: a reader's clock synchronisation
(pyxdf's ``synchronize_clocks``) leaves them as recorded.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pylsl

from rtbci.devices.lsl import _LSL_TYPE
from rtbci.errors import RtbciError
from rtbci.messages import decode_all
from rtbci.stream import StreamInfo

FILE_HEADER, STREAM_HEADER, SAMPLES, CLOCK_OFFSET, BOUNDARY, STREAM_FOOTER = 1, 2, 3, 4, 5, 6
BOUNDARY_UUID = bytes([0x43, 0xA5, 0x46, 0xDC, 0xCB, 0xF5, 0x41, 0x0F, 0xB3, 0x0E, 0xD5, 0x46,
                       0x73, 0x83, 0xCB, 0xE4])  # the specification's boundary chunk content
OFFSET_EVERY_S = 5.0  # LabRecorder measures clock offsets every 5 s
BOUNDARY_EVERY_S = 10.0  # and writes a boundary chunk every 10 s
RESULT_TYPE = "rtbci.result"


def _varlen(n: int) -> bytes:
    return struct.pack("<BQ", 8, n)


def _xml(tag: str, fields: dict, inner: str = "") -> bytes:
    body = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items())
    return f'<?xml version="1.0"?><{tag}>{body}{inner}</{tag}>'.encode()


class _Stream:
    def __init__(self, numeric: bool):
        self.numeric = numeric
        self.first = self.last = None
        self.count = 0
        self.offsets: list[tuple[float, float]] = []


class XdfWriter:
    """Appends one XDF file; not thread-safe (one writer thread)."""

    def __init__(self, path: Path, header: dict | None = None):
        self.path = Path(path)
        try:
            self._file = open(self.path, "xb")  # noqa: SIM115 - kept open while recording
        except FileExistsError:
            raise RtbciError(f"{self.path}: the file exists already") from None
        self._streams: dict[int, _Stream] = {}
        self._file.write(b"XDF:")
        self._chunk(FILE_HEADER, _xml("info", {"version": "1.0", **(header or {})}))

    def _chunk(self, tag: int, content: bytes) -> None:
        self._file.write(struct.pack("<BQH", 8, len(content) + 2, tag) + content)

    def add_stream(self, name: str, type_: str, n_channels: int, srate: float,
                   channel_format: str, source_id: str, desc: str = "", hostname: str = ""
                   ) -> int:
        """Write a StreamHeader; returns the stream id. ``channel_format``: ``float32`` or
        ``string``; ``desc``: the XML inside ``<desc>`` (e.g. ``<channels>…``)."""
        sid = len(self._streams) + 1
        fields = {"name": name, "type": type_, "channel_count": n_channels,
                  "nominal_srate": f"{srate:.17g}", "channel_format": channel_format,
                  "source_id": source_id, "version": "1.1", "created_at":
                  f"{pylsl.local_clock():.17g}", "hostname": hostname}
        self._chunk(STREAM_HEADER, struct.pack("<I", sid)
                    + _xml("info", fields, f"<desc>{desc}</desc>"))
        self._streams[sid] = _Stream(channel_format != "string")
        return sid

    def write_samples(self, sid: int, data: np.ndarray, stamps: np.ndarray) -> None:
        """A Samples chunk of a float32 stream: ``data`` (n, n_channels), ``stamps`` (n,) s."""
        n = len(stamps)
        if n == 0:
            return
        packed = np.empty(n, dtype=[("size", "u1"), ("t", "<f8"),
                                    ("v", "<f4", (data.shape[1],))])
        packed["size"], packed["t"], packed["v"] = 8, stamps, data
        self._chunk(SAMPLES, struct.pack("<I", sid) + _varlen(n) + packed.tobytes())
        self._note(sid, stamps[0], stamps[-1], n)

    def write_strings(self, sid: int, texts: list[str], stamps: list[float]) -> None:
        """A Samples chunk of a string stream (one string per sample)."""
        if not texts:
            return
        body = bytearray(struct.pack("<I", sid) + _varlen(len(texts)))
        for text, t in zip(texts, stamps, strict=True):
            raw = text.encode()
            body += struct.pack("<Bd", 8, t) + _varlen(len(raw)) + raw
        self._chunk(SAMPLES, bytes(body))
        self._note(sid, stamps[0], stamps[-1], len(texts))

    def _note(self, sid: int, first: float, last: float, n: int) -> None:
        s = self._streams[sid]
        s.first = first if s.first is None else s.first
        s.last, s.count = last, s.count + n

    def write_clock_offset(self, sid: int, collection_time: float, offset: float) -> None:
        """A ClockOffset chunk: the stream's clock minus this machine's at ``collection_time``."""
        self._chunk(CLOCK_OFFSET, struct.pack("<Idd", sid, collection_time, offset))
        self._streams[sid].offsets.append((collection_time, offset))

    def write_boundary(self) -> None:
        self._chunk(BOUNDARY, BOUNDARY_UUID)

    @property
    def stream_ids(self) -> list[int]:
        return list(self._streams)

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Write each stream's footer (first/last timestamp, sample count, clock offsets)."""
        for sid, s in self._streams.items():
            offsets = "".join(f"<offset><time>{t:.17g}</time><value>{v:.17g}</value></offset>"
                              for t, v in s.offsets)
            fields = {"first_timestamp": f"{s.first or 0:.17g}",
                      "last_timestamp": f"{s.last or 0:.17g}", "sample_count": s.count}
            self._chunk(STREAM_FOOTER, struct.pack("<I", sid) + _xml(
                "info", fields, f"<clock_offsets>{offsets}</clock_offsets>"))
        self.flush()
        self._file.close()


def channels_xml(info: StreamInfo) -> str:
    """The ``<channels>`` description of a stream, as rtbci's LSL outlets write it."""
    out = []
    for i, (name, kind, unit) in enumerate(zip(info.ch_names, info.ch_types, info.ch_units)):
        loc = ""
        if info.positions is not None and np.isfinite(info.positions[i]).all():
            loc = "<location>" + "".join(f"<{a}>{v:.4f}</{a}>" for a, v in zip(
                "XYZ", info.positions[i] * 1000.0)) + "</location>"
        out.append(f"<channel><label>{escape(name)}</label><type>"
                   f"{escape(_LSL_TYPE.get(kind, kind.upper()))}</type><unit>{escape(unit)}"
                   f"</unit>{loc}</channel>")
    return "<channels>" + "".join(out) + "</channels>"


def _result_json(result: dict) -> str:
    return json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v
                       for k, v in result.items()})


class XdfSessionWriter:
    """The record sink's XDF writer (same calls as ``rtbci.devices.session.SessionWriter``)."""

    def __init__(self, path: Path, header: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.session = header.get("session", "rtbci")
        self._xdf = XdfWriter(self.path, {"rtbci_session": self.session,
                                          "datetime": header.get("started", "")})
        self._signals: dict[str, int] = {}  # source → stream id
        self._markers: dict[str, int] = {}  # source → its marker stream id
        self._results: dict[str, int] = {}  # decoder → its result stream id
        self._names: dict[str, str] = {}  # source → its stream's name
        self._pending: dict[int, tuple[list, list]] = {}
        self._next_offsets = 0.0
        self._next_boundary = time.monotonic() + BOUNDARY_EVERY_S

    def add_stream(self, source: str, info: StreamInfo) -> None:
        self._names[source] = info.name
        self._signals[source] = self._xdf.add_stream(
            info.name, info.type, info.n_channels, info.srate, "float32", info.source_id,
            channels_xml(info) + f"<rtbci_source>{escape(source)}</rtbci_source>",
            info.hostname)

    def write_samples(self, source: str, data: np.ndarray, timestamps: np.ndarray) -> None:
        self._xdf.write_samples(self._signals[source], data, timestamps)

    def write_marker(self, source: str, timestamp: float, text: str) -> None:
        if source not in self._markers:
            name = f"{self._names.get(source, source)}-markers"
            self._markers[source] = self._xdf.add_stream(
                name, "Markers", 1, 0.0, "string", f"{name}-{self.session}")
        self._queue(self._markers[source], text, timestamp)

    def write_result(self, payload: bytes) -> None:
        for result in decode_all(payload):
            decoder = result["decoder"]
            if decoder not in self._results:
                name = f"rtbci-{self.session}-{decoder}"
                self._results[decoder] = self._xdf.add_stream(name, RESULT_TYPE, 1, 0.0,
                                                              "string", name)
            self._queue(self._results[decoder], _result_json(result), result["window_end"])

    def _queue(self, sid: int, text: str, stamp: float) -> None:
        texts, stamps = self._pending.setdefault(sid, ([], []))
        texts.append(text)
        stamps.append(stamp)

    def flush(self) -> None:
        for sid, (texts, stamps) in self._pending.items():
            self._xdf.write_strings(sid, texts, stamps)
        self._pending = {}
        now = pylsl.local_clock()
        if now >= self._next_offsets:  # timestamps are on this clock already: offset 0
            for sid in self._xdf.stream_ids:
                self._xdf.write_clock_offset(sid, now, 0.0)
            self._next_offsets = now + OFFSET_EVERY_S
        if time.monotonic() >= self._next_boundary:
            self._xdf.write_boundary()
            self._next_boundary = time.monotonic() + BOUNDARY_EVERY_S
        self._xdf.flush()

    def close(self) -> None:
        self._next_offsets = 0.0  # a last offset per stream, as LabRecorder does at the end
        self.flush()
        self._xdf.close()
