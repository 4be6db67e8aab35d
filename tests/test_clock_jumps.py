"""Clock jumps (issue 21, point 2): a stream whose timestamps jump back 100 s (an amplifier's
clock reset) and then forward 2 h, fed the way the acquisition feeds it, through a real LSL
outlet into a running engine, and replayed offline: the same jumps are counted, the same
windows fire, markers stamped on the old clock are dropped as stale (never left waiting)."""

import asyncio
import logging
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pylsl
import pytest

from rtbci.config import parse_config
from rtbci.devices.lsl import lsl_from_info
from rtbci.devices.recording import MarkerStream, RecordedStream, Recording
from rtbci.devices.replay import schedule
from rtbci.engine import Engine
from rtbci.models import Decoder, DecoderOutput
from rtbci.scheduler import DecoderTask, Scheduler, TriggerSpec
from rtbci.stream import Stream, StreamInfo

SRATE = 100.0
A, B, C = 310, 300, 310  # samples on the first clock, after the jump back, after the jump forward
BACK, FORWARD = -100.0, 7200.0
CHUNK = 10
ERP_LENGTH, EVERY = 20, 50  # 200 ms windows; sliding windows every 500 ms
# (name, sample it marks, sample after whose chunk it is pushed, on the stream's clock?)
MARKERS = [("stim/a", 100, 130, True),
           ("stim/pending", 305, 310, True),  # its window needs samples the old clock never had
           ("stim/b", 400, 430, True),
           ("stim/old", 450, 460, False),  # stamped as if the clock had not jumped back
           ("stim/pending2", 605, 610, True),
           ("stim/c", 700, 730, True)]
FIRED = [100, 400, 700]  # the markers whose windows are decoded
STRADDLING = 2  # sliding windows [300, 320) and [600, 620) span a jump
SLIDING = (A + B + C - ERP_LENGTH) // EVERY + 1  # sliding windows complete at the end


def timeline(base: float) -> np.ndarray:
    """Timestamps of samples 0 … A+B+C−1: base + k / SRATE, then 100 s back, then 2 h on."""
    times = base + np.arange(A + B + C) / SRATE
    times[A:] += BACK
    times[A + B:] += FORWARD
    return times


def script(times: np.ndarray):
    """The acquisition's view, in order: ("chunk", start, stop) and ("marker", stamp, text)."""
    pushes = {after: (text, times[sample] if own else times[0] + sample / SRATE)
              for text, sample, after, own in MARKERS}
    for start in range(0, len(times), CHUNK):
        yield "chunk", start, start + CHUNK
        if start + CHUNK in pushes:
            text, stamp = pushes[start + CHUNK]
            yield "marker", float(stamp), text


def samples(n: int) -> np.ndarray:
    """Sample k holds k in both channels."""
    return np.repeat(np.arange(n, dtype=np.float32)[:, None], 2, axis=1)


class Echo(Decoder):
    """Its window's first channel (the sample counters) as the embedding."""

    kind = "embedding"

    def __init__(self, n_samples, n_channels=2, srate=SRATE):
        self.n_samples, self.n_channels, self.output_size = n_samples, n_channels, n_samples

    def __call__(self, window):
        return DecoderOutput(embedding=window[:, 0].copy())


def check(streams: dict, decoders: dict, erp_windows: list, slide_windows: dict) -> None:
    """What every run (stream-level, live, offline) must show."""
    eeg = streams["eeg"]
    assert (eeg["clock_jumps"], eeg["gaps"], eeg["samples"]) == (2, 0, A + B + C)
    assert eeg["rate_hz"] == pytest.approx(SRATE, rel=1e-3)  # the jumps are not time
    erp, slide = decoders["erp"], decoders["slide"]
    assert [w[0] for w in erp_windows] == FIRED
    assert all(list(w) == list(range(int(w[0]), int(w[0]) + ERP_LENGTH)) for w in erp_windows)
    assert (erp["stale_markers"], erp["future_markers"], erp["dropped_markers"]) == (2, 1, 0)
    assert slide["invalid_windows"] == STRADDLING and slide["skipped"] == 0
    assert slide["results"] == SLIDING - STRADDLING == len(slide_windows)
    for seq, window in slide_windows.items():  # window seq ends at ERP_LENGTH + seq * EVERY
        assert window[-1] == ERP_LENGTH + seq * EVERY - 1
    assert not {6, 12} & set(slide_windows)  # the straddling windows: not decoded


