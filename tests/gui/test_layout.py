"""Issue 25 point 7: at the default window size every decoder card and timing block is on
screen, and the traces tabs name and order their engine sources as configured."""

from __future__ import annotations

import numpy as np
import pylsl
import pytest

pytest.importorskip("PySide6", reason="the display needs PySide6 (pip install 'rtbci[gui]')")
pytest.importorskip("pyqtgraph", reason="the display needs pyqtgraph")

from rtbci.gui.app import DEFAULT_SIZE  # noqa: E402
from rtbci.messages import Result  # noqa: E402

pytestmark = pytest.mark.slow

CH_NAMES = [f"E{i}" for i in range(64)]
COMMON = {"window": [0, 300], "every": 0, "budget_ms": 50.0,
          "runtime": {"backend": "onnxruntime", "device": "cpu"}}
# the demo's six decoders (rtbci/demo.toml): their kinds, sources and outputs
DEMO = {
    "bandpower": {"source": "eeg", "kind": "embedding", "on_marker": None, "every": 50},
    "trial": {"source": "eeg", "kind": "classes", "on_marker": "stim",
              "labels": ["left", "right"]},
    "outcome": {"source": "motor", "kind": "classes", "on_marker": "outcome",
                "labels": ["failure", "success"], "channels": CH_NAMES},
    "word": {"source": "words", "kind": "classes", "on_marker": "word",
             "labels": [f"w{i}" for i in range(8)]},
    "image": {"source": "images", "kind": "retrieval", "on_marker": "image"},
    "segment": {"source": "speech", "kind": "retrieval", "on_marker": "segment"}}


def decoders(extra: int) -> dict:
    """The demo's decoders and ``extra`` three-class ones."""
    entries = {name: {**COMMON, **entry} for name, entry in DEMO.items()}
    for i in range(extra):
        entries[f"extra{i}"] = {**COMMON, "source": "eeg", "kind": "classes",
                                "on_marker": "stim", "labels": ["a", "b", "c"]}
    return entries


def result(session: str, name: str, entry: dict, seq: int, rng) -> Result:
    now = pylsl.local_clock()
    output: dict = {}
    if entry["kind"] == "classes":
        labels = entry["labels"]
        output = {"probabilities": rng.dirichlet(np.ones(len(labels))).astype("f4"),
                  "labels": labels, "marker": f"{entry['on_marker']}/{labels[0]}",
                  "label": labels[0]}
        if entry.get("channels"):
            output["importance"] = rng.dirichlet(np.ones(64)).astype("f4")
    elif entry["kind"] == "retrieval":
        output = {"ids": np.arange(5), "scores": np.sort(rng.random(5))[::-1].astype("f4"),
                  "labels": [f"i{i:02d}" for i in range(5)]}
    else:
        output = {"embedding": rng.random(64 * 5).astype("f4")}
    return Result(decoder=name, seq=seq, trigger="marker", window_start=now - 0.3,
                  window_end=now - 0.02, kind=entry["kind"], t_arrived=now - 0.01,
                  t_published=now - 0.008, budget_ms=50.0, session=session, **output)


def stats(session: str, names, sources) -> dict:
    decoder = {"results": 123, "late": 0, "skipped": 0, "errors": 0, "timeouts": 0,
               "latency_ms": {"p50": 1.2, "p99": 3.4, "max": 5.0}}
    stream = {"state": "streaming", "rate_hz": 1000.0, "gaps": 0, "overflows": 0,
              "markers": 12, "ingest_latency_ms": {"p50": 0.5, "p99": 1.0}}
    return {"session": session, "decoders": dict.fromkeys(names, decoder),
            "streams": dict.fromkeys(sources, stream), "sinks": {}}


def _outside(block, viewport) -> str | None:
    """Why ``block`` is not wholly visible in ``viewport`` (None: it is)."""
    rect = viewport.rect()
    top_left = block.mapTo(viewport, block.rect().topLeft())
    bottom_right = block.mapTo(viewport, block.rect().bottomRight())
    if not (rect.contains(top_left) and rect.contains(bottom_right)):
        return f"{block.name} at {top_left.toTuple()}–{bottom_right.toTuple()} of {rect}"
    if block.visibleRegion().boundingRect() != block.rect() or block.height() < 20:
        return f"{block.name} is cut: visible {block.visibleRegion().boundingRect()}"
    return None


