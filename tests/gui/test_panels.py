"""The Decoders and Timing panels fed by real MQTT messages through mosquitto."""

from __future__ import annotations

import re

import numpy as np
import pylsl
import pytest

pytest.importorskip("PySide6", reason="the display needs PySide6 (pip install 'rtbci[gui]')")
pytest.importorskip("pyqtgraph", reason="the display needs pyqtgraph")

from rtbci.gui.decoders import ClassesCard, EmbeddingCard, RetrievalCard  # noqa: E402
from rtbci.messages import Result  # noqa: E402

pytestmark = pytest.mark.slow

CH_NAMES = ["C3", "Cz", "C4", "Pz"]


def status(session: str) -> dict:
    """An online engine status with one decoder of each output kind."""
    common = {"source": "eeg", "window": [0, 500], "every": 50, "on_marker": None,
              "budget_ms": 10.0, "runtime": {"backend": "numpy", "device": "cpu"}}
    return {"state": "online", "session": session, "version": "0.1.0",
            "streams": {"eeg": {"type": "EEG", "n_channels": 4, "srate": 1000.0,
                                "ch_names": CH_NAMES}},
            "decoders": {
                "clf": {**common, "kind": "classes", "labels": ["left", "right"],
                        "channels": ["C3", "Cz", "C4", "Pz"],
                        "output_size": 2, "every": 0, "on_marker": "stim"},
                "ret": {**common, "kind": "retrieval", "labels": None, "output_size": 3},
                "emb": {**common, "kind": "embedding", "labels": None, "output_size": 12}}}


def result(session: str, decoder: str, seq: int, **output) -> Result:
    """A result published 1.5 ms after its window's last sample arrived."""
    now = pylsl.local_clock()
    kind = ("classes" if "probabilities" in output else
            "retrieval" if "scores" in output else "embedding")
    return Result(decoder=decoder, seq=seq, trigger="every", window_start=now - 0.5,
                  window_end=now - 0.004, kind=kind, t_arrived=now - 0.003,
                  t_published=now - 0.0015, budget_ms=10.0, session=session, **output)


def thumbnail(folder) -> str:
    """The path of a small PNG: a retrieval label that the card shows as a thumbnail."""
    from PySide6 import QtGui

    image = QtGui.QImage(64, 48, QtGui.QImage.Format.Format_RGB32)
    image.fill(QtGui.QColor("tomato"))
    path = str(folder / "candidate.png")
    assert image.save(path)
    return path


def stats(session: str) -> dict:
    """Engine statistics as the engine publishes them every second."""
    return {"session": session,
            "streams": {"eeg": {"samples": 12000, "gaps": 2, "gap_seconds": 0.01,
                                "overflows": 1, "rate_hz": 999.5, "markers": 7,
                                "ingest_latency_ms": {"p50": 0.61, "p99": 1.9, "max": 4.2},
                                "state": "streaming"}},
            "decoders": {"clf": {"results": 10, "late": 3, "skipped": 1, "errors": 0,
                                 "timeouts": 0,
                                 "latency_ms": {"p50": 0.9, "p99": 1.6, "max": 3.1}}},
            "sinks": {}}


def test_cards_and_timing_show_the_messages(mosquitto, publish, make_window, nobroker, qt,
                                            unique, tmp_path):
    window = make_window(unique, mosquitto.url, streams=[f"{unique}-none"])
    qt.wait_until(lambda: window.mqtt.connected, what="the MQTT subscription")
    qt.wait_until(lambda: window.timing.engine.text().startswith(f"waiting for session "
                                                                 f"{unique}"))
    assert window.decoders.placeholder.text() == f"waiting for session {unique}"
    root = f"rtbci/{unique}"
    publish(mosquitto.port, [(f"{root}/status", status(unique), True)])
    qt.wait_until(lambda: set(window.decoders.cards) == {"clf", "ret", "emb"}, what="cards")
    publish(mosquitto.port, [
        (f"{root}/clf", result(unique, "clf", 0, probabilities=np.array([0.2, 0.8], "f4"),
                               labels=["left", "right"], marker="stim/right", label="right",
                               importance=np.array([0.1, 0.5, 0.15, 0.25], "f4")), False),
        (f"{root}/ret", result(unique, "ret", 4, ids=np.array([3, 1, 2]),
                               scores=np.array([0.9, 0.5, 0.1], "f4"),
                               labels=["cat", "dog", thumbnail(tmp_path)]), False),
        (f"{root}/emb", result(unique, "emb", 7, embedding=np.arange(12, dtype="f4")), False),
        (f"{root}/stats", stats(unique), False)])
    qt.wait_until(lambda: all(s.received for s in window.states.values())
                  and len(window.states) == 3 and window.mqtt.stats, what="results and stats")
    qt.settle(0.3)  # one slow (Timing) update
    _assert_cards(window.decoders.cards)
    _assert_timing(window.timing)
    assert window.timing.engine.text().startswith(f"● engine online · session {unique}")
    window.grab().save(str(tmp_path / "panels.png"))
    qt.assert_not_blank(tmp_path / "panels.png")
    publish(mosquitto.port, [(f"{root}/status", {"state": "offline", "session": unique,
                                                 "reason": "closed"}, True)])
    qt.wait_until(lambda: window.timing.engine.text() == "● engine offline (closed)",
                  what="the offline status")


