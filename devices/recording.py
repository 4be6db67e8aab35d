"""Recordings read into memory: MNE-readable files, XDF, and rtbci session directories.

Every format becomes a :class:`Recording`: signal streams with per-sample timestamps and
marker streams (annotations, events, string streams) with theirs, all on one time base in
seconds. Each marker stream keeps which signal stream it belongs to where the format says so.
Values are converted from SI to the units LSL streams commonly carry (V → µV, T → fT,
T/m → fT/cm) so float32 keeps their precision. The types (:class:`Recording`,
:class:`RecordedStream`, :class:`MarkerStream`) live in :mod:`rtbci.devices.recorded`, below
the session and export modules, and are re-exported here.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from rtbci.devices.recorded import (  # noqa: F401  (re-exported: the recording's types)
    _UNITS,
    MarkerStream,
    RecordedStream,
    Recording,
    blockwise_raw,
    owned_markers,
    stream_info_from_json,
    stream_info_to_json,
    to_mne_raw,
)
from rtbci.errors import RtbciError
from rtbci.events import BOUNDARY_MARKERS
from rtbci.stream import StreamInfo

log = logging.getLogger("rtbci.devices.recording")

MNE_SUFFIXES = (".fif", ".fif.gz", ".edf", ".bdf", ".vhdr", ".set", ".gdf", ".cnt")


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
    recording, 154 MB as float32, would otherwise pass through whole-recording float64 copies)."""
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


