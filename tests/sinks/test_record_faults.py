"""The recorder against a failing disk and an unwritable path: decoding goes on, one line
says what happened, the stats count what was lost, and what was written replays."""

import asyncio
import errno
import logging
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from rtbci.cli import main
from rtbci.config import parse_config
from rtbci.devices import session as session_files
from rtbci.devices.recording import read_recording
from rtbci.devices.session import read_markers, read_results
from rtbci.engine import Engine
from rtbci.sinks.base import Sink

pytestmark = pytest.mark.slow

N_CHANNELS = 64  # the simulator's eeg64 profile, at 1000 Hz


def config(record_path: Path, name: str, **record) -> dict:
    return {
        "engine": {"session": name},
        "sources": [{"name": "eeg", "kind": "simulate", "stream_name": name}],
        "decoders": [{"name": "bp", "model": "builtin:bandpower", "source": "eeg",
                      "window_ms": 500, "every_ms": 100, "runtime": "numpy"}],
        "sinks": [{"kind": "record", "path": str(record_path / "{session}"), "flush_s": 0.2,
                   **record}]}


def record_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "rtbci.sinks.record" and r.levelno >= logging.ERROR]


class DataFileOnDevFull(Sink):
    """Started right after the record sink (before any source): makes the session's
    ``eeg.f32`` a link to /dev/full, where every write fails with a real ENOSPC."""

    kind = "devfull"

    def __init__(self, session_dir: Path):
        self.session_dir = session_dir

    async def start(self, status: dict) -> None:
        os.symlink("/dev/full", self.session_dir / "eeg.f32")

    def publish(self, result) -> None:
        pass


def test_a_full_disk_is_one_line_and_decoding_goes_on(tmp_path, collector, caplog):
    """ENOSPC on the sample file for a whole run (before: the recorder thread died with a
    traceback and the stats still claimed every sample as recorded)."""
    name = f"full{uuid.uuid4().hex[:6]}"
    engine = Engine(parse_config(config(tmp_path, name, retry_s=0.5)),
                    sinks=[DataFileOnDevFull(tmp_path / name), collector])
    with caplog.at_level(logging.INFO):
        stats = asyncio.run(engine.run(5.0))
    record = stats["sinks"]["record[0]"]
    assert len(collector.results) > 10  # decoding went on
    assert record["state"] == "failing" and record["samples"] == {"eeg": 0}
    assert record["lost_samples"] == stats["streams"]["eeg"]["samples"] > 1000
    assert record["write_errors"] >= 3  # the first, retries by the (living) thread, the last
    assert record["error"] == (f"cannot write {tmp_path / name / 'eeg.f32'}: No space left on "
                               "device (ENOSPC)")
    assert record_errors(caplog) == [f"record: {record['error']}; decoding goes on, the "
                                     "recorder retries every 0.5 s"]
    # markers and results live in other files, which still work; their counts are exact
    assert len(read_results(tmp_path / name)) == record["results"] == len(collector.results)
    assert len(read_markers(tmp_path / name)) == record["markers"]
    assert record["lost_results"] == record["lost_markers"] == 0
    assert (tmp_path / name / "eeg.ts.f64").stat().st_size == 0  # both files or neither
    assert engine.problems(stats) == [  # `rtbci run` prints it as an error and exits 1
        f"record[0]: recording lost {record['lost_samples']} samples, 0 markers, 0 results "
        f"({record['error']})"]


class InjectedFault:
    """EIO / EROFS at the file-write boundary (there is no faulty disk or read-only remount
    to be had here): while on, a write puts out a few bytes of its data, then the next one
    fails, as a dying disk does."""

    def __init__(self, monkeypatch, code: int):
        self.code, self.on, self.torn = code, threading.Event(), set()
        real = os.write

        def write(fd: int, data) -> int:
            if self.on.is_set():
                if fd not in self.torn and len(data) > 3:
                    self.torn.add(fd)
                    return real(fd, bytes(data[:3]))
                raise OSError(code, os.strerror(code))
            return real(fd, data)

        monkeypatch.setattr(session_files, "_write", write)

    def start(self) -> None:
        self.on.set()

    def stop(self) -> None:
        self.on.clear()

    def strerror(self) -> str:
        return f"{os.strerror(self.code)} ({errno.errorcode[self.code]})"


