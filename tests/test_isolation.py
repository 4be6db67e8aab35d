"""Process isolation (issue 20): a decoder in its own worker process, supervised — it may
edit its window, exit, segfault, hog memory or hang, and the engine, its recording and the
decoders beside it go on; every fault is one line and a counter."""

import asyncio
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from rtbci.config import parse_config
from rtbci.devices.recording import RecordedStream, Recording
from rtbci.engine import Engine
from rtbci.errors import RtbciError
from rtbci.stream import StreamInfo

FAULTY = textwrap.dedent('''
    import ctypes, os, sys, time
    import numpy as np
    from rtbci.models import Decoder, DecoderOutput

    class Faulty(Decoder):
        """Decodes the window's mean; from call ``at`` on (the warm-up is call 1) it fails the
        way ``fault`` says, every ``every`` calls; with ``once`` (a file path) only in the
        first worker process that gets there (the file says it happened)."""
        kind, labels, output_size = "classes", ["a", "b"], 2

        def __init__(self, n_samples, n_channels, srate, fault="", at=3, every=1,
                     hog_mb=0, once=""):
            self.n_samples, self.n_channels = n_samples, n_channels
            self.fault, self.at, self.every, self.hog_mb = fault, at, every, hog_mb
            self.calls, self.hoard, self.once = 0, [], once

        def __call__(self, window):
            self.calls += 1
            due = self.calls >= self.at and (self.calls - self.at) % self.every == 0
            if due and self.once:
                due = not os.path.exists(self.once)
                open(self.once, "w").close()
            if due:
                if self.fault == "edit":
                    window -= window.mean(0)
                elif self.fault == "exit":
                    os._exit(3)
                elif self.fault == "segfault":
                    ctypes.string_at(0)
                elif self.fault == "hog":
                    self.hoard.append(np.ones(self.hog_mb * 2**20 // 8))
                elif self.fault == "hang":
                    time.sleep(30)
                elif self.fault == "sysexit":
                    sys.exit("decoder quit")
            p = 1 / (1 + np.exp(-float(window.mean())))
            return DecoderOutput(probabilities=np.array([p, 1 - p], np.float32),
                                 labels=self.labels)
''')


@pytest.fixture
def faulty(tmp_path, monkeypatch):
    module = f"faulty_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(FAULTY)
    monkeypatch.syspath_prepend(str(tmp_path))  # a spawned worker gets the parent's sys.path
    return f"python:{module}:Faulty"


def decoder(name, model, isolation="process", every_ms=100, **extra):
    runtime = {"runtime": "numpy"} if model.startswith("builtin:") else {}
    return {"name": name, "model": model, "source": "eeg", "window_ms": 200,
            "every_ms": every_ms, "budget_ms": 50, "isolation": isolation, **runtime, **extra}


def live(decoders, duration, new_collector, sinks=()):
    config = parse_config({
        "engine": {"session": f"iso-{uuid.uuid4().hex[:6]}"},
        "sources": [{"name": "eeg", "kind": "simulate",
                     "stream_name": f"iso-{uuid.uuid4().hex[:8]}"}],
        "decoders": decoders, "sinks": list(sinks)})
    collector = new_collector()
    engine = Engine(config, sinks=[collector])
    stats = asyncio.run(engine.run(duration))
    return engine, stats, collector.results


def by_decoder(results, name):
    return [r for r in results if r.decoder == name]


def test_a_process_decoder_decodes_what_a_thread_decoder_does_offline(new_collector):
    """Offline replay gives the same outputs, window by window, with either isolation."""
    rng = np.random.default_rng(0)
    srate, n = 250.0, 2500
    info = StreamInfo("eeg", "EEG", "sim", srate, tuple(f"C{i}" for i in range(8)),
                      ("eeg",) * 8, ("microvolts",) * 8)
    data = rng.standard_normal((n, 8)).astype(np.float32)
    recording = Recording(Path("mem.fif"), [RecordedStream(info, data, np.arange(n) / srate)])
    outputs = {}
    for isolation in ("thread", "process"):
        config = parse_config({
            "sources": [{"name": "eeg", "kind": "simulate", "stream_name": "eeg"}],
            "decoders": [decoder("bp", "builtin:bandpower", isolation)]})
        collector = new_collector()
        stats = asyncio.run(Engine(config, sinks=[collector]).run_offline(recording))
        assert stats["decoders"]["bp"]["isolation"] == isolation
        outputs[isolation] = [(r.seq, r.probabilities, r.embedding) for r in collector.results]
    assert len(outputs["thread"]) == (2500 - 50) // 25 + 1  # every window, each isolation
    for (seq_t, p_t, e_t), (seq_p, p_p, e_p) in zip(*outputs.values(), strict=True):
        assert seq_t == seq_p
        np.testing.assert_array_equal(e_t if e_t is not None else p_t,
                                      e_p if e_p is not None else p_p)


