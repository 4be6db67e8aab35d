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
from rtbci.devices.session import read_markers, read_results
from rtbci.engine import Engine

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
    assert accuracy["n"] >= 3 and accuracy["chance"] == 0.5

    engine = Engine(parse_config(config), sinks=[type(collector)()])
    asyncio.run(engine.run_offline(recording))
    again = {(r.decoder, r.seq): r for r in engine.sinks[-1].results}
    live = {(m["decoder"], m["seq"]): m for m in recorded}
    assert set(live) <= set(again)  # offline never skips; live may skip at start-up
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
