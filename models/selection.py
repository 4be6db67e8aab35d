"""``rtbci train auto``: which decoder suits this recording?

Every compatible family (:data:`AUTO_FAMILIES`: the class decoders that run at any rate and
channel count) is cross-validated on the recording's event-locked windows, each with a small
set of preprocessing candidates (:func:`preprocessing_candidates`: the family's own, wide-band
and none; for the closed-form families also each window's mean removed where no high-pass
does it). Folds are stratified by class over trials, or grouped by file when several files
are given (so a score says how the decoder does on a session it has not seen). The best mean
accuracy wins; it is refitted on all the windows and written as an ordinary checkpoint, which
the engine runs live and offline like any other. ``CKPT.metrics.json`` holds the whole table
and the choice, ``CKPT.png`` plots it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from rtbci.cluster import parallel_map
from rtbci.errors import RtbciError
from rtbci.models.families import Family, get_family
from rtbci.models.training import (
    TrainOptions,
    Windows,
    _classes_task,
    channel_table,
    class_metrics,
    count_parameters,
    fit_family,
    load_windows,
    make_contract,
    predict,
    save_trained,
    train_preprocess,
)

__all__ = ["AUTO_FAMILIES", "Candidate", "preprocessing_candidates", "select"]

AUTO_FAMILIES = ("linear", "riemann", "eegnet", "motor-gnn")
CLOSED_FORM = ("linear", "riemann")  # cheap to fit: they also try a window-mean baseline
NO_PREPROCESSING = {"bandpass": None, "notch": None, "resample_hz": None}
WIDE_BAND = (0.5, 45.0)  # Hz; the upper edge is lowered below Nyquist at low rates


@dataclass(frozen=True)
class Candidate:
    """One row of the table: a family with a preprocessing (``TrainOptions.preprocess``)."""

    family: str
    preprocessing: str  # "family" | "wide-band" | "none", "+ demean": window mean removed
    overrides: tuple[tuple[str, object], ...]
    demean: bool = False  # subtract each channel's mean over the whole window (--baseline)

    @property
    def name(self) -> str:
        return f"{self.family} / {self.preprocessing}"

    def options(self, opts: TrainOptions, family: Family) -> TrainOptions:
        """``opts`` with this candidate's preprocessing (and baseline)."""
        baseline = opts.window or family.window if self.demean else opts.baseline
        return replace(opts, preprocess=dict(self.overrides), baseline=baseline)


def preprocessing_candidates(family: Family, source_srate: float,
                             fixed: dict | None = None) -> list[Candidate]:
    """The family's own preprocessing, wide-band (:data:`WIDE_BAND`, no notch) and none (no
    filter, no resampling), without duplicates; ``fixed`` overrides (the user's
    ``--bandpass``/``--notch``/``--resample``) leave only the family's own, with them."""
    if fixed:
        return [Candidate(family.name, "as given", tuple(sorted(fixed.items())))]
    rate = family.srate or source_srate
    wide = {"bandpass": (WIDE_BAND[0], min(WIDE_BAND[1], 0.4 * rate)), "notch": None}
    none = dict(NO_PREPROCESSING)
    out, seen = [], set()
    for name, overrides in (("family", {}), ("wide-band", wide), ("none", none)):
        config = family.preprocess_config(**overrides)
        if config.model_dump_json() in seen:
            continue
        seen.add(config.model_dump_json())
        out.append(Candidate(family.name, name, tuple(sorted(overrides.items()))))
        if family.name in CLOSED_FORM and config.bandpass is None:
            out.append(Candidate(family.name, f"{name} + demean",
                                 tuple(sorted(overrides.items())), demean=True))
    return out


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


def select(opts: TrainOptions, families: tuple[str, ...] = AUTO_FAMILIES, k: int = 5) -> dict:
    """Cross-validate ``families`` × preprocessing on ``opts.data``, refit the best on all the
    windows and write it to ``opts.out`` (+ ``.metrics.json``, ``.png``).

    Returns the metrics document: ``table`` (one row per candidate: ``family``,
    ``preprocessing``, ``accuracy`` mean and ``sd`` over folds, ``folds``, ``seconds``, or
    ``error``), ``chance``, ``choice`` and the final fit's ``n_train`` and ``parameters``.
    """
    import torch
    from tqdm import tqdm

    started = time.perf_counter()
    quiet = replace(opts, progress=False)
    windows: dict[str, Windows] = {}
    candidates = _candidates(opts, families, windows)
    plan = []
    for cand in candidates:
        win = _windows(windows, cand, quiet)
        task = _classes_task(win, replace(opts, val_fraction=0.0))
        plan.append((cand, _key(cand, opts), folds(win, task["target"], k, opts.seed)))
    total = sum(len(p[2]) for p in plan)
    with tqdm(total=total, desc="train auto", unit="fit", disable=not opts.progress) as bar:
        rows = parallel_map(partial(_cross_validate, windows=windows, opts=quiet), plan,
                            done=lambda i, row: bar.update(len(plan[i][2])))
    scored = [r for r in rows if "accuracy" in r]
    if not scored:
        raise RtbciError("train auto: no candidate could be trained: "
                         + "; ".join(f"{r['family']} / {r['preprocessing']}: {r['error']}"
                                     for r in rows))
    best = max(scored, key=lambda r: (r["accuracy"], -r["sd"]))  # a tie: the steadier
    cand = next(c for c in candidates if (c.family, c.preprocessing) ==
                (best["family"], best["preprocessing"]))
    torch.manual_seed(opts.seed)
    win = windows[_key(cand, opts)]
    task = _classes_task(win, replace(opts, val_fraction=0.0))
    family = get_family(cand.family)
    final = cand.options(quiet, family)
    contract = make_contract(family, win, final, task)
    model, _, _ = fit_family(family, contract, win, task, np.ones(len(win.x), bool), final)
    metrics = {"auto": {"table": rows, "chance": _chance(task["target"]), "folds": k,
                        "choice": {"family": cand.family, "preprocessing": cand.preprocessing,
                                   "accuracy": best["accuracy"], "sd": best["sd"]},
                        "seconds": round(time.perf_counter() - started, 1)},
               "n_train": len(win.x), "n_val": 0, "channels": channel_table(win),
               "parameters": count_parameters(model)}
    save_trained(replace(final, val_fraction=0.0), contract, model, task, metrics, started,
                 final.lr or family.lr)
    plot_table(opts.out.with_name(opts.out.name + ".png"), metrics["auto"])
    return metrics