class FullTmpfs:
    """A real ENOSPC: a 16 MiB tmpfs filled by a file, then freed (needs mount rights)."""

    def __init__(self, mountpoint: Path):
        self.mountpoint = mountpoint
        mountpoint.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs",
                               str(mountpoint)], capture_output=True)
        if done.returncode:
            mountpoint.rmdir()
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")

    def start(self) -> None:
        fd = os.open(self.mountpoint / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, bytes(65536)):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def stop(self) -> None:
        (self.mountpoint / "filler").unlink()

    def strerror(self) -> str:
        return "No space left on device (ENOSPC)"

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.mountpoint)], check=True)


@pytest.fixture(params=["EIO", "EROFS", "ENOSPC"])
def fault(request, tmp_path, monkeypatch):
    if request.param == "ENOSPC":
        fs = FullTmpfs(tmp_path / "fs")
        yield fs, fs.mountpoint
        fs.close()
    else:
        yield InjectedFault(monkeypatch, getattr(errno, request.param)), tmp_path


async def until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_the_recorder_resumes_after_a_write_error_with_consistent_files(fault, collector,
                                                                        caplog):
    """A disk that fails for longer than the buffer (1 s) and comes back: one ERROR line
    naming the file and the error, one line when writing resumes; samples lost in between
    are counted and show as one gap in the timestamps; the files hold as many samples as
    timestamps (no torn bytes), exactly the samples counted as written; markers and
    results waited in memory and none was lost (before: the recorder thread died)."""
    fault, root = fault
    name = f"eio{uuid.uuid4().hex[:6]}"
    engine = Engine(parse_config(config(root, name, buffer_seconds=1.0, retry_s=0.5)),
                    sinks=[collector])
    record = engine.sinks[0]

    async def scenario():
        stop = asyncio.Event()
        run = asyncio.create_task(engine.run(None, stop))
        await until(lambda: record.stats()["samples"].get("eeg", 0) > 500, "samples on disk")
        fault.start()
        await until(lambda: record.stats()["state"] == "failing", "the write error")
        received = engine.streams["eeg"].buffer.count
        await until(lambda: engine.streams["eeg"].buffer.count > received + 2500,
                    "2.5 s of samples")  # more than the 1 s buffer: some are lost
        fault.stop()
        await until(lambda: record.stats()["state"] == "recording", "the recorder to resume")
        written = record.stats()["samples"]["eeg"]
        await until(lambda: record.stats()["samples"]["eeg"] > written + 500, "new samples")
        stop.set()
        return await run

    with caplog.at_level(logging.INFO):
        stats = asyncio.run(scenario())
    st = stats["sinks"]["record[0]"]
    path = root / name
    n = st["samples"]["eeg"]
    assert st["state"] == "stopped" and st["write_errors"] >= 1
    assert st["lost_samples"] > 0
    assert n + st["lost_samples"] == stats["streams"]["eeg"]["samples"]
    assert (path / "eeg.f32").stat().st_size == n * N_CHANNELS * 4  # nothing torn
    assert (path / "eeg.ts.f64").stat().st_size == n * 8
    errors = record_errors(caplog)
    assert len(errors) == 1 and str(path) in errors[0] and fault.strerror() in errors[0]
    resumed = [r.getMessage() for r in caplog.records if "again after" in r.getMessage()]
    assert len(resumed) == 1 and resumed[0].startswith(f"record: writing {path} again after")

    stream = read_recording(path).streams[0]  # everything written replays
    assert len(stream.times) == n
    steps = np.diff(stream.times)
    assert np.all(steps > 0)
    gaps = steps[steps > 0.5]  # the samples lost while the disk failed, and only those
    assert len(gaps) == 1 and gaps[0] == pytest.approx(st["lost_samples"] / 1000 + 0.001,
                                                       abs=0.01)
    assert st["lost_markers"] == st["lost_results"] == 0
    assert len(read_results(path)) == st["results"] == len(collector.results)
    assert len(read_markers(path)) == st["markers"]


