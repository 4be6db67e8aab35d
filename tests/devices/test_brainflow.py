"""BrainFlow boards as sources: BrainFlow's synthetic board (no hardware) through the engine."""

import asyncio
import time

import numpy as np
import pylsl
import pytest

from rtbci.cli import main
from rtbci.config import parse_config
from rtbci.devices.brainflow import BrainFlowSource, board_info
from rtbci.devices.recording import read_recording
from rtbci.devices.session import read_session
from rtbci.engine import Engine
from rtbci.errors import RtbciError

pytestmark = pytest.mark.slow

SYNTHETIC_EEG = ("Fz", "C3", "Cz", "C4", "Pz", "PO7", "Oz", "PO8", "F5", "F7", "F3", "F1",
                 "F2", "F4", "F6", "F8")


def config(tmp_path, **source) -> dict:
    return {"engine": {"session": "bf"},
            "sources": [{"name": "bf", "kind": "brainflow", "board": "SYNTHETIC_BOARD",
                         **source}],
            "decoders": [
                {"name": "bp", "model": "builtin:bandpower", "source": "bf", "window_ms": 400,
                 "every_ms": 100, "runtime": "numpy", "options": {"bands": [[8, 13]]}},
                {"name": "ev", "model": "builtin:bandpower", "source": "bf",
                 "window_ms": [0, 200], "on_marker": "re:^[0-9]+$", "runtime": "numpy"}],
            "sinks": [{"kind": "record", "path": str(tmp_path / "session")},
                      {"kind": "record", "format": "xdf", "path": str(tmp_path / "live")}]}


def run(cfg: dict, collector, script) -> tuple[Engine, dict]:
    engine = Engine(parse_config(cfg), sinks=[collector])

    async def main_():
        stop = asyncio.Event()

        async def during():
            while engine.acquisitions.get("bf") is None or \
                    engine.acquisitions["bf"].state != "streaming":
                await asyncio.sleep(0.05)
            await script(engine)
            stop.set()

        task = asyncio.create_task(during())
        stats = await engine.run(30.0, stop)
        await task
        return stats

    return engine, asyncio.run(main_())


def test_the_synthetic_board_feeds_decoders_with_its_markers_on_the_lsl_clock(tmp_path,
                                                                             collector):
    async def script(engine):
        board = engine.acquisitions["bf"].source._shim
        await asyncio.sleep(0.6)
        for value in (3, 4):
            board.insert_marker(value)
            await asyncio.sleep(0.6)
        await asyncio.sleep(0.5)

    engine, stats = run(config(tmp_path), collector, script)
    stream = engine.streams["bf"]
    assert stream.info.ch_names == SYNTHETIC_EEG
    assert stream.info.ch_units == ("microvolts",) * 16 and stream.info.srate == 250
    data, times = stream.buffer.window(0, stream.buffer.count)
    assert stream.buffer.count > 250 * 1.5
    # the synthetic board's EEG rows are sines of up to ~±100 µV: microvolts, not volts
    assert 5 < np.abs(data).max() < 1000
    # on the LSL clock: the last sample was stamped within the run, just before now
    assert 0 < pylsl.local_clock() - times[-1] < 5
    assert np.median(np.diff(times)) == pytest.approx(1 / 250, rel=0.05)
    texts = [text for _, text in engine.markers["bf"]]
    assert texts == ["3", "4"]
    for stamp, _ in engine.markers["bf"]:
        assert np.min(np.abs(times - stamp)) == 0.0, "a marker carries its sample's time"
    by_decoder = {name: [r for r in collector.results if r.decoder == name]
                  for name in ("bp", "ev")}
    assert len(by_decoder["bp"]) >= 10
    assert [r.marker for r in by_decoder["ev"]] == ["3", "4"]
    assert stats["decoders"]["bp"]["results"] == len(by_decoder["bp"])
    recorded = read_session(tmp_path / "session")  # the session holds what the engine got
    np.testing.assert_array_equal(recorded.streams[0].data, data)
    assert [t for _, t in recorded.marker_streams[0].markers] == ["3", "4"]
    xdf = read_recording(tmp_path / "live.xdf")  # and the live XDF recording too
    np.testing.assert_array_equal(xdf.streams[0].data, data)
    np.testing.assert_array_equal(xdf.streams[0].times, times)
    assert xdf.markers == list(engine.markers["bf"])


