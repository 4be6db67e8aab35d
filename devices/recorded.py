"""A recording in memory: its signal and marker streams, their conversion to an MNE Raw, and
a stream's description as JSON (session directories).

Below every reader and writer of recordings: :mod:`rtbci.devices.recording` (which reads the
formats and re-exports these names), :mod:`rtbci.devices.session` and :mod:`rtbci.export`.
Values are in the units LSL streams commonly carry (V → µV, T → fT, T/m → fT/cm).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtbci.errors import RtbciError
from rtbci.stream import StreamInfo

log = logging.getLogger("rtbci.devices.recording")


# MNE channel type → (unit written to LSL, factor from SI)
_UNITS = {"eeg": ("microvolts", 1e6), "seeg": ("microvolts", 1e6), "ecog": ("microvolts", 1e6),
          "dbs": ("microvolts", 1e6), "eog": ("microvolts", 1e6), "ecg": ("microvolts", 1e6),
          "emg": ("microvolts", 1e6), "mag": ("fT", 1e15), "grad": ("fT/cm", 1e13)}


@dataclass
class RecordedStream:
    """One signal stream of a recording.

    data : array, shape (n_samples, n_channels), float32, in ``info.ch_units``
    times : array, shape (n_samples,), seconds on the recording's time base
    source : the ``[[sources]]`` name that recorded it (session directories), else None
    """

    info: StreamInfo
    data: np.ndarray
    times: np.ndarray
    source: str | None = None

    @property
    def duration(self) -> float:
        return float(self.times[-1] - self.times[0]) + 1.0 / self.info.srate


@dataclass
class MarkerStream:
    """One marker stream of a recording: markers ``(time, text)`` in time order.

    ``name``, ``type`` and ``source_id`` are what replay publishes it as and what a source's
    ``markers`` query matches. ``owner`` is the index (in ``Recording.streams``) of the signal
    stream whose markers these are where the format says so (a file's annotations, a session
    source's markers, an XDF stream named ``<signal>-markers``); None: it is paired with
    sources by their ``markers`` query only.
    """

    name: str
    markers: list[tuple[float, str]]
    owner: int | None = None
    type: str = "Markers"
    source_id: str = ""


def owned_markers(owner: int, name: str, markers: list[tuple[float, str]]) -> MarkerStream:
    """The markers of signal stream ``owner`` (index) named ``name``, named as replay
    publishes them: ``<name>-markers``."""
    return MarkerStream(f"{name}-markers", sorted(markers), owner,
                        source_id=f"rtbci-replay-{name}-markers")


@dataclass
class Recording:
    """Signal streams and marker streams on one time base (seconds).

    ``bad_spans``: the file's annotations whose description starts with ``bad``
    (case-insensitive, as MNE's ``reject_by_annotation``), ``(onset_s, duration_s,
    description)``, joins (:data:`~rtbci.events.BOUNDARY_MARKERS`) left out; only formats
    whose annotations have durations fill it (MNE-readable files).
    """

    path: Path
    streams: list[RecordedStream]
    marker_streams: list[MarkerStream] = field(default_factory=list)
    bad_spans: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def start(self) -> float:
        return min(float(s.times[0]) for s in self.streams)

    @property
    def markers(self) -> list[tuple[float, str]]:
        """Every marker of every marker stream, ``(time, text)`` in time order."""
        return sorted(m for ms in self.marker_streams for m in ms.markers)

    def describe(self) -> str:
        """What the recording holds, for messages: ``'eeg' (EEG, 64 ch @ 1000 Hz), …``."""
        return ", ".join(f"{s.info.name!r} ({s.info.type}, {s.info.n_channels} ch @ "
                         f"{s.info.srate:g} Hz)" for s in self.streams)

    def stream(self, name: str) -> RecordedStream:
        for s in self.streams:
            if s.info.name == name:
                return s
        raise KeyError(name)


def to_mne_raw(stream: RecordedStream, markers: list[tuple[float, str]] = ()):
    """An ``mne.io.RawArray`` (SI units) of a recorded stream, markers as annotations."""
    import mne

    info = stream.info
    known = mne.io.get_channel_type_constants()
    types = [t if t in known else "misc" for t in info.ch_types]
    factors = np.array([_UNITS.get(t, ("", 1.0))[1] for t in types])
    raw = blockwise_raw(mne.create_info(list(info.ch_names), info.srate, types),
                        stream.data, factors)
    if info.positions is not None and np.isfinite(info.positions).all():
        montage = mne.channels.make_dig_montage(dict(zip(info.ch_names, info.positions)),
                                                coord_frame="head")
        raw.set_montage(montage, on_missing="ignore", verbose="error")
        for ch, pos, kind in zip(raw.info["chs"], info.positions, types, strict=True):
            if kind in ("mag", "grad"):  # a montage only places EEG-like channels
                ch["loc"][:12] = [*pos, 1, 0, 0, 0, 1, 0, 0, 0, 1]  # position, coil axes
    times = stream.times
    kept = [(t, text) for t, text in markers if times[0] <= t <= times[-1]]
    if kept:
        stamps, texts = zip(*kept, strict=True)  # onsets by sample position: right across gaps
        onsets = np.interp(stamps, times, np.arange(len(times))) / info.srate
        raw.set_annotations(mne.Annotations(onsets, [0.0] * len(onsets), texts))
    return raw


@functools.cache
def _blockwise_raw_class():
    import mne

    class BlockwiseRaw(mne.io.BaseRaw):
        """A Raw read block by block from ``data`` (n_samples, n_channels) divided by
        ``factors`` (n_channels,): saving it (``raw.save`` writes 1 s buffers) never holds a
        float64 copy of a whole recording, so a long session's memory-mapped samples
        convert to FIF in bounded memory."""

        def __init__(self, info, data: np.ndarray, factors: np.ndarray):
            super().__init__(info, preload=False, last_samps=(len(data) - 1,),
                             raw_extras=[{"data": data, "factors": factors}],
                             orig_format="single", verbose="error")

        def _read_segment_file(self, data, idx, fi, start, stop, cals, mult):
            extra = self._raw_extras[fi]
            block = (extra["data"][start:start + data.shape[1]].T
                     / extra["factors"][:, None]).astype(data.dtype)
            if mult is not None:
                data[:] = mult @ block[idx]
            else:
                data[:] = block[idx] * cals

    return BlockwiseRaw


def blockwise_raw(info, data: np.ndarray, factors: np.ndarray):
    """An ``mne.io.BaseRaw`` of ``data`` (n_samples, n_channels) / ``factors``, read block
    by block (see ``BlockwiseRaw``)."""
    return _blockwise_raw_class()(info, data, factors)


def stream_info_to_json(info: StreamInfo) -> dict:
    out = {k: getattr(info, k) for k in ("name", "type", "source_id", "srate", "hostname")}
    out.update(ch_names=list(info.ch_names), ch_types=list(info.ch_types),
               ch_units=list(info.ch_units),
               positions=None if info.positions is None else np.where(
                   np.isnan(info.positions), None, info.positions).tolist())
    return out


def stream_info_from_json(d: dict, where: str = "stream") -> StreamInfo:
    """The StreamInfo of a session's ``<source>.json`` (``where`` names the file in messages).

    ``name``, ``srate`` (a finite number > 0) and ``ch_names`` (strings) are required: a bad
    one raises :class:`RtbciError` naming the file and the field. A bad ``type``,
    ``source_id``, ``hostname``, ``ch_types``, ``ch_units`` or ``positions`` is replaced by a
    neutral value (``""``, ``misc``, no positions), with one warning naming it."""
    if not isinstance(d, dict):
        raise RtbciError(f"{where}: not a JSON object")
    srate = d.get("srate")
    if (isinstance(srate, bool) or not isinstance(srate, int | float) or not np.isfinite(srate)
            or srate <= 0):
        raise RtbciError(f"{where}: srate: {srate!r} is not a sampling rate (a finite number "
                         "> 0)")
    names = d.get("ch_names")
    if not _strings(names) or not names:
        raise RtbciError(f"{where}: ch_names: expected a list of channel names, got "
                         f"{_short(names)}")
    if not isinstance(d.get("name"), str) or not d["name"]:
        raise RtbciError(f"{where}: name: expected the stream's name, got {_short(d.get('name'))}")
    n, skipped = len(names), []

    def text(key: str) -> str:
        value = d.get(key, "")
        if isinstance(value, str):
            return value
        skipped.append(key)
        return ""

    def labels(key: str, default: str) -> tuple[str, ...]:
        value = d.get(key)
        if _strings(value) and len(value) == n:
            return tuple(value)
        skipped.append(key)
        return (default,) * n

    info = dict(type=text("type"), source_id=text("source_id"), hostname=text("hostname"),
                ch_types=labels("ch_types", "misc"), ch_units=labels("ch_units", ""))
    positions = _positions(d.get("positions"), n)
    if positions is False:
        skipped.append("positions")
    if skipped:
        log.warning("%s: %s not valid: left out", where, ", ".join(skipped))
    return StreamInfo(name=d["name"], srate=float(srate), ch_names=tuple(names),
                      positions=positions if positions is not False else None, **info)


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _positions(value, n: int):
    """Channel positions (n, 3) m (NaN where unknown), None if absent, False if invalid."""
    if value is None:
        return None
    try:
        positions = np.array([[np.nan if v is None else v for v in row] for row in value],
                             dtype=float)
    except (TypeError, ValueError):
        return False
    return positions if positions.shape == (n, 3) else False
