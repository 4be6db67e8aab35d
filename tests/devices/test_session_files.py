"""Session directories as they come: torn tails, crafted fields, file permissions."""

import asyncio
import json
import logging
import os
import stat
import uuid
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from rtbci.cli import main
from rtbci.devices.recording import read_recording
from rtbci.devices.session import SessionWriter, read_results
from rtbci.messages import Result, encode
from rtbci.sinks.record import RecordSink, RecordSinkConfig
from rtbci.stream import StreamInfo

N, N_CHANNELS, SRATE = 500, 3, 100.0
MARKERS = [(11.0, "stim/left"), (12.5, "stim/right"), (13.25, "stim/left")]


def result(seq: int) -> Result:
    return Result(decoder="bp", seq=seq, trigger="every", window_start=10.0 + seq,
                  window_end=10.5 + seq, t_arrived=10.5 + seq, t_published=10.51 + seq,
                  kind="classes", labels=["left", "right"],
                  probabilities=np.array([0.25, 0.75], np.float32))


def write_session(path: Path, name: str = "eeg-lsl", private: bool = True) -> np.ndarray:
    """A small finished session (``N`` samples, ``MARKERS``, two results); its samples."""
    writer = SessionWriter(path, {"session": "s"}, **({} if private else {"private": False}))
    info = StreamInfo(name=name, type="EEG", source_id=name, srate=SRATE,
                      ch_names=("Fz", "Cz", "Pz"), ch_types=("eeg",) * 3,
                      ch_units=("microvolts",) * 3, positions=np.eye(3) * 0.09)
    writer.add_stream("eeg", info)
    data = np.random.default_rng(0).standard_normal((N, N_CHANNELS)).astype(np.float32)
    writer.write_samples("eeg", data, 10 + np.arange(N) / SRATE)
    for t, text in MARKERS:
        writer.write_marker("eeg", t, text)
    for seq in (0, 1):
        writer.write_result(encode(result(seq)))
    writer.close()
    return data


def edit_json(file: Path, **fields) -> None:
    content = json.loads(file.read_text())
    content.update(fields)
    file.write_text(json.dumps(content))


def test_a_torn_tail_in_every_file_reads_up_to_the_last_whole_record(tmp_path):
    """A crash or a full disk can cut any file mid-record: a partial float32 sample, a
    partial float64 timestamp, half a marker line, half a result message. Reading keeps
    every whole one (before: a .f32 ending mid-float made the whole session unreadable)."""
    path = tmp_path / "s"
    data = write_session(path)
    with open(path / "eeg.f32", "ab") as f:
        f.write(np.float32(1.5).tobytes()[:2])
    with open(path / "eeg.ts.f64", "ab") as f:
        f.write(np.float64(99.0).tobytes()[:5])
    with open(path / "markers.jsonl", "a") as f:
        f.write('{"source": "eeg", "timestamp": 14.0, "te')
    with open(path / "results.msgpack", "ab") as f:
        f.write(encode(result(2))[:20])
    recording = read_recording(path)
    stream = recording.streams[0]
    np.testing.assert_array_equal(stream.data, data)
    np.testing.assert_array_equal(stream.times, 10 + np.arange(N) / SRATE)
    assert recording.markers == MARKERS
    assert [r["seq"] for r in read_results(path)] == [0, 1]


