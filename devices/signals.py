"""The simulated signal: a generative model of EEG/MEG/sEEG with known ground truth.

Generative model (per profile; all of it seeded, so a seed reproduces the stream exactly)
----------------------------------------------------------------------------------------
x(t) = M · p(t) + a(t) · alpha + l(t) · line
       + Σ_trials g_k · snr · σ · w(t − t_k − δ_k) · pattern[c_k]
       + e(t) + d(t) + blinks(t) + muscle(t)

- ``p(t)``: independent pink (1/f) noise per channel (white noise through a 3-pole 1/f
  filter), mixed by ``M``, a row-normalised Gaussian kernel of sensor distances (8 cm wide:
  volume conduction), scaled to ``σ`` RMS (``Profile.noise_rms``): the background.
- ``alpha``: a 10 Hz rhythm, amplitude-modulated at 0.13 Hz, strongest over posterior
  sensors (weights ∝ exp(−distance to the back of the head / 6 cm)), RMS ``σ``.
- ``line``: 50 Hz mains, RMS 0.1 ``σ`` on every channel.
- Trials: a marker ``stim/<class>`` every 1.25–1.75 s (uniform), class drawn uniformly from
  ``classes``. Each class ``c`` has a fixed smooth random spatial pattern (unit RMS over
  channels, seeded by ``subject``; noise and trials are seeded by ``seed``) and the response
  waveform ``w(τ) = sin(2π·4 Hz·τ)·exp(−τ/0.15 s)`` for 0 ≤ τ < 0.6 s, normalised to unit
  RMS over that 0.6 s. ``snr`` is therefore the ratio of the evoked response's RMS to the
  background's RMS ``σ`` over the response window. Each trial varies (:class:`Realism`): a
  gain ``g_k`` (mean 1) and a latency ``δ_k`` after its marker.
- :class:`Realism` (on by default): ``e(t)`` independent white sensor noise per channel,
  ``d(t)`` a slow drift per channel (a leaky random walk, < 0.5 Hz), eye blinks (slow
  frontal deflections decaying with the distance from the eyes; MEG: magnetometers) and
  muscle bursts (20–100 Hz on the temporal sensors) at random times.

:mod:`rtbci.devices.simulate` publishes it as an LSL stream; :mod:`rtbci.devices.tasks`
builds the decoder families' task signals on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import signal

from rtbci.stream import StreamInfo

PROFILES = ("eeg64", "meg306", "seeg128")
DEFAULT_CLASSES = ("left", "right")
MARKER_PREFIX = "stim/"

# Pink-noise filter (Paul Kellet's 3-pole approximation of 1/f).
_PINK_B = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
_PINK_A = [1.0, -2.494956002, 2.017265875, -0.522189400]


@dataclass(frozen=True)
class Profile:
    """A simulated device: channel layout, rate, and background noise level (in its units)."""

    name: str
    stream_type: str
    srate: float
    ch_names: tuple[str, ...]
    ch_types: tuple[str, ...]
    ch_units: tuple[str, ...]
    positions: np.ndarray  # (n_channels, 3) metres
    noise_rms: np.ndarray  # (n_channels,) background RMS in the channel's unit


@cache
def get_profile(name: str) -> Profile:
    """``eeg64`` (BioSemi 64 10-20 cap, 1 kHz, µV), ``meg306`` (Neuromag-like 102 magnetometers
    + 204 gradiometers, 1 kHz, fT and fT/cm) or ``seeg128`` (8 shafts × 16 contacts, 2048 Hz, µV).
    """
    if name == "eeg64":
        return _eeg64()
    if name == "meg306":
        return _meg306()
    if name == "seeg128":
        return _seeg128()
    raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")


def _eeg64() -> Profile:
    import mne

    montage = mne.channels.make_standard_montage("biosemi64")
    pos = montage.get_positions()["ch_pos"]
    names = tuple(montage.ch_names)
    return Profile("eeg64", "EEG", 1000.0, names, ("eeg",) * 64, ("microvolts",) * 64,
                   np.array([pos[n] for n in names]), np.full(64, 10.0))


def _meg306() -> Profile:
    import mne

    layout = mne.channels.read_layout("Vectorview-all")
    names = tuple(n.replace(" ", "") for n in layout.names)
    xy = layout.pos[:, :2] + layout.pos[:, 2:] / 2 - 0.5  # centre of each box, about ±0.5
    theta = np.hypot(*xy.T) * np.pi * 0.9  # azimuthal projection onto a 12 cm helmet
    phi = np.arctan2(xy[:, 1], xy[:, 0])
    r = 0.12
    positions = np.column_stack([r * np.sin(theta) * np.cos(phi),
                                 r * np.sin(theta) * np.sin(phi), r * np.cos(theta)])
    is_mag = np.array([n.endswith("1") for n in names])
    types = tuple("mag" if m else "grad" for m in is_mag)
    units = tuple("fT" if m else "fT/cm" for m in is_mag)
    return Profile("meg306", "MEG", 1000.0, names, types, units, positions,
                   np.where(is_mag, 200.0, 40.0))


def _seeg128() -> Profile:
    rng = np.random.default_rng(128)
    names, positions = [], []
    for shaft in "ABCDEFGH":
        entry = rng.uniform(-1, 1, 3) * np.array([0.06, 0.07, 0.02]) + [0, 0, 0.05]
        direction = -entry / np.linalg.norm(entry)
        for contact in range(16):
            names.append(f"{shaft}{contact + 1}")
            positions.append(entry + direction * 0.0035 * contact)
    return Profile("seeg128", "sEEG", 2048.0, tuple(names), ("seeg",) * 128,
                   ("microvolts",) * 128, np.array(positions), np.full(128, 30.0))


def stream_info(profile: Profile, name: str, source_id: str) -> StreamInfo:
    return StreamInfo(name=name, type=profile.stream_type, source_id=source_id,
                      srate=profile.srate, ch_names=profile.ch_names, ch_types=profile.ch_types,
                      ch_units=profile.ch_units, positions=profile.positions)


@dataclass(frozen=True)
class Realism:
    """What makes the simulator less clean than the linear model: all on by default.

    Amplitudes are in units of the profile's background RMS ``σ``; set a field to 0 to
    remove that term (``Realism.off()`` removes all).
    """

    sensor_noise: float = 0.3  # independent white noise per channel, RMS × σ
    drift: float = 0.5  # slow drift per channel, RMS × σ
    drift_tau_s: float = 5.0  # the drift's time constant (a leaky random walk: corner 0.03 Hz)
    blink_rate: float = 0.2  # eye blinks per second (Poisson, ≥ 0.5 s apart)
    blink_amplitude: float = 8.0  # peak at the sensors nearest the eyes, × σ (× 0.7–1.3)
    muscle_rate: float = 0.1  # muscle bursts per second (Poisson, ≥ 0.5 s apart)
    muscle_amplitude: float = 3.0  # RMS at the most temporal sensors, × σ (× 0.5–1.5)
    amplitude_jitter: float = 0.3  # a trial's response gain: 1 + this × N(0, 1), ≥ 0
    latency_jitter_s: float = 0.02  # a trial's response latency after its marker: N(0, this)

    @classmethod
    def off(cls) -> Realism:
        """The clean linear model: no sensor noise, drift, artefacts or trial variability."""
        return cls(sensor_noise=0.0, drift=0.0, blink_rate=0.0, blink_amplitude=0.0,
                   muscle_rate=0.0, muscle_amplitude=0.0, amplitude_jitter=0.0,
                   latency_jitter_s=0.0)

    def trial_gain(self, rng: np.random.Generator) -> float:
        return max(0.0, 1.0 + self.amplitude_jitter * rng.standard_normal())

    def trial_shift(self, rng: np.random.Generator, srate: float) -> int:
        """A trial's latency jitter in samples."""
        return int(round(self.latency_jitter_s * rng.standard_normal() * srate))


