"""Covariances → Riemannian tangent space → logistic regression (family ``riemann``).

The pipeline of Barachant, Bonnet, Congedo & Jutten 2012/2013 ("Multiclass brain-computer
interface classification by Riemannian geometry"; "Classification of covariance matrices
using a Riemannian-based kernel for BCI applications") and, for evoked responses, of
Barachant & Congedo 2014 ("A plug&play P300 BCI using information geometry": Xdawn
covariances), built on **pyriemann** (Barachant et al.):

1. ``prototypes`` (a hyper-parameter) chooses the matrices:
   ``"xdawn"`` (default) — ``pyriemann.estimation.XdawnCovariances(nfilter)``: the window is
   filtered by ``nfilter`` Xdawn filters per class and stacked under the filtered class-mean
   responses (the prototypes), then its covariance is taken: evoked paradigms;
   ``"erp"`` — ``ERPCovariances``: the same with the raw class means, no filters;
   ``"none"`` — ``Covariances``: the channels' covariance, for oscillatory paradigms
   (band-pass first: ``rtbci train riemann --bandpass 8 30``);
2. ``pyriemann.tangentspace.TangentSpace(metric="riemann")``: the matrices are projected on
   the tangent space at their Riemannian mean (``logm(Cref^-½ C Cref^-½)``, upper triangle);
3. scikit-learn ``LogisticRegression(C)``.

Fitting is pyriemann's and scikit-learn's (:meth:`RiemannNet.fit_closed_form`). The fitted
numbers (Xdawn filters, prototypes, the reference matrix, the regression's weights) are
stored as buffers of :class:`RiemannNet`, whose forward calls pyriemann's functional API
(``covariances_EP`` / ``covariances``, ``tangent_space``) on torch tensors (pyriemann ≥ 0.12
runs on torch), in float64: the deployed output is the pipeline's ``predict_proba`` (tested),
computed by the same code, with no re-implementation of the estimators.

Deployment runs in **torch eager** (``runtime = "auto"`` picks ``torch`` for this family and
logs why): the matrix logarithm needs an eigendecomposition, which ONNX (hence onnxruntime
and TensorRT) cannot express, and a CUDA graph cannot capture it. Torch rather than a numpy
decoder because it keeps one deployment path for every checkpoint (contract checks,
runtime warm-up and verification, ``rtbci compile`` latencies, ``device = "cuda"``) and the
same pyriemann functions run on either backend.

Deviations: none in the math; the covariance estimator defaults to ``"lwf"`` (Ledoit-Wolf
shrinkage, pyriemann's default is the unshrunk ``"scm"``), for the matrices and for the
signal covariance the Xdawn filters are solved against (``xdawn_estimator``), because short
windows give fewer samples than dimensions and a flat or duplicated channel makes an unshrunk
covariance singular. Such channels are named before fitting (:data:`FULL_RANK`:
:func:`rtbci.models.fitting.degenerate_channels`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtbci.models.heads import Probabilities
from rtbci.models.linear import class_logits

__all__ = ["EAGER_ONLY", "FULL_RANK", "HPARAMS", "SMALL", "RiemannNet", "training_loss"]

HPARAMS = {"prototypes": "xdawn", "nfilter": 4, "estimator": "lwf", "C": 1.0}
SMALL = dict(HPARAMS)

EAGER_ONLY = ("the tangent space's matrix logarithm needs an eigendecomposition, which ONNX "
              "cannot export and a CUDA graph cannot capture")
PROTOTYPES = ("xdawn", "erp", "none")
FULL_RANK = True  # covariances: flat or duplicated channels are named before fitting


class RiemannNet(nn.Module):
    """Tangent-space logistic regression: ``(batch, n_samples, n_channels)`` → logits.

    Parameters
    ----------
    n_channels, n_samples, n_outputs : int
        Window shape and number of classes.
    prototypes : ``"xdawn"`` | ``"erp"`` | ``"none"``
        See the module docstring.
    nfilter : int
        Xdawn filters per class.
    estimator : str
        pyriemann covariance estimator (``"lwf"``, ``"oas"``, ``"scm"``, ``"sch"`` …).
    C : float
        Inverse L2 strength of the logistic regression.
    srate, positions, n_subjects
        Accepted for the family interface; unused.
    """

    def __init__(self, n_channels: int, n_samples: int, n_outputs: int, *, srate: float,
                 positions: np.ndarray | None = None, n_subjects: int = 1,
                 prototypes: str = "xdawn", nfilter: int = 4, estimator: str = "lwf",
                 C: float = 1.0):
        super().__init__()
        if prototypes not in PROTOTYPES:
            raise ValueError(f"prototypes must be one of {PROTOTYPES}, not {prototypes!r}")
        self.prototypes, self.nfilter, self.estimator, self.C = prototypes, nfilter, estimator, C
        n_filters = {"xdawn": n_outputs * min(nfilter, n_channels), "erp": n_channels,
                     "none": n_channels}[prototypes]
        n_proto = {"xdawn": n_filters, "erp": n_outputs * n_channels, "none": 0}[prototypes]
        dim = n_filters + n_proto
        n_features = dim * (dim + 1) // 2
        f64 = torch.float64
        self.register_buffer("filters", torch.eye(n_filters, n_channels, dtype=f64))
        self.register_buffer("evoked", torch.zeros(n_proto, n_samples, dtype=f64))
        self.register_buffer("reference", torch.eye(dim, dtype=f64))
        self.register_buffer("weight", torch.zeros(n_outputs, n_features, dtype=f64))
        self.register_buffer("bias", torch.zeros(n_outputs, dtype=f64))

    def covariances(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n_samples, C) → the pipeline's matrices (batch, dim, dim), float64."""
        from pyriemann.geometry.covariance import covariances, covariances_EP

        xt = torch.matmul(self.filters, x.to(torch.float64).transpose(1, 2))
        if self.prototypes == "none":
            return covariances(xt, estimator=self.estimator)
        return covariances_EP(xt, self.evoked, estimator=self.estimator)

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, n_samples, n_channels) → logits (batch, n_outputs), float32."""
        from pyriemann.geometry.tangentspace import tangent_space

        features = tangent_space(self.covariances(x), self.reference, metric="riemann")
        return F.linear(features, self.weight, self.bias).to(torch.float32)

    def sklearn_pipeline(self):
        """The unfitted pyriemann + scikit-learn pipeline on ``(n, C, n_samples)`` windows."""
        from pyriemann.estimation import Covariances, ERPCovariances, XdawnCovariances
        from pyriemann.tangentspace import TangentSpace
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        covs = {"xdawn": lambda: XdawnCovariances(self.nfilter, estimator=self.estimator,
                                                  xdawn_estimator=self.estimator),
                "erp": lambda: ERPCovariances(estimator=self.estimator),
                "none": lambda: Covariances(estimator=self.estimator)}[self.prototypes]()
        return make_pipeline(covs, TangentSpace(metric="riemann"),
                             LogisticRegression(C=self.C, max_iter=5000))

    def fit_closed_form(self, x: np.ndarray, y: np.ndarray):
        """Fit the pipeline on windows ``x`` (n, n_samples, C) and class indices ``y``;
        copy filters, prototypes, reference and weights into the buffers; returns it."""
        pipe = self.sklearn_pipeline().fit(np.asarray(x, np.float64).transpose(0, 2, 1), y)
        covs, ts, clf = pipe
        if len(clf.classes_) != len(self.bias):
            raise ValueError(f"{len(clf.classes_)} classes in the training windows, "
                             f"{len(self.bias)} outputs")
        if self.prototypes == "xdawn":
            self._set("filters", covs.Xd_.filters_)
        if self.prototypes != "none":
            self._set("evoked", covs.P_)
        weight, bias = class_logits(clf.coef_, clf.intercept_)
        for name, value in (("reference", ts.reference_), ("weight", weight), ("bias", bias)):
            self._set(name, value)
        return pipe

    def _set(self, name: str, value: np.ndarray) -> None:
        buffer = getattr(self, name)
        if tuple(buffer.shape) != np.shape(value):
            raise ValueError(f"{name}: fitted shape {np.shape(value)}, expected "
                             f"{tuple(buffer.shape)}")
        buffer.copy_(torch.from_numpy(np.asarray(value, np.float64)))

    def inference_module(self, subject: int | None = None) -> nn.Module:
        """Eval-mode module for one window: ``(1, n_samples, n_channels)`` → probabilities
        (torch eager only: see :data:`EAGER_ONLY`)."""
        return Probabilities(self).eval()


def training_loss(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                  subject: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the logits (the family interface; the family is fitted in closed
    form by :meth:`RiemannNet.fit_closed_form`)."""
    return F.cross_entropy(model(x, subject), target)
