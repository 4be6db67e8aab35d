"""The Timing panel: engine status, per-decoder latency histograms and counters, stream health.

Latencies per decoder, over the last N results received:

- engine latency = ``t_published − t_arrived`` (window's last sample arrived in the engine →
  result handed to the sinks), from the result message;
- end-to-end latency = receive time in the display − ``window_end`` (the last sample's
  acquisition timestamp), both on the LSL clock of this machine.

Counters (results, late, skipped, errors, timeouts) and the stream figures come from the
engine's statistics message (``rtbci/<session>/stats``, once a second).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from rtbci.gui import theme
from rtbci.gui.feeds import MqttFeed
from rtbci.gui.fit import FitGrid
from rtbci.gui.state import DecoderState, percentiles

HIST_BINS = 40
HIST_MAX_MS = 100.0  # histogram range cap (at least 4 × the budget)
STATS_STALE_S = 3.0
PLOT_PX, COMPACT_PLOT_PX = 72, 52  # histogram height, full and compact
TIMING_MIN_PX = 250  # narrowest column of timing blocks
COUNTERS = ("results", "late", "skipped", "errors", "timeouts")


def _ms(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}"


def engine_state(feed: MqttFeed) -> tuple[str, str]:
    """One line on the engine and broker, and its colour."""
    status = feed.status
    if not feed.connected:
        return f"broker {feed.url} unreachable ({feed.error or 'connecting'}); retrying", theme.BAD
    if not status:
        return f"waiting for session {feed.session} (no status on {feed.url})", theme.MUTED
    if status.get("state") != "online":
        return f"● engine offline ({status.get('reason', 'no reason given')})", theme.BAD
    text = f"● engine online · session {feed.session} · rtbci {status.get('version', '?')}"
    troubles = [f"{name} {entry.get('state')}" for name, entry in
                (status.get("threads") or {}).items()
                if isinstance(entry, dict) and entry.get("state") != "ok"]
    if troubles:  # a thread of the engine died or stalled: its work is not being done
        return f"{text} · {' · '.join(troubles)}", theme.BAD
    age = time.monotonic() - feed.stats_at
    if feed.stats is not None and age > STATS_STALE_S:
        return f"{text} · no statistics for {age:.0f} s", theme.ORANGE
    return text, theme.GOOD


class DecoderTiming(QtWidgets.QWidget):
    """Latency histogram, percentiles and engine counters of one decoder.

    Attributes
    ----------
    header : QLabel
        The decoder's name and its counters (``results 10 · late 3 · …``).
    counters : dict of str to int | None
        ``results``, ``late``, ``skipped``, ``errors``, ``timeouts`` from the engine statistics
        (None before the first statistics).
    figures : QLabel
        p50/p99 of engine and end-to-end latency over the last results received.
    engine_curve, e2e_curve : pg.PlotDataItem
        The two histograms (bin edges, counts).
    """

    def __init__(self, name: str, parent=None):
        super().__init__(parent)
        self.name = name
        self.compact = 0  # 0 full, 1 compact, 2 dense (rtbci.gui.fit)
        self._percentiles: tuple[float, float, float, float, int] | None = None
        self.budget_ms = 0.0
        self.figures = _wrapping_label("no results yet")
        self.counters: dict[str, int | None] = dict.fromkeys(COUNTERS)
        self.header = _wrapping_label()
        self._show_counters()
        self.plot = self._histogram_plot()
        self.engine_figures = _wrapping_label()
        self.engine_figures.setObjectName("muted")
        self.engine_figures.setAlignment(QtCore.Qt.AlignmentFlag.AlignRight)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 6)
        layout.setSpacing(2)
        layout.addWidget(self.header)
        layout.addWidget(self.figures)
        layout.addWidget(self.plot)
        layout.addWidget(self.engine_figures)

    def _histogram_plot(self) -> pg.PlotWidget:
        plot = pg.PlotWidget()
        plot.setFixedHeight(PLOT_PX)
        item = plot.getPlotItem()
        item.hideButtons()
        item.setMenuEnabled(False)
        item.setMouseEnabled(x=False, y=False)
        item.getAxis("bottom").setTextPen(theme.TEXT)
        item.getAxis("left").setWidth(34)
        item.getAxis("left").setStyle(maxTextLevel=0)  # major ticks only: the plot is short
        self.e2e_curve = plot.plot(stepMode="center", fillLevel=0, pen=pg.mkPen(theme.ORANGE),
                                   brush=pg.mkBrush(255, 183, 77, 70))
        self.engine_curve = plot.plot(stepMode="center", fillLevel=0, pen=pg.mkPen(theme.ACCENT),
                                      brush=pg.mkBrush(79, 195, 247, 90))
        self.budget_line = pg.InfiniteLine(angle=90, pen=pg.mkPen(
            theme.BAD, width=1.5, style=QtCore.Qt.PenStyle.DashLine), label="budget",
            labelOpts={"position": 0.85, "color": theme.BAD})
        self.budget_line.hide()
        plot.addItem(self.budget_line, ignoreBounds=True)
        return plot

    def set_compact(self, compact: int) -> None:
        """1 compact: a lower histogram, the engine's own percentiles only in the tooltip;
        2 dense: no histogram either; 0: in full."""
        if compact != self.compact:
            self.compact = compact
            self.plot.setFixedHeight(COMPACT_PLOT_PX if compact else PLOT_PX)
            self.plot.setVisible(compact < 2)
            self.engine_figures.setVisible(not compact)
            self._show_figures()

    def set_budget(self, budget_ms: float | None) -> None:
        """Draw the decoder's latency budget as a line (None or 0: no line)."""
        self.budget_ms = float(budget_ms or 0.0)
        self.budget_line.setVisible(self.budget_ms > 0)
        self.budget_line.setPos(self.budget_ms)

    def show_latencies(self, state: DecoderState) -> None:
        """Histograms and percentiles of the last results received."""
        engine, e2e = np.asarray(state.engine_ms), np.asarray(state.e2e_ms)
        if not len(engine):
            return
        (e50, e99), (t50, t99) = percentiles(engine), percentiles(e2e)
        top = min(max(1.0, 1.5 * self.budget_ms, 1.25 * max(e99, t99)),
                  max(HIST_MAX_MS, 4 * self.budget_ms))  # later ones pile up in the last bin
        edges = np.linspace(0.0, top, HIST_BINS + 1)
        for curve, values in ((self.engine_curve, engine), (self.e2e_curve, e2e)):
            counts, _ = np.histogram(np.clip(values, 0.0, top), edges)
            curve.setData(edges, counts)
        self.plot.setXRange(0, top, padding=0.02)
        self._percentiles = (e50, e99, t50, t99, len(engine))
        self._show_figures()

    def _show_figures(self) -> None:
        if self._percentiles is None:
            return
        e50, e99, t50, t99, n = self._percentiles
        engine = f"<span style='color:{theme.ACCENT}'>engine</span>"
        e2e = f"<span style='color:{theme.ORANGE}'>end-to-end</span>"
        last = f"<span style='color:{theme.MUTED}'>(last {n})</span>"
        if self.compact:  # p50 / p99, as the tooltip says
            self.figures.setText(f"{engine} {_ms(e50)} / {_ms(e99)} · {e2e} {_ms(t50)} / "
                                 f"{_ms(t99)} ms")
            self.figures.setToolTip(f"p50 / p99 of the last {n} results")
        else:
            self.figures.setText(f"{engine} p50 {_ms(e50)} · p99 {_ms(e99)} ms &nbsp; {e2e} "
                                 f"p50 {_ms(t50)} · p99 {_ms(t99)} ms {last}")

    def show_stats(self, entry: dict) -> None:
        """Counters and engine-side percentiles from the engine statistics of this decoder."""
        self.counters = {key: entry.get(key) for key in COUNTERS}
        self._show_counters()
        lat = entry.get("latency_ms") or {}
        self.engine_figures.setText(f"engine statistics: latency p50 {_ms(lat.get('p50'))} · "
                                    f"p99 {_ms(lat.get('p99'))} · max {_ms(lat.get('max'))} ms"
                                    + worker_text(entry.get("worker")))
        self.setToolTip(self.engine_figures.text())

    def _show_counters(self) -> None:
        parts = []
        for key, value in self.counters.items():
            colour = theme.BAD if key != "results" and value else theme.TEXT
            parts.append(f"<span style='color:{colour}'>{key} "
                         f"{'–' if value is None else value}</span>")
        self.header.setText(f"<span style='font-size:11pt; font-weight:600'>{self.name}</span>"
                            f" &nbsp; {' · '.join(parts)}")


