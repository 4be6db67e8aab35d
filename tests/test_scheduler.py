"""The scheduler: markers, workers and importance on a real Stream; and in the running
engine (slow): budgets, skips, isolation, markers, determinism."""

import asyncio
import textwrap
import threading
import time
import uuid
from functools import partial

import numpy as np
import pytest

from rtbci.config import parse_config
from rtbci.devices.simulate import SimulatedAmplifier
from rtbci.engine import Engine
from rtbci.models import Decoder, DecoderOutput
from rtbci.report import Scorer
from rtbci.ringbuffer import RingBuffer
from rtbci.scheduler import (
    MAX_PENDING_MARKERS,
    MAX_QUEUED_WINDOWS,
    SOURCE_THREAD_MAX_MS,
    SOURCE_THREAD_STRIKES,
    DecoderTask,
    Scheduler,
    TriggerSpec,
)
from rtbci.scheduler.routing import DirectSinks
from rtbci.scheduler.workers import output_problem
from rtbci.stream import Stream, StreamInfo

TEST_DECODERS = textwrap.dedent('''
    import time
    import numpy as np
    from rtbci.models import Decoder, DecoderOutput

    class Scripted(Decoder):
        """Sleeps, raises or hangs on cue; the warm-up call (call 1) is always fine."""
        kind, labels, output_size = "classes", ["a", "b"], 2

        def __init__(self, n_samples, n_channels, srate, sleep_s=0.0, fail=False,
                     hang_call=0, hang_s=0.0, bad=""):
            self.n_samples, self.n_channels = n_samples, n_channels
            self.sleep_s, self.fail, self.hang_call, self.hang_s = sleep_s, fail, hang_call, hang_s
            self.bad = bad  # "nan" | "shape": a broken output after the warm-up
            self.calls = 0

        def __call__(self, window):
            self.calls += 1
            if self.calls > 1:
                if self.fail:
                    raise ValueError("boom")
                time.sleep(self.hang_s if self.calls == self.hang_call else self.sleep_s)
            p = 1 / (1 + np.exp(-window.mean()))
            if self.calls > 1 and self.bad == "nan":
                p = np.nan
            if self.calls > 1 and self.bad == "shape":
                return DecoderOutput(probabilities=np.array([p, 1 - p, 0], np.float32),
                                     labels=self.labels + ["c"])
            return DecoderOutput(probabilities=np.array([p, 1 - p], np.float32),
                                 labels=self.labels)
''')


@pytest.fixture
def scripted(tmp_path, monkeypatch):
    module = f"scripted_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(TEST_DECODERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"python:{module}:Scripted"


@pytest.fixture
def run(new_collector):
    """``run(decoders, duration)`` on a simulated eeg64 source → (engine, stats, results)."""

    def run(decoders: list[dict], duration: float):
        name = f"sched-{uuid.uuid4().hex[:8]}"
        config = parse_config({
            "engine": {"session": "test"},
            "sources": [{"name": "eeg", "kind": "simulate", "stream_name": name}],
            "decoders": decoders})
        collector = new_collector()
        engine = Engine(config, sinks=[collector])
        stats = asyncio.run(engine.run(duration))
        return engine, stats, collector.results

    return run


def sliding(name, model, every_ms=50, budget_ms=20, **extra):
    """A sliding decoder; the built-in one in numpy (these tests are about scheduling)."""
    runtime = {"runtime": "numpy"} if model.startswith("builtin:") else {}
    return {"name": name, "model": model, "source": "eeg", "window_ms": 500,
            "every_ms": every_ms, "budget_ms": budget_ms, **runtime, **extra}


@pytest.mark.slow
def test_slow_decoder_is_late_and_skips_instead_of_queueing(scripted, run):
    engine, stats, results = run([sliding("slow", scripted, options={"sleep_s": 0.12})], 7.0)
    s = stats["decoders"]["slow"]
    assert s["results"] > 20 and s["late"] == s["results"]
    assert s["skipped"] >= 1.5 * s["results"]  # ~2 triggers pass during each 120 ms call
    latency = np.array([r.latency_ms for r in results])
    # never a backlog: a result waits at most one call (120 ms) + one period (50 ms); a queue
    # would add ~70 ms per result (medians: robust to a load spike on a shared machine)
    third = len(latency) // 3
    assert np.median(latency) < 120 + 50 + 30
    assert np.median(latency[-third:]) < np.median(latency[:third]) + 30
    seqs = [r.seq for r in results]
    assert seqs == sorted(set(seqs))  # increasing; skipped triggers leave holes
    holes = sum(b - a - 1 for a, b in zip(seqs, seqs[1:]))  # a decoder starts at its first
    # window after it attached: earlier triggers never existed for it
    # every hole counted, plus skips after the last result: at most the triggers after it
    # (how many depends on how long ingest went on while the engine stopped: load)
    after_last = engine.scheduler.tasks["slow"].seq - seqs[-1] - 1
    assert 0 <= s["skipped"] - holes <= after_last


