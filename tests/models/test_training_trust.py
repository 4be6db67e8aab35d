"""Training a lab can trust (issue 22): honest chance, fitting on every trial, robust Riemann,
annotations as MNE reads them, and replays that say when they replay training data.

Every recording here is a small FIF written by MNE's own writer (``raw.save``)."""

from __future__ import annotations

import json
import logging
import shutil

import mne
import numpy as np
import pytest

pytest.importorskip("torch", reason="training needs torch")
pytest.importorskip("sklearn", reason="training needs scikit-learn")
pytest.importorskip("pyriemann", reason="the riemann family needs pyriemann")

from rtbci.cli import main  # noqa: E402
from rtbci.devices.tasks import save_task  # noqa: E402
from rtbci.errors import RtbciError  # noqa: E402
from rtbci.models.checkpoint import load_checkpoint  # noqa: E402
from rtbci.models.families import get_family  # noqa: E402
from rtbci.models.options import TrainOptions  # noqa: E402
from rtbci.models.selection import select  # noqa: E402
from rtbci.models.training import train  # noqa: E402
from rtbci.models.windows import load_windows  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SRATE = 100.0
WINDOW = (0.0, 0.5)


def make_raw(labels: list[str], *, n_ch: int = 4, seed: int = 0, flat=(), duplicate=()):
    """Trials 1 s apart from 1 s on, each class a 0.5 s step on its own channel."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n_ch, int((len(labels) + 2) * SRATE)))
    classes = sorted(set(labels))
    onsets = 1.0 + np.arange(len(labels))
    for t, label in zip(onsets, labels):
        start = int(t * SRATE)
        data[classes.index(label) % n_ch, start:start + int(0.5 * SRATE)] += 3.0
    for ch in flat:
        data[ch] = 0.0
    for source, copy in duplicate:
        data[copy] = data[source]
    info = mne.create_info([f"C{i}" for i in range(n_ch)], SRATE, "eeg")
    raw = mne.io.RawArray(data * 1e-5, info, verbose="error")
    raw.set_annotations(mne.Annotations(onsets, [0.0] * len(onsets),
                                        [f"stim/{label}" for label in labels]))
    return raw


def save(raw, path):
    raw.save(path, overwrite=True, verbose="error")
    return path


def options(path, out, **extra) -> TrainOptions:
    return TrainOptions(data=[path], out=out, events=["stim"], window=WINDOW, progress=False,
                        **extra)


# --- point 2: one chance everywhere ------------------------------------------------------

def test_training_states_majority_chance_and_the_interval(tmp_path, capsys):
    labels = (["left"] * 4 + ["right", "feet"]) * 10  # majority 0.667, 1/n 0.333
    fif = save(make_raw(labels), tmp_path / "unbalanced_raw.fif")
    out = tmp_path / "lin.pt"
    assert main(["-q", "train", "linear", "--data", str(fif), "--events", "stim", "--window",
                 "0", "0.5", "--out", str(out)]) == 0
    metrics = json.loads(out.with_name("lin.pt.metrics.json").read_text())
    for name in ("val", "linear"):
        m = metrics[name]
        assert m["chance"] == pytest.approx(8 / 12) and m["chance_uniform"] == 1 / 3
        low, high = m["ci95"]
        assert low <= m["accuracy"] <= high and high - low > 0.1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("  val     accuracy ")
    assert "95 % CI" in lines[1] and "chance 0.667 majority class, 1/n 0.333" in lines[1]


# --- point 5: fitting on everything ------------------------------------------------------

FAMILIES = {"linear": "motor-gnn", "riemann": "motor-gnn", "eegnet": "motor-gnn",
            "motor-gnn": "motor-gnn", "image-retrieval": "image-retrieval",
            "seeg-words": "seeg-words", "speech": "speech"}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    return {task: save_task(folder / f"{task}_raw.fif", task, trials=30)
            for task in set(FAMILIES.values())}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_val_fraction_zero_fits_on_every_trial(family, tasks, tmp_path):
    fif, targets = tasks[FAMILIES[family]]
    extra = {"channels": ["A*"]} if family == "seeg-words" else {}
    if FAMILIES[family] == "motor-gnn":
        extra["events"] = ["outcome"]
    out = tmp_path / f"{family}.pt"
    metrics = train(family, TrainOptions(data=[fif], out=out, targets=targets, epochs=1,
                                         val_fraction=0.0, progress=False, **extra))
    n = len(load_windows([fif], get_family(family), TrainOptions(
        data=[fif], out=out, **extra)).x)
    assert metrics["n_val"] == 0 and metrics["n_train"] == n >= 25
    assert metrics["val"] is None and metrics["linear"] is None
    assert load_checkpoint(out).contract.training["val_fraction"] == 0.0


def test_cli_val_fraction_zero_says_nothing_was_held_out(tmp_path, capsys):
    fif = save(make_raw(["left", "right"] * 10), tmp_path / "all_raw.fif")
    out = tmp_path / "all.pt"
    assert main(["-q", "train", "linear", "--data", str(fif), "--events", "stim", "--window",
                 "0", "0.5", "--val-fraction", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "20 training / 0 validation windows" in printed
    assert "no validation (--val-fraction 0): fitted on all 20 windows" in printed
    assert main(["train", "linear", "--data", str(fif), "--val-fraction", "1", "--out",
                 str(out)]) == 2
    assert "--val-fraction: must be at least 0 and below 1, got 1" in capsys.readouterr().err


# --- point 6: robust Riemann -------------------------------------------------------------

@pytest.mark.parametrize(("kind", "named"), [("flat", "flat channel C2"),
                                             ("duplicate", "C3 duplicates C0")])
def test_riemann_shrinks_and_names_flat_or_duplicate_channels(kind, named, tmp_path, caplog):
    raw = make_raw(["left", "right"] * 15, **{kind: [2] if kind == "flat" else [(0, 3)]})
    fif = save(raw, tmp_path / f"{kind}_raw.fif")
    flat = {"include_types": ("flat",)}  # flat channels are left out unless opted in
    with caplog.at_level(logging.WARNING, logger="rtbci.models.fitting"):
        metrics = train("riemann", options(fif, tmp_path / "r.pt", **flat))  # lwf: it fits
    assert metrics["n_train"] > 0
    assert any(named in r.getMessage() and "shrinkage estimator 'lwf'" in r.getMessage()
               for r in caplog.records), caplog.text
    with pytest.raises(RtbciError, match=f"riemann: singular covariance matrices: {named}; "):
        train("riemann", options(fif, tmp_path / "s.pt", hparams={"estimator": "scm"}, **flat))


# --- point 7: annotations ----------------------------------------------------------------

def test_windows_touching_bad_annotations_are_dropped_as_mne_drops_epochs(tmp_path, caplog):
    labels = ["left", "right"] * 10
    raw = make_raw(labels)
    bad = mne.Annotations([2.2, 5.45, 9.0, 14.5], [0.3, 0.1, 0.0, 0.6],
                          ["BAD_muscle", "bad_blink", "BAD_spike", "BAD_muscle"])
    raw.set_annotations(raw.annotations + bad)
    fif = save(raw, tmp_path / "bad_raw.fif")
    family = get_family("linear")
    with caplog.at_level(logging.WARNING, logger="rtbci.models.windows"):
        win = load_windows([fif], family, options(fif, fif))
    # MNE's own answer: epochs over the same samples, rejected by annotation
    raw = mne.io.read_raw_fif(fif, preload=True, verbose="error")
    events, ids = mne.events_from_annotations(raw, regexp="^stim", verbose="error")
    epochs = mne.Epochs(raw, events, ids, tmin=0.0, tmax=0.5 - 1 / SRATE, baseline=None,
                        reject_by_annotation=True, preload=True, verbose="error")
    assert len(win.x) == len(epochs) == len(labels) - 3  # 2.2, 5.45 and 14.5 touch trials
    assert win.dropped == {"bad": 3, "join": 0, "edge": 0}
    assert "bad_raw.fif: 3 of 20 windows dropped: they touch BAD_* annotations" in caplog.text
    kept = load_windows([fif], family, options(fif, fif, keep_bad=True))
    assert len(kept.x) == len(labels) and kept.dropped["bad"] == 0


def test_windows_lost_at_joins_are_counted_with_their_reason(tmp_path, caplog):
    first, second = make_raw(["left", "right"] * 3), make_raw(["right", "left"] * 3, seed=1)
    first.crop(0, 6.3)  # its last trial (at 6 s) is cut short by the join
    joined = mne.concatenate_raws([first, second], verbose="error")
    fif = save(joined, tmp_path / "joined_raw.fif")
    with caplog.at_level(logging.WARNING, logger="rtbci.models.windows"):
        win = load_windows([fif], get_family("linear"), options(fif, fif))
    assert win.dropped["join"] == 1 and len(win.x) == 11
    assert ("joined_raw.fif: 1 of 12 windows dropped: they span a join of recordings "
            "(EDGE boundary" in caplog.text)


def test_a_class_with_one_trial_is_named(tmp_path):
    fif = save(make_raw(["left", "right"] * 8 + ["feet"]), tmp_path / "one_raw.fif")
    with pytest.raises(RtbciError, match="--events: class 'feet' has 1 trial; "):
        select(options(fif, tmp_path / "auto.pt"), ("linear",), k=3)


# --- point 4: honest replays -------------------------------------------------------------

def test_replaying_training_data_warns_and_the_report_marks_it(tmp_path, caplog, capsys):
    trained = save(make_raw(["left", "right", "feet"] * 8), tmp_path / "sess_raw.fif")
    fresh = save(make_raw(["left", "right", "feet"] * 8, seed=7), tmp_path / "other_raw.fif")
    copy = tmp_path / "copy" / "sess_raw.fif"  # the same bytes elsewhere: still training data
    copy.parent.mkdir()
    shutil.copy(trained, copy)
    out = tmp_path / "lin.pt"
    train("linear", options(trained, out, val_fraction=0.0))
    config = tmp_path / "lin.toml"
    config.write_text(f'[[sources]]\nname = "eeg"\nkind = "lsl"\nstream = {{ name = "sess" }}\n'
                      f'[[decoders]]\nname = "lr"\nmodel = "{out}"\nsource = "eeg"\n'
                      'on_marker = "stim"\n')
    for replay, expected in ((trained, True), (copy, True), (fresh, False)):
        caplog.clear()
        report = tmp_path / f"{replay.stem}-{expected}.json"
        with caplog.at_level(logging.WARNING, logger="rtbci"):
            assert main(["-q", "run", str(config), "--replay", str(replay), "--report",
                         str(report)]) == 0
        assert json.loads(report.read_text())["decoders"]["lr"]["trained_on"] is expected
        warned = [r.getMessage() for r in caplog.records if "training data" in r.getMessage()]
        assert warned == ([f"decoder 'lr': {replay.name} is training data of its checkpoint: "
                           "its scores here are not a test (trained_on: true)"]
                          if expected else [])
