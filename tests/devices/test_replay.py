"""Replay: files written by MNE's writers and an XDF file, over LSL into the engine and offline."""

import asyncio
import json
import uuid
from pathlib import Path

import mne
import numpy as np
import pytest

from rtbci.cli import main
from rtbci.config import parse_config
from rtbci.devices.recording import merge_recordings, read_recording
from rtbci.devices.replay import ReplayPublisher
from rtbci.engine import Engine
from rtbci.errors import RtbciError

pytestmark = pytest.mark.slow

DEMO_CLASSIFIER = Path(__file__).parents[2] / "rtbci" / "demo_bandpower.npz"
ONSETS = [0.8, 1.9, 3.26, 4.5]  # none halfway between two samples (see docs/replay.md)
LABELS = ["stim/left", "stim/right", "stim/left", "stim/right"]


def make_raw(seconds: float = 6.0, sfreq: float = 250.0) -> mne.io.RawArray:
    names = ["Fz", "Cz", "Pz", "Oz", "C3", "C4"]
    rng = np.random.default_rng(0)
    raw = mne.io.RawArray(rng.standard_normal((len(names), int(seconds * sfreq))) * 20e-6,
                          mne.create_info(names, sfreq, "eeg"), verbose="error")
    raw.set_annotations(mne.Annotations(ONSETS, [0.0] * 4, LABELS))
    return raw


def write(raw: mne.io.Raw, path) -> None:
    if path.suffix == ".fif":
        raw.save(path, verbose="error")
    else:
        mne.export.export_raw(path, raw, verbose="error")


def replay_into_engine(recording, config: dict, run_engine, wait_streaming, speed=1.0):
    publisher = ReplayPublisher(recording, speed)

    async def during(engine):
        publisher.open()
        for source in engine.acquisitions:
            await wait_streaming(engine, source)
        await asyncio.sleep(1.0)  # the marker reader subscribes too
        await asyncio.to_thread(publisher.run)

    return run_engine(config, 60.0, during)


@pytest.mark.parametrize("suffix", [".fif", ".edf", ".vhdr"])
def test_mne_files_arrive_over_lsl_with_every_annotation(tmp_path, run_engine, suffix,
                                                         wait_streaming):
    path = tmp_path / f"rec{uuid.uuid4().hex[:6]}{'_raw' if suffix == '.fif' else ''}{suffix}"
    write(make_raw(), path)
    recording = read_recording(path)
    stream = recording.streams[0]
    name = stream.info.name
    config = {"sources": [{"name": "eeg", "kind": "lsl", "stream": {"name": name},
                           "markers": {"name": f"{name}-markers"}}]}
    engine, stats = replay_into_engine(recording, config, run_engine, wait_streaming)
    ring = engine.streams["eeg"].buffer
    data, times = ring.window(0, ring.count)
    assert ring.count == len(stream.data), "every sample arrives"
    np.testing.assert_allclose(data, stream.data, rtol=1e-6)
    np.testing.assert_allclose(data, make_raw().get_data().T * 1e6, atol=0.05 if
                               suffix == ".edf" else 1e-3)  # EDF stores 16-bit integers
    assert engine.streams["eeg"].info.ch_names == ("Fz", "Cz", "Pz", "Oz", "C3", "C4")
    markers = list(engine.markers["eeg"])
    assert [text for _, text in markers] == [text for _, text in recording.markers]
    assert [text.removeprefix("Comment/") for _, text in markers] == LABELS  # BrainVision
    for (stamp, _), (t, _), onset in zip(markers, recording.markers, ONSETS, strict=True):
        assert stamp - times[0] == pytest.approx(t - recording.start, abs=1e-4)  # the file's
        assert stamp - times[0] == pytest.approx(onset, abs=1 / 250)  # (BrainVision: samples)


