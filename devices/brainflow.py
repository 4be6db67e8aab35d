"""BrainFlow boards as sources (``kind = "brainflow"``; optional extra ``rtbci[brainflow]``).

One BrainFlow API covers live boards (OpenBCI, Muse, g.tec Unicorn, Neurosity, BrainBit …),
a synthetic board and file playback. The board's ExG rows (EEG, EMG, ECG, EOG, as its
BrainFlow description lists them) become the stream, in microvolts like the LSL source's
streams (BrainFlow already scales ExG rows to µV); its marker row becomes the source's
markers.

Timestamps: BrainFlow stamps each package on arrival with the host's wall clock (Unix
seconds, its timestamp row). :class:`ClockBridge` maps them onto the LSL clock
(``pylsl.local_clock``) with an offset read between two LSL clock readings; the conversion
adds at most half that bracket (a few µs) plus the wall clock's drift since the last reading
(re-read every ``refresh_s``; NTP slews the wall clock by at most 0.5 ms/s). The arrival
stamps jitter (packages come in bursts); :class:`Dejitter` makes them regular first.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pylsl

from rtbci.devices.base import Source, SourceLost
from rtbci.errors import RtbciError
from rtbci.stream import Chunk, StreamInfo

log = logging.getLogger("rtbci.devices.brainflow")

# BrainFlow description key → MNE channel type, in the order a row shared by several is named
EXG_ROWS = (("eeg_channels", "eeg"), ("emg_channels", "emg"), ("ecg_channels", "ecg"),
            ("eog_channels", "eog"))
CONNECTION_KEYS = ("serial_port", "ip_address", "ip_port", "mac_address", "serial_number",
                   "other_info", "file")
POLL_S = 0.002  # BrainFlow has no blocking read: a read polls its buffer this often


def _shim():
    try:
        from brainflow import board_shim
    except ImportError:
        raise RtbciError("the brainflow source needs BrainFlow: pip install "
                         "'rtbci[brainflow]'") from None
    # it finds its native library through pkg_resources when importlib.resources fails,
    # which warns on every first use
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    if not log.isEnabledFor(logging.DEBUG):  # its board logger prints every session's JSON
        board_shim.BoardShim.disable_board_logger()
    return board_shim


PSEUDO_BOARDS = ("PLAYBACK_FILE_BOARD", "STREAMING_BOARD")  # they need a master_board


def board_names() -> list[str]:
    """The board names BrainFlow knows (``BoardIds``), playback/streaming pseudo-boards too."""
    return [b.name for b in _shim().BoardIds if b.name != "NO_BOARD"]


def board_id(board: str | int) -> int:
    """BrainFlow's id of ``board`` (a ``BoardIds`` name, any case, or its number).

    Raises :class:`RtbciError` naming the valid boards in one line."""
    ids = _shim().BoardIds
    if isinstance(board, int) or str(board).lstrip("-").isdigit():
        if int(board) in {b.value for b in ids}:
            return int(board)
    elif str(board).upper() in ids.__members__:
        return ids[str(board).upper()].value
    raise RtbciError(f"unknown BrainFlow board {board!r}; valid: {', '.join(board_names())}")


def board_descr(board: str | int, master_board: str | int | None = None) -> dict:
    """BrainFlow's description of ``board`` (of ``master_board`` for the playback and
    streaming pseudo-boards, whose packages are the master board's)."""
    bid = board_id(board)
    if bid in [_shim().BoardIds[n].value for n in PSEUDO_BOARDS]:
        if master_board is None:
            raise RtbciError(f"board {board!r} replays another board's packages: give "
                             "master_board (e.g. \"SYNTHETIC_BOARD\")")
        bid = board_id(master_board)
    return _shim().BoardShim.get_board_descr(bid)


