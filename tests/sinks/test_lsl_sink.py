"""The LSL result outlet, read back by a real pylsl inlet."""

import asyncio
import threading
import uuid

import numpy as np
import pylsl
import pytest

from rtbci.config import parse_config
from rtbci.engine import Engine
from rtbci.sinks.lsl import channel_labels

pytestmark = pytest.mark.slow


def test_results_arrive_on_the_decoders_outlet(tmp_path, collector):
    session = f"lsl{uuid.uuid4().hex[:6]}"
    clf = tmp_path / "clf.npz"
    rng = np.random.default_rng(0)
    np.savez(clf, coef=rng.standard_normal((3, 64 * 3)) * 0.1, intercept=np.zeros(3),
             labels=np.array(["a", "b", "c"]))
    config = parse_config({
        "engine": {"session": session},
        "sources": [{"name": "eeg", "kind": "simulate", "stream_name": f"{session}-eeg"}],
        "decoders": [{"name": "bp", "model": "builtin:bandpower", "source": "eeg",
                      "window_ms": 500, "every_ms": 100, "runtime": "numpy",
                      "options": {"classifier": str(clf)}}],
        "sinks": [{"kind": "lsl"}]})
    engine = Engine(config, sinks=[collector])
    received, ready = [], threading.Event()

    def read():
        found = pylsl.resolve_byprop("name", f"rtbci-{session}-bp", timeout=10)
        inlet = pylsl.StreamInlet(found[0])
        info = inlet.info()
        ch = info.desc().child("channels").child("channel")
        labels = []
        while not ch.empty():
            labels.append(ch.child_value("label"))
            ch = ch.next_sibling("channel")
        received.append(labels)
        inlet.open_stream()
        ready.set()
        while True:
            sample, stamp = inlet.pull_sample(timeout=2.0)
            if sample is None:
                return
            received.append((stamp, sample))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    async def main():
        async def wait_then_stop():
            await asyncio.to_thread(ready.wait, 15)
            await asyncio.sleep(3.0)
            stop.set()
        stop = asyncio.Event()
        task = asyncio.create_task(wait_then_stop())
        await engine.run(20.0, stop)
        await task

    asyncio.run(main())
    reader.join(5)
    labels, samples = received[0], received[1:]
    assert labels == ["p_a", "p_b", "p_c", "seq", "latency_ms"]
    assert len(samples) > 15
    by_seq = {r.seq: r for r in collector.results}
    for stamp, values in samples:
        result = by_seq[int(values[3])]
        np.testing.assert_allclose(values[:3], result.probabilities, rtol=1e-6)
        assert stamp == pytest.approx(result.window_end, abs=1e-6)
        assert values[4] == pytest.approx(result.latency_ms, rel=1e-4)


def test_channel_layout_per_output_kind():
    assert channel_labels({"kind": "retrieval", "output_size": 4}) == [
        "id1", "id2", "score1", "score2", "seq", "latency_ms"]
    assert channel_labels({"kind": "embedding", "output_size": 2}) == [
        "e0", "e1", "seq", "latency_ms"]