def test_a_stream_fed_as_the_acquisition_feeds_it_counts_both_jumps_and_logs_each(caplog):
    """Stream.ingest driven like the acquisition (arrival times from the engine's clock,
    which does not jump), scheduler on the same thread."""
    clock = {"now": 5000.0}
    stream = Stream(StreamInfo("amp", "EEG", "sid", SRATE, ("a", "b"), ("eeg",) * 2,
                               ("uV",) * 2), 10.0, lambda: clock["now"])
    results = []
    scheduler = Scheduler(None, lambda: clock["now"], results.append, inline=True)
    stream.add_listener(lambda: scheduler.on_data(stream))
    tasks = {"erp": DecoderTask("erp", Echo(ERP_LENGTH), stream,
                                TriggerSpec(length=ERP_LENGTH, marker="stim"), 50, 2000),
             "slide": DecoderTask("slide", Echo(ERP_LENGTH), stream,
                                  TriggerSpec(length=ERP_LENGTH, every=EVERY), 50, 2000)}
    for task in tasks.values():
        scheduler.add(task)
    times, data = timeline(5000.0), samples(A + B + C)
    with caplog.at_level(logging.WARNING, logger="rtbci.stream"):
        for event in script(times):
            if event[0] == "chunk":
                _, start, stop = event
                clock["now"] = 5000.0 + stop / SRATE  # arrival: the engine's steady clock
                stream.ingest(data[start:stop], times[start:stop])
            else:
                scheduler.on_marker(stream, event[1], event[2])
    jumps = [r.getMessage() for r in caplog.records if "clock jumped" in r.getMessage()]
    assert jumps == [
        f"stream 'amp': clock jumped back by 99.990 s at sample {A} (1 so far); windows "
        "across it are not decoded, markers stamped before it are dropped as stale",
        f"stream 'amp': clock jumped forward by 7200.010 s at sample {A + B} (2 so far); "
        "windows across it are not decoded, markers stamped before it are dropped as stale"]
    check({"eeg": stream.stats()}, {n: t.stats() for n, t in tasks.items()},
          [r.embedding for r in results if r.decoder == "erp"],
          {r.seq: r.embedding for r in results if r.decoder == "slide"})


ECHO_MODULE = textwrap.dedent('''
    from rtbci.models import Decoder, DecoderOutput

    class Echo(Decoder):
        kind = "embedding"

        def __init__(self, n_samples, n_channels, srate):
            self.n_samples, self.n_channels, self.output_size = n_samples, n_channels, n_samples

        def __call__(self, window):
            return DecoderOutput(embedding=window[:, 0].copy())
''')


@pytest.fixture
def jump_config(tmp_path, monkeypatch):
    """An lsl source named uniquely (raw timestamps: clocksync only), an event-locked and a
    sliding decoder echoing their windows."""
    module = f"echo_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(ECHO_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"jumps-{uuid.uuid4().hex[:8]}"
    model = f"python:{module}:Echo"
    config = parse_config({
        "engine": {"session": name},
        "sources": [{"name": "eeg", "kind": "lsl", "stream": {"name": name},
                     "markers": {"name": f"{name}-markers"}, "processing": ["clocksync"],
                     "buffer_seconds": 10.0}],
        "decoders": [{"name": "erp", "model": model, "source": "eeg", "window_ms": [0, 200],
                      "on_marker": "stim"},
                     {"name": "slide", "model": model, "source": "eeg", "window_ms": 200,
                      "every_ms": 500}]})
    return name, config


INFO_CHANNELS = dict(type="EEG", srate=SRATE, ch_names=("a", "b"), ch_types=("eeg",) * 2,
                     ch_units=("microvolts",) * 2)


