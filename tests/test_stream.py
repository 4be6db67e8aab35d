"""Stream: ingest through preprocessing, arrival times, counters."""

import numpy as np
import pytest

from rtbci.preprocess import PreprocessConfig, Preprocessor
from rtbci.stream import Stream, StreamInfo

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
