"""The record sink's XDF output: read back by pyxdf and rtbci's replay bit-exact, and an XDF
in LabRecorder's layout recorded through rtbci unchanged."""

import json
import logging

import numpy as np
import pytest
import pyxdf
import tomli_w

from rtbci.cli import main
from rtbci.devices.recording import read_recording
from rtbci.devices.xdf import XdfWriter

pytestmark = pytest.mark.slow
CHANNELS = ["Fz", "Cz", "Pz", "C3"]
MARKERS = ["stim/left", "stim/right", "stim/left"]


def load(path):
    logging.getLogger("pyxdf").setLevel(logging.ERROR)
    streams, header = pyxdf.load_xdf(str(path), dejitter_timestamps=False)
    return {s["info"]["name"][0]: s for s in streams}, header


def labrecorder_file(tmp_path, xdf_writer):
    """What LabRecorder writes for an EEG app and a marker app on another machine: raw
    timestamps on their clocks, and ClockOffset chunks that bring them onto the recorder's."""
    rng = np.random.default_rng(5)
    eeg = (rng.standard_normal((2000, 4)) * 25).astype(np.float32)
    t0 = 7000.0
    path = tmp_path / "lab.xdf"
    xdf_writer(path, [
        {"name": "amp", "type": "EEG", "srate": 250, "channels": CHANNELS, "data": eeg,
         "times": t0 + np.arange(2000) / 250, "offsets": [(7001.0, -0.25), (7006.0, -0.25)]},
        {"name": "amp-markers", "type": "Markers", "srate": 0, "channels": None,
         "data": MARKERS, "times": [t0 + 1.5, t0 + 3.75, t0 + 6.2],
         "offsets": [(7001.0, -0.25), (7006.0, -0.25)]}])
    return path


def record_config(tmp_path, name: str) -> tuple:
    out = tmp_path / name
    config = tmp_path / f"{name}.toml"
    config.write_text(tomli_w.dumps({
        "engine": {"session": "x"},
        "sources": [{"name": "eeg", "kind": "lsl", "stream": {"name": "amp"}}],
        "decoders": [
            {"name": "bp", "model": "builtin:bandpower", "source": "eeg", "window_ms": 400,
             "every_ms": 200, "runtime": "numpy", "options": {"bands": [[8, 13]]}},
            {"name": "ev", "model": "builtin:bandpower", "source": "eeg",
             "window_ms": [0, 400], "on_marker": "stim", "runtime": "numpy"}],
        "sinks": [{"kind": "record", "format": "xdf", "path": str(out)}]}))
    return config, out.with_name(out.name + ".xdf")


def test_a_labrecorder_xdf_records_through_rtbci_unchanged_and_replays_bit_exact(
        tmp_path, xdf_writer):
    lab = labrecorder_file(tmp_path, xdf_writer)
    source, _ = load(lab)  # as pyxdf reads it: clock offsets applied
    config, out = record_config(tmp_path, "rec")
    assert main(["-q", "run", str(config), "--replay", str(lab)]) == 0

    got, header = load(out)
    assert header["info"]["version"] == ["1.0"]
    amp = got["amp"]
    np.testing.assert_array_equal(amp["time_series"], source["amp"]["time_series"])
    np.testing.assert_array_equal(amp["time_stamps"], source["amp"]["time_stamps"])
    assert amp["time_stamps"][0] == pytest.approx(7000.0 - 0.25)  # LabRecorder's offsets
    assert amp["time_series"].dtype == np.float32
    assert amp["info"]["nominal_srate"] == ["250"]
    channels = amp["info"]["desc"][0]["channels"][0]["channel"]
    assert [c["label"][0] for c in channels] == CHANNELS
    assert {c["unit"][0] for c in channels} == {"microvolts"}
    markers = got["amp-markers"]
    assert [m[0] for m in markers["time_series"]] == MARKERS
    np.testing.assert_array_equal(markers["time_stamps"],
                                  source["amp-markers"]["time_stamps"])
    # each decoder's results as its own stream, stamped with its window's end
    results = {d: [json.loads(s[0]) for s in got[f"rtbci-x-{d}"]["time_series"]]
               for d in ("bp", "ev")}
    assert [r["marker"] for r in results["ev"]] == MARKERS
    assert len(results["bp"]) == (2000 - 100) // 50 + 1  # 400 ms every 200 ms over 8 s
    np.testing.assert_array_equal(got["rtbci-x-bp"]["time_stamps"],
                                  [r["window_end"] for r in results["bp"]])
    # every stream carries its clock offsets (0: the timestamps are on the recorder's clock)
    for stream in got.values():
        assert len(stream["clock_values"]) >= 1 and not np.any(stream["clock_values"])

    # rtbci's replay reads it back bit-exact (the result streams are outputs: left out) …
    recording = read_recording(out)
    assert [s.info.name for s in recording.streams] == ["amp"]
    np.testing.assert_array_equal(recording.streams[0].data, source["amp"]["time_series"])
    assert [t for _, t in recording.markers] == MARKERS
    # … and replaying the recorded XDF again gives the same decoder outputs, bit for bit
    config2, out2 = record_config(tmp_path, "again")
    assert main(["-q", "run", str(config2), "--replay", str(out)]) == 0
    again, _ = load(out2)
    for decoder in ("bp", "ev"):
        outputs = [json.loads(s[0]) for s in again[f"rtbci-x-{decoder}"]["time_series"]]
        assert [(r["seq"], r["window_end"], r["embedding"]) for r in outputs] == [
            (r["seq"], r["window_end"], r["embedding"]) for r in results[decoder]]
    np.testing.assert_array_equal(again["amp"]["time_series"], amp["time_series"])


def test_an_xdf_cut_short_reads_up_to_its_last_flush(tmp_path):
    writer = XdfWriter(tmp_path / "cut.xdf")
    sid = writer.add_stream("s", "EEG", 2, 100.0, "float32", "s-id")
    data = np.arange(20, dtype=np.float32).reshape(10, 2)
    writer.write_samples(sid, data, 1.0 + np.arange(10) / 100)
    writer.write_clock_offset(sid, 1.05, 0.0)
    writer.flush()
    writer.write_samples(sid, data[:3] + 100, 2.0 + np.arange(3) / 100)
    writer.flush()  # no footer: the process died here
    streams, _ = load(tmp_path / "cut.xdf")
    np.testing.assert_array_equal(streams["s"]["time_series"],
                                  np.concatenate([data, data[:3] + 100]))
    assert len(streams["s"]["time_stamps"]) == 13
    with pytest.raises(Exception, match="exists already"):
        XdfWriter(tmp_path / "cut.xdf")