@pytest.mark.slow
def test_raising_decoder_does_not_stop_another(scripted, run):
    _, stats, results = run([sliding("bad", scripted, options={"fail": True}),
                             sliding("good", "builtin:bandpower")], 5.0)
    bad, good = stats["decoders"]["bad"], stats["decoders"]["good"]
    assert bad["results"] == 0 and bad["errors"] > 30
    assert bad["last_error"] == "ValueError: boom"
    assert good["errors"] == 0 and good["results"] > 60
    assert {r.decoder for r in results} == {"good"}


@pytest.mark.slow
def test_hung_decoder_is_reported_and_the_worker_goes_on(scripted, run):
    hang = sliding("hang", scripted, timeout_ms=300,
                   options={"hang_call": 5, "hang_s": 3.0, "sleep_s": 0.0})
    _, stats, results = run([hang, sliding("good", "builtin:bandpower")], 8.0)
    assert stats["decoders"]["hang"]["timeouts"] == 1
    assert "hung" in stats["decoders"]["hang"]["last_error"]
    hung_at = min(r.t_published for r in results if r.decoder == "hang" and r.latency_ms > 1000)
    during = [r for r in results if r.decoder == "good" and hung_at - 2.5 < r.t_published
              < hung_at - 0.5]
    assert len(during) > 20, "the other decoder stalled while one hung"
    assert stats["decoders"]["good"]["results"] > 100


@pytest.mark.slow
def test_marker_locked_windows_start_at_their_markers(run):
    erp = {"name": "erp", "model": "builtin:bandpower", "source": "eeg",
           "window_ms": [-100, 500], "on_marker": "stim", "budget_ms": 50, "runtime": "numpy"}
    engine, stats, results = run([erp], 8.0)
    markers = list(engine.markers["eeg"])
    assert len(markers) >= 4 and len(results) >= len(markers) - 1
    by_marker = {r.marker: r for r in results}
    assert set(by_marker) <= {"stim/left", "stim/right"}
    for r in results:
        onset = min((t for t, text in markers if text == r.marker),
                    key=lambda t: abs(t - r.window_start - 0.1))
        assert r.window_start == pytest.approx(onset - 0.1, abs=0.6e-3)
        assert r.window_end - r.window_start == pytest.approx(0.599, abs=1e-4)  # dejittered
        assert r.trigger == "marker" and r.embedding.shape == (192,)
    assert stats["decoders"]["erp"]["errors"] == 0


@pytest.mark.slow
def test_sliding_windows_are_the_same_in_two_runs_of_the_same_recording(new_collector):
    """The same signal pushed twice: same window boundaries (in samples), seq and outputs."""

    def once():
        name = f"det-{uuid.uuid4().hex[:8]}"
        amp = SimulatedAmplifier("eeg64", name=name, seed=11)
        config = parse_config({"sources": [{"name": "eeg", "kind": "lsl",
                                            "stream": {"name": name}}],
                               "decoders": [sliding("bp", "builtin:bandpower", every_ms=100)]})
        collector = new_collector()
        engine = Engine(config, sinks=[collector])

        async def main():
            async def push():
                amp.open()
                while engine.acquisitions.get("eeg") is None or \
                        engine.acquisitions["eeg"].state != "streaming":
                    await asyncio.sleep(0.05)  # the engine's own inlet, not any consumer
                await asyncio.to_thread(amp.run, 5.0)
            task = asyncio.create_task(push())
            await engine.run(7.0)
            await task

        asyncio.run(main())
        first = engine.streams["eeg"].buffer.window(0, 1)[1][0]
        return {r.seq: (round((r.window_start - first) * 1000), r.embedding)
                for r in collector.results}

    a, b = once(), once()
    common = set(a) & set(b)
    assert len(common) >= 0.9 * max(len(a), len(b)) and len(common) > 30
    for seq in common:
        assert a[seq][0] == b[seq][0] == seq * 100  # window k starts at sample 100·k
        np.testing.assert_array_equal(a[seq][1], b[seq][1])


@pytest.mark.slow
def test_a_decoder_that_cannot_start_is_reported_and_the_others_run(tmp_path, monkeypatch, run):
    (tmp_path / "broken_decoder.py").write_text(
        "def make(n_samples, n_channels, srate):\n    raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _, stats, results = run([sliding("broken", "python:broken_decoder:make"),
                             sliding("missing", "python:nowhere_module:make"),
                             sliding("good", "builtin:bandpower")], 4.0)
    assert "failed to start: RuntimeError: no GPU here" in stats["decoders"]["broken"]["error"]
    assert "decoders[1].model: cannot load 'python:nowhere_module:make'" in \
        stats["decoders"]["missing"]["error"]
    assert stats["decoders"]["good"]["results"] > 30
    assert {r.decoder for r in results} == {"good"}


# --- the scheduler on a real Stream, without LSL -------------------------------------------

SRATE = 100.0
T0 = 1000.0  # LSL clock (seconds since boot), far from time.time()
INFO = StreamInfo("eeg", "EEG", "sid", SRATE, ("a", "b"), ("eeg",) * 2, ("uV",) * 2)


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


