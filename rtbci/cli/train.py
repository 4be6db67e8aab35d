"""``rtbci train``: train a decoder family on recordings (``auto``: pick the best)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rtbci.cli.arguments import (
    _names,
    _positive,
    add_ray_options,
    check_output,
    preprocess_overrides,
    seconds,
)
from rtbci.errors import RtbciError
from rtbci.models.families import FAMILIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci train``: its arguments on ``sub``."""
    p = sub.add_parser(
        "train", help="train a decoder family on recordings",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a decoder family on event-locked windows of MNE-readable "
                    "recordings (FIF, EDF, BDF, BrainVision, EEGLAB) or XDF, and write one "
                    "checkpoint (weights + input/output contract) plus CKPT.metrics.json "
                    "(validation and linear-baseline scores).\n\nFAMILY auto cross-validates "
                    "every class family that runs at any rate (linear, riemann, eegnet, "
                    "motor-gnn) with the family's own, wide-band and no preprocessing, prints "
                    "the table, and refits the best on all the data.\n\nfamilies:\n"
                    + "\n".join(f"  {f.name:<16} {f.kind:<9} {f.paper}"
                                 for f in FAMILIES.values()))
    p.add_argument("family", choices=["auto", *FAMILIES], metavar="FAMILY",
                   help="auto, " + ", ".join(FAMILIES))
    p.add_argument("--data", type=Path, nargs="+", required=True, metavar="FILE",
                   help="recordings with event annotations/markers; bids:ROOT?sub=01&task=T "
                        "selects a BIDS dataset's recordings (entities sub, ses, task, run, "
                        "acq, datatype)")
    p.add_argument("--events", nargs="+", metavar="PATTERN", default=[],
                   help="train on the markers these patterns select: a name, a prefix of "
                        "PREFIX/<label>, or re:REGEX (label: its first group) (default: the "
                        "family's prefix, e.g. word)")
    p.add_argument("--targets", type=Path, metavar="BANK.npy",
                   help="retrieval families: target embeddings (n_items, dim[, time]); row "
                        "labels in BANK.json (a JSON list) match the events' <label>")
    p.add_argument("--out", type=Path, required=True, metavar="CKPT",
                   help="checkpoint to write (e.g. motor.pt)")
    _add_fit_options(p)
    _add_auto_options(p)
    _add_preprocess_options(p)
    add_ray_options(p, "off")
    p.set_defaults(func=run)


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    """How to fit: epochs, split, inputs, network size and hyper-parameters, pre-training."""
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    p.add_argument("--batch-size", type=int, default=64, help="default 64")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: the family's)")
    p.add_argument("--seed", type=int, default=0, help="seed of split, init and batches")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of trials (classes) or items (retrieval) held out (default "
                        "0.2); 0 fits on every trial and scores nothing")
    p.add_argument("--channels", type=_names,
                   metavar="NAMES", help="the inputs: comma-separated channel names or globs "
                        "(e.g. 'A*'), in that order (default: the data channels: EEG, MEG, "
                        "sEEG, ECoG …; stimulus/trigger channels only when named here, with a "
                        "warning; flat ones left out)")
    p.add_argument("--include-types", type=lambda s: tuple(t for t in s.split(",") if t),
                   default=(), metavar="T,…",
                   help="also take channels of these types as inputs: eog, emg, ecg, misc, "
                        "resp …, and flat for constant channels (left out by default)")
    p.add_argument("--window", type=float, nargs=2, metavar=("START", "END"),
                   help="seconds around the event (default: the family's)")
    p.add_argument("--size", choices=["small", "paper"], default="small",
                   help="network size: small (default; trains in minutes on a CPU) or the "
                        "paper's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a hyper-parameter, e.g. --set hidden=64 (JSON values)")
    p.add_argument("--subject-per-file", action="store_true",
                   help="each --data file is another subject (subject layers)")
    p.add_argument("--pretrain", type=Path, nargs="+", default=[], metavar="FILE",
                   help="pre-train first: self-supervised (seeg-words) or on these "
                        "recordings' events (motor-gnn: other conditions), then fine-tune")
    p.add_argument("--pretrain-epochs", type=int, default=10, help="default 10")
    p.add_argument("--pool-bank", action="store_true",
                   help="speech: store time-pooled candidates (dim instead of dim × time: "
                        "smaller and faster on a CPU; the metrics say what it costs)")
    p.add_argument("--stream", help="name of the signal stream in multi-stream files (XDF)")
    p.add_argument("--keep-bad", action="store_true",
                   help="keep windows that touch BAD_* annotations (dropped by default, as "
                        "MNE's reject_by_annotation does)")


def _add_auto_options(p: argparse.ArgumentParser) -> None:
    """``train auto``: folds, candidate families, time budget."""
    p.add_argument("--folds", type=int, default=5,
                   help="auto: cross-validation folds (default 5; grouped by file when "
                        "several --data files are given)")
    p.add_argument("--families", type=lambda s: tuple(f for f in s.split(",") if f),
                   metavar="F,…", help="auto: compare only these families (named neural "
                   "ones run whatever the trial count; by default eegnet and motor-gnn "
                   "need 40 trials per class)")
    p.add_argument("--budget", default=60.0, metavar="SECONDS|none",
                   type=_budget_seconds,
                   help="auto: seconds for the search and the refit (default 60, for a "
                        "2-core machine): cheap candidates first, successive halving, none "
                        "started once it would overrun; none: no cap")


