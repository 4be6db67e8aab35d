"""Decoder checkpoints: one file with the weights and the contracts the engine checks.

A checkpoint is a ``torch.save`` of a plain dict, read back with ``torch.load(...,
weights_only=True)`` (tensors, numbers, strings, lists and dicts only: loading a checkpoint
never runs code)::

    {"contract": Contract.model_dump(),   # family, hyper-parameters, input, output, metrics
     "state_dict": {name: tensor},         # the trained network
     "bank": tensor (n_candidates, ...) | None}   # retrieval: the candidate bank, float16

At start-up the engine checks the stream against the **input contract**: it picks and reorders
the channels by name, refuses a missing channel or a different sampling rate with one line,
and applies the contract's preprocessing to the source (``Preprocess`` below).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from rtbci.errors import RtbciError
from rtbci.models.base import Decoder
from rtbci.preprocess import PreprocessConfig
from rtbci.stream import StreamInfo

__all__ = ["CHECKPOINT_FORMAT", "BaselinedDecoder", "Checkpoint", "Contract", "InputContract",
           "OutputContract", "baseline_slice", "load_checkpoint", "save_checkpoint",
           "subtract_baseline"]

CHECKPOINT_FORMAT = 1
log = logging.getLogger("rtbci.models.checkpoint")
_WARNED: set[tuple] = set()  # warnings given once per process


class InputContract(BaseModel):
    """What the network was trained on (the stream after preprocessing).

    ch_names, ch_types : the channels, in the network's input order
    positions : (n_channels, 3) metres, None entries for channels without one
    srate : sampling rate in Hz after ``preprocess``
    n_samples : window length in samples
    window_start_s : first sample of the window relative to the marker (event-locked) in s
    events : marker texts it was trained on (``on_marker`` prefixes), empty for sliding windows
    preprocess : the source's streaming preprocessing (a :class:`PreprocessConfig` without picks)
    baseline_s : (start, end) s relative to the marker: each channel's mean over these
        samples of the window is subtracted from the window, in training and live; None: off
    left_out : the recording's channels that are not inputs, {name: reason}
        (:mod:`rtbci.models.channels`: stimulus, non-brain, flat or not named)
    """

    model_config = ConfigDict(extra="forbid")

    ch_names: list[str]
    ch_types: list[str]
    positions: list[list[float] | None] | None = None
    srate: float
    n_samples: int
    window_start_s: float = 0.0
    events: list[str] = []
    preprocess: dict[str, Any] = {}
    baseline_s: tuple[float, float] | None = None
    left_out: dict[str, str] = {}

    def baseline_samples(self) -> slice | None:
        """The window's samples ``baseline_s`` covers (None when there is no baseline)."""
        if self.baseline_s is None:
            return None
        return baseline_slice(self.baseline_s, self.window_start_s, self.srate)

    def channel_indices(self, info: StreamInfo, where: str) -> np.ndarray:
        """Indices of the contract's channels in a stream with ``info``, in contract order.

        Raises a one-line :class:`RtbciError` on a different rate or a missing channel; warns
        (once) when a stimulus or status channel is among them (a checkpoint trained on it,
        with ``--channels`` or before rtbci left such channels out, may read the labels).
        """
        if abs(info.srate - self.srate) > 1e-6 * self.srate:
            raise RtbciError(f"{where}: stream {info.name!r} runs at {info.srate:g} Hz after "
                             f"preprocessing, the checkpoint expects {self.srate:g} Hz")
        index = {name: i for i, name in enumerate(info.ch_names)}
        missing = [name for name in self.ch_names if name not in index]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise RtbciError(f"{where}: stream {info.name!r} has no channel {missing[0]!r}"
                             f"{more} that the checkpoint needs")
        picks = np.array([index[name] for name in self.ch_names], dtype=np.intp)
        self._warn_stimulus(info, picks, where)
        return picks

    def _warn_stimulus(self, info: StreamInfo, picks: np.ndarray, where: str) -> None:
        from rtbci.models.channels import STIMULUS_TYPES

        stim = [name for name, kind, i in zip(self.ch_names, self.ch_types, picks)
                if kind in STIMULUS_TYPES or info.ch_types[i] in STIMULUS_TYPES]
        if stim and (where, tuple(stim)) not in _WARNED:
            _WARNED.add((where, tuple(stim)))
            more = f" and {len(stim) - 1} more" if len(stim) > 1 else ""
            log.warning("%s: the checkpoint's inputs include stimulus/status channel %r%s: "
                        "it may decode the triggers, not the brain (retrain without them)",
                        where, stim[0], more)

    def positions_array(self) -> np.ndarray | None:
        """Positions as an array (n_channels, 3), NaN for channels without one."""
        if self.positions is None:
            return None
        return np.array([p if p is not None else [np.nan] * 3 for p in self.positions], float)

    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(**self.preprocess)

    def check_preprocess(self, preprocess: PreprocessConfig, where: str) -> None:
        """One-line :class:`RtbciError` if a source's preprocessing (picks aside) differs
        from the one the network was trained with."""
        have = preprocess.model_dump(exclude={"picks"})
        want = self.preprocess_config().model_dump(exclude={"picks"})
        diff = [k for k in want if have[k] != want[k]]
        if diff:
            k = diff[0]
            raise RtbciError(f"{where}: the source's preprocess.{k} is {have[k]!r} but the "
                             f"checkpoint was trained with {want[k]!r} (leave the source's "
                             "preprocess out to use the checkpoint's)")