def _assert_cards(cards) -> None:
    clf, ret, emb = cards["clf"], cards["ret"], cards["emb"]
    assert isinstance(clf, ClassesCard) and isinstance(ret, RetrievalCard)
    assert isinstance(emb, EmbeddingCard)
    assert clf.bars["right"].value() == 800 and clf.bars["left"].value() == 200
    assert clf.values["right"].text() == " 80.0 %" and clf.argmax == "right"
    assert clf.bars["right"].property("argmax") and not clf.bars["left"].property("argmax")
    assert clf.trial.text() == ("marker stim/right → right ✓ · accuracy 100 % (95 % CI 3–100) "
                                "· chance 100 % (majority class; 1/n 50 %) · 1 trial")
    assert clf.importance.text() == "importance Cz 50 % · Pz 25 % · C4 15 %"
    assert "on marker 'stim'" in clf.info.text() and clf.meta.text().startswith("seq 0")
    assert [label for label, _ in ret.shown][:2] == ["cat", "dog"]
    np.testing.assert_allclose([score for _, score in ret.shown], [0.9, 0.5, 0.1], rtol=1e-6)
    assert ret.thumbnails[2].pixmap().width() == 36 and ret.thumbnails[0].pixmap().isNull()
    np.testing.assert_array_equal(emb.image.image, np.arange(12).reshape(4, 3))
    assert emb.norm.text() == f"‖x‖ = {np.linalg.norm(np.arange(12)):.2f} · 4 ch × 3"


def _assert_timing(timing) -> None:
    clf = timing.decoders["clf"]
    assert clf.counters == {"results": 10, "late": 3, "skipped": 1, "errors": 0, "timeouts": 0}
    assert "late 3</span>" in clf.header.text() and ">clf</span>" in clf.header.text()
    assert "engine</span> p50 1.50 · p99 1.50 ms" in clf.figures.text()
    assert clf.engine_figures.text() == ("engine statistics: latency p50 0.90 · p99 1.60 · "
                                         "max 3.10 ms")
    edges, counts = clf.engine_curve.getData()
    assert counts.sum() == 1 and clf.budget_line.value() == 10.0
    line = re.sub("<[^>]+>", "", timing.streams.labels["eeg"].text()).replace("&nbsp;", " ")
    assert line == ("eeg  streaming · 999.5 Hz · gaps 2 · overflows 1 · ingest p50 0.61 · "
                    "p99 1.90 ms · markers 7")


def test_waits_for_the_broker_and_connects_when_it_appears(make_mosquitto, publish,
                                                           make_window, qt, unique):
    broker = make_mosquitto()
    broker.stop()
    window = make_window(unique, broker.url, streams=[f"{unique}-none"])
    qt.wait_until(lambda: "unreachable" in window.timing.engine.text(), what="broker down")
    assert window.decoders.placeholder.isVisible()
    broker.start()
    publish(broker.port, [(f"rtbci/{unique}/status", status(unique), True)])
    qt.wait_until(lambda: window.timing.engine.text().startswith("● engine online"),
                  timeout=15, what="online after the broker appeared")
    assert set(window.decoders.cards) == {"clf", "ret", "emb"}


def test_an_online_engine_limits_the_traces_to_its_own_streams(mosquitto, publish, make_window,
                                                               qt, unique):
    import pylsl

    ours, other = f"{unique}-ours", f"{unique}-other"
    window = make_window(unique, mosquitto.url)  # no --stream: discover
    qt.wait_until(lambda: window.mqtt.connected, what="the MQTT subscription")
    engine_status = {"state": "online", "session": unique, "version": "0", "decoders": {},
                     "streams": {"eeg": {"lsl_name": ours, "source_id": ours, "type": "EEG",
                                         "n_channels": 2, "srate": 100.0,
                                         "ch_names": ["a", "b"]}}}
    publish(mosquitto.port, [(f"rtbci/{unique}/status", engine_status, True)])
    qt.wait_until(lambda: window.mqtt.status and window.mqtt.status.get("state") == "online",
                  what="the online status")
    outlets = [pylsl.StreamOutlet(pylsl.StreamInfo(name, "EEG", 2, 100.0, pylsl.cf_float32,
                                                   name)) for name in (ours, other)]
    qt.wait_until(lambda: {ours, other} <= {s.name for s in window.discovery.streams.values()},
                  timeout=20, what="discovery of both streams")
    qt.settle(0.5)
    assert ours in window.feeds and other not in window.feeds
    del outlets


def test_a_dead_engine_thread_turns_the_engine_line_red(mosquitto, publish, make_window, qt,
                                                         unique):
    from rtbci.gui import theme

    window = make_window(unique, mosquitto.url, streams=[f"{unique}-none"])
    qt.wait_until(lambda: window.mqtt.connected, what="the MQTT subscription")
    engine_status = {**status(unique), "threads": {
        "markers eeg": {"state": "dead", "why": "SystemExit: 3", "stalls": 0}}}
    publish(mosquitto.port, [(f"rtbci/{unique}/status", engine_status, True)])
    qt.wait_until(lambda: "markers eeg dead" in window.timing.engine.text(),
                  what="the dead thread on the engine line")
    assert theme.BAD in window.timing.engine.styleSheet()