@pytest.mark.parametrize("srate", [float("nan"), -5, 0, "fast", None])
def test_a_bad_srate_is_one_line_naming_the_file_and_the_field(tmp_path, capsys, srate):
    """srate NaN, −5, 0, a string or null in <source>.json: `rtbci replay` and `rtbci run
    --replay` say so in one line naming the file and the field, exit 2 (before: a traceback
    from deep in the replay for NaN)."""
    path = tmp_path / "s"
    write_session(path, f"bad{uuid.uuid4().hex[:6]}")
    edit_json(path / "eeg.json", srate=srate)
    config = tmp_path / "c.toml"
    config.write_text(tomli_w.dumps({"sources": [{"name": "eeg", "kind": "lsl",
                                                      "stream": {"type": "EEG"}}]}))
    for argv in (["replay", str(path), "--speed", "max"],
                 ["run", str(config), "--replay", str(path)]):
        assert main(["-q", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"rtbci: error: {path / 'eeg.json'}: srate: {srate!r} is not a sampling "
                       "rate (a finite number > 0)"]


def test_bad_marker_lines_are_skipped_counted_and_named(tmp_path, caplog):
    """A string marker time (or a line that is not a marker at all) in markers.jsonl skips
    that line with one warning naming the file, the count and the first line; the other
    markers are kept (before: the whole session failed to read)."""
    path = tmp_path / "s"
    write_session(path)
    with open(path / "markers.jsonl", "a") as f:
        f.write('{"source": "eeg", "timestamp": "14.0", "text": "stim/right"}\n'
                'not json\n'
                '{"source": "eeg", "timestamp": NaN, "text": "stim/left"}\n'
                '{"source": "eeg", "timestamp": 15.0, "text": 7}\n'
                '{"source": "eeg", "timestamp": 16.0, "text": "stim/right"}\n')
    with caplog.at_level(logging.WARNING):
        recording = read_recording(path)
    assert recording.markers == [*MARKERS, (16.0, "stim/right")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{path / 'markers.jsonl'}: skipped 4 line(s) that are not markers "
                        "(line 4: timestamp '14.0' is not a finite number)"]


def test_a_bad_optional_field_is_left_out_not_the_source(tmp_path, caplog):
    """A channel position like "12,5", units of the wrong length: the stream is still read
    (without them), with one warning naming the file and the fields."""
    path = tmp_path / "s"
    data = write_session(path)
    edit_json(path / "eeg.json", positions=[["12,5", 0, 0]] * 3, ch_units=["uV"])
    with caplog.at_level(logging.WARNING):
        stream = read_recording(path).streams[0]
    np.testing.assert_array_equal(stream.data, data)
    assert stream.info.positions is None and stream.info.ch_units == ("",) * 3
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{path / 'eeg.json'}: ch_units, positions not valid: left out"]


@pytest.mark.parametrize("field", ["ch_names", "name"])
def test_a_missing_required_field_is_one_line(tmp_path, capsys, field):
    path = tmp_path / "s"
    write_session(path)
    content = json.loads((path / "eeg.json").read_text())
    del content[field]
    (path / "eeg.json").write_text(json.dumps(content))
    assert main(["-q", "replay", str(path), "--speed", "max"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rtbci: error: {path / 'eeg.json'}: {field}:")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_recordings_are_private_by_default(tmp_path, umask_022):
    """A lab's recordings are personal data: the session directory is 0700 and every file
    in it 0600 (the FIF written at the end too), whatever the umask allows."""
    path = tmp_path / "s"
    write_session(path)
    assert mode(path) == 0o700
    files = sorted(p.name for p in path.iterdir())
    assert files == ["eeg.f32", "eeg.json", "eeg.ts.f64", "eeg_raw.fif", "markers.jsonl",
                     "results.msgpack", "session.json"]
    assert {name: mode(path / name) for name in files} == dict.fromkeys(files, 0o600)


def test_private_false_follows_the_umask(tmp_path, umask_022):
    path = tmp_path / "s"
    write_session(path, private=False)
    assert mode(path) == 0o755
    assert {mode(p) for p in path.iterdir()} == {0o644}


@pytest.mark.parametrize(("fmt", "private", "expected"),
                         [("session", True, 0o700), ("session", False, 0o755),
                          ("xdf", True, 0o600), ("xdf", False, 0o644)])
def test_the_record_sink_key_private(tmp_path, umask_022, fmt, private, expected):
    """The record sink's ``private`` key (default true) reaches the directory / XDF file."""
    config = RecordSinkConfig(path=str(tmp_path / "{session}"), format=fmt, private=private)
    sink = RecordSink(config, "lab1")

    async def run():
        await sink.start({})
        await sink.close()

    asyncio.run(run())
    assert mode(sink.path) == expected
    if fmt == "session":
        assert {mode(p) for p in sink.path.iterdir()} == {expected & 0o666}


def test_a_stream_cut_off_before_its_first_sample_is_left_out(tmp_path, caplog):
    """A full disk can cut <source>.json short before any sample of that source was written:
    the session still opens with its other sources."""
    path = tmp_path / "s"
    data = write_session(path)
    (path / "emg.json").write_text('{"name": "emg", "srate": 1')
    (path / "emg.f32").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        recording = read_recording(path)
    assert [s.source for s in recording.streams] == ["eeg"]
    np.testing.assert_array_equal(recording.streams[0].data, data)
    assert any(f"{path / 'emg.json'}: not valid JSON, and no samples" in r.getMessage()
               for r in caplog.records)