DEFAULT_REALISM = Realism()

BLINK_S = 0.4  # length of a blink
MUSCLE_S = (0.2, 1.0)  # length of a muscle burst, uniform
MUSCLE_BAND = (20.0, 100.0)  # Hz


class Overlays:
    """Transient signals, each ``(onset sample, values (length, n_channels))``, added to the
    chunks they overlap: an event generated whole at its onset, output chunk by chunk."""

    def __init__(self):
        self.active: list[tuple[int, np.ndarray]] = []

    def add(self, onset: int, values: np.ndarray) -> None:
        self.active.append((onset, values))

    def apply(self, x: np.ndarray, start: int) -> None:
        """Add the overlapping parts to ``x`` (n, n_channels), whose first sample is ``start``."""
        stop = start + len(x)
        for onset, values in self.active:
            lo, hi = max(start, onset), min(stop, onset + len(values))
            if lo < hi:
                x[lo - start:hi - start] += values[lo - onset:hi - onset]
        self.active = [(o, v) for o, v in self.active if o + len(v) > stop]


def shifted(wave: np.ndarray, shift: int) -> np.ndarray:
    """``wave`` delayed by ``shift`` samples (advanced if negative), zero-filled, same length."""
    out = np.zeros_like(wave)
    shift = int(np.clip(shift, -len(wave), len(wave)))
    if shift >= 0:
        out[shift:] = wave[:len(wave) - shift]
    else:
        out[:shift] = wave[-shift:]
    return out


