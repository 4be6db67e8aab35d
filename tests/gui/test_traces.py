"""The Traces panel against a real simulated amplifier on LSL."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("PySide6", reason="the display needs PySide6 (pip install 'rtbci[gui]')")
pytest.importorskip("pyqtgraph", reason="the display needs pyqtgraph")
from PySide6 import QtCore  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from rtbci.devices.simulate import SimulatedAmplifier  # noqa: E402
from rtbci.gui.raster import coverage, minmax_bins, span_rows  # noqa: E402

pytestmark = pytest.mark.slow


class Recorder:
    """Keeps every chunk the amplifier pushed (called from its thread)."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.lock = threading.Lock()

    def __call__(self, data, timestamps) -> None:
        with self.lock:
            self.chunks.append(data.copy())

    def data(self) -> np.ndarray:
        with self.lock:
            return np.concatenate(self.chunks)


@pytest.fixture
def amplifier(unique):
    """A simulated 64-channel EEG amplifier on LSL (``amp.recorder`` has what it pushed)."""
    recorder = Recorder()
    amp = SimulatedAmplifier("eeg64", name=unique, seed=3, on_push=recorder)
    amp.recorder = recorder
    amp.start()
    yield amp
    amp.stop()


def test_traces_show_the_stream_and_its_markers(amplifier, make_window, nobroker, qt,
                                                tmp_path):
    window = make_window("nosession", nobroker, streams=[amplifier.name], seconds=5)
    view = window.traces.views[amplifier.name]
    qt.wait_until(lambda: view.frame is not None and view.marker_labels(), timeout=15,
                  what="traces with a marker line")
    assert view.title.text().startswith(f"{amplifier.name}: EEG, 64 ch @ 1000 Hz")
    assert view.axis.names == list(amplifier.info.ch_names)
    amplifier.stop()  # freeze the stream, then compare what is drawn with what was sent
    pushed = amplifier.recorder.data()
    qt.wait_until(lambda: view.feed.ring.count > 0 and
                  np.array_equal(view.feed.ring.latest(1)[0][0], pushed[-1]),
                  timeout=5, what="the last pushed sample in the display's ring")
    qt.wait_until(lambda: view.refresh() and view.bins.next_bin * view.bins.k >
                  view.feed.ring.count - view.bins.k, what="all bins reduced")
    _assert_bins_match(view, pushed)
    _assert_raster_shows_every_channel(view)
    _assert_markers_match(view, amplifier.events)
    window.grab().save(str(tmp_path / "traces.png"))
    qt.assert_not_blank(tmp_path / "traces.png")


def _assert_bins_match(view, pushed: np.ndarray) -> None:
    """Each drawn bin is the min/max of exactly the pushed samples it stands for."""
    frame, ring = view.frame, view.feed.ring
    offset = len(pushed) - ring.count  # pushed index of the ring's sample counter 0
    n_bins, n_vis = frame.mins.shape
    start = frame.start * frame.k + offset
    expected = pushed[start:start + n_bins * frame.k, frame.lo:frame.lo + n_vis]
    mins, maxs = minmax_bins(expected, frame.k)
    np.testing.assert_array_equal(frame.mins, mins)
    np.testing.assert_array_equal(frame.maxs, maxs)
    assert frame.t[-1] < 0 and frame.t[0] >= -view.span.value() - 0.1


def _assert_raster_shows_every_channel(view) -> None:
    """Every channel lights pixels in its own band (±1.5 spacings around y = −i)."""
    raster = view.raster
    height = raster.shape[0]
    (_, _), (y0, y1) = view.view.viewRange()
    with_data = (raster & 1).any(axis=0)  # the span may not be full yet
    assert with_data.sum() > 100
    for channel in range(view.n_channels):
        bottom = int((-channel - 1.5 - y0) / (y1 - y0) * height)
        top = int((-channel + 1.5 - y0) / (y1 - y0) * height)
        band = raster[max(0, bottom):top + 1, with_data]
        assert (band & 1).any(axis=0).mean() > 0.99, f"channel {channel} is not drawn"


def _assert_markers_match(view, events) -> None:
    """The marker lines are the amplifier's markers within the span, at their times."""
    shown = sorted(view.marker_labels())
    newest = view.frame.newest
    expected = sorted((ts - newest, f"stim/{label}") for ts, label in events
                      if -view.span.value() <= ts - newest <= 0.05)
    assert [text for _, text in shown] == [text for _, text in expected]
    np.testing.assert_allclose([x for x, _ in shown], [x for x, _ in expected], atol=0.01)


def test_bad_channels_are_grey_from_the_list_and_from_a_click(amplifier, make_window,
                                                              nobroker, qt):
    window = make_window("nosession", nobroker, streams=[amplifier.name], seconds=2)
    view = window.traces.views[amplifier.name]
    qt.wait_until(lambda: view.frame is not None, timeout=15, what="traces")
    view.channels_button.click()
    assert view.channel_list.isVisible() and view.channel_list.count() == 64
    view.channel_list.item(3).setCheckState(QtCore.Qt.CheckState.Checked)
    assert view.bad == {3}
    _click_channel_name(view, 10, qt)
    assert view.bad == {3, 10}
    assert view.channel_list.item(10).checkState() == QtCore.Qt.CheckState.Checked
    qt.wait_until(lambda: view.refresh() and (view.raster & 2).any(), what="grey traces")
    height = view.raster.shape[0]
    (_, _), (y0, y1) = view.view.viewRange()
    row = int((-10 - y0) / (y1 - y0) * height)  # channel 10's centre line: grey only
    assert (view.raster[row - 1:row + 2] & 2).any() and view.axis.bad == {3, 10}
    _click_channel_name(view, 10, qt)  # a second click makes it good again
    assert view.bad == {3}
    view.rows.setValue(16)  # only the channels in view are reduced and drawn
    qt.wait_until(lambda: view.refresh() and view.frame.mins.shape[1] <= 17, what="16 rows")
    assert view.frame.lo == 0 and view.axis.tickStrings([0, -15], 1, 1) == ["Fp1", "TP7"]


def _click_channel_name(view, channel: int, qt) -> None:
    """A real mouse click on the channel's name on the left axis."""
    qt.settle(0.1)
    scene_y = view.view.mapViewToScene(QtCore.QPointF(0, -channel)).y()
    axis_rect = view.axis.sceneBoundingRect()
    scene_point = QtCore.QPointF(axis_rect.left() + axis_rect.width() * 0.5, scene_y)
    point = view.plot.mapFromScene(scene_point)
    QTest.mouseClick(view.plot.viewport(), QtCore.Qt.MouseButton.LeftButton,
                     QtCore.Qt.KeyboardModifier.NoModifier, point)
    qt.settle(0.05)


def test_span_rows_and_coverage_draw_a_continuous_line():
    """A step from 0 to 5 between two bins lights every row in between (no gap)."""
    y_min = np.array([[0.0], [0.0], [5.0], [5.0]])
    rows_lo, rows_hi = span_rows(y_min, y_min + 0.5, y0=-1.0, y1=9.0, height=10)
    lit = coverage(rows_lo, rows_hi, np.arange(4), height=10, width=4)
    assert lit.shape == (10, 4)
    assert lit[:, 2].nonzero()[0].tolist() == [1, 2, 3, 4, 5, 6]  # 0.5 … 5.5 → rows 1 … 6
    assert lit[:, 0].nonzero()[0].tolist() == [1]
    off_image = span_rows(np.array([[20.0]]), np.array([[30.0]]), -1.0, 9.0, 10)
    assert not coverage(*off_image, np.arange(1), 10, 1).any()
