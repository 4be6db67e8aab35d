"""Recordings read into memory: MNE-readable files, XDF, and rtbci session directories.

Every format becomes a :class:`Recording`: signal streams with per-sample timestamps and
marker streams (annotations, events, string streams) with theirs, all on one time base in
seconds. Each marker stream keeps which signal stream it belongs to where the format says so.
Values are converted from SI to the units LSL streams commonly carry (V → µV, T → fT,
T/m → fT/cm) so float32 keeps their precision.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rtbci.errors import RtbciError
from rtbci.events import BOUNDARY_MARKERS
from rtbci.stream import StreamInfo

log = logging.getLogger("rtbci.devices.recording")

MNE_SUFFIXES = (".fif", ".fif.gz", ".edf", ".bdf", ".vhdr", ".set", ".gdf", ".cnt")
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


def read_recording(path: str | Path, name: str | None = None) -> Recording:
    """Read an MNE-readable file, an ``.xdf`` file or an rtbci session directory.

    ``name`` renames the (single) signal stream of an MNE file (default: the file's stem).
    Raises :class:`RtbciError` naming the file on anything unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise RtbciError(f"{path}: no such file or directory")
    try:
        if path.is_dir():
            from rtbci.devices.session import read_session

            return read_session(path)
        if path.suffix.lower() == ".xdf":
            return _read_xdf(path)
        if path.name.lower().endswith(MNE_SUFFIXES):
            return _read_mne(path, name)
    except RtbciError:
        raise
    except Exception as exc:
        raise RtbciError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None
    raise RtbciError(f"{path}: unknown format; expected one of {', '.join(MNE_SUFFIXES)}, .xdf "
                     "or an rtbci session directory")


def merge_recordings(recordings: list[Recording]) -> Recording:
    """Several recordings replayed together, each starting at time 0 (names must differ)."""
    if len(recordings) == 1:
        return recordings[0]
    streams, marker_streams, seen = [], [], set()
    for rec in recordings:
        shift, offset = rec.start, len(streams)
        for s in rec.streams:
            if s.info.name in seen:
                raise RtbciError(f"{rec.path}: a stream named {s.info.name!r} is already "
                                 "replayed from another file")
            seen.add(s.info.name)
            streams.append(replace(s, times=s.times - shift))
        marker_streams += [replace(ms, markers=[(t - shift, text) for t, text in ms.markers],
                                   owner=None if ms.owner is None else ms.owner + offset)
                           for ms in rec.marker_streams]
    return Recording(recordings[0].path, streams, marker_streams)


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


def info_from_mne(info, name: str, source_id: str) -> tuple[StreamInfo, np.ndarray]:
    """StreamInfo from an ``mne.Info``, and the per-channel factor from SI to its units."""
    import mne

    types = tuple(mne.channel_type(info, i) for i in range(info["nchan"]))
    units, factors = zip(*(_UNITS.get(t, ("", 1.0)) for t in types), strict=True)
    locs = np.array([ch["loc"][:3] for ch in info["chs"]], dtype=float)
    unknown = ~np.isfinite(locs).all(axis=1) | (np.abs(locs).sum(axis=1) == 0)
    locs[unknown] = np.nan
    stream_type = {"eeg": "EEG", "mag": "MEG", "grad": "MEG", "seeg": "sEEG", "ecog": "ECoG"}
    main = max(set(types), key=types.count)
    return StreamInfo(name=name, type=stream_type.get(main, main.upper()), source_id=source_id,
                      srate=float(info["sfreq"]), ch_names=tuple(info["ch_names"]),
                      ch_types=types, ch_units=tuple(units),
                      positions=None if unknown.all() else locs), np.array(factors)


def _read_mne(path: Path, name: str | None) -> Recording:
    import mne

    from rtbci.export import bids_identity, read_bids_raw

    raw = read_bids_raw(path)  # inside a BIDS dataset: markers from its events.tsv
    identity = None if raw is None else bids_identity(path)  # the stream rtbci exported
    if raw is None:
        raw = mne.io.read_raw(path, preload=False, verbose="error")
    stem = name or path.name.split(".")[0]
    info, factors = info_from_mne(raw.info, stem, f"rtbci-replay-{stem}")
    source = None
    if identity is not None and name is None:
        stem, source = identity["name"], identity["source"]
        info = replace(info, name=stem, type=identity["type"],
                       source_id=identity.get("source_id") or info.source_id)
    data = _float32_samples(raw, factors)
    times = raw.times.copy()
    # onsets are relative to the measurement start when orig_time is set, else to the data's
    first = raw.first_time if raw.annotations.orig_time is not None else 0.0
    markers = [(float(annot["onset"] - first), str(annot["description"]))
               for annot in raw.annotations if 0 <= annot["onset"] - first <= times[-1]]
    bad = [(float(annot["onset"] - first), float(annot["duration"]), str(annot["description"]))
           for annot in raw.annotations if str(annot["description"]).lower().startswith("bad")
           and str(annot["description"]) not in BOUNDARY_MARKERS]
    return Recording(path, [RecordedStream(info, data, times, source)],
                     [owned_markers(0, stem, markers)], bad)


def _float32_samples(raw, factors: np.ndarray, block: int = 65536) -> np.ndarray:
    """``raw``'s samples × ``factors`` (per channel), ``(n_samples, n_channels)`` float32,
    read block by block: MNE's float64 copies stay one block in size (a 10-minute 64-channel
    recording would otherwise pass through ~1 GB of float64 copies on its way to 154 MB)."""
    n = raw.n_times
    data = np.empty((n, len(factors)), np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        data[start:stop] = raw.get_data(start=start, stop=stop).T * factors
    return data


def _xdf_channels(stream: dict, n: int) -> tuple[list[str], list[str], list[str]]:
    names, types, units = [f"ch{i + 1}" for i in range(n)], [""] * n, [""] * n
    try:
        channels = stream["info"]["desc"][0]["channels"][0]["channel"]
    except (KeyError, IndexError, TypeError):
        return names, types, units
    for i, ch in enumerate(channels[:n]):
        names[i] = (ch.get("label") or [names[i]])[0]
        types[i] = (ch.get("type") or [""])[0]
        units[i] = (ch.get("unit") or [""])[0]
    return names, types, units


def _read_xdf(path: Path) -> Recording:
    import pyxdf

    from rtbci.devices.lsl import _MNE_TYPE

    quiet = logging.getLogger("pyxdf")  # it warns about files without clock offsets
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        raw_streams, _ = pyxdf.load_xdf(str(path), dejitter_timestamps=False)
    finally:
        quiet.setLevel(level)
    streams, marker_streams = [], []
    for s in raw_streams:
        info = s["info"]
        name, kind = info["name"][0], info["type"][0]
        if kind == "rtbci.result":  # decoder outputs rtbci recorded, not inputs
            continue
        srate = float(info["nominal_srate"][0])
        series, stamps = s["time_series"], np.asarray(s["time_stamps"], dtype=float)
        sid = (info.get("source_id") or [""])[0]
        if info["channel_format"][0] == "string" or srate == 0:
            marker_streams.append(MarkerStream(name, sorted(
                (float(t), str(v[0])) for v, t in zip(series, stamps)), type=kind,
                source_id=sid))
            continue
        data = np.asarray(series, dtype=np.float32)
        names, types, units = _xdf_channels(s, data.shape[1])
        mne_types = tuple(_MNE_TYPE.get((t or kind).lower(), "misc") for t in types)
        sid = sid or f"rtbci-replay-{name}"
        streams.append(RecordedStream(
            StreamInfo(name=name, type=kind, source_id=sid, srate=srate, ch_names=tuple(names),
                       ch_types=mne_types, ch_units=tuple(units)), data, stamps))
    if not streams:
        raise RtbciError(f"{path}: no regularly sampled numeric stream in it")
    signals = {f"{s.info.name}-markers": i for i, s in enumerate(streams)}
    for ms in marker_streams:  # "<signal>-markers", as rtbci's simulator and replay name them
        ms.owner = signals.get(ms.name)
    return Recording(path, streams, marker_streams)


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