def board_info(board: str | int, name: str, master_board: str | int | None = None
               ) -> tuple[StreamInfo, np.ndarray]:
    """The stream a board gives (its ExG rows, µV) and those rows' indices, from BrainFlow's
    board description (no hardware needed)."""
    descr = board_descr(board, master_board)
    rows: dict[int, str] = {}
    for key, kind in EXG_ROWS:
        for row in descr.get(key, []):
            rows.setdefault(row, kind)
    if not rows:
        raise RtbciError(f"BrainFlow board {board!r} has no EEG/EMG/ECG/EOG channels")
    order = sorted(rows)
    eeg_names = [n for n in descr.get("eeg_names", "").split(",") if n]
    eeg_rows = descr.get("eeg_channels", [])
    names = [eeg_names[eeg_rows.index(r)] if r in eeg_rows and len(eeg_names) == len(eeg_rows)
             else f"{rows[r]}{k + 1}" for k, r in enumerate(order)]
    types = tuple(rows[r] for r in order)
    main = max(set(types), key=types.count)
    info = StreamInfo(name=name, type=main.upper(), source_id=f"brainflow-{descr['name']}-{name}",
                      srate=float(descr["sampling_rate"]), ch_names=tuple(names),
                      ch_types=types, ch_units=("microvolts",) * len(order),
                      hostname=descr["name"])
    return info, np.array(order)


class ClockBridge:
    """Wall-clock (Unix) seconds → LSL clock seconds: ``lsl = unix + offset``.

    The offset is read between two ``pylsl.local_clock`` readings (error ≤ half their gap,
    kept in :attr:`error_s`) and re-read every ``refresh_s`` seconds."""

    def __init__(self, refresh_s: float = 1.0):
        self.refresh_s = refresh_s
        self.offset = 0.0
        self.error_s = 0.0
        self._next = -np.inf

    def update(self) -> float:
        now = pylsl.local_clock()
        if now >= self._next:
            before, wall, after = now, time.time(), pylsl.local_clock()
            self.offset = (before + after) / 2 - wall
            self.error_s = (after - before) / 2
            self._next = after + self.refresh_s
        return self.offset