class Echo(Decoder):
    """Returns its window's first channel (= the sample counters) as the embedding; with
    ``gate``, waits for it to be set; its importance is the window's first row."""

    kind = "embedding"

    def __init__(self, n_samples, gate=None, explains=False, explain_gate=None, sleep_s=0.0):
        self.n_samples, self.n_channels, self.output_size = n_samples, 2, n_samples
        self.gate, self.explains, self.explain_gate = gate, explains, explain_gate
        self.sleep_s = sleep_s
        self.calls: list[tuple[int, np.ndarray]] = []  # (thread id, window as received)

    def __call__(self, window):
        self.calls.append((threading.get_ident(), window))
        if self.gate is not None:
            assert self.gate.wait(10)
        time.sleep(self.sleep_s)
        return DecoderOutput(embedding=window[:, 0].copy())

    def importance(self, window):
        if self.explain_gate is not None:
            assert self.explain_gate.wait(10)
        return window[0].copy()


class Bench:
    """A Stream whose sample k has value k and timestamp T0 + k / SRATE, and a Scheduler."""

    def __init__(self, buffer_seconds=2.0, inline=True, loop=None):
        self.clock = Clock()
        self.stream = Stream(INFO, buffer_seconds, self.clock)
        self.results = []
        self.scheduler = Scheduler(loop, self.clock, self.results.append, inline=inline)
        self.stream.add_listener(partial(self.scheduler.on_data, self.stream))

    def decoder(self, name, trigger, placement="own", cls=None, **kw):
        task = DecoderTask(name, (cls or Echo)(trigger.length, **kw), self.stream, trigger, 50,
                           2000, placement=placement)
        self.scheduler.add(task)
        return task

    def feed(self, n):
        k = self.stream.buffer.count + np.arange(n)
        times = T0 + k / SRATE
        self.clock.now = times[-1]
        self.stream.ingest(np.repeat(k[:, None], 2, axis=1).astype(np.float32), times)

    def marker(self, sample, text="stim/left"):
        self.scheduler.on_marker(self.stream, T0 + sample / SRATE, text)


def test_a_marker_decodes_the_window_at_its_sample_with_its_label():
    b = Bench()
    task = b.decoder("erp", TriggerSpec(length=20, marker="stim", start=-5))
    b.feed(100)
    b.marker(60, "stim/left")
    b.marker(70, "other/right")  # not selected
    b.feed(100)
    [r] = b.results
    np.testing.assert_array_equal(r.embedding, np.arange(55, 75))
    assert (r.marker, r.label, r.trigger) == ("stim/left", "left", "marker")
    assert task.stats()["stale_markers"] == 0


def test_markers_older_than_the_buffer_are_stale_and_decode_nothing():
    b = Bench(buffer_seconds=2.0)  # holds 200 samples
    at = b.decoder("at", TriggerSpec(length=20, marker="stim"))
    before = b.decoder("before", TriggerSpec(length=20, marker="stim", start=-10))
    b.feed(300)  # holds samples 100 … 299
    b.marker(50)  # long gone
    b.marker(105)  # its sample is there; for "before", its window (from 95) is not
    b.marker(250)
    b.feed(50)
    decoded = {name: [r.embedding[0] for r in b.results if r.decoder == name]
               for name in ("at", "before")}
    assert decoded == {"at": [105, 250], "before": [240]}
    assert (at.stats()["stale_markers"], before.stats()["stale_markers"]) == (1, 2)
    assert at.errors == before.errors == 0


def test_offline_markers_before_the_first_sample_are_stale():
    b = Bench()
    task = b.decoder("erp", TriggerSpec(length=20, marker="stim"))
    b.marker(-300)  # replay: a marker stamped 3 s before the recording's first sample
    b.marker(10)
    b.feed(100)
    assert [r.embedding[0] for r in b.results] == [10]
    assert task.stale_markers == 1


def test_markers_on_another_clock_are_dropped_counted_and_bounded():
    b = Bench(buffer_seconds=2.0)
    task = b.decoder("erp", TriggerSpec(length=20, marker="stim"))
    b.feed(100)
    for _ in range(1000):  # time.time() instead of the LSL clock
        b.scheduler.on_marker(b.stream, time.time(), "stim/left")
    b.scheduler.on_marker(b.stream, T0 + 3600.0, "stim/left")  # an hour ahead
    b.scheduler.on_marker(b.stream, float("nan"), "stim/left")
    assert task.future_markers == 1002 and task.pending == []
    for i in range(MAX_PENDING_MARKERS + 10):  # plausible (within the buffer's length ahead)
        b.scheduler.on_marker(b.stream, T0 + 2.0 + i * 1e-5, "stim/right")
    assert len(task.pending) == MAX_PENDING_MARKERS and task.dropped_markers == 10
    task.pending.clear()
    b.marker(120)
    b.feed(100)
    [r] = b.results
    np.testing.assert_array_equal(r.embedding, np.arange(120, 140))
    stats = task.stats()
    assert (stats["future_markers"], stats["dropped_markers"], stats["stale_markers"]) == \
        (1002, 10, 0)


