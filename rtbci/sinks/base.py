"""The sink interface."""

from __future__ import annotations

from abc import ABC, abstractmethod

from rtbci.messages import Result


class Sink(ABC):
    """A destination for results.

    Thread-safety contract (which thread calls what):

    - on the engine's event loop thread, one call at a time: :meth:`start`, :meth:`publish`,
      :meth:`status_changed`, :meth:`stats_tick`, :meth:`stats` and :meth:`close`. These
      need no lock among themselves. Never on a decoder's worker thread: results reach the
      loop first (except for ``worker_safe`` sinks' :meth:`publish`, below).
    - from other threads, concurrently with the loop: :meth:`stream_added` (a source's
      acquisition thread, once per stream, before that stream's first result) and
      :meth:`marker` (a marker reader thread, one per source). State they share with the
      loop-side methods must be protected (a lock, or a thread-safe queue / deque append);
      they must not block. Offline replay calls both on the loop thread.
    - :meth:`start` is awaited before any other call; nothing is called after :meth:`close`
      returns, except that :meth:`stats` may be read for the final statistics.

    ``publish`` must return at once (no I/O wait): a sink that talks to the network queues
    the message and sends it from its own task, so a slow consumer never delays a decoder.

    A sink with ``worker_safe = True`` instead gets :meth:`publish` on the decoder's worker
    thread, as soon as the result is complete (no trip through the event loop), concurrently
    for different decoders: it must be thread-safe (the LSL sink: one outlet per decoder).
    """

    kind: str = "sink"
    worker_safe: bool = False

    async def start(self, status: dict) -> None:
        """Connect / open; ``status`` is the engine status (session, streams, decoders)."""

    def stream_added(self, name: str, stream) -> None:
        """Source ``name``'s :class:`~rtbci.stream.Stream` now exists (its acquisition
        thread live, the loop offline; must not block)."""

    def marker(self, source: str, timestamp: float, text: str) -> None:
        """A marker arrived on ``source``'s marker stream (its marker reader thread live, the
        loop offline; must not block)."""

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

    def watched(self) -> list:
        """The threads and tasks this sink runs, as :class:`rtbci.health.Watched` entries
        (called once after :meth:`start`): the engine reports one that dies or stalls."""
        return []
