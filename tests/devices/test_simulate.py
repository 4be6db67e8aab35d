"""The simulator's generative model: reproducible, chunk-invariant, with known ground truth."""

import numpy as np
import pytest
from scipy import signal

from rtbci.devices.simulate import PROFILES, SignalModel, get_profile


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
    whole, events = SignalModel(get_profile("eeg64"), seed=5).next(6000)
    model = SignalModel(get_profile("eeg64"), seed=5)
    parts, part_events = [], []
    for n in (1, 13, 986, 3000, 2000):
        data, ev = model.next(n)
        parts.append(data)
        part_events += ev
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert part_events == events
    other, _ = SignalModel(get_profile("eeg64"), seed=6).next(6000)
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