class Artefacts:
    """Sensor noise, drifts, blinks and muscle bursts of one session (:class:`Realism`),
    added chunk by chunk; chunking does not change them."""

    def __init__(self, profile: Profile, realism: Realism, seeds: list[np.random.SeedSequence]):
        self.profile, self.realism = profile, realism
        fs, n_ch, sigma = profile.srate, len(profile.ch_names), profile.noise_rms
        self._sensor_rng, self._drift_rng, self._blink_rng, self._muscle_rng = (
            np.random.default_rng(s) for s in seeds)
        self._decay = np.exp(-1.0 / (realism.drift_tau_s * fs))
        self._drift_gain = realism.drift * sigma * np.sqrt(1 - self._decay**2)
        self._drift = self._drift_rng.standard_normal(n_ch) * realism.drift * sigma  # stationary
        self.blink_pattern = blink_pattern(profile) * sigma  # (n_ch,) per unit of σ
        tau = np.arange(int(round(BLINK_S * fs))) / fs
        wave = (tau / 0.1) ** 2 * np.exp(2 - 2 * tau / 0.1)  # peaks at 1 after 100 ms
        self.blink_wave = wave * np.hanning(len(wave))
        self.muscle_patterns = temporal_patterns(profile) * sigma  # (2, n_ch)
        band = (MUSCLE_BAND[0], min(MUSCLE_BAND[1], 0.45 * fs))
        self._muscle_sos = signal.butter(4, band, btype="band", fs=fs, output="sos")
        self._overlays = Overlays()
        self._next_blink = self._gap(self._blink_rng, realism.blink_rate, 0)
        self._next_muscle = self._gap(self._muscle_rng, realism.muscle_rate, 0)

    def _gap(self, rng: np.random.Generator, rate: float, after: int) -> float:
        if rate <= 0:
            return np.inf
        return after + int(round((0.5 + rng.exponential(1.0 / rate)) * self.profile.srate))

    def add(self, x: np.ndarray, start: int) -> None:
        """Add the artefacts of samples ``start … start + len(x)`` to ``x`` (n, n_channels)."""
        r, sigma, stop = self.realism, self.profile.noise_rms, start + len(x)
        if r.sensor_noise:
            x += self._sensor_rng.standard_normal(x.shape) * (r.sensor_noise * sigma)
        if r.drift:
            steps = self._drift_rng.standard_normal(x.shape) * self._drift_gain
            drift, _ = signal.lfilter([1.0], [1.0, -self._decay], steps, axis=0,
                                       zi=(self._decay * self._drift)[None])
            self._drift = drift[-1]
            x += drift
        while self._next_blink < stop:
            gain = r.blink_amplitude * self._blink_rng.uniform(0.7, 1.3)
            self._overlays.add(int(self._next_blink),
                               np.outer(self.blink_wave, gain * self.blink_pattern))
            self._next_blink = self._gap(self._blink_rng, r.blink_rate, self._next_blink)
        while self._next_muscle < stop:
            self._overlays.add(int(self._next_muscle), self._muscle_burst())
            self._next_muscle = self._gap(self._muscle_rng, r.muscle_rate, self._next_muscle)
        self._overlays.apply(x, start)

    def _muscle_burst(self) -> np.ndarray:
        """(length, n_channels): band-limited noise under a Hann envelope on one or both
        temporal sides, RMS ``muscle_amplitude × σ`` (× 0.5–1.5) at the most lateral sensors."""
        rng, fs = self._muscle_rng, self.profile.srate
        n = int(round(rng.uniform(*MUSCLE_S) * fs))
        side = rng.integers(3)  # left, right, both
        weights = self.muscle_patterns.sum(0) if side == 2 else self.muscle_patterns[side]
        gain = self.realism.muscle_amplitude * rng.uniform(0.5, 1.5)
        noise = signal.sosfilt(self._muscle_sos, rng.standard_normal((n, len(weights))), axis=0)
        noise /= np.sqrt(np.mean(noise**2)) + 1e-12
        envelope = np.hanning(n) * np.sqrt(8 / 3)  # unit RMS
        return noise * envelope[:, None] * (gain * weights)