async def until(condition, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def windows(results, name: str) -> dict:
    return {r.seq: r.embedding for r in results if r.decoder == name}


@pytest.mark.slow
def test_live_and_offline_count_the_same_jumps_and_fire_the_same_windows(jump_config,
                                                                        new_collector):
    name, config = jump_config
    info = StreamInfo(name, source_id=name, **INFO_CHANNELS)
    outlet = pylsl.StreamOutlet(lsl_from_info(info))
    markers = pylsl.StreamOutlet(pylsl.StreamInfo(f"{name}-markers", "Markers", 1,
                                                  pylsl.IRREGULAR_RATE, pylsl.cf_string,
                                                  f"{name}-markers"))
    base = pylsl.local_clock()
    times, data = timeline(base), samples(A + B + C)
    sent: list[tuple[float, str]] = []
    live = new_collector()
    engine = Engine(config, sinks=[live])

    async def feed() -> None:
        await until(lambda: outlet.have_consumers() and markers.have_consumers()
                    and {"erp", "slide"} <= set(engine.scheduler.tasks))
        erp, slide = engine.scheduler.tasks["erp"], engine.scheduler.tasks["slide"]
        stream = engine.streams["eeg"]
        for event in script(times):
            if event[0] == "chunk":
                _, start, stop = event
                await until(lambda: not slide.busy)  # so that no sliding window is skipped
                outlet.push_chunk(data[start:stop], times[start:stop].tolist())
                await until(lambda stop=stop: stream.buffer.count == stop)
            else:
                markers.push_sample([event[2]], event[1])
                sent.append((event[1], event[2]))
                await until(lambda: erp.seq + len(erp.pending) + erp.stale_markers
                            + erp.future_markers == len(sent))
        await until(lambda: not erp.busy and not slide.busy)

    async def run_live() -> dict:
        stop = asyncio.Event()
        feeding = asyncio.ensure_future(feed())
        feeding.add_done_callback(lambda _: stop.set())
        stats = await engine.run(60.0, stop)
        feeding.result()
        return stats

    live_stats = asyncio.run(run_live())
    check(live_stats["streams"], live_stats["decoders"],
          list(windows(live.results, "erp").values()), windows(live.results, "slide"))

    recording = Recording(Path(name), [RecordedStream(info, data, times)],
                          [MarkerStream(f"{name}-markers", sent, owner=0)])
    replayed = new_collector()
    offline = asyncio.run(Engine(config, sinks=[replayed]).run_offline(recording))
    check(offline["streams"], offline["decoders"],
          list(windows(replayed.results, "erp").values()), windows(replayed.results, "slide"))
    for decoder in ("erp", "slide"):
        live_windows, offline_windows = windows(live.results, decoder), \
            windows(replayed.results, decoder)
        assert live_windows.keys() == offline_windows.keys()
        for seq, window in live_windows.items():
            np.testing.assert_array_equal(window, offline_windows[seq])
    for counter in ("stale_markers", "future_markers", "invalid_windows", "results"):
        assert live_stats["decoders"]["erp"].get(counter) == \
            offline["decoders"]["erp"].get(counter)


def test_the_offline_schedule_replays_a_jumping_clock_in_its_order():
    """Timestamps that jump back are replayed after the samples before them (not sorted in
    among them), a jump forward is not waited for, and markers keep their own stamps."""
    info = StreamInfo("amp", source_id="amp", **INFO_CHANNELS)
    times = timeline(1000.0)
    recording = Recording(Path("x"), [RecordedStream(info, samples(len(times)), times)],
                          [MarkerStream("amp-markers", [(float(times[400]), "stim/b")],
                                        owner=0)])
    events = list(schedule(recording))
    chunks = [e for e in events if e[1] == "samples"]
    assert [e[2:] for e in chunks] == [(0, k, k + 1) for k in range(len(times))]
    replay = np.array([e[0] for e in events])
    assert np.all(np.diff(replay) >= 0)  # one timeline
    assert replay[-1] - replay[0] == pytest.approx((len(times) - 1) / SRATE)
    [marker] = [e for e in events if e[1] == "marker"]
    assert marker[4] == times[400] and marker[0] == pytest.approx(1000.0 + 4.0)
    chunk = next(e for e in chunks if e[3] == 400)
    assert events.index(marker) + 1 == events.index(chunk)  # just before its sample's chunk
