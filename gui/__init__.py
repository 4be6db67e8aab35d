"""The Qt/pyqtgraph display (``rtbci.gui``): live traces, decoder outputs and timing.

A separate process from the engine (``rtbci gui`` or ``python -m rtbci.gui``), fed by LSL and
MQTT; the engine never imports this package. Entry points: :func:`rtbci.gui.app.add_arguments`
and :func:`rtbci.gui.app.run`; the window is :class:`rtbci.gui.window.MainWindow`.
"""