ARTEFACT_WEIGHT = {"eeg": 1.0, "mag": 1.0, "grad": 0.0, "seeg": 0.1}


def _mag_weight(profile: Profile) -> np.ndarray:
    """How much of a blink or muscle burst each channel type sees: all of it on EEG and
    magnetometers, nothing on planar gradiometers (blind to such distant sources), a tenth on
    depth (sEEG) contacts."""
    return np.array([ARTEFACT_WEIGHT[t] for t in profile.ch_types])


def blink_pattern(profile: Profile) -> np.ndarray:
    """(n_channels,) a blink's spatial spread: ``exp(−distance to the eyes / 4 cm)``, 1 at
    the nearest sensor, × the channel type's :data:`ARTEFACT_WEIGHT`. The eyes: 2 cm in
    front of the frontmost sensor, 3 cm below it (+y is anterior)."""
    pos = profile.positions
    front = pos[np.argmax(pos[:, 1])]
    eyes = np.array([0.0, front[1] + 0.02, front[2] - 0.03])
    w = np.exp(-np.linalg.norm(pos - eyes, axis=1) / 0.04)
    return w / w.max() * _mag_weight(profile)


def temporal_patterns(profile: Profile) -> np.ndarray:
    """(2, n_channels): left and right temporal muscle, ``exp(−distance / 3 cm)`` from the
    most lateral sensor on each side (±x), 1 there (× :data:`ARTEFACT_WEIGHT`)."""
    pos, weight = profile.positions, _mag_weight(profile)
    out = []
    for side in (np.argmin(pos[:, 0] * weight), np.argmax(pos[:, 0] * weight)):
        w = np.exp(-np.linalg.norm(pos - pos[side], axis=1) / 0.03)
        out.append(w * weight)
    return np.array(out)