def test_markers_fire_in_timestamp_order_whatever_their_arrival_order():
    b = Bench()
    b.decoder("erp", TriggerSpec(length=10, marker=["stim", "re:cue_(\\d+)"]))
    b.feed(50)
    for sample, text in [(90, "stim/b"), (60, "cue_7"), (75, "stim/a")]:
        b.marker(sample, text)
    b.feed(100)
    assert [(r.embedding[0], r.label, r.seq) for r in b.results] == \
        [(60, "7", 0), (75, "a", 1), (90, "b", 2)]


def test_report_scores_the_label_the_pattern_gives():
    b = Bench()
    b.decoder("erp", TriggerSpec(length=10, marker="re:trial_(left|right)"))
    b.feed(50)
    b.marker(60, "trial_left")
    b.feed(100)
    [r] = b.results
    r.kind, r.labels = "retrieval", ["left", "right"]  # as a retrieval result, best first
    scorer = Scorer()
    scorer.publish(r)
    assert r.label == "left" and scorer.report()["erp"]["top1"] == 1.0


def test_importance_is_computed_after_publishing_and_sent_with_the_next_result():
    b = Bench()
    b.decoder("sliding", TriggerSpec(length=10, every=10), explains=True)
    for _ in range(3):
        b.feed(10)
    assert [r.seq for r in b.results] == [0, 1, 2]
    first, second, third = b.results
    assert first.importance is None and first.importance_seq is None
    assert second.importance_seq == 0 and list(second.importance) == [0, 0]  # window 0's
    assert third.importance_seq == 1 and list(third.importance) == [10, 10]


def run_threaded(bench_body):
    """Run ``bench_body(bench)`` (a coroutine function) with a non-inline scheduler."""
    async def main():
        b = Bench(inline=False, loop=asyncio.get_running_loop())
        try:
            await bench_body(b)
        finally:
            b.scheduler.close()
    asyncio.run(main())


async def wait_for(condition, timeout=5.0):
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return False


def test_a_blocked_decoder_does_not_delay_another_on_the_same_device():
    gate = threading.Event()

    async def body(b):
        slow = b.decoder("slow", TriggerSpec(length=10, every=10), gate=gate)
        b.decoder("fast", TriggerSpec(length=10, every=10))
        for _ in range(5):
            b.feed(10)
            await asyncio.sleep(0.02)
        try:
            assert await wait_for(lambda: sum(r.decoder == "fast" for r in b.results) == 5)
            assert not any(r.decoder == "slow" for r in b.results)
            assert slow.busy and slow.skipped == 4  # never queued twice
        finally:
            gate.set()
        assert await wait_for(lambda: not slow.busy)

    run_threaded(body)


def test_a_result_is_published_before_its_importance_is_computed():
    explain_gate = threading.Event()

    async def body(b):
        task = b.decoder("gnn", TriggerSpec(length=10, every=10), explains=True,
                         explain_gate=explain_gate)
        b.feed(10)
        try:
            assert await wait_for(lambda: len(b.results) == 1)
            assert task.busy  # still computing the importance, on its own worker
        finally:
            explain_gate.set()
        assert await wait_for(lambda: not task.busy)
        b.feed(10)
        assert await wait_for(lambda: len(b.results) == 2)
        assert b.results[1].importance_seq == 0

    run_threaded(body)


def test_latency_percentiles_cover_the_last_results_only():
    b = Bench()
    task = b.decoder("sliding", TriggerSpec(length=10, every=10))
    for seconds in [1.0] * 5000 + [0.002] * task.latency.size:
        task.latency.record(seconds)
    assert task.stats()["latency_ms"] == {"p50": pytest.approx(2.0), "p99": pytest.approx(2.0),
                                          "max": pytest.approx(2.0)}


def test_worker_safe_sinks_get_the_result_on_the_worker_then_the_loop_counts_it():
    """``direct``: the complete result goes to the thread-safe sinks from the decoder's
    worker (no event-loop hop), then to the other sinks on the loop; a decoder with
    importance keeps the loop path (its importance is loop state)."""
    on_worker, on_loop = [], []

    async def main():
        loop_thread = threading.get_ident()
        b = Bench(inline=False, loop=asyncio.get_running_loop())
        b.scheduler.router.direct = DirectSinks(
            lambda r: on_worker.append((r, threading.get_ident())),
            lambda r: on_loop.append((r, threading.get_ident())), lambda: True)
        fast = b.decoder("fast", TriggerSpec(length=10, every=10))
        b.decoder("gnn", TriggerSpec(length=10, every=10), explains=True)
        try:
            b.feed(10)
            assert await wait_for(lambda: len(on_loop) == 1 and len(b.results) == 1)
            [(sent, worker)] = on_worker
            assert sent.decoder == "fast" and worker != loop_thread
            assert list(sent.embedding) == list(range(10)) and sent.t_published >= T0
            assert on_loop == [(sent, loop_thread)]  # the same result, then on the loop
            assert b.results[0].decoder == "gnn"  # the plain loop path
            assert fast.results == 1 and not fast.busy
        finally:
            b.scheduler.close()

    asyncio.run(main())


