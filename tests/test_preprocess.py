"""Streaming preprocessing: chunk-invariance, agreement with one-shot scipy, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from scipy import signal

from rtbci.errors import RtbciError
from rtbci.preprocess import PreprocessConfig, Preprocessor, preprocess_offline
from rtbci.preprocess_design import resample_filter
from rtbci.stream import StreamInfo

SRATE = 500.0
N_SAMPLES = 1500
CH_NAMES = ("Fz", "Cz", "Pz", "M1", "M2")


def make_info(srate: float = SRATE, names: tuple[str, ...] = CH_NAMES) -> StreamInfo:
    n = len(names)
    return StreamInfo(
        name="test-eeg",
        type="EEG",
        source_id="test",
        srate=srate,
        ch_names=names,
        ch_types=("eeg",) * (n - 1) + ("misc",),
        ch_units=tuple(f"unit{i}" for i in range(n)),
        positions=np.arange(3 * n, dtype=float).reshape(n, 3),
    )


def make_signal(
    n: int = N_SAMPLES, srate: float = SRATE, n_ch: int = len(CH_NAMES), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Offset + 10 Hz + 50 Hz + noise, float32; timestamps start at an LSL-like time."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / srate
    x = (
        20.0 * (1 + np.arange(n_ch))
        + 5.0 * np.sin(2 * np.pi * 10 * t)[:, None]
        + 3.0 * np.sin(2 * np.pi * 50 * t + 1.0)[:, None]
        + rng.standard_normal((n, n_ch))
    )
    return x.astype(np.float32), 1234.5 + t


def stream(pre: Preprocessor, x: np.ndarray, t: np.ndarray, sizes: list[int]):
    """Feed ``x`` in chunks of ``sizes`` (cycled until the end), concatenate the output."""
    sizes = sizes if sum(sizes) else [*sizes, len(x)]
    outs, times, i, k = [], [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        y, ty = pre.process(x[i : i + n], t[i : i + n])
        assert y.dtype == np.float32 and y.shape[1] == pre.info.n_channels
        outs.append(y.copy())
        times.append(ty.copy())
        i, k = i + n, k + 1
    return np.concatenate(outs), np.concatenate(times)


def assert_close(actual: np.ndarray, desired: np.ndarray) -> None:
    assert actual.shape == desired.shape
    scale = float(np.max(np.abs(desired))) if desired.size else 1.0
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-6 * scale)


chunk_sizes = st.lists(
    st.integers(0, 64) | st.sampled_from([1, 1, 333, 5000]), min_size=1, max_size=12
)
few = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ONE_OP = {
    "picks": PreprocessConfig(picks=["Pz", "Fz", "M2"]),
    "average": PreprocessConfig(reference="average"),
    "mastoids": PreprocessConfig(picks=["Fz", "Cz"], reference=["M1", "M2"]),
    "notch": PreprocessConfig(notch=[50.0, 100.0]),
    "bandpass": PreprocessConfig(bandpass=(1.0, 40.0)),
    "resample_down": PreprocessConfig(resample_hz=200.0),
    "resample_up": PreprocessConfig(resample_hz=1200.0),
    "standardize": PreprocessConfig(standardize=True, standardize_halflife_s=0.5),
}
FULL = PreprocessConfig(
    picks=["Cz", "Fz", "Pz"],
    reference="average",
    notch=50.0,
    bandpass=(1.0, 40.0),
    resample_hz=128.0,
    standardize=True,
    standardize_halflife_s=1.0,
)


# ----------------------------------------------------------------------------------------------
# streaming == one-shot, for any chunking
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*ONE_OP, "full"])
@few
@given(sizes=chunk_sizes, max_chunk=st.sampled_from([1, 97, 4096]))
def test_streaming_equals_offline(name: str, sizes: list[int], max_chunk: int) -> None:
    config = FULL if name == "full" else ONE_OP[name]
    info = make_info()
    x, t = make_signal(n=600)
    expected, t_expected = preprocess_offline(config, info, x, t)
    got, t_got = stream(Preprocessor(config, info, max_chunk=max_chunk), x, t, sizes)
    assert_close(got, expected)
    np.testing.assert_allclose(t_got, t_expected, rtol=0, atol=1e-9)


def test_full_chain_matches_direct_scipy() -> None:
    info = make_info()
    x, t = make_signal()
    x64 = x.astype(np.float64)
    y = x64[:, [1, 0, 2]]
    y = y - y.mean(axis=1, keepdims=True)
    sos = np.vstack(
        [
            signal.tf2sos(*signal.iirnotch(50.0, 30.0, fs=SRATE)),
            signal.butter(4, [1.0, 40.0], btype="bandpass", output="sos", fs=SRATE),
        ]
    )
    y = signal.sosfilt(sos, y, axis=0, zi=signal.sosfilt_zi(sos)[:, :, None] * y[0])[0]
    up, down = 32, 125  # 128 / 500
    h = resample_filter(up, down)
    pad = -(-(len(h) - 1) // (up * down)) * down
    n_out = -(-len(y) * up // down)
    y = signal.upfirdn(h, np.vstack([np.repeat(y[:1], pad, 0), y]), up, down, axis=0)
    y = y[pad * up // down :][:n_out]
    y = _standardize_reference(y, 0.5 ** (1 / 128.0))
    got, _ = stream(Preprocessor(FULL, info), x, t, [7, 64, 1, 300])
    assert_close(got, y.astype(np.float32))


# ----------------------------------------------------------------------------------------------
# each step against scipy directly
# ----------------------------------------------------------------------------------------------


@few
@given(sizes=chunk_sizes)
def test_notch_and_bandpass_equal_sosfilt_with_steady_state(sizes: list[int]) -> None:
    config = PreprocessConfig(notch=[50.0, 100.0], notch_q=20, bandpass=(2.0, 45.0), filter_order=3)
    x, t = make_signal(n=800)
    pre = Preprocessor(config, make_info(), max_chunk=50)
    sos = np.vstack(
        [signal.tf2sos(*signal.iirnotch(f, 20.0, fs=SRATE)) for f in (50.0, 100.0)]
        + [signal.butter(3, [2.0, 45.0], btype="bandpass", output="sos", fs=SRATE)]
    )
    np.testing.assert_array_equal(pre.sos, sos)
    zi = signal.sosfilt_zi(sos)[:, :, None] * x[0].astype(np.float64)
    expected = signal.sosfilt(sos, x.astype(np.float64), axis=0, zi=zi)[0]
    got, t_got = stream(pre, x, t, sizes)
    assert_close(got, expected.astype(np.float32))
    np.testing.assert_array_equal(t_got, t)


@pytest.mark.parametrize(
    ("srate", "new", "up", "down"),
    [(500.0, 200.0, 2, 5), (500.0, 1200.0, 12, 5), (512.0, 500.0, 125, 128), (1000.0, 250.0, 1, 4)],
)
@settings(max_examples=8, deadline=None)
@given(sizes=chunk_sizes)
def test_resample_equals_upfirdn(
    srate: float, new: float, up: int, down: int, sizes: list[int]
) -> None:
    """With a first sample of 0 the steady state is zero state: plain upfirdn, truncated."""
    x, t = make_signal(n=700, srate=srate)
    x -= x[0]
    pre = Preprocessor(PreprocessConfig(resample_hz=new), make_info(srate))
    assert (pre.up, pre.down) == (up, down)
    assert pre.info.srate == pytest.approx(srate * up / down)
    max_rate = max(up, down)
    h = signal.firwin(20 * max_rate + 1, 1 / max_rate, window=("kaiser", 5.0)) * up
    np.testing.assert_array_equal(pre.fir, h)
    assert pre.delay_s == pytest.approx(10 * max_rate / up / srate)
    n_out = -(-len(x) * up // down)
    expected = signal.upfirdn(h, x.astype(np.float64), up, down, axis=0)[:n_out]
    got, t_got = stream(pre, x, t, sizes)
    assert_close(got, expected.astype(np.float32))
    np.testing.assert_allclose(t_got, t[0] + np.arange(n_out) * down / (up * srate), atol=1e-9)


def test_resample_starts_in_steady_state() -> None:
    """A constant resamples to the same constant from the first output on.

    (Within the 1e-3 ripple of resample_poly's Kaiser FIR, whose polyphase branches do not
    have exactly unit DC gain.)
    """
    x = np.full((400, 2), 7.5, np.float32)
    got, _ = stream(
        Preprocessor(PreprocessConfig(resample_hz=300.0), make_info(names=("a", "b"))),
        x,
        np.arange(400) / SRATE,
        [33],
    )
    np.testing.assert_allclose(got, 7.5, rtol=1e-3)


def test_resample_timestamps_follow_input_clock() -> None:
    """Output j is stamped t[floor(j*down/up)] + remainder * input period (jitter kept)."""
    rng = np.random.default_rng(1)
    x, _ = make_signal(n=300)
    t = 10.0 + np.arange(300) / SRATE + rng.uniform(0, 1e-4, 300)
    pre = Preprocessor(PreprocessConfig(resample_hz=200.0), make_info())  # up 2, down 5
    _, t_got = stream(pre, x, t, [13])
    j = np.arange(len(t_got))
    i, rem = np.divmod(j * 5, 2)
    np.testing.assert_allclose(t_got, t[i] + rem / (2 * SRATE), rtol=0, atol=1e-12)


def _standardize_reference(x: np.ndarray, a: float, eps: float = 1e-30) -> np.ndarray:
    weight = 1 - a ** np.arange(1, len(x) + 1)[:, None]
    dev = x - signal.lfilter([1 - a], [1, -a], x, axis=0) / weight
    var = signal.lfilter([1 - a], [1, -a], dev**2, axis=0) / weight
    return dev / np.sqrt(var + eps)


@few
@given(sizes=chunk_sizes)
def test_standardize_equals_lfilter(sizes: list[int]) -> None:
    x, t = make_signal(n=800)
    pre = Preprocessor(PreprocessConfig(standardize=True, standardize_halflife_s=0.3), make_info())
    expected = _standardize_reference(x.astype(np.float64), 0.5 ** (1 / (0.3 * SRATE)))
    got, _ = stream(pre, x, t, sizes)
    assert_close(got, expected.astype(np.float32))


def test_reference_average_and_named() -> None:
    x, t = make_signal(n=50)
    avg, _ = Preprocessor(PreprocessConfig(reference="average"), make_info()).process(x, t)
    np.testing.assert_allclose(avg, x - x.mean(axis=1, keepdims=True), atol=1e-5)
    config = PreprocessConfig(picks=["Cz", "Fz"], reference=["M1", "M2"])
    named, _ = Preprocessor(config, make_info()).process(x, t)
    np.testing.assert_allclose(
        named, x[:, [1, 0]] - x[:, [3, 4]].mean(axis=1, keepdims=True), atol=1e-5
    )


# ----------------------------------------------------------------------------------------------
# what the filters do to signals
# ----------------------------------------------------------------------------------------------


def _gain(freq: float, config: PreprocessConfig, srate: float = SRATE) -> float:
    t = np.arange(int(4 * srate)) / srate
    x = np.sin(2 * np.pi * freq * t)[:, None].astype(np.float32)
    info = make_info(srate, names=("a",))
    y, _ = stream(Preprocessor(config, info), x, t, [32])
    half = len(y) // 2  # past the transient
    return float(np.ptp(y[half:]) / np.ptp(x[len(x) // 2 :]))


def test_bandpass_attenuates_50hz() -> None:
    config = PreprocessConfig(bandpass=(1.0, 40.0))
    sos = signal.butter(4, [1.0, 40.0], btype="bandpass", output="sos", fs=SRATE)
    _, (h10, h50) = signal.sosfreqz(sos, worN=[10.0, 50.0], fs=SRATE)
    g10, g50 = _gain(10.0, config), _gain(50.0, config)
    assert g10 == pytest.approx(abs(h10), rel=0.02) and g10 > 0.95
    assert g50 == pytest.approx(abs(h50), rel=0.05) and g50 < 0.5
    assert _gain(120.0, config) < 0.02


def test_notch_removes_line_noise() -> None:
    assert _gain(50.0, PreprocessConfig(notch=50.0)) < 0.01
    assert _gain(20.0, PreprocessConfig(notch=50.0)) > 0.95


def test_standardize_gives_zero_mean_unit_variance() -> None:
    rng = np.random.default_rng(3)
    srate, n = 200.0, 12_000
    x = (5.0 + 3.0 * rng.standard_normal((n, 2))).astype(np.float32)
    config = PreprocessConfig(standardize=True, standardize_halflife_s=2.0)
    y, _ = stream(Preprocessor(config, make_info(srate, ("a", "b"))), x, np.arange(n) / srate, [50])
    settled = y[int(10 * srate) :]  # past 5 half-lives
    np.testing.assert_allclose(settled.mean(axis=0), 0.0, atol=0.05)
    np.testing.assert_allclose(settled.std(axis=0), 1.0, atol=0.05)
    assert np.all(np.isfinite(y)) and np.abs(y[: int(srate)]).max() < 10


# ----------------------------------------------------------------------------------------------
# channels, metadata, state
# ----------------------------------------------------------------------------------------------


def test_picks_reorder_channels_and_info() -> None:
    info = make_info()
    pre = Preprocessor(PreprocessConfig(picks=["M2", "Fz", "Pz"]), info)
    x, t = make_signal(n=20)
    y, ty = pre.process(x, t)
    np.testing.assert_array_equal(y, x[:, [4, 0, 2]])
    np.testing.assert_array_equal(ty, t)
    assert pre.info.ch_names == ("M2", "Fz", "Pz")
    assert pre.info.ch_types == ("misc", "eeg", "eeg")
    assert pre.info.ch_units == ("unit4", "unit0", "unit2")
    np.testing.assert_array_equal(pre.info.positions, info.positions[[4, 0, 2]])
    assert pre.info.srate == SRATE and pre.info.name == info.name
    assert not pre.is_identity


def test_identity() -> None:
    info = make_info()
    for config in (PreprocessConfig(), PreprocessConfig(picks=list(CH_NAMES), resample_hz=SRATE)):
        pre = Preprocessor(config, info)
        assert pre.is_identity and pre.delay_s == 0.0
        assert pre.info == info
        x, t = make_signal(n=10)
        y, ty = pre.process(x, t)
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(ty, t)
    assert not Preprocessor(PreprocessConfig(standardize=True), info).is_identity


def test_standardized_units_and_resampled_rate() -> None:
    pre = Preprocessor(FULL, make_info())
    assert pre.info.srate == 128.0
    assert pre.info.ch_units == ("z-score",) * 3
    assert "bandpass 1–40 Hz" in repr(pre)


def test_empty_and_single_sample_chunks() -> None:
    pre = Preprocessor(FULL, make_info())
    x, t = make_signal(n=5)
    y, ty = pre.process(x[:0], t[:0])
    assert y.shape == (0, 3) and ty.shape == (0,)
    y, ty = pre.process(x[:1], t[:1])  # one input at 500 Hz → ceil(1 * 32/125) = 1 output
    assert y.shape == (1, 3) and ty[0] == t[0]
    y, _ = pre.process(x[1:2], t[1:2])
    assert y.shape == (0, 3)


def test_reset_restarts_from_the_next_chunk() -> None:
    pre = Preprocessor(FULL, make_info())
    x, t = make_signal(n=400)
    first, t_first = stream(pre, x, t, [40])
    pre.reset()
    again, t_again = stream(pre, x, t, [40])
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(t_again, t_first)


def test_outputs_are_views_of_preallocated_buffers() -> None:
    pre = Preprocessor(PreprocessConfig(bandpass=(1.0, 40.0)), make_info(), max_chunk=64)
    x, t = make_signal(n=128)
    y1, t1 = pre.process(x[:64], t[:64])
    y2, t2 = pre.process(x[64:], t[64:])
    assert np.shares_memory(y1, y2) and np.shares_memory(t1, t2)


def test_wrong_chunk_shape_names_the_stream() -> None:
    pre = Preprocessor(PreprocessConfig(), make_info())
    with pytest.raises(ValueError, match="test-eeg.*shape"):
        pre.process(np.zeros((4, 3), np.float32), np.zeros(4))
    with pytest.raises(ValueError, match="timestamps"):
        pre.process(np.zeros((4, 5), np.float32), np.zeros(3))


# ----------------------------------------------------------------------------------------------
# configuration errors name the field
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"bandpass": (40.0, 1.0)}, "bandpass"),
        ({"bandpass": (10.0, 10.0)}, "bandpass"),
        ({"bandpass": (0.0, 40.0)}, "bandpass"),
        ({"bandpass": (1.0,)}, "bandpass"),
        ({"resample_hz": -100.0}, "resample_hz"),
        ({"resample_hz": 0.0}, "resample_hz"),
        ({"notch": -50.0}, "notch"),
        ({"notch": [50.0, float("nan")]}, "notch"),
        ({"notch_q": 0.0}, "notch_q"),
        ({"filter_order": 0}, "filter_order"),
        ({"standardize_halflife_s": -1.0}, "standardize_halflife_s"),
        ({"standardize_eps": -1.0}, "standardize_eps"),
        ({"reference": "avg"}, "reference"),
        ({"reference": []}, "reference"),
        ({"picks": []}, "picks"),
        ({"picks": ["Fz", "Fz"]}, "picks"),
        ({"highpass": 1.0}, "highpass"),
    ],
)
def test_bad_config_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field) as excinfo:
        PreprocessConfig(**kwargs)
    assert "expected" in str(excinfo.value) or "Extra inputs" in str(excinfo.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"notch": [50.0, 300.0]}, r"notch: 300 Hz .*Nyquist .*250 Hz"),
        ({"bandpass": (1.0, 250.0)}, r"bandpass: high edge 250 Hz .*Nyquist"),
        ({"picks": ["Fz", "Oz"]}, r"picks: .*'Oz'.*test-eeg"),
        ({"reference": ["M1", "A2"]}, r"reference: .*'A2'"),
        ({"resample_hz": 1e-4}, r"resample_hz"),
    ],
)
def test_config_that_does_not_fit_the_stream_names_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(RtbciError, match=match):
        Preprocessor(PreprocessConfig(**kwargs), make_info())


def test_filters_need_a_regular_rate() -> None:
    with pytest.raises(RtbciError, match="sampling rate"):
        Preprocessor(PreprocessConfig(bandpass=(1.0, 40.0)), make_info(srate=0.0))
    Preprocessor(PreprocessConfig(picks=["Fz"]), make_info(srate=0.0))  # picks alone are fine


def test_notch_accepts_scalar_or_list() -> None:
    assert PreprocessConfig(notch=50).notch == [50.0]
    assert PreprocessConfig(notch=[50, 100]).notch == [50.0, 100.0]
    assert PreprocessConfig.model_validate({"bandpass": [1, 40]}).bandpass == (1.0, 40.0)


# ----------------------------------------------------------------------------------------------
# non-finite input: NaN out, filters restart, the same as a clean run once they settled
# ----------------------------------------------------------------------------------------------

POISONED = PreprocessConfig(reference="average", notch=50.0, bandpass=(1.0, 40.0),
                            resample_hz=250.0, standardize=True, standardize_halflife_s=0.2)


def poisoned_signal() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """16 s at 500 Hz, and a copy with a 3 s NaN burst from 4 s on (one value +Inf)."""
    x, t = make_signal(n=8000)
    bad = x.copy()
    bad[2000:3500] = np.nan
    bad[2600, 1] = np.inf
    return x, bad, t


@pytest.mark.parametrize("sizes", [[50], [1, 333, 7], [5000]])
def test_nonfinite_burst_restarts_the_filters_and_recovers(sizes: list[int]) -> None:
    x, bad, t = poisoned_signal()
    pre = Preprocessor(POISONED, make_info(), max_chunk=97)
    outs, times, spans, n_out, i, k = [], [], [], 0, 0, 0
    while i < len(bad):
        y, ty = pre.process(bad[i : i + sizes[k % len(sizes)]], t[i : i + sizes[k % len(sizes)]])
        if pre.nonfinite is not None:
            spans.append((pre.nonfinite.samples, n_out + pre.nonfinite.start,
                          n_out + pre.nonfinite.stop))
        outs.append(y.copy())
        times.append(ty.copy())
        n_out, i, k = n_out + len(y), i + sizes[k % len(sizes)], k + 1
    got = np.concatenate(outs)
    clean, t_clean = stream(Preprocessor(POISONED, make_info()), x, t, [50])
    np.testing.assert_array_equal(np.concatenate(times), t_clean)
    assert sum(s[0] for s in spans) == 1500  # every non-finite input sample, once
    burst = slice(1000, 1750)  # input samples 2000 … 3499 at 250 Hz
    assert pre.settle_samples == 765  # 1 Hz high-pass to 0.1 %, then the resampler's history
    assert (min(s[1] for s in spans), max(s[2] for s in spans)) == (1000, 1750 + 765)
    assert np.isnan(got[burst]).all()
    assert np.isfinite(got[:1000]).all() and np.isfinite(got[1750:]).all()
    np.testing.assert_array_equal(got[:1000], clean[:1000])  # untouched before the burst
    settled = 1750 + pre.settle_samples
    np.testing.assert_allclose(got[settled:], clean[settled:], atol=5e-3)  # z-scores


def test_nonfinite_in_an_unused_channel_is_ignored() -> None:
    x, t = make_signal(n=600)
    x[100:200, 3] = np.nan  # M1: neither picked nor a reference
    pre = Preprocessor(PreprocessConfig(picks=["Fz", "Cz"], reference=["M2"], bandpass=(1, 40)),
                       make_info())
    y, _ = pre.process(x, t)
    assert pre.nonfinite is None and np.isfinite(y).all()
    x[150, 4] = -np.inf  # M2, the reference: every output channel is affected
    y, _ = Preprocessor(pre.config, make_info()).process(x, t)
    assert np.isnan(y[150]).all() and np.isfinite(y[:150]).all() and np.isfinite(y[151:]).all()


def test_standardize_alone_skips_the_burst_and_keeps_its_scale() -> None:
    x, bad, t = poisoned_signal()
    config = PreprocessConfig(standardize=True, standardize_halflife_s=0.2)
    pre = Preprocessor(config, make_info())
    got, _ = stream(pre, bad, t, [64])
    assert pre.settle_samples == 0
    assert np.isnan(got[2000:3500]).all() and np.isfinite(got[3500:]).all()
    clean, _ = stream(Preprocessor(config, make_info()), x, t, [64])
    # the running mean and variance resume from before the burst: at most a few half-lives off
    np.testing.assert_allclose(got[3500 + 1000 :], clean[3500 + 1000 :], atol=1e-3)
