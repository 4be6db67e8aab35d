"""builtin:bandpower: values against scipy, classifier files, LDA on simulated data."""

import numpy as np
import pytest
from scipy import signal

from rtbci.devices.simulate import SignalModel, get_profile
from rtbci.errors import RtbciError
from rtbci.models.bandpower import BandPower, fit_lda


@pytest.mark.parametrize("bands, matmul", [
    ([(4, 8), (8, 13), (13, 30)], False),  # 52 bins of 0.5 Hz: the rfft
    ([(8, 13), (18, 24)], True),  # 22 bins: one matmul at the bins
])
def test_band_power_matches_scipy_periodogram(bands, matmul):
    fs, n = 250.0, 500
    t = np.arange(n) / fs
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    x[:, 1] += 5 * np.sin(2 * np.pi * 10 * t)  # alpha on channel 1
    x += np.float32(300.0)  # a DC offset: removed before the taper
    bp = BandPower(n, 3, fs, bands=bands)
    assert (bp._dft is not None) == matmul
    feats = bp(x).embedding.reshape(3, len(bands))  # (channel, band)
    freqs, pxx = signal.periodogram(x, fs=fs, window="hann", detrend="constant", axis=0,
                                    scaling="spectrum", return_onesided=False)
    for band, (lo, hi) in enumerate(bp.bands):
        sel = (freqs >= lo) & (freqs < hi)
        ref = np.log10(pxx[sel].sum(axis=0) * signal.get_window("hann", n).sum() ** 2)
        np.testing.assert_allclose(feats[:, band], ref, rtol=1e-4)
    alpha = bp.bands.index((8.0, 13.0))
    assert feats[1, alpha] > feats[0, alpha] + 1  # 10 Hz power shows up in channel 1's alpha


def test_classifier_gives_probabilities_for_its_labels(tmp_path):
    bp = BandPower(200, 2, 100.0, bands=[(1, 10), (10, 40)])
    path = tmp_path / "clf.npz"
    np.savez(path, coef=np.eye(2, 4), intercept=np.zeros(2), labels=np.array(["rest", "move"]))
    clf = BandPower(200, 2, 100.0, bands=[(1, 10), (10, 40)], classifier=path)
    window = np.random.default_rng(1).standard_normal((200, 2)).astype(np.float32)
    out = clf(window)
    assert clf.kind == "classes" and out.labels == ["rest", "move"]
    feats = bp.features(window)
    expected = np.exp(feats[:2] - feats[:2].max())
    np.testing.assert_allclose(out.probabilities, expected / expected.sum(), rtol=1e-5)


def test_bad_classifier_and_band_are_named(tmp_path):
    path = tmp_path / "wrong.npz"
    np.savez(path, coef=np.ones((2, 5)), intercept=np.zeros(2), labels=np.array(["a", "b"]))
    with pytest.raises(RtbciError, match=r"wrong.npz: coef has shape \(2, 5\), expected \(2, 6\)"):
        BandPower(100, 2, 100.0, classifier=path)
    with pytest.raises(RtbciError, match="not a bandpower classifier"):
        BandPower(100, 2, 100.0, classifier=tmp_path / "missing.npz")
    with pytest.raises(RtbciError, match=r"band \(40.2, 40.8\) Hz holds no frequency bin"):
        BandPower(100, 2, 100.0, bands=[(40.2, 40.8)])


def test_lda_on_bandpower_decodes_the_simulated_classes():
    p = get_profile("eeg64")
    model = SignalModel(p, seed=4, snr=1.0)
    data, events = model.next(240_000)  # 4 minutes, ~160 trials
    n = 600
    bp = BandPower(n, 64, p.srate, bands=[(1, 4), (4, 8), (8, 13)])
    trials = [(s, lab) for s, lab in events if s + n <= len(data)]
    feats = np.array([bp.features(data[s:s + n]) for s, _ in trials])
    labels = [lab for _, lab in trials]
    half = len(trials) // 2
    clf = fit_lda(feats[:half], labels[:half], shrinkage=0.3)
    scores = feats[half:] @ clf["coef"].T + clf["intercept"]
    predicted = clf["labels"][scores.argmax(axis=1)]
    accuracy = np.mean(predicted == np.array(labels[half:]))
    assert accuracy > 0.75  # chance is 0.5
