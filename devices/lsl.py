"""LSL: resolving streams, inlets into preallocated buffers, and conversions of stream metadata."""

from __future__ import annotations

import ctypes
import logging
import threading
import time

import numpy as np
import pylsl

from rtbci.devices.base import Source, SourceLost
from rtbci.stream import Chunk, StreamInfo

try:  # pylsl ≥ 1.18 keeps its exceptions in pylsl.util only
    from pylsl.util import LostError
except ImportError:  # pragma: no cover - pylsl 1.17
    LostError = pylsl.LostError

log = logging.getLogger("rtbci.devices.lsl")

PROCESSING_FLAGS = {
    "clocksync": pylsl.proc_clocksync,
    "dejitter": pylsl.proc_dejitter,
    "monotonize": pylsl.proc_monotonize,
    "threadsafe": pylsl.proc_threadsafe,
}

# MNE channel type → LSL channel "type" label, and back (LSL labels are free text).
_LSL_TYPE = {"eeg": "EEG", "mag": "MEG", "grad": "MEG", "seeg": "SEEG", "ecog": "ECOG",
             "eog": "EOG", "ecg": "ECG", "emg": "EMG", "stim": "STIM", "misc": "MISC"}
_MNE_TYPE = {"eeg": "eeg", "meg": "mag", "seeg": "seeg", "ecog": "ecog", "eog": "eog",
             "ecg": "ecg", "emg": "emg", "stim": "stim", "misc": "misc", "dbs": "dbs"}


def predicate(query: dict[str, str]) -> str:
    """XPath predicate for ``resolve_bypred`` from ``{"name": …, "type": …, "source_id": …}``."""
    parts = [f"{key}='{value}'" for key, value in query.items() if value]
    if not parts:
        raise ValueError("a stream query needs at least one of name, type, source_id")
    return " and ".join(parts)


def describe_query(query: dict[str, str]) -> str:
    return " ".join(f"{key}={value!r}" for key, value in query.items() if value)


def info_from_lsl(lsl: pylsl.StreamInfo) -> StreamInfo:
    """Convert a (full) pylsl stream info, including its channel descriptions."""
    n = lsl.channel_count()
    names, types, units, positions = [], [], [], np.full((n, 3), np.nan)
    stream_type = lsl.type()
    ch = lsl.desc().child("channels").child("channel")
    for i in range(n):
        label = ch.child_value("label") if not ch.empty() else ""
        names.append(label or f"ch{i + 1}")
        kind = (ch.child_value("type") if not ch.empty() else "") or stream_type
        mne_type = _MNE_TYPE.get(kind.lower(), "misc")
        if mne_type == "mag" and (ch.child_value("unit") or "").lower().endswith(("/m", "/cm")):
            mne_type = "grad"
        types.append(mne_type)
        units.append((ch.child_value("unit") if not ch.empty() else "") or "")
        loc = ch.child("location") if not ch.empty() else None
        if loc is not None and not loc.empty():
            xyz = [loc.child_value(axis) for axis in "XYZ"]
            if all(xyz):
                positions[i] = np.array([float(v) for v in xyz]) / 1000.0  # XDF: millimetres
        ch = ch.next_sibling("channel") if not ch.empty() else ch
    return StreamInfo(
        name=lsl.name(),
        type=stream_type,
        source_id=lsl.source_id(),
        srate=lsl.nominal_srate(),
        ch_names=tuple(names),
        ch_types=tuple(types),
        ch_units=tuple(units),
        positions=None if np.isnan(positions).all() else positions,
        hostname=lsl.hostname(),
    )


def lsl_from_info(info: StreamInfo, chunk_size: int = 0) -> pylsl.StreamInfo:
    """A pylsl stream info (float32) with channel labels, types, units and locations (mm)."""
    lsl = pylsl.StreamInfo(info.name, info.type, info.n_channels, info.srate,
                           pylsl.cf_float32, info.source_id)
    channels = lsl.desc().append_child("channels")
    for i, (name, kind, unit) in enumerate(zip(info.ch_names, info.ch_types, info.ch_units)):
        ch = channels.append_child("channel")
        ch.append_child_value("label", name)
        ch.append_child_value("type", _LSL_TYPE.get(kind, kind.upper()))
        ch.append_child_value("unit", unit)
        if info.positions is not None and np.isfinite(info.positions[i]).all():
            loc = ch.append_child("location")
            for axis, value in zip("XYZ", info.positions[i] * 1000.0):
                loc.append_child_value(axis, f"{value:.4f}")
    lsl.desc().append_child_value("manufacturer", "rtbci")
    return lsl