@pytest.mark.slow
def test_a_process_decoder_runs_live_beside_a_thread_one_and_reports_its_worker(
        faulty, new_collector):
    engine, stats, results = live([decoder("proc", faulty),
                                   decoder("bp", "builtin:bandpower", "thread")],
                                  5.0, new_collector)
    proc = stats["decoders"]["proc"]
    assert proc["isolation"] == "process" and proc["errors"] == 0 and proc["results"] >= 10
    worker = proc["worker"]
    assert worker["state"] == "closed" and worker["restarts"] == worker["kills"] == 0
    assert worker["rss_mb"] > 10 and worker["pid"] > 0
    assert worker["hop_ms"]["p50"] > 0
    assert stats["decoders"]["bp"]["isolation"] == "thread"
    p = np.array([r.probabilities for r in by_decoder(results, "proc")])
    assert np.isfinite(p).all() and np.allclose(p.sum(1), 1, atol=1e-6)


@pytest.mark.slow
def test_an_in_place_edit_in_a_worker_process_fails_there_and_the_ring_is_untouched(
        faulty, new_collector):
    """The window is mapped read-only in the worker: ``window -= mean`` raises there (an error
    on each window, the worker lives on), and the decoder beside it is untouched (it reads
    the ring; the worker only ever maps a copy of its window)."""
    engine, stats, results = live([decoder("edit", faulty, options={"fault": "edit"}),
                                   decoder("bp", "builtin:bandpower", "thread")],
                                  4.0, new_collector)
    edit = stats["decoders"]["edit"]
    assert edit["results"] == 0 and edit["errors"] >= 5
    assert "read-only" in edit["last_error"], edit["last_error"]
    assert edit["worker"]["restarts"] == 0  # an exception is an error, not a death
    assert stats["decoders"]["bp"]["errors"] == 0 and stats["decoders"]["bp"]["results"] >= 15


@pytest.mark.slow
@pytest.mark.parametrize("fault, why", [
    ("exit", "exited with status 3"),
    ("segfault", "killed by SIGSEGV"),
])
def test_a_worker_process_that_dies_is_restarted_and_the_others_lose_nothing(
        faulty, new_collector, caplog, tmp_path, fault, why):
    """``os._exit`` or a segfault (through ctypes) in the decoder kills its process only: the
    window it was decoding is an error naming the cause, the supervisor restarts it, it
    decodes again; the thread decoder beside it skips nothing; one log line per death."""
    engine, stats, results = live(
        [decoder("dies", faulty, options={"fault": fault, "at": 5,
                                           "once": str(tmp_path / "once")}),
         decoder("bp", "builtin:bandpower", "thread")], 6.0, new_collector,
        sinks=[{"kind": "record", "path": str(tmp_path / "rec")}])
    dies = stats["decoders"]["dies"]
    assert dies["worker"]["restarts"] == 1, dies
    assert dies["worker"]["last_exit"] == why and dies["worker"]["kills"] == 0
    assert dies["errors"] >= 1 and why in dies["last_error"]
    seqs = [r.seq for r in by_decoder(results, "dies")]  # 2 windows, death, restart, more
    assert seqs[1] == seqs[0] + 1 and seqs[2] > seqs[1] + 1 and len(seqs) >= 8, seqs
    bp = stats["decoders"]["bp"]
    assert bp["errors"] == bp["skipped"] == 0 and bp["results"] >= 30
    assert stats["streams"]["eeg"]["overflows"] == 0
    record = stats["sinks"]["record[0]"]  # the recording is whole: every sample and result
    assert record["samples"] == {"eeg": stats["streams"]["eeg"]["samples"]}
    assert record["results"] == len(results)
    assert record["lost_samples"] == record["lost_results"] == record["write_errors"] == 0
    deaths = [r for r in caplog.records if "worker process" in r.getMessage()
              and why in r.getMessage()]
    assert len(deaths) == 1, [r.getMessage() for r in caplog.records]
    assert engine.problems(stats) == []


@pytest.mark.slow
def test_a_memory_hog_is_killed_at_max_memory_mb_and_restarted(faulty, new_collector):
    engine, stats, _ = live(
        [decoder("hog", faulty, max_memory_mb=400, options={"fault": "hog", "hog_mb": 40}),
         decoder("bp", "builtin:bandpower", "thread")], 6.0, new_collector)
    hog = stats["decoders"]["hog"]["worker"]
    assert hog["kills"] >= 1 and hog["restarts"] >= 1
    assert "over max_memory_mb 400" in hog["last_exit"]
    assert stats["decoders"]["bp"]["skipped"] == 0


@pytest.mark.slow
def test_a_call_past_kill_after_times_its_budget_is_killed_and_restarted(
        faulty, new_collector, tmp_path):
    once = str(tmp_path / "once")
    engine, stats, results = live(
        [decoder("hang", faulty, kill_after=4, options={"fault": "hang", "once": once}),
         decoder("bp", "builtin:bandpower", "thread")], 5.0, new_collector)
    hang = stats["decoders"]["hang"]
    assert hang["worker"]["kills"] == 1 and hang["worker"]["restarts"] == 1
    assert hang["worker"]["last_exit"] == ("no result after 200 ms (kill_after 4 × "
                                           "budget_ms 50)")
    assert max(r.seq for r in by_decoder(results, "hang")) > 10  # decoding again
    assert stats["decoders"]["bp"]["skipped"] == 0


