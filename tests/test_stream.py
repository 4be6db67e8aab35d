"""Stream: ingest through preprocessing, arrival times, counters."""

import asyncio
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from rtbci.config import parse_config
from rtbci.devices.recording import RecordedStream, Recording
from rtbci.engine import Engine
from rtbci.preprocess import PreprocessConfig, Preprocessor
from rtbci.stream import NonFinite, Stream, StreamInfo, find_nonfinite

INFO = StreamInfo("s", "EEG", "sid", 1000.0, ("a", "b", "c"), ("eeg",) * 3, ("uV",) * 3)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_ingest_preprocesses_and_stamps_arrivals():
    clock = FakeClock()
    pre = Preprocessor(PreprocessConfig(picks=["c", "a"], resample_hz=250.0), INFO)
    stream = Stream(INFO, 2.0, clock, pre)
    assert stream.info.ch_names == ("c", "a") and stream.info.srate == 250.0
    assert stream.raw_info is INFO and stream.buffer.capacity == 500
    woken = []
    stream.add_listener(lambda: woken.append(stream.buffer.count))
    for k in range(10):
        clock.now = 100.0 + 0.1 * k
        data = np.full((100, 3), k, np.float32)
        stream.ingest(data, 99.9 + 0.1 * k + np.arange(100) / 1000.0)
    assert stream.buffer.count == 250  # 1000 samples at 1 kHz → 250 at 250 Hz
    assert woken == list(range(25, 251, 25))
    assert stream.arrival(249) == pytest.approx(100.9)
    assert stream.arrival(0) == pytest.approx(100.0)
    stats = stream.stats()
    assert stats["samples"] == 250 and stats["gaps"] == 0
    assert stats["rate_hz"] == pytest.approx(250.0, rel=1e-6)
    assert stats["ingest_latency_ms"]["p50"] == pytest.approx(1.0, abs=1e-6)


def test_identity_preprocessing_is_skipped():
    stream = Stream(INFO, 1.0, FakeClock(), Preprocessor(PreprocessConfig(), INFO))
    assert stream.preprocess is None and stream.info is INFO


def test_irregular_streams_are_refused():
    marker = StreamInfo("m", "Markers", "m", 0.0, ("x",), ("misc",), ("",))
    with pytest.raises(ValueError, match="'m': only regularly sampled"):
        Stream(marker, 1.0, FakeClock())


# --- non-finite samples ---------------------------------------------------------------------


def ingest_all(stream: Stream, x: np.ndarray, t: np.ndarray, size: int) -> None:
    for i in range(0, len(x), size):
        stream.ingest(x[i : i + size], t[i : i + size])


