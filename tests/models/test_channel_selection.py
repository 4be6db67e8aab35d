"""Decoder inputs are data channels by default (issue 22 point 1): a trigger channel that
encodes the class is never an input unless named, and then with a warning; EOG/EMG/ECG and
flat channels are opt-in; the checkpoint lists what was left out and why; live, the engine
picks the checkpoint's channels by name.

Every recording is a small FIF written by MNE's own writer (``raw.save``) with ``eeg``,
``eog`` and ``stim`` channels, the ``STI 014`` channel holding the class id during each
trial, as a trigger line does."""

from __future__ import annotations

import json
import logging

import mne
import numpy as np
import pylsl
import pytest

pytest.importorskip("torch", reason="training needs torch")
pytest.importorskip("sklearn", reason="training needs scikit-learn")

from rtbci.cli import main  # noqa: E402
from rtbci.devices.lsl import info_from_lsl  # noqa: E402
from rtbci.errors import RtbciError  # noqa: E402
from rtbci.models.checkpoint import load_checkpoint  # noqa: E402
from rtbci.models.options import TrainOptions  # noqa: E402
from rtbci.models.selection import select  # noqa: E402
from rtbci.models.selection_report import format_table  # noqa: E402
from rtbci.models.training import train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SRATE = 100.0
WINDOW = (0.0, 0.5)
EEG = ["C0", "C1", "C2", "C3"]
LABELS = ["left", "right", "feet"] * 12


def make_raw(labels: list[str] = LABELS, *, seed: int = 0, flat: bool = False) -> mne.io.Raw:
    """Trials 1 s apart from 1 s on: each class a weak 0.5 s step on its own EEG channel
    (decodable, far from perfect), ``STI 014`` = class id + 1 during the trial, an EOG
    channel of noise; ``flat``: a fifth EEG channel ``C4`` held at 0."""
    rng = np.random.default_rng(seed)
    n = int((len(labels) + 2) * SRATE)
    eeg = rng.standard_normal((len(EEG), n))
    stim = np.zeros((1, n))
    classes = sorted(set(labels))
    onsets = 1.0 + np.arange(len(labels))
    for t, label in zip(onsets, labels):
        trial = slice(int(t * SRATE), int((t + 0.5) * SRATE))
        eeg[classes.index(label), trial] += 0.35
        stim[0, trial] = classes.index(label) + 1
    rows = [eeg * 1e-5, rng.standard_normal((1, n)) * 1e-5, stim]
    names, types = [*EEG, "EOG 061", "STI 014"], ["eeg"] * len(EEG) + ["eog", "stim"]
    if flat:
        rows.insert(1, np.zeros((1, n)))
        names.insert(len(EEG), "C4")
        types.insert(len(EEG), "eeg")
    raw = mne.io.RawArray(np.concatenate(rows), mne.create_info(names, SRATE, types),
                          verbose="error")
    raw.set_annotations(mne.Annotations(onsets, [0.0] * len(onsets),
                                        [f"stim/{label}" for label in labels]))
    return raw


def save(raw, path):
    raw.save(path, overwrite=True, verbose="error")
    return path


def options(path, out, **extra) -> TrainOptions:
    return TrainOptions(data=[path], out=out, events=["stim"], window=WINDOW, progress=False,
                        **extra)


def train_cli(fif, out, *extra: str) -> dict:
    assert main(["-q", "train", "linear", "--data", str(fif), "--events", "stim", "--window",
                 "0", "0.5", "--out", str(out), *extra]) == 0
    return json.loads(out.with_name(out.name + ".metrics.json").read_text())


@pytest.fixture(scope="module")
def fif(tmp_path_factory):
    return save(make_raw(), tmp_path_factory.mktemp("channels") / "trigger_raw.fif")