def test_triggers_fire_from_an_acquisition_thread_while_markers_arrive_on_the_loop():
    """The engine calls ``on_data`` on the source's own thread (no event-loop hop before the
    worker wakes) while markers come in on the loop: every window is decoded exactly once."""

    async def body(b):
        b.decoder("sliding", TriggerSpec(length=10, every=10))
        b.decoder("erp", TriggerSpec(length=10, marker="stim"))

        def acquire():
            for _ in range(20):
                b.feed(10)
                time.sleep(0.005)

        thread = threading.Thread(target=acquire)
        thread.start()
        for sample in range(5, 150, 15):  # markers while the thread feeds
            b.marker(sample)
            await asyncio.sleep(0.003)
        await asyncio.to_thread(thread.join)
        tasks = b.scheduler.tasks
        assert await wait_for(lambda: len(b.results) + sum(t.skipped for t in tasks.values())
                              == 20 + 10 and not any(t.busy for t in tasks.values()))
        sliding = sorted(r.embedding[0] for r in b.results if r.decoder == "sliding")
        erp = sorted(r.embedding[0] for r in b.results if r.decoder == "erp")
        assert len(sliding) + tasks["sliding"].skipped == 20
        assert sliding == sorted(set(sliding)) and all(v % 10 == 0 for v in sliding)
        assert len(erp) + tasks["erp"].skipped == 10
        assert set(erp) <= set(range(5, 150, 15))

    run_threaded(body)


def feed_from_a_thread(b, chunks: int, n: int = 10) -> int:
    """Feed ``chunks`` chunks of ``n`` samples from a new thread (an acquisition thread);
    return its thread id."""
    thread = threading.Thread(target=lambda: [b.feed(n) for _ in range(chunks)])
    thread.start()
    thread.join()
    return thread.ident


def test_a_source_thread_decoder_runs_in_the_acquisition_thread_on_the_ring_itself():
    """``placement = "source"``: each sliding window is decoded in the thread that fed the chunk
    completing it, on a view of the ring buffer (no copy), before ``ingest`` returns; a window
    a late marker completes runs on the worker, never on the loop."""
    on_worker = []

    async def body(b):
        b.scheduler.router.direct = DirectSinks(on_worker.append, b.results.append, lambda: True)
        fast = b.decoder("fast", TriggerSpec(length=10, every=10), placement="source")
        erp = b.decoder("erp", TriggerSpec(length=10, marker="stim"), placement="source")
        acquisition = feed_from_a_thread(b, 5)
        assert len(on_worker) == 5  # published before the feeding thread went on
        assert [list(r.embedding) for r in on_worker] == [
            list(range(k, k + 10)) for k in range(0, 50, 10)]
        assert {ident for ident, _ in fast.decoder.calls} == {acquisition}
        assert all(np.shares_memory(w, b.stream.buffer._data) for _, w in fast.decoder.calls)
        assert not fast.busy and fast.stats()["placement"] == "source"
        b.marker(20)  # its samples are in: the window runs now, on erp's worker
        assert await wait_for(lambda: any(r.decoder == "erp" for r in on_worker))
        [(ident, window)] = erp.decoder.calls
        assert ident not in (acquisition, threading.get_ident())
        assert not np.shares_memory(window, b.stream.buffer._data)  # its own copy
        assert await wait_for(lambda: fast.results == 5 and erp.results == 1)

    run_threaded(body)


def test_without_a_sink_on_the_loop_the_worker_counts_the_result_and_the_loop_sleeps():
    """Every sink worker-safe (``loop_needed()`` False): the decoder's thread publishes and
    counts each result; nothing is scheduled on the event loop."""
    on_worker, on_loop = [], []

    async def body(b):
        b.scheduler.router.direct = DirectSinks(on_worker.append, on_loop.append, lambda: False)
        b.scheduler.router._call = lambda *args: on_loop.append(args)  # any trip to the loop
        fast = b.decoder("fast", TriggerSpec(length=10, every=10))
        here = b.decoder("here", TriggerSpec(length=10, every=10), placement="source")
        for _ in range(4):
            feed_from_a_thread(b, 1)
            assert await wait_for(lambda: not fast.busy)
        assert fast.results == here.results == 4 and len(on_worker) == 8
        assert fast.latency.total == here.latency.total == 4
        assert on_loop == [] and b.results == []

    run_threaded(body)


def test_a_slow_source_thread_decoder_moves_to_its_own_worker(caplog):
    """Over SOURCE_THREAD_MAX_MS for SOURCE_THREAD_STRIKES windows in a row: the decoder
    leaves the source's thread (logged once); a fast one next to it stays."""

    async def body(b):
        slow = b.decoder("slow", TriggerSpec(length=10, every=10), placement="source",
                         sleep_s=2 * SOURCE_THREAD_MAX_MS * 1e-3)
        fast = b.decoder("fast", TriggerSpec(length=10, every=10), placement="source")
        acquisition = feed_from_a_thread(b, SOURCE_THREAD_STRIKES)
        assert slow.placement == "own" and fast.placement == "source"
        assert [m for m in caplog.messages if "runs on its own thread" in m] == [
            caplog.messages[-1]]
        assert "'slow'" in caplog.messages[-1]
        feed_from_a_thread(b, 1)
        assert await wait_for(lambda: slow.results == SOURCE_THREAD_STRIKES + 1)
        threads = [ident for ident, _ in slow.decoder.calls]
        assert threads[:-1] == [acquisition] * SOURCE_THREAD_STRIKES
        assert threads[-1] not in (acquisition, threading.get_ident())
        assert slow.stats()["placement"] == "own" and fast.results == SOURCE_THREAD_STRIKES + 1

    run_threaded(body)