def _candidates(opts: TrainOptions, families: tuple[str, ...],
                windows: dict[str, Windows]) -> list[Candidate]:
    """Every family's candidates; the source's rate comes from its unprocessed windows (kept
    in ``windows``: the "none" candidates reuse them, so the files are read once)."""
    unknown = [f for f in families if f not in AUTO_FAMILIES]
    if unknown:
        raise RtbciError(f"--families: {unknown[0]!r} is not one train auto compares "
                         f"({', '.join(AUTO_FAMILIES)})")
    raw = Candidate(families[0], "none", tuple(sorted(NO_PREPROCESSING.items())))
    srate = _windows(windows, raw, replace(opts, progress=False)).info.srate
    return [c for f in families
            for c in preprocessing_candidates(get_family(f), srate, opts.preprocess)
            if not (c.demean and opts.baseline is not None)]  # the user's --baseline holds


def _key(cand: Candidate, opts: TrainOptions) -> str:
    """Windows are shared by candidates whose preprocessing resolves alike."""
    family = get_family(cand.family)
    config = train_preprocess(family, cand.options(opts, family))
    return config.model_dump_json() + repr(opts.window or family.window) + repr(cand.demean)


def _windows(cache: dict, cand: Candidate, opts: TrainOptions) -> Windows:
    key = _key(cand, opts)
    if key not in cache:
        family = get_family(cand.family)
        cache[key] = load_windows(opts.data, family, cand.options(opts, family))
    return cache[key]


def _cross_validate(planned: tuple[Candidate, str, list[np.ndarray]],
                    windows: dict[str, Windows], opts: TrainOptions) -> dict:
    """One row of the table: ``planned = (candidate, its windows' key, training masks)``,
    fitted and scored fold by fold (a Ray task with ``--ray``)."""
    import torch

    cand, key, masks = planned
    win = windows[key]
    task = _classes_task(win, replace(opts, val_fraction=0.0))
    family = get_family(cand.family)
    opts = cand.options(opts, family)
    row = {"family": cand.family, "preprocessing": cand.preprocessing}
    started, scores = time.perf_counter(), []
    try:
        for mask in masks:
            torch.manual_seed(opts.seed)
            contract = make_contract(family, win, opts, task)
            model, _, _ = fit_family(family, contract, win, task, mask, opts)
            out = predict(model, win.x[~mask], win.subject[~mask])
            y = task["target"][~mask]
            scores.append(class_metrics(out, y, task["n_outputs"])["accuracy"])
    except (RtbciError, ValueError, RuntimeError) as exc:  # e.g. a window too short for it
        row["error"] = str(exc).splitlines()[0]
        return row
    row.update(accuracy=float(np.mean(scores)), sd=float(np.std(scores)), folds=len(scores),
               seconds=round(time.perf_counter() - started, 1))
    return row


def _chance(y: np.ndarray) -> float:
    return float(np.bincount(y).max() / len(y))


def format_table(auto: dict, channels: dict | None = None) -> list[str]:
    """The table as printed by ``rtbci train auto``: one line per candidate, best marked,
    then the input channels (``channels``: the metrics' ``used`` and ``left_out``)."""
    choice = auto["choice"]
    lines = [f"{'family':<10} {'preprocessing':<20} {'accuracy':>15}  {'time':>7}"]
    for r in auto["table"]:
        mark = " ← chosen" if (r["family"], r["preprocessing"]) == (
            choice["family"], choice["preprocessing"]) else ""
        score = (f"{r['accuracy']:.3f} ± {r['sd']:.3f}" if "accuracy" in r
                 else f"failed: {r['error']}")
        took = f"{r['seconds']:6.1f}s" if "seconds" in r else ""
        lines.append(f"{r['family']:<10} {r['preprocessing']:<20} {score:>15}  {took:>7}{mark}")
    lines.append(f"chance {auto['chance']:.3f} (majority class); {auto['folds']}-fold "
                 f"cross-validation, {auto['seconds']:.0f} s in all")
    if channels is not None:
        from rtbci.models.channels import summary

        lines.append(summary(channels["used"], channels["left_out"]))
    return lines


def plot_table(path, auto: dict) -> None:
    """``CKPT.png``: cross-validated accuracy (mean ± sd) per candidate, with chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in auto["table"] if "accuracy" in r]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    names = [f"{r['family']} / {r['preprocessing']}" for r in rows]
    chosen = [(r["family"], r["preprocessing"]) == (auto["choice"]["family"],
                                                   auto["choice"]["preprocessing"])
              for r in rows]
    ax.barh(names, [r["accuracy"] for r in rows], xerr=[r["sd"] for r in rows],
            color=["C1" if c else "C0" for c in chosen])
    ax.axvline(auto["chance"], color="0.4", linestyle="--", label="chance")
    ax.set(xlim=(0, 1), xlabel=f"accuracy ({auto['folds']}-fold cross-validation)",
           title="rtbci train auto")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
