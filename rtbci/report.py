"""Reporting: the live statistics lines, and scoring class decoders against markers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rtbci.errors import RtbciError
from rtbci.sinks.base import Sink

if TYPE_CHECKING:
    from rtbci.config import Config
    from rtbci.devices.recording import Recording
    from rtbci.engine import Engine


def format_stream_line(name: str, stats: dict) -> str:
    lat = stats.get("ingest_latency_ms") or {}
    return (f"{name:<12} {stats.get('state', ''):<9} {stats['samples']:>10} samples "
            f"{stats['rate_hz']:>9.1f} Hz  gaps {stats['gaps']:<3} overflows "
            f"{stats['overflows']:<3} markers {stats.get('markers', 0):<4} "
            f"ingest p50 {lat.get('p50', float('nan')):5.2f} ms "
            f"p99 {lat.get('p99', float('nan')):5.2f} ms")


def print_live_stats(engine) -> None:
    stats = engine.stats()
    for name, entry in stats["streams"].items():
        print(format_stream_line(name, entry), flush=True)
    for name, entry in stats["threads"].items():
        print(format_thread_line(name, entry), flush=True)


def format_thread_line(name: str, entry: dict) -> str:
    """A console line for an engine thread that died or stalled (``threads`` in the
    statistics), e.g. ``thread markers name='eeg-markers'  DEAD (SystemExit: 3)``."""
    state = entry["state"].upper() if entry["state"] != "ok" else "recovered"
    why = f" ({entry['why']})" if entry["why"] else ""
    stalls = f"  stalls {entry['stalls']}" if entry["stalls"] else ""
    return f"thread {name}  {state}{why}{stalls}"


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


def read_replay(files: list) -> Recording:
    """The recordings ``files`` (paths, or ``bids:ROOT?ENTITIES``) read and merged into one,
    as ``--replay`` takes them."""
    from rtbci.devices.recording import merge_recordings, read_recording
    from rtbci.export import expand_data

    return merge_recordings([read_recording(f) for f in expand_data(files)])


def file_digest(path: Path) -> str | None:
    """The SHA-256 of a file's bytes (hex), None for a directory (a session) or an
    unreadable path: how a checkpoint recognises its training files wherever they are."""
    import hashlib

    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_files(config: Config) -> dict[str, tuple[set[str], set[str]]]:
    """Per decoder of ``config`` with a checkpoint that lists its training data
    (``contract.training``): the resolved paths and the SHA-256 digests of those files."""
    from rtbci.models import checkpoint_path, is_checkpoint
    from rtbci.models.runtimes.select import importable

    out: dict[str, tuple[set[str], set[str]]] = {}
    if not importable("torch"):
        return out
    from rtbci.models.checkpoint import load_checkpoint

    for dec in config.decoders:
        if not is_checkpoint(dec.model):
            continue
        try:
            ckpt = load_checkpoint(checkpoint_path(dec.model, config.base_dir))
        except RtbciError:
            continue  # the engine names an unreadable checkpoint itself
        training = ckpt.contract.training
        if training.get("data"):
            out[dec.name] = ({str(Path(f).resolve()) for f in training["data"]},
                             {d for d in training.get("data_sha256", []) if d})
    return out


def mark_trained_on(config: Config, files: list[Path], scores: dict) -> list[str]:
    """Set ``trained_on`` in each scored decoder's entry of ``scores`` whose checkpoint lists
    its training files: True when one of the replayed ``files`` is among them (same path or
    same bytes). Returns one warning line per such decoder."""
    known = training_files(config)
    digests: dict[Path, str | None] = {}
    lines = []
    for name, (paths, hashes) in known.items():
        hits = []
        for f in files:
            if str(Path(f).resolve()) in paths or (
                    hashes and digests.setdefault(f, file_digest(f)) in hashes):
                hits.append(Path(f).name)
        if name in scores:
            scores[name]["trained_on"] = bool(hits)
        if hits:
            lines.append(f"decoder {name!r}: {', '.join(hits)} is training data of its "
                         "checkpoint: its scores here are not a test (trained_on: true)")
    return lines


def score_replay(config: Config, recording: Recording, speed: float | None = None,
                 progress: Callable[[float], None] | None = None) -> tuple[Engine, dict, dict]:
    """Run the offline engine on ``recording`` and score its class decoders against the
    markers: ``(engine, stats, scores)`` with the ``--stats-json`` document and
    :meth:`Scorer.report`. The one function behind ``rtbci run --replay --report`` and
    each file of ``rtbci evaluate``."""
    from rtbci.engine import Engine

    scorer = Scorer()
    engine = Engine(config, sinks=[scorer])
    stats = asyncio.run(engine.run_offline(recording, speed, progress))
    return engine, stats, scorer.report()
