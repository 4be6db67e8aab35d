"""The session recorder: what it writes, re-running it offline, and surviving a kill."""

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mne
import numpy as np
import pytest
import tomli_w

from rtbci.cli import main
from rtbci.config import parse_config
from rtbci.devices.recording import read_recording
from rtbci.devices.session import SessionWriter, read_markers, read_results
from rtbci.engine import Engine
from rtbci.stream import StreamInfo

pytestmark = pytest.mark.slow

DEMO_CLASSIFIER = Path(__file__).parents[2] / "rtbci" / "demo_bandpower.npz"


def session_config(tmp_path: Path, name: str) -> dict:
    return {
        "engine": {"session": name},
        "sources": [{"name": "eeg", "kind": "simulate", "stream_name": name, "snr": 0.5,
                     "preprocess": {"notch": 50}}],
        "decoders": [
            {"name": "bp", "model": "builtin:bandpower", "source": "eeg", "window_ms": 500,
             "every_ms": 100, "runtime": "numpy"},
            {"name": "trial", "model": "builtin:bandpower", "source": "eeg",
             "window_ms": [0, 600], "on_marker": "stim", "runtime": "numpy",
             "options": {"bands": [[1, 4], [4, 8], [8, 13]],
                         "classifier": str(DEMO_CLASSIFIER)}}],
        "sinks": [{"kind": "record", "path": str(tmp_path / "{session}"), "flush_s": 0.5}]}


