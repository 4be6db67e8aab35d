"""Held-out windows and what their scores mean: validation splits (by trial or by item),
cross-validation folds and the class metrics (accuracy, chance, its 95 % interval)."""

from __future__ import annotations

import numpy as np

from rtbci.errors import RtbciError
from rtbci.models.windows import Windows
from rtbci.scoring import chance_figures

__all__ = ["class_metrics", "folds", "split_items", "split_trials"]


def split_trials(labels: list[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean validation mask, stratified by label (each label keeps ≥ 1 training trial)."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), bool)
    arr = np.array(labels)
    for label in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(arr == label))
        val[idx[:min(len(idx) - 1, round(fraction * len(idx)))]] = True
    return val


def split_items(labels: list[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean validation mask holding out whole items (zero-shot retrieval; at least two
    unless ``fraction`` is 0: then none)."""
    if fraction == 0:
        return np.zeros(len(labels), bool)
    items = sorted(set(labels))
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(items)[:max(2, round(fraction * len(items)))])
    return np.array([label in held for label in labels])


def class_metrics(probabilities: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """``accuracy``, ``n_val``, ``chance`` (the majority class's share of ``y``),
    ``chance_uniform`` (1/n) and ``ci95`` (the accuracy's 95 % binomial interval):
    :func:`rtbci.scoring.chance_figures`."""
    correct = int(np.sum(probabilities.argmax(1) == y))
    return {"accuracy": correct / len(y), "n_val": int(len(y)),
            **chance_figures(correct, np.bincount(y, minlength=n_classes), n_classes)}


def folds(win: Windows, y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Boolean training masks of ``k``-fold cross-validation: stratified by class, grouped by
    file when the windows come from several files (at most one fold per file)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = np.bincount(y)
    if counts.min() < 2:
        name = sorted(set(win.labels))[int(counts.argmin())]
        raise RtbciError(f"--events: class {name!r} has {counts.min()} trial; "
                         "cross-validation needs at least 2 per class (--events can leave "
                         "it out)")
    n_files = len(np.unique(win.file))
    if n_files > 1:
        splitter = StratifiedGroupKFold(n_splits=min(k, n_files), shuffle=True,
                                        random_state=seed)
        splits = splitter.split(win.x, y, groups=win.file)
    else:
        splits = StratifiedKFold(n_splits=min(k, counts.min()), shuffle=True,
                                 random_state=seed).split(win.x, y)
    masks = []
    for train_idx, _ in splits:
        mask = np.zeros(len(y), bool)
        mask[train_idx] = True
        masks.append(mask)
    return masks
