"""rtbci export --bids: sessions to BIDS with mne-bids, read back by mne-bids and replayed."""

import asyncio
import csv
import json

import mne
import mne_bids
import numpy as np
import pytest
import tomli_w

from rtbci.cli import main
from rtbci.devices.recording import read_recording
from rtbci.devices.replay import ReplayPublisher
from rtbci.devices.session import SessionWriter, read_results, read_session
from rtbci.errors import RtbciError
from rtbci.export import datatype, parse_bids_spec, resolve_bids

pytestmark = pytest.mark.slow

ONSETS = [0.8, 1.9, 3.26, 4.5]
LABELS = ["stim/left", "stim/right", "stim/left", "stim/right"]


def tsv(path) -> list[dict]:
    return list(csv.DictReader(path.read_text().splitlines(), delimiter="\t"))


def record_session(tmp_path, name: str = "s1") -> tuple:
    """A real session: a file written by MNE replayed offline through decoders into the
    record sink. Returns (session directory, config path)."""
    names = ["Fz", "Cz", "Pz", "Oz", "C3", "C4"]
    rng = np.random.default_rng(0)
    raw = mne.io.RawArray(rng.standard_normal((6, 1500)) * 20e-6,
                          mne.create_info(names, 250.0, "eeg"), verbose="error")
    raw.set_annotations(mne.Annotations(ONSETS, [0.0] * 4, LABELS))
    fif = tmp_path / f"{name}_raw.fif"
    raw.save(fif, verbose="error")
    session = tmp_path / f"session-{name}"
    config = tmp_path / f"{name}.toml"
    config.write_text(tomli_w.dumps({
        "sources": [{"name": "eeg", "kind": "lsl", "stream": {"name": name}}],
        "decoders": [
            {"name": "bp", "model": "builtin:bandpower", "source": "eeg", "window_ms": 400,
             "every_ms": 500, "runtime": "numpy", "options": {"bands": [[4, 8], [8, 13]]}},
            {"name": "ev", "model": "builtin:bandpower", "source": "eeg",
             "window_ms": [0, 400], "on_marker": "stim", "runtime": "numpy"}],
        "sinks": [{"kind": "record", "path": str(session)}]}))
    assert main(["-q", "run", str(config), "--replay", str(fif)]) == 0
    return session, config


def test_export_reads_back_with_mne_bids_and_replays_bit_exact(tmp_path, run_engine,
                                                               wait_streaming, capsys):
    session, config = record_session(tmp_path)
    recorded = read_session(session).streams[0]
    root = tmp_path / "bids"
    assert main(["export", str(session), "--bids", str(root), "--subject", "01",
                 "--task", "rt", "--run", "1"]) == 0
    out = capsys.readouterr().out
    assert "sub-01_task-rt_run-1_eeg.set" in out and "desc-bp_results.tsv" in out

    # mne-bids reads it back: the samples bit-exact, the markers from events.tsv
    path = mne_bids.BIDSPath(subject="01", task="rt", run="1", datatype="eeg", root=root)
    raw = mne_bids.read_raw_bids(path, verbose="error")
    assert raw.ch_names == list(recorded.info.ch_names)
    assert set(raw.get_channel_types()) == {"eeg"} and raw.info["sfreq"] == 250
    np.testing.assert_array_equal((raw.get_data().T * 1e6).astype(np.float32), recorded.data)
    assert list(raw.annotations.description) == LABELS
    np.testing.assert_allclose(raw.annotations.onset, ONSETS, atol=1e-9)
    events = tsv(path.copy().update(suffix="events", extension=".tsv").fpath)
    scans = tsv(root / "sub-01" / "sub-01_scans.tsv")  # when the session was recorded
    assert scans[0]["acq_time"].startswith(raw.info["meas_date"].strftime("%Y-%m-%dT%H:%M"))
    assert raw.info["meas_date"].year >= 2024
    assert [e["trial_type"] for e in events] == LABELS

    # the decoder results, one TSV per decoder, one row per result
    results = read_results(session)
    deriv = root / "derivatives" / "rtbci" / "sub-01" / "eeg"
    for decoder in ("bp", "ev"):
        rows = tsv(deriv / f"sub-01_task-rt_run-1_desc-{decoder}_results.tsv")
        mine = [r for r in results if r["decoder"] == decoder]
        assert len(rows) == len(mine) > 0
        for row, result in zip(rows, mine):
            assert float(row["onset"]) == pytest.approx(
                result["window_start"] - recorded.times[0], abs=1e-6)
            assert json.loads(row["output"]) == {"embedding": result["embedding"].tolist()}
            assert row["prediction"] == "n/a"  # an embedding predicts no class
    ev_rows = tsv(deriv / "sub-01_task-rt_run-1_desc-ev_results.tsv")
    assert [r["marker"] for r in ev_rows] == LABELS

    # rtbci resolves the BIDS root + entities, and replays it bit-exact, offline …
    assert resolve_bids(*parse_bids_spec(f"bids:{root}?sub=01&task=rt")) == [path.fpath]
    spec = f"bids:{root}?sub=01&run=1"
    config2 = tmp_path / "again.toml"
    config2.write_text(config.read_text().replace(str(session), str(tmp_path / "again")))
    assert main(["-q", "run", str(config2), "--replay", spec]) == 0
    again = read_session(tmp_path / "again")
    np.testing.assert_array_equal(again.streams[0].data, recorded.data)
    assert [t for _, t in again.marker_streams[0].markers] == LABELS
    again_results = [(r["decoder"], r["seq"], r["embedding"].tolist())
                     for r in read_results(tmp_path / "again")]
    assert again_results == [(r["decoder"], r["seq"], r["embedding"].tolist())
                             for r in results]

    # … and over LSL, as `rtbci replay` publishes it
    recording = read_recording(resolve_bids(root, {"sub": "01"})[0])
    publisher = ReplayPublisher(recording, 4.0)
    name = recording.streams[0].info.name

    async def during(engine):
        publisher.open()
        await wait_streaming(engine)
        await asyncio.sleep(1.0)  # the marker reader subscribes too
        await asyncio.to_thread(publisher.run)

    engine, _ = run_engine({"sources": [{"name": "eeg", "kind": "lsl", "stream": {
        "name": name}, "markers": {"name": f"{name}-markers"}}]}, 30.0, during)
    ring = engine.streams["eeg"].buffer
    np.testing.assert_array_equal(ring.window(0, ring.count)[0], recorded.data)
    assert [text for _, text in engine.markers["eeg"]] == LABELS


