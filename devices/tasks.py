"""Simulated tasks with ground truth for each decoder family (training, tests, the demo).

Every trial presents an *item* — a class (``motor-gnn``: the previous shot's outcome;
``seeg-words``: a word), an image (``image-retrieval``) or a 3 s speech segment (``speech``).
Each item has a latent embedding ``z`` (``LATENT_DIM`` numbers; for speech a time series
``z(t)``). The brain's response is a fixed forward mix of ``N_SOURCES`` sources driven by it::

    response(t) = Σ_k (B z)_k · h_k(t − τ) · pattern_k     (speech: (B z(t − 0.15 s)) ∗ trf_k)

- ``pattern_k``: a smooth spatial pattern (Gaussian of 3 cm around a random sensor; subject
  seed; for ``seeg-words`` a contact of shaft A, the "language area"),
  ``h_k``: a damped oscillation (3–12 Hz, latency 50–250 ms, 150 ms decay),
  ``B``: a fixed random (N_SOURCES × LATENT_DIM) mix. Speech: ``z(t)`` is low-passed at
  6 Hz (an envelope-like feature) and each source tracks it through a temporal response
  function ``trf_k(τ) = ±(τ/τ_k)·exp(1 − τ/τ_k)`` peaking at ``τ_k`` = 50–150 ms, as speech
  tracking is modelled in MEG/EEG (TRFs). Each trial varies (:class:`~rtbci.devices.
  simulate.Realism`): a latency jitter ``τ`` ~ N(0, 20 ms), a gain 1 + 0.3 N(0, 1), and each
  source its own gain 1 + 0.3 N(0, 1).
- the background is :class:`~rtbci.devices.signals.SignalModel` with no evoked response
  (pink noise with volume conduction, alpha, mains, and its sensor noise, drifts, blinks and
  muscle bursts); responses are scaled so that their RMS over channels and the response
  window is ``snr`` times the background RMS ``σ``, on average.
- targets (retrieval families): each item's *target embedding* — what a lab would take from
  an image or speech model — is ``tanh(W z)`` (``TARGET_DIM`` numbers; for speech a
  ``(TARGET_DIM, 360)`` map at 120 Hz over the decoding window −0.5…2.5 s). ``W`` is fixed
  by ``subject``-independent seed 0: the same "image model" for everyone.

A trial's marker is ``<prefix>/<item label>`` at the response onset, e.g. ``word/w07``.
Items are drawn uniformly (from all items, or from ``items`` when given: the demo streams
only the items its retrieval checkpoints never trained on), so a held-out set of *items* is
a zero-shot test.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rtbci.devices.signals import (
    DEFAULT_REALISM,
    Overlays,
    Realism,
    SignalModel,
    get_profile,
    stream_info,
)
from rtbci.errors import RtbciError

__all__ = ["TASKS", "TaskSignal", "TaskSpec", "save_task"]

LATENT_DIM = 8
N_SOURCES = 6
TARGET_DIM = 32
SPEECH_RATE = 120.0  # Hz, the speech targets' rate (Défossez et al.)
SPEECH_WINDOW = (-0.5, 2.5)  # s around a segment's onset: the targets' span


@dataclass(frozen=True)
class TaskSpec:
    """A family's simulated task: device, trial timing and items."""

    profile: str
    srate: float  # simulation rate in Hz (the profile's layout at this rate)
    prefix: str  # marker prefix
    items: int  # number of distinct items (classes, words, images, segments)
    trials: int  # default number of trials
    isi_s: tuple[float, float]  # trial onset asynchrony, uniform
    response_s: float  # length of a response
    retrieval: bool = False
    time_resolved: bool = False  # speech: latent and targets vary over time
    labels: tuple[str, ...] = ()
    sources_near: str = "*"  # glob of the channels the sources are centred on