def test_a_trigger_channel_that_encodes_the_class_scores_no_higher_than_eeg_alone(
        fif, tmp_path, capsys):
    default = train_cli(fif, tmp_path / "default.pt")
    printed = capsys.readouterr().out
    eeg_only = train_cli(fif, tmp_path / "eeg.pt", "--channels", "C*")
    assert 0.4 < eeg_only["val"]["accuracy"] < 0.95  # decodable, not perfect
    assert default["val"]["accuracy"] <= eeg_only["val"]["accuracy"]  # 1.000 with STI 014
    assert default["linear"]["accuracy"] <= eeg_only["linear"]["accuracy"]
    ckpt = load_checkpoint(tmp_path / "default.pt")
    assert ckpt.contract.input.ch_names == EEG and ckpt.contract.input.ch_types == ["eeg"] * 4
    # the table lists the channels used and those left out, with the reason
    assert ("  channels: 4 used (C0, C1, C2, C3); left out 2: EOG 061 (eog channel: not "
            "brain signal (--include-types eog)); STI 014 (stimulus channel (stim): may encode "
            "the labels; only --channels uses it)") in printed.splitlines()


def test_the_checkpoint_contract_lists_the_channels_left_out_with_the_reason(fif, tmp_path):
    out = tmp_path / "lin.pt"
    metrics = train("linear", options(fif, out))
    left_out = load_checkpoint(out).contract.input.left_out
    assert left_out == {
        "EOG 061": "eog channel: not brain signal (--include-types eog)",
        "STI 014": "stimulus channel (stim): may encode the labels; only --channels uses it"}
    assert metrics["channels"] == {"used": EEG, "left_out": left_out}


def test_naming_a_stimulus_channel_warns_in_one_line(fif, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="rtbci.models"):
        metrics = train_cli(fif, tmp_path / "sti.pt", "--channels", "STI*")
    warned = [r.getMessage() for r in caplog.records if "STI 014" in r.getMessage()]
    assert warned == ["--channels: STI 014 is a stimulus/status channel: it may encode the "
                      "labels, so scores on it do not measure decoding"]
    assert metrics["linear"]["accuracy"] == 1.0  # what the warning is about
    assert load_checkpoint(tmp_path / "sti.pt").contract.input.ch_names == ["STI 014"]