def test_xdf_with_two_streams_keeps_their_relative_timing(tmp_path, run_engine, xdf_writer,
                                                          wait_streaming):
    tag = uuid.uuid4().hex[:6]
    t0 = 5000.0
    eeg = np.random.default_rng(1).standard_normal((500, 3)).astype(np.float32)
    emg = np.random.default_rng(2).standard_normal((1000, 2)).astype(np.float32)
    path = tmp_path / "two.xdf"
    xdf_writer(path, [
        {"name": f"eeg{tag}", "type": "EEG", "srate": 100, "channels": ["a", "b", "c"],
         "data": eeg, "times": t0 + np.arange(500) / 100},
        {"name": f"emg{tag}", "type": "EMG", "srate": 200, "channels": ["x", "y"],
         "data": emg, "times": t0 + 0.5 + np.arange(1000) / 200},
        {"name": f"mk{tag}", "type": "Markers", "srate": 0, "channels": None,
         "data": ["go", "stop"], "times": [t0 + 1.0, t0 + 3.0]}])
    recording = read_recording(path)
    assert [s.info.name for s in recording.streams] == [f"eeg{tag}", f"emg{tag}"]
    config = {"sources": [
        {"name": "eeg", "kind": "lsl", "stream": {"name": f"eeg{tag}"},
         "markers": {"name": f"mk{tag}"}},  # replay publishes the XDF's marker stream as is
        {"name": "emg", "kind": "lsl", "stream": {"name": f"emg{tag}"}}]}
    engine, _ = replay_into_engine(recording, config, run_engine, wait_streaming, speed=2.0)
    eeg_ring, emg_ring = engine.streams["eeg"].buffer, engine.streams["emg"].buffer
    np.testing.assert_array_equal(eeg_ring.window(0, eeg_ring.count)[0], eeg)
    np.testing.assert_array_equal(emg_ring.window(0, emg_ring.count)[0], emg)
    eeg_t0 = eeg_ring.window(0, 1)[1][0]
    emg_t0 = emg_ring.window(0, 1)[1][0]
    assert emg_t0 - eeg_t0 == pytest.approx(0.5 / 2.0, abs=1e-3)  # at 2× speed
    assert [(round((t - eeg_t0) * 2, 3), text) for t, text in engine.markers["eeg"]] == [
        (1.0, "go"), (3.0, "stop")]


def test_live_at_1x_and_offline_give_the_same_outputs(tmp_path, run_engine, collector,
                                                     new_collector, wait_streaming):
    path = tmp_path / f"same{uuid.uuid4().hex[:6]}_raw.fif"
    write(make_raw(seconds=8.0), path)
    recording = read_recording(path)
    name = recording.streams[0].info.name
    decoders = [
        {"name": "bp", "model": "builtin:bandpower", "source": "eeg", "window_ms": 400,
         "every_ms": 100, "runtime": "numpy", "options": {"bands": [[4, 8], [8, 13]]}},
        {"name": "ev", "model": "builtin:bandpower", "source": "eeg", "window_ms": [-200, 600],
         "on_marker": "stim", "runtime": "numpy"}]
    live_config = {"sources": [{"name": "eeg", "kind": "lsl", "stream": {"name": name},
                                "markers": {"name": f"{name}-markers"},
                                "preprocess": {"bandpass": [1, 40]}}], "decoders": decoders}
    publisher = ReplayPublisher(recording, 1.0)

    async def during(engine):
        engine.sinks.append(collector)
        publisher.open()
        await wait_streaming(engine)
        while set(engine.scheduler.tasks) != {"bp", "ev"}:  # both decoders attached
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the marker reader subscribes too
        await asyncio.to_thread(publisher.run)

    engine, _ = run_engine(live_config, 60.0, during)
    live_t0 = engine.streams["eeg"].buffer.window(0, 1)[1][0]
    offline = new_collector()
    asyncio.run(Engine(parse_config(live_config), sinks=[offline]).run_offline(recording))
    key = lambda r: (r.decoder, r.seq)  # noqa: E731
    live = {key(r): r for r in collector.results}
    off = {key(r): r for r in offline.results}
    windows = (8 * 250 - 100) // 25 + 1  # 400 ms windows every 100 ms over 8 s at 250 Hz
    assert len(off) == windows + len(ONSETS)
    assert sorted(live) == sorted(off), "the same windows, numbered alike, nothing skipped"
    for k in off:
        a, b = live[k], off[k]
        assert a.window_start - live_t0 == pytest.approx(b.window_start - recording.start,
                                                         abs=1e-4)
        assert a.marker == b.marker
        np.testing.assert_allclose(a.embedding, b.embedding, rtol=1e-5)


