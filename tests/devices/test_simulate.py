"""The simulator's generative model: reproducible, chunk-invariant, with known ground truth."""

from dataclasses import replace

import numpy as np
import pytest
from scipy import signal

from rtbci.devices.simulate import PROFILES, Realism, SignalModel, get_profile


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_are_complete(name):
    p = get_profile(name)
    n = len(p.ch_names)
    assert n == {"eeg64": 64, "meg306": 306, "seeg128": 128}[name]
    assert len(set(p.ch_names)) == n and len(p.ch_types) == len(p.ch_units) == n
    assert p.positions.shape == (n, 3) and np.isfinite(p.positions).all()
    assert p.srate == (2048.0 if name == "seeg128" else 1000.0)


def test_meg306_is_neuromag_like():
    p = get_profile("meg306")
    assert p.ch_types.count("mag") == 102 and p.ch_types.count("grad") == 204
    assert "MEG0111" in p.ch_names


def test_eeg64_uses_10_20_names():
    assert {"Cz", "Oz", "Fp1", "C3", "C4"} <= set(get_profile("eeg64").ch_names)


def test_output_is_reproducible_and_independent_of_chunking():
    busy = replace(Realism(), blink_rate=2.0, muscle_rate=2.0)  # artefacts across chunk edges
    whole, events = SignalModel(get_profile("eeg64"), seed=5, realism=busy).next(6000)
    model = SignalModel(get_profile("eeg64"), seed=5, realism=busy)
    parts, part_events = [], []
    for n in (1, 13, 986, 3000, 2000):
        data, ev = model.next(n)
        parts.append(data)
        part_events += ev
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert part_events == events
    other, _ = SignalModel(get_profile("eeg64"), seed=6, realism=busy).next(6000)
    assert not np.array_equal(other, whole)


def test_background_has_1_over_f_spectrum_and_alpha_peak():
    p = get_profile("eeg64")
    data, _ = SignalModel(p, seed=1, snr=0).next(60_000)
    freqs, psd = signal.welch(data[:, p.ch_names.index("Oz")], fs=p.srate, nperseg=4000)
    band = lambda lo, hi: psd[(freqs >= lo) & (freqs < hi)].mean()  # noqa: E731
    assert band(2, 4) > 3 * band(30, 40)  # 1/f: more power at low frequencies
    assert band(9.5, 10.5) > 5 * band(7, 8)  # the alpha peak
    assert band(49.5, 50.5) > 5 * band(45, 48)  # mains


def test_evoked_responses_follow_the_class_patterns():
    p = get_profile("eeg64")
    model = SignalModel(p, seed=2, snr=2.0, classes=("a", "b", "c"))
    data, events = model.next(120_000)
    length = len(model.waveform)
    for k, label in enumerate(("a", "b", "c")):
        onsets = [s for s, lab in events if lab == label and s + length <= len(data)]
        assert len(onsets) > 10
        erp = np.mean([data[s:s + length] for s in onsets], axis=0)  # (time, channels)
        # project the average on the waveform: recovers this class's spatial pattern
        pattern = model.waveform @ erp / (model.waveform @ model.waveform)
        r = np.corrcoef(pattern, model.patterns[k])[0, 1]
        assert r > 0.9, f"class {label}: correlation with its pattern {r:.2f}"
    assert {lab for _, lab in events} == {"a", "b", "c"}
    gaps = np.diff([s for s, _ in events]) / p.srate
    assert gaps.min() >= 1.25 and gaps.max() <= 1.75


def test_save_writes_a_labelled_fif_that_mne_reads(tmp_path):
    import mne

    from rtbci.cli import main

    path = tmp_path / "sim_raw.fif"
    assert main(["simulate", "--save", str(path), "--duration", "12", "--seed", "3",
                 "--snr", "2", "--classes", "a,b,c"]) == 0
    raw = mne.io.read_raw_fif(path, preload=True, verbose="error")
    data, events = SignalModel(get_profile("eeg64"), seed=3, snr=2.0,
                               classes=("a", "b", "c")).next(12_000)
    np.testing.assert_allclose(raw.get_data().T * 1e6, data, rtol=1e-5, atol=1e-4)
    assert list(raw.annotations.description) == [f"stim/{label}" for _, label in events]
    np.testing.assert_allclose(raw.annotations.onset, [s / 1000 for s, _ in events])
    assert raw.get_montage() is not None and raw.ch_names[:2] == ["Fp1", "AF7"]


def only(**fields) -> Realism:
    """A Realism with every term off but ``fields``."""
    return replace(Realism.off(), **fields)


def term(name: str, profile: str = "eeg64", seconds: float = 60.0, **fields) -> np.ndarray:
    """One Realism term alone: the model with it minus the model without (same seed)."""
    p = get_profile(profile)
    n = int(seconds * p.srate)
    with_it, _ = SignalModel(p, seed=7, snr=0, realism=only(**fields)).next(n)
    without, _ = SignalModel(p, seed=7, snr=0, realism=Realism.off()).next(n)
    return with_it.astype(np.float64) - without


def test_realism_is_on_by_default_and_seeded():
    p = get_profile("eeg64")
    default, _ = SignalModel(p, seed=3).next(5000)
    clean, _ = SignalModel(p, seed=3, realism=Realism.off()).next(5000)
    assert SignalModel(p).realism == Realism() and Realism().sensor_noise > 0
    assert not np.array_equal(default, clean)
    np.testing.assert_array_equal(default, SignalModel(p, seed=3).next(5000)[0])