def test_a_lost_board_is_prepared_again_and_the_gap_counted(tmp_path, collector):
    reopened = []

    async def script(engine):
        acquisition = engine.acquisitions["bf"]
        source = acquisition.source
        await asyncio.sleep(0.5)
        back = time.monotonic() + 0.4  # the board is unplugged for 0.4 s
        real_open = source.open

        def open_when_back(timeout):
            if time.monotonic() < back:
                time.sleep(0.05)
                return None
            return real_open(timeout)

        source.open = open_when_back
        source._shim.release_session()  # the board vanishes under the reader
        for _ in range(100):
            await asyncio.sleep(0.05)
            if acquisition.state == "streaming" and acquisition.source._shim is not None:
                reopened.append(acquisition.state)
                break
        await asyncio.sleep(0.8)

    engine, stats = run(config(tmp_path), collector, script)
    assert reopened == ["streaming"]
    assert engine.acquisitions["bf"].error is None
    source_stats = stats["streams"]["bf"]
    assert source_stats["gaps"] >= 1 and source_stats["gap_seconds"] >= 0.35
    before_and_after = engine.streams["bf"].buffer.count
    assert before_and_after > 250 * 1.0


def test_a_board_that_goes_silent_is_lost_after_lost_after_s(monkeypatch):
    source = BrainFlowSource("bf", "SYNTHETIC_BOARD", lost_after_s=0.3)
    assert source.open(1.0) is not None
    try:
        source._shim.stop_stream()  # prepared, but nothing arrives any more
        source.read(0.1)
        with pytest.raises(Exception, match="sent nothing for 0.3 s"):
            for _ in range(20):
                source.read(0.1)
    finally:
        source.close()


def test_names_and_types_come_from_the_board_description():
    info, rows = board_info("CYTON_DAISY_BOARD", "cyton")  # no hardware: the description only
    assert info.n_channels == 16 and info.srate == 125
    assert set(info.ch_types) == {"eeg"} and list(rows) == list(range(1, 17))
    with pytest.raises(RtbciError, match="valid: .*SYNTHETIC_BOARD.*CYTON_BOARD"):
        board_info("CYTON", "x")
    assert board_info(-1, "s")[0].ch_names == SYNTHETIC_EEG  # a board id works too


def test_check_names_a_wrong_board_in_one_line_and_describes_a_right_one(tmp_path, capsys):
    import tomli_w

    bad = tmp_path / "bad.toml"
    bad.write_text(tomli_w.dumps({"sources": [{"name": "bf", "kind": "brainflow",
                                               "board": "SYNTHETIK_BOARD"}]}))
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"rtbci: error: {bad}: sources[0].board: unknown BrainFlow board "
                             "'SYNTHETIK_BOARD'; valid: ")
    assert "SYNTHETIC_BOARD" in err[0] and "CYTON_BOARD" in err[0]
    good = tmp_path / "good.toml"
    good.write_text(tomli_w.dumps({"sources": [{"name": "bf", "kind": "brainflow",
                                                "board": "SYNTHETIC_BOARD"}]}))
    assert main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "source 'bf': brainflow board 'SYNTHETIC_BOARD', 16 ch × 250 Hz" in out