def prime_clock_sync(inlet: pylsl.StreamInlet, flags: int, timeout: float = 2.0) -> None:
    """Get liblsl's first clock-offset estimate now (~0.65 s) rather than on the first pull,
    which would otherwise hold the first samples or markers back by that much."""
    if flags & pylsl.proc_clocksync:
        inlet.time_correction(timeout=timeout)


def nearby_streams(query: dict[str, str], infos: list[pylsl.StreamInfo]) -> list[str]:
    """``name (type)`` of each stream in ``infos``, those that match ``query``
    case-insensitively or closely (difflib) first."""
    import difflib

    def closeness(info: pylsl.StreamInfo) -> float:
        have = {"name": info.name(), "type": info.type(), "source_id": info.source_id()}
        scores = [1.0 if have[k].lower() == v.lower() else
                  difflib.SequenceMatcher(None, have[k].lower(), v.lower()).ratio()
                  for k, v in query.items() if v]
        return min(scores) if scores else 0.0

    ranked = sorted(infos, key=lambda i: (-closeness(i), i.name()))
    return [f"{i.name()!r} ({i.type()})" for i in ranked]


def streams_there(query: dict[str, str], wait: float = 0.5) -> str:
    """The streams on the network, closest to ``query`` first, for a "not found" message."""
    names = nearby_streams(query, pylsl.resolve_streams(wait_time=wait))
    if not names:
        return "no LSL streams are visible"
    more = f", and {len(names) - 8} more" if len(names) > 8 else ""
    return "streams there: " + ", ".join(names[:8]) + more


def resolve(query: dict[str, str], timeout: float) -> list[pylsl.StreamInfo]:
    """Streams on the network matching ``query`` (waits up to ``timeout`` s for the first)."""
    return pylsl.resolve_bypred(predicate(query), minimum=1, timeout=timeout)