class SignalModel:
    """The generative model above, producing consecutive samples chunk by chunk.

    Output does not depend on how it is chunked: ``next(a)`` then ``next(b)`` equals
    ``next(a + b)``.

    Parameters
    ----------
    profile : Profile
    seed : int
        Seeds the session: background noise and the trial sequence.
    snr : float
        Evoked-response RMS over background RMS (0 = background only).
    classes : sequence of str
    subject : int
        Seeds the class patterns: sessions of one subject share them, as a decoder
        trained on one session expects.
    realism : Realism
        Sensor noise, drifts, artefacts and trial-to-trial variability (default: all on).
    """

    RESPONSE_S = 0.6
    ISI_S = (1.25, 1.75)

    def __init__(self, profile: Profile, seed: int = 0, snr: float = 1.0,
                 classes: tuple[str, ...] = DEFAULT_CLASSES, subject: int = 0,
                 realism: Realism = DEFAULT_REALISM):
        self.profile, self.snr, self.classes = profile, float(snr), tuple(classes)
        self.realism = realism
        n_ch, fs = len(profile.ch_names), profile.srate
        seeds = np.random.SeedSequence(seed).spawn(6)
        self._noise_rng = np.random.default_rng(seeds[0])
        self._trial_rng = np.random.default_rng(seeds[1])
        self.artefacts = Artefacts(profile, realism, seeds[2:])
        layout_rng = np.random.default_rng(np.random.SeedSequence([subject, 0x5EB]))
        pos = profile.positions
        dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        mix = np.exp(-(dist**2) / (2 * 0.08**2))
        self.mixing = mix / np.linalg.norm(mix, axis=1, keepdims=True)  # (n_ch, n_ch)
        self._pink_sos = signal.tf2sos(_PINK_B, _PINK_A)
        self._pink_gain = self._pink_rms_gain()
        self._pink_zi = np.zeros((self._pink_sos.shape[0], 2, n_ch))
        back = pos[:, 1].min()
        self.alpha_pattern = np.exp(-(pos[:, 1] - back) / 0.06)
        self.alpha_pattern /= np.sqrt(np.mean(self.alpha_pattern**2))
        smooth = layout_rng.standard_normal((len(self.classes), n_ch)) @ self.mixing.T
        self.patterns = smooth / np.sqrt(np.mean(smooth**2, axis=1, keepdims=True))
        tau = np.arange(int(round(self.RESPONSE_S * fs))) / fs
        wave = np.sin(2 * np.pi * 4.0 * tau) * np.exp(-tau / 0.15)
        self.waveform = wave / np.sqrt(np.mean(wave**2))
        self.sample = 0  # index of the next sample
        self._next_trial = self._draw_isi()
        self._responses = Overlays()

    def _pink_rms_gain(self) -> float:
        _, h = signal.sosfreqz(self._pink_sos, worN=4096)
        return float(np.sqrt(np.mean(np.abs(h) ** 2)))

    def _draw_isi(self) -> int:
        return int(round(self._trial_rng.uniform(*self.ISI_S) * self.profile.srate))

    def next(self, n: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """The next ``n`` samples.

        Returns
        -------
        data : array, shape (n, n_channels), float32, in the profile's units
        events : list of (sample index, class label) for trials starting in this chunk
        """
        p, fs, start = self.profile, self.profile.srate, self.sample
        white = self._noise_rng.standard_normal((n, len(p.ch_names)))
        pink, self._pink_zi = signal.sosfilt(self._pink_sos, white, axis=0, zi=self._pink_zi)
        x = (pink @ self.mixing.T) * (p.noise_rms / self._pink_gain)
        t = (start + np.arange(n)) / fs
        alpha = np.sqrt(2) * np.sin(2 * np.pi * 10 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.13 * t))
        x += np.outer(alpha, self.alpha_pattern * p.noise_rms)
        x += np.outer(0.1 * np.sqrt(2) * np.sin(2 * np.pi * 50 * t), p.noise_rms)
        self.artefacts.add(x, start)
        events = self._start_trials(start + n)
        self._responses.apply(x, start)
        self.sample += n
        return x.astype(np.float32), events

    def _start_trials(self, stop: int) -> list[tuple[int, str]]:
        """Draw the trials starting before ``stop``: class, gain, latency; queue their
        responses (nothing when ``snr`` is 0)."""
        events, rng = [], self._trial_rng
        while self._next_trial < stop:
            label = int(rng.integers(len(self.classes)))
            gain = self.realism.trial_gain(rng)
            wave = shifted(self.waveform, self.realism.trial_shift(rng, self.profile.srate))
            if self.snr:
                amplitude = gain * self.snr * self.profile.noise_rms
                self._responses.add(self._next_trial,
                                    np.outer(wave, self.patterns[label] * amplitude))
            events.append((self._next_trial, self.classes[label]))
            self._next_trial += self._draw_isi()
        return events
