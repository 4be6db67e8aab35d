"""The standard families (linear, riemann, eegnet) and ``rtbci train``'s preprocessing overrides.

linear and riemann are fitted in closed form: their deployed torch modules must give exactly
the scikit-learn / pyriemann pipeline's probabilities. The real-data tests use BCI
Competition II finger movements (28 ch @ 100 Hz, 0.5 s trials), cached by
``rtbci.devices.datasets.fetch``, with the events renamed ``hand/left`` / ``hand/right``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the families need torch")
pytest.importorskip("sklearn", reason="training needs scikit-learn")

from rtbci.cli import main  # noqa: E402
from rtbci.config import parse_config  # noqa: E402
from rtbci.devices.recording import read_recording  # noqa: E402
from rtbci.engine import Engine  # noqa: E402
from rtbci.errors import RtbciError  # noqa: E402
from rtbci.models import load_decoder  # noqa: E402
from rtbci.models.checkpoint import load_checkpoint  # noqa: E402
from rtbci.models.eegnet import EEGNet  # noqa: E402
from rtbci.models.families import get_family  # noqa: E402
from rtbci.models.linear import LinearNet  # noqa: E402
from rtbci.models.options import TrainOptions  # noqa: E402
from rtbci.models.runtimes import load_runtime  # noqa: E402
from rtbci.models.splits import split_trials  # noqa: E402
from rtbci.models.training import train  # noqa: E402
from rtbci.models.windows import load_windows  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WINDOW = (0.0, 0.5)


@pytest.fixture(scope="module")
def fingers(tmp_path_factory) -> tuple[Path, Path]:
    """(train, test) FIF of the finger-movement set, events renamed ``hand/<side>``."""
    mne = pytest.importorskip("mne")
    from rtbci.devices.datasets import fetch

    try:
        sources = fetch("finger-movements")
    except Exception as exc:  # offline and not cached
        pytest.skip(f"finger-movements cannot be fetched: {exc}")
    root = tmp_path_factory.mktemp("fingers")
    out = []
    for source, split in zip(sources, ("train", "test"), strict=True):
        raw = mne.io.read_raw_fif(source, preload=True, verbose="error")
        raw.annotations.rename({"left": "hand/left", "right": "hand/right"})
        raw.save(root / f"fingers_{split}_raw.fif", verbose="error")
        out.append(root / f"fingers_{split}_raw.fif")
    return out[0], out[1]


def windows(fif: Path, family: str, **options):
    opts = TrainOptions(data=[fif], out=fif, events=["hand"], window=WINDOW, **options)
    return load_windows([fif], get_family(family), opts)


def test_eegnet_has_the_papers_layout():
    # EEGNet-8,2 on 64 ch × 128 samples at 128 Hz, 4 classes: 2,388 trainable parameters
    # (temporal 512, BN 16, depthwise 1,024, BN 32, separable 256 + 256, BN 32, dense 260)
    net = EEGNet(64, 128, 4, srate=128.0)
    assert sum(p.numel() for p in net.parameters()) == 2388
    assert net.temporal[1].kernel_size == (1, 64) and net.separable[0][1].kernel_size == (1, 16)
    assert net(torch.zeros(3, 128, 64)).shape == (3, 4)
    with torch.no_grad():
        net.spatial.weight.mul_(100)
        net.dense.weight.mul_(100)
    net.after_step()
    assert net.spatial.weight.flatten(1).norm(dim=1).max() <= 1.0 + 1e-6
    assert net.dense.weight.norm(dim=1).max() <= 0.25 + 1e-6


@pytest.mark.parametrize("classifier", ["lda", "logreg"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_linear_module_gives_sklearns_probabilities_and_exports(classifier, n_classes):
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 150)
    x = rng.standard_normal((150, 40, 6)).astype(np.float32)
    x[:, 10:20, 2] += 2 * y[:, None]  # a class-dependent evoked response
    net = LinearNet(6, 40, n_classes, srate=100.0, bin_s=0.05, classifier=classifier)
    pipe = net.fit_closed_form(x[:100], y[:100])
    features = net.features(torch.from_numpy(x[100:])).numpy().astype(np.float64)
    expected = pipe.predict_proba(features)
    with torch.no_grad():
        got = net.inference_module()(torch.from_numpy(x[100:])).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.mean(got.argmax(1) == y[100:]) > 0.8  # it learned (chance ≤ 0.5)
    runtime = load_runtime("onnxruntime", net.inference_module(), (1, 40, 6), name="linear")
    np.testing.assert_allclose(runtime.run(x[100]).reshape(-1), expected[0], atol=1e-5)


def test_riemann_runs_in_torch_and_gives_pyriemanns_probabilities(fingers, tmp_path, caplog):
    pytest.importorskip("pyriemann", reason="the riemann family is built on pyriemann")
    train_fif, test_fif = fingers
    out = tmp_path / "riemann.pt"
    opts = TrainOptions(data=[train_fif], out=out, events=["hand"], window=WINDOW,
                        progress=False)
    metrics = train("riemann", opts)
    assert metrics["val"]["n_val"] == 63 and metrics["final_loss"] is None
    contract = load_checkpoint(out).contract
    assert contract.input.srate == 100.0 and contract.input.preprocess["resample_hz"] is None
    # the same pipeline, fitted by pyriemann on the same training trials
    win = windows(train_fif, "riemann")
    net = get_family("riemann").build(contract)
    val = split_trials(win.labels, 0.2, 0)
    y = np.array([contract.output.labels.index(label) for label in win.labels])
    pipe = net.sklearn_pipeline().fit(win.x[~val].transpose(0, 2, 1).astype(np.float64), y[~val])
    test = windows(test_fif, "riemann")
    expected = pipe.predict_proba(test.x.transpose(0, 2, 1).astype(np.float64))
    config = parse_config({"sources": [{"name": "eeg", "kind": "simulate"}], "decoders": [
        {"name": "hand", "model": str(out), "source": "eeg", "on_marker": "hand"}]})
    with caplog.at_level("INFO", logger="rtbci.models"):
        decoder = load_decoder(config.decoders[0], test.info)
    described = decoder.describe()
    assert described["backend"] == "torch" and "eigendecomposition" in described["auto"]
    assert "runtime auto → torch: family 'riemann'" in caplog.text
    got = np.stack([decoder(window).probabilities for window in test.x])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    onnx = parse_config({"sources": [{"name": "eeg", "kind": "simulate"}], "decoders": [
        {"name": "hand", "model": str(out), "source": "eeg", "on_marker": "hand",
         "runtime": "onnxruntime"}]})
    with pytest.raises(RtbciError, match=r"decoders\.runtime: family 'riemann' runs in torch "
                                        "only") as err:
        load_decoder(onnx.decoders[0], test.info)
    assert "\n" not in str(err.value)


def test_overridden_preprocessing_and_baseline_run_live_in_the_engine(fingers, tmp_path,
                                                                      new_collector):
    """motor-gnn band-passes 1–40 Hz and resamples to 250 Hz by default; trained with
    ``--bandpass none --resample none --baseline 0 0.1`` the live source gets no filter, no
    resampling, and each window minus its first 0.1 s, exactly as in training."""
    train_fif, test_fif = fingers
    out = tmp_path / "motor.pt"
    assert main(["-q", "train", "motor-gnn", "--data", str(train_fif), "--events", "hand",
                 "--window", "0", "0.5", "--epochs", "2", "--bandpass", "none",
                 "--resample", "none", "--baseline", "0", "0.1", "--out", str(out)]) == 0
    contract = load_checkpoint(out).contract
    assert contract.input.preprocess["bandpass"] is None
    assert contract.input.preprocess["resample_hz"] is None
    assert contract.input.srate == 100.0 and contract.input.baseline_s == (0.0, 0.1)
    collector = new_collector()
    engine = Engine(parse_config({
        "sources": [{"name": "eeg", "kind": "simulate", "stream_name": "fingers_test_raw"}],
        "decoders": [{"name": "hand", "model": str(out), "source": "eeg", "on_marker": "hand",
                      "runtime": "torch"}]}), sinks=[collector])
    asyncio.run(engine.run_offline(read_recording(test_fif)))
    assert engine.preprocess["eeg"].bandpass is None
    assert engine.preprocess["eeg"].resample_hz is None
    assert engine.streams["eeg"].info.srate == 100.0
    # what training computes for these windows (same preprocessing, same baseline)
    test = windows(test_fif, "motor-gnn", preprocess={"bandpass": None, "resample_hz": None},
                   baseline=(0.0, 0.1))
    model = load_checkpoint(out).build_model()
    with torch.no_grad():
        expected = model.inference_module()(torch.from_numpy(test.x)).numpy()
    results = collector.results
    assert len(results) >= 99 and [r.marker for r in results] == [
        f"hand/{label}" for label in test.labels[:len(results)]]
    got = np.stack([r.probabilities for r in results])
    np.testing.assert_allclose(got, expected[:len(results)], atol=1e-5)
    unbaselined = windows(test_fif, "motor-gnn",
                          preprocess={"bandpass": None, "resample_hz": None})
    with torch.no_grad():
        without = model.inference_module()(torch.from_numpy(unbaselined.x)).numpy()
    assert np.abs(without[:len(results)] - got).max() > 1e-3  # the baseline mattered


@pytest.mark.parametrize(("args", "words"), [
    (["--bandpass", "40", "1"], "rtbci: error: --bandpass: "),
    (["--bandpass", "1"], "rtbci: error: --bandpass: expected 2 numbers or none, got '1'"),
    (["--resample", "fast"], "rtbci: error: --resample: expected a number or none"),
    (["--notch", "-50"], "rtbci: error: --notch: "),
    (["--baseline", "0.4", "0.9"],
     "rtbci: error: --baseline: 0.4 … 0.9 s is not a part (of at least one sample at "
     "100 Hz) of the window 0 … 0.5 s"),
])
def test_override_mistakes_are_one_line(fingers, tmp_path, capsys, args, words):
    code = main(["-q", "train", "linear", "--data", str(fingers[0]), "--events", "hand",
                 "--window", "0", "0.5", "--out", str(tmp_path / "x.pt"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(words) and len(err.strip().splitlines()) == 1, err