def test_each_source_gets_its_datatype_and_meg_reads_back_bit_exact(tmp_path):
    from rtbci.devices.recording import info_from_mne

    meg = mne.create_info(["MEG0111", "MEG0112", "MEG0113"], 500.0, ["mag", "grad", "grad"])
    seeg = mne.create_info(["A1", "A2"], 500.0, "seeg")
    writer = SessionWriter(tmp_path / "two", {"config": None})
    rng = np.random.default_rng(3)
    data = {}
    for source, info in (("meg", meg), ("depth", seeg)):
        stream_info, _ = info_from_mne(info, source, source)
        writer.add_stream(source, stream_info)
        data[source] = (rng.standard_normal((1000, len(info.ch_names))) * 100).astype(
            np.float32)
        writer.write_samples(source, data[source], 100.0 + np.arange(1000) / 500.0)
    writer.write_marker("depth", 100.5, "word/cat")
    writer.close()
    root = tmp_path / "bids"
    assert main(["export", str(tmp_path / "two"), "--bids", str(root), "--subject", "p7",
                 "--session", "a"]) == 0
    meg_path = mne_bids.BIDSPath(subject="p7", session="a", task="rtbci", acquisition="meg",
                                 datatype="meg", root=root)
    raw = mne_bids.read_raw_bids(meg_path, verbose="error")
    factors = np.array([1e15, 1e13, 1e13])  # fT, fT/cm: the units rtbci streams carry
    np.testing.assert_array_equal((raw.get_data().T * factors).astype(np.float32), data["meg"])
    ieeg = mne_bids.read_raw_bids(mne_bids.BIDSPath(
        subject="p7", session="a", task="rtbci", acquisition="depth", datatype="ieeg",
        root=root), verbose="error")
    np.testing.assert_array_equal((ieeg.get_data().T * 1e6).astype(np.float32), data["depth"])
    assert list(ieeg.annotations.description) == ["word/cat"]
    assert ieeg.annotations.onset[0] == pytest.approx(0.5)
    assert datatype(("eeg", "eog")) == "eeg"


def test_bad_labels_roots_and_entities_are_named(tmp_path, capsys):
    session, _ = record_session(tmp_path, "s2")
    assert main(["export", str(session), "--bids", str(tmp_path / "b"),
                 "--subject", "sub_01"]) == 2
    assert capsys.readouterr().err.strip() == ("rtbci: error: --subject: 'sub_01' is not a "
                                               "BIDS label (letters and digits only)")
    with pytest.raises(RtbciError, match="not a BIDS dataset"):
        resolve_bids(tmp_path)
    assert main(["export", str(session), "--bids", str(tmp_path / "b"), "--subject", "01"]) == 0
    from rtbci.evaluate import find_recordings  # rtbci evaluate --data bids:…

    found = find_recordings([f"bids:{tmp_path / 'b'}?sub=01", str(session)])
    assert [f.name for f in found] == ["sub-01_task-rtbci_eeg.set", session.name]
    with pytest.raises(RtbciError, match="no EEG/MEG/iEEG recording with sub=02; subjects "
                                         "there: 01"):
        resolve_bids(tmp_path / "b", {"sub": "02"})
    with pytest.raises(RtbciError, match="unknown BIDS entity 'subject'"):
        parse_bids_spec(f"bids:{tmp_path / 'b'}?subject=01")