def eeg_source(name: str, stream: str, **extra) -> dict:
    return {"name": name, "kind": "lsl", "stream": {"name": stream}, **extra}


def on_marker(name: str, source: str, prefix: str) -> dict:
    return {"name": name, "model": "builtin:bandpower", "source": source,
            "window_ms": [0, 200], "on_marker": prefix, "runtime": "numpy"}


def test_each_file_stream_feeds_its_own_source_with_its_own_markers(tmp_path, collector):
    """Two single-stream files replayed together: each source reads its file's stream and
    only that file's annotations (before: every marker reached every source)."""
    write(make_raw(), tmp_path / "a_raw.fif")
    other = make_raw()
    other.set_annotations(mne.Annotations([1.0, 2.0], [0.0, 0.0], ["cue/x", "cue/y"]))
    write(other, tmp_path / "b_raw.fif")
    recording = merge_recordings([read_recording(tmp_path / f) for f in ("a_raw.fif",
                                                                          "b_raw.fif")])
    config = {"sources": [eeg_source("a", "a_raw"), eeg_source("b", "b_raw")],
              "decoders": [on_marker("on_a", "a", "stim"), on_marker("on_b", "b", "cue"),
                           on_marker("stim_on_b", "b", "stim")]}
    engine = Engine(parse_config(config), sinks=[collector])
    stats = asyncio.run(engine.run_offline(recording))
    assert [text for _, text in engine.markers["a"]] == LABELS
    assert [text for _, text in engine.markers["b"]] == ["cue/x", "cue/y"]
    assert {d: s["results"] for d, s in stats["decoders"].items()} == {
        "on_a": 4, "on_b": 2, "stim_on_b": 0}
    assert engine.problems(stats) == [
        "decoder 'stim_on_b' produced no results (none of the 2 markers of source 'b' "
        "matched on_marker 'stim', e.g. 'cue/x')"]


def test_a_stream_goes_to_one_source_and_unmatched_sources_are_named(tmp_path, capsys):
    """The demo's case: several sources, a file with one stream. Only the source it names
    reads it; the others are named with what the file holds, and the run exits 1 (before:
    every source bound to the only stream, every decoder got 0 results, exit status 0)."""
    write(make_raw(), tmp_path / "eeg_raw.fif")
    config = tmp_path / "two.toml"
    config.write_text(
        '[[sources]]\nname = "eeg_raw"\nkind = "simulate"\n'
        '[[sources]]\nname = "motor"\nkind = "simulate"\ntask = "motor-gnn"\n'
        '[[decoders]]\nname = "bp"\nmodel = "builtin:bandpower"\nsource = "eeg_raw"\n'
        'window_ms = 400\nevery_ms = 100\nruntime = "numpy"\n'
        '[[decoders]]\nname = "mbp"\nmodel = "builtin:bandpower"\nsource = "motor"\n'
        'window_ms = 400\nevery_ms = 100\nruntime = "numpy"\n')
    stats_path = tmp_path / "stats.json"
    assert main(["-q", "run", str(config), "--replay", str(tmp_path / "eeg_raw.fif"),
                 "--stats-json", str(stats_path)]) == 1
    err = capsys.readouterr().err
    assert ("rtbci: error: source 'motor' matches no recorded stream (recorded: 'eeg_raw' "
            "(EEG, 6 ch @ 250 Hz))") in err
    assert ("rtbci: error: decoder 'mbp' produced no results (its source 'motor' matches "
            "no recorded stream)") in err
    assert "'bp'" not in err
    stats = json.loads(stats_path.read_text())
    assert stats["decoders"]["bp"]["results"] == (6 * 250 - 100) // 25 + 1
    assert stats["streams"]["motor"]["state"] == "unmatched"


