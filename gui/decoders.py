"""The Decoders panel: one card per decoder, drawn according to its output kind.

- ``classes``: a bar per class probability, the most probable class highlighted; for
  marker-locked decoders whose markers name the true class, the running accuracy; with
  per-channel importance (``options.importance``), the three most important channels.
- ``retrieval``: the top-k candidates with labels and scores (a thumbnail when a label is the
  path of an image file).
- ``embedding``: a heat strip of the vector (channels × features when its size is a multiple
  of the source's channel count, as for ``builtin:bandpower``) and its norm.
"""

from __future__ import annotations

import os

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from rtbci.gui import theme
from rtbci.gui.fit import ElidedLabel, FitGrid
from rtbci.gui.state import DecoderState, true_class

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
THUMBNAIL_PX = 36
CARD_MIN_PX = 250  # narrowest card column


def _label(text: str = "", name: str | None = None) -> QtWidgets.QLabel:
    label = QtWidgets.QLabel(text)
    if name:
        label.setObjectName(name)
    return label


def _wrapping(name: str | None = None) -> QtWidgets.QLabel:
    """A label that wraps its text instead of widening its card."""
    label = _label("", name)
    label.setWordWrap(True)
    label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                        QtWidgets.QSizePolicy.Policy.Preferred)
    return label


def _bar() -> QtWidgets.QProgressBar:
    bar = QtWidgets.QProgressBar()
    bar.setRange(0, 1000)
    bar.setTextVisible(False)
    bar.setMinimumWidth(24)
    bar.setFixedHeight(12)
    return bar


def _set_highlight(bar: QtWidgets.QProgressBar, on: bool) -> None:
    if bar.property("argmax") != on:
        bar.setProperty("argmax", on)
        bar.style().unpolish(bar)
        bar.style().polish(bar)


class DecoderCard(QtWidgets.QFrame):
    """A decoder's name, configuration and newest output.

    Parameters
    ----------
    name : str
        Decoder name.
    """

    kind = ""

    def __init__(self, name: str, parent=None):
        super().__init__(parent)
        self.name = name
        self.compact = 0  # 0 full, 1 compact, 2 dense (rtbci.gui.fit)
        self.setObjectName("card")
        self.title = _label(name, "cardTitle")
        self.info = ElidedLabel("", "muted")
        self.meta = _label("waiting for results", "muted")
        self.meta.setAlignment(QtCore.Qt.AlignmentFlag.AlignRight)
        head = QtWidgets.QHBoxLayout()
        head.addWidget(self.title)
        head.addStretch(1)
        head.addWidget(self.meta)
        self.body = QtWidgets.QGridLayout()
        self.body.setHorizontalSpacing(8)
        self.body.setVerticalSpacing(3)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 8)
        layout.addLayout(head)
        layout.addWidget(self.info)
        layout.addLayout(self.body)
        layout.addStretch(1)  # a card taller than its content (its row's height): space below

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name}>"

    def set_status(self, entry: dict, streams: dict) -> None:
        """Show the decoder's configuration from the engine status (``status["decoders"]``)."""
        trigger = (f"on marker '{entry['on_marker']}'" if entry.get("on_marker")
                   else f"every {entry.get('every', '?')} samples")
        budget = entry.get("budget_ms")
        runtime = (entry.get("runtime") or {}).get("backend", "")
        parts = [entry.get("kind", "?"), str(entry.get("source", "")), trigger,
                 f"budget {budget:g} ms" if budget else "", runtime]
        self.info.setText(" · ".join(p for p in parts if p))

    def set_compact(self, compact: int) -> None:
        """1 compact: without the configuration line (it stays in the tooltip) and, per kind,
        smaller; 2 dense: smaller still; 0: in full. For a panel with more cards than fit."""
        if compact != self.compact:
            self.compact = compact
            self.info.setVisible(not compact)

    def show_result(self, state: DecoderState, now: float) -> None:
        """Draw the newest result of ``state``; ``now`` is the LSL clock, for the rate."""
        message = state.latest
        if message is None:
            return
        self.meta.setText(f"seq {message['seq']} · {state.rate(now):.1f}/s")
        self.draw(message, state)

    def draw(self, message: dict, state: DecoderState) -> None:
        """Draw one result message (kind-specific)."""


