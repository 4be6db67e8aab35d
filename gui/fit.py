"""A grid of blocks (decoder cards, timing blocks) that fits its viewport without scrolling.

:class:`FitGrid` lays its blocks out in the fewest columns in which all of them fit the
visible height, each column at least ``min_column_px`` wide. When no column count fits, the
blocks are made compact (``block.set_compact(1)``: fewer lines, smaller plots), then dense
(``block.set_compact(2)``: no plots, one line of each list) and the columns are chosen again;
only when even dense blocks do not fit does the area scroll.
"""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets

from rtbci.gui import theme

LEVELS = (0, 1, 2)  # full, compact, dense


def block_height(block: QtWidgets.QWidget, width: int) -> int:
    """The height in pixels ``block`` needs at ``width`` pixels (word-wrapped text included)."""
    if block.hasHeightForWidth():
        return block.heightForWidth(width)
    return block.sizeHint().height()


def _invalidate(layout: QtWidgets.QLayout | None) -> None:
    """Drop the cached sizes of ``layout`` and of every layout inside it."""
    if layout is None:
        return
    for i in range(layout.count()):
        _invalidate(layout.itemAt(i).layout())
    layout.invalidate()


class FitGrid(QtWidgets.QScrollArea):
    """Blocks in a grid of 1 … n columns, the fewest that show every block at once.

    Parameters
    ----------
    min_column_px : int
        Narrowest column, in pixels.
    spacing : int
        Space between blocks, in pixels.

    Attributes
    ----------
    blocks : list of QWidget
        In order: row by row, left to right.
    columns : int
        Columns of the current layout.
    compact : int
        How compact the blocks are: 0 in full, 1 compact, 2 dense (the module's docstring).
    """

    def __init__(self, min_column_px: int = 250, spacing: int = 6, parent=None):
        super().__init__(parent)
        self.min_column_px, self.spacing = min_column_px, spacing
        self.blocks: list[QtWidgets.QWidget] = []
        self.columns, self.compact = 1, 0
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        inner = QtWidgets.QWidget()
        inner.setStyleSheet(f"background: {theme.PANEL};")
        self._grid = QtWidgets.QGridLayout()
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(spacing)
        column = QtWidgets.QVBoxLayout(inner)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(self._grid)
        column.addStretch(1)
        self.setWidget(inner)
        self._pending = False

    def add(self, block: QtWidgets.QWidget, index: int | None = None) -> None:
        """Add ``block`` at position ``index`` (default: last)."""
        self.blocks.insert(len(self.blocks) if index is None else index, block)
        if hasattr(block, "set_compact"):
            block.set_compact(self.compact)
        self.relayout()

    def remove(self, block: QtWidgets.QWidget) -> None:
        """Remove ``block`` and delete it."""
        self.blocks.remove(block)
        self._grid.removeWidget(block)
        block.deleteLater()
        self.relayout()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's API
        super().resizeEvent(event)
        self.relayout()

    def check(self) -> bool:
        """Lay out again (soon) if a block needs more height than it has (more rows or text
        since the last layout); return whether it will."""
        short = any(block_height(b, b.width()) > b.height() for b in self.blocks
                    if b.isVisible())
        if short:
            self.relayout_later()
        return short

    def relayout_later(self) -> None:
        """Lay out again once control returns to the event loop."""
        if not self._pending:
            self._pending = True
            QtCore.QTimer.singleShot(0, self._relayout_pending)

    def _relayout_pending(self) -> None:
        self._pending = False
        self.relayout()

    def relayout(self) -> None:
        """Choose the compactness and the column count, and place the blocks."""
        width, height = self.width() - 2 * self.frameWidth(), self.viewport().height()
        levels = LEVELS if any(hasattr(b, "set_compact") for b in self.blocks) else (0,)
        layout = None
        for level in levels:
            layout = layout or self._choose(width, height, level)
        policy = QtCore.Qt.ScrollBarPolicy
        self.setVerticalScrollBarPolicy(policy.ScrollBarAlwaysOff if layout
                                        else policy.ScrollBarAsNeeded)  # the last resort
        columns, compact = layout or (self.max_columns(width), levels[-1])
        self._apply(columns, compact)

    def _choose(self, width: int, height: int, compact: int) -> tuple[int, int] | None:
        """The fewest columns in which every block fits ``height`` (None: none does)."""
        self._set_compact(compact)
        for columns in range(1, self.max_columns(width) + 1):
            if self._needed(columns, width) <= height:
                return columns, compact
        return None

    def max_columns(self, width: int) -> int:
        """The most columns across ``width`` pixels in which every block gets its minimum
        width and at least ``min_column_px``."""
        narrowest = max([self.min_column_px, *(b.minimumSizeHint().width() for b in self.blocks)])
        return max(1, (width + self.spacing) // (narrowest + self.spacing))

    def natural_height(self, width: int, compact: int) -> int:
        """The height the blocks need across ``width`` pixels in the most columns at
        compactness ``compact`` (0 full, 1 compact, 2 dense)."""
        was = self.compact
        self._set_compact(compact)
        needed = self._needed(self.max_columns(width), width) if self.blocks else 0
        self._set_compact(was)
        return needed

    def _needed(self, columns: int, width: int) -> int:
        """Height of the blocks in ``columns`` columns across ``width`` pixels."""
        column_px = (width - (columns - 1) * self.spacing) // columns
        rows = [self.blocks[i:i + columns] for i in range(0, len(self.blocks), columns)]
        heights = [max(block_height(b, column_px) for b in row) for row in rows]
        return sum(heights) + self.spacing * max(0, len(rows) - 1)

    def _set_compact(self, compact: int) -> None:
        for block in self.blocks:
            if hasattr(block, "set_compact") and block.compact != compact:
                block.set_compact(compact)
                _invalidate(block.layout())  # its cached height-for-width is stale now

    def _apply(self, columns: int, compact: int) -> None:
        """Place the blocks, each as high as the highest of its row needs (set, not left to
        Qt: a word-wrapped label's minimum height is that of its narrowest width)."""
        self._set_compact(compact)
        self.columns, self.compact = columns, compact
        width = self.width() - 2 * self.frameWidth()
        column_px = (width - (columns - 1) * self.spacing) // columns
        for block in self.blocks:
            self._grid.removeWidget(block)
        for start in range(0, len(self.blocks), columns):
            row = self.blocks[start:start + columns]
            height = max(block_height(b, column_px) for b in row)
            for i, block in enumerate(row):
                block.setFixedHeight(height)
                self._grid.addWidget(block, start // columns, i)
        for column in range(self._grid.columnCount()):
            self._grid.setColumnStretch(column, 1 if column < columns else 0)


class ElidedLabel(QtWidgets.QLabel):
    """A one-line plain-text label cut with "…" to its width instead of widening its parent
    (the whole text is its tooltip)."""

    def __init__(self, text: str = "", name: str | None = None, parent=None):
        super().__init__(text, parent)
        if name:
            self.setObjectName(name)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                           QtWidgets.QSizePolicy.Policy.Fixed)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's API
        super().setText(text)
        self.setToolTip(text)

    def minimumSizeHint(self) -> QtCore.QSize:  # noqa: N802 - Qt's API
        return QtCore.QSize(0, super().minimumSizeHint().height())

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's API
        painter = QtGui.QPainter(self)
        painter.setPen(self.palette().color(QtGui.QPalette.ColorRole.WindowText))
        rect = self.contentsRect()
        text = self.fontMetrics().elidedText(self.text(), QtCore.Qt.TextElideMode.ElideRight,
                                             rect.width())
        painter.drawText(rect, int(self.alignment()), text)