class Dejitter:
    """Regular timestamps from BrainFlow's arrival stamps: a phase-locked loop.

    BrainFlow stamps packages as they reach the host, in bursts (irregular intervals around
    the nominal period), which the stream's gap detection would count as gaps. The loop keeps
    the time of the next sample and the sampling period: each chunk is stamped
    ``next + i · period`` after moving ``next`` towards the chunk's arrival stamps (by the
    fraction that gives the error a half-life of ``halflife_s``), and the period follows the
    remaining error, so a board whose clock runs off nominal is tracked
    without a lag. The stamps keep the mean arrival delay (like LSL's dejitter). A chunk
    arriving more than ``jump_s`` later than predicted means samples were lost (or the board
    stalled): the timeline skips the missing samples (their number to within the arrival
    jitter), so the timestamps show the gap and the stream counts it.

    Parameters
    ----------
    srate : float
        Nominal sampling rate, Hz.
    """

    def __init__(self, srate: float, halflife_s: float = 2.0, jump_s: float = 0.1,
                 max_chunk: int = 4096):
        self.nominal = 1.0 / srate
        self.halflife_s, self.jump_s = halflife_s, jump_s
        self._index = np.arange(max_chunk, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Start over (a board prepared again)."""
        self.next = None  # timestamp of the next sample, s
        self.period = self.nominal
        self.lost = 0  # samples inferred missing

    def apply(self, stamps: np.ndarray, out: np.ndarray) -> None:
        """Write the regular timestamps of the chunk ``stamps`` (n,) into ``out`` (n,)."""
        n = len(stamps)
        middle = (n - 1) / 2 * self.period
        if self.next is None:
            self.next = float(stamps.mean()) - middle
        error = float(stamps.mean()) - (self.next + middle)
        if error > self.jump_s:
            missing = round(error / self.period)
            self.next += missing * self.period
            error -= missing * self.period
            self.lost += missing
        gain = 1 - 0.5 ** (n * self.period / self.halflife_s)
        self.next += gain * error
        np.multiply(self._index[:n], self.period, out=out)
        out += self.next
        self.next += n * self.period
        self.period += gain * gain / 4 * error / max(n, 1)


@dataclass
class Connection:
    """BrainFlow's connection parameters (``BrainFlowInputParams``); empty: not set."""

    serial_port: str = ""
    ip_address: str = ""
    ip_port: int = 0
    mac_address: str = ""
    serial_number: str = ""
    other_info: str = ""
    file: str = ""
    master_board: str | int | None = None

    def params(self):
        params = _shim().BrainFlowInputParams()
        for key in CONNECTION_KEYS:
            setattr(params, key, getattr(self, key))
        if self.master_board is not None:
            params.master_board = board_id(self.master_board)
        return params


class BrainFlowSource(Source):
    """Reads a BrainFlow board into preallocated buffers (no allocation per read).

    Parameters
    ----------
    name : str
        Config name of the source.
    board : str | int
        BrainFlow board name (``"SYNTHETIC_BOARD"``) or id.
    connection : Connection
    stream_name : str
        Name of the stream (what a session records, replay publishes).
    lost_after_s : float
        A board silent for this long is treated as lost: closed and prepared again.
    dejitter : bool
        Regular timestamps (:class:`Dejitter`) instead of BrainFlow's arrival stamps.
    max_chunk : int
        Largest number of samples taken per read.
    """

    def __init__(self, name: str, board: str | int, connection: Connection | None = None,
                 stream_name: str | None = None, lost_after_s: float = 5.0,
                 dejitter: bool = True, max_chunk: int = 4096):
        self.name = name
        self.board = board
        self.board_id = board_id(board)
        self.connection = connection or Connection()
        self.info, self._rows = board_info(board, stream_name or name,
                                           self.connection.master_board)
        self.lost_after_s = lost_after_s
        self.max_chunk = max_chunk
        self.clock = ClockBridge()
        self.dejitter = Dejitter(self.info.srate, max_chunk=max_chunk) if dejitter else None
        self.overflows = 0
        self._shim = None
        descr = board_descr(board, self.connection.master_board)
        self._n_rows = descr["num_rows"]
        self._ts_row, self._marker_row = descr["timestamp_channel"], descr.get("marker_channel")
        self._raw = np.zeros(self.max_chunk * self._n_rows, dtype=np.float64)
        self._data = np.zeros((self.max_chunk, self.info.n_channels), dtype=np.float32)
        self._times = np.zeros(self.max_chunk, dtype=np.float64)
        self._count = np.zeros(1, dtype=np.int32)
        self._buffer_size = 0
        self._misses = 0

    def describe(self) -> str:
        return f"brainflow board={self.board!r}"

    def open(self, timeout: float) -> StreamInfo | None:
        shim = _shim()
        board = shim.BoardShim(self.board_id, self.connection.params())
        try:
            board.prepare_session()
            self._buffer_size = max(45000, int(self.info.srate * 60))
            board.start_stream(self._buffer_size)
        except shim.BrainFlowError as exc:
            self._release(board)
            if self._misses % 10 == 0:  # at first, then every ~10 s
                log.warning("BrainFlow board %r (source %r) did not start: %s", self.board,
                            self.name, exc)
            self._misses += 1
            time.sleep(min(timeout, 1.0))
            return None
        self._misses = 0
        if self.dejitter is not None:
            self.dejitter.reset()
        self._shim = board
        self._dll = shim.BoardControllerDLL.get_instance()
        self._json = board.input_json
        self._last_data = time.monotonic()
        return self.info

    def read(self, timeout: float = 0.0) -> Chunk | None:
        deadline = time.monotonic() + timeout
        n = self._available()
        while n == 0 and time.monotonic() < deadline:
            time.sleep(POLL_S)
            n = self._available()
        if n == 0:
            if time.monotonic() - self._last_data > self.lost_after_s:
                raise SourceLost(f"board {self.board!r} sent nothing for {self.lost_after_s:g} s")
            return None
        self._last_data = time.monotonic()
        if n >= self._buffer_size - 1:  # BrainFlow's ring buffer is full: oldest dropped
            self.overflows += 1
            log.warning("source %r: BrainFlow's buffer was full; samples were lost", self.name)
        n = min(n, self.max_chunk)
        self._call("get_board_data", n, 0, self._raw, self.board_id, self._json)
        packages = self._raw[:n * self._n_rows].reshape(self._n_rows, n)
        for k, row in enumerate(self._rows):  # row by row: no temporary (n_ch, n) array
            self._data[:n, k] = packages[row]
        times = self._times[:n]
        if self.dejitter is not None:
            self.dejitter.apply(packages[self._ts_row], times)
            times += self.clock.update()
        else:
            np.add(packages[self._ts_row], self.clock.update(), out=times)
        if self.marker_handler is not None and self._marker_row is not None:
            self._emit_markers(packages[self._marker_row], n)
        return Chunk(self._data[:n], self._times[:n])

    def _available(self) -> int:
        self._call("get_board_data_count", 0, self._count, self.board_id, self._json)
        return int(self._count[0])

    def _call(self, function: str, *args) -> None:
        status = getattr(self._dll, function)(*args)
        if status != 0:
            raise SourceLost(f"board {self.board!r} failed ({function}: BrainFlow error "
                             f"{status})")

    def _emit_markers(self, row: np.ndarray, n: int) -> None:
        for i in np.flatnonzero(row):
            self.marker_handler(float(self._times[i]), marker_text(row[i]))

    def close(self) -> None:
        if self._shim is not None:
            self._release(self._shim)
        self._shim = None

    @staticmethod
    def _release(board) -> None:
        """Stop and release (before the interpreter exits: BrainFlow's ``__del__`` cannot)."""
        for step in (board.stop_stream, board.release_session):
            with contextlib.suppress(Exception):  # not started / already released
                step()


def marker_text(value: float) -> str:
    """A BrainFlow marker value as the marker's text: ``3.0`` → ``"3"``, ``2.5`` → ``"2.5"``."""
    return f"{value:g}"



class BoardPublisher:
    """Publishes a BrainFlow board on LSL (``rtbci simulate --brainflow``): the stream the
    brainflow source reads (same channels, units and timestamps) and its marker row as the
    string stream ``<name>-markers``."""

    def __init__(self, board: str | int, name: str, connection: Connection | None = None):
        self.source = BrainFlowSource(name, board, connection, stream_name=name)
        self.info = replace(self.source.info, source_id=f"rtbci-brainflow-{name}")
        self.marker_name = f"{name}-markers"
        self.samples_pushed = self.markers_pushed = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self, duration: float | None = None) -> None:
        """Publish until ``stop``, Ctrl-C or ``duration`` seconds; always releases the board."""
        from rtbci.devices.lsl import lsl_from_info

        if self.source.open(5.0) is None:
            raise RtbciError(f"BrainFlow board {self.source.board!r} did not start (see the "
                             "log above)")
        try:
            outlet = pylsl.StreamOutlet(lsl_from_info(self.info))
            markers = pylsl.StreamOutlet(pylsl.StreamInfo(
                self.marker_name, "Markers", 1, pylsl.IRREGULAR_RATE, pylsl.cf_string,
                f"{self.info.source_id}-markers"))

            def push_marker(stamp: float, text: str) -> None:
                markers.push_sample([text], stamp)
                self.markers_pushed += 1

            self.source.marker_handler = push_marker
            end = None if duration is None else time.monotonic() + duration
            while not self._stop.is_set() and (end is None or time.monotonic() < end):
                chunk = self.source.read(0.1)
                if chunk is not None:
                    outlet.push_chunk(chunk.data, chunk.timestamps.tolist())
                    self.samples_pushed += len(chunk.timestamps)
        finally:
            self.source.close()
