"""Replay: recordings published as LSL outlets (``rtbci replay``), and the chunk schedule
shared with the engine's offline mode."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pylsl

from rtbci.devices.lsl import lsl_from_info
from rtbci.devices.recording import MarkerStream, RecordedStream, Recording
from rtbci.ringbuffer import RingBuffer

log = logging.getLogger("rtbci.devices.replay")

CHUNK_S = 0.01  # replay in 10 ms chunks, like an amplifier


OFFLINE_JUMP_S = 60.0  # a recording's step forward longer than this is a clock jump


def schedule(recording: Recording, chunk_s: float = CHUNK_S) -> Iterator[tuple]:
    """Events in replay order: ``(t, "samples", stream_index, start, stop)`` for each chunk
    (``t`` = its last sample's replay time) and ``(t, "marker", marker_stream_index, text,
    timestamp)`` for each marker (``t`` its replay time, ``timestamp`` its own).

    A marker comes before a chunk at the same replay time. Timestamps that jump (the source's
    clock was reset or stepped, :func:`clock_segments`) are replayed in their order, the
    replay time running on across each jump as if no time had passed: a jump back is
    replayed, not sorted into the samples before it, and a jump forward is not waited for.
    Each marker is placed on the clock of the stream that owns it (else the first stream):
    on the first stretch, from the one the previous marker was on, whose time span (± 1 s)
    holds it; where the stream's clock jumps, a marker that no stretch holds (stamped on
    another clock) is replayed right after the marker listed before it, as it arrived live.
    Markers listed in time order, as files and sessions list them, take a marker stamped on
    an old clock after a jump back for one on the new clock.
    """
    segments = [clock_segments(s) for s in recording.streams]
    events = [_chunks(i, stream, segments[i], chunk_s)
              for i, stream in enumerate(recording.streams)]
    for j, ms in enumerate(recording.marker_streams):
        owner = ms.owner if ms.owner is not None else 0
        events.append(_markers(j, ms, recording.streams[owner], segments[owner]))
    for event in heapq.merge(*events, key=lambda e: (e[0], e[1], e[2])):
        yield (event[0], *event[3:])


def clock_segments(stream: RecordedStream) -> tuple[np.ndarray, np.ndarray]:
    """Where a recorded stream's clock jumps, and how its replay time runs on.

    A step back by more than ``RingBuffer.GAP_FACTOR`` sample periods and
    ``RingBuffer.JUMP_BACK_TOLERANCE_S`` is a clock jump, as live; a recording keeps no
    arrival times, so a step forward is one when it is longer than ``OFFLINE_JUMP_S``
    (shorter: a gap, the stream paused).

    Returns
    -------
    firsts : array of int, shape (n_segments,)
        Index of each stretch's first sample (0 first).
    offsets : array of float, shape (n_segments,)
        Added to a stretch's timestamps to give its replay times (0 for the first; each
        later stretch starts one sample period after the previous one ends).
    """
    times, period = stream.times, 1.0 / stream.info.srate
    if len(times) < 2:
        return np.zeros(1, np.int64), np.zeros(1)
    step = np.diff(times)
    back = max(RingBuffer.GAP_FACTOR * period, RingBuffer.JUMP_BACK_TOLERANCE_S)
    cuts = np.flatnonzero((step < -back) | (step > OFFLINE_JUMP_S))
    firsts = np.concatenate([[0], cuts + 1]).astype(np.int64)
    offsets = np.zeros(len(firsts))
    for k in range(1, len(firsts)):
        end = times[firsts[k] - 1] + offsets[k - 1]  # the previous stretch's last replay time
        offsets[k] = end + period - times[firsts[k]]
    return firsts, offsets


def replay_duration(stream: RecordedStream) -> float:
    """Seconds the stream takes to replay (its timestamps' span without the clock jumps)."""
    firsts, offsets = clock_segments(stream)
    return float(stream.times[-1] + offsets[-1] - stream.times[0]) + 1.0 / stream.info.srate


def _markers(j: int, ms: MarkerStream, owner: RecordedStream,
             segments: tuple[np.ndarray, np.ndarray]) -> Iterator[tuple]:
    firsts, offsets = segments
    times = owner.times
    lasts = np.append(firsts[1:], len(times)) - 1
    margin = RingBuffer.JUMP_TOLERANCE_S
    at, events, previous = 0, [], -np.inf

    def holds(k: int, t: float) -> bool:
        return times[firsts[k]] - margin <= t <= times[lasts[k]] + margin

    for n, (t, text) in enumerate(ms.markers):
        if not holds(at, t):
            at = next((k for k in range(at + 1, len(firsts)) if holds(k, t)), at)
        replay_t = t + offsets[at]
        if len(firsts) > 1 and not holds(at, t):  # on no stretch's clock: in list order
            replay_t = max(previous, float(times[0]))
        previous = replay_t
        events.append((replay_t, n, text, t))
    events.sort()
    for replay_t, _, text, t in events:
        yield float(replay_t), 0, j, "marker", j, text, t


def _chunks(i: int, stream: RecordedStream, segments: tuple[np.ndarray, np.ndarray],
            chunk_s: float) -> Iterator[tuple]:
    firsts, offsets = segments
    step = max(1, int(round(chunk_s * stream.info.srate)))
    n = len(stream.times)
    for start in range(0, n, step):
        stop = min(n, start + step)
        offset = offsets[np.searchsorted(firsts, stop - 1, side="right") - 1]
        yield float(stream.times[stop - 1] + offset), 1, i, "samples", i, start, stop


class ReplayPublisher:
    """Publish a :class:`Recording` as real LSL outlets: one per signal stream (full channel
    metadata) and one per marker stream (a file's annotations and a session source's markers
    on ``<name>-markers``; an XDF file's string streams under their own names).

    Timestamps are ``t0 + (t − start) / speed`` on the local LSL clock (``t0`` = when the
    replay starts): at 1× they advance with the wall clock, like a live amplifier. With
    ``speed=None`` ("max") chunks are pushed as fast as possible, stamped as at 1×.

    Parameters
    ----------
    recording : Recording
    speed : float | None
        Replay speed (1 = real time; None = as fast as possible).
    loop : bool
        Start again at the end, timestamps continuing.
    name : str | None
        Rename the signal stream (single-stream recordings) and so its marker stream.
    """

    def __init__(self, recording: Recording, speed: float | None = 1.0, loop: bool = False,
                 name: str | None = None):
        if name is not None and len(recording.streams) > 1:
            raise ValueError("--name renames a single stream; this recording has "
                             f"{len(recording.streams)}")
        self.recording, self.speed, self.loop = recording, speed, loop
        self.infos = [replace(s.info, name=name or s.info.name,
                              source_id=f"rtbci-replay-{name or s.info.name}")
                      for s in recording.streams]
        self.marker_infos = [_marker_info(ms, self.infos) for ms in recording.marker_streams]
        self.marker_name = ", ".join(info.name() for info in self.marker_infos) or "(none)"
        self.samples_pushed = 0
        self.markers_pushed = 0
        self._stop = threading.Event()
        self._outlets: list[pylsl.StreamOutlet] = []
        self._markers: list[pylsl.StreamOutlet] = []

    def open(self) -> None:
        """Create the outlets (``run`` does it if needed)."""
        self._outlets = [pylsl.StreamOutlet(lsl_from_info(info),
                                            chunk_size=max(1, int(info.srate * CHUNK_S)),
                                            max_buffered=360) for info in self.infos]
        self._markers = [pylsl.StreamOutlet(info) for info in self.marker_infos]

    def wait_for_consumers(self, timeout: float) -> bool:
        """Block until every signal outlet has a subscriber."""
        deadline = time.monotonic() + timeout
        return all(o.wait_for_consumers(max(0.0, deadline - time.monotonic()))
                   for o in self._outlets)

    def stop(self) -> None:
        self._stop.set()

    def run(self, progress=None) -> None:
        """Publish until the end (or forever with ``loop``); ``progress(seconds)`` per chunk."""
        if not self._outlets:
            self.open()
        rec = self.recording
        duration = max(replay_duration(s) for s in rec.streams)
        t0 = pylsl.local_clock() + 0.05
        offset, last = 0.0, rec.start
        while not self._stop.is_set():
            for event in schedule(rec):
                if self._stop.is_set():
                    break
                stamp = t0 + (offset + event[0] - rec.start) / (self.speed or 1.0)
                if self.speed is not None:
                    time.sleep(max(0.0, stamp - pylsl.local_clock()))
                self._push(event, t0, offset)
                if progress is not None:
                    progress(event[0] - last)
                    last = event[0]
            if not self.loop:
                break
            offset += duration
        time.sleep(0.3)  # let consumers take the last chunks before the outlets go
        self._outlets, self._markers = [], []

    def _push(self, event: tuple, t0: float, offset: float) -> None:
        rec, speed = self.recording, self.speed or 1.0
        if event[1] == "marker":  # stamped with its own time: a clock jump replays too
            self._markers[event[2]].push_sample([event[3]],
                                                t0 + (offset + event[4] - rec.start) / speed)
            self.markers_pushed += 1
            return
        _, _, i, start, stop = event
        stream = rec.streams[i]
        stamps = t0 + (offset + stream.times[start:stop] - rec.start) / speed
        self._outlets[i].push_chunk(stream.data[start:stop], stamps.tolist())
        self.samples_pushed += stop - start


def _marker_info(ms: MarkerStream, infos: list) -> pylsl.StreamInfo:
    """The LSL info of a marker stream: an owned one follows its signal stream's (new) name."""
    name, source_id = ms.name, ms.source_id or f"rtbci-replay-{ms.name}"
    if ms.owner is not None:
        name = f"{infos[ms.owner].name}-markers"
        source_id = f"{infos[ms.owner].source_id}-markers"
    return pylsl.StreamInfo(name, ms.type or "Markers", 1, pylsl.IRREGULAR_RATE,
                            pylsl.cf_string, source_id)
