"""Drawing many traces fast: min/max bins computed once, rasterised with numpy, one image.

QPainter stroking a curve of 306 channels × 2 points per pixel column (~600 k points) takes
50–70 ms on a 2-core machine, whatever pyqtgraph options are used: too slow for 30 fps. So
the traces are rasterised here instead, at a cost set by the plot's size in pixels:

- :class:`BinCache` reduces every run of ``k`` samples of a ring buffer to its minimum and
  maximum, once per bin (bins are aligned to the absolute sample counter, so a complete bin
  never changes; each frame only reduces the samples that arrived since the last one);
- :func:`span_rows` maps each bin of each trace to the pixel rows from its minimum to its
  maximum, widened to meet the previous bin so that the trace is continuous;
- :func:`coverage` lights those pixels (a difference array per column, then a cumulative
  sum down the rows);
- :class:`RasterItem` shows the result as one ``QImage`` of the plot's size in pixels.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui

from rtbci.ringbuffer import RingBuffer


def minmax_bins(data: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and maximum of each run of ``k`` samples.

    Parameters
    ----------
    data : array, shape (n_bins * k, n_channels)
    k : int

    Returns
    -------
    mins, maxs : arrays, shape (n_bins, n_channels)
    """
    block = data.reshape(len(data) // k, k, data.shape[1])
    return block.min(axis=1), block.max(axis=1)


class BinCache:
    """Min/max of the ``k``-sample bins of a ring buffer, each computed once.

    Bin ``b`` holds samples ``b·k … b·k + k − 1`` (absolute sample counters). The cache keeps
    the newest ``capacity`` bins in a :class:`~rtbci.ringbuffer.RingBuffer` of shape
    ``(capacity, 2 · n_channels)`` (minima, then maxima), stamped with the timestamp of each
    bin's first sample.

    Parameters
    ----------
    ring : RingBuffer
        The samples; call :meth:`update` while no one writes to it.
    k : int
        Samples per bin.
    capacity : int
        Bins kept.
    """

    def __init__(self, ring: RingBuffer, k: int, capacity: int):
        self.ring, self.k, self.capacity = ring, k, capacity
        self.bins = RingBuffer(capacity, 2 * ring.n_channels)
        self.next_bin = 0  # absolute index of the bin the next update starts with

    def __repr__(self) -> str:
        return f"<BinCache: k={self.k} | bins up to {self.next_bin}>"

    def update(self) -> int:
        """Reduce the complete bins that arrived since the last call; return the bins held."""
        ring, k = self.ring, self.k
        count = ring.count  # one snapshot: the acquisition thread writes on
        end = count // k
        first = max(-(-max(0, count - ring.capacity) // k), end - self.capacity)
        if self.next_bin < first:  # fell behind (or first call): the held bins are too old
            self.bins = RingBuffer(self.capacity, 2 * ring.n_channels)
            self.next_bin = first
        if end > self.next_bin:
            data, times = ring.window(self.next_bin * k, end * k)
            mins, maxs = minmax_bins(data, k)
            self.bins.write(np.concatenate([mins, maxs], axis=1), times[::k])
            self.next_bin = end
        return min(self.bins.count, self.capacity)

    def latest(self, n_bins: int, lo: int, hi: int):
        """The newest ``n_bins`` bins of channels ``lo … hi − 1``.

        Returns
        -------
        mins, maxs : array views, shape (n_bins, hi − lo)
            Valid until the next :meth:`update`.
        times : array view, shape (n_bins,)
            Timestamp of each bin's first sample.
        """
        data, times = self.bins.latest(n_bins)
        n = self.ring.n_channels
        return data[:, lo:hi], data[:, n + lo:n + hi], times


def span_rows(y_min: np.ndarray, y_max: np.ndarray, y0: float, y1: float,
              height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows each bin of each trace covers, widened to meet the previous bin.

    Parameters
    ----------
    y_min, y_max : array, shape (n_bins, n_traces)
        Bin minima and maxima in view coordinates.
    y0, y1 : float
        View coordinates of the bottom and top of the image.
    height : int
        Image height in pixels.

    Returns
    -------
    lo, hi : int arrays, shape (n_bins, n_traces)
        First and last row, shifted by one: rows ``1 … height`` are the image, ``0`` and
        ``height + 1`` collect what lies below and above it.
    """
    lo, hi = y_min.copy(), y_max.copy()
    np.minimum(lo[1:], y_max[:-1], out=lo[1:])  # reach down (or up) to the previous bin
    np.maximum(hi[1:], y_min[:-1], out=hi[1:])
    px = y_min.dtype.type(height / (y1 - y0))
    rows = []
    shift = y_min.dtype.type(1.0 - y0 * px)  # rows = y · px + shift
    for y in (lo, hi):
        y *= px
        y += shift
        np.clip(y, 0, height + 1, out=y)
        rows.append(y.astype(np.intp))  # truncation == floor: y ≥ 0
    return rows[0], rows[1]


def coverage(lo: np.ndarray, hi: np.ndarray, cols: np.ndarray, height: int,
             width: int) -> np.ndarray:
    """Light the pixels of spans ``lo … hi`` (from :func:`span_rows`) in columns ``cols``.

    Parameters
    ----------
    lo, hi : int arrays, shape (n_bins, n_traces)
    cols : int array, shape (n_bins,)
        Pixel column of each bin (several bins may share one).
    height, width : int
        Image size in pixels.

    Returns
    -------
    array of bool, shape (height, width)
        Row 0 is the bottom of the image.
    """
    rows = height + 3  # counted column by column: each column's rows are contiguous
    first = cols.astype(np.intp)[:, None] * rows
    starts, ends = lo + first, hi + first
    ends += 1
    diff = np.bincount(starts.ravel(), minlength=rows * width)
    diff -= np.bincount(ends.ravel(), minlength=rows * width)
    diff = diff.reshape(width, rows)
    np.cumsum(diff, axis=1, out=diff)
    return np.ascontiguousarray((diff[:, 1:height + 1] > 0).T)


class RasterItem(pg.GraphicsObject):
    """An indexed-colour image (``uint8`` indices into a colour table) over a view rectangle.

    Parameters
    ----------
    colours : sequence of colours
        Colour of each index value (anything ``pg.mkColor`` takes).
    """

    def __init__(self, colours):
        super().__init__()
        self._table = np.array([pg.mkColor(c).rgba() for c in colours], dtype=np.uint32)
        self._rect = QtCore.QRectF()
        self._image: QtGui.QImage | None = None
        self._pixels: np.ndarray | None = None
        self.indices: np.ndarray | None = None

    def set_image(self, indices: np.ndarray, rect: QtCore.QRectF) -> None:
        """Show ``indices`` (shape ``(height, width)``, row 0 at ``rect``'s lower y) in ``rect``."""
        self.indices = indices
        height, width = indices.shape
        if self._pixels is None or self._pixels.shape != indices.shape:
            self._pixels = np.empty(indices.shape, dtype=np.uint32)
            self._image = QtGui.QImage(self._pixels.data, width, height, 4 * width,
                                       QtGui.QImage.Format.Format_RGB32)
        np.take(self._table, indices, out=self._pixels)  # the QImage shares this memory
        if rect != self._rect:
            self.prepareGeometryChange()
            self._rect = QtCore.QRectF(rect)
        self.update()

    def boundingRect(self) -> QtCore.QRectF:  # noqa: N802 - Qt's API
        return self._rect

    def paint(self, painter: QtGui.QPainter, *args) -> None:
        if self._image is not None:
            painter.drawImage(self._rect, self._image)
