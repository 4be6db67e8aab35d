"""``rtbci train FAMILY``: event-locked windows from recordings → a trained checkpoint + metrics.

The orchestration only: windows (:mod:`rtbci.models.windows`), the task and its split
(:mod:`rtbci.models.fitting`, :mod:`rtbci.models.splits`), the fit, then the checkpoint,
metrics and plot (:mod:`rtbci.models.artefacts`). Validation is held out **by trial**
(classes, stratified) or **by item** (retrieval: the validation candidates are never seen in
training, so retrieval is zero-shot), and a linear baseline is fitted on the same split.
"""

from __future__ import annotations

import time

from rtbci.errors import RtbciError
from rtbci.models.artefacts import (
    channel_table,
    count_parameters,
    make_contract,
    plot_training,
    save_trained,
)
from rtbci.models.fitting import (
    classes_task,
    fit_family,
    predict,
    retrieval_task,
    training_threads,
)
from rtbci.models.options import TrainOptions
from rtbci.models.windows import load_windows

__all__ = ["train"]


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
    task = classes_task(win, opts) if family.kind == "classes" else retrieval_task(win, opts)
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
