"""LSL: resolving streams, inlets into preallocated buffers, and conversions of stream metadata."""

from __future__ import annotations

import codecs
import ctypes
import inspect
import logging
import threading
import time

import numpy as np
import pylsl

from rtbci.devices.base import Source, SourceLost
from rtbci.health import Heartbeat
from rtbci.stream import Chunk, StreamInfo

try:  # pylsl ≥ 1.18 keeps its exceptions in pylsl.util only
    from pylsl.util import LostError
    from pylsl.util import TimeoutError as PylslTimeoutError
except ImportError:  # pragma: no cover - pylsl 1.17
    LostError = pylsl.LostError
    PylslTimeoutError = pylsl.TimeoutError

# pylsl raises its own TimeoutError (a RuntimeError), not the built-in one: catch both
LSL_TIMEOUTS = (TimeoutError, PylslTimeoutError)
# pylsl ≥ 1.18 hands string samples over as raw bytes (as_numpy=True): decoded here, tolerantly
_RAW_STRINGS = "as_numpy" in inspect.signature(pylsl.StreamInlet.__init__).parameters

RESOLVE_MORE_S = 0.1  # after the first match: how long to listen for others
UNRESPONSIVE_S = 30.0  # a stream found that did not answer is passed over this long
DUPLICATE_CHECK_S = 3.0  # while reading: how often to look for a second matching stream

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
             "ecg": "ecg", "emg": "emg", "stim": "stim", "misc": "misc", "dbs": "dbs",
             "trigger": "stim", "syst": "syst", "resp": "resp"}  # trigger/status: not inputs


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
    unreadable = []  # channels whose location is not three numbers
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
            xyz = [parse_number(loc.child_value(axis)) for axis in "XYZ"]
            if all(v is not None for v in xyz):
                positions[i] = np.array(xyz) / 1000.0  # XDF: millimetres
            elif any(loc.child_value(axis).strip() for axis in "XYZ"):
                unreadable.append(names[-1])
        ch = ch.next_sibling("channel") if not ch.empty() else ch
    if unreadable:
        log.warning("stream %r: unreadable location of channel%s %s; %s unknown (NaN)",
                    lsl.name(), "s" if len(unreadable) > 1 else "",
                    ", ".join(map(repr, unreadable[:10])) + (" …" if len(unreadable) > 10
                                                             else ""),
                    "their positions are" if len(unreadable) > 1 else "its position is")
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


def parse_number(text: str) -> float | None:
    """A finite number from a channel description value (``12.5``, ``12,5``, `` -3e1 ``),
    or None when it is not one."""
    try:
        value = float(text.strip().replace(",", "."))
    except ValueError:
        return None
    return value if np.isfinite(value) else None


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
    """Get liblsl's first clock-offset estimate now rather than on the first pull, which would
    otherwise hold the first samples or markers back by that long (its duration: "first sample
    waited" in benchmarks/README.md, "LSL ingest latency")."""
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
    """Every stream on the network matching ``query``, one per uid: waits up to ``timeout`` s
    for the first, then :data:`RESOLVE_MORE_S` for others (a second, short resolve)."""
    pred = predicate(query)
    found = pylsl.resolve_bypred(pred, minimum=1, timeout=timeout)
    if not found:
        return []
    more = pylsl.resolve_bypred(pred, minimum=len(found) + 1, timeout=RESOLVE_MORE_S)
    unique = {info.uid(): info for info in [*found, *more]}
    return sorted(unique.values(), key=lambda i: (i.hostname(), i.source_id(), i.uid()))


def describe_stream(info: pylsl.StreamInfo) -> str:
    return f"{info.name()!r} from {info.hostname()} (source_id {info.source_id()!r})"