def worker_text(worker: dict | None) -> str:
    """`` · worker pid 4242 running, restarts 1, kills 0, 338 MB, 4 % CPU, hop p99 0.60 ms``
    for a decoder in its own process (``worker`` in its statistics), else ``""``."""
    if not worker:
        return ""
    hop = (worker.get("hop_ms") or {}).get("p99")
    last = f" (last: {worker['last_exit']})" if worker.get("last_exit") else ""
    return (f" · worker pid {worker.get('pid')} {worker.get('state')}, restarts "
            f"{worker.get('restarts')}, kills {worker.get('kills')}{last}, "
            f"{worker.get('rss_mb', 0):.0f} MB, {worker.get('cpu_percent', 0):.0f} % CPU, "
            f"hop p99 {_ms(hop)} ms")


def _wrapping_label(text: str = "") -> QtWidgets.QLabel:
    """A rich-text label that wraps instead of widening its panel."""
    label = QtWidgets.QLabel(text)
    label.setTextFormat(QtCore.Qt.TextFormat.RichText)
    label.setWordWrap(True)
    label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                        QtWidgets.QSizePolicy.Policy.Preferred)
    return label


class StreamsList(QtWidgets.QWidget):
    """One line per stream from the engine statistics: state, rate, gaps, overflows, latency.

    Attributes
    ----------
    labels : dict of str to QLabel
        Per stream, its line.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.labels: dict[str, QtWidgets.QLabel] = {}
        self._layout = QtWidgets.QVBoxLayout(self)
        self._layout.setContentsMargins(0, 4, 0, 0)
        self._layout.setSpacing(2)

    def show_stats(self, streams: dict) -> None:
        """Show ``stats["streams"]``."""
        for name in [n for n in self.labels if n not in streams]:
            self.labels.pop(name).deleteLater()
        for name, entry in streams.items():
            if name not in self.labels:
                self.labels[name] = _wrapping_label()
                self._layout.addWidget(self.labels[name])
            self.labels[name].setText(stream_line(name, entry))


def stream_line(name: str, s: dict) -> str:
    """Rich text of one stream's statistics (problems in red)."""
    ingest = s.get("ingest_latency_ms") or {}
    state = s.get("state", "?")
    ok = state == "streaming"

    def counter(key: str) -> str:
        value = s.get(key, 0)
        colour = theme.BAD if value else theme.TEXT
        return f"<span style='color:{colour}'>{key} {value}</span>"

    return (f"<span style='font-weight:600'>{name}</span> &nbsp;"
            f"<span style='color:{theme.GOOD if ok else theme.ORANGE}'>{state}</span> · "
            f"{s.get('rate_hz', 0):.1f} Hz · {counter('gaps')} · {counter('overflows')} · "
            f"ingest p50 {_ms(ingest.get('p50'))} · p99 {_ms(ingest.get('p99'))} ms · "
            f"markers {s.get('markers', '–')}")