@pytest.mark.parametrize("extra", [0, 2], ids=["demo-6", "8-decoders"])
def test_every_card_and_timing_block_is_visible_at_the_default_size(
        extra, mosquitto, publish, make_window, qt, unique):
    entries = decoders(extra)
    sources = ["eeg", "motor", "words", "images", "speech"]
    status = {"state": "online", "session": unique, "version": "0", "decoders": entries,
              "threads": {}, "streams": {name: {"lsl_name": f"{unique}-{name}", "type": "EEG",
                                                "n_channels": 64, "srate": 1000.0,
                                                "ch_names": CH_NAMES} for name in sources}}
    window = make_window(unique, mosquitto.url, [f"{unique}-none"], size=DEFAULT_SIZE)
    qt.wait_until(lambda: window.mqtt.connected, what="the MQTT subscription")
    root, rng = f"rtbci/{unique}", np.random.default_rng(0)
    publish(mosquitto.port, [(f"{root}/status", status, True)])
    for seq in range(3):
        publish(mosquitto.port, [(f"{root}/{name}", result(unique, name, entry, seq, rng), False)
                                 for name, entry in entries.items()])
    publish(mosquitto.port, [(f"{root}/stats", stats(unique, entries, sources), False)])
    qt.wait_until(lambda: len(window.states) == len(entries)
                  and all(s.received == 3 for s in window.states.values())
                  and window.mqtt.stats, what="every result and the statistics")
    qt.settle(1.0)  # the slow updates, the layout and the split between the panels
    assert list(window.decoders.cards) == list(entries)  # the status's order
    assert [b.name for b in window.decoders.grid.blocks] == list(entries)
    problems = [why for panel in (window.decoders, window.timing)
                for block in panel.grid.blocks
                if (why := _outside(block, panel.grid.viewport()))]
    assert not problems, problems
    assert set(window.timing.decoders) == set(entries)
    for grid in (window.decoders.grid, window.timing.grid):
        assert grid.verticalScrollBar().maximum() == 0  # nothing below the fold either
    word = window.decoders.cards["word"]
    assert all(bar.isVisible() for bar in word.bars.values())  # all 8 classes drawn


def test_tabs_name_their_own_source_and_open_on_the_first_configured(
        mosquitto, publish, make_window, qt, unique):
    """Two sources with the same montage: each tab names the source that reads its stream
    (by LSL name), the tabs follow the config, and the first configured source's is shown."""
    first_found, configured_first = f"{unique}-a", f"{unique}-b"
    outlets = [pylsl.StreamOutlet(pylsl.StreamInfo(name, "EEG", 2, 100.0, pylsl.cf_float32,
                                                   name)) for name in (first_found,
                                                                       configured_first)]
    window = make_window(unique, mosquitto.url, streams=[first_found, configured_first])
    views = window.traces.views
    qt.wait_until(lambda: all(view.feed.info is not None for view in views.values()),
                  timeout=20, what="both streams open")
    assert window.traces.currentWidget() is views[first_found]
    streams = {source: {"lsl_name": lsl, "source_id": lsl, "type": "EEG", "n_channels": 2,
                        "srate": 100.0, "ch_names": ["Ch1", "Ch2"]}
               for source, lsl in (("left", configured_first), ("right", first_found))}
    assert views[first_found].feed.info.ch_names == views[configured_first].feed.info.ch_names
    publish(mosquitto.port, [(f"rtbci/{unique}/status", {
        "state": "online", "session": unique, "version": "0", "decoders": {},
        "streams": streams}, True)])
    qt.wait_until(lambda: views[first_found].engine_source is not None, what="the labels")
    assert views[configured_first].engine_source == "left"
    assert views[first_found].engine_source == "right"
    assert "engine source 'right'" in views[first_found].title.text()
    assert window.traces.currentWidget() is views[configured_first]
    assert [window.traces.tabText(i) for i in range(2)] == [configured_first, first_found]
    window.traces.tabBarClicked.emit(1)  # the user's choice stays
    window.traces.setCurrentIndex(1)
    qt.settle(0.5)
    assert window.traces.currentWidget() is views[first_found]
    del outlets
