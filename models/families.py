"""The decoder families: which network, which output, and the defaults ``rtbci train`` uses.

A family module (``rtbci.models.<module>``) defines the network class, ``HPARAMS`` (the
paper's sizes), ``SMALL`` (sizes that train in seconds on a laptop CPU) and
``training_loss(model, x, target, subject)``; the network takes windows
``(batch, n_samples, n_channels)`` and has ``inference_module(subject)`` for compiling.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from rtbci.errors import RtbciError

if TYPE_CHECKING:
    from rtbci.models.checkpoint import Contract
    from rtbci.preprocess import PreprocessConfig

__all__ = ["FAMILIES", "Family", "get_family"]


@dataclass(frozen=True)
class Family:
    """A decoder family and its training defaults.

    kind : ``classes`` or ``retrieval``
    srate : Hz the network runs at (the source is resampled to it); None keeps the
        source's rate (the network is built for whatever rate it trains at)
    window : (start, end) seconds relative to the event marker
    preprocess : the streaming preprocessing (band-pass etc.; ``resample_hz`` is ``srate``)
    events : marker prefix of the training events (``<events>/<label>``)
    lr : Adam learning rate
    """

    name: str
    module: str
    net: str
    kind: str
    paper: str
    srate: float | None
    window: tuple[float, float]
    preprocess: dict = field(default_factory=dict)
    events: str = "stim"
    lr: float = 1e-3

    def preprocess_config(self, **overrides) -> PreprocessConfig:
        """The source preprocessing it trains with: ``preprocess``, resampled to ``srate``,
        then ``overrides`` (``PreprocessConfig`` fields; ``rtbci train --bandpass`` etc.)."""
        from rtbci.preprocess import PreprocessConfig

        return PreprocessConfig(**{**self.preprocess, "resample_hz": self.srate, **overrides})

    def load(self) -> ModuleType:
        return importlib.import_module(f"rtbci.models.{self.module}")

    def build(self, contract: Contract):
        """The family's network for ``contract`` (untrained)."""
        inp = contract.input
        hparams = dict(contract.hparams)
        n_outputs = hparams.pop("n_outputs")
        cls = getattr(self.load(), self.net)
        return cls(len(inp.ch_names), inp.n_samples, n_outputs, srate=inp.srate,
                   positions=inp.positions_array(), n_subjects=contract.n_subjects, **hparams)


FAMILIES = {f.name: f for f in (
    Family("speech", "speech", "SpeechNet", "retrieval",
           "Défossez et al. 2023, Decoding speech perception from non-invasive brain recordings",
           srate=120.0, window=(-0.5, 2.5), preprocess={"bandpass": (0.5, 40.0)},
           events="segment", lr=1e-3),  # the paper's 3e-4 is for batches of 256 over hours
    Family("seeg-words", "seeg_words", "DuIN", "classes",
           "Zheng et al. 2024, Du-IN: discrete units-guided mask modeling for decoding speech "
           "from intracranial neural signals",
           srate=1000.0, window=(0.0, 1.0), preprocess={"bandpass": (1.0, 200.0)},
           events="word"),
    Family("image-retrieval", "image_retrieval", "ImageRetrievalNet", "retrieval",
           "THINGS-EEG line: NICE (Song et al. 2024), UBP (Wu et al. 2025)",
           srate=250.0, window=(0.0, 1.0), preprocess={"bandpass": (0.5, 40.0)},
           events="image"),
    Family("motor-gnn", "motor_gnn", "MotorGNN", "classes",
           "Nardi, Han, Haar & Faisal 2024, Graph neural networks uncover geometric neural "
           "representations in reinforcement-based motor learning",
           srate=250.0, window=(0.0, 1.0), preprocess={"bandpass": (1.0, 40.0)},
           events="outcome"),
    # standard decoders (issue 11): no forced resample, no forced filter
    Family("linear", "linear", "LinearNet", "classes",
           "shrinkage LDA on time-binned windows (Blankertz et al. 2011, Single-trial "
           "analysis and classification of ERP components — a tutorial)",
           srate=None, window=(0.0, 1.0)),
    Family("riemann", "riemann", "RiemannNet", "classes",
           "covariances → tangent space → logistic regression (Barachant et al. 2012/2014; "
           "Xdawn covariances: Barachant & Congedo 2014), with pyriemann",
           srate=None, window=(0.0, 1.0)),
    Family("eegnet", "eegnet", "EEGNet", "classes",
           "Lawhern et al. 2018, EEGNet: a compact convolutional neural network for "
           "EEG-based brain-computer interfaces (EEGNet-8,2)",
           srate=None, window=(0.0, 1.0)),
)}


def get_family(name: str) -> Family:
    """The family called ``name``; a one-line :class:`RtbciError` listing them otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise RtbciError(f"unknown decoder family {name!r} (families: "
                         f"{', '.join(FAMILIES)})") from None