TASKS = {
    "motor-gnn": TaskSpec("eeg64", 500.0, "outcome", 2, 240, (1.5, 2.0), 0.8,
                          labels=("success", "failure")),
    "seeg-words": TaskSpec("seeg128", 1000.0, "word", 8, 320, (1.2, 1.6), 0.8,
                           sources_near="A*"),  # one shaft in a "language area"
    "image-retrieval": TaskSpec("eeg64", 500.0, "image", 100, 400, (1.2, 1.5), 0.8,
                                retrieval=True),
    "speech": TaskSpec("meg306", 240.0, "segment", 100, 200, (3.2, 3.6), 3.0,
                       retrieval=True, time_resolved=True),
}


def item_labels(spec: TaskSpec) -> list[str]:
    if spec.labels:
        return list(spec.labels)
    width = len(str(spec.items - 1))
    return [f"{spec.prefix[0]}{i:0{width}d}" for i in range(spec.items)]


def check_items(family: str | None, items: list[str]) -> None:
    """Refuse an ``items`` list that is empty, has no task, or names no item of the task."""
    if family not in TASKS:
        raise RtbciError("items: only with a task (a simulated decoder-family task)")
    labels = item_labels(TASKS[family])
    unknown = sorted(set(items) - set(labels))
    if unknown or not items:
        raise RtbciError(f"items: {', '.join(unknown) or 'empty list'}: not items of the "
                         f"{family} task ({labels[0]} … {labels[-1]})")