class TimingPanel(QtWidgets.QFrame):
    """Engine status line, one :class:`DecoderTiming` per decoder, and the streams' lines.

    Attributes
    ----------
    engine : QLabel
        ``● engine online …``, ``● engine offline (…)``, ``waiting for session S`` or the
        broker's state.
    decoders : dict of str to DecoderTiming
    streams : StreamsList
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("panel")
        self.engine = QtWidgets.QLabel("")
        self.engine.setWordWrap(True)
        self.decoders: dict[str, DecoderTiming] = {}
        self.grid = FitGrid(min_column_px=TIMING_MIN_PX, spacing=4)
        self.streams = StreamsList()
        title = QtWidgets.QLabel("Timing")
        title.setObjectName("panelTitle")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 10)
        layout.addWidget(title)
        layout.addWidget(self.engine)
        layout.addWidget(self.grid, 1)
        layout.addWidget(self.streams)

    def timing_for(self, name: str) -> DecoderTiming:
        """The block of decoder ``name`` (created on first use)."""
        if name not in self.decoders:
            self.decoders[name] = DecoderTiming(name)
            self.grid.add(self.decoders[name])
        return self.decoders[name]

    def update_from(self, feed: MqttFeed, states: dict[str, DecoderState]) -> None:
        """Refresh everything from the MQTT feed and the received results."""
        text, colour = engine_state(feed)
        self.engine.setText(text)
        self.engine.setStyleSheet(f"color: {colour}; font-weight: 600;")
        status = feed.status if feed.status and feed.status.get("state") == "online" else {}
        for name, entry in (status.get("decoders") or {}).items():
            if "error" not in entry:
                self.timing_for(name).set_budget(entry.get("budget_ms"))
        for name, state in states.items():
            self.timing_for(name).show_latencies(state)
        stats = feed.stats or {}
        for name, entry in (stats.get("decoders") or {}).items():
            if "error" not in entry:
                self.timing_for(name).show_stats(entry)
        self.streams.show_stats(stats.get("streams") or {})
