"""What the display knows about each decoder: its latest result and recent latencies (no Qt)."""

from __future__ import annotations

from collections import deque

import numpy as np

from rtbci.latency import percentiles

__all__ = ["DecoderState", "percentiles", "true_class"]


def true_class(message: dict) -> str | None:
    """The class a marker-locked result's marker names: the ``label`` its decoder's
    ``on_marker`` pattern gave it (:mod:`rtbci.events`, e.g. ``stim/left`` → ``left``)."""
    return message.get("label")


class DecoderState:
    """Results of one decoder as received by the display.

    Parameters
    ----------
    name : str
        Decoder name.
    history : int
        Number of recent results whose latencies are kept.

    Attributes
    ----------
    latest : dict | None
        The newest result message.
    received : int
        Results received since the display started.
    engine_ms, e2e_ms : deque of float
        Engine latency (``t_published − t_arrived``) and end-to-end latency (receive time −
        ``window_end``) of the last ``history`` results, in ms.
    correct, scored : int
        For class decoders whose marker names the true class: right predictions, and trials.
    true_counts : dict of str to int
        Scored trials per true class (the majority class's share is chance).
    """

    RATE_WINDOW_S = 2.0

    def __init__(self, name: str, history: int = 500):
        self.name = name
        self.latest: dict | None = None
        self.received = 0
        self.engine_ms: deque[float] = deque(maxlen=history)
        self.e2e_ms: deque[float] = deque(maxlen=history)
        self._arrivals: deque[float] = deque(maxlen=4096)
        self.correct = self.scored = 0
        self.true_counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<DecoderState: {self.name} | {self.received} results>"

    def add(self, message: dict, received_at: float) -> None:
        """Record a result received at ``received_at`` (seconds, LSL clock)."""
        engine = (message["t_published"] - message["t_arrived"]) * 1e3
        e2e = (received_at - message["window_end"]) * 1e3
        self.latest = message
        self.received += 1
        self.engine_ms.append(engine)
        self.e2e_ms.append(e2e)
        self._arrivals.append(received_at)
        self._score(message)

    def _score(self, message: dict) -> None:
        truth = true_class(message)
        probabilities, labels = message.get("probabilities"), message.get("labels")
        if truth is None or probabilities is None or not labels or truth not in labels:
            return
        self.scored += 1
        self.correct += labels[int(np.argmax(probabilities))] == truth
        self.true_counts[truth] = self.true_counts.get(truth, 0) + 1

    def chance(self) -> dict | None:
        """The running accuracy's chance figures (:func:`rtbci.report.chance_figures`:
        majority class of the scored trials, 1/n, 95 % interval); None before a trial."""
        from rtbci.report import chance_figures

        if not self.scored:
            return None
        return chance_figures(self.correct, list(self.true_counts.values()),
                              len(self.latest["labels"]))

    def rate(self, now: float) -> float:
        """Results per second received over the last ``RATE_WINDOW_S`` before ``now``."""
        recent = [t for t in self._arrivals if t > now - self.RATE_WINDOW_S]
        return len(recent) / self.RATE_WINDOW_S