class TaskSignal:
    """Background plus item-driven responses, chunk by chunk (as :class:`SignalModel`).

    Parameters
    ----------
    family : str
        A key of :data:`TASKS`.
    snr : float
        Response RMS over background RMS.
    seed : int
        Session seed: background noise, trial sequence, jitter.
    subject : int
        Subject seed: spatial patterns and source kernels (the same for a subject's sessions).
    srate : float | None
        Simulation rate (default: the task's).
    items : sequence of str | None
        Draw trials only from these item labels (default: all items).
    realism : Realism
        The background's sensor noise, drifts and artefacts, and the trials' variability.
    """

    def __init__(self, family: str, snr: float = 1.0, seed: int = 0, subject: int = 0,
                 srate: float | None = None, items: list[str] | None = None,
                 realism: Realism = DEFAULT_REALISM):
        if family not in TASKS:  # linear, riemann, eegnet train on any recording
            raise RtbciError(f"--family: no simulated task for {family!r} (tasks: "
                             f"{', '.join(TASKS)})")
        self.family, self.spec, self.snr = family, TASKS[family], float(snr)
        self.realism = realism
        self.profile = replace(get_profile(self.spec.profile), srate=srate or self.spec.srate)
        self.background = SignalModel(self.profile, seed=seed, snr=0.0, subject=subject,
                                      realism=realism)
        self.labels = item_labels(self.spec)
        self.drawn = self._item_indices(items)
        rng_subject = np.random.default_rng(np.random.SeedSequence([subject, 0x7A5C]))
        rng_items = np.random.default_rng(np.random.SeedSequence([0, 0x17E5]))
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7121]))
        fs = self.profile.srate
        pos = self.profile.positions
        near = [i for i, name in enumerate(self.profile.ch_names)
                if fnmatch.fnmatchcase(name, self.spec.sources_near)]
        centres = pos[rng_subject.choice(near, N_SOURCES, replace=len(near) < N_SOURCES)]
        d = np.linalg.norm(pos[None] - centres[:, None], axis=-1)
        self.patterns = np.exp(-(d**2) / (2 * 0.03**2))  # (sources, channels)
        self.patterns /= np.sqrt(np.mean(self.patterns**2, axis=1, keepdims=True))
        self.mix = rng_subject.standard_normal((N_SOURCES, LATENT_DIM)) / np.sqrt(LATENT_DIM)
        tau = np.arange(int(round(self.spec.response_s * fs))) / fs
        freq = rng_subject.uniform(3, 12, N_SOURCES)[:, None]
        lat = rng_subject.uniform(0.05, 0.25, N_SOURCES)[:, None]
        on = tau[None] >= lat
        self.kernels = on * np.sin(2 * np.pi * freq * (tau - lat)) * np.exp(-(tau - lat) / 0.15)
        if self.spec.time_resolved:  # speech tracking: a temporal response function per source
            peak = rng_subject.uniform(0.05, 0.15, N_SOURCES)[:, None]
            sign = rng_subject.choice([-1.0, 1.0], N_SOURCES)[:, None]
            trf = (tau / peak) * np.exp(1 - tau / peak) * (tau < 0.6)
            self.kernels = sign * trf
        self.latents = self._item_latents(rng_items)
        self.target_map = rng_items.standard_normal((TARGET_DIM, LATENT_DIM)) / np.sqrt(
            LATENT_DIM / 4)
        self.sample = 0
        self.events: list[tuple[int, str]] = []
        self.max_trials: int | None = None  # no trial starts after this many (None: no cap)
        self._next_trial = self._isi()
        self._responses = Overlays()
        self._scale = self.snr * self.profile.noise_rms / self._mean_response_rms()

    # --- items and responses --------------------------------------------------------------

    def _item_indices(self, items: list[str] | None) -> np.ndarray:
        """Indices of the items trials are drawn from."""
        if items is None:
            return np.arange(len(self.labels))
        check_items(self.family, items)
        return np.array([self.labels.index(label) for label in items])

    def _item_latents(self, rng: np.random.Generator) -> np.ndarray:
        """(items, LATENT_DIM), or (items, LATENT_DIM, n) time courses at the simulation rate."""
        spec = self.spec
        if not spec.time_resolved:
            return rng.standard_normal((spec.items, LATENT_DIM))
        from scipy import signal

        n = int(round(spec.response_s * self.profile.srate))
        sos = signal.butter(2, 6.0, fs=self.profile.srate, output="sos")
        white = rng.standard_normal((spec.items, LATENT_DIM, n + 200))
        z = signal.sosfiltfilt(sos, white, axis=-1)[..., 100:-100]
        return z / z.std(axis=-1, keepdims=True)

    def _source_drive(self, item: int, jitter: int) -> np.ndarray:
        """(sources, n_response) source time courses of one trial (before the kernel)."""
        z = self.latents[item]
        if not self.spec.time_resolved:
            return (self.mix @ z)[:, None] * np.roll(self.kernels, jitter, axis=1)
        from scipy import signal

        delay = int(round(0.15 * self.profile.srate)) + jitter
        drive = np.roll(self.mix @ z, delay, axis=1)
        drive[:, :max(delay, 0)] = 0.0
        return signal.fftconvolve(drive, self.kernels, axes=1)[:, :drive.shape[1]]

    def response(self, item: int, jitter: int = 0,
                 gain: float | np.ndarray = 1.0) -> np.ndarray:
        """A trial's response (n_response_samples, n_channels), before SNR scaling;
        ``gain``: one number or one per source."""
        drive = self._source_drive(item, jitter) * np.reshape(gain, (-1, 1))
        return drive.T @ self.patterns

    def _mean_response_rms(self) -> float:
        items = range(min(self.spec.items, 20))
        return float(np.mean([np.sqrt(np.mean(self.response(i) ** 2)) for i in items]))

    def targets(self) -> np.ndarray:
        """Target embeddings: (items, TARGET_DIM) or, for speech, (items, TARGET_DIM, 360)."""
        if not self.spec.time_resolved:
            return np.tanh(self.latents @ self.target_map.T).astype(np.float32)
        from scipy import signal

        fs = self.profile.srate
        z = signal.resample_poly(self.latents, int(SPEECH_RATE), int(fs), axis=-1)
        pre = int(round(-SPEECH_WINDOW[0] * SPEECH_RATE))
        n = int(round((SPEECH_WINDOW[1] - SPEECH_WINDOW[0]) * SPEECH_RATE))
        maps = np.zeros((self.spec.items, TARGET_DIM, n), np.float32)
        feats = np.tanh(np.einsum("dl,ilt->idt", self.target_map, z))
        maps[:, :, pre:] = feats[:, :, :n - pre]
        return maps

    # --- streaming ------------------------------------------------------------------------

    def _isi(self) -> int:
        return int(round(self._rng.uniform(*self.spec.isi_s) * self.profile.srate))

    def next(self, n: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """The next ``n`` samples (n, n_channels) float32 and the trials starting in them as
        ``(sample index, marker text)``."""
        x, _ = self.background.next(n)
        start, events, rng, real = self.sample, [], self._rng, self.realism
        while self._next_trial < start + n and (
                self.max_trials is None or len(self.events) + len(events) < self.max_trials):
            item = int(self.drawn[rng.integers(len(self.drawn))])
            jitter = real.trial_shift(rng, self.profile.srate)
            gains = real.trial_gain(rng) * np.array([real.trial_gain(rng)
                                                     for _ in range(N_SOURCES)])
            resp = (self._scale * self.response(item, jitter, gains)).astype(np.float32)
            self._responses.add(self._next_trial, resp)
            events.append((self._next_trial, f"{self.spec.prefix}/{self.labels[item]}"))
            self._next_trial += self._isi()
        self._responses.apply(x, start)
        self.sample += n
        self.events += events
        return x, events


def save_task(path: str | Path, family: str, snr: float = 1.0, seed: int = 0,
              subject: int = 0, trials: int | None = None,
              srate: float | None = None) -> tuple[Path, Path | None]:
    """Write a labelled recording of ``trials`` trials as FIF (MNE's writer, annotations =
    markers) and, for retrieval families, the targets next to it.

    Returns the FIF path and the targets path (``<stem>-targets.npy`` with the item labels in
    ``<stem>-targets.json``), or None.
    """
    import json

    from rtbci.devices.recording import RecordedStream, to_mne_raw

    task = TaskSignal(family, snr=snr, seed=seed, subject=subject, srate=srate)
    fs = task.profile.srate
    data = _record_trials(task, trials or task.spec.trials, tail_seconds(family))
    n = len(data)
    name = f"rtbci-{family}"
    info = stream_info(task.profile, name, f"rtbci-sim-{family}")
    markers = [(s / fs, text) for s, text in task.events]
    path = Path(path)
    to_mne_raw(RecordedStream(info, data, np.arange(n) / fs), markers).save(
        path, overwrite=True, verbose="error")
    if not task.spec.retrieval:
        return path, None
    stem = path.with_name(path.name.removesuffix(".gz").removesuffix(".fif"))
    targets = stem.with_name(stem.name + "-targets.npy")
    np.save(targets, task.targets())
    targets.with_suffix(".json").write_text(json.dumps(task.labels))
    return path, targets


TAIL_MARGIN_S = 0.5  # after the longest window: its filters' settling, a late marker


def tail_seconds(family: str) -> float:
    """Seconds kept after the last trial's onset: the longest of the response and the
    family's decoding window end (e.g. speech: 3 s), plus :data:`TAIL_MARGIN_S`."""
    from rtbci.models.families import FAMILIES

    window_end = FAMILIES[family].window[1] if family in FAMILIES else 0.0
    return max(TASKS[family].response_s, window_end) + TAIL_MARGIN_S


def _record_trials(task: TaskSignal, n_trials: int, tail_s: float) -> np.ndarray:
    """(n_samples, n_channels) float32 holding exactly ``n_trials`` trials, each with
    ``tail_s`` seconds after its onset: no window of the last one runs past the end."""
    fs, spec = task.profile.srate, task.spec
    task.max_trials = n_trials
    # first the expected length in one call (the same signal as before trials were capped),
    # then a second at a time until the last trial started
    chunks = [task.next(int((n_trials + 0.5) * np.mean(spec.isi_s) * fs + spec.response_s * fs))[0]]
    while len(task.events) < n_trials:
        chunks.append(task.next(int(round(fs)))[0])
    end = task.events[-1][0] + int(np.ceil(tail_s * fs))
    if end > task.sample:
        chunks.append(task.next(end - task.sample)[0])
    return np.concatenate(chunks)[:end]
