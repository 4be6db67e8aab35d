"""Fitting a family: the thread caps, the Adam loop and prediction, closed-form fits (with
the channels that make covariances singular named), pre-training, the class and retrieval
tasks and their linear baselines (logistic regression on windows averaged in 20 ms bins for
classes, ridge regression from the same features to the targets for retrieval), so every
report shows the gain over linear, as the papers do."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from rtbci.errors import RtbciError
from rtbci.models.families import Family
from rtbci.models.options import TrainOptions
from rtbci.models.splits import class_metrics, split_items, split_trials
from rtbci.models.windows import Windows, load_targets, load_windows

if TYPE_CHECKING:
    from rtbci.models.selection import Candidate

log = logging.getLogger("rtbci.models.fitting")

__all__ = ["BIN_S", "binned_features", "classes_task", "cross_validate", "degenerate_channels",
           "fit", "fit_family", "free_cores", "linear_classes", "linear_retrieval", "predict",
           "predict_fit_seconds", "retrieval_task", "training_threads"]

_WARNED: set[tuple] = set()  # warnings given once per process


BIN_S = 0.02  # the linear baselines' time resolution: 20 ms keeps responses up to ~25 Hz


def binned_features(x: np.ndarray, srate: float) -> np.ndarray:
    """Window means over consecutive ``BIN_S`` time bins per channel:
    ``(n, n_samples, n_channels)`` → ``(n, n_bins · n_channels)``."""
    from rtbci.models.linear import bin_matrix

    return np.matmul(bin_matrix(x.shape[1], srate, BIN_S), x).reshape(len(x), -1)


def linear_classes(x_tr, y_tr, x_val, y_val, n_classes, srate: float) -> dict:
    """Logistic regression on standardised time-binned windows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    clf.fit(binned_features(x_tr, srate), y_tr)
    proba = np.zeros((len(x_val), n_classes))
    proba[:, clf.classes_] = clf.predict_proba(binned_features(x_val, srate))
    return class_metrics(proba, y_val, n_classes)


def linear_retrieval(x_tr, t_tr, x_val, bank_val, true_val, srate: float) -> dict:
    """Ridge regression from time-binned windows to the targets, alpha chosen by 5-fold
    cross-validation. Solved in its dual (kernel) form, as the features and the targets
    (speech: whole maps) can both number in the tens of thousands."""
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from rtbci.models.contrastive import retrieval_metrics

    ridge = make_pipeline(StandardScaler(), GridSearchCV(
        KernelRidge(kernel="linear"), {"alpha": np.logspace(0, 6, 13)}, cv=5))
    ridge.fit(binned_features(x_tr, srate), t_tr.reshape(len(t_tr), -1))
    pred = ridge.predict(binned_features(x_val, srate))
    return retrieval_metrics(pred, bank_val.reshape(len(bank_val), -1), true_val)


def free_cores() -> int:
    """Cores free for training: those this process may run on (its affinity mask) less the
    1-minute load average, rounded, at least 1 (a busy lab PC gets fewer threads)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # not on this platform
        load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


@contextmanager
def training_threads(n: int | None = None) -> Iterator[int]:
    """Cap torch's intra-op threads and every BLAS/OpenMP pool (threadpoolctl) at ``n``
    (default :func:`free_cores`) for the block, so training never oversubscribes the cores
    (spinning threads on a busy machine are slower than one); restored afterwards."""
    import torch
    from threadpoolctl import threadpool_limits

    n = n or free_cores()
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield n
    finally:
        torch.set_num_threads(before)


def fit(model, loss_fn, x: np.ndarray, target: np.ndarray, subject: np.ndarray, *,
        epochs: int, batch_size: int, lr: float, seed: int, desc: str,
        progress: bool = True) -> list[float]:
    """Adam on shuffled mini-batches (the last batch of 1 is skipped: BatchNorm and
    contrastive losses need two items); returns the mean loss of each epoch."""
    import torch
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    xt, tt, st = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x, target, subject))
    losses = []
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        model.train()
        order, total, batches = torch.randperm(len(xt), generator=generator), 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2:
                continue
            loss = loss_fn(model, xt[idx], tt[idx], st[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if hasattr(model, "after_step"):  # weight constraints (EEGNet's max-norm)
                model.after_step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / max(batches, 1))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def predict(model, x: np.ndarray, subject: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's training output for every window (eval mode, no gradients)."""
    import torch

    model.eval()
    with torch.inference_mode():
        return np.concatenate([
            model(torch.from_numpy(x[i:i + batch_size]),
                  torch.from_numpy(subject[i:i + batch_size])).numpy()
            for i in range(0, len(x), batch_size)])