class LSLSource(Source):
    """Pulls a numeric LSL stream into preallocated buffers, without allocating per chunk.

    A read waits (in liblsl, GIL released) for the first sample, then takes whatever else has
    arrived without waiting: data is seen as soon as it arrives, at the transport's latency
    floor, and an idle stream costs no CPU.

    Parameters
    ----------
    name : str
        Config name of the source.
    query : dict
        Any of ``name``, ``type``, ``source_id`` of the stream to resolve.
    processing : sequence of str
        pylsl post-processing flags: ``clocksync``, ``dejitter``, ``monotonize``, ``threadsafe``.
    max_chunk : int
        Largest number of samples taken per read.
    """

    def __init__(self, name: str, query: dict[str, str], processing=("clocksync", "dejitter"),
                 max_chunk: int = 4096):
        self.name = name
        self.query = {k: v for k, v in query.items() if v}
        predicate(self.query)  # validate early
        self.flags = 0
        for flag in processing:
            self.flags |= PROCESSING_FLAGS[flag]
        self.max_chunk = max_chunk
        self._inlet: pylsl.StreamInlet | None = None
        self._misses = 0

    def describe(self) -> str:
        return f"lsl {describe_query(self.query)}"

    def open(self, timeout: float) -> StreamInfo | None:
        found = resolve(self.query, timeout)
        if not found:
            if self._misses % 10 == 0:  # at first, then every ~10 s
                log.warning("no LSL stream %s (source %r) yet; %s", describe_query(self.query),
                            self.name, streams_there(self.query))
            self._misses += 1
            return None
        self._misses = 0
        if len(found) > 1:
            log.warning("%d streams match %s; using the one from %s (source_id %r)", len(found),
                        describe_query(self.query), found[0].hostname(), found[0].source_id())
        if found[0].channel_format() == pylsl.cf_string:
            raise ValueError(f"stream {describe_query(self.query)} carries strings, not samples")
        # recover=False: a lost stream raises at once and the acquisition re-resolves it with
        # a fresh inlet, so clock sync and dejitter start over instead of bending the new
        # stream's timestamps towards the old one's
        inlet = pylsl.StreamInlet(found[0], max_buflen=30, recover=False,
                                  processing_flags=self.flags)
        # one deadline for the three steps, so that a stopping engine never waits on an
        # outlet that vanished after the resolve for longer than Acquisition.stop does
        deadline = time.monotonic() + max(timeout, 2.0)
        try:
            inlet.open_stream(timeout=deadline - time.monotonic())
            info = info_from_lsl(inlet.info(timeout=max(deadline - time.monotonic(), 0.05)))
            prime_clock_sync(inlet, self.flags, max(deadline - time.monotonic(), 0.05))
        except (LostError, TimeoutError):  # a stale resolve result of a vanished outlet
            inlet.close_stream()
            return None
        self._attach(inlet, info)
        return info

    def _attach(self, inlet: pylsl.StreamInlet, info: StreamInfo) -> None:
        self._inlet = inlet
        n_ch = info.n_channels
        self._pull = inlet.do_pull_chunk
        self._raw = np.zeros((self.max_chunk, n_ch), dtype=inlet.np_dtype)
        self._data = self._raw if inlet.np_dtype == np.float32 else np.zeros(
            (self.max_chunk, n_ch), dtype=np.float32)
        self._times = np.zeros(self.max_chunk, dtype=np.float64)
        data, times = self._raw.ctypes.data, self._times.ctypes.data
        sample_bytes = n_ch * self._raw.itemsize
        # first: wait up to a timeout for one sample; then: take what else is there, no wait
        self._first = (inlet.obj, ctypes.c_void_p(data), ctypes.c_void_p(times),
                       ctypes.c_size_t(n_ch), ctypes.c_size_t(1))
        rest = self.max_chunk - 1
        self._rest = (inlet.obj, ctypes.c_void_p(data + sample_bytes), ctypes.c_void_p(times + 8),
                      ctypes.c_size_t(rest * n_ch), ctypes.c_size_t(rest), ctypes.c_double(0.0))
        self._err = ctypes.c_int()
        self._err_ref = ctypes.byref(self._err)
        self._n_ch = n_ch

    def read(self, timeout: float = 0.0) -> Chunk | None:
        if self._pull(*self._first, ctypes.c_double(timeout), self._err_ref):
            self._check()
            n = 1 + self._pull(*self._rest, self._err_ref) // self._n_ch
        else:
            self._check()
            return None
        self._check()
        if self._data is not self._raw:
            np.copyto(self._data[:n], self._raw[:n], casting="unsafe")
        return Chunk(self._data[:n], self._times[:n])

    def _check(self) -> None:
        if self._err.value:
            if self._err.value == -2:  # lsl_lost_error: the outlet went away
                raise SourceLost(f"stream {describe_query(self.query)} was lost")
            raise RuntimeError(f"liblsl error {self._err.value} reading {self.describe()}")

    def close(self) -> None:
        if self._inlet is not None:
            self._inlet.close_stream()
        self._inlet = None


class MarkerReader:
    """Reads a string marker stream in its own thread and hands each marker to ``on_marker``.

    Waits for the stream if it is not there yet and follows it if it goes and comes back.
    ``on_marker(timestamp_s, text)`` is called from the reader thread as each marker arrives
    (timestamps clock-corrected to the local LSL clock).
    """

    def __init__(self, query: dict[str, str], on_marker, processing=("clocksync",)):
        self.query = {k: v for k, v in query.items() if v}
        predicate(self.query)
        self.on_marker = on_marker
        self.flags = 0
        for flag in processing:
            self.flags |= PROCESSING_FLAGS[flag]
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"markers-{describe_query(self.query)}")

    def start(self) -> MarkerReader:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        inlet = None
        while not self._stop.is_set():
            if inlet is None:
                found = resolve(self.query, timeout=0.5)
                if not found:
                    continue
                inlet = pylsl.StreamInlet(found[0], recover=True, processing_flags=self.flags)
                try:
                    inlet.open_stream(timeout=2.0)
                    prime_clock_sync(inlet, self.flags)
                except (LostError, TimeoutError):
                    inlet = None
                    continue
                log.info("marker stream %s connected", describe_query(self.query))
            try:
                sample, stamp = inlet.pull_sample(timeout=0.2)
            except LostError:
                inlet = None
                continue
            if sample is not None:
                self.received += 1
                self.on_marker(stamp, str(sample[0]))