def test_simulate_brainflow_publishes_the_board_and_its_markers_on_lsl(run_engine,
                                                                       wait_streaming,
                                                                       unique_name):
    import threading

    from rtbci.devices.brainflow import BoardPublisher

    publisher = BoardPublisher("SYNTHETIC_BOARD", unique_name)
    thread = threading.Thread(target=publisher.run, args=(20.0,))
    thread.start()
    try:
        async def during(engine):
            await wait_streaming(engine)
            await asyncio.sleep(1.0)  # the marker reader subscribes too
            publisher.source._shim.insert_marker(5)
            await asyncio.sleep(0.5)

        engine, _ = run_engine({"sources": [{
            "name": "eeg", "kind": "lsl", "stream": {"name": unique_name},
            "markers": {"name": f"{unique_name}-markers"}}]}, 20.0, during)
    finally:
        publisher.stop()
        thread.join(5.0)
    stream = engine.streams["eeg"]
    assert stream.info.ch_names == SYNTHETIC_EEG and stream.info.ch_units[0] == "microvolts"
    assert [text for _, text in engine.markers["eeg"]] == ["5"]
    data, times = stream.buffer.window(0, stream.buffer.count)
    marker_time = engine.markers["eeg"][0][0]
    assert np.min(np.abs(times - marker_time)) < 1e-3  # its sample's timestamp, clock-synced
    assert publisher.samples_pushed >= stream.buffer.count > 250
    assert publisher.source._shim is None  # released


def test_simulate_brainflow_names_a_wrong_board_or_parameter(capsys):
    assert main(["simulate", "--brainflow", "NOPE_BOARD", "--duration", "1"]) == 2
    assert "unknown BrainFlow board 'NOPE_BOARD'; valid: " in capsys.readouterr().err
    assert main(["simulate", "--brainflow", "SYNTHETIC_BOARD", "--board-param", "port=1"]) == 2
    assert "--board-param: 'port=1' is not KEY=VALUE" in capsys.readouterr().err


def test_dejitter_gives_regular_stamps_at_the_measured_rate_and_keeps_real_gaps():
    from rtbci.devices.brainflow import Dejitter

    rng = np.random.default_rng(0)
    srate, true_period = 250.0, 1 / 250.0 * (1 + 3e-4)  # a board 0.03 % slow of nominal
    k = np.arange(250 * 60)
    k = np.concatenate([k[:5000], k[5050:]])  # 50 samples (0.2 s) lost after 20 s
    sampled = 1000.0 + k * true_period
    # arrival in bursts of 10 samples, each burst stamped 0-8 ms late, plus small noise
    delay = np.repeat(rng.uniform(0, 0.008, len(k) // 10 + 1), 10)[:len(k)]
    stamps = sampled + delay + rng.normal(0, 2e-4, len(k))
    dejitter = Dejitter(srate)
    out = np.empty_like(stamps)
    for start in range(0, len(k), 10):
        dejitter.apply(stamps[start:start + 10], out[start:start + 10])
    steps = np.diff(out)
    jump = np.argmax(steps)
    # the gap, its length to within the arrival jitter (8 ms: two samples)
    assert jump == 4999 and steps[jump] == pytest.approx(51 * true_period, abs=0.008)
    assert dejitter.lost == pytest.approx(50, abs=2)
    regular = np.delete(steps, jump)[1000:]  # once settled: regular to within 0.1 ms
    assert np.abs(regular - true_period).max() < 1.5e-4
    assert dejitter.period == pytest.approx(true_period, rel=1e-4)  # the board's own rate
    # the sampling instant plus the mean arrival delay (4 ms), to within 1.5 ms once settled
    error = out - sampled - 0.004
    assert np.abs(error[1000:5000]).max() < 1.5e-3 and np.abs(error[8000:]).max() < 1.5e-3
    raw_error = stamps - sampled - 0.004
    assert np.abs(raw_error[1000:]).max() > 3.5e-3  # what the arrival stamps alone give
    dejitter.reset()  # a steady delay is no gap
    dejitter.apply(stamps[:10] + 0.05, out[:10])
    dejitter.apply(stamps[10:20] + 0.05, out[10:20])
    assert dejitter.lost == 0 and np.diff(out[:20]).max() < 0.0045