def test_a_decoder_with_importance_stays_on_its_own_thread(caplog):
    b = Bench()
    task = b.decoder("gnn", TriggerSpec(length=10, every=10), placement="source", explains=True)
    assert task.placement == "own" and "placement = 'source' ignored" in caplog.text


def test_source_and_own_thread_decode_the_same_windows_live(run):
    """The same band-power decoder on the source's thread and on its own: equal outputs for
    every window both decoded, in a live run."""
    _, stats, results = run([sliding("here", "builtin:bandpower", placement="source"),
                             sliding("worker", "builtin:bandpower", placement="own")], 2.0)
    assert stats["decoders"]["here"]["placement"] == "source"
    assert stats["decoders"]["worker"]["placement"] == "own"
    by = {name: {r.seq: r.embedding for r in results if r.decoder == name}
          for name in ("here", "worker")}
    common = sorted(set(by["here"]) & set(by["worker"]))
    assert len(common) >= 20
    for seq in common:
        np.testing.assert_array_equal(by["here"][seq], by["worker"][seq])


def test_the_engine_caps_numpys_blas_threads_at_its_decoders_threads(run):
    """Idle OpenBLAS threads spin: a running engine keeps numpy's BLAS pool at the most
    ``threads`` a CPU decoder asks for (default 1)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    threadpool_limits(2, user_api="blas")
    if blas_threads() != {2}:
        pytest.skip("numpy's BLAS here has no thread pool to cap")
    run([sliding("bp", "builtin:bandpower")], 0.3)
    assert blas_threads() == {1}
    run([sliding("bp", "builtin:bandpower", compute_threads=2)], 0.3)
    assert blas_threads() == {2}


@pytest.mark.slow
def test_non_finite_or_misshapen_outputs_are_counted_logged_sparingly_and_not_published(
        scripted, run, caplog):
    """Issue 21, point 8: a python decoder returning NaN, or three probabilities for two
    labels, publishes nothing; its windows count as ``invalid_outputs``; the ERROR line comes
    the 1st, 10th, 100th … time, not once per result."""
    _, stats, results = run([sliding("nan", scripted, options={"bad": "nan"}),
                             sliding("shape", scripted, options={"bad": "shape"}),
                             sliding("good", scripted)], 3.0)
    for name, why in [("nan", "probabilities holds non-finite values (NaN or ±Inf)"),
                      ("shape", "probabilities of shape (3,), expected (2,)")]:
        entry = stats["decoders"][name]
        assert entry["results"] == 0 and entry["invalid_outputs"] > 10, entry
        lines = [m for m in caplog.messages if m.startswith(f"decoder {name!r}: invalid output")]
        logged = [n for n in (1, 10, 100, 1000) if n <= entry["invalid_outputs"]]
        assert len(lines) == len(logged) and why in lines[0]
    assert stats["decoders"]["good"]["results"] > 10
    assert stats["decoders"]["good"]["invalid_outputs"] == 0
    assert {r.decoder for r in results} == {"good"}


class _Out(Decoder):
    def __init__(self, kind, size, labels=None):
        self.kind, self.output_size, self.labels = kind, size, labels

    def __call__(self, window):
        raise NotImplementedError


@pytest.mark.parametrize("decoder, output, problem", [
    (_Out("classes", 2, ["a", "b"]), DecoderOutput(probabilities=np.array([0.4, 0.6])), None),
    (_Out("classes", 2, ["a", "b"]), DecoderOutput(), "no probabilities (kind 'classes')"),
    (_Out("classes", 2, ["a", "b"]), DecoderOutput(probabilities=np.array([1.0, np.inf])),
     "probabilities holds non-finite values (NaN or ±Inf)"),
    (_Out("classes", 2, ["a", "b"]),
     DecoderOutput(probabilities=np.array([0.4, 0.6]), labels=["a"]), "1 labels for 2 outputs"),
    (_Out("embedding", 4), DecoderOutput(embedding=np.zeros(3)),
     "embedding of shape (3,), expected (4,)"),
    (_Out("embedding", 4), DecoderOutput(embedding=np.array(["x"] * 4, object)),
     "embedding is not numeric"),
    (_Out("retrieval", 4), DecoderOutput(ids=np.array([3, 1]), scores=np.array([0.9, 0.2]),
                                         labels=["c", "a"]), None),
    (_Out("retrieval", 4), DecoderOutput(ids=np.array([3, 1]), scores=np.array([0.9])),
     "scores of shape (1,), expected (2,)"),
    (_Out("retrieval", 4), [0.9, 0.2], "returned list, not a DecoderOutput"),
])
def test_output_problem_names_what_is_wrong(decoder, output, problem):
    assert output_problem(decoder, output) == problem


def test_markers_while_the_decoder_is_busy_queue_up_to_the_bound_and_the_rest_are_counted():
    """Issue 21, point 9: a burst of markers while the event-locked decoder is busy: a copy of
    each complete window waits (up to MAX_QUEUED_WINDOWS) and is decoded, in order, once the
    decoder is free; the markers beyond are counted as dropped (none skipped silently)."""
    gate = threading.Event()
    burst = MAX_QUEUED_WINDOWS + 6  # one running, MAX_QUEUED_WINDOWS waiting, 5 dropped

    async def body(b):
        erp = b.decoder("erp", TriggerSpec(length=10, marker="stim"), gate=gate)
        b.feed(150)
        for sample in range(burst):
            b.marker(sample)
        b.feed(50)  # overwrites nothing the queued copies need; the ring moves on
        assert await wait_for(lambda: erp.busy and len(erp.queued) == MAX_QUEUED_WINDOWS)
        gate.set()
        assert await wait_for(lambda: erp.results == MAX_QUEUED_WINDOWS + 1 and not erp.busy)
        decoded = [r for r in b.results if r.decoder == "erp"]
        assert [int(r.embedding[0]) for r in decoded] == list(range(MAX_QUEUED_WINDOWS + 1))
        assert all(list(r.embedding) == list(range(k, k + 10)) for k, r in enumerate(decoded))
        assert [r.seq for r in decoded] == list(range(MAX_QUEUED_WINDOWS + 1))
        stats = erp.stats()
        assert (stats["dropped_markers"], stats["skipped"], stats["stale_markers"]) == (5, 0, 0)

    run_threaded(body)


class RacingRing(RingBuffer):
    """A ring whose writer, once armed, writes a chunk between a reader's snapshot of ``count``
    and its read of the samples (the acquisition thread overtaking the scheduler)."""

    chunk: tuple[np.ndarray, np.ndarray] | None = None

    def window(self, start, stop, *snapshot):
        if self.chunk is not None:
            chunk, self.chunk = self.chunk, None
            self.write(*chunk)
        return super().window(start, stop, *snapshot)


def test_a_marker_read_overtaken_by_the_writer_on_a_full_ring_still_fires_for_every_decoder():
    """Issue 21, point 9: the marker lookup takes one snapshot of the count; a chunk written
    between it and the read (a full ring: the oldest samples go) makes the lookup start again
    instead of raising IndexError, and every decoder after it still sees the marker."""
    b = Bench(buffer_seconds=2.0)  # 200 samples
    b.stream.buffer = ring = RacingRing(200, 2, srate=SRATE)
    first = b.decoder("first", TriggerSpec(length=20, marker="stim"))
    second = b.decoder("second", TriggerSpec(length=20, marker="stim"))
    b.feed(200)  # full
    k = np.arange(200, 230)
    ring.chunk = (np.repeat(k[:, None], 2, axis=1).astype(np.float32), T0 + k / SRATE)
    b.marker(150)
    assert ring.chunk is None and ring.count == 230  # the writer did overtake the lookup
    assert [(r.decoder, list(r.embedding)) for r in b.results] == [
        ("first", list(range(150, 170))), ("second", list(range(150, 170)))]
    assert first.stale_markers == second.stale_markers == 0


# --- issue 20: isolation -------------------------------------------------------------------


class Centring(Echo):
    """The common idiom ``w -= w.mean(0)``: centres its window in place, then echoes it."""

    def __call__(self, window):
        window -= window.mean(axis=0)
        return super().__call__(window)


def test_an_in_place_edit_on_the_source_thread_reaches_neither_the_ring_nor_the_others():
    """Issue 20: a source-thread decoder that writes into its window gets a read-only view:
    its write raises inside it (an error on each window), and the decoder beside it and the
    ring (both mirrored halves: what the display and the recorder read) are exactly as in a
    run without it, window by window."""

    def once(editor: bool) -> dict:
        seen = {}

        async def body(b):
            if editor:
                b.decoder("centre", TriggerSpec(length=10, every=10), placement="source",
                          cls=Centring)
            fast = b.decoder("fast", TriggerSpec(length=10, every=10), placement="source")
            feed_from_a_thread(b, 5)
            tasks = b.scheduler.tasks.values()
            assert await wait_for(lambda: fast.results == 5 and sum(
                t.errors for t in tasks) == 5 * editor and not any(t.busy for t in tasks))
            seen["fast"] = [list(r.embedding) for r in b.results if r.decoder == "fast"]
            seen["ring"] = b.stream.buffer._data.copy()
            seen["stats"] = {t.name: t.stats() for t in tasks}

        run_threaded(body)
        return seen

    edited, alone = once(True), once(False)
    assert edited["fast"] == alone["fast"] == [list(range(k, k + 10)) for k in range(0, 50, 10)]
    np.testing.assert_array_equal(edited["ring"], alone["ring"])
    centre = edited["stats"]["centre"]
    assert (centre["results"], centre["errors"]) == (0, 5)
    assert centre["last_error"] == "ValueError: output array is read-only"
    assert edited["stats"]["fast"]["errors"] == 0


class Faulty(Echo):
    """Fails every second window (the 2nd, 4th …) the way ``fault`` says; decodes the others."""

    FAULTS = {"exit": lambda: SystemExit("decoder quit"), "interrupt": KeyboardInterrupt,
              "raise": lambda: RuntimeError("boom")}

    def __init__(self, n_samples, fault):
        super().__init__(n_samples)
        self.fault, self.n = fault, 0

    def __call__(self, window):
        self.n += 1
        if self.n % 2 == 0:
            if self.fault == "none":
                return None
            raise self.FAULTS[self.fault]()
        return super().__call__(window)


@pytest.mark.parametrize("fault, error", [
    ("none", "returned NoneType, not a DecoderOutput"),
    ("exit", "SystemExit: decoder quit"),
    ("interrupt", "KeyboardInterrupt"),
    ("raise", "RuntimeError: boom"),
])
def test_a_decoder_failing_any_way_counts_an_error_and_its_worker_decodes_the_next_window(
        fault, error):
    """Issue 20: returning None, SystemExit, KeyboardInterrupt or any exception is an error on
    that window (``errors``, ``last_error``); the worker thread lives on and decodes the next."""

    async def body(b):
        task = b.decoder("odd", TriggerSpec(length=10, every=10), cls=Faulty, fault=fault)
        for _ in range(6):
            feed_from_a_thread(b, 1)
            assert await wait_for(lambda: not task.busy), "the worker died"
        assert b.scheduler.workers["odd"].thread.is_alive()
        assert (task.results, task.errors, task.invalid_outputs) == (3, 3, 0)
        assert task.last_error == error
        assert [r.embedding[0] for r in b.results] == [0, 20, 40]  # windows 0, 2, 4

    run_threaded(body)


@pytest.mark.parametrize("model", ["python:my_decoders:make", "demo:eegnet", "model.pt"])
def test_placement_source_is_refused_for_user_code_in_one_line(model):
    """Issue 20: no user code on an acquisition thread: ``placement = "source"`` is for the
    engine's builtin: decoders only; a python: or checkpoint decoder asking for it is refused
    in one line naming the key."""
    from rtbci.errors import RtbciError

    entry = sliding("mine", model, placement="source")
    with pytest.raises(RtbciError) as refused:
        parse_config({"sources": [{"name": "eeg", "kind": "simulate"}], "decoders": [entry]})
    assert str(refused.value) == (
        "config: decoders[0].placement: 'source' runs a decoder on the acquisition thread, "
        f"where only the engine's own builtin: decoders may run; give {model!r} placement = "
        "\"auto\" (the default: its own worker for user code) or \"own\"")
    assert parse_config({"sources": [{"name": "eeg", "kind": "simulate"}], "decoders": [
        sliding("bp", "builtin:bandpower", placement="source")]}).decoders[0].placement == "source"


@pytest.mark.slow
def test_a_python_decoder_sleeping_4_s_never_stalls_ingest_nor_the_band_power_beside_it(
        scripted, run):
    """Issue 20: a python: decoder that sleeps 4 s in one call runs on its own worker, so the
    source's acquisition thread never stalls (the health watch reports no stall) and the band
    power on the source's thread beside it loses no trigger (a 4 s stall of the acquisition
    thread would skip ~40 of them)."""
    sleeper = sliding("sleeper", scripted, budget_ms=50, timeout_ms=10_000,
                      options={"hang_call": 3, "hang_s": 4.0})
    bandpower = sliding("bp", "builtin:bandpower", every_ms=100, placement="source")
    _, stats, results = run([sleeper, bandpower], 8.0)
    assert "acquisition eeg" not in stats["threads"], stats["threads"]
    bp = stats["decoders"]["bp"]
    assert bp["placement"] == "source" and bp["errors"] == 0
    assert bp["results"] > 40 and bp["skipped"] <= 3, bp  # load hiccups at most
    sleeper_results = [r for r in results if r.decoder == "sleeper"]
    assert max(r.latency_ms for r in sleeper_results) > 3500  # it did sleep
    assert stats["decoders"]["sleeper"]["skipped"] >= 40  # its own triggers, not bp's


def test_the_engine_runs_with_a_short_gil_switch_interval_and_puts_it_back():
    """``[engine] switch_interval_ms`` (default 0.5): while the engine runs, a thread waiting
    for the GIL (a source's acquisition thread behind a decoder's numpy) gets it within about
    0.5 ms instead of Python's 5 ms; the process's own setting is back when the run ends."""
    import sys

    seen = []
    config = parse_config({"engine": {"session": "test", "stats_interval_s": 0.1},
                           "sources": [{"name": "eeg", "kind": "simulate",
                                        "stream_name": f"gil-{uuid.uuid4().hex[:8]}"}]})
    before = sys.getswitchinterval()
    asyncio.run(Engine(config).run(0.5, on_tick=lambda e: seen.append(sys.getswitchinterval())))
    assert seen and all(s == pytest.approx(0.0005) for s in seen), seen
    assert sys.getswitchinterval() == before