def test_a_result_row_names_the_predicted_class_and_the_top_item():
    from rtbci.export import RESULT_COLUMNS, _row

    base = {"decoder": "d", "seq": 4, "trigger": "marker", "marker": "stim/left",
            "label": "left", "window_start": 12.5, "window_end": 12.9, "t_arrived": 13.0,
            "t_published": 13.002, "late": False}
    classes = dict(zip(RESULT_COLUMNS, _row({**base, "labels": ["left", "right"],
                                             "probabilities": np.array([0.3, 0.7])}, 10.0)))
    assert classes["prediction"] == "right"
    assert classes["onset"] == "2.500000" and classes["duration"] == "0.400000"
    assert json.loads(classes["output"]) == {"probabilities": [0.3, 0.7],
                                             "labels": ["left", "right"]}
    assert classes["latency_ms"] == "2.000" and classes["late"] == "false"
    top = dict(zip(RESULT_COLUMNS, _row({**base, "labels": ["cat", "dog"], "ids": np.array(
        [7, 2]), "scores": np.array([0.9, 0.1]), "marker": None}, 10.0)))
    assert top["prediction"] == "cat" and top["marker"] == "n/a"
    assert json.loads(top["output"])["ids"] == [7, 2]


def test_a_multi_source_export_replays_with_the_config_that_recorded_it(tmp_path):
    """Issue 21: with several sources the BIDS files are named ``…_acq-<source>_…``; the
    sidecar keeps the stream each was, so the recording config binds every source again."""
    rng = np.random.default_rng(5)
    files = []
    for stem, names in (("amp-a", ["Fz", "Cz", "Pz", "Oz"]), ("amp-b", ["C3", "C4", "T7"])):
        raw = mne.io.RawArray(rng.standard_normal((len(names), 1500)) * 20e-6,
                              mne.create_info(names, 250.0, "eeg"), verbose="error")
        raw.set_annotations(mne.Annotations(ONSETS, [0.0] * 4, LABELS))
        files.append(tmp_path / f"{stem}_raw.fif")
        raw.save(files[-1], verbose="error")

    def config(record: str) -> dict:
        return {
            "sources": [{"name": "scalp", "kind": "lsl", "stream": {"name": "amp-a_raw"}},
                        {"name": "motor", "kind": "lsl", "stream": {"name": "amp-b_raw"}}],
            "decoders": [{"name": f"ev-{s}", "model": "builtin:bandpower", "source": s,
                          "window_ms": [0, 400], "on_marker": "stim", "runtime": "numpy"}
                         for s in ("scalp", "motor")],
            "sinks": [{"kind": "record", "path": str(tmp_path / record)}]}

    recording_config = tmp_path / "rec.toml"
    recording_config.write_text(tomli_w.dumps(config("session")))
    assert main(["-q", "run", str(recording_config), "--replay", *map(str, files)]) == 0
    root = tmp_path / "bids"
    assert main(["-q", "export", str(tmp_path / "session"), "--bids", str(root),
                 "--subject", "01", "--task", "motor", "--run", "1"]) == 0
    assert sorted(p.name for p in (root / "sub-01" / "eeg").glob("*_eeg.set")) == [
        "sub-01_task-motor_acq-motor_run-1_eeg.set", "sub-01_task-motor_acq-scalp_run-1_eeg.set"]

    again = tmp_path / "again.toml"
    again.write_text(tomli_w.dumps(config("again")))
    stats = tmp_path / "stats.json"
    assert main(["-q", "run", str(again), "--replay", f"bids:{root}?sub=01&task=motor",
                 "--stats-json", str(stats)]) == 0
    doc = json.loads(stats.read_text())
    assert {name: s["samples"] for name, s in doc["streams"].items()} == {"scalp": 1500,
                                                                          "motor": 1500}
    assert {name: d["results"] for name, d in doc["decoders"].items()} == {"ev-scalp": 4,
                                                                           "ev-motor": 4}
    replayed = read_session(tmp_path / "again")
    original = read_session(tmp_path / "session")
    for a, b in zip(sorted(replayed.streams, key=lambda s: s.source),
                    sorted(original.streams, key=lambda s: s.source), strict=True):
        assert (a.source, a.info.name, a.info.ch_names) == (b.source, b.info.name,
                                                             b.info.ch_names)
        np.testing.assert_array_equal(a.data, b.data)
