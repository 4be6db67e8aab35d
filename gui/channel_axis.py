"""The Traces panel's left axis: channel names at ``y = −i``, thinned to fit, bad ones grey,
clickable (:class:`ChannelAxis`)."""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6 import QtCore

from rtbci.gui import theme


class ChannelAxis(pg.AxisItem):
    """Left axis labelled with channel names (channel ``i`` at ``y = −i``).

    Labels are thinned to fit; bad channels are drawn grey. Clicking a name calls
    ``on_click(channel_index)``.
    """

    LABEL_PX = 13  # minimum vertical distance between two labels

    def __init__(self, on_click):
        super().__init__("left")
        self.names: list[str] = []
        self.bad: set[int] = set()
        self.on_click = on_click
        self.setStyle(tickLength=-4)
        self.setTextPen(theme.TEXT)

    def set_names(self, names) -> None:
        self.names = list(names)
        self.picture = None
        self.update()

    def tickValues(self, minVal, maxVal, size):  # noqa: N802, N803 - pyqtgraph's API
        n = len(self.names)
        lo, hi = max(0, math.ceil(-maxVal)), min(n - 1, math.floor(-minVal))
        if hi < lo or size <= 0:
            return []
        px_per_channel = size / max(maxVal - minVal, 1e-9)
        stride = max(1, math.ceil(self.LABEL_PX / px_per_channel))
        return [(stride, [-i for i in range(lo, hi + 1) if i % stride == 0])]

    def tickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph's API
        return [self.names[round(-v)] for v in values]

    def drawPicture(self, p, axisSpec, tickSpecs, textSpecs):  # noqa: N802, N803
        bad_names = {self.names[i] for i in self.bad if i < len(self.names)}
        good = [spec for spec in textSpecs if spec[2] not in bad_names]
        super().drawPicture(p, axisSpec, tickSpecs, good)
        p.setPen(pg.mkPen(theme.BAD_CHANNEL))
        for rect, flags, text in textSpecs:
            if text in bad_names:
                p.drawText(rect, int(flags), text)

    def mouseClickEvent(self, event):  # noqa: N802 - pyqtgraph's API
        view = self.linkedView()
        if view is None or event.button() != QtCore.Qt.MouseButton.LeftButton:
            return super().mouseClickEvent(event)
        channel = round(-view.mapSceneToView(event.scenePos()).y())
        if 0 <= channel < len(self.names):
            event.accept()
            self.on_click(channel)