class ClassesCard(DecoderCard):
    """Class probabilities as bars; the most probable class highlighted.

    Attributes
    ----------
    bars : dict of str to QProgressBar
        Per class label, value = probability × 1000.
    values : dict of str to QLabel
        Per class label, the probability as text (``"73.1 %"``).
    argmax : str | None
        The highlighted (most probable) class.
    """

    kind = "classes"
    ROWS_PER_GROUP = 4

    def __init__(self, name: str, parent=None):
        super().__init__(name, parent)
        self.bars: dict[str, QtWidgets.QProgressBar] = {}
        self.values: dict[str, QtWidgets.QLabel] = {}
        self.names: dict[str, QtWidgets.QLabel] = {}
        self.argmax: str | None = None
        self._last: tuple[dict, DecoderState] | None = None
        self.channel_names: list[str] | None = None
        self.importance, self.trial = _wrapping("muted"), _wrapping("muted")
        self.importance.hide()

    def _rows(self, labels: list[str]) -> None:
        """One (name, bar, value) row per class; more than ``ROWS_PER_GROUP`` classes in two
        groups side by side."""
        if list(self.bars) == labels:
            return
        for widget in [*self.bars.values(), *self.values.values(), *self.names.values()]:
            widget.deleteLater()
        self.bars, self.values, self.names = {}, {}, {}
        groups = 1 if len(labels) <= self.ROWS_PER_GROUP else 2
        rows = -(-len(labels) // groups)
        for i, label in enumerate(labels):
            self.names[label], self.bars[label], self.values[label] = (
                _label(label), _bar(), _label("", "muted"))
            row, column = i % rows, 3 * (i // rows)
            self.body.addWidget(self.names[label], row, column)
            self.body.addWidget(self.bars[label], row, column + 1)
            self.body.addWidget(self.values[label], row, column + 2)
            self.body.setColumnStretch(column + 1, 1)
        self.body.addWidget(self.trial, rows, 0, 1, 3 * groups)
        self.body.addWidget(self.importance, rows + 1, 0, 1, 3 * groups)

    def set_status(self, entry: dict, streams: dict) -> None:
        super().set_status(entry, streams)
        self.channel_names = entry.get("channels")

    def set_compact(self, compact: int) -> None:
        changed = compact != self.compact
        super().set_compact(compact)
        if changed and self._last is not None:
            self.trial.setText(self._trial_text(*self._last, bool(compact)))

    def draw(self, message: dict, state: DecoderState) -> None:
        probabilities = np.asarray(message["probabilities"], dtype=float)
        labels = list(message.get("labels") or range(len(probabilities)))
        labels = [str(label) for label in labels]
        self._rows(labels)
        best = int(np.argmax(probabilities))
        self.argmax = labels[best]
        for i, label in enumerate(labels):
            self.bars[label].setValue(round(1000 * float(probabilities[i])))
            self.values[label].setText(f"{100 * probabilities[i]:5.1f} %")
            _set_highlight(self.bars[label], i == best)
            self.names[label].setStyleSheet(f"color: {theme.ACCENT if i == best else theme.TEXT};"
                                            f"font-weight: {600 if i == best else 400};")
        self._last = (message, state)
        self.trial.setText(self._trial_text(message, state, bool(self.compact)))
        importance = self._importance_text(message.get("importance"))
        self.importance.setText(importance)
        self.importance.setVisible(bool(importance))

    def _importance_text(self, importance) -> str:
        """``importance Cz 21 % · C3 12 % · FCz 9 %``: the three most important channels."""
        if importance is None:
            return ""
        values = np.asarray(importance, dtype=float)
        names = self.channel_names if self.channel_names and len(
            self.channel_names) == len(values) else [str(i) for i in range(len(values))]
        top = np.argsort(-values)[:3]
        return "importance " + " · ".join(f"{names[i]} {100 * values[i]:.0f} %" for i in top)

    @staticmethod
    def _trial_text(message: dict, state: DecoderState, compact: bool = False) -> str:
        """The last marker, the prediction and the running accuracy with its chance level
        (compact: ``stim/left → left ✓ · 67 % of 3 (CI 9–99) · chance 67 %``)."""
        marker = message.get("marker")
        if not marker:
            return ""
        text = marker if compact else f"marker {marker}"
        truth = true_class(message)
        if truth is not None and state.scored:
            predicted = message["labels"][int(np.argmax(message["probabilities"]))]
            low, high = (figures := state.chance())["ci95"]
            mark = "✓" if predicted == truth else "✗"
            if compact:
                return (f"{text} → {predicted} {mark} · {100 * state.correct / state.scored:.0f}"
                        f" % of {state.scored} (CI {100 * low:.0f}–{100 * high:.0f}) · chance "
                        f"{100 * figures['chance']:.0f} %")
            text += (f" → {predicted} {mark} · accuracy "
                     f"{100 * state.correct / state.scored:.0f} % (95 % CI {100 * low:.0f}–"
                     f"{100 * high:.0f}) · chance {100 * figures['chance']:.0f} % (majority "
                     f"class; 1/n {100 * figures['chance_uniform']:.0f} %) · "
                     f"{state.scored} trial{'' if state.scored == 1 else 's'}")
        return text


class RetrievalCard(DecoderCard):
    """Top-k candidates, best first: rank, thumbnail (if any), label, score bar and score.

    Attributes
    ----------
    shown : list of (str, float)
        The candidates drawn: ``(label, score)``.
    thumbnails : list of QLabel
        Per row, the thumbnail (an empty pixmap when the label is not an image file).
    """

    kind = "retrieval"
    ROWS = (8, 3, 1)  # the most candidates drawn in full, compact, dense

    def __init__(self, name: str, parent=None):
        super().__init__(name, parent)
        self.shown: list[tuple[str, float]] = []
        self.thumbnails: list[QtWidgets.QLabel] = []
        self._rows: list[tuple[QtWidgets.QLabel, ...]] = []
        self._bars: list[QtWidgets.QProgressBar] = []
        self._pixmaps: dict[str, QtGui.QPixmap | None] = {}

    def rows_shown(self) -> int:
        """The most candidates drawn at the card's compactness (``ROWS``)."""
        return self.ROWS[self.compact]

    def set_compact(self, compact: int) -> None:
        super().set_compact(compact)
        shown = min(len(self.shown), self.rows_shown())
        for i, (row, bar) in enumerate(zip(self._rows, self._bars)):
            for widget in (*row, bar):
                widget.setVisible(i < shown)

    def _row(self, i: int) -> tuple[QtWidgets.QLabel, ...]:
        while len(self._rows) <= i:
            row = len(self._rows)
            rank, thumb, name, score = _label(f"{row + 1}", "muted"), _label(), _label(), _label()
            bar = _bar()
            for col, widget in enumerate((rank, thumb, name, bar, score)):
                self.body.addWidget(widget, row, col)
            self.body.setColumnStretch(3, 1)
            self._rows.append((rank, thumb, name, score))
            self._bars.append(bar)
            self.thumbnails.append(thumb)
        return self._rows[i]

    def draw(self, message: dict, state: DecoderState) -> None:
        scores = np.asarray(message.get("scores") if message.get("scores") is not None else [])
        ids = message.get("ids")
        labels = message.get("labels") or [str(int(i)) for i in (ids if ids is not None else [])]
        k = min(len(scores), len(labels), self.rows_shown())
        top = float(np.max(np.abs(scores[:k]))) if k else 1.0
        self.shown = [(str(labels[i]), float(scores[i])) for i in range(k)]
        for i, (label, score) in enumerate(self.shown):
            _, thumb, name, value = self._row(i)
            text = os.path.basename(label) if os.sep in label else label
            name.setText(text if len(text) < 40 else "…" + text[-38:])
            value.setText(f"{score:.3f}")
            self._bars[i].setValue(round(1000 * max(score, 0.0) / top) if top > 0 else 0)
            _set_highlight(self._bars[i], i == 0)
            self._thumbnail(thumb, label)
        for i in range(k, len(self._rows)):
            for widget in (*self._rows[i], self._bars[i]):
                widget.setVisible(False)
        for i in range(k):
            for widget in (*self._rows[i], self._bars[i]):
                widget.setVisible(True)

    def _thumbnail(self, target: QtWidgets.QLabel, label: str) -> None:
        if label not in self._pixmaps:
            if len(self._pixmaps) >= 256:  # a large candidate bank: keep the cache small
                self._pixmaps.clear()
            pixmap = None
            if label.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(label):
                pixmap = QtGui.QPixmap(label).scaled(
                    THUMBNAIL_PX, THUMBNAIL_PX, QtCore.Qt.AspectRatioMode.KeepAspectRatio,
                    QtCore.Qt.TransformationMode.SmoothTransformation)
            self._pixmaps[label] = pixmap
        pixmap = self._pixmaps[label]
        if pixmap is None:
            target.clear()
        else:
            target.setPixmap(pixmap)


class EmbeddingCard(DecoderCard):
    """The embedding as a heat strip (channels × features per channel when it divides).

    Attributes
    ----------
    image : pg.ImageItem
        The strip; ``image.image`` holds the drawn values, shape ``(n_rows_x, n_rows_y)``.
    norm : QLabel
        ``‖x‖`` and the vector's size.
    """

    kind = "embedding"
    PLOT_PX, COMPACT_PLOT_PX = 64, 36

    def __init__(self, name: str, parent=None):
        super().__init__(name, parent)
        self.n_channels = 0
        self.plot = pg.PlotWidget()
        self.plot.setFixedHeight(self.PLOT_PX)
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.getPlotItem().hideButtons()
        self.plot.getPlotItem().setMenuEnabled(False)
        self.plot.getPlotItem().getViewBox().setDefaultPadding(0)
        self.image = pg.ImageItem()
        self.image.setColorMap(pg.colormap.get("viridis"))
        self.plot.addItem(self.image)
        self.norm = _label("", "muted")
        self.body.addWidget(self.plot, 0, 0)
        self.body.addWidget(self.norm, 1, 0)

    def set_compact(self, compact: int) -> None:
        super().set_compact(compact)
        self.plot.setFixedHeight(self.COMPACT_PLOT_PX if compact else self.PLOT_PX)
        self.plot.setVisible(compact < 2)

    def set_status(self, entry: dict, streams: dict) -> None:
        super().set_status(entry, streams)
        self.n_channels = int((streams.get(entry.get("source"), {}) or {}).get("n_channels", 0))

    def draw(self, message: dict, state: DecoderState) -> None:
        vector = np.asarray(message["embedding"], dtype=float).ravel()
        n = self.n_channels
        if n > 1 and len(vector) % n == 0 and len(vector) > n:
            strip = vector.reshape(n, len(vector) // n)  # channel-major: x = channel
            shape = f"{n} ch × {len(vector) // n}"
        else:
            strip = vector[:, None]
            shape = f"{len(vector)} values"
        self.image.setImage(strip, autoLevels=True)
        self.plot.getPlotItem().getViewBox().autoRange(padding=0)
        self.norm.setText(f"‖x‖ = {np.linalg.norm(vector):.2f} · {shape}")


class GenericCard(DecoderCard):
    """A decoder of a kind this display does not know: the output as text."""

    def __init__(self, name: str, parent=None):
        super().__init__(name, parent)
        self.text = _label("", "muted")
        self.body.addWidget(self.text, 0, 0)

    def draw(self, message: dict, state: DecoderState) -> None:
        self.text.setText(f"kind {message.get('kind')!r}")


CARDS = {card.kind: card for card in (ClassesCard, RetrievalCard, EmbeddingCard)}


def make_card(name: str, kind: str) -> DecoderCard:
    """The card class for an output kind (:class:`GenericCard` for unknown kinds)."""
    return CARDS.get(kind, GenericCard)(name)


class DecodersPanel(QtWidgets.QFrame):
    """The decoder cards, in the order of the engine's status, in a :class:`FitGrid`: as
    many columns as it takes to show every card at once, compact cards when that is not
    enough.

    Attributes
    ----------
    cards : dict of str to DecoderCard
    grid : FitGrid
    """

    def __init__(self, session: str, parent=None):
        super().__init__(parent)
        self.setObjectName("panel")
        self.cards: dict[str, DecoderCard] = {}
        self.placeholder = _label(f"waiting for session {session}", "muted")
        self.grid = FitGrid(min_column_px=CARD_MIN_PX)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 10)
        layout.addWidget(_label("Decoders", "panelTitle"))
        layout.addWidget(self.placeholder)
        layout.addWidget(self.grid, 1)

    def sync(self, status: dict | None) -> None:
        """Create, update or remove cards to match the engine status (``None``: keep them)."""
        if not status or status.get("state") != "online":
            return
        decoders, streams = status.get("decoders") or {}, status.get("streams") or {}
        for name in [n for n in self.cards if n not in decoders]:
            self.grid.remove(self.cards.pop(name))
        for position, (name, entry) in enumerate(
                (n, e) for n, e in decoders.items() if "error" not in e):
            card = self.cards.get(name)
            if card is None or card.kind != entry.get("kind"):
                card = self._add(name, entry.get("kind", ""), position)
            card.set_status(entry, streams)
        order = [name for name in decoders if name in self.cards]
        self.grid.blocks.sort(key=lambda b: order.index(b.name) if b.name in order else len(order))
        self.placeholder.setVisible(not self.cards)
        self.grid.relayout_later()

    def card_for(self, name: str, kind: str) -> DecoderCard:
        """The card of decoder ``name``, created if the status has not announced it."""
        card = self.cards.get(name)
        if card is None or card.kind != kind and kind in CARDS:
            card = self._add(name, kind)
            self.placeholder.hide()
        return card

    def _add(self, name: str, kind: str, position: int | None = None) -> DecoderCard:
        old = self.cards.pop(name, None)
        if old is not None:
            position = self.grid.blocks.index(old)
            self.grid.remove(old)
        card = make_card(name, kind)
        self.grid.add(card, position)
        self.cards[name] = card
        return card
