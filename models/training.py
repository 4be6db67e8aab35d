"""``rtbci train``: event-locked windows from recordings → a trained checkpoint + metrics.

The windows are cut exactly as the live engine cuts them: the whole recording goes through
the same causal streaming preprocessing (:func:`rtbci.preprocess.preprocess_offline`, equal
to the live :class:`~rtbci.preprocess.Preprocessor`), each marker is placed on the sample
nearest its timestamp, and the window starts ``window[0]`` seconds from there.

Validation is held out **by trial** (classes, stratified) or **by item** (retrieval: the
validation candidates are never seen in training, so retrieval is zero-shot). A linear
baseline is fitted on the same split (logistic regression on windows averaged in 20 ms
bins for classes, ridge regression from the same features to the targets for retrieval)
so every report shows the gain over linear, as the papers do.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from rtbci.errors import RtbciError
from rtbci.events import BOUNDARY_MARKERS, MarkerMatcher
from rtbci.models.checkpoint import baseline_slice, subtract_baseline
from rtbci.models.families import Family
from rtbci.preprocess import PreprocessConfig, preprocess_offline
from rtbci.stream import StreamInfo

log = logging.getLogger("rtbci.models.training")

__all__ = ["TrainOptions", "Windows", "load_windows", "train"]


@dataclass
class Windows:
    """Event-locked windows of one or more recordings.

    x : array (n_windows, n_samples, n_channels) float32, after preprocessing
    labels : the label the ``events`` patterns give each window's marker (rtbci.events)
    subject : array (n_windows,) int, the recording's subject index
    info : the preprocessed stream's info restricted to the chosen channels
    file : array (n_windows,) int, index of the recording (in ``--data``) it comes from
    dropped : windows of matching events left out, by reason (:data:`DROP_REASONS`)
    left_out : channels that are not inputs, {name: reason} (:mod:`rtbci.models.channels`)
    ranges : array (2, n_channels), the least and greatest raw sample of each chosen channel
        (one file's, before the flat channels are left out; None after)
    """

    x: np.ndarray
    labels: list[str]
    subject: np.ndarray
    info: StreamInfo
    file: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    ranges: np.ndarray | None = None


DROP_REASONS = {
    "bad": "they touch BAD_* annotations (as MNE's reject_by_annotation; --keep-bad keeps "
           "them)",
    "join": "they span a join of recordings (EDGE boundary: the samples on either side are "
            "not continuous)",
    "edge": "they run past the recording's start or end",
}
_WARNED: set[tuple] = set()  # warnings given once per process


@dataclass
class TrainOptions:
    """What ``rtbci train`` was asked (see ``rtbci train --help``)."""

    data: list[Path]
    out: Path
    events: list[str] = field(default_factory=list)
    targets: Path | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None
    seed: int = 0
    val_fraction: float = 0.2
    channels: list[str] | None = None
    include_types: tuple[str, ...] = ()  # --include-types: eog, emg, … or flat as inputs
    window: tuple[float, float] | None = None
    size: str = "small"
    hparams: dict = field(default_factory=dict)
    subject_per_file: bool = False
    pretrain: list[Path] = field(default_factory=list)
    pretrain_epochs: int = 10
    pool_bank: bool = False
    stream: str | None = None
    keep_bad: bool = False  # --keep-bad: windows touching BAD_* annotations are kept
    progress: bool = True
    preprocess: dict = field(default_factory=dict)  # PreprocessConfig fields: --bandpass …
    baseline: tuple[float, float] | None = None  # --baseline START END (s, marker-relative)


# --- data --------------------------------------------------------------------------------

OVERRIDE_FLAGS = {"bandpass": "--bandpass", "notch": "--notch", "resample_hz": "--resample"}


def train_preprocess(family: Family, opts: TrainOptions) -> PreprocessConfig:
    """The family's preprocessing with ``opts.preprocess`` overriding it (``--bandpass``,
    ``--notch``, ``--resample``); a one-line :class:`RtbciError` naming the flag if invalid."""
    from pydantic import ValidationError

    try:
        return family.preprocess_config(**opts.preprocess)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = OVERRIDE_FLAGS.get(str(err["loc"][0]), str(err["loc"][0]))
        raise RtbciError(f"{flag}: {err['msg']}") from None


def window_baseline(opts: TrainOptions, family: Family, srate: float) -> slice | None:
    """The window's samples ``opts.baseline`` covers; a one-line :class:`RtbciError` unless
    it lies inside the window and spans at least one sample."""
    if opts.baseline is None:
        return None
    start_s, end_s = opts.window or family.window
    samples = baseline_slice(opts.baseline, start_s, srate)
    n_samples = round((end_s - start_s) * srate)
    if not 0 <= samples.start < samples.stop <= n_samples:
        lo, hi = opts.baseline
        raise RtbciError(f"--baseline: {lo:g} … {hi:g} s is not a part (of at least one "
                         f"sample at {srate:g} Hz) of the window {start_s:g} … {end_s:g} s")
    return samples


def load_windows(files: list[Path], family: Family, opts: TrainOptions) -> Windows:
    """Cut the windows of every event the patterns ``opts.events`` (or the family's prefix)
    select, labelled by :mod:`rtbci.events` (``word`` → ``word/w3`` is ``w3``), from each
    file; the data channels as inputs, or those ``opts.channels`` names (glob patterns),
    flat ones left out (:mod:`rtbci.models.channels`); preprocessed by
    :func:`train_preprocess`, minus ``opts.baseline`` if set. Each file is read by
    :func:`file_windows`, as a Ray task when ``--ray`` opened a session
    (:func:`rtbci.cluster.parallel_map`)."""
    from rtbci.cluster import parallel_map

    parts = parallel_map(partial(file_windows, family=family, opts=opts), enumerate(files))
    first, srate = files[0], parts[0][0].info.srate
    for file, (part, names) in zip(files, parts):
        if part.info.srate != srate:
            raise RtbciError(f"{file.name}: {part.info.srate:g} Hz after preprocessing, "
                             f"{first.name} {srate:g} Hz (--resample HZ makes them equal)")
        if names != parts[0][1]:
            raise RtbciError(f"{file.name}: channels differ from {first.name}'s")
    info, left_out = parts[-1][0].info, dict(parts[0][0].left_out)
    x = np.concatenate([p.x for p, _ in parts])
    if "flat" not in opts.include_types:
        x, info = _drop_flat(x, info, np.stack([p.ranges for p, _ in parts], 1), left_out,
                             files)
    baseline = window_baseline(opts, family, info.srate)
    if baseline is not None:
        x = subtract_baseline(x, baseline)
    dropped = {reason: sum(p.dropped.get(reason, 0) for p, _ in parts)
               for reason in DROP_REASONS}
    return Windows(x, [label for p, _ in parts for label in p.labels],
                   np.concatenate([p.subject for p, _ in parts]), info,
                   np.concatenate([p.file for p, _ in parts]), dropped, left_out)


def _drop_flat(x: np.ndarray, info: StreamInfo, ranges: np.ndarray, left_out: dict[str, str],
               files: list[Path]) -> tuple[np.ndarray, StreamInfo]:
    """``x`` (n, n_samples, n_channels) and ``info`` without the channels that are flat over
    every file (``ranges``: (2, n_files, n_channels) least and greatest raw samples); they
    join ``left_out`` (in place) with their reason."""
    from rtbci.models.channels import FLAT, flat_channels

    flat = flat_channels(ranges[0], ranges[1])
    if not flat.any():
        return x, info
    if flat.all():
        raise RtbciError(f"{files[0].name}: every input channel is flat (constant); "
                         "--channels or --include-types chooses others")
    left_out.update({info.ch_names[i]: FLAT for i in np.flatnonzero(flat)})
    keep = np.flatnonzero(~flat)
    return np.ascontiguousarray(x[..., keep]), _picked_info(info, keep, info.srate)


def file_windows(indexed: tuple[int, Path], family: Family,
                 opts: TrainOptions) -> tuple[Windows, list[str]]:
    """The windows of the ``k``-th file of ``--data`` (``indexed = (k, file)``), before the
    baseline, and its chosen channels' names."""
    from rtbci.devices.recording import read_recording
    from rtbci.models.channels import data_channels

    k, file = indexed
    try:
        matcher = MarkerMatcher(opts.events or [family.events])
    except RtbciError as exc:
        raise RtbciError(f"--events: {exc}") from None
    start_s, end_s = opts.window or family.window
    config = train_preprocess(family, opts)
    rec = read_recording(file, opts.stream)
    stream = rec.streams[0]
    if opts.stream is None and len(rec.streams) > 1:
        log.warning("%s: %d signal streams, training on the first, %r (--stream NAME)",
                    file.name, len(rec.streams), stream.info.name)
    data, times = preprocess_offline(config, stream.info, stream.data, stream.times)
    srate = config.resample_hz or stream.info.srate
    picks, left_out = data_channels(stream.info.ch_names, stream.info.ch_types,
                                    opts.channels, opts.include_types, file.name)
    offset, length = round(start_s * srate), round((end_s - start_s) * srate)
    joins = np.array(sorted(t for t, text in rec.markers if text in BOUNDARY_MARKERS))
    bad = [] if opts.keep_bad else bad_spans(rec)
    xs, labels, dropped = [], [], dict.fromkeys(DROP_REASONS, 0)
    for t, text in rec.markers:
        label = matcher.label(text)
        if label is None:
            continue
        onset = int(np.searchsorted(times, t - 0.5 / srate)) + offset
        reason = "edge" if onset < 0 or onset + length > len(data) else None
        if reason is None:
            first, last = times[onset], times[onset + length - 1]
            reason = ("join" if spans_join(joins, first, last, 0.5 / srate) else
                      "bad" if touches_bad(bad, first, last + 1.0 / srate) else None)
        if reason is not None:
            dropped[reason] += 1
            continue
        xs.append(data[onset:onset + length, picks])
        labels.append(label)
    report_dropped(file, dropped, len(xs))
    if not xs:
        missing = matcher.describe_missing(text for _, text in rec.markers)
        raise RtbciError(f"{file.name}: --events: {missing}" if missing else
                         f"{file.name}: no complete window around an event matching "
                         f"{' or '.join(repr(p.pattern) for p in matcher.patterns)} "
                         "(--events)")
    n = len(xs)
    ranges = np.stack([stream.data.min(0)[picks], stream.data.max(0)[picks]])  # no copy
    windows = Windows(np.stack(xs).astype(np.float32), labels,
                      np.full(n, k if opts.subject_per_file else 0), _picked_info(
                          stream.info, picks, srate), np.full(n, k), dropped, left_out,
                      ranges)
    return windows, [stream.info.ch_names[i] for i in picks]


def bad_spans(rec) -> list[tuple[float, float, str]]:
    """The recording's bad spans ``(onset_s, duration_s, description)``: its annotations
    starting with ``bad`` (:attr:`Recording.bad_spans`) and, for formats without durations
    (XDF, sessions), its ``bad…`` markers as instants; joins are not among them."""
    spans = list(rec.bad_spans)
    seen = {(onset, text) for onset, _, text in spans}
    spans += [(t, 0.0, text) for t, text in rec.markers if text.lower().startswith("bad")
              and text not in BOUNDARY_MARKERS and (t, text) not in seen]
    return spans


def touches_bad(spans: list[tuple[float, float, str]], start: float, stop: float) -> bool:
    """Whether a window from ``start`` to ``stop`` (s, its last sample's time plus one
    period) overlaps a bad span, by MNE's rule: ``onset < stop`` and ``onset + duration >
    start``."""
    return any(onset < stop and onset + duration > start for onset, duration, _ in spans)


def report_dropped(file: Path, dropped: dict[str, int], kept: int) -> None:
    """One warning line per reason windows of ``file`` were left out (once per process for
    the same file and figures: ``train auto`` reads a file once per preprocessing)."""
    total = kept + sum(dropped.values())
    for reason, n in dropped.items():
        key = ("dropped", str(Path(file).resolve()), reason, n, total)
        if n and key not in _WARNED:
            _WARNED.add(key)
            log.warning("%s: %d of %d windows dropped: %s", file.name, n, total,
                        DROP_REASONS[reason])


def spans_join(joins: np.ndarray, first: float, last: float, half: float) -> bool:
    """Whether a window with samples stamped ``first`` … ``last`` (s) holds samples from both
    sides of a join (sorted times of :data:`~rtbci.events.BOUNDARY_MARKERS`; a join is
    stamped with the first sample after it; ``half`` is half a sample period)."""
    i = np.searchsorted(joins, first + half, side="right")
    return i < len(joins) and joins[i] < last + half


def _picked_info(info: StreamInfo, picks: np.ndarray, srate: float) -> StreamInfo:
    pos = None if info.positions is None else np.asarray(info.positions)[picks]
    return replace(info, srate=srate, ch_names=tuple(info.ch_names[i] for i in picks),
                   ch_types=tuple(info.ch_types[i] for i in picks),
                   ch_units=tuple(info.ch_units[i] for i in picks), positions=pos)


def load_targets(path: Path) -> tuple[np.ndarray, list[str]]:
    """A target bank ``.npy`` (n_items, dim[, time]) and its labels (``<stem>.json``, a JSON
    list of strings; default ``"0"`` … ``"n-1"``)."""
    try:
        bank = np.load(path)
    except (OSError, ValueError) as exc:
        raise RtbciError(f"--targets: cannot read {str(path)!r}: {exc}") from None
    if bank.ndim not in (2, 3):
        raise RtbciError(f"--targets: {path.name} has shape {bank.shape}; expected "
                         "(n_items, dim) or (n_items, dim, time)")
    names = path.with_suffix(".json")
    labels = json.loads(names.read_text()) if names.exists() else [
        str(i) for i in range(len(bank))]
    if len(labels) != len(bank):
        raise RtbciError(f"--targets: {names.name} has {len(labels)} labels for "
                         f"{len(bank)} rows")
    return bank.astype(np.float32), [str(x) for x in labels]


# --- splits and metrics ------------------------------------------------------------------

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
    :func:`rtbci.report.chance_figures`."""
    from rtbci.report import chance_figures

    correct = int(np.sum(probabilities.argmax(1) == y))
    return {"accuracy": correct / len(y), "n_val": int(len(y)),
            **chance_figures(correct, np.bincount(y, minlength=n_classes), n_classes)}


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


# --- training ----------------------------------------------------------------------------

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


def train(family_name: str, opts: TrainOptions) -> dict:
    """Train a family on ``opts.data``; write the checkpoint and ``<out>.metrics.json``.

    Also draws ``<out>.png`` (loss per epoch; validation vs linear vs chance). Returns the
    metrics document. ``opts.val_fraction == 0`` fits on every window: ``val`` and
    ``linear`` are then None (nothing was held out to score).
    """
    import torch

    from rtbci.models.families import get_family

    family = get_family(family_name)
    if not 0 <= opts.val_fraction < 1:
        raise RtbciError(f"--val-fraction: must be at least 0 and below 1, got "
                         f"{opts.val_fraction:g}")
    torch.manual_seed(opts.seed)
    started = time.perf_counter()
    if family.kind == "retrieval" and opts.targets is None:
        raise RtbciError("--targets: a retrieval family needs the candidates' target "
                         "embeddings (bank.npy)")
    win = load_windows(opts.data, family, opts)
    task = _classes_task(win, opts) if family.kind == "classes" else _retrieval_task(win, opts)
    contract = make_contract(family, win, opts, task)
    val = task["val"]
    with training_threads():
        model, losses, pretrained = fit_family(family, contract, win, task, ~val, opts)
    scored = val.any()  # --val-fraction 0: every window trains, none is left to score
    metrics = {"val": task["score"](predict(model, win.x[val], win.subject[val]))
               if scored else None, "linear": task["linear"]() if scored else None,
               "dropped_windows": win.dropped, "channels": channel_table(win),
               "n_train": int((~val).sum()), "n_val": int(val.sum()),
               "parameters": count_parameters(model),
               "final_loss": losses[-1] if losses else None}
    if pretrained:
        metrics["pretrain"] = pretrained
    save_trained(opts, contract, model, task, metrics, started, opts.lr or family.lr)
    plot_training(opts.out.with_name(opts.out.name + ".png"), family.name, losses, metrics)
    return metrics


def channel_table(win: Windows) -> dict:
    """The metrics' ``channels``: ``used`` (input order) and ``left_out`` {name: reason}."""
    return {"used": list(win.info.ch_names), "left_out": dict(win.left_out)}


def make_contract(family: Family, win: Windows, opts: TrainOptions, task: dict):
    """The checkpoint contract of ``family`` trained on ``win`` as ``opts`` asks."""
    from rtbci.models.checkpoint import Contract, InputContract, OutputContract

    module = family.load()
    base = module.HPARAMS if opts.size == "paper" else module.SMALL
    hparams = {**base, **opts.hparams, "n_outputs": task["n_outputs"]}
    start_s, _ = opts.window or family.window
    positions = None if win.info.positions is None else [
        None if np.isnan(p).any() else [float(v) for v in p] for p in win.info.positions]
    return Contract(
        family=family.name, hparams=hparams, n_subjects=int(win.subject.max()) + 1,
        input=InputContract(
            ch_names=list(win.info.ch_names), ch_types=list(win.info.ch_types),
            positions=positions, srate=win.info.srate, n_samples=win.x.shape[1],
            window_start_s=start_s, events=opts.events or [family.events],
            preprocess=train_preprocess(family, opts).model_dump(exclude={"picks"}),
            baseline_s=opts.baseline, left_out=dict(win.left_out)),
        output=OutputContract(kind=family.kind, labels=task["labels"],
                              pooled=task.get("pooled", False)))


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


def save_trained(opts: TrainOptions, contract, model, task: dict, metrics: dict,
                 started: float, lr: float) -> None:
    """Write the checkpoint ``opts.out`` (contract with ``metrics`` and the training run) and
    ``<out>.metrics.json``."""
    import torch

    from rtbci.models.checkpoint import save_checkpoint

    contract.metrics = metrics
    from rtbci.report import file_digest

    contract.training = {
        "data": [str(Path(p).resolve()) for p in opts.data],
        "data_sha256": [file_digest(p) for p in opts.data],  # replays recognise them
        "seed": opts.seed, "epochs": opts.epochs,
        "batch_size": opts.batch_size, "lr": lr, "size": opts.size,
        "val_fraction": opts.val_fraction, "seconds": round(time.perf_counter() - started, 1),
        "torch": str(torch.__version__)}
    save_checkpoint(opts.out, contract, model.state_dict(), task.get("bank"))
    metrics_path = opts.out.with_name(opts.out.name + ".metrics.json")
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")


def count_parameters(model) -> int:
    """Trained numbers: the parameters, or the fitted buffers of a closed-form family."""
    if hasattr(model, "fit_closed_form"):
        return sum(b.numel() for b in model.buffers())
    return sum(p.numel() for p in model.parameters())


def plot_training(path: Path, family: str, losses: list[float], metrics: dict) -> None:
    """``CKPT.png``: the training loss per epoch, and validation vs linear vs chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    left.plot(range(1, len(losses) + 1), losses, marker=".")
    left.set(xlabel="epoch", ylabel="training loss", title=f"{family}: training")
    if metrics["val"] is None:  # --val-fraction 0
        right.text(0.5, 0.5, f"no validation:\nfitted on all {metrics['n_train']} windows",
                   ha="center", va="center")
        right.set_axis_off()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    key = "accuracy" if "accuracy" in metrics["val"] else "top1"
    scores = [metrics["val"][key], metrics["linear"][key], metrics["val"]["chance"]]
    right.bar(["network", "linear", "chance"], scores, color=["C0", "C1", "0.6"])
    right.set(ylim=(0, 1), ylabel="top-1" if key == "top1" else key,
              title=f"validation ({metrics['n_val']} windows)")
    for x, y in enumerate(scores):
        right.text(x, y + 0.02, f"{y:.2f}", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _classes_task(win: Windows, opts: TrainOptions) -> dict:
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


def _retrieval_task(win: Windows, opts: TrainOptions) -> dict:
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