def baseline_slice(baseline_s: tuple[float, float], window_start_s: float,
                   srate: float) -> slice:
    """Samples ``[start, end)`` s (relative to the marker) of a window that starts at
    ``window_start_s`` s, at ``srate`` Hz."""
    start, end = (round((t - window_start_s) * srate) for t in baseline_s)
    return slice(start, end)


def subtract_baseline(x: np.ndarray, samples: slice, out: np.ndarray | None = None,
                      mean: np.ndarray | None = None) -> np.ndarray:
    """Windows ``x`` (..., n_samples, n_channels) minus each channel's mean over
    ``samples``; ``out`` (like ``x``) and ``mean`` (..., 1, n_channels) may be preallocated.
    The one baseline code of training and of the live decoder."""
    mean = np.mean(x[..., samples, :], axis=-2, keepdims=True, out=mean)
    return np.subtract(x, mean, out=out)


class BaselinedDecoder(Decoder):
    """A decoder fed windows minus their baseline (:func:`subtract_baseline`), with
    preallocated buffers: what a checkpoint trained with ``--baseline`` runs live."""

    def __init__(self, decoder: Decoder, samples: slice):
        self.decoder, self.samples = decoder, samples
        self.kind, self.labels = decoder.kind, decoder.labels
        self.n_samples, self.n_channels = decoder.n_samples, decoder.n_channels
        self.output_size, self.window_start = decoder.output_size, decoder.window_start
        self._window = np.empty((self.n_samples, self.n_channels), np.float32)
        self._mean = np.empty((1, self.n_channels), np.float32)

    def __call__(self, window: np.ndarray):
        return self.decoder(subtract_baseline(window, self.samples, self._window, self._mean))

    def describe(self) -> dict:
        return {**self.decoder.describe(),
                "baseline_samples": [self.samples.start, self.samples.stop]}


