"""The sink interface."""

from __future__ import annotations

from abc import ABC, abstractmethod

from rtbci.messages import Result


class Sink(ABC):
    """A destination for results. All methods are called on the engine's event loop.

    ``publish`` must return at once (no I/O wait): a sink that talks to the network queues
    the message and sends it from its own task, so a slow consumer never delays a decoder.
    """

    kind: str = "sink"

    async def start(self, status: dict) -> None:
        """Connect / open; ``status`` is the engine status (session, streams, decoders)."""

    def stream_added(self, name: str, stream) -> None:
        """Source ``name``'s :class:`~rtbci.stream.Stream` now exists (any thread)."""

    def marker(self, source: str, timestamp: float, text: str) -> None:
        """A marker arrived on ``source``'s marker stream (any thread; must not block)."""

    def status_changed(self, status: dict) -> None:
        """The engine status changed (e.g. a decoder attached when its stream appeared)."""

    def stats_tick(self, stats: dict) -> None:
        """The engine statistics (the ``--stats-json`` document), every ``stats_interval_s``."""

    @abstractmethod
    def publish(self, result: Result) -> None:
        """Hand over one result (non-blocking)."""

    async def close(self) -> None:
        """Flush what can be flushed quickly and disconnect."""

    def stats(self) -> dict:
        """Counters for ``--stats-json`` (e.g. delivered / dropped)."""
        return {}
