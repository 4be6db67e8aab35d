"""Scoring decoders against their markers' labels: a result's true and predicted label,
the :class:`Scorer` sink (``--report``) and the chance figures of an accuracy.

Below the sinks and the engine: :mod:`rtbci.sinks.console` and :mod:`rtbci.report` use it.
"""

from __future__ import annotations

import numpy as np

from rtbci.sinks.base import Sink

__all__ = ["Scorer", "chance_figures", "format_accuracy", "predicted_label", "true_label"]


def chance_figures(correct: int, true_counts, n_classes: int) -> dict:
    """What an accuracy of ``correct`` right out of ``sum(true_counts)`` scored trials means.

    Parameters
    ----------
    correct : int
        Trials predicted right.
    true_counts : sequence of int
        Scored trials per true class (classes with none may be left out).
    n_classes : int
        Classes the decoder can predict.

    Returns
    -------
    dict
        ``chance``: the majority class's share of the scored trials (what always predicting
        that class scores); ``chance_uniform``: ``1 / n_classes``, named as such;
        ``ci95``: ``[low, high]``, the exact (Clopper-Pearson) 95 % binomial interval of the
        accuracy.
    """
    from scipy.stats import binomtest

    counts = [int(c) for c in true_counts]
    n = sum(counts)
    interval = binomtest(int(correct), n).proportion_ci(0.95)
    return {"chance": max(counts) / n, "chance_uniform": 1.0 / n_classes,
            "ci95": [float(interval.low), float(interval.high)]}


def format_accuracy(accuracy: float, figures: dict) -> str:
    """``accuracy 0.650 (95 % CI 0.408–0.846; chance 0.405 majority class, 1/n 0.250)``."""
    low, high = figures["ci95"]
    return (f"accuracy {accuracy:.3f} (95 % CI {low:.3f}–{high:.3f}; chance "
            f"{figures['chance']:.3f} majority class, 1/n {figures['chance_uniform']:.3f})")


def true_label(result) -> str | None:
    """What a marker-locked result should have found: the label its decoder's ``on_marker``
    pattern gave the marker (``Result.label``, :mod:`rtbci.events`: ``stim/left`` → ``left``),
    if it is one of a class decoder's labels; any candidate label for a retrieval decoder
    (``image/i42`` → ``i42``)."""
    truth = getattr(result, "label", None)
    if truth is None or not result.labels:
        return None
    return truth if result.kind == "retrieval" or truth in result.labels else None


def predicted_label(result) -> str | None:
    """The argmax class of a ``classes`` result; the best candidate of a ``retrieval`` one."""
    if result.kind == "retrieval":
        return result.labels[0] if result.labels else None
    if result.probabilities is None or not result.labels:
        return None
    return result.labels[int(np.argmax(result.probabilities))]


class Scorer(Sink):
    """A sink scoring class decoders against their markers' labels (``--report``)."""

    kind = "scorer"

    def __init__(self):
        self.scores: dict[str, dict] = {}

    def publish(self, result) -> None:
        truth = true_label(result)
        if truth is None:
            return
        entry = self.scores.setdefault(result.decoder, {
            "n": 0, "correct": 0, "kind": result.kind, "labels": list(result.labels),
            "confusion": {}, "in_top_k": 0, "k": len(result.labels)})
        predicted = predicted_label(result)
        entry["n"] += 1
        entry["correct"] += predicted == truth
        if result.kind == "retrieval":
            entry["in_top_k"] += truth in result.labels
            return
        row = entry["confusion"].setdefault(truth, {})
        row[predicted] = row.get(predicted, 0) + 1

    def report(self) -> dict:
        """Per decoder: classes ``{"n", "accuracy", "chance", "chance_uniform", "ci95",
        "labels", "confusion": {true: {pred: n}}}`` (:func:`chance_figures`: chance is the
        majority class's share of the scored events); retrieval ``{"n", "top1", "top_k",
        "k"}``."""
        return {name: self._entry(e) for name, e in self.scores.items() if e["n"]}

    @staticmethod
    def _entry(e: dict) -> dict:
        if e["kind"] == "retrieval":
            return {"n": e["n"], "top1": e["correct"] / e["n"], "top_k": e["in_top_k"] / e["n"],
                    "k": e["k"]}
        counts = [sum(row.values()) for row in e["confusion"].values()]
        return {"n": e["n"], "accuracy": e["correct"] / e["n"],
                **chance_figures(e["correct"], counts, len(e["labels"])),
                "labels": e["labels"], "confusion": e["confusion"]}
