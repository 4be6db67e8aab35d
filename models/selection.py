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
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from rtbci.cluster import parallel_map, session
from rtbci.errors import RtbciError
from rtbci.models.artefacts import channel_table, count_parameters, make_contract, save_trained
from rtbci.models.families import Family, get_family
from rtbci.models.fitting import classes_task, fit_family, predict, training_threads
from rtbci.models.options import TrainOptions, train_preprocess
from rtbci.models.selection_report import plot_table
from rtbci.models.splits import class_metrics, folds
from rtbci.models.windows import Windows, load_windows
from rtbci.scoring import chance_figures

__all__ = ["AUTO_FAMILIES", "DEFAULT_BUDGET", "Candidate", "candidate_windows",
           "cross_validate", "preprocessing_candidates", "select"]

AUTO_FAMILIES = ("linear", "riemann", "eegnet", "motor-gnn")  # cheapest first
NEURAL = ("eegnet", "motor-gnn")  # gradient-trained: run with enough trials, or when named
MIN_TRIALS_PER_CLASS = 40  # below it a neural family is skipped unless --families names it
FIRST_ROUND_FOLDS = 2  # successive halving: every candidate's first round
DEFAULT_BUDGET = 60.0  # s: train auto's search and refit on a 2-core machine (--budget)
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


def select(opts: TrainOptions, families: tuple[str, ...] | None = None, k: int = 5,
           budget: float | None = DEFAULT_BUDGET) -> dict:
    """Cross-validate ``families`` × preprocessing on ``opts.data`` by successive halving
    within ``budget`` seconds, refit the choice on all the windows and write it to
    ``opts.out`` (+ ``.metrics.json``, ``.png``).

    Candidates run cheapest first (:data:`AUTO_FAMILIES` order). Every one is scored on the
    first :data:`FIRST_ROUND_FOLDS` folds; the rest of the ``k`` folds go only to those still
    within noise of the leader (and, for the closed-form families, the top half). A neural
    candidate stops as soon as it cannot reach the leader within 2 noise units, and none is
    started when ``budget`` (seconds from the start, the refit reserved; None: no cap) is
    spent. ``families=None`` takes every family, the neural ones only with
    :data:`MIN_TRIALS_PER_CLASS` trials per class; named ones always run. Among the complete
    rows the simplest, cheapest within one standard error of the best mean is chosen.

    Returns the metrics document: ``table`` (one row per candidate: ``family``,
    ``preprocessing``, ``accuracy`` mean, ``sd`` and ``se`` over ``folds``, ``seconds``;
    ``stopped`` (why, after fewer than ``k`` folds), ``skipped`` or ``error``), ``chance``,
    ``choice`` (with ``tie`` when a simpler row was preferred), ``budget``, ``threads`` and
    the final fit's ``n_train`` and ``parameters``.
    """
    started = time.perf_counter()
    with training_threads() as threads:
        search = _search(opts, families, k, budget, started, threads)
        metrics = _refit(opts, search, k, started)
    metrics["auto"].update(budget=budget, threads=threads)
    save_trained(*metrics.pop("_save"))
    plot_table(opts.out.with_name(opts.out.name + ".png"), metrics["auto"])
    return metrics


@dataclass(eq=False)  # compared by identity
class _Run:
    """One candidate's progress through the search."""

    cand: Candidate
    key: str
    masks: list[np.ndarray]
    scores: list[float] = field(default_factory=list)
    tested: int = 0  # windows scored so far (all folds)
    correct: int = 0  # of them, predicted right
    counts: np.ndarray | None = None  # of them, per true class
    seconds: float = 0.0
    error: str | None = None
    stopped: str | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    def noise(self) -> float:
        """One standard error of the mean accuracy: of the fold scores, or, with fewer than
        3 folds, the binomial one of the windows scored (the larger)."""
        p = self.mean
        binomial = np.sqrt(max(p * (1 - p), 0.05) / max(self.tested, 1))
        spread = np.std(self.scores, ddof=1) / np.sqrt(len(self.scores)) if len(
            self.scores) > 1 else 0.0
        return float(max(spread, binomial))

    def per_fit(self) -> float | None:
        return self.seconds / len(self.scores) if self.scores else None


