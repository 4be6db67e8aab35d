"""The Traces panel: a scrolling, stacked multichannel view of each LSL stream.

Channel ``i`` is drawn at ``y = −i``, one channel spacing ("division") apart; time runs
from ``−span`` to 0 (the newest sample). Each frame takes the visible channels over the
visible span from the stream's ring buffer as min/max bins of about one pixel column each,
scales, centres (the mean of the span is removed) and clips them to ±1.5 divisions, and draws
them as one rasterised image (:mod:`rtbci.gui.raster`): the cost depends on the plot's size
in pixels, not on the channel count or the sampling rate. Bad channels are grey in the same
image. Channel names (:class:`ChannelAxis`), marker lines and the time axis are pyqtgraph
items on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from rtbci.gui import theme
from rtbci.gui.channel_axis import ChannelAxis
from rtbci.gui.feeds import SignalFeed
from rtbci.gui.raster import BinCache, RasterItem, coverage, span_rows
from rtbci.stream import StreamInfo

CLIP_DIVISIONS = 1.5  # traces are clipped at ± this many channel spacings
AUTO_SCALE_SIGMAS = 8.0  # one channel spacing = this many robust standard deviations


@dataclass
class Frame:
    """One frame's reduced data.

    Attributes
    ----------
    start : int
        Index of the first bin (bin ``b`` holds samples ``b·k … b·k + k − 1``).
    k : int
        Samples per bin.
    lo : int
        First channel drawn (channels ``lo … lo + n_visible - 1``).
    mins, maxs : array, shape (n_bins, n_visible)
        Minimum and maximum of each bin, in the stream's units (views into the bin cache,
        valid until the next refresh).
    t : array, shape (n_bins,)
        Time of each bin's first sample relative to the newest sample, in seconds.
    newest : float
        LSL timestamp of the newest sample.
    markers : list of (float, str)
        Markers ``(timestamp, text)`` known at this frame.
    """

    start: int
    k: int
    lo: int
    mins: np.ndarray
    maxs: np.ndarray
    t: np.ndarray
    newest: float
    markers: list[tuple[float, str]]


# raster index → colour: 0 background, 1 good trace, 2 bad trace, 3 both (good on top)
RASTER_COLOURS = (theme.PANEL, theme.TRACE, theme.BAD_CHANNEL, theme.TRACE)


class TraceView(QtWidgets.QWidget):
    """Scrolling stacked traces of one :class:`~rtbci.gui.feeds.SignalFeed`.

    Parameters
    ----------
    feed : SignalFeed
        The stream to draw.
    seconds : float
        Initial time span shown, in seconds.

    Attributes
    ----------
    frame : Frame | None
        The data of the last drawn frame.
    raster : array of uint8, shape (plot height, plot width) in pixels | None
        The last image drawn, row 0 at the bottom: 0 background, bit 0 a good channel's
        trace, bit 1 a bad channel's.
    bad : set of int
        Indices of the channels marked bad (drawn grey).
    """

    def __init__(self, feed: SignalFeed, seconds: float = 10.0, parent=None):
        super().__init__(parent)
        self.feed = feed
        self.info: StreamInfo | None = None
        self.frame: Frame | None = None
        self.engine_source: str | None = None
        self.raster: np.ndarray | None = None
        self.bins: BinCache | None = None
        self.bad: set[int] = set()
        self.scales = np.ones(1)  # units per channel spacing, per channel
        self._auto_pending = True
        self._build(seconds)

    def __repr__(self) -> str:
        return f"<TraceView: {self.feed.name} | {len(self.bad)} bad>"

    # -- widgets -------------------------------------------------------------------------------

    def _build(self, seconds: float) -> None:
        self.axis = ChannelAxis(self.toggle_bad)
        self.plot = pg.PlotWidget(axisItems={"left": self.axis})
        item = self.plot.getPlotItem()
        item.hideButtons()
        item.setMenuEnabled(False)
        item.getAxis("bottom").setLabel("time (s)")
        item.getAxis("bottom").setTextPen(theme.TEXT)
        self.view = item.getViewBox()
        self.view.setMouseEnabled(x=False, y=True)
        self.view.disableAutoRange()
        self.image = RasterItem(RASTER_COLOURS)
        self.plot.addItem(self.image)
        self._markers: list[pg.InfiniteLine] = []
        self.channel_list = QtWidgets.QListWidget()
        self.channel_list.setFixedWidth(130)
        self.channel_list.setToolTip("checked = bad channel (drawn grey)")
        self.channel_list.itemChanged.connect(self._on_item_changed)
        self.channel_list.hide()
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self._toolbar(seconds))
        body = QtWidgets.QHBoxLayout()
        body.addWidget(self.plot, 1)
        body.addWidget(self.channel_list)
        layout.addLayout(body, 1)
        self.view.sigYRangeChanged.connect(self._on_y_range)
        self.set_span(seconds)

    def _toolbar(self, seconds: float) -> QtWidgets.QHBoxLayout:
        bar = QtWidgets.QHBoxLayout()
        self.title = QtWidgets.QLabel(f"{self.feed.name}: waiting for the stream")
        self.title.setObjectName("muted")
        self.title.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,  # long names: cut, the
                                 QtWidgets.QSizePolicy.Policy.Preferred)  # panels keep width
        self.gain = _spin(0.05, 100.0, 1.0, 2, "×", "amplitude zoom (1 = auto scale)")
        self.gain.setSingleStep(0.25)
        self.auto_button = QtWidgets.QPushButton("Auto")
        self.auto_button.setToolTip("scale each channel type to the signal of the last 2 s")
        self.auto_button.clicked.connect(self.request_auto_scale)
        self.span = _spin(0.5, self.feed.buffer_seconds, seconds, 1, " s", "time span shown")
        self.span.valueChanged.connect(self.set_span)
        self.rows = QtWidgets.QSpinBox()
        self.rows.setRange(1, 1)
        self.rows.setToolTip("channels shown (scroll with the mouse wheel on the traces)")
        self.rows.valueChanged.connect(self.set_rows)
        self.channels_button = QtWidgets.QPushButton("Channels…")
        self.channels_button.setCheckable(True)
        self.channels_button.setToolTip("list of channels: tick one to mark it bad")
        self.channels_button.toggled.connect(self.channel_list.setVisible)
        self.scale_label = QtWidgets.QLabel("")
        self.scale_label.setObjectName("muted")
        bar.addWidget(self.title, 1)
        bar.addWidget(self.scale_label)
        for label, widget in [("scale", self.gain), (None, self.auto_button),
                              ("span", self.span), ("rows", self.rows),
                              (None, self.channels_button)]:
            if label:
                bar.addWidget(QtWidgets.QLabel(label))
            bar.addWidget(widget)
        return bar

    # -- controls ------------------------------------------------------------------------------

    def set_span(self, seconds: float) -> None:
        """Show the last ``seconds`` of signal."""
        self.view.setXRange(-seconds, 0, padding=0)

    def set_rows(self, rows: int) -> None:
        """Show ``rows`` channels, starting at the top channel currently shown."""
        top = max(0.0, -self.view.viewRange()[1][1] - 0.5)
        first = min(round(top), max(0, self.n_channels - rows))
        self.view.setYRange(-(first + rows - 0.5), -(first - 0.5), padding=0)

    def request_auto_scale(self) -> None:
        """Rescale each channel type from the signal of the last 2 s (at the next frame)."""
        self._auto_pending = True

    def toggle_bad(self, channel: int) -> None:
        """Mark a channel bad, or good again."""
        self.set_bad(channel, channel not in self.bad)

    def set_bad(self, channel: int, bad: bool) -> None:
        """Mark channel ``channel`` (index) bad (grey) or good."""
        (self.bad.add if bad else self.bad.discard)(channel)
        self.axis.bad = self.bad
        self.axis.picture = None
        self.axis.update()
        item = self.channel_list.item(channel)
        if item is not None:
            state = QtCore.Qt.CheckState.Checked if bad else QtCore.Qt.CheckState.Unchecked
            self.channel_list.blockSignals(True)
            item.setCheckState(state)
            self.channel_list.blockSignals(False)

    def _on_item_changed(self, item: QtWidgets.QListWidgetItem) -> None:
        self.set_bad(self.channel_list.row(item),
                     item.checkState() == QtCore.Qt.CheckState.Checked)

    def _on_y_range(self, _view, y_range) -> None:
        self.rows.blockSignals(True)
        self.rows.setValue(max(1, round(y_range[1] - y_range[0])))
        self.rows.blockSignals(False)

    @property
    def n_channels(self) -> int:
        return self.info.n_channels if self.info else 0

    # -- stream metadata -----------------------------------------------------------------------

    def _set_info(self, info: StreamInfo) -> None:
        self.info = info
        n = info.n_channels
        self.scales = np.ones(n)
        self.bad = {i for i in self.bad if i < n}
        self.axis.set_names(info.ch_names)
        self.channel_list.blockSignals(True)
        self.channel_list.clear()
        for i, name in enumerate(info.ch_names):
            item = QtWidgets.QListWidgetItem(name)
            item.setFlags(item.flags() | QtCore.Qt.ItemFlag.ItemIsUserCheckable)
            checked = i in self.bad
            item.setCheckState(QtCore.Qt.CheckState.Checked if checked
                               else QtCore.Qt.CheckState.Unchecked)
            self.channel_list.addItem(item)
        self.channel_list.blockSignals(False)
        self.view.setLimits(yMin=-(n + 0.5), yMax=1.5, minYRange=1, maxYRange=n + 2)
        self.rows.setRange(1, n)
        self.view.setYRange(-(n - 0.5), 0.5, padding=0)
        self._set_title()  # the engine source's label stays: match_engine owns it
        self._auto_pending = True

    def _set_title(self) -> None:
        info = self.info
        if info is None:
            text = f"{self.feed.name}: waiting for the stream"
        else:
            text = f"{info.name}: {info.type}, {info.n_channels} ch @ {info.srate:g} Hz"
            if self.engine_source:
                text += f" · engine source '{self.engine_source}'"
            if self.feed.state != "streaming":
                text += f" · {self.feed.state}"
        if text != self.title.text():
            self.title.setText(text)
            self.title.setToolTip(text)  # the whole of it, when the toolbar cuts it

    def reads_as(self, meta: dict) -> bool:
        """Whether an engine source (an entry of ``status["streams"]``) may read this stream.

        By the stream's LSL name (``lsl_name``, and ``source_id`` when both sides know it);
        without them, when the source's channel names are all channels of this stream (a
        source may pick a subset).
        """
        lsl_name = meta.get("lsl_name")
        if lsl_name:
            source_id = meta.get("source_id")
            return self.feed.name == lsl_name and (
                not source_id or self.info is None or self.info.source_id == source_id)
        names = meta.get("ch_names") or ()
        return self.info is not None and bool(names) and set(names) <= set(self.info.ch_names)

    def set_engine_source(self, source: str | None) -> None:
        """Label the stream as read by engine source ``source`` (None: not known to be)."""
        if source != self.engine_source:
            self.engine_source = source
            self._set_title()

    def _auto_scale(self, data: np.ndarray) -> None:
        """Per channel type: spacing = AUTO_SCALE_SIGMAS × median robust σ of its channels."""
        sigma = 1.4826 * np.median(np.abs(data - np.median(data, axis=0)), axis=0)
        types = np.asarray(self.info.ch_types)
        for kind in np.unique(types):
            mask = types == kind
            typical = np.median(sigma[mask])
            self.scales[mask] = AUTO_SCALE_SIGMAS * typical if typical > 0 else 1.0
        self._auto_pending = False

    def _scale_text(self) -> str:
        gain = self.gain.value()
        parts = []
        for kind in dict.fromkeys(self.info.ch_types):
            i = self.info.ch_types.index(kind)
            unit = theme.unit_symbol(self.info.ch_units[i])
            parts.append(f"{kind} {self.scales[i] / gain:.3g} {unit}/div")
        return " · ".join(parts)

    # -- drawing -------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Draw the newest data of the stream; return whether there was any."""
        frame = self._read_frame()
        self._set_title()
        if frame is None:
            return False
        self.frame = frame
        self._draw_traces(frame)
        self._draw_markers(frame)
        return True

    def _pixels(self) -> tuple[int, int]:
        """Width and height of the plot area in device pixels."""
        ratio = self.plot.devicePixelRatioF()
        return (max(16, round(self.view.width() * ratio)),
                max(16, round(self.view.height() * ratio)))

    def _visible(self) -> tuple[int, int]:
        (_, _), (y0, y1) = self.view.viewRange()
        lo = max(0, math.floor(-y1))
        return lo, max(lo + 1, min(self.n_channels, math.ceil(-y0) + 1))

    def _bins_for(self, ring, srate: float) -> tuple[BinCache, int]:
        """The bin cache for the current span and width, and the number of bins to show."""
        n_span = max(2, round(self.span.value() * srate))
        k = max(1, n_span // self._pixels()[0])  # at least one bin per pixel column
        n_bins = -(-n_span // k) + 1
        cache = self.bins
        if cache is None or cache.ring is not ring or cache.k != k or cache.capacity < n_bins:
            cache = self.bins = BinCache(ring, k, n_bins)
        return cache, n_bins

    def _read_frame(self) -> Frame | None:
        feed = self.feed
        if feed.info is not None and feed.info is not self.info:
            self._set_info(feed.info)
        with feed.lock:
            ring, info = feed.ring, feed.info
            if ring is None or info is not self.info or ring.count < 2:
                return None
            cache, n_bins = self._bins_for(ring, info.srate)
            held = cache.update()
            if self._auto_pending and ring.count >= min(info.srate, ring.capacity) / 2:
                self._auto_scale(ring.latest(int(2 * info.srate))[0])
            newest = ring.last_timestamp
        if held < 2:
            return None
        lo, hi = self._visible()
        mins, maxs, times = cache.latest(min(n_bins, held), lo, hi)
        return Frame(cache.next_bin - len(times), cache.k, lo, mins, maxs, times - newest,
                     newest, list(feed.markers))

    def _draw_traces(self, frame: Frame) -> None:
        channels = np.arange(frame.lo, frame.lo + frame.mins.shape[1])
        centre = (frame.mins.mean(axis=0) + frame.maxs.mean(axis=0)) / 2
        gain = (self.gain.value() / self.scales[channels]).astype(np.float32)
        offsets = channels.astype(np.float32)
        y_min, y_max = frame.mins - centre, frame.maxs - centre  # float32, like the samples
        for y in (y_min, y_max):
            y *= gain
            np.clip(y, -CLIP_DIVISIONS, CLIP_DIVISIONS, out=y)
            y -= offsets
        (x0, x1), (y0, y1) = self.view.viewRange()
        width, height = self._pixels()
        first = int(np.searchsorted(frame.t, x0))
        cols = ((frame.t[first:] - x0) * (width / (x1 - x0))).astype(np.intp)
        np.clip(cols, 0, width - 1, out=cols)
        lo, hi = (rows[first:] for rows in span_rows(y_min, y_max, y0, y1, height))
        is_bad = np.isin(channels, list(self.bad))
        if is_bad.any():
            raster = coverage(lo[:, ~is_bad], hi[:, ~is_bad], cols, height, width)
            raster = raster.view(np.uint8) | coverage(
                lo[:, is_bad], hi[:, is_bad], cols, height, width).view(np.uint8) << 1
        else:
            raster = coverage(lo, hi, cols, height, width).view(np.uint8)
        self.raster = raster
        self.image.set_image(raster, QtCore.QRectF(x0, y0, x1 - x0, y1 - y0))
        self.scale_label.setText(self._scale_text())

    def _draw_markers(self, frame: Frame) -> None:
        span = self.span.value()
        shown = [(ts - frame.newest, text) for ts, text in frame.markers
                 if -span <= ts - frame.newest <= 0.05]
        while len(self._markers) < len(shown):
            self._markers.append(self._new_marker_line())
        for line, (x, text) in zip(self._markers, shown):
            line.setPos(x)
            if line.label.format != text.replace("{", "{{").replace("}", "}}"):
                line.label.setFormat(text.replace("{", "{{").replace("}", "}}"))
            line.show()
        for line in self._markers[len(shown):]:
            line.hide()

    def _new_marker_line(self) -> pg.InfiniteLine:
        line = pg.InfiniteLine(angle=90, movable=False,
                               pen=pg.mkPen(theme.ORANGE, width=1.5,
                                            style=QtCore.Qt.PenStyle.DashLine),
                               label="", labelOpts={"position": 0.985, "color": theme.BACKGROUND,
                                                    "fill": theme.ORANGE, "anchors": [(0, 0),
                                                                                      (0, 0)]})
        line.setZValue(10)
        self.plot.addItem(line, ignoreBounds=True)
        return line

    def marker_labels(self) -> list[tuple[float, str]]:
        """The marker lines shown: ``(x in seconds relative to the newest sample, text)``."""
        return [(line.value(), line.label.format.replace("{{", "{").replace("}}", "}"))
                for line in self._markers if line.isVisible()]


def _spin(low: float, high: float, value: float, decimals: int, suffix: str,
          tip: str) -> QtWidgets.QDoubleSpinBox:
    spin = QtWidgets.QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setDecimals(decimals)
    spin.setValue(value)
    spin.setSuffix(suffix)
    spin.setToolTip(tip)
    spin.setKeyboardTracking(False)
    return spin


class TracesPanel(QtWidgets.QTabWidget):
    """One :class:`TraceView` tab per stream; only the visible tab is redrawn."""

    def __init__(self, seconds: float = 10.0, parent=None):
        super().__init__(parent)
        self.seconds = seconds
        self.views: dict[str, TraceView] = {}
        self.chosen = False  # the user picked a tab: the panel no longer picks one
        self.tabBarClicked.connect(self._on_tab_clicked)
        self.placeholder = QtWidgets.QLabel("no LSL stream yet: looking for streams …")
        self.placeholder.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setObjectName("muted")
        self.addTab(self.placeholder, "Traces")

    def _on_tab_clicked(self, index: int) -> None:
        if index >= 0:
            self.chosen = True

    def add_feed(self, feed: SignalFeed) -> TraceView:
        """Add a tab for ``feed`` (named after its stream)."""
        if self.indexOf(self.placeholder) >= 0:
            self.removeTab(self.indexOf(self.placeholder))
        view = TraceView(feed, self.seconds)
        self.views[feed.name] = view
        self.addTab(view, feed.name)
        return view

    def match_engine(self, status: dict | None) -> None:
        """Label each tab with the engine source that reads it, order the tabs as the
        sources are configured, and show the first configured source's tab until the user
        picks one.

        ``status["streams"]`` lists the sources in the config's order. A source reads the
        stream named by its ``lsl_name``; without one, the streams whose channels it names
        (when several do, those whose LSL name is the source's name, if any).
        """
        views = list(self.views.values())
        labels: dict[TraceView, str] = {}
        for source, meta in ((status or {}).get("streams") or {}).items():
            candidates = [view for view in views if view.reads_as(meta)]
            named = [view for view in candidates if view.feed.name == source]
            for view in named or candidates:
                labels.setdefault(view, source)  # a stream read by two sources: the first
        for view in views:
            view.set_engine_source(labels.get(view))
        for position, view in enumerate(labels):
            if self.indexOf(view) != position:
                self.tabBar().moveTab(self.indexOf(view), position)
        if labels and not self.chosen and self.currentWidget() is not next(iter(labels)):
            self.setCurrentWidget(next(iter(labels)))

    def refresh(self) -> None:
        """Redraw the visible stream."""
        view = self.currentWidget()
        if isinstance(view, TraceView):
            view.refresh()

