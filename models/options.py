"""What ``rtbci train`` (and ``train auto``) was asked: :class:`TrainOptions`, and what the
options make of a family's preprocessing and window (:func:`train_preprocess`,
:func:`window_baseline`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rtbci.errors import RtbciError
from rtbci.models.checkpoint import baseline_slice
from rtbci.models.families import Family
from rtbci.preprocess import PreprocessConfig

__all__ = ["OVERRIDE_FLAGS", "TrainOptions", "train_preprocess", "window_baseline"]


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