def _search(opts: TrainOptions, families: tuple[str, ...] | None, k: int,
            budget: float | None, started: float, threads: int) -> dict:
    from tqdm import tqdm

    quiet = replace(opts, progress=False)
    asked = families is not None
    families = tuple(sorted(families or AUTO_FAMILIES, key=_cost_rank))
    windows: dict[str, Windows] = {}
    candidates = _candidates(opts, families, windows)
    skipped = _too_few_trials(windows, families) if not asked else {}
    runs = []
    for cand in candidates:
        if cand.family in skipped:
            continue
        win = candidate_windows(windows, cand, quiet)
        task = classes_task(win, replace(opts, val_fraction=0.0))
        runs.append(_Run(cand, _key(cand, opts), folds(win, task["target"], k, opts.seed)))
    n_folds = max((len(r.masks) for r in runs), default=k)
    rounds = sorted({min(FIRST_ROUND_FOLDS, n_folds), n_folds})
    fmt = "{desc} | {n_fmt}/{total_fmt} fits [{elapsed}{postfix}]"
    with tqdm(total=len(runs) * rounds[0], desc="train auto", disable=not opts.progress,
              bar_format=fmt) as bar:
        search = _Search(runs, windows, quiet, budget, started, bar, threads)
        for i, upto in enumerate(rounds):
            search.round(upto)
            if i + 1 < len(rounds):
                bar.total += sum(len(r.masks[upto:rounds[i + 1]]) for r in search.alive)
                bar.refresh()
    return {"runs": runs, "windows": windows, "skipped": skipped, "folds": n_folds}


