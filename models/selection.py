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
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from rtbci.cluster import parallel_map, session
from rtbci.errors import RtbciError
from rtbci.models.artefacts import channel_table, count_parameters, make_contract, save_trained
from rtbci.models.checkpoint import subtract_baseline
from rtbci.models.families import Family, get_family
from rtbci.models.fitting import classes_task, cross_validate, fit_family, training_threads
from rtbci.models.options import TrainOptions, train_preprocess, window_baseline
from rtbci.models.selection_report import plot_table
from rtbci.models.splits import folds
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
    candidate stops as soon as it cannot reach the leader within 2 noise units. No fit starts
    that is predicted to end past ``budget`` (seconds of the whole call, reading and refit
    included; None: no cap): windows are read when a candidate first runs, a gradient-trained
    family's first fit is predicted by a probe (``fitting.predict_fit_seconds``).
    ``families=None`` takes every family, the neural ones only with
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
    ready: bool = False  # its windows loaded and its folds cut from them (_Search.prepare)

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
    loaded = time.perf_counter() - started  # the source read once, unprocessed
    skipped = _too_few_trials(windows, families) if not asked else {}
    raw = next(iter(windows.values()))
    masks = folds(raw, classes_task(raw, replace(opts, val_fraction=0.0))["target"], k,
                  opts.seed)  # each candidate's own, cut when its windows load: the same
    runs = [_Run(c, _key(c, opts), masks) for c in candidates if c.family not in skipped]
    n_folds = max((len(r.masks) for r in runs), default=k)
    rounds = sorted({min(FIRST_ROUND_FOLDS, n_folds), n_folds})
    fmt = "{desc} | {n_fmt}/{total_fmt} fits [{elapsed}{postfix}]"
    with tqdm(total=len(runs) * rounds[0], desc="train auto", disable=not opts.progress,
              bar_format=fmt) as bar:
        search = _Search(runs, windows, quiet, budget, started, bar, threads)
        search.load_seconds.append(loaded)
        for i, upto in enumerate(rounds):
            search.round(upto)
            if i + 1 < len(rounds):
                bar.total += sum(len(r.masks[upto:rounds[i + 1]]) for r in search.alive)
                bar.refresh()
    return {"runs": runs, "windows": windows, "skipped": skipped, "folds": n_folds}


class _Search:
    """The rounds of successive halving over ``runs`` (cheapest first), fold by fold here or
    one Ray task per candidate and round with ``--ray``. A candidate's windows are loaded
    when it first runs (:meth:`prepare`), so a candidate the budget stops costs nothing."""

    def __init__(self, runs: list[_Run], windows: dict, opts: TrainOptions,
                 budget: float | None, started: float, bar, threads: int):
        self.runs, self.windows, self.opts, self.bar = runs, windows, opts, bar
        self.budget, self.started, self.threads = budget, started, threads
        self.alive = list(runs)
        self.upto = 0  # the current round's last fold
        self.load_seconds: list[float] = []  # each reading of the recording(s)
        self.probes: dict[str, float] = {}  # family → predicted seconds of one fit

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
            self.bar.set_description_str(f"{run.cand.name} fold {fold + 1}/{n}")
            if self._stop(run, self._stop_reason(run) or self.prepare(run), upto):
                return
            self.bar.set_postfix_str(self._postfix(run), refresh=False)
            result = cross_validate((run.cand, run.key, [run.masks[fold]]),
                                     self.windows, self.opts)
            _record(run, result)
            self.bar.update(1)
            if run.error:
                self.bar.total -= min(upto, n) - fold - 1
                return

    def _round_ray(self, upto: int) -> None:
        todo = [r for r in self.alive
                if not self._stop(r, self._stop_reason(r) or self.prepare(r), upto)]
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
        expected = (self._per_fit(run) or 0.0) + (  # and its windows, if still to read
            max(self.load_seconds, default=0.0) if run.key not in self.windows else 0.0)
        left = self.budget - self.elapsed() - self._refit_reserve()
        if expected > left:
            return f"budget {self.budget:g} s (next ≈{expected:.0f} s, {max(left, 0):.0f} s left)"
        return None

    def prepare(self, run: _Run) -> str | None:
        """Before ``run``'s first fit: load its windows (timed), cut its folds from them and,
        within a budget, predict a gradient-trained family's first fit
        (:func:`~rtbci.models.fitting.predict_fit_seconds`); the budget's stop reason if
        that fit can no longer end in time, else None."""
        from rtbci.models.fitting import predict_fit_seconds

        if run.ready:
            return None
        started, fresh = time.perf_counter(), run.key not in self.windows
        win = candidate_windows(self.windows, run.cand, self.opts)
        self.load_seconds += [time.perf_counter() - started] if fresh else []
        task = classes_task(win, replace(self.opts, val_fraction=0.0))
        run.masks, run.ready = folds(win, task["target"], len(run.masks), self.opts.seed), True
        name, family = run.cand.family, get_family(run.cand.family)
        if self.budget is None or name in CLOSED_FORM or self._per_fit(run) is not None:
            return None
        predicted = predict_fit_seconds(family, win, task, run.masks[0],
                                        run.cand.options(self.opts, family))
        if predicted is not None:  # else the fold will say why it cannot be fitted
            self.probes[name] = predicted
        return None if run is self.runs[0] else self._stop_reason(run)

    def _per_fit(self, run: _Run) -> float | None:
        """Seconds of ``run``'s next fit: its own so far, its family's, or the probe's."""
        family = run.cand.family
        return run.per_fit() or self._family_fit(family) or self.probes.get(family)

    def _behind(self, run: _Run) -> _Run | None:
        """The leader, when ``run`` is a neural candidate whose mean plus 2 standard errors
        falls short of it (it cannot win); else None."""
        leader = self._leader(run)
        if run.scores and leader is not None and run.cand.family not in CLOSED_FORM and (
                run.mean + 2 * run.noise() < leader.mean):
            return leader
        return None

    def _stop(self, run: _Run, reason: str | None, upto: int) -> bool:
        """Stop ``run`` for ``reason`` (None: it goes on); whether it stopped."""
        if reason is None:
            return False
        run.stopped = reason
        self.bar.total -= max(0, min(upto, len(run.masks)) - len(run.scores))
        self.bar.refresh()
        return True

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
            per_fit = self._per_fit(run)
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
    if key in cache:
        return cache[key]
    family = get_family(cand.family)
    if cand.demean:  # the same windows minus their mean: not read again
        win = candidate_windows(cache, replace(cand, demean=False), opts)
        samples = window_baseline(cand.options(opts, family), family, win.info.srate)
        cache[key] = replace(win, x=subtract_baseline(win.x, samples))
    else:
        cache[key] = load_windows(opts.data, family, cand.options(opts, family))
    return cache[key]