def write_config(tmp_path: Path, record_path: str, **record) -> Path:
    name = f"ro{uuid.uuid4().hex[:6]}"
    file = tmp_path / "c.toml"
    content = config(tmp_path, name, path=record_path, **record)
    content["sinks"].insert(0, {"kind": "console"})  # the record sink is sinks[1]
    file.write_text(tomli_w.dumps(content))
    return file


UNWRITABLE = {  # what even root cannot create: sysfs refuses new entries, /proc has no such
    "read-only": ("/sys/rtbci-test/{session}", "Operation not permitted"),  # (as root)
    "missing": ("/proc/rtbci-no-such-dir/{session}", "No such file or directory"),
}


@pytest.mark.parametrize("case", UNWRITABLE)
@pytest.mark.parametrize("fmt", ["session", "xdf"])
def test_an_unwritable_record_path_is_refused_by_check_and_at_start(tmp_path, capsys, case,
                                                                     fmt):
    """`rtbci check` and `rtbci run` refuse it in one line naming sinks[1].path, exit 2
    (before: check said OK and run ended in a traceback)."""
    if os.geteuid() and case == "read-only":
        UNWRITABLE[case] = (UNWRITABLE[case][0], "Permission denied")
    path, why = UNWRITABLE[case]
    file = write_config(tmp_path, path, format=fmt)
    for argv in (["check", str(file)], ["run", str(file), "--duration", "5"]):
        assert main(["-q", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith("rtbci: error: ") and "sinks[1].path: cannot create " in err[0]
        assert why in err[0]


def test_check_refuses_an_existing_session_dir_and_leaves_no_probe(tmp_path, capsys):
    file = write_config(tmp_path, str(tmp_path / "out" / "fixed"))
    assert main(["-q", "check", str(file)]) == 0  # "out" does not exist yet: it is created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]  # the probe is gone
    (tmp_path / "out" / "fixed").mkdir(parents=True)
    capsys.readouterr()
    assert main(["-q", "check", str(file)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"rtbci: error: {file}: sinks[1].path: {tmp_path / 'out' / 'fixed'} exists already")
    shutil.rmtree(tmp_path / "out")


def test_a_copy_the_producer_overtook_is_never_written():
    """The recorder copies the samples it writes out of the ring; a producer that overwrites
    the oldest of them during the copy tears it (newer samples among older ones): that copy
    is dropped and the read starts again on samples the producer cannot reach as soon."""
    from rtbci.ringbuffer import RingBuffer
    from rtbci.sinks.record import RecordSink

    class Overtaking(RingBuffer):
        """Writes one more chunk right after handing out its first read (once)."""

        laps = 1

        def since(self, counter):
            views = super().since(counter)
            if self.laps:
                self.laps -= 1
                self.write(np.zeros((10, 2), np.float32), self.last_timestamp + 0.01 *
                           np.arange(1, 11))
            return views

    ring = Overtaking(100, 2, srate=100.0)
    ring.write(np.zeros((250, 2), np.float32), np.arange(250) * 0.01)  # full, 150 lost
    data, stamps, start, end = RecordSink._copy_since("eeg", ring, 0)
    assert np.all(np.diff(stamps) > 0)  # whole: no newer sample among the older ones
    assert (start, end) == (ring.count - 50, ring.count) and len(stamps) == 50
    assert ring.overflows == 2  # the read that fell behind, and the torn copy