class _Search:
    """The rounds of successive halving over ``runs`` (cheapest first), fold by fold here or
    one Ray task per candidate and round with ``--ray``."""

    def __init__(self, runs: list[_Run], windows: dict, opts: TrainOptions,
                 budget: float | None, started: float, bar, threads: int):
        self.runs, self.windows, self.opts, self.bar = runs, windows, opts, bar
        self.budget, self.started, self.threads = budget, started, threads
        self.alive = list(runs)
        self.upto = 0  # the current round's last fold

    def round(self, upto: int) -> None:
        """Score every live candidate on its folds up to ``upto``."""
        self.upto = upto
        if session() is not None:
            self._round_ray(upto)
        else:
            for run in self.alive:
                self._run_folds(run, upto)
        self.alive = [r for r in self.alive if r.error is None and r.stopped is None]
        if upto < max(len(r.masks) for r in self.runs):
            going_on = self.survivors()
            self.alive = [r for r in self.alive if r in going_on]  # still cheapest first
            for run in self.runs:
                if run.error is None and run.stopped is None and run not in self.alive:
                    run.stopped = "behind the leader"

    def survivors(self) -> list[_Run]:
        """Those within one noise unit of the leader, and the closed-form ones in the top
        half (ranked by mean accuracy)."""
        ranked = sorted((r for r in self.alive if r.scores and r.error is None
                         and r.stopped is None), key=lambda r: -r.mean)
        if not ranked:
            return []
        leader, half = ranked[0], ranked[:(len(ranked) + 1) // 2]
        return [r for r in ranked if r.mean >= leader.mean - max(r.noise(), leader.noise())
                or (r in half and r.cand.family in CLOSED_FORM)]  # ranked by accuracy

    def _run_folds(self, run: _Run, upto: int) -> None:
        n = len(run.masks)
        for fold in range(len(run.scores), min(upto, n)):
            reason = self._stop_reason(run)
            if reason:
                self._stop(run, reason, upto)
                return
            self.bar.set_postfix_str(self._postfix(run), refresh=False)
            self.bar.set_description_str(f"{run.cand.name} fold {fold + 1}/{n}")
            result = cross_validate((run.cand, run.key, [run.masks[fold]]),
                                     self.windows, self.opts)
            _record(run, result)
            self.bar.update(1)
            if run.error:
                self.bar.total -= min(upto, n) - fold - 1
                return

    def _round_ray(self, upto: int) -> None:
        todo = [r for r in self.alive if not self._stop_reason(r)]
        for run in self.alive:
            if run not in todo:
                self._stop(run, self._stop_reason(run), upto)
        self.bar.set_description_str(f"{len(todo)} candidates in Ray, folds ≤ {upto}")
        items = [(r.cand, r.key, r.masks[len(r.scores):upto]) for r in todo]
        results = parallel_map(partial(cross_validate, windows=self.windows, opts=self.opts),
                               items, done=lambda i, _: self.bar.update(len(items[i][2])))
        for run, result in zip(todo, results, strict=True):
            _record(run, result)

    def _stop_reason(self, run: _Run) -> str | None:
        """Why ``run``'s next fold is not fitted: the budget would be spent, or (a neural
        candidate) it cannot reach the leader within 2 noise units. The cheapest candidate
        always completes (the floor of the choice)."""
        if run is self.runs[0]:
            return None
        leader = self._behind(run)
        if leader is not None:
            return f"cannot reach {leader.cand.name} ({leader.mean:.3f})"
        if self.budget is None:
            return None
        expected = run.per_fit() or self._family_fit(run.cand.family) or 0.0
        if self.elapsed() + expected + self._refit_reserve() > self.budget:
            return f"budget {self.budget:g} s"
        return None

    def _behind(self, run: _Run) -> _Run | None:
        """The leader, when ``run`` is a neural candidate whose mean plus 2 standard errors
        falls short of it (it cannot win); else None."""
        leader = self._leader(run)
        if run.scores and leader is not None and run.cand.family not in CLOSED_FORM and (
                run.mean + 2 * run.noise() < leader.mean):
            return leader
        return None

    def _stop(self, run: _Run, reason: str, upto: int) -> None:
        run.stopped = reason
        self.bar.total -= max(0, min(upto, len(run.masks)) - len(run.scores))
        self.bar.refresh()

    def _leader(self, run: _Run) -> _Run | None:
        """The best mean of the other candidates with at least as many folds as ``run``."""
        done = [r for r in self.runs if r is not run and r.error is None and r.scores
                and len(r.scores) >= len(run.scores)]
        return max(done, key=lambda r: r.mean, default=None)

    def _family_fit(self, family: str) -> float | None:
        fits = [(r.seconds, len(r.scores)) for r in self.runs
                if r.cand.family == family and r.scores]
        return sum(s for s, _ in fits) / sum(n for _, n in fits) if fits else None

    def _refit_reserve(self) -> float:
        """The leader's refit on all windows: a fold's fit × k / (k - 1)."""
        leader = max((r for r in self.runs if r.scores), key=lambda r: r.mean, default=None)
        if leader is None:
            return 0.0
        return leader.per_fit() * len(leader.masks) / max(len(leader.masks) - 1, 1)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float | None:
        """Estimated seconds left: the live candidates' folds of this round, and of the last
        for those that would survive on today's scores, at their (or their family's) time
        per fit, plus the refit; capped by the budget. While a family's time is unknown (it
        has not run yet): the budget left if the timed work alone exceeds it (the budget
        binds, whatever the rest takes), else None."""
        total, untimed = self._refit_reserve(), False
        going_on = self.survivors()
        for run in self.alive:
            if run.error or run.stopped:
                continue
            if self._behind(run):
                continue  # stops before its next fold
            upto = len(run.masks) if run.scores and run in going_on else self.upto
            per_fit = run.per_fit() or self._family_fit(run.cand.family)
            if per_fit is None:
                untimed = True
                continue
            total += max(upto - len(run.scores), 0) * per_fit
        if self.budget is not None:
            left = max(self.budget - self.elapsed(), 0.0)
            if total >= left:
                return left
        return None if untimed else total

    def _postfix(self, run: _Run) -> str:
        left = self.remaining()
        took = f"{run.seconds:.1f} s" if run.scores else "first fold"
        if left is not None:
            eta = f", ≈{left:.0f} s left"
        elif self.budget is not None:  # a family not timed yet: the budget bounds it
            eta = f", ≤{max(self.budget - self.elapsed(), 0):.0f} s left (budget)"
        else:
            eta = ""
        return f"{run.cand.name}: {took}{eta}, {self.threads} thread(s)"


def _record(run: _Run, result: dict) -> None:
    if "error" in result:
        run.error = result["error"]
        return
    run.scores += result["scores"]
    run.tested += result["tested"]
    run.correct += result["correct"]
    run.counts = result["counts"] if run.counts is None else run.counts + result["counts"]
    run.seconds += result["seconds"]


def _too_few_trials(windows: dict[str, Windows], families: tuple[str, ...]) -> dict[str, str]:
    """The neural families left out for want of trials: ``{family: reason}``."""
    labels = next(iter(windows.values())).labels
    _, counts = np.unique(labels, return_counts=True)
    if counts.min() >= MIN_TRIALS_PER_CLASS:
        return {}
    reason = (f"{len(labels)} trials, {counts.min()} in the smallest class < "
              f"{MIN_TRIALS_PER_CLASS} (--families {{}} runs it)")
    return {f: reason.format(f) for f in families if f in NEURAL}


def _table(search: dict) -> list[dict]:
    rows = []
    for run in search["runs"]:
        row = {"family": run.cand.family, "preprocessing": run.cand.preprocessing}
        if run.error is not None:
            row["error"] = run.error
        elif run.scores:
            ci95 = chance_figures(run.correct, run.counts, len(run.counts))["ci95"]
            row.update(accuracy=run.mean, sd=float(np.std(run.scores)), se=run.noise(),
                       ci95=[round(v, 4) for v in ci95], folds=len(run.scores),
                       seconds=round(run.seconds, 1))
        if run.stopped is not None:
            row["stopped"] = run.stopped
        rows.append(row)
    rows += [{"family": f, "preprocessing": "-", "skipped": reason}
             for f, reason in search["skipped"].items()]
    return rows


def _choose(runs: list[_Run]) -> tuple[_Run, dict | None]:
    """Among the candidates scored on every fold, those within one standard error of the
    best mean are tied; the tie goes to the simplest, cheapest family (:data:`AUTO_FAMILIES`
    order), within it to the best mean. A tie won by another row than the best is reported
    as ``{"with", "accuracy", "se"}`` (the best's)."""
    scored = [r for r in runs if r.error is None and r.scores]
    complete = [r for r in scored if len(r.scores) == len(r.masks)] or scored
    if not complete:
        raise RtbciError("train auto: no candidate could be trained: "
                         + "; ".join(f"{r.cand.name}: {r.error}" for r in runs))
    best = max(complete, key=lambda r: (r.mean, -np.std(r.scores)))
    tied = [r for r in complete if r.mean >= best.mean - best.noise()]
    chosen = min(tied, key=lambda r: (_cost_rank(r.cand.family), -r.mean, np.std(r.scores)))
    tie = None if chosen is best else {"with": best.cand.name, "accuracy": best.mean,
                                       "se": best.noise()}
    return chosen, tie


def _refit(opts: TrainOptions, search: dict, k: int, started: float) -> dict:
    """Refit the choice on all the windows; the metrics (``_save``: save_trained's args)."""
    import torch

    chosen, tie = _choose(search["runs"])
    cand, quiet = chosen.cand, replace(opts, progress=False)
    torch.manual_seed(opts.seed)
    win = search["windows"][chosen.key]
    task = classes_task(win, replace(opts, val_fraction=0.0))
    family = get_family(cand.family)
    final = cand.options(quiet, family)
    contract = make_contract(family, win, final, task)
    model, _, _ = fit_family(family, contract, win, task, np.ones(len(win.x), bool), final)
    choice = {"family": cand.family, "preprocessing": cand.preprocessing,
              "accuracy": chosen.mean, "sd": float(np.std(chosen.scores)), "se": chosen.noise()}
    if tie:
        choice["tie"] = tie
    figures = chance_figures(0, np.bincount(task["target"]), task["n_outputs"])
    metrics = {"auto": {"table": _table(search), "chance": figures["chance"],
                        "chance_uniform": figures["chance_uniform"],
                        "folds": search["folds"], "choice": choice,
                        "seconds": round(time.perf_counter() - started, 1)},
               "n_train": len(win.x), "n_val": 0, "channels": channel_table(win),
               "parameters": count_parameters(model)}
    metrics["_save"] = (replace(final, val_fraction=0.0), contract, model, task, metrics,
                        started, final.lr or family.lr)
    return metrics


def _cost_rank(family: str) -> int:
    return AUTO_FAMILIES.index(family) if family in AUTO_FAMILIES else len(AUTO_FAMILIES)


def _candidates(opts: TrainOptions, families: tuple[str, ...],
                windows: dict[str, Windows]) -> list[Candidate]:
    """Every family's candidates; the source's rate comes from its unprocessed windows (kept
    in ``windows``: the "none" candidates reuse them, so the files are read once)."""
    unknown = [f for f in families if f not in AUTO_FAMILIES]
    if unknown:
        raise RtbciError(f"--families: {unknown[0]!r} is not one train auto compares "
                         f"({', '.join(AUTO_FAMILIES)})")
    raw = Candidate(families[0], "none", tuple(sorted(NO_PREPROCESSING.items())))
    srate = candidate_windows(windows, raw, replace(opts, progress=False)).info.srate
    return [c for f in families
            for c in preprocessing_candidates(get_family(f), srate, opts.preprocess)
            if not (c.demean and opts.baseline is not None)]  # the user's --baseline holds


def _key(cand: Candidate, opts: TrainOptions) -> str:
    """Windows are shared by candidates whose preprocessing resolves alike."""
    family = get_family(cand.family)
    config = train_preprocess(family, cand.options(opts, family))
    return config.model_dump_json() + repr(opts.window or family.window) + repr(cand.demean)


def candidate_windows(cache: dict, cand: Candidate, opts: TrainOptions) -> Windows:
    """``cand``'s windows of ``opts.data``, loaded once into ``cache`` (keyed by how the
    preprocessing resolves: candidates that resolve alike share them)."""
    key = _key(cand, opts)
    if key not in cache:
        family = get_family(cand.family)
        cache[key] = load_windows(opts.data, family, cand.options(opts, family))
    return cache[key]


def cross_validate(planned: tuple[Candidate, str, list[np.ndarray]],
                    windows: dict[str, Windows], opts: TrainOptions) -> dict:
    """Fit and score one candidate on some folds: ``planned = (candidate, its windows' key,
    training masks)``; returns ``scores`` (accuracy per fold), ``tested`` (windows scored),
    ``correct`` and ``counts`` (per true class) of them, ``seconds`` and their ``accuracy``
    mean, ``sd`` and ``folds``, or ``error`` (a Ray task with ``--ray``, one BLAS/torch
    thread)."""
    import torch

    cand, key, masks = planned
    win = windows[key]
    task = classes_task(win, replace(opts, val_fraction=0.0))
    family = get_family(cand.family)
    opts = cand.options(opts, family)
    started, scores, correct = time.perf_counter(), [], 0
    n = task["n_outputs"]
    counts = np.zeros(n, int)
    with training_threads(1) if session() is not None else nullcontext():
        try:
            for mask in masks:
                torch.manual_seed(opts.seed)
                contract = make_contract(family, win, opts, task)
                model, _, _ = fit_family(family, contract, win, task, mask, opts)
                out = predict(model, win.x[~mask], win.subject[~mask])
                y = task["target"][~mask]
                scores.append(class_metrics(out, y, n)["accuracy"])
                correct += int(np.sum(out.argmax(1) == y))
                counts += np.bincount(y, minlength=n)
        except (RtbciError, ValueError, RuntimeError) as exc:  # e.g. a window too short
            return {"error": str(exc).splitlines()[0]}
    return {"scores": scores, "tested": int(sum((~m).sum() for m in masks)),
            "correct": correct, "counts": counts,
            "seconds": time.perf_counter() - started, "accuracy": float(np.mean(scores)),
            "sd": float(np.std(scores)), "folds": len(scores)}
