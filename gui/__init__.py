"""The Qt/pyqtgraph display (``rtbci.gui``)."""
