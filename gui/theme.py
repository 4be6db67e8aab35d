"""Colours, fonts and the dark Qt palette shared by every panel."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6 import QtGui, QtWidgets

BACKGROUND = "#16181d"
PANEL = "#1f2228"
CARD = "#262a31"
BORDER = "#363b45"
TEXT = "#e2e5ea"
MUTED = "#8b93a1"
ACCENT = "#4fc3f7"   # traces, engine latency, the winning class
ORANGE = "#ffb74d"   # end-to-end latency, marker lines
TRACE = "#8ecae6"    # good channels
GOOD = "#66bb6a"
BAD = "#ef5350"
BAD_CHANNEL = "#555b66"
BAR_IDLE = "#56606e"

UNIT_SYMBOLS = {"microvolts": "µV", "millivolts": "mV", "volts": "V", "nanovolts": "nV",
                "tesla": "T", "t": "T", "ft": "fT", "ft/cm": "fT/cm", "t/m": "T/m"}

STYLESHEET = f"""
QWidget {{ color: {TEXT}; }}
QMainWindow, QWidget#root {{ background: {BACKGROUND}; }}
QFrame#panel {{ background: {PANEL}; border: 1px solid {BORDER}; border-radius: 6px; }}
QFrame#card {{ background: {CARD}; border: 1px solid {BORDER}; border-radius: 6px; }}
QLabel#panelTitle {{ font-size: 12pt; font-weight: 600; color: {TEXT}; }}
QLabel#cardTitle {{ font-size: 11pt; font-weight: 600; }}
QLabel#muted {{ color: {MUTED}; }}
QLabel#header {{ font-size: 11pt; }}
QProgressBar {{ background: {BACKGROUND}; border: 1px solid {BORDER}; border-radius: 3px;
               text-align: center; max-height: 14px; }}
QProgressBar::chunk {{ background: {BAR_IDLE}; border-radius: 2px; }}
QProgressBar[argmax="true"]::chunk {{ background: {ACCENT}; }}
QTabWidget::pane {{ border: none; }}
QTabBar::tab {{ background: {CARD}; color: {MUTED}; padding: 4px 12px; border: none;
               border-top-left-radius: 4px; border-top-right-radius: 4px; margin-right: 2px; }}
QTabBar::tab:selected {{ background: {BORDER}; color: {TEXT}; }}
QScrollArea {{ border: none; background: transparent; }}
QListWidget {{ background: {BACKGROUND}; border: 1px solid {BORDER}; }}
"""


def unit_symbol(unit: str) -> str:
    """Short symbol of an LSL unit string (``microvolts`` → ``µV``); unknown ones unchanged."""
    return UNIT_SYMBOLS.get(unit.lower(), unit)


def apply(app: QtWidgets.QApplication) -> None:
    """Dark Fusion palette, stylesheet and pyqtgraph defaults for the whole application."""
    app.setStyle("Fusion")
    palette = QtGui.QPalette()
    roles = QtGui.QPalette.ColorRole
    for role, colour in [(roles.Window, PANEL), (roles.WindowText, TEXT), (roles.Base, BACKGROUND),
                         (roles.AlternateBase, CARD), (roles.Text, TEXT), (roles.Button, CARD),
                         (roles.ButtonText, TEXT), (roles.Highlight, ACCENT),
                         (roles.HighlightedText, BACKGROUND), (roles.ToolTipBase, CARD),
                         (roles.ToolTipText, TEXT), (roles.PlaceholderText, MUTED)]:
        palette.setColor(role, QtGui.QColor(colour))
    app.setPalette(palette)
    font = app.font()
    font.setPointSizeF(10)
    app.setFont(font)
    app.setStyleSheet(STYLESHEET)
    pg.setConfigOptions(background=PANEL, foreground=MUTED, antialias=False)