def test_stimulus_types_cannot_be_opted_in_by_type(fif, tmp_path, capsys):
    assert main(["-q", "train", "linear", "--data", str(fif), "--events", "stim",
                 "--include-types", "stim", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rtbci: error: --include-types: stim channels are never inputs by type "
                   "(they may encode the labels); name them with --channels"]
    assert main(["-q", "train", "linear", "--data", str(fif), "--events", "stim",
                 "--include-types", "eyes", "--out", str(tmp_path / "x.pt")]) == 2
    assert "--include-types: 'eyes' is not a channel type" in capsys.readouterr().err


def test_eog_channels_are_inputs_when_opted_in(fif, tmp_path):
    out = tmp_path / "eog.pt"
    metrics = train_cli(fif, out, "--include-types", "eog")
    contract = load_checkpoint(out).contract.input
    assert contract.ch_names == [*EEG, "EOG 061"] and contract.ch_types[-1] == "eog"
    assert list(contract.left_out) == ["STI 014"] == list(metrics["channels"]["left_out"])


def test_a_flat_channel_is_left_out_unless_opted_in(tmp_path):
    fif = save(make_raw(flat=True), tmp_path / "flat_raw.fif")
    metrics = train("linear", options(fif, tmp_path / "a.pt"))
    assert metrics["channels"]["used"] == EEG
    assert metrics["channels"]["left_out"]["C4"] == ("flat: constant over the training data "
                                                     "(--include-types flat)")
    kept = train("linear", options(fif, tmp_path / "b.pt", include_types=("flat",)))
    assert kept["channels"]["used"] == [*EEG[:4], "C4"]


def test_train_auto_leaves_the_trigger_out_and_its_table_says_so(fif, tmp_path):
    out = tmp_path / "auto.pt"
    metrics = select(options(fif, out), ("linear",), k=3)
    assert load_checkpoint(out).contract.input.ch_names == EEG
    line = format_table(metrics["auto"], metrics["channels"])[-1]
    assert line.startswith("channels: 4 used (C0, C1, C2, C3); left out 2: EOG 061 (eog")
    assert "STI 014 (stimulus channel (stim)" in line


def test_live_the_engine_picks_the_checkpoint_channels_by_name(fif, tmp_path, caplog):
    """A stream whose channels come in another order, with the trigger among them (as LSL
    describes them: type ``Trigger``), feeds the decoder exactly its EEG channels; an older
    checkpoint that took the trigger as an input still runs, with a warning."""
    names = ("STI 014", "C3", "EOG 061", "C1", "C0", "C2")
    lsl = pylsl.StreamInfo("amp", "EEG", len(names), SRATE, pylsl.cf_float32, "amp-1")
    channels = lsl.desc().append_child("channels")
    for name, kind in zip(names, ("Trigger", "EEG", "EOG", "EEG", "EEG", "EEG")):
        channels.append_child("channel").append_child_value("label", name).append_child_value(
            "type", kind)
    live = info_from_lsl(lsl)
    assert live.ch_types == ("stim", "eeg", "eog", "eeg", "eeg", "eeg")  # LSL "Trigger"
    train("linear", options(fif, tmp_path / "new.pt"))
    train("linear", options(fif, tmp_path / "old.pt", channels=["C*", "STI*"]))
    new, old = (load_checkpoint(tmp_path / f"{n}.pt").contract.input for n in ("new", "old"))
    with caplog.at_level(logging.WARNING, logger="rtbci.models.checkpoint"):
        assert new.channel_indices(live, "decoders[0]").tolist() == [4, 3, 5, 1]
        assert not caplog.records
        assert old.channel_indices(live, "decoders[1]").tolist() == [4, 3, 5, 1, 0]
    assert [r.getMessage() for r in caplog.records] == [
        "decoders[1]: the checkpoint's inputs include stimulus/status channel 'STI 014': it "
        "may decode the triggers, not the brain (retrain without them)"]


def test_no_data_channel_is_one_line(tmp_path):
    raw = make_raw()
    raw.pick(["EOG 061", "STI 014"])
    fif = save(raw, tmp_path / "nodata_raw.fif")
    with pytest.raises(RtbciError, match=r"^nodata_raw.fif: no data channel among its "
                                         r"channels \(eog, stim\); --include-types or "
                                         r"--channels chooses them$"):
        train("linear", options(fif, tmp_path / "x.pt"))


def test_a_replay_feeds_the_checkpoint_its_channels_by_name(fif, tmp_path, caplog):
    """``rtbci run --replay`` of a recording with the trigger: the default checkpoint runs on
    its EEG channels without a word; an older one that took the trigger runs and warns."""
    fresh = save(make_raw(LABELS[:12], seed=5), tmp_path / "fresh_raw.fif")
    for name, channels in (("new", None), ("old", ["C*", "STI*"])):
        train("linear", options(fif, tmp_path / f"{name}.pt", channels=channels,
                                val_fraction=0.0))
    config = tmp_path / "lin.toml"
    for name in ("new", "old"):
        config.write_text(f'[[sources]]\nname = "eeg"\nkind = "lsl"\nstream = {{ name = '
                          f'"fresh" }}\n[[decoders]]\nname = "lr"\nmodel = '
                          f'"{tmp_path / name}.pt"\nsource = "eeg"\non_marker = "stim"\n')
        caplog.clear()
        report = tmp_path / f"{name}.json"
        with caplog.at_level(logging.WARNING, logger="rtbci"):
            assert main(["-q", "run", str(config), "--replay", str(fresh), "--report",
                         str(report)]) == 0
        scored = json.loads(report.read_text())["decoders"]["lr"]
        assert scored["n"] == 12, scored
        warned = [r.getMessage() for r in caplog.records if "STI 014" in r.getMessage()]
        assert len(warned) == (name == "old"), warned
        assert not warned or "stimulus/status channel 'STI 014'" in warned[0]