def _add_preprocess_options(p: argparse.ArgumentParser) -> None:
    """Overrides of the family's preprocessing and the baseline."""
    p.add_argument("--bandpass", nargs="+", metavar="LO HI|none",
                   help="override the family's band-pass (Hz), or none")
    p.add_argument("--notch", nargs="+", metavar="HZ…|none",
                   help="override the family's notch frequencies (Hz), or none")
    p.add_argument("--resample", nargs=1, metavar="HZ|none",
                   help="override the family's rate (Hz), or none: keep the source's")
    p.add_argument("--baseline", nargs="+", metavar="START END|none",
                   help="subtract each channel's mean over START…END s (marker-relative, "
                        "inside --window) from every window, in training and live")


def _budget_seconds(text: str) -> float | None:
    """``train auto --budget``: seconds > 0, or none (no cap)."""
    if text == "none":
        return None
    try:
        return _positive(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds or none, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Train FAMILY (or ``auto``: select one) on ``--data``, write the checkpoint, print its
    scores; 0."""
    from rtbci.models.runtimes.select import importable

    if not importable("torch") or not importable("sklearn"):
        raise RtbciError("train needs torch and scikit-learn: pip install 'rtbci[neural]'")
    check_output(args.out, "--out")  # before minutes of training, not after
    from rtbci.models.channels import check_include_types
    from rtbci.models.options import TrainOptions
    from rtbci.models.training import train

    hparams = _hparams(args.set)
    from rtbci.export import expand_data

    opts = TrainOptions(
        data=expand_data(args.data), out=args.out, events=args.events, targets=args.targets,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        val_fraction=args.val_fraction, channels=args.channels,
        include_types=check_include_types(args.include_types),
        window=tuple(args.window) if args.window else None, size=args.size, hparams=hparams,
        subject_per_file=args.subject_per_file, pretrain=args.pretrain,
        pretrain_epochs=args.pretrain_epochs, pool_bank=args.pool_bank, stream=args.stream,
        keep_bad=args.keep_bad, preprocess=preprocess_overrides(args),
        baseline=seconds(args.baseline, "--baseline"))
    from rtbci.cluster import connect, disconnect

    connect(args.ray, args.workers)  # Ray: each file's loading and each candidate a task
    try:
        if args.family == "auto":
            return _train_auto(opts, args)
        metrics = train(args.family, opts)
    finally:
        disconnect()
    _print_metrics(metrics, args.out)
    return 0


def _hparams(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items as hyper-parameters: VALUE read as JSON, else a string."""
    hparams = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RtbciError(f"--set: {item!r} is not KEY=VALUE")
        try:
            hparams[key] = json.loads(value)
        except json.JSONDecodeError:
            hparams[key] = value
    return hparams


def _print_metrics(metrics: dict, out: Path) -> None:
    """What the fit wrote and how it scored: validation, linear baseline, channels used."""
    from rtbci.models.channels import summary

    print(f"wrote {out} ({metrics['parameters']:,} parameters; {metrics['n_train']} "
          f"training / {metrics['n_val']} validation windows)")
    if metrics["val"] is None:
        print(f"  no validation (--val-fraction 0): fitted on all {metrics['n_train']} windows")
    for name in ("val", "linear") if metrics["val"] is not None else ():
        print(f"  {name:<7} {format_score(metrics[name])}")
    print(f"  {summary(metrics['channels']['used'], metrics['channels']['left_out'])}")
    print(f"  metrics in {out.name}.metrics.json, plot in {out.name}.png")


def _train_auto(opts, args: argparse.Namespace) -> int:
    """``train auto``: cross-validate the candidates, print the table, refit the best; 0."""
    from rtbci.models.selection import select
    from rtbci.models.selection_report import format_table

    if args.folds < 2:
        raise RtbciError(f"--folds: at least 2, got {args.folds}")
    metrics = select(opts, args.families, args.folds, args.budget)
    for line in format_table(metrics["auto"], metrics["channels"]):
        print(line)
    choice = metrics["auto"]["choice"]
    print(f"wrote {args.out}: {choice['family']} with {choice['preprocessing']} preprocessing, "
          f"refitted on all {metrics['n_train']} windows ({metrics['parameters']:,} "
          f"parameters); table in {args.out.name}.metrics.json, plot in {args.out.name}.png")
    return 0


def format_score(m: dict) -> str:
    """One line of a metrics entry: accuracy or top-k, with chance and the multiple of it."""
    if "accuracy" in m:
        from rtbci.report import format_accuracy

        return f"{format_accuracy(m['accuracy'], m)} on {m['n_val']} windows"
    return (f"top-1 {m['top1']:.3f}  top-5 {m['top5']:.3f}  top-10 {m['top10']:.3f} among "
            f"{m['n_candidates']} unseen candidates (chance {m['chance']:.3f}, "
            f"{m['top1'] / m['chance']:.1f}×)")
