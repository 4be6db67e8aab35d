"""Event-locked windows cut from recordings exactly as the live engine cuts them.

The whole recording goes through the same causal streaming preprocessing
(:func:`rtbci.preprocess.preprocess_offline`, equal to the live
:class:`~rtbci.preprocess.Preprocessor`), each marker is placed on the sample nearest its
timestamp, and the window starts ``window[0]`` seconds from there. Windows touching ``BAD_*``
annotations, spanning a join or running past an end are dropped and counted
(:data:`DROP_REASONS`); the inputs are the data channels (:mod:`rtbci.models.channels`).
Also the retrieval targets (:func:`load_targets`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from rtbci.errors import RtbciError
from rtbci.events import BOUNDARY_MARKERS, MarkerMatcher
from rtbci.models.checkpoint import subtract_baseline
from rtbci.models.families import Family
from rtbci.models.options import TrainOptions, train_preprocess, window_baseline
from rtbci.preprocess import preprocess_offline
from rtbci.stream import StreamInfo

log = logging.getLogger("rtbci.models.windows")

__all__ = ["DROP_REASONS", "Windows", "bad_spans", "drop_flat", "file_windows", "load_targets",
           "load_windows", "picked_info", "report_dropped", "spans_join", "touches_bad"]


@dataclass
class Windows:
    """Event-locked windows of one or more recordings.

    x : array (n_windows, n_samples, n_channels) float32, after preprocessing
    labels : the label the ``events`` patterns give each window's marker (rtbci.events)
    subject : array (n_windows,) int, the recording's subject index
    info : the preprocessed stream's info restricted to the chosen channels
    file : array (n_windows,) int, index of the recording (in ``--data``) it comes from
    dropped : windows of matching events left out, by reason (:data:`DROP_REASONS`)
    left_out : channels that are not inputs, {name: reason} (:mod:`rtbci.models.channels`)
    ranges : array (2, n_channels), the least and greatest raw sample of each chosen channel
        (one file's, before the flat channels are left out; None after)
    """

    x: np.ndarray
    labels: list[str]
    subject: np.ndarray
    info: StreamInfo
    file: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    ranges: np.ndarray | None = None


DROP_REASONS = {
    "bad": "they touch BAD_* annotations (as MNE's reject_by_annotation; --keep-bad keeps "
           "them)",
    "join": "they span a join of recordings (EDGE boundary: the samples on either side are "
            "not continuous)",
    "edge": "they run past the recording's start or end",
}
_WARNED: set[tuple] = set()  # warnings given once per process


def load_windows(files: list[Path], family: Family, opts: TrainOptions) -> Windows:
    """Cut the windows of every event the patterns ``opts.events`` (or the family's prefix)
    select, labelled by :mod:`rtbci.events` (``word`` → ``word/w3`` is ``w3``), from each
    file; the data channels as inputs, or those ``opts.channels`` names (glob patterns),
    flat ones left out (:mod:`rtbci.models.channels`); preprocessed by
    :func:`train_preprocess`, minus ``opts.baseline`` if set. Each file is read by
    :func:`file_windows`, as a Ray task when ``--ray`` opened a session
    (:func:`rtbci.cluster.parallel_map`)."""
    from rtbci.cluster import parallel_map

    parts = parallel_map(partial(file_windows, family=family, opts=opts), enumerate(files))
    first, srate = files[0], parts[0][0].info.srate
    for file, (part, names) in zip(files, parts):
        if part.info.srate != srate:
            raise RtbciError(f"{file.name}: {part.info.srate:g} Hz after preprocessing, "
                             f"{first.name} {srate:g} Hz (--resample HZ makes them equal)")
        if names != parts[0][1]:
            raise RtbciError(f"{file.name}: channels differ from {first.name}'s")
    info, left_out = parts[-1][0].info, dict(parts[0][0].left_out)
    x = np.concatenate([p.x for p, _ in parts])
    if "flat" not in opts.include_types:
        x, info = drop_flat(x, info, np.stack([p.ranges for p, _ in parts], 1), left_out,
                             files)
    baseline = window_baseline(opts, family, info.srate)
    if baseline is not None:
        x = subtract_baseline(x, baseline)
    dropped = {reason: sum(p.dropped.get(reason, 0) for p, _ in parts)
               for reason in DROP_REASONS}
    return Windows(x, [label for p, _ in parts for label in p.labels],
                   np.concatenate([p.subject for p, _ in parts]), info,
                   np.concatenate([p.file for p, _ in parts]), dropped, left_out)


def drop_flat(x: np.ndarray, info: StreamInfo, ranges: np.ndarray, left_out: dict[str, str],
               files: list[Path]) -> tuple[np.ndarray, StreamInfo]:
    """``x`` (n, n_samples, n_channels) and ``info`` without the channels that are flat over
    every file (``ranges``: (2, n_files, n_channels) least and greatest raw samples); they
    join ``left_out`` (in place) with their reason."""
    from rtbci.models.channels import FLAT, flat_channels

    flat = flat_channels(ranges[0], ranges[1])
    if not flat.any():
        return x, info
    if flat.all():
        raise RtbciError(f"{files[0].name}: every input channel is flat (constant); "
                         "--channels or --include-types chooses others")
    left_out.update({info.ch_names[i]: FLAT for i in np.flatnonzero(flat)})
    keep = np.flatnonzero(~flat)
    return np.ascontiguousarray(x[..., keep]), picked_info(info, keep, info.srate)


def file_windows(indexed: tuple[int, Path], family: Family,
                 opts: TrainOptions) -> tuple[Windows, list[str]]:
    """The windows of the ``k``-th file of ``--data`` (``indexed = (k, file)``), before the
    baseline, and its chosen channels' names."""
    from rtbci.devices.recording import read_recording
    from rtbci.models.channels import data_channels

    k, file = indexed
    try:
        matcher = MarkerMatcher(opts.events or [family.events])
    except RtbciError as exc:
        raise RtbciError(f"--events: {exc}") from None
    start_s, end_s = opts.window or family.window
    config = train_preprocess(family, opts)
    rec = read_recording(file, opts.stream)
    stream = rec.streams[0]
    if opts.stream is None and len(rec.streams) > 1:
        log.warning("%s: %d signal streams, training on the first, %r (--stream NAME)",
                    file.name, len(rec.streams), stream.info.name)
    data, times = preprocess_offline(config, stream.info, stream.data, stream.times)
    srate = config.resample_hz or stream.info.srate
    picks, left_out = data_channels(stream.info.ch_names, stream.info.ch_types,
                                    opts.channels, opts.include_types, file.name)
    offset, length = round(start_s * srate), round((end_s - start_s) * srate)
    joins = np.array(sorted(t for t, text in rec.markers if text in BOUNDARY_MARKERS))
    bad = [] if opts.keep_bad else bad_spans(rec)
    xs, labels, dropped = [], [], dict.fromkeys(DROP_REASONS, 0)
    for t, text in rec.markers:
        label = matcher.label(text)
        if label is None:
            continue
        onset = int(np.searchsorted(times, t - 0.5 / srate)) + offset
        reason = "edge" if onset < 0 or onset + length > len(data) else None
        if reason is None:
            first, last = times[onset], times[onset + length - 1]
            reason = ("join" if spans_join(joins, first, last, 0.5 / srate) else
                      "bad" if touches_bad(bad, first, last + 1.0 / srate) else None)
        if reason is not None:
            dropped[reason] += 1
            continue
        xs.append(data[onset:onset + length, picks])
        labels.append(label)
    report_dropped(file, dropped, len(xs))
    if not xs:
        missing = matcher.describe_missing(text for _, text in rec.markers)
        raise RtbciError(f"{file.name}: --events: {missing}" if missing else
                         f"{file.name}: no complete window around an event matching "
                         f"{' or '.join(repr(p.pattern) for p in matcher.patterns)} "
                         "(--events)")
    n = len(xs)
    ranges = np.stack([stream.data.min(0)[picks], stream.data.max(0)[picks]])  # no copy
    windows = Windows(np.stack(xs).astype(np.float32), labels,
                      np.full(n, k if opts.subject_per_file else 0), picked_info(
                          stream.info, picks, srate), np.full(n, k), dropped, left_out,
                      ranges)
    return windows, [stream.info.ch_names[i] for i in picks]


def bad_spans(rec) -> list[tuple[float, float, str]]:
    """The recording's bad spans ``(onset_s, duration_s, description)``: its annotations
    starting with ``bad`` (:attr:`Recording.bad_spans`) and, for formats without durations
    (XDF, sessions), its ``bad…`` markers as instants; joins are not among them."""
    spans = list(rec.bad_spans)
    seen = {(onset, text) for onset, _, text in spans}
    spans += [(t, 0.0, text) for t, text in rec.markers if text.lower().startswith("bad")
              and text not in BOUNDARY_MARKERS and (t, text) not in seen]
    return spans


def touches_bad(spans: list[tuple[float, float, str]], start: float, stop: float) -> bool:
    """Whether a window from ``start`` to ``stop`` (s, its last sample's time plus one
    period) overlaps a bad span, by MNE's rule: ``onset < stop`` and ``onset + duration >
    start``."""
    return any(onset < stop and onset + duration > start for onset, duration, _ in spans)


def report_dropped(file: Path, dropped: dict[str, int], kept: int) -> None:
    """One warning line per reason windows of ``file`` were left out (once per process for
    the same file and figures: ``train auto`` reads a file once per preprocessing)."""
    total = kept + sum(dropped.values())
    for reason, n in dropped.items():
        key = ("dropped", str(Path(file).resolve()), reason, n, total)
        if n and key not in _WARNED:
            _WARNED.add(key)
            log.warning("%s: %d of %d windows dropped: %s", file.name, n, total,
                        DROP_REASONS[reason])


def spans_join(joins: np.ndarray, first: float, last: float, half: float) -> bool:
    """Whether a window with samples stamped ``first`` … ``last`` (s) holds samples from both
    sides of a join (sorted times of :data:`~rtbci.events.BOUNDARY_MARKERS`; a join is
    stamped with the first sample after it; ``half`` is half a sample period)."""
    i = np.searchsorted(joins, first + half, side="right")
    return i < len(joins) and joins[i] < last + half


def picked_info(info: StreamInfo, picks: np.ndarray, srate: float) -> StreamInfo:
    """``info`` restricted to the channels ``picks`` (indices), at ``srate`` (Hz)."""
    pos = None if info.positions is None else np.asarray(info.positions)[picks]
    return replace(info, srate=srate, ch_names=tuple(info.ch_names[i] for i in picks),
                   ch_types=tuple(info.ch_types[i] for i in picks),
                   ch_units=tuple(info.ch_units[i] for i in picks), positions=pos)


def load_targets(path: Path) -> tuple[np.ndarray, list[str]]:
    """A target bank ``.npy`` (n_items, dim[, time]) and its labels (``<stem>.json``, a JSON
    list of strings; default ``"0"`` … ``"n-1"``)."""
    try:
        bank = np.load(path)
    except (OSError, ValueError) as exc:
        raise RtbciError(f"--targets: cannot read {str(path)!r}: {exc}") from None
    if bank.ndim not in (2, 3):
        raise RtbciError(f"--targets: {path.name} has shape {bank.shape}; expected "
                         "(n_items, dim) or (n_items, dim, time)")
    names = path.with_suffix(".json")
    labels = json.loads(names.read_text()) if names.exists() else [
        str(i) for i in range(len(bank))]
    if len(labels) != len(bank):
        raise RtbciError(f"--targets: {names.name} has {len(labels)} labels for "
                         f"{len(bank)} rows")
    return bank.astype(np.float32), [str(x) for x in labels]