def test_a_recorded_session_rerun_offline_reproduces_its_results(tmp_path, collector,
                                                                 capsys):
    name = f"rec{uuid.uuid4().hex[:6]}"
    config = session_config(tmp_path, name)
    engine = Engine(parse_config(config), sinks=[collector])
    stats = asyncio.run(engine.run(7.0))
    path = tmp_path / name
    assert stats["sinks"]["record[0]"]["path"] == str(path)
    header = json.loads((path / "session.json").read_text())
    assert header["format"] == "rtbci-session" and header["versions"]["rtbci"]
    assert header["config"]["decoders"][1]["on_marker"] == "stim"
    recorded = read_results(path)
    assert len(recorded) == len(collector.results) > 50
    assert [m["text"] for m in read_markers(path)] == [t for _, t in engine.markers["eeg"]]
    recording = read_recording(path)
    ring = engine.streams["eeg"].buffer
    assert len(recording.streams[0].times) == ring.count
    np.testing.assert_array_equal(recording.streams[0].times, ring.window(0, ring.count)[1])
    raw = mne.io.read_raw(path / "eeg_raw.fif", verbose="error")  # MNE opens it too
    assert raw.n_times == ring.count and len(raw.annotations) == len(recording.markers)

    config.pop("sinks")
    config_path = tmp_path / "offline.toml"
    config_path.write_text(tomli_w.dumps(config))
    report = tmp_path / "report.json"
    stats_path = tmp_path / "stats.json"
    assert main(["-q", "run", str(config_path), "--replay", str(path), "--report",
                 str(report), "--stats-json", str(stats_path)]) == 0
    offline = json.loads(stats_path.read_text())
    assert offline["replay"]["speed"] > 5  # × real time
    accuracy = json.loads(report.read_text())["decoders"]["trial"]
    majority = max(sum(row.values()) for row in accuracy["confusion"].values())
    assert accuracy["n"] >= 3 and accuracy["chance"] == majority / accuracy["n"]
    assert accuracy["chance_uniform"] == 0.5

    engine = Engine(parse_config(config), sinks=[type(collector)()])
    asyncio.run(engine.run_offline(recording))
    again = {(r.decoder, r.seq): r for r in engine.sinks[-1].results}
    live = {(m["decoder"], m["seq"]): m for m in recorded}
    for decoder in ("bp", "trial"):  # live starts when its decoder attached, then misses none
        seqs = sorted(seq for d, seq in live if d == decoder)
        assert seqs == sorted(seq for d, seq in again if d == decoder and seq >= seqs[0])
    assert {k for k in live if k[0] == "trial"} == {k for k in again if k[0] == "trial"}
    for key, message in live.items():
        result = again[key]
        assert result.window_start == message["window_start"]
        assert result.marker == message["marker"]
        out = result.probabilities if result.kind == "classes" else result.embedding
        expected = message["probabilities"] if result.kind == "classes" else message[
            "embedding"]
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_a_killed_recorder_leaves_a_readable_session(tmp_path):
    name = f"kill{uuid.uuid4().hex[:6]}"
    config_path = tmp_path / "c.toml"
    config_path.write_text(tomli_w.dumps(session_config(tmp_path, name)))
    proc = subprocess.Popen([sys.executable, "-m", "rtbci", "-q", "run", str(config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path = tmp_path / name
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until ~3 s of samples are on disk
        f32 = path / "eeg.f32"
        if f32.exists() and f32.stat().st_size > 3 * 1000 * 64 * 4:
            break
        time.sleep(0.2)
    killed_at = f32.stat().st_size // (64 * 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    recording = read_recording(path)
    stream = recording.streams[0]
    assert len(stream.times) >= killed_at >= 3000
    assert np.all(np.diff(stream.times) > 0)
    assert stream.info.n_channels == 64 and stream.info.ch_names[0] == "Fp1"
    results = read_results(path)
    assert len(results) >= 15 and results[-1]["decoder"] in ("bp", "trial")
    assert results[-1]["t_published"] > stream.times[0]
    assert len(read_markers(path)) >= 1
    assert not (path / "eeg_raw.fif").exists()  # only a clean stop converts to FIF


def test_markers_keep_their_source_through_the_session(tmp_path, collector):
    """Two sources recorded in one session: each source's markers are read back as its own,
    written into its own FIF only, and replayed offline to that source only (before: every
    FIF and every source got every marker)."""
    writer = SessionWriter(tmp_path / "s", {"session": "two"})
    for source, n_channels in (("eeg", 3), ("emg", 2)):
        info = StreamInfo(name=f"{source}-lsl", type="EEG", source_id=source, srate=100.0,
                          ch_names=tuple(f"c{i}" for i in range(n_channels)),
                          ch_types=("eeg",) * n_channels, ch_units=("microvolts",) * n_channels)
        writer.add_stream(source, info)
        writer.write_samples(source, np.zeros((600, n_channels)), 50 + np.arange(600) / 100)
    for source, t, text in [("eeg", 51.0, "stim/a"), ("emg", 52.0, "burst"),
                            ("eeg", 53.0, "stim/b"), ("gone", 54.0, "lost")]:
        writer.write_marker(source, t, text)
    writer.close()
    recording = read_recording(tmp_path / "s")
    assert [(s.source, s.info.name) for s in recording.streams] == [("eeg", "eeg-lsl"),
                                                                    ("emg", "emg-lsl")]
    assert [(ms.name, ms.owner, [text for _, text in ms.markers])
            for ms in recording.marker_streams] == [
        ("eeg-lsl-markers", 0, ["stim/a", "stim/b"]), ("emg-lsl-markers", 1, ["burst"])]
    for source, texts in (("eeg", ["stim/a", "stim/b"]), ("emg", ["burst"])):
        raw = mne.io.read_raw(tmp_path / "s" / f"{source}_raw.fif", verbose="error")
        assert list(raw.annotations.description) == texts
        assert list(raw.annotations.onset) == pytest.approx(
            [t - 50 for t, _ in recording.marker_streams[source == "emg"].markers])
    config = {"sources": [{"name": name, "kind": "lsl", "stream": {"type": "EEG"}}
                          for name in ("eeg", "emg")]}
    engine = Engine(parse_config(config), sinks=[collector])
    asyncio.run(engine.run_offline(recording))
    assert [text for _, text in engine.markers["eeg"]] == ["stim/a", "stim/b"]
    assert [text for _, text in engine.markers["emg"]] == ["burst"]
    assert engine.streams["emg"].info.n_channels == 2  # each source its own recorded stream