def test_xdf_marker_streams_pair_with_sources_as_live(tmp_path, collector, xdf_writer):
    """An XDF's marker streams go where a live run sends them: ``<signal>-markers`` to that
    signal's source, any other to the sources whose ``markers`` query selects it."""
    t0 = 100.0
    sig = np.zeros((500, 2), np.float32)
    xdf_writer(tmp_path / "m.xdf", [
        {"name": "eeg", "type": "EEG", "srate": 100, "channels": ["a", "b"], "data": sig,
         "times": t0 + np.arange(500) / 100},
        {"name": "emg", "type": "EMG", "srate": 100, "channels": ["a", "b"], "data": sig,
         "times": t0 + np.arange(500) / 100},
        {"name": "PsychoPy", "type": "Markers", "srate": 0, "channels": None,
         "data": ["go", "stop"], "times": [t0 + 1.0, t0 + 3.0]},
        {"name": "emg-markers", "type": "Markers", "srate": 0, "channels": None,
         "data": ["burst"], "times": [t0 + 2.0]}])
    recording = read_recording(tmp_path / "m.xdf")
    assert [(ms.name, ms.owner) for ms in recording.marker_streams] == [
        ("PsychoPy", None), ("emg-markers", 1)]
    config = {"sources": [eeg_source("eeg", "eeg", markers={"name": "PsychoPy"}),
                          eeg_source("emg", "emg"), eeg_source("quiet", "eeg")]}
    engine = Engine(parse_config(config), sinks=[collector])
    asyncio.run(engine.run_offline(recording))
    assert [text for _, text in engine.markers["eeg"]] == ["go", "stop"]
    assert [text for _, text in engine.markers["emg"]] == ["burst"]
    assert list(engine.markers["quiet"]) == []  # no markers query: none, as live
    assert engine.streams["quiet"].buffer.count == 500  # two sources may name one stream


def test_the_replay_docs_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/replay.md: simulated recordings for each of the demo's sources, replayed with
    the demo config: every decoder scores events (before: 0 results and exit status 0)."""
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    main(["-q", "simulate", "--save", "eeg.fif", "--duration", "30", "--snr", "0.5",
          "--seed", "7"])
    for name, family in [("motor", "motor-gnn"), ("words", "seeg-words"),
                         ("images", "image-retrieval"), ("speech", "speech")]:
        main(["-q", "simulate", "--family", family, "--trials", "8", "--seed", "7",
              "--save", f"{name}.fif"])
    capsys.readouterr()
    assert main(["demo", "--print-config"]) == 0
    (tmp_path / "demo.toml").write_text(capsys.readouterr().out)
    (tmp_path / "demo_bandpower.npz").write_bytes(DEMO_CLASSIFIER.read_bytes())
    status = main(["-q", "run", "demo.toml", "--replay", "eeg.fif", "motor.fif", "words.fif",
                   "images.fif", "speech.fif", "--report", "report.json"])
    assert status == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text())["decoders"]
    assert set(report) == {"trial", "outcome", "word", "image", "segment"}
    assert all(entry["n"] >= 8 for entry in report.values())


def test_unreadable_inputs_are_named(tmp_path):
    with pytest.raises(RtbciError, match="nope.fif: no such file"):
        read_recording(tmp_path / "nope.fif")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(RtbciError, match="x.txt: unknown format"):
        read_recording(tmp_path / "x.txt")
    (tmp_path / "bad_raw.fif").write_bytes(b"not a fif")
    with pytest.raises(RtbciError, match="bad_raw.fif: cannot read it"):
        read_recording(tmp_path / "bad_raw.fif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RtbciError, match="not an rtbci session directory"):
        read_recording(tmp_path / "empty")


@pytest.mark.parametrize("suffix", ["_raw.fif", ".edf"])
def test_recordings_read_block_by_block_equal_one_read(tmp_path, suffix):
    """A file read in blocks (MNE's float64 copies one block at a time) gives the samples of
    reading it whole, bit for bit, blocks ending mid-file included."""
    from rtbci.devices.recording import _float32_samples, info_from_mne

    path = tmp_path / f"blocks{suffix}"
    write(make_raw(seconds=6.0), path)  # 1,500 samples
    raw = mne.io.read_raw(path, preload=False, verbose="error")
    _, factors = info_from_mne(raw.info, "blocks", "blocks")
    whole = (raw.get_data().T * factors).astype(np.float32)
    np.testing.assert_array_equal(_float32_samples(raw, factors, block=256), whole)
    np.testing.assert_array_equal(read_recording(path).streams[0].data, whole)