def test_sensor_noise_is_white_and_independent_per_channel():
    p = get_profile("eeg64")
    e = term("sensor_noise", seconds=20, sensor_noise=0.3)
    rms = np.sqrt(np.mean(e**2, axis=0)) / p.noise_rms
    np.testing.assert_allclose(rms, 0.3, rtol=0.05)
    corr = np.corrcoef(e.T)[np.triu_indices(64, 1)]
    assert np.abs(corr).max() < 0.05  # independent channels
    freqs, psd = signal.welch(e[:, 0], fs=p.srate, nperseg=1000)
    assert 0.7 < psd[(freqs > 5) & (freqs < 50)].mean() / psd[freqs > 300].mean() < 1.4  # flat


def test_drift_is_slow_per_channel_and_bounded():
    p = get_profile("eeg64")
    d = term("drift", seconds=200, drift=0.5)
    rms = np.sqrt(np.mean(d**2, axis=0)) / p.noise_rms
    assert 0.25 < np.median(rms) < 0.75 and rms.max() < 1.5  # leaky: it does not wander off
    freqs, psd = signal.welch(d[:, 10], fs=p.srate, nperseg=100_000)
    assert psd[freqs < 0.5].sum() > 0.9 * psd.sum()  # below 0.5 Hz (1/f² above 0.03 Hz)
    assert np.abs(np.corrcoef(d.T)[np.triu_indices(64, 1)]).mean() < 0.3  # per channel


def test_blinks_are_frontal_slow_and_about_as_frequent_as_asked():
    p = get_profile("eeg64")
    b = term("blinks", seconds=100, blink_rate=0.2, blink_amplitude=8.0)
    front, back = b[:, p.ch_names.index("Fpz")], b[:, p.ch_names.index("Oz")]
    assert 0.7 * 8 * 10 <= front.max() <= 1.3 * 8 * 10  # µV: 8 σ × 0.7–1.3
    assert np.abs(back).max() < 0.05 * front.max()  # decays away from the eyes
    peaks, _ = signal.find_peaks(front, height=0.5 * front.max(), distance=200)
    assert 10 <= len(peaks) <= 30  # 0.2 / s over 100 s (Poisson, 0.5 s apart)
    freqs, psd = signal.welch(front, fs=p.srate, nperseg=4000)
    assert psd[freqs < 5].sum() > 0.9 * psd.sum()  # slow


def test_meg_blinks_reach_the_frontal_magnetometers_only():
    p = get_profile("meg306")
    b = term("blinks", "meg306", seconds=30, blink_rate=0.5, blink_amplitude=8.0)
    peak = np.abs(b).max(axis=0)
    grads = np.array([t == "grad" for t in p.ch_types])
    assert peak[grads].max() == 0 and peak[~grads].max() > 0
    front = p.positions[:, 1] > np.percentile(p.positions[:, 1], 80)
    assert peak[~grads & front].mean() > 5 * peak[~grads & ~front].mean()


def test_muscle_bursts_are_high_frequency_on_temporal_channels():
    p = get_profile("eeg64")
    m = term("muscle", seconds=100, muscle_rate=0.2, muscle_amplitude=3.0)
    rms = np.sqrt(np.mean(m**2, axis=0))
    temporal = [p.ch_names.index(n) for n in ("T7", "T8")]
    assert rms[temporal].min() > 20 * rms[p.ch_names.index("Cz")]
    freqs, psd = signal.welch(m[:, temporal[0]], fs=p.srate, nperseg=1000)
    band = psd[(freqs >= 20) & (freqs <= 100)].sum()
    assert band > 0.8 * psd.sum()  # 20–100 Hz
    active = np.abs(m[:, temporal]).max(axis=1) > 0
    assert 0.05 < active.mean() < 0.3  # bursts, not a constant hum


def test_trials_vary_in_amplitude_and_latency():
    p = get_profile("eeg64")
    realism = only(amplitude_jitter=0.3, latency_jitter_s=0.02)
    n = 200_000
    model = SignalModel(p, seed=2, snr=2.0, classes=("a",), realism=realism)
    data, events = model.next(n)
    background, _ = SignalModel(p, seed=2, snr=0.0, classes=("a",), realism=realism).next(n)
    evoked = data.astype(np.float64) - background  # same seed: the responses alone
    wave, pattern, half = model.waveform, model.patterns[0], len(model.waveform) // 2
    gains, lags = [], []
    for s, _ in events:
        if half <= s <= n - 3 * half:
            trace = evoked[s - half:s + 3 * half] @ pattern  # g · 2σ · |pattern|² · w(t − δ)
            xc = np.correlate(trace, wave, mode="valid")  # lags −half … +half
            lag = int(np.argmax(xc))
            gains.append(xc[lag] / (wave @ wave) / (2 * 10.0) / (pattern @ pattern))
            if gains[-1] > 0.2:  # a latency is measurable
                lags.append((lag - half) / p.srate)
    assert len(lags) > 100
    assert 0.012 < np.std(lags) < 0.03 and abs(np.mean(lags)) < 0.005  # N(0, 20 ms)
    assert 0.2 < np.std(gains) < 0.4 and 0.9 < np.mean(gains) < 1.1  # 1 + 0.3 N(0, 1)
