"""The source interface every stream source implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from rtbci.stream import Chunk, StreamInfo


class SourceLost(Exception):
    """The stream vanished and the source cannot recover by itself: open it again."""


class Source(ABC):
    """A producer of chunks for one stream, driven by one thread (see ``rtbci.acquisition``).

    Lifecycle: ``open`` (repeatedly, until it returns the stream's info) → ``read`` until
    ``SourceLost`` or shutdown → ``close``.
    """

    #: config name of the source (``[[sources]] name``)
    name: str
    #: ``handler(timestamp_s, text)`` for markers that arrive inside the stream itself
    #: (a BrainFlow board's marker row), set by the engine; called from the reading thread
    marker_handler = None

    @abstractmethod
    def open(self, timeout: float) -> StreamInfo | None:
        """Connect; return the stream's info, or None if it did not appear within ``timeout`` s."""

    @abstractmethod
    def read(self, timeout: float = 0.0) -> Chunk | None:
        """Samples available now, waiting up to ``timeout`` s for the first (None if none).

        The arrays are views of the source's own buffers, valid until the next call.
        Raises ``SourceLost`` if the stream is gone for good.
        """

    def close(self) -> None:
        """Release the connection; ``open`` may be called again afterwards."""

    @abstractmethod
    def describe(self) -> str:
        """Human-readable identity, e.g. ``lsl name='BioSemi'``."""