@pytest.mark.slow
def test_a_decoder_that_keeps_dying_is_failed_and_the_run_says_so(faulty, new_collector):
    engine, stats, _ = live([decoder("doomed", faulty, options={"fault": "exit", "at": 1})],
                            4.0, new_collector)  # dies in every warm-up: never starts
    assert stats["decoders"]["doomed"]["state"] == "failed"
    (line,) = engine.problems(stats)
    assert line.startswith("decoder 'doomed'") and "exited with status 3" in line


@pytest.mark.slow
def test_a_worker_that_dies_after_it_started_again_and_again_is_failed(faulty, new_collector):
    engine, stats, _ = live([decoder("doomed", faulty, options={"fault": "exit", "at": 3})],
                            9.0, new_collector)
    doomed = stats["decoders"]["doomed"]
    assert doomed["state"] == "failed" and doomed["worker"]["state"] == "failed"
    assert doomed["worker"]["restarts"] == 4
    (line,) = engine.problems(stats)
    assert line == ("decoder 'doomed': its worker process failed: ended 5 times within 60 s "
                    "(last: exited with status 3)")


@pytest.mark.parametrize("entry, error", [
    ({"isolation": "process", "placement": "source"}, "cannot be isolation"),
    ({"max_memory_mb": 100}, 'max_memory_mb: only for isolation = "process"'),
    ({"isolation": "process", "cpu": [4096]}, "cpu: core 4096 is not one"),
    ({"isolation": "process", "nice": -5}, "nice"),
])
def test_isolation_settings_are_checked_in_one_line(entry, error):
    base = decoder("bp", "builtin:bandpower", "thread")
    with pytest.raises(RtbciError) as refused:
        parse_config({"sources": [{"name": "eeg", "kind": "simulate"}],
                      "decoders": [{**base, **entry}]})
    assert error in str(refused.value) and "\n" not in str(refused.value)


WORKER = {"pid": 4242, "state": "running", "restarts": 1, "kills": 0, "rss_mb": 338.4,
          "cpu_percent": 4.1, "last_exit": "killed by SIGSEGV",
          "hop_ms": {"p50": 0.23, "p99": 0.6, "max": 2.8}}


def test_the_console_line_shows_the_worker_process():
    from rtbci.sinks.console import ConsoleSink, ConsoleSinkConfig

    sink = ConsoleSink(ConsoleSinkConfig())
    sink.stats_tick({"decoders": {"user": {"skipped": 2, "errors": 2, "worker": WORKER}}})
    assert sink._counters("user").endswith("proc running restarts 1 kills 0 rss 338 MB ")
    sink.stats_tick({"decoders": {"user": {"skipped": 0, "errors": 0}}})
    assert "proc" not in sink._counters("user")


def test_the_display_shows_the_worker_process():
    pytest.importorskip("PySide6")
    from rtbci.gui.timing import worker_text

    assert worker_text(WORKER) == (" · worker pid 4242 running, restarts 1, kills 0 (last: "
                                   "killed by SIGSEGV), 338 MB, 4 % CPU, hop p99 0.60 ms")
    assert worker_text(None) == ""


class _Timed:
    """Stands in for a built decoder whose call takes ``ms``."""

    explains = False

    def __init__(self, ms):
        self.ms = ms

    def __call__(self, window):
        import time

        time.sleep(self.ms * 1e-3)


@pytest.mark.parametrize("entry, ms, thread, why", [
    ({}, 0.0, "source", "auto: 0.0"),  # a fast builtin: inline, measured
    ({}, 3.0, "own", "≥ 0.5 ms"),  # a slow builtin: its own worker
    ({"model": "python:mine:make"}, 0.0, "own", "user code"),
    ({"isolation": "process"}, 0.0, "own", "isolation"),
    ({"placement": "own"}, 0.0, "own", "configured"),
])
def test_thread_auto_puts_only_fast_builtin_decoders_on_the_source_thread(entry, ms, thread,
                                                                         why):
    """The default placement (``placement = "auto"``): the fast path for the engine's own
    decoders, guarded by a cost measured before it may run inline."""
    from rtbci.scheduler.workers import choose_placement

    config = parse_config({"sources": [{"name": "eeg", "kind": "simulate"}], "decoders": [
        {**decoder("bp", "builtin:bandpower", "thread"), **entry}]}).decoders[0]
    assert config.placement == entry.get("placement", "auto")
    got = choose_placement(config, _Timed(ms), np.zeros((10, 2), np.float32))
    assert got[0] == thread and why in got[1], got


@pytest.mark.slow
def test_the_default_builtin_band_power_runs_inline_and_user_code_on_a_worker(
        faulty, new_collector):
    _, stats, _ = live([{**decoder("bp", "builtin:bandpower", "thread"), "runtime": "auto"},
                        decoder("user", faulty, "thread")], 6.0, new_collector)
    assert stats["decoders"]["bp"]["placement"] == "source"
    assert stats["decoders"]["user"]["placement"] == "own"