class OutputContract(BaseModel):
    """What the network's output means.

    kind : ``classes`` (``labels`` are the classes), ``retrieval`` (``labels`` name the rows
        of the checkpoint's candidate bank; results are the ``top_k`` best) or ``embedding``
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["classes", "retrieval", "embedding"]
    labels: list[str] | None = None
    top_k: int = 5
    pooled: bool = False  # retrieval on time-pooled embeddings (speech maps averaged over time)


class Contract(BaseModel):
    """Everything about a checkpoint except its tensors."""

    model_config = ConfigDict(extra="forbid")

    format: int = CHECKPOINT_FORMAT
    family: str
    hparams: dict[str, Any] = {}
    n_subjects: int = 1
    input: InputContract
    output: OutputContract
    training: dict[str, Any] = {}
    metrics: dict[str, Any] = {}


class Checkpoint:
    """A loaded checkpoint: ``contract``, ``state_dict`` and ``bank`` (array or None)."""

    def __init__(self, contract: Contract, state_dict: dict, bank: np.ndarray | None = None,
                 path: Path | None = None, where: str = "model"):
        self.contract, self.state_dict, self.bank, self.path = contract, state_dict, bank, path
        self.where = where

    def __repr__(self) -> str:
        c = self.contract
        return (f"<Checkpoint: {c.family} | {len(c.input.ch_names)} ch × {c.input.n_samples} "
                f"samples @ {c.input.srate:g} Hz → {c.output.kind}>")

    def build_model(self):
        """The family's network with the trained weights, in eval mode.

        Raises a one-line :class:`RtbciError` if the weights do not fit the family's network.
        """
        from rtbci.models.families import get_family

        family = get_family(self.contract.family)
        try:
            model = family.build(self.contract)
            model.load_state_dict(self.state_dict)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            lines = [line.strip() for line in str(exc).splitlines()
                     if line.strip() and not line.startswith("Error(s) in loading")]
            first = lines[0][:200] if lines else type(exc).__name__
            raise RtbciError(f"{self.where}: {str(self.path)!r}: the weights do not fit a "
                             f"{self.contract.family} network: {first}") from None
        return model.eval()


def save_checkpoint(path: str | Path, contract: Contract, state_dict: dict,
                    bank: np.ndarray | None = None) -> Path:
    """Write a checkpoint (see the module docstring); returns the path."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    bank_t = None if bank is None else torch.from_numpy(np.asarray(bank, np.float16))
    plain = json.loads(contract.model_dump_json())  # only JSON types: weights_only loads it
    torch.save({"contract": plain, "state_dict": state, "bank": bank_t}, path)
    return path


def load_checkpoint(path: str | Path, where: str = "model") -> Checkpoint:
    """Read a checkpoint with ``weights_only=True``; one-line :class:`RtbciError` naming the
    file if it is missing, not a checkpoint, or of another format version."""
    path = Path(path)
    if not path.is_file():
        raise RtbciError(f"{where}: no checkpoint file {str(path)!r}")
    try:
        import torch
    except ImportError:
        raise RtbciError(f"{where}: reading {path.name} needs torch "
                         "(pip install 'rtbci[neural]')") from None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of many kinds
        raise RtbciError(f"{where}: {str(path)!r} is not an rtbci checkpoint: "
                         f"{_load_failure(exc, path)}") from None
    if not isinstance(raw, dict) or not {"contract", "state_dict"} <= set(raw):
        raise RtbciError(f"{where}: {str(path)!r} is not an rtbci checkpoint (no contract)")
    if not isinstance(raw["contract"], dict) or not isinstance(raw["state_dict"], dict):
        raise RtbciError(f"{where}: {str(path)!r} is not an rtbci checkpoint (its contract "
                         "and state_dict are not tables)")
    if raw["contract"].get("format") != CHECKPOINT_FORMAT:
        raise RtbciError(f"{where}: {str(path)!r} has checkpoint format "
                         f"{raw['contract'].get('format')!r}; this rtbci reads "
                         f"{CHECKPOINT_FORMAT}")
    try:
        contract = Contract.model_validate(raw["contract"])
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise RtbciError(f"{where}: {str(path)!r}: contract.{key}: {err['msg']}") from None
    bank = raw.get("bank")
    if bank is not None and not isinstance(bank, torch.Tensor):
        raise RtbciError(f"{where}: {str(path)!r}: bank is a {type(bank).__name__}, not a "
                         "tensor")
    return Checkpoint(contract, raw["state_dict"],
                      None if bank is None else bank.float().numpy(), path, where)


def _load_failure(exc: Exception, path: Path) -> str:
    """Why ``torch.load`` refused a file, in one line (torch's messages run to paragraphs)."""
    text = str(exc)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"it holds a Python object ({refused.group(1)}) that a safe load refuses"
    if path.stat().st_size == 0:
        return "the file is empty"
    if isinstance(exc, EOFError):
        return "the file ends early (truncated?)"
    detail = re.search(r"WeightsUnpickler error: \s*(.+)", text)
    if detail:
        return f"not a torch file ({detail.group(1).strip()})"
    first = text.split(". ")[0].strip()
    return first or type(exc).__name__
