"""The decoder-family tasks: reproducible, chunk-invariant, labelled, with their targets."""

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import rtbci
from rtbci.devices.recording import read_recording
from rtbci.devices.simulate import Realism, get_profile
from rtbci.devices.tasks import TASKS, TaskSignal, save_task
from rtbci.errors import RtbciError


@pytest.mark.parametrize("family", list(TASKS))
def test_chunking_does_not_change_the_signal(family):
    n = int(3 * TASKS[family].isi_s[1] * TASKS[family].srate)
    whole, events = TaskSignal(family, seed=4).next(n)
    parts, chunked_events = TaskSignal(family, seed=4), []
    pieces = []
    for size in (7, 333, n - 340):
        x, ev = parts.next(size)
        pieces.append(x)
        chunked_events += ev
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    assert chunked_events == events and len(events) >= 2
    prefix = TASKS[family].prefix + "/"
    assert all(text.startswith(prefix) for _, text in events)


def test_responses_carry_each_items_latent_at_the_requested_snr():
    quiet, loud = TaskSignal("image-retrieval", snr=0.0, seed=1), TaskSignal(
        "image-retrieval", snr=2.0, seed=1)
    n = int(20 * quiet.profile.srate)
    background, _ = quiet.next(n)
    signal_, events = loud.next(n)
    evoked = signal_ - background  # same seed: same background and trials
    length = int(0.8 * quiet.profile.srate)
    rms = [np.sqrt(np.mean(evoked[s:s + length] ** 2)) for s, _ in events if s + length <= n]
    noise = np.sqrt(np.mean(background**2))
    assert 1.2 < np.mean(rms) / noise < 3.0  # snr 2 on average (gain and items vary)
    a, b = loud.response(3), loud.response(4)
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.9  # items differ
    np.testing.assert_allclose(loud.response(3), TaskSignal("image-retrieval").response(3))


def test_save_writes_fif_and_targets_with_labels(tmp_path):
    fif, targets = save_task(tmp_path / "img_raw.fif", "image-retrieval", trials=30, seed=2)
    rec = read_recording(fif)
    labels = json.loads(targets.with_suffix(".json").read_text())
    bank = np.load(targets)
    assert bank.shape == (100, 32) and len(labels) == 100 and len(set(labels)) == 100
    assert 28 <= len(rec.markers) <= 31
    assert all(text.split("/")[1] in labels for _, text in rec.markers)
    assert save_task(tmp_path / "m_raw.fif", "motor-gnn", trials=5)[1] is None


def test_meg_positions_survive_the_fif(tmp_path):
    fif, targets = save_task(tmp_path / "speech_raw.fif", "speech", trials=3)
    info = read_recording(fif).streams[0].info
    np.testing.assert_allclose(info.positions, get_profile("meg306").positions, atol=1e-6)
    assert np.load(targets).shape == (100, 32, 360)


def test_items_restrict_the_trials_and_unknown_items_are_refused():
    task = TaskSignal("image-retrieval", seed=1, items=["i03", "i42"])
    _, events = task.next(int(30 * task.profile.srate))
    assert len(events) > 10 and {text for _, text in events} == {"image/i03", "image/i42"}
    with pytest.raises(RtbciError, match="items: i100, x: not items of the image-retrieval"):
        TaskSignal("image-retrieval", items=["i03", "x", "i100"])


def test_a_config_with_unknown_items_is_refused_naming_the_source():
    from rtbci.config import parse_config

    def source(**fields):
        return {"sources": [{"name": "img", "kind": "simulate", **fields}],
                "decoders": [{"name": "d", "model": "builtin:bandpower", "source": "img",
                              "window_ms": 500, "every_ms": 100}]}

    config = parse_config(source(task="image-retrieval", items=["i05", "i94"]))
    assert config.sources[0].items == ["i05", "i94"]
    for fields, words in [({"task": "speech", "items": ["s1"]}, "sources[0]: items: s1: not "
                           "items of the speech task (s00 … s99)"),
                          ({"items": ["i05"]}, "sources[0]: items: only with a task")]:
        with pytest.raises(RtbciError, match=re.escape(words)):
            parse_config(source(**fields))


def test_trials_vary_per_source():
    """Each trial's sources get their own gains: its spatial pattern is not the item's."""
    realism = replace(Realism.off(), amplitude_jitter=0.3)
    task = TaskSignal("motor-gnn", snr=2.0, seed=3, items=["success"], realism=realism)
    quiet = TaskSignal("motor-gnn", snr=0.0, seed=3, items=["success"], realism=realism)
    n = int(60 * task.profile.srate)
    evoked = task.next(n)[0] - quiet.next(n)[0]
    length = int(0.8 * task.profile.srate)
    trials = np.array([evoked[s:s + length].ravel() for s, _ in task.events
                       if s + length <= n])
    r = np.corrcoef(trials)[np.triu_indices(len(trials), 1)]
    assert 0.5 < np.median(r) < 0.98  # alike (one item) but not a scaled copy


def test_the_demo_streams_only_items_its_retrieval_checkpoints_never_trained_on(tmp_path):
    """Zero-shot demo: rtbci/demo.toml's ``items`` are the validation items of the training
    split (rtbci train's split_items, seed 0) of the session the checkpoint learnt."""
    import tomllib

    from rtbci.models.splits import split_items

    config = tomllib.loads((Path(rtbci.__file__).parent / "demo.toml").read_text())
    streamed = {s["task"]: s.get("items") for s in config["sources"] if "task" in s}
    for family in ("image-retrieval", "speech"):
        fif, _ = save_task(tmp_path / f"{family}_raw.fif", family, seed=100)
        labels = [text.split("/")[1] for _, text in read_recording(fif).markers]
        held = split_items(labels, 0.2, 0)
        assert sorted(streamed[family]) == sorted(set(np.array(labels)[held])), family


@pytest.mark.parametrize(("family", "seed"), [("motor-gnn", 0), ("image-retrieval", 2),
                                              ("speech", 1)])
def test_trials_n_gives_n_trials_whose_windows_all_fit(tmp_path, capsys, family, seed):
    """Issue 21: ``--trials 30`` gave 29 scoreable trials (the last window ran past the end)."""
    from rtbci.cli import main
    from rtbci.models.families import FAMILIES

    fif = tmp_path / f"{family}_raw.fif"
    assert main(["simulate", "--family", family, "--trials", "30", "--seed", str(seed),
                 "--save", str(fif)]) == 0
    rec = read_recording(fif)
    stream = rec.streams[0]
    end = float(stream.times[-1])
    assert len(rec.markers) == 30
    start, stop = FAMILIES[family].window
    assert all(t + start >= 0 and t + stop <= end for t, _ in rec.markers)