def fit_family(family: Family, contract, win: Windows, task: dict, train_mask: np.ndarray,
               opts: TrainOptions):
    """Build ``family``'s network for ``contract`` and fit it on the windows ``train_mask``
    selects: closed form (linear, riemann) or Adam (``opts.epochs``), after ``--pretrain``.

    Returns ``(model, losses per epoch, pre-training stats or None)``.
    """
    module = family.load()
    model = family.build(contract)
    x, target, subject = win.x[train_mask], task["target"][train_mask], win.subject[train_mask]
    if hasattr(model, "fit_input"):
        model.fit_input(x)
    lr = opts.lr or family.lr
    same = replace(opts, channels=list(contract.input.ch_names),  # the inputs, as chosen
                   include_types=(*opts.include_types, "flat"))
    pretrained = _pretrain(model, module, family, same, task, lr) if opts.pretrain else None
    if hasattr(model, "fit_closed_form"):  # linear, riemann: scikit-learn / pyriemann
        _fit_closed_form(model, module, family, x, target, contract.input.ch_names)
        return model, [], pretrained
    losses = fit(model, module.training_loss, x, target, subject, epochs=opts.epochs,
                 batch_size=opts.batch_size, lr=lr, seed=opts.seed,
                 desc=f"train {family.name}", progress=opts.progress)
    return model, losses, pretrained


def _fit_closed_form(model, module, family: Family, x: np.ndarray, target: np.ndarray,
                     ch_names: list[str]) -> None:
    """``model.fit_closed_form``; for a covariance family (``module.FULL_RANK``) flat and
    duplicated channels are named first (a warning: shrinkage copes with them), and a
    singular matrix is a one-line :class:`RtbciError` naming them."""
    problem = degenerate_channels(x, ch_names) if getattr(module, "FULL_RANK", False) else ""
    try:
        model.fit_closed_form(x, target)
    except (np.linalg.LinAlgError, ValueError) as exc:
        if not isinstance(exc, np.linalg.LinAlgError) and "positive definite" not in str(exc):
            raise
        fix = "leave them out with --channels or keep" if problem else "use"
        why = problem or str(exc).strip().split(". ")[0]
        raise RtbciError(f"{family.name}: singular covariance matrices: {why}; {fix} a "
                         "shrinkage estimator (--set estimator=lwf)") from None
    if problem and (family.name, problem) not in _WARNED:  # once, not per fold of train auto
        _WARNED.add((family.name, problem))
        log.warning("%s: %s: singular covariances, made usable by the shrinkage estimator %r "
                    "(--channels can leave them out)", family.name, problem,
                    getattr(model, "estimator", None))


