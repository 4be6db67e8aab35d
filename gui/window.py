"""The main window: Traces on the left, Decoders and Timing on the right.

All data arrive in background threads (:mod:`rtbci.gui.feeds`); one ``QTimer`` on the GUI
thread polls them ``fps`` times a second: it redraws the visible traces, draws the decoder
cards that received results, and every ``SLOW_S`` refreshes the Timing panel and the header.
"""

from __future__ import annotations

import logging
import time

import pylsl
from PySide6 import QtCore, QtGui, QtWidgets

from rtbci.gui import theme
from rtbci.gui.decoders import DecodersPanel
from rtbci.gui.feeds import MqttFeed, SignalFeed, StreamDiscovery
from rtbci.gui.fit import LEVELS
from rtbci.gui.state import DecoderState
from rtbci.gui.timing import TimingPanel
from rtbci.gui.traces import TracesPanel

log = logging.getLogger("rtbci.gui")

SLOW_S = 0.2  # period of the Timing panel and header updates


class MainWindow(QtWidgets.QMainWindow):
    """The rtbci display for one engine session.

    Parameters
    ----------
    session : str
        Engine session to follow (MQTT topics ``rtbci/<session>/…``).
    broker : MQTTConnection or str
        MQTT broker and login (rtbci.mqtt_connection), or only its URL ``mqtt://HOST[:PORT]``.
    streams : sequence of str
        LSL stream names to draw; empty: every numeric, regularly sampled stream found.
    seconds : float
        Initial time span of the traces, in seconds.
    fps : float
        Redraws per second.
    history : int
        Results per decoder in the latency histograms.

    Attributes
    ----------
    mqtt : MqttFeed
    feeds : dict of str to SignalFeed
        Per LSL stream name.
    states : dict of str to DecoderState
        Per decoder, what was received.
    traces : TracesPanel
    decoders : DecodersPanel
    timing : TimingPanel
    frames : int
        Frames drawn so far.
    """

    def __init__(self, session: str, broker, streams=(), seconds: float = 10.0,
                 fps: float = 30.0, history: int = 500, parent=None):
        super().__init__(parent)
        self.session, self.seconds, self.history = session, seconds, history
        self.buffer_seconds = max(20.0, 2.0 * seconds)
        self.states: dict[str, DecoderState] = {}
        self.feeds: dict[str, SignalFeed] = {}
        self.frames = 0
        self._status_seen: dict | None = None
        self._slow_at = 0.0
        self._closed = False
        self._bad_results: set[str] = set()  # decoders whose results could not be drawn
        self.setWindowTitle(f"rtbci · {session}")
        self._build(session)
        self.mqtt = MqttFeed(broker, session).start()
        self.discovery = None if streams else StreamDiscovery().start()
        for name in streams:
            self._add_feed(name, None)
        self.timer = QtCore.QTimer(self)
        self.timer.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self.tick)
        self.timer.start(max(1, round(1000 / fps)))

    def __repr__(self) -> str:
        return f"<MainWindow: session {self.session} | streams {list(self.feeds)}>"

    def _build(self, session: str) -> None:
        root = QtWidgets.QWidget()
        root.setObjectName("root")
        self.header = QtWidgets.QLabel(f"rtbci · session {session}")
        self.header.setObjectName("panelTitle")
        self.connection = QtWidgets.QLabel("")
        self.connection.setObjectName("muted")
        head = QtWidgets.QHBoxLayout()
        head.addWidget(self.header)
        head.addStretch(1)
        head.addWidget(self.connection)
        self.traces = TracesPanel(self.seconds)
        traces_frame = QtWidgets.QFrame()
        traces_frame.setObjectName("panel")
        inner = QtWidgets.QVBoxLayout(traces_frame)
        inner.setContentsMargins(8, 8, 8, 8)
        inner.addWidget(self.traces)
        self.decoders = DecodersPanel(session)
        self.timing = TimingPanel()
        right = self.right = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        right.addWidget(self.decoders)
        right.addWidget(self.timing)
        right.setSizes([350, 620])
        self.split_by_user = False  # once the user drags it, the split stays theirs
        self._balanced: tuple[list[int], int] | None = None
        self._timing_blocks = (0, 0)
        right.splitterMoved.connect(self._on_split_moved)
        split = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        split.addWidget(traces_frame)
        split.addWidget(right)
        split.setSizes([900, 700])
        split.setStretchFactor(0, 9)
        split.setStretchFactor(1, 7)
        layout = QtWidgets.QVBoxLayout(root)
        layout.setContentsMargins(10, 8, 10, 10)
        layout.addLayout(head)
        layout.addWidget(split, 1)
        self.setCentralWidget(root)

    def _on_split_moved(self, *_) -> None:
        self.split_by_user = True

    def balance(self) -> None:
        """Share the right column's height between Decoders and Timing in proportion to what
        each needs to show all its blocks (at the fullest level at which both fit), until the
        user drags the splitter. Called when blocks are added."""
        total = sum(self.right.sizes())
        if self.split_by_user or self._closed or total <= 0:
            return
        panels = (self.decoders, self.timing)
        for level in LEVELS:  # the fullest level at which both fit, else the densest
            needs = [self._need(panel, level) for panel in panels]
            if sum(needs) <= total:
                break
        if (needs, total) == self._balanced:
            return
        self._balanced = (needs, total)
        top = round(total * needs[0] / sum(needs))
        self.right.setSizes([top, total - top])

    @staticmethod
    def _need(panel, compact: int) -> int:
        """Height ``panel`` needs to show all its blocks: its grid's and everything else."""
        grid = panel.grid
        width = grid.width() - 2 * grid.frameWidth()
        return panel.height() - grid.height() + grid.natural_height(width, compact)

    # -- feeds ---------------------------------------------------------------------------------

    def _add_feed(self, name: str, source_id: str | None) -> None:
        feed = SignalFeed(name, source_id, buffer_seconds=self.buffer_seconds).start()
        self.feeds[name] = feed
        self.traces.add_feed(feed)

    def _discover(self) -> None:
        if self.discovery is None:
            return
        wanted = self._session_streams()
        for found in self.discovery.streams.values():
            if found.name not in self.feeds and (not wanted or found.name in wanted):
                log.info("showing LSL stream %r (%s, %d ch @ %g Hz)", found.name, found.type,
                         found.n_channels, found.srate)
                self._add_feed(found.name, found.source_id)

    def _session_streams(self) -> set[str]:
        """LSL names of the online engine's sources (empty: none known, show every stream)."""
        status = self.mqtt.status
        if not status or status.get("state") != "online":
            return set()
        return {s["lsl_name"] for s in status.get("streams", {}).values() if s.get("lsl_name")}

    def close_feeds(self) -> None:
        """Stop every background thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.timer.stop()
        if self.discovery is not None:
            self.discovery.stop()
        for feed in self.feeds.values():
            feed.stop()
        self.mqtt.stop()

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:  # noqa: N802 - Qt's API
        super().resizeEvent(event)
        QtCore.QTimer.singleShot(0, self.balance)  # once the panels have their new sizes

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 - Qt's API
        self.close_feeds()
        super().closeEvent(event)

    # -- frames --------------------------------------------------------------------------------

    def tick(self) -> None:
        """One frame: new streams, traces, new results; the slow panels every ``SLOW_S``."""
        self._discover()
        self.traces.refresh()
        if self.mqtt.status is not self._status_seen:
            self._status_seen = self.mqtt.status
            self.decoders.sync(self._status_seen)
            self.balance()
        self._draw_results()
        now = time.monotonic()
        if now - self._slow_at >= SLOW_S:
            self._slow_at = now
            self.timing.update_from(self.mqtt, self.states)
            status = self.mqtt.status
            self.traces.match_engine(status if status and status.get("state") == "online"
                                     else None)
            self._update_header()
            grew = self.decoders.grid.check() | self.timing.grid.check()
            blocks = (len(self.timing.decoders), len(self.timing.streams.labels))
            if grew or blocks != self._timing_blocks:  # new blocks or stream lines
                self._timing_blocks = blocks
                QtCore.QTimer.singleShot(50, self.balance)  # once their panel is laid out
        self.frames += 1

    def _draw_results(self) -> None:
        fresh: dict[str, DecoderState] = {}
        for message, received_at in self.mqtt.take_results():
            name = message["decoder"]
            state = self.states.get(name)
            if state is None:
                state = self.states[name] = DecoderState(name, self.history)
            try:
                state.add(message, received_at)
            except (KeyError, TypeError):
                continue  # not a result of this schema
            fresh[name] = state
        now = pylsl.local_clock()
        for name, state in fresh.items():
            card = self.decoders.card_for(name, state.latest.get("kind", ""))
            try:
                card.show_result(state, now)
            except Exception as exc:  # noqa: BLE001 - a malformed result must not stop frames
                if name not in self._bad_results:
                    self._bad_results.add(name)
                    log.warning("cannot draw a result of decoder %r: %r", name, exc)

    def _update_header(self) -> None:
        mqtt = self.mqtt
        broker = f"broker {mqtt.url} {'connected' if mqtt.connected else 'unreachable'}"
        shown = sum(feed.state == "streaming" for feed in self.feeds.values())
        self.connection.setText(f"{broker} · LSL: {shown}/{len(self.feeds)} streams live")

    def screenshot(self, path: str) -> bool:
        """Render the window to a PNG file; return whether it was written."""
        return self.grab().save(path)


def ensure_app(argv=None) -> QtWidgets.QApplication:
    """The QApplication (created and themed on first use)."""
    app = QtWidgets.QApplication.instance()
    if app is None:
        app = QtWidgets.QApplication(argv or ["rtbci-gui"])
        theme.apply(app)
    return app
