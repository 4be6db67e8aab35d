"""Replay: recordings published as LSL outlets (``rtbci replay``), and the chunk schedule
shared with the engine's offline mode."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pylsl

from rtbci.devices.lsl import lsl_from_info
from rtbci.devices.recording import MarkerStream, Recording

log = logging.getLogger("rtbci.devices.replay")

CHUNK_S = 0.01  # replay in 10 ms chunks, like an amplifier


def schedule(recording: Recording, chunk_s: float = CHUNK_S) -> Iterator[tuple]:
    """Events in time order: ``(t, "samples", stream_index, start, stop)`` for each chunk
    (``t`` = its last sample's time) and ``(t, "marker", marker_stream_index, text)`` for
    each marker.

    A marker comes before a chunk stamped at the same time.
    """
    events = [_chunks(i, stream, chunk_s) for i, stream in enumerate(recording.streams)]
    events += [_markers(j, ms) for j, ms in enumerate(recording.marker_streams)]
    for event in heapq.merge(*events, key=lambda e: (e[0], e[1], e[2])):
        yield (event[0], *event[3:])


def _markers(j: int, ms: MarkerStream) -> Iterator[tuple]:
    for t, text in ms.markers:
        yield t, 0, j, "marker", j, text


def _chunks(i: int, stream, chunk_s: float) -> Iterator[tuple]:
    step = max(1, int(round(chunk_s * stream.info.srate)))
    n = len(stream.times)
    for start in range(0, n, step):
        stop = min(n, start + step)
        yield float(stream.times[stop - 1]), 1, i, "samples", i, start, stop


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
        duration = max(s.duration for s in rec.streams)
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
        if event[1] == "marker":
            self._markers[event[2]].push_sample([event[3]],
                                                t0 + (offset + event[0] - rec.start) / speed)
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
