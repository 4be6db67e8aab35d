"""A simulated amplifier with known ground truth, published as a real LSL outlet.

The signal is :class:`~rtbci.devices.signals.SignalModel` (its generative model is described
in :mod:`rtbci.devices.signals`; its names are re-exported here), or a decoder family's task
signal (:mod:`rtbci.devices.tasks`).

The marker's timestamp is the exact timestamp of the trial's nominal onset ``t_k`` (the
response starts ``δ_k`` later). Timestamps are ``t0 + k / srate`` for sample ``k`` (a
crystal-clocked amplifier), pushed in chunks of ``chunk_ms`` when the wall clock reaches the
chunk's last sample.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pylsl

from rtbci.devices.lsl import lsl_from_info
from rtbci.devices.signals import (  # noqa: F401  (re-exported: the model's names)
    ARTEFACT_WEIGHT,
    BLINK_S,
    DEFAULT_CLASSES,
    DEFAULT_REALISM,
    MARKER_PREFIX,
    MUSCLE_BAND,
    MUSCLE_S,
    PROFILES,
    Artefacts,
    Overlays,
    Profile,
    Realism,
    SignalModel,
    blink_pattern,
    get_profile,
    shifted,
    stream_info,
    temporal_patterns,
)

log = logging.getLogger("rtbci.devices.simulate")


class SimulatedAmplifier:
    """Publish a :class:`SignalModel` as an LSL stream plus a string marker stream.

    Parameters
    ----------
    profile : str
        One of :data:`PROFILES`.
    name : str | None
        LSL stream name (default ``rtbci-<profile>``); markers go to ``<name>-markers``.
    seed, snr, classes, subject
        See :class:`SignalModel`.
    chunk_ms : float
        Push period in ms.
    on_push : callable(data, timestamps) | None
        Called with every pushed chunk (for tests and ground truth).
    task : str | None
        A decoder family (``motor-gnn``, ``seeg-words``, ``image-retrieval``, ``speech``):
        publish that family's simulated task (:mod:`rtbci.devices.tasks`) on its profile, at
        its rate, instead of the class patterns; ``profile`` and ``classes`` are then ignored
        and the default name is ``rtbci-<task>``.
    items : sequence of str | None
        With ``task``: draw the trials only from these item labels (e.g. the items a
        retrieval checkpoint never trained on: a zero-shot stream).
    source_id : str | None
        LSL source_id of the signal outlet (default ``rtbci-sim-<name>``); the markers'
        is ``<source_id>-markers``. An engine's own simulator gets one unique to it, so that
        it reads its own outlets and no other engine's.
    """

    def __init__(self, profile: str = "eeg64", name: str | None = None, seed: int = 0,
                 snr: float = 1.0, classes: tuple[str, ...] = DEFAULT_CLASSES,
                 subject: int = 0, chunk_ms: float = 10.0,
                 on_push: Callable[[np.ndarray, np.ndarray], None] | None = None,
                 task: str | None = None, items: list[str] | None = None,
                 source_id: str | None = None):
        if task is not None:  # a decoder family's task (devices/tasks.py): its profile and rate
            from rtbci.devices.tasks import TaskSignal

            self.model = TaskSignal(task, snr=snr, seed=seed, subject=subject, items=items)
            self.marker_prefix = ""  # task markers are complete: "<prefix>/<item>"
        else:
            self.model = SignalModel(get_profile(profile), seed=seed, snr=snr,
                                     classes=classes, subject=subject)
            self.marker_prefix = MARKER_PREFIX
        self.profile = self.model.profile
        self.name = name or f"rtbci-{task or profile}"
        self.info = stream_info(self.profile, self.name,
                                source_id=source_id or f"rtbci-sim-{self.name}")
        self.marker_name = f"{self.name}-markers"
        self.marker_source_id = f"{self.info.source_id}-markers"
        self.chunk = max(1, int(round(chunk_ms * 1e-3 * self.profile.srate)))
        self.on_push = on_push
        self.events: list[tuple[float, str]] = []  # (timestamp, class label), ground truth
        self.samples_pushed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outlet: pylsl.StreamOutlet | None = None

    def __repr__(self) -> str:
        state = "ON" if self._thread and self._thread.is_alive() else "OFF"
        return f"<SimulatedAmplifier: {state} | {self.name} ({self.profile.name})>"

    def start(self) -> SimulatedAmplifier:
        """Create the outlets and push from a background thread."""
        self.open()
        self._thread = threading.Thread(target=self._push_loop, name=f"sim-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    LINGER_S = 0.3  # time for consumers to receive the last chunks before the outlets go

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._close()

    def _close(self) -> None:
        if self._outlet is not None and self._outlet.have_consumers():
            time.sleep(self.LINGER_S)  # destroying an outlet drops what it has not sent yet
        self._outlet = self._markers = None  # destroying the outlets unpublishes the streams

    def run(self, duration: float | None = None, progress: Callable[[int], None] | None = None):
        """Push in the calling thread for ``duration`` seconds (None: until stopped)."""
        if self._outlet is None:
            self.open()
        self._push_loop(duration, progress)
        self._close()

    def wait_for_consumers(self, timeout: float) -> bool:
        """Block until an inlet has subscribed to the signal outlet (``open`` it first)."""
        return self._outlet.wait_for_consumers(timeout)

    def open(self) -> None:
        """Create the signal and marker outlets (``run`` does it if needed)."""
        self._stop.clear()
        self._outlet = pylsl.StreamOutlet(lsl_from_info(self.info), chunk_size=self.chunk,
                                          max_buffered=30)
        markers = pylsl.StreamInfo(self.marker_name, "Markers", 1, pylsl.IRREGULAR_RATE,
                                   pylsl.cf_string, self.marker_source_id)
        self._markers = pylsl.StreamOutlet(markers)

    def _push_loop(self, duration: float | None = None,
                   progress: Callable[[int], None] | None = None) -> None:
        fs, n = self.profile.srate, self.chunk
        offsets = np.arange(n) / fs
        t0 = pylsl.local_clock() + 0.05
        end = np.inf if duration is None else t0 + duration
        stamps = np.empty(n)
        while not self._stop.is_set():
            first = self.model.sample
            np.add(t0 + first / fs, offsets, out=stamps)
            if stamps[-1] >= end:
                break
            data, events = self.model.next(n)  # generate first, push on time
            wait = stamps[-1] - pylsl.local_clock()
            if wait > 0:
                time.sleep(wait)
            for sample, label in events:
                stamp = t0 + sample / fs
                self._markers.push_sample([self.marker_prefix + label], stamp)
                self.events.append((stamp, label))
            self._outlet.push_chunk(data, stamps.tolist())
            self.samples_pushed += n
            if self.on_push is not None:
                self.on_push(data, stamps.copy())
            if progress is not None:
                progress(n)


def save_recording(path: str | Path, profile: str = "eeg64", duration: float = 60.0,
                   seed: int = 0, snr: float = 1.0, classes: tuple[str, ...] = DEFAULT_CLASSES,
                   subject: int = 0, name: str | None = None) -> Path:
    """Write ``duration`` seconds of the model as a labelled recording: FIF (by MNE's writer),
    channel positions as its montage, each trial's ``stim/<class>`` as an annotation."""
    from rtbci.devices.recording import RecordedStream, to_mne_raw

    p = get_profile(profile)
    model = SignalModel(p, seed=seed, snr=snr, classes=classes, subject=subject)
    data, events = model.next(int(round(duration * p.srate)))
    info = stream_info(p, name or f"rtbci-{profile}", f"rtbci-sim-{name or profile}")
    stream = RecordedStream(info, data, np.arange(len(data)) / p.srate)
    markers = [(sample / p.srate, MARKER_PREFIX + label) for sample, label in events]
    path = Path(path)
    to_mne_raw(stream, markers).save(path, overwrite=True, verbose="error")
    return path
