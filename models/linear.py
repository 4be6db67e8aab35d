"""Shrinkage LDA (or logistic regression) on time-binned windows (family ``linear``).

The standard ERP classifier of Blankertz, Lemm, Treder, Haufe & Müller 2011, "Single-trial
analysis and classification of ERP components — a tutorial" (NeuroImage 56): each channel
is decimated to the means of consecutive ``bin_s`` time bins, the features (bins ×
channels) are standardised, and a linear discriminant with Ledoit-Wolf shrinkage of the
covariance (scikit-learn ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")``)
separates the classes. ``classifier="logreg"`` uses L2 logistic regression (``C``) instead.

It is fitted in closed form by scikit-learn (:meth:`LinearNet.fit_closed_form`, no gradient
descent), then the fitted numbers are copied into buffers of a small torch module (binning
matrix, standardisation, coefficients, intercept) so that it exports to ONNX and runs in
every runtime like the other families. Its probabilities are scikit-learn's
``predict_proba`` (tested). Deviations from the tutorial: the bins are equal-length
consecutive bins over the whole window rather than hand-picked intervals, and the features
are standardised (which leaves LDA's decision unchanged but lets one shrinkage fit all).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtbci.models.heads import Probabilities

__all__ = ["HPARAMS", "SMALL", "LinearNet", "bin_matrix", "class_logits",
           "training_loss"]

HPARAMS = {"bin_s": 0.05, "classifier": "lda", "C": 0.01}
SMALL = dict(HPARAMS)


def bin_matrix(n_samples: int, srate: float, bin_s: float) -> np.ndarray:
    """Averaging matrix ``(n_bins, n_samples)``: row ``i`` holds ``1 / len`` over bin ``i``
    of consecutive, near-equal bins of ``bin_s`` seconds (at least one bin, at most one
    per sample). ``bins @ window`` gives the bin means per channel."""
    n_bins = max(1, min(n_samples, round(n_samples / (bin_s * srate))))
    edges = np.linspace(0, n_samples, n_bins + 1).astype(int)
    bins = np.zeros((n_bins, n_samples), np.float32)
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        bins[i, a:b] = 1.0 / (b - a)
    return bins


def class_logits(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A scikit-learn linear classifier's ``coef_`` (k, n_features) and ``intercept_`` (k,)
    as logits for every class: binary models (k = 1, decision ``d``) become ``[0, d]``, whose
    softmax is their ``predict_proba``; multi-class ones are already one row per class."""
    coef, intercept = np.atleast_2d(coef), np.atleast_1d(intercept)
    if len(coef) == 1:
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    return coef.astype(np.float64), intercept.astype(np.float64)


class LinearNet(nn.Module):
    """Binned means → standardisation → linear logits: ``(batch, n_samples, n_channels)`` →
    ``(batch, n_outputs)``. All numbers are buffers set by :meth:`fit_closed_form`.

    Parameters
    ----------
    n_channels, n_samples, n_outputs : int
        Window shape and number of classes.
    srate : float
        Sampling rate in Hz (sets the bins).
    bin_s : float
        Bin length in seconds.
    classifier : ``"lda"`` | ``"logreg"``
        Shrinkage LDA, or L2 logistic regression of inverse strength ``C``.
    positions, n_subjects
        Accepted for the family interface; unused.
    """

    def __init__(self, n_channels: int, n_samples: int, n_outputs: int, *, srate: float,
                 positions: np.ndarray | None = None, n_subjects: int = 1,
                 bin_s: float = 0.05, classifier: str = "lda", C: float = 0.01):
        super().__init__()
        if classifier not in ("lda", "logreg"):
            raise ValueError(f"classifier must be 'lda' or 'logreg', not {classifier!r}")
        self.classifier, self.C = classifier, C
        bins = torch.from_numpy(bin_matrix(n_samples, srate, bin_s))
        n_features = len(bins) * n_channels
        self.register_buffer("bins", bins)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.register_buffer("weight", torch.zeros(n_outputs, n_features))
        self.register_buffer("bias", torch.zeros(n_outputs))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Bin means, flattened bin-major: (batch, n_samples, C) → (batch, n_bins · C)."""
        return torch.matmul(self.bins, x).flatten(1)

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, n_samples, n_channels) → logits (batch, n_outputs)."""
        z = (self.features(x) - self.mean) / self.scale
        return F.linear(z, self.weight, self.bias)

    def sklearn_pipeline(self):
        """The unfitted scikit-learn classifier on the features (scaler + LDA / LR)."""
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        clf = (LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
               if self.classifier == "lda" else LogisticRegression(C=self.C, max_iter=5000))
        return make_pipeline(StandardScaler(), clf)

    def fit_closed_form(self, x: np.ndarray, y: np.ndarray):
        """Fit the scikit-learn pipeline on windows ``x`` (n, n_samples, C) and class indices
        ``y`` (n,), copy its numbers into the buffers; returns the fitted pipeline."""
        with torch.inference_mode():
            feats = self.features(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        pipe = self.sklearn_pipeline().fit(feats.astype(np.float64), y)
        scaler, clf = pipe[0], pipe[-1]
        if len(clf.classes_) != len(self.bias):
            raise ValueError(f"{len(clf.classes_)} classes in the training windows, "
                             f"{len(self.bias)} outputs")
        weight, bias = class_logits(clf.coef_, clf.intercept_)
        for name, value in (("mean", scaler.mean_), ("scale", scaler.scale_),
                            ("weight", weight), ("bias", bias)):
            getattr(self, name).copy_(torch.from_numpy(np.asarray(value, np.float32)))
        return pipe

    def inference_module(self, subject: int | None = None) -> nn.Module:
        """Eval-mode module for one window: ``(1, n_samples, n_channels)`` → probabilities."""
        return Probabilities(self).eval()


def training_loss(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                  subject: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the logits against class indices (the family interface; the linear
    and riemann families are fitted in closed form, not with it)."""
    return F.cross_entropy(model(x, subject), target)
