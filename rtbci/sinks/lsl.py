"""``lsl``: each decoder's results as an LSL outlet (layout in docs/messages.md).

A decoder's outlet is made when the engine status lists it, which can come after its first
results (the status is sent once every decoder of the source is built: a slow compile of
another decoder delays it). Such results are held, at most :data:`PENDING_RESULTS` per
decoder (beyond: the oldest dropped and counted), and pushed in order once the new outlet
has a consumer, or after :data:`HOLD_S` seconds without one; later results of that decoder
queue behind them.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import numpy as np
import pylsl

from rtbci.messages import Result
from rtbci.sinks.base import Sink
from rtbci.sinks.configs import LSLSinkConfig

log = logging.getLogger(__name__)

PENDING_RESULTS = 1000  # per decoder, held until its outlet exists (oldest dropped beyond)
HOLD_S = 10.0  # held results wait this long for a consumer of the new outlet


def channel_labels(decoder: dict) -> list[str]:
    """Channel names of a decoder's result outlet, from its status entry.

    ``classes``: one probability per label; ``retrieval``: ``id1..idK`` then
    ``score1..scoreK``; ``embedding``: ``e0..e{n-1}``; then always ``seq`` and ``latency_ms``.
    """
    kind, size = decoder["kind"], decoder["output_size"]
    if kind == "classes":
        names = [f"p_{label}" for label in decoder["labels"]]
    elif kind == "retrieval":
        k = size // 2
        names = [f"id{i + 1}" for i in range(k)] + [f"score{i + 1}" for i in range(k)]
    else:
        names = [f"e{i}" for i in range(size)]
    return [*names, "seq", "latency_ms"]


class LSLSink(Sink):
    """One irregular-rate float32 outlet per decoder, type ``rtbci.result``.

    Each result is one sample stamped with ``window_end`` (the LSL time of the window's last
    sample), so a client can align it with the data it came from. Results that come before
    their decoder's outlet are held (module docstring); ``stats()``: ``sent``, ``queued``
    (held), ``dropped`` (held beyond the bound, never given an outlet, or refused by liblsl).
    """

    kind = "lsl"
    worker_safe = True  # each decoder's worker pushes to its own outlet (liblsl is thread-safe)

    def __init__(self, config: LSLSinkConfig, session: str):
        self.config, self.session = config, session
        self.outlets: dict[str, tuple[pylsl.StreamOutlet, np.ndarray]] = {}
        self.sent: dict[str, int] = {}  # per decoder: one writer thread each
        self._lock = threading.RLock()  # guards _pending, _hold_until, _dropped
        self._pending: dict[str, collections.deque[Result]] = {}
        self._hold_until: dict[str, float] = {}
        self._dropped = 0
        self._failed: set[str] = set()  # decoders whose push failed (logged once)

    async def start(self, status: dict) -> None:
        self.status_changed(status)

    def status_changed(self, status: dict) -> None:
        for name, decoder in status.get("decoders", {}).items():
            if name not in self.outlets and "error" not in decoder:
                self.add_decoder(name, decoder)
        self._flush_due()

    def stats_tick(self, stats: dict) -> None:
        self._flush_due()

    def add_decoder(self, name: str, decoder: dict) -> None:
        labels = channel_labels(decoder)
        info = pylsl.StreamInfo(f"{self.config.prefix}-{self.session}-{name}", "rtbci.result",
                                len(labels), pylsl.IRREGULAR_RATE, pylsl.cf_float32,
                                f"{self.config.prefix}-{self.session}-{name}")
        channels = info.desc().append_child("channels")
        for label in labels:
            channels.append_child("channel").append_child_value("label", label)
        info.desc().append_child_value("kind", decoder["kind"])
        info.desc().append_child_value("session", self.session)
        entry = (pylsl.StreamOutlet(info), np.zeros(len(labels), np.float32))
        with self._lock:
            if name in self._pending:
                self._hold_until[name] = time.monotonic() + HOLD_S
            self.outlets[name] = entry

    def publish(self, result: Result) -> None:
        """Push one result on its decoder's outlet, or hold it (any worker thread)."""
        name = result.decoder
        entry = self.outlets.get(name)
        if entry is None or name in self._pending:
            with self._lock:
                entry = self.outlets.get(name)
                if entry is None or name in self._pending:
                    self._hold(result)
                    if entry is not None:
                        self._flush(name, entry)
                    return
        self._push(entry, result)

    def _hold(self, result: Result) -> None:
        """Keep a result until its outlet can take it (under the lock)."""
        held = self._pending.setdefault(result.decoder,
                                        collections.deque(maxlen=PENDING_RESULTS))
        if len(held) == PENDING_RESULTS:
            self._dropped += 1  # the deque evicts the oldest
            log.warning("LSL sink: more than %d results of %r before its outlet; dropping "
                        "the oldest", PENDING_RESULTS, result.decoder)
        held.append(result)

    def _flush(self, name: str, entry, force: bool = False) -> None:
        """Push ``name``'s held results once its outlet has a consumer or the hold is over
        (under the lock)."""
        if not (force or entry[0].have_consumers()
                or time.monotonic() >= self._hold_until.get(name, 0.0)):
            return
        for result in self._pending.get(name, ()):  # a worker waits: order is kept
            self._push(entry, result)
        self._pending.pop(name, None)
        self._hold_until.pop(name, None)

    def _flush_due(self) -> None:
        with self._lock:
            for name in list(self._pending):
                if name in self.outlets:
                    self._flush(name, self.outlets[name])

    def _push(self, entry, result: Result) -> None:
        try:
            self._push_sample(entry, result)
        except Exception as exc:  # noqa: BLE001 - e.g. a liblsl that refuses the sample
            with self._lock:
                self._dropped += 1
                first = result.decoder not in self._failed
                self._failed.add(result.decoder)
            if first:
                log.error("LSL sink: cannot push a result of %r (%s: %s); such results are "
                          "dropped and counted", result.decoder, type(exc).__name__, exc)
            return
        self.sent[result.decoder] = self.sent.get(result.decoder, 0) + 1

    def _push_sample(self, entry, result: Result) -> None:
        outlet, sample = entry
        if result.kind == "classes":
            values = result.probabilities
        elif result.kind == "retrieval":
            values = np.concatenate([result.ids, result.scores])
        else:
            values = result.embedding
        n = len(sample) - 2
        sample[:n] = values[:n]
        sample[n], sample[n + 1] = result.seq, result.latency_ms
        outlet.push_chunk(sample, result.window_end)  # one sample, zero copy

    async def close(self) -> None:
        """Push what is held for existing outlets; count the rest as dropped."""
        with self._lock:
            for name in list(self._pending):
                if name in self.outlets:
                    self._flush(name, self.outlets[name], force=True)
            lost = sum(len(held) for held in self._pending.values())
            if lost:
                log.warning("LSL sink: %d results of %s never got an outlet; dropped", lost,
                            ", ".join(map(repr, self._pending)))
            self._dropped += lost
            self._pending.clear()
        self.outlets.clear()

    def stats(self) -> dict:
        """``sent``, ``queued`` (held until an outlet takes them), ``dropped``."""
        with self._lock:
            queued = sum(len(held) for held in self._pending.values())
            dropped = self._dropped
        return {"sent": sum(list(self.sent.values())),  # a snapshot: workers may add keys
                "queued": queued, "dropped": dropped}