class StreamChooser:
    """Which of the streams matching a query to open: the rule for identity.

    Never guesses. One match is taken. Several matches are reported in one line (listing
    each stream's host and source_id, and saying to name one by ``stream.source_id``) and
    none is taken: the caller keeps waiting until only one is left. A stream that was found
    but did not answer (a peer that answers discovery and then never replies on its port) is
    passed over for :data:`UNRESPONSIVE_S` seconds, so that another one can be used.
    """

    def __init__(self, query: dict[str, str], what: str):
        self.query, self.what = query, what
        self._unresponsive: dict[str, float] = {}  # uid → monotonic time it may be tried again
        self._ambiguous: frozenset[str] = frozenset()  # uids of the last reported set

    def choose(self, found: list[pylsl.StreamInfo]) -> pylsl.StreamInfo | None:
        """The stream to open among ``found`` (from :func:`resolve`), or None."""
        now = time.monotonic()
        usable = [i for i in found if self._unresponsive.get(i.uid(), 0.0) <= now]
        if len(usable) == 1:
            self._ambiguous = frozenset()
            return usable[0]
        uids = frozenset(i.uid() for i in usable)
        if len(usable) > 1 and uids != self._ambiguous:
            self._ambiguous = uids
            log.warning("%d streams match %s (%s): %s; not guessing which: name one by its "
                        "stream.source_id (or stop the others); waiting", len(usable),
                        describe_query(self.query), self.what,
                        "; ".join(describe_stream(i) for i in usable))
        return None

    def unresponsive(self, info: pylsl.StreamInfo, exc: BaseException) -> None:
        """``info`` was found but did not answer: pass it over for a while."""
        self._unresponsive[info.uid()] = time.monotonic() + UNRESPONSIVE_S
        log.warning("stream %s matches %s (%s) but did not answer (%s: %s); looking for "
                    "another", describe_stream(info), describe_query(self.query), self.what,
                    type(exc).__name__, exc or "timeout")


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
        self._chooser = StreamChooser(self.query, f"source {name!r}")
        self.duplicate_streams = 0  # other matching streams seen while reading one
        self._watch: pylsl.ContinuousResolver | None = None
        self._uid = ""
        self._seen_duplicates: set[str] = set()
        self._next_check = float("inf")

    def stats(self) -> dict[str, int]:
        """Counters for the stream's entry in ``--stats-json``."""
        return {"duplicate_streams": self.duplicate_streams}

    def describe(self) -> str:
        return f"lsl {describe_query(self.query)}"

    def open(self, timeout: float) -> StreamInfo | None:
        started = time.monotonic()
        found = resolve(self.query, timeout)
        if not found:
            if self._misses % 10 == 0:  # at first, then every ~10 s
                log.warning("no LSL stream %s (source %r) yet; %s", describe_query(self.query),
                            self.name, streams_there(self.query))
            self._misses += 1
            return None
        self._misses = 0
        chosen = self._chooser.choose(found)
        if chosen is None:  # several match, or only unresponsive ones: wait and look again
            time.sleep(max(0.0, timeout - (time.monotonic() - started)))
            return None
        if chosen.channel_format() == pylsl.cf_string:
            raise ValueError(f"stream {describe_query(self.query)} carries strings, not samples")
        # recover=False: a lost stream raises at once and the acquisition re-resolves it with
        # a fresh inlet, so clock sync and dejitter start over instead of bending the new
        # stream's timestamps towards the old one's
        inlet = pylsl.StreamInlet(chosen, max_buflen=30, recover=False,
                                  processing_flags=self.flags)
        # one deadline for the three steps, so that a stopping engine never waits on an
        # outlet that vanished after the resolve for longer than Acquisition.stop does
        deadline = time.monotonic() + max(timeout, 2.0)
        try:
            inlet.open_stream(timeout=deadline - time.monotonic())
            info = info_from_lsl(inlet.info(timeout=max(deadline - time.monotonic(), 0.05)))
            prime_clock_sync(inlet, self.flags, max(deadline - time.monotonic(), 0.05))
        except LostError:  # a stale resolve result of a vanished outlet
            inlet.close_stream()
            return None
        except LSL_TIMEOUTS as exc:  # found, but its port never answered: look for another
            inlet.close_stream()
            self._chooser.unresponsive(chosen, exc)
            return None
        self._attach(inlet, info)
        self._watch_duplicates(chosen.uid())
        return info

    def _watch_duplicates(self, uid: str) -> None:
        """Look for other matching streams in the background while this one is read."""
        self._uid = uid
        self._watch = pylsl.ContinuousResolver(pred=predicate(self.query), forget_after=5.0)
        self._next_check = time.monotonic() + DUPLICATE_CHECK_S

    def _check_duplicates(self) -> None:
        """Count and report (once each) other streams that match the query (read thread)."""
        self._next_check = time.monotonic() + DUPLICATE_CHECK_S
        for info in self._watch.results():
            uid = info.uid()
            if uid == self._uid or uid in self._seen_duplicates:
                continue
            self._seen_duplicates.add(uid)
            self.duplicate_streams += 1
            log.warning("source %r: another stream matches %s: %s; still reading the one it "
                        "connected to first: name one by its stream.source_id", self.name,
                        describe_query(self.query), describe_stream(info))

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
        if time.monotonic() >= self._next_check:
            self._check_duplicates()
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
        self._inlet = self._watch = None
        self._next_check = float("inf")


