"""The decoder-family tasks: reproducible, chunk-invariant, labelled, with their targets."""

import json

import numpy as np
import pytest

from rtbci.devices.recording import read_recording
from rtbci.devices.simulate import get_profile
from rtbci.devices.tasks import TASKS, TaskSignal, save_task


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