def degenerate_channels(x: np.ndarray, ch_names: list[str], max_rows: int = 20000) -> str:
    """The channels of windows ``x`` (n, n_samples, n_channels) that carry nothing of their
    own: flat (no variance, or under 1e-6 of the median channel's) or a copy of another
    (absolute correlation above 1 - 1e-6, sign flips included), e.g.
    ``"flat channel C2; C3 duplicates C0"``; ``""`` if none. At most ``max_rows`` samples
    (evenly spaced) are compared."""
    rows = x.reshape(-1, x.shape[-1])
    rows = rows[::max(1, len(rows) // max_rows)].astype(np.float64)
    sd = rows.std(0)
    flat = sd <= 1e-6 * max(float(np.median(sd)), np.finfo(float).tiny)
    parts = [f"flat channel{'s' if flat.sum() > 1 else ''} "
             + ", ".join(ch_names[i] for i in np.flatnonzero(flat))] if flat.any() else []
    live = np.flatnonzero(~flat)
    z = (rows[:, live] - rows[:, live].mean(0)) / sd[live]
    corr = np.abs(z.T @ z) / len(z)
    for j in range(len(live)):
        twins = np.flatnonzero(corr[j, :j] > 1 - 1e-6)
        if len(twins):
            parts.append(f"{ch_names[live[j]]} duplicates {ch_names[live[twins[0]]]}")
    return "; ".join(parts)


def classes_task(win: Windows, opts: TrainOptions) -> dict:
    """The class task of ``win``: ``labels`` (sorted), ``target`` (n_windows,) int, ``val``
    (the :func:`split_trials` mask of ``opts.val_fraction``), ``n_outputs``, and ``score``
    (logits of the ``val`` windows → :func:`class_metrics`) and ``linear`` (the
    :func:`linear_classes` baseline's metrics on the same split)."""
    classes = sorted(set(win.labels))
    if len(classes) < 2:
        raise RtbciError(f"--events: only one class ({classes[0]!r}) among the events")
    y = np.array([classes.index(label) for label in win.labels])
    val = split_trials(win.labels, opts.val_fraction, opts.seed)

    def score(logits):
        return class_metrics(logits, y[val], len(classes))

    def linear():
        return linear_classes(win.x[~val], y[~val], win.x[val], y[val], len(classes),
                              win.info.srate)

    return {"n_outputs": len(classes), "labels": classes, "target": y, "val": val,
            "score": score, "linear": linear}


def retrieval_task(win: Windows, opts: TrainOptions) -> dict:
    """The retrieval task of ``win`` against ``opts.targets``: as :func:`classes_task`, with
    ``target`` the windows' target rows, ``val`` whole held-out items (:func:`split_items`)
    and ``bank`` (what the checkpoint stores; time-pooled with ``--pool-bank``)."""
    from rtbci.models.contrastive import retrieval_metrics

    bank, labels = load_targets(opts.targets)
    row = {label: i for i, label in enumerate(labels)}
    missing = sorted({label for label in win.labels if label not in row})
    if missing:
        raise RtbciError(f"--targets: no row labelled {missing[0]!r} in {opts.targets.name} "
                         f"({len(missing)} event labels missing)")
    rows = np.array([row[label] for label in win.labels])
    val = split_items(win.labels, opts.val_fraction, opts.seed)
    val_rows = np.unique(rows[val])
    true_val = np.searchsorted(val_rows, rows[val])

    def score(out):
        result = retrieval_metrics(out, bank[val_rows], true_val)
        if bank.ndim == 3:  # maps: also what time-pooled candidates cost
            result["pooled"] = retrieval_metrics(out.mean(-1), bank[val_rows].mean(-1),
                                                 true_val)
        return result

    def linear():
        return linear_retrieval(win.x[~val], bank[rows[~val]], win.x[val], bank[val_rows],
                                true_val, win.info.srate)

    pooled = opts.pool_bank and bank.ndim == 3
    return {"n_outputs": bank.shape[1], "labels": labels, "target": bank[rows], "val": val,
            "score": score, "linear": linear, "bank": bank.mean(-1) if pooled else bank,
            "pooled": pooled}


def _pretrain(model, module, family: Family, opts: TrainOptions, task: dict, lr: float) -> dict:
    """``--pretrain FILE…``: the family's self-supervised ``pretrain`` if it has one (Du-IN),
    else supervised pre-training on those recordings' events (task-driven GNN pre-training)."""
    pre_opts = TrainOptions(**{**opts.__dict__, "data": opts.pretrain})
    pre = load_windows(opts.pretrain, family, pre_opts)
    if hasattr(module, "pretrain"):
        stats = module.pretrain(model, pre.x, epochs=opts.pretrain_epochs, seed=opts.seed)
        return {"windows": len(pre.x), **{k: v[-1] if isinstance(v, list) else v
                                          for k, v in stats.items()}}
    labels = task["labels"]
    unknown = sorted(set(pre.labels) - set(labels))
    if unknown:
        raise RtbciError(f"--pretrain: event label {unknown[0]!r} is not one of {labels}")
    y = np.array([labels.index(label) for label in pre.labels])
    losses = fit(model, module.training_loss, pre.x, y, np.zeros(len(y), int),
                 epochs=opts.pretrain_epochs, batch_size=opts.batch_size, lr=lr,
                 seed=opts.seed + 1, desc=f"pretrain {family.name}", progress=opts.progress)
    return {"windows": len(pre.x), "final_loss": losses[-1]}


def predict_fit_seconds(family: Family, win: Windows, task: dict, train_mask: np.ndarray,
                        opts: TrainOptions) -> float | None:
    """Seconds :func:`fit_family` will take on the windows ``train_mask`` selects, for a
    gradient-trained family, from a probe: one epoch on one mini-batch (``opts.batch_size``
    windows), timed twice (the first run bears one-time costs: kernels chosen, memory
    mapped), the faster times the mini-batches of an epoch times ``opts.epochs`` (measured
    against real fits in docs/decoders.md). None if the family cannot be fitted on them (the
    fit says why)."""
    from rtbci.models.artefacts import make_contract

    idx = np.flatnonzero(train_mask)
    n_probe = min(len(idx), opts.batch_size)
    probe = np.zeros_like(train_mask)
    probe[idx[:n_probe]] = True
    contract, one = make_contract(family, win, opts, task), replace(opts, epochs=1,
                                                                    progress=False)
    seconds = []
    try:
        for _ in range(2):
            started = time.perf_counter()
            fit_family(family, contract, win, task, probe, one)
            seconds.append(time.perf_counter() - started)
    except (RtbciError, ValueError, RuntimeError):
        return None
    return min(seconds) * -(-len(idx) // n_probe) * opts.epochs


def cross_validate(planned: tuple[Candidate, str, list[np.ndarray]],
                    windows: dict[str, Windows], opts: TrainOptions) -> dict:
    """Fit and score one candidate on some folds: ``planned = (candidate, its windows' key,
    training masks)``; returns ``scores`` (accuracy per fold), ``tested`` (windows scored),
    ``correct`` and ``counts`` (per true class) of them, ``seconds`` and their ``accuracy``
    mean, ``sd`` and ``folds``, or ``error`` (a Ray task with ``--ray``, one BLAS/torch
    thread)."""
    import torch

    from rtbci.cluster import session
    from rtbci.models.artefacts import make_contract
    from rtbci.models.families import get_family

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
