"""What a training run leaves behind: the checkpoint's contract (:func:`make_contract`),
the checkpoint and ``CKPT.metrics.json`` (:func:`save_trained`), the channel table, the
parameter count and ``CKPT.png`` (:func:`plot_training`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from rtbci.models.families import Family
from rtbci.models.options import TrainOptions, train_preprocess
from rtbci.models.windows import Windows

__all__ = ["channel_table", "count_parameters", "make_contract", "plot_training",
           "save_trained"]


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