class MarkerReader:
    """Reads a string marker stream in its own thread and hands each marker to ``on_marker``.

    Waits for the stream if it is not there yet and follows it if it goes and comes back.
    ``on_marker(timestamp_s, text)`` is called from the reader thread as each marker arrives
    (timestamps clock-corrected to the local LSL clock).

    A marker's bytes come from any peer on the network: they are cut to ``max_marker_bytes``
    (counted in :attr:`truncated`) and decoded as UTF-8 with invalid bytes replaced (counted
    in :attr:`undecodable`). Whatever goes wrong in the loop is counted (:attr:`errors`),
    logged once per kind of error, and the loop goes on: the thread never dies of a marker.
    Several matching streams: see :class:`StreamChooser`.
    """

    def __init__(self, query: dict[str, str], on_marker, processing=("clocksync",),
                 max_marker_bytes: int = 1024):
        self.query = {k: v for k, v in query.items() if v}
        predicate(self.query)
        self.on_marker = on_marker
        self.flags = 0
        for flag in processing:
            self.flags |= PROCESSING_FLAGS[flag]
        self.max_marker_bytes = max_marker_bytes
        self.received = 0
        self.truncated = 0  # markers longer than max_marker_bytes, cut to it
        self.undecodable = 0  # markers that were not valid UTF-8 (invalid bytes replaced)
        self.errors = 0  # exceptions in the reading loop (each survived)
        self._error_kinds: set[str] = set()
        self._chooser = StreamChooser(self.query, "marker stream")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"markers-{describe_query(self.query)}")
        self.thread = self._thread  # watched by the engine's health watch
        self.heartbeat = Heartbeat()  # beats once per marker pulled (or 0.2 s without)

    def start(self) -> MarkerReader:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        """Counters for the stream's entry in ``--stats-json``."""
        return {"markers_truncated": self.truncated, "markers_undecodable": self.undecodable,
                "marker_errors": self.errors}

    def _run(self) -> None:
        inlet = None
        while not self._stop.is_set():
            self.heartbeat.idle = inlet is None  # looking for the stream is no stall
            self.heartbeat.beat()
            try:
                if inlet is None:
                    inlet = self._connect()
                elif not self._pull(inlet):
                    inlet = None
            except Exception as exc:  # a bad marker or peer must not end the thread
                self._count_error(exc)
                self._stop.wait(0.05)

    def _count_error(self, exc: BaseException) -> None:
        self.errors += 1
        kind = type(exc).__name__
        if kind not in self._error_kinds:  # once per kind of error
            self._error_kinds.add(kind)
            log.error("marker stream %s: %s: %s (counted in marker_errors; reading on)",
                      describe_query(self.query), kind, exc)

    def _connect(self) -> pylsl.StreamInlet | None:
        found = resolve(self.query, timeout=0.5)
        chosen = self._chooser.choose(found) if found else None
        if chosen is None:
            if found:  # several, or only unresponsive ones
                self._stop.wait(0.5)
            return None
        options = {"as_numpy": True} if _RAW_STRINGS else {}
        inlet = pylsl.StreamInlet(chosen, recover=True, processing_flags=self.flags, **options)
        try:
            inlet.open_stream(timeout=2.0)
            prime_clock_sync(inlet, self.flags)
        except LostError:
            return None
        except LSL_TIMEOUTS as exc:  # found, but its port never answered: look for another
            self._chooser.unresponsive(chosen, exc)
            return None
        log.info("marker stream %s connected", describe_query(self.query))
        return inlet

    def _pull(self, inlet: pylsl.StreamInlet) -> bool:
        """Take one marker (waiting up to 0.2 s); False when the stream was lost."""
        try:
            sample, stamp = inlet.pull_sample(timeout=0.2)
        except LostError:
            return False
        if sample is not None:
            self.received += 1
            self.on_marker(stamp, self._text(sample[0]))
        return True

    def _text(self, value: bytes | str) -> str:
        """A marker's text: at most ``max_marker_bytes`` bytes, invalid UTF-8 replaced."""
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
        cut = len(raw) > self.max_marker_bytes
        if cut:
            if not self.truncated:
                log.warning("marker stream %s: a marker of %d bytes cut to %d "
                            "(engine.max_marker_bytes; counted in markers_truncated)",
                            describe_query(self.query), len(raw), self.max_marker_bytes)
            self.truncated += 1
            raw = raw[:self.max_marker_bytes]
        try:  # a character split by the cut is dropped, not replaced
            return codecs.getincrementaldecoder("utf-8")().decode(raw, final=not cut)
        except UnicodeDecodeError:
            return self._replace(raw)

    def _replace(self, raw: bytes) -> str:
        if not self.undecodable:
            log.warning("marker stream %s: a marker that is not UTF-8 (%r…); invalid bytes "
                        "replaced by U+FFFD (counted in markers_undecodable)",
                        describe_query(self.query), raw[:40])
        self.undecodable += 1
        return raw.decode("utf-8", "replace")
