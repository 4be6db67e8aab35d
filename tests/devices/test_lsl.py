"""The LSL source against real outlets: rtbci's simulator, pylsl's own example, outages."""

import asyncio
import subprocess
import sys
import threading

import numpy as np
import pylsl
import pytest

from rtbci.devices.lsl import LSLSource, info_from_lsl, lsl_from_info
from rtbci.devices.simulate import SimulatedAmplifier

pytestmark = pytest.mark.slow


def _lsl_config(name: str, **source) -> dict:
    return {"sources": [{"name": "eeg", "kind": "lsl", "stream": {"name": name}, **source}]}


def test_simulated_outlet_arrives_complete_and_bit_identical(unique_name, run_engine,
                                                             wait_streaming):
    pushed, lock = [], threading.Lock()

    def tap(data, stamps):
        with lock:
            pushed.append((data.copy(), stamps))

    amp = SimulatedAmplifier("eeg64", name=unique_name, seed=3, on_push=tap)

    async def during(engine):
        amp.open()
        await wait_streaming(engine)
        await asyncio.to_thread(amp.run, 10.0)

    engine, stats = run_engine(_lsl_config(unique_name), 30.0, during)
    sent = np.concatenate([d for d, _ in pushed])
    sent_times = np.concatenate([t for _, t in pushed])
    assert len(sent) == 10_000
    ring = engine.streams["eeg"].buffer
    data, times = ring.window(0, ring.count)
    assert ring.count == len(sent), "lost or extra samples"
    np.testing.assert_array_equal(data, sent)  # bit-identical values
    assert np.all(np.diff(times) > 0), "timestamps must strictly increase"
    np.testing.assert_allclose(np.diff(times), np.diff(sent_times), atol=1e-6)
    eeg = stats["streams"]["eeg"]
    assert (eeg["gaps"], eeg["overflows"]) == (0, 0)
    assert eeg["rate_hz"] == pytest.approx(1000.0, rel=1e-3)


def test_pylsl_senddata_example_is_ingested_at_its_rate(unique_name, run_engine):
    sender = subprocess.Popen([sys.executable, "-m", "pylsl.examples.SendData", "-n",
                               unique_name], stdout=subprocess.DEVNULL)
    try:
        engine, stats = run_engine(_lsl_config(unique_name), 8.0)
    finally:
        sender.kill()
        sender.wait()
    eeg = stats["streams"]["eeg"]
    assert engine.streams["eeg"].info.n_channels == 8
    assert eeg["rate_hz"] == pytest.approx(100.0, rel=0.02)
    assert 500 <= eeg["samples"] <= 800  # ~100 Hz over the ~7 s after the inlet connected
    assert eeg["gaps"] == 0


def test_stream_that_vanishes_for_3_s_is_resumed_and_the_gap_reported(unique_name, run_engine):
    def simulate(seconds):
        return subprocess.Popen(["rtbci", "-q", "simulate", "--name", unique_name,
                                 "--duration", str(seconds)], stdout=subprocess.DEVNULL)

    counts = {}

    async def during(engine):
        first = simulate(4)
        await asyncio.to_thread(first.wait)
        counts["before"] = engine.streams["eeg"].buffer.count
        await asyncio.sleep(3.0)
        second = simulate(6)
        await asyncio.to_thread(second.wait)
        counts["after"] = engine.streams["eeg"].buffer.count

    engine, stats = run_engine(_lsl_config(unique_name), 30.0, during)
    eeg = stats["streams"]["eeg"]
    assert counts["before"] > 2000
    assert counts["after"] - counts["before"] > 2000, "the engine did not resume"
    assert eeg["gaps"] == 1
    assert eeg["gap_seconds"] >= 3.0
    assert eeg["rate_hz"] == pytest.approx(1000.0, rel=0.01)
    acq = engine.acquisitions["eeg"]
    assert acq.state != "failed" and acq.error is None, acq.error


def test_metadata_round_trips_through_lsl(unique_name):
    amp = SimulatedAmplifier("meg306", name=unique_name)
    outlet = pylsl.StreamOutlet(lsl_from_info(amp.info))
    source = LSLSource("meg", {"name": unique_name})
    try:
        info = source.open(timeout=5.0)
    finally:
        source.close()
        del outlet
    assert info.ch_names == amp.info.ch_names
    assert info.ch_types == amp.info.ch_types
    assert info.ch_units == amp.info.ch_units
    assert info.srate == 1000.0 and info.source_id == amp.info.source_id
    np.testing.assert_allclose(info.positions, amp.info.positions, atol=1e-6)


def test_float64_streams_are_converted(unique_name):
    lsl = pylsl.StreamInfo(unique_name, "EEG", 3, 100.0, pylsl.cf_double64, unique_name)
    outlet = pylsl.StreamOutlet(lsl)
    source = LSLSource("x", {"name": unique_name}, processing=())
    try:
        assert source.open(timeout=5.0).ch_names == ("ch1", "ch2", "ch3")
        sent = np.arange(30, dtype=np.float64).reshape(10, 3) + 0.25
        outlet.push_chunk(sent, (np.arange(10) / 100.0 + pylsl.local_clock()).tolist())
        got = []
        for _ in range(200):
            chunk = source.read()
            if chunk is not None:
                got.append(chunk.data.copy())
            if sum(len(g) for g in got) == 10:
                break
            threading.Event().wait(0.01)
    finally:
        source.close()
    data = np.concatenate(got)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, sent.astype(np.float32))


def test_info_from_lsl_without_channel_description(unique_name):
    lsl = pylsl.StreamInfo(unique_name, "EEG", 2, 250.0, pylsl.cf_float32, "sid")
    info = info_from_lsl(lsl)
    assert info.ch_names == ("ch1", "ch2") and info.ch_types == ("eeg", "eeg")
    assert info.positions is None