def sines(n: int, srate: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    """An offset, 10 Hz, 50 Hz and white noise in 3 channels; timestamps from 50 s."""
    t = np.arange(n) / srate
    x = (30.0 + 5 * np.sin(2 * np.pi * 10 * t)[:, None] * np.arange(1, 4)
         + np.sin(2 * np.pi * 50 * t)[:, None] + np.random.default_rng(0).normal(size=(n, 3)))
    return x.astype(np.float32), 50.0 + t


def test_nonfinite_burst_is_counted_logged_once_and_its_windows_are_not_clean(caplog):
    config = PreprocessConfig(notch=50.0, bandpass=(1.0, 40.0), standardize=True,
                              standardize_halflife_s=0.2)
    stream = Stream(INFO, 20.0, FakeClock(), Preprocessor(config, INFO))
    x, t = sines(12_000)
    x[3000:6000] = np.nan  # a 3 s burst …
    x[4000, 2] = np.inf
    with caplog.at_level("INFO", logger="rtbci.stream"):
        ingest_all(stream, x, t, 25)
    stats = stream.stats()
    assert stats["nonfinite_samples"] == 3000 and stats["nonfinite_chunks"] == 120
    settle = stream.preprocess.settle_samples
    assert settle == 2981  # the 1 Hz high-pass's slowest pole decays to 0.1 % in ~3 s
    assert stream.clean(2000, 3000) and not stream.clean(2001, 3001)
    assert not stream.clean(4000, 4500)
    assert not stream.clean(6000 + settle - 1, 6000 + settle + 500)  # still settling
    assert stream.clean(6000 + settle, 6000 + settle + 500)
    data, _ = stream.buffer.window(0, stream.buffer.count)
    assert np.isnan(data[3000:6000]).all()  # bad samples stay visible as NaN …
    assert np.isfinite(data[:3000]).all() and np.isfinite(data[6000:]).all()  # … and only they
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "'s': non-finite samples" in warnings[0].getMessage()
    assert [r.getMessage() for r in caplog.records if r.levelname == "INFO"] == [
        "stream 's': data finite again; 3000 non-finite samples in that burst"]


def test_nonfinite_samples_without_preprocessing_are_kept_as_received():
    stream = Stream(INFO, 2.0, FakeClock())
    x, t = sines(1000)
    x[500, 1] = np.nan
    x[510, 0] = -np.inf
    ingest_all(stream, x, t, 100)
    assert stream.stats()["nonfinite_samples"] == 2
    data, _ = stream.buffer.window(0, 1000)
    np.testing.assert_array_equal(data, x)
    assert stream.clean(0, 500) and stream.clean(511, 1000)  # no filter: nothing settles
    assert not stream.clean(500, 501) and not stream.clean(505, 506) and not stream.clean(0, 1000)


def test_clean_remembers_each_burst():
    stream = Stream(INFO, 10.0, FakeClock())
    x, t = sines(5000)
    x[[1000, 2000, 3000]] = np.nan
    ingest_all(stream, x, t, 500)
    assert [stream.clean(s, s + 100) for s in range(950, 3200, 100)] == [
        k not in (0, 10, 20) for k in range(23)]


def test_engine_skips_and_counts_the_windows_of_a_nonfinite_burst(new_collector):
    """Offline through the engine: no NaN result, every window left out is counted, and the
    results after the filters settled equal those of a run that never saw the burst."""
    x, t = sines(12_000)
    poisoned = x.copy()
    poisoned[3000:6000] = np.nan
    config = parse_config({
        "sources": [{"name": "eeg", "kind": "simulate", "stream_name": "s",
                     "preprocess": {"notch": 50.0, "bandpass": [1.0, 40.0], "standardize": True,
                                    "standardize_halflife_s": 0.2}}],
        "decoders": [{"name": "bp", "model": "builtin:bandpower", "source": "eeg",
                      "runtime": "numpy", "window_ms": 500, "every_ms": 100}]})
    runs = []
    for data in (x, poisoned):
        collector = new_collector()
        engine = Engine(config, sinks=[collector])
        recording = Recording(Path("mem.fif"), [RecordedStream(INFO, data, t)])
        stats = asyncio.run(engine.run_offline(recording))
        runs.append(({r.seq: r for r in collector.results}, stats))
    (clean, clean_stats), (results, stats) = runs
    settle = engine.streams["eeg"].preprocess.settle_samples
    assert stats["streams"]["eeg"]["nonfinite_samples"] == 3000
    # windows [end - 500, end) with end = 500 + 100 k that touch [3000, 6000 + settle)
    invalid = {k for k in clean if 3000 < 500 + 100 * k < 6500 + settle}
    assert stats["decoders"]["bp"]["invalid_windows"] == len(invalid) == 64
    assert clean_stats["decoders"]["bp"]["invalid_windows"] == 0
    assert set(results) == set(clean) - invalid
    for seq, result in results.items():
        assert np.isfinite(result.embedding).all()
        np.testing.assert_allclose(result.embedding, clean[seq].embedding, rtol=1e-2, atol=1e-3)


# --- the producer thread against a reader thread ----------------------------------------------


def test_a_reader_sees_each_sample_complete_with_its_arrival_time_and_nonfinite_mark():
    """Stream.ingest at full speed in one thread (value == counter, every 37th chunk NaN,
    arrival == the chunk's first counter) while this thread reads as the scheduler does:
    count once, copy the window, arrival of its last sample, then ``clean``."""
    chunk, length, n_chunks = 8, 128, 6_000
    clock = FakeClock()
    stream = Stream(INFO, 0.128, clock)  # windows as long as the buffer: at the oldest edge

    def produce():
        data = np.empty((chunk, 3), np.float32)
        for k in range(0, chunk * n_chunks, chunk):
            data[:] = np.nan if k // chunk % 37 == 36 else (k + np.arange(chunk))[:, None]
            clock.now = float(k)
            stream.ingest(data, (k + np.arange(chunk)) / 1000.0)

    producer = threading.Thread(target=produce)
    window = np.empty((length, 3), np.float32)
    accepted = refused = 0
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        producer.start()
        while producer.is_alive():
            end = stream.buffer.count
            if end < length:
                continue
            try:
                data, times = stream.buffer.window(end - length, end)
                np.copyto(window, data)
                arrived = stream.arrival(end - 1)
            except IndexError:  # the producer lapped this reader between two lines
                continue
            if not stream.clean(end - length, end):
                refused += 1
                continue
            accepted += 1
            np.testing.assert_array_equal(window[:, 0], np.arange(end - length, end))
            assert arrived == (end - 1) // chunk * chunk
    finally:
        sys.setswitchinterval(interval)
    producer.join()
    assert stream.stats()["nonfinite_samples"] == chunk * (n_chunks // 37)
    assert accepted > 50 and refused > 0


def test_ingest_of_finite_chunks_allocates_nothing():
    """The non-finite check is one reduction; no mask or copy per clean chunk."""
    import tracemalloc

    stream = Stream(INFO, 2.0, FakeClock())
    data, stamps = np.ones((10, 3), np.float32), np.arange(10) / 1000.0
    stream.ingest(data, stamps)
    tracemalloc.start()
    for _ in range(200):
        stamps += 0.01
        stream.ingest(data, stamps)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000  # bytes: small Python objects only, never a per-chunk array


def test_find_nonfinite_tells_huge_finite_values_from_nan_and_inf():
    x = np.full((10, 4), 1e30, np.float32)  # x · x overflows float32: the mask decides
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy may warn of the overflow
        assert find_nonfinite(x) is None
        x[3, 1] = np.inf
        assert find_nonfinite(x) == NonFinite(1, 3, 4)
        x[3, 1], x[5, 2], x[7, 0] = 0.0, np.nan, -np.inf
        assert find_nonfinite(x) == NonFinite(2, 5, 8)


def test_arrival_is_stamped_at_the_pull_before_any_remapping_or_listener():
    """Issue 20: engine latency and ``late`` count from the moment the acquisition thread
    pulled the chunk: time spent after the pull (here a channel re-mapping of a stream that
    came back in another order, and a raw listener) is inside the measured latency."""
    from rtbci.acquisition import Acquisition
    from rtbci.devices.base import Source
    from rtbci.stream import Chunk

    clock = FakeClock()

    class OneChunk(Source):
        name = "one"

        def __init__(self):
            self.acquisition, self.sent = None, False

        def open(self, timeout):
            return INFO

        def read(self, timeout=0.0):
            if self.sent:
                self.acquisition._stop.set()
                return None
            self.sent, clock.now = True, 200.0  # pulled at 200 s
            return Chunk(np.ones((10, 3), np.float32), 199.99 + np.arange(10) / 1000.0)

        def describe(self):
            return "one chunk"

    def remap(data):  # a re-mapping that takes 0.5 s
        clock.now += 0.5
        return data

    source = OneChunk()
    acq = source.acquisition = Acquisition(source, lambda info: Stream(info, 2.0, clock))
    assert acq._open()
    acq._remap = remap
    acq.stream.add_raw_listener(lambda data, stamps: setattr(clock, "now", clock.now + 0.25))
    acq._pump()
    assert acq.stream.buffer.count == 10
    assert acq.stream.arrival(9) == 200.0
