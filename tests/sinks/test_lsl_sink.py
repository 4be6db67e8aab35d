"""The LSL result outlet, read back by a real pylsl inlet."""

import asyncio
import threading
import time
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


# -- results before the outlet (issue 21, point 10) and the pylsl floor (point 11) -----------

_DECODER = {"kind": "classes", "labels": ["a", "b"], "output_size": 2}


def _result(decoder: str, seq: int):
    from rtbci.messages import Result

    return Result(decoder=decoder, seq=seq, trigger="every", window_start=seq,
                  window_end=1000.0 + seq, kind="classes", t_arrived=0.0, t_published=0.002,
                  labels=["a", "b"], probabilities=np.array([0.25, 0.75], np.float32))


def _sink(session: str):
    from rtbci.sinks.lsl import LSLSink, LSLSinkConfig

    sink = LSLSink(LSLSinkConfig(), session)
    asyncio.run(sink.start({"decoders": {}}))
    return sink


def _poll(condition, tick, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        tick()
        time.sleep(0.05)
    return True


def test_results_before_the_outlet_are_held_and_sent_in_order():
    """Results that come before the status names their decoder (another decoder of the
    source still compiling) reach a consumer that waits for the outlet, in order."""
    session = f"lslh{uuid.uuid4().hex[:6]}"
    sink = _sink(session)
    for seq in range(5):
        sink.publish(_result("slow", seq))
    assert sink.stats() == {"sent": 0, "queued": 5, "dropped": 0}
    samples, connected = [], threading.Event()

    def read():
        found = pylsl.resolve_byprop("name", f"rtbci-{session}-slow", timeout=20)
        inlet = pylsl.StreamInlet(found[0])
        inlet.open_stream()
        connected.set()
        deadline = time.monotonic() + 30
        while len(samples) < 7 and time.monotonic() < deadline:
            sample, stamp = inlet.pull_sample(timeout=0.5)
            if sample is not None:
                samples.append((int(sample[2]), stamp))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sink.status_changed({"decoders": {"slow": _DECODER}})  # the outlet appears
    for seq in (5, 6):
        sink.publish(_result("slow", seq))  # queue behind the held ones
    assert _poll(lambda: sink.stats()["sent"] == 7, lambda: sink.stats_tick({})), sink.stats()
    reader.join(30)
    asyncio.run(sink.close())
    assert samples == [(seq, 1000.0 + seq) for seq in range(7)]
    assert sink.stats() == {"sent": 7, "queued": 0, "dropped": 0}


def test_held_results_are_bounded_and_what_is_lost_is_counted(monkeypatch, caplog):
    import rtbci.sinks.lsl as lsl

    monkeypatch.setattr(lsl, "PENDING_RESULTS", 10)
    monkeypatch.setattr(lsl, "HOLD_S", 0.2)  # no consumer: pushed after the hold anyway
    sink = _sink(f"lslb{uuid.uuid4().hex[:6]}")
    for seq in range(15):
        sink.publish(_result("late", seq))
    for seq in range(3):
        sink.publish(_result("never", seq))  # its decoder never gets an outlet
    assert sink.stats() == {"sent": 0, "queued": 13, "dropped": 5}
    sink.status_changed({"decoders": {"late": _DECODER}})
    assert _poll(lambda: sink.stats()["sent"] == 10, lambda: sink.stats_tick({}))
    asyncio.run(sink.close())
    assert sink.stats() == {"sent": 10, "queued": 0, "dropped": 8}
    assert "3 results of 'never' never got an outlet; dropped" in caplog.text


def test_the_pylsl_floor_is_one_whose_push_the_sink_uses_works():
    """pylsl 1.17.4 to 1.18.3b1 reject ``push_chunk`` of one 1-D sample ("Buffer size too
    small"), which is how the sink pushes a result; 1.18.6 accepts it."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    pyproject = Path(__file__).parents[2] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    (pylsl_req,) = [Requirement(d) for d in deps if Requirement(d).name == "pylsl"]
    floors = [Version(s.version) for s in pylsl_req.specifier if s.operator in (">=", "==")]
    assert floors and min(floors) >= Version("1.18.6"), pylsl_req
    assert pylsl_req.specifier.contains(pylsl.__version__, prereleases=True), pylsl.__version__

    sink = _sink(f"lslf{uuid.uuid4().hex[:6]}")
    sink.status_changed({"decoders": {"dec": _DECODER}})
    sink.publish(_result("dec", 0))
    asyncio.run(sink.close())
    assert sink.stats() == {"sent": 1, "queued": 0, "dropped": 0}
