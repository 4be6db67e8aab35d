"""Image retrieval from EEG/MEG: brain encoder into a CLIP image space (family ``image-retrieval``).

After the THINGS-EEG line (Gifford et al. 2022's data set): Wu et al., "Bridging the Vision-Brain
Gap with an Uncertainty-Aware Blur Prior" (UBP, CVPR 2025) and Song et al., "Decoding Natural
Images from EEG for Object Recognition" (NICE, ICLR 2024). Output kind ``retrieval``: the
network maps one window (paper: 63 channels × 250 samples, 0–1 s at 250 Hz) to an embedding
of ``n_outputs`` dimensions (CLIP image features, 1024 for RN50 / ViT-H/14); normalisation,
the candidate bank and top-k run outside the network.

Network: whitening → ``encoder`` → projector.

- **Whitening** with the training covariance, as THINGS-EEG's preprocessing (Gifford et al.
  2022: noise covariance with shrinkage, ``Σ^-1/2`` applied to every sample):
  :meth:`ImageRetrievalNet.fit_input` centres the training windows at each time point (the
  grand-average evoked response is removed, an approximation of the paper's per-image
  centring, which needs labels), pools the channel covariance over windows and time, shrinks
  it toward the scaled identity by ``shrinkage`` and stores ``W = Σ^-1/2`` (ZCA) and the
  channel mean as buffers (identity and zero before fitting). Forward applies ``(x − μ) W``.
- ``encoder="ubp"``: the whole window flattened (UBP's encoder is just its projector).
- ``encoder="tsconv"``: NICE's temporal-spatial convolution (rtbci reads NICE's public
  code): temporal conv (``n_filters`` kernels of ``temporal_kernel_s``,
  25 samples at 250 Hz) → average pool (``pool_s`` = 51 samples, stride ``pool_stride_s`` =
  5) → BatchNorm → ELU → spatial conv across all electrodes (``n_filters`` × C kernels) →
  BatchNorm → ELU → Dropout(``conv_dropout``) → 1×1 conv (``n_filters`` → ``n_filters``) →
  flatten. With 63 × 250 → 1024 and 40 filters the network (projector included) has
  2,630,913 parameters: the 2.63 M usually quoted for NICE, so that figure includes the
  projector.
- **Projector** (both encoders, UBP's and NICE's ``Proj_eeg``): Linear → one residual block
  (GELU, Linear, Dropout(``dropout``)) → LayerNorm, all ``n_outputs`` wide.

Training: symmetric CLIP / InfoNCE (:func:`rtbci.models.contrastive.clip_loss`) against the
targets with a learnable ``logit_scale`` (init ``log(1/0.07)``). UBP's uncertainty-aware blur
prior blurs the image of each pair in proportion to its estimated uncertainty (pairs whose
brain–image similarity falls below mean − z_{α/2}·std of the batch, α = 0.05, get the strongest
blur); rtbci cannot blur images at training time, so with ``uncertainty=True`` it weights pairs
instead (:func:`uncertainty_weights`): pairs the brain matches poorly count less, so detail the
brain did not encode is not forced into alignment.

Correspondence with NICE's code (eeyhsong/NICE-EEG @ a7709d8, ``nice_stand.Enc_eeg`` +
``Proj_eeg``): with ``encoder="tsconv"`` at NICE's sizes, :meth:`ImageRetrievalNet.
reference_forward` (TSConv stem and projector, without the whitening, which stands in for
THINGS-EEG's noise normalisation) is NICE's forward; loaded with NICE's weights through
:mod:`rtbci.models.import_weights` (whose only conversion is the order of the projector's
input columns: NICE flattens time-major) the outputs agree to float precision
(tests/models/test_parity.py).

Deviations: the subject is ignored (the papers train one model per subject); ``positions``
are unused (the spatial conv reads every electrode); UBP's per-sample similarity running
average across epochs is dropped (the loss sees one batch); NICE's separate 1×1 projection
width (``emb_size`` = 40) is tied to ``n_filters``; ``shrinkage`` is a fixed fraction
rather than Ledoit–Wolf's estimate.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from rtbci.models.contrastive import LOGIT_SCALE_INIT, clip_loss

__all__ = ["HPARAMS", "SMALL", "TSCONV_HPARAMS", "ImageRetrievalNet", "pooled_covariance",
           "training_loss", "uncertainty_weights", "whitening"]

HPARAMS = {"encoder": "ubp", "dropout": 0.3, "n_filters": 40, "temporal_kernel_s": 0.1,
           "pool_s": 0.204, "pool_stride_s": 0.02, "conv_dropout": 0.5, "shrinkage": 0.01,
           "uncertainty": True, "uncertainty_temperature": 0.5}
TSCONV_HPARAMS = {**HPARAMS, "encoder": "tsconv", "dropout": 0.5}  # NICE's sizes
# SMALL: 8 filters, 10/20/10-sample kernel/pool/stride at 250 Hz; the projector's d × d residual
# dominates (17 k parameters for 17 × 250 → 64, 1.25 M for 63 × 250 → 1024)
SMALL = {**HPARAMS, "encoder": "tsconv", "n_filters": 8, "temporal_kernel_s": 0.04,
         "pool_s": 0.08, "pool_stride_s": 0.04}

Z_ALPHA = 1.959964  # z_{α/2} for UBP's α = 0.05


def pooled_covariance(windows: np.ndarray) -> np.ndarray:
    """Channel covariance pooled over windows and time, each time point centred across windows.

    windows : array (n_windows >= 2, n_samples, n_channels). Returns (n_channels, n_channels)
    float64.
    """
    w = np.asarray(windows)
    if w.ndim != 3 or len(w) < 2:
        raise ValueError(f"whitening needs >= 2 windows (n, n_samples, n_channels), got {w.shape}")
    evoked = w.mean(axis=0, dtype=np.float64)
    cov = np.zeros((w.shape[2], w.shape[2]))
    for start in range(0, len(w), 256):  # chunks: no full float64 copy of the windows
        centred = (w[start:start + 256] - evoked).reshape(-1, w.shape[2])
        cov += centred.T @ centred
    return cov / (w.shape[0] * w.shape[1])


def whitening(windows: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Channel mean ``μ`` (C,) and ZCA matrix ``W = Σ_s^-1/2`` (C, C) of training windows.

    ``Σ_s = (1 − shrinkage) Σ + shrinkage · tr(Σ)/C · I`` with ``Σ`` the
    :func:`pooled_covariance`; ``(x − μ) W`` then has (shrunk) identity covariance.
    """
    cov = pooled_covariance(windows)
    n = len(cov)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / n * np.eye(n)
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.maximum(eigval, eigval.max() * 1e-12)
    zca = (eigvec / np.sqrt(eigval)) @ eigvec.T
    mean = np.asarray(windows).mean(axis=(0, 1), dtype=np.float64)
    return mean, zca


def uncertainty_weights(brain: torch.Tensor, target: torch.Tensor,
                        temperature: float = 0.5) -> torch.Tensor:
    """Per-pair loss weights, mean 1, lower for pairs the brain output matches poorly.

    With the detached cosine agreement ``a_i = cos(brain_i, target_i)`` standardised over the
    batch, ``z_i = (a_i − mean a) / std a``, the weight is
    ``w_i ∝ sigmoid((z_i + z_{α/2}) / temperature)`` normalised to mean 1 (α = 0.05): a
    smooth version of UBP's rule, whose pairs below ``mean − z_{α/2} std`` are the most
    uncertain (UBP blurs their images most; here their weight falls toward 0).

    brain, target : tensor (n, d). temperature : in standard deviations. Returns (n,). The
    spread is floored at 1e-4 so that a batch of (numerically) equal agreements weighs about 1.
    """
    with torch.no_grad():
        agreement = F.cosine_similarity(brain.flatten(1), target.flatten(1), dim=1)
        spread = agreement.std(correction=0).clamp_min(1e-4)
        weights = torch.sigmoid(((agreement - agreement.mean()) / spread + Z_ALPHA) / temperature)
        return weights / weights.mean()


class TSConv(nn.Module):
    """NICE's temporal-spatial conv stem: (batch, n_samples, C) → (batch, n_filters · n_time)."""

    def __init__(self, n_channels: int, n_samples: int, n_filters: int, kernel: int, pool: int,
                 stride: int, dropout: float):
        super().__init__()
        if kernel + pool - 1 > n_samples:
            raise ValueError(f"tsconv: kernel {kernel} + pool {pool} samples exceed the "
                             f"{n_samples}-sample window")
        self.temporal = nn.Conv2d(1, n_filters, (1, kernel))
        self.pool = nn.AvgPool2d((1, pool), (1, stride))
        self.bn_temporal = nn.BatchNorm2d(n_filters)
        self.spatial = nn.Conv2d(n_filters, n_filters, (n_channels, 1))
        self.bn_spatial = nn.BatchNorm2d(n_filters)
        self.dropout = nn.Dropout(dropout)
        self.mix = nn.Conv2d(n_filters, n_filters, 1)
        self.n_features = n_filters * ((n_samples - kernel + 1 - pool) // stride + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2).unsqueeze(1)  # (batch, 1, channels, time)
        h = F.elu(self.bn_temporal(self.pool(self.temporal(h))))
        h = self.dropout(F.elu(self.bn_spatial(self.spatial(h))))  # (batch, filters, 1, time')
        return self.mix(h).flatten(1)

    def fused(self) -> TSConv:
        """Eval copy with both BatchNorms folded into their convs (average pooling commutes
        with BatchNorm's per-filter affine map) and no dropout."""
        out = copy.deepcopy(self).eval()
        out.temporal = fuse_conv_bn_eval(out.temporal, out.bn_temporal)
        out.spatial = fuse_conv_bn_eval(out.spatial, out.bn_spatial)
        out.bn_temporal = out.bn_spatial = out.dropout = nn.Identity()
        return out


class Projector(nn.Sequential):
    """UBP's / NICE's projector: Linear → residual (GELU, Linear, Dropout) → LayerNorm."""

    def __init__(self, n_in: int, n_out: int, dropout: float):
        super().__init__(nn.Linear(n_in, n_out),
                         Residual(nn.GELU(), nn.Linear(n_out, n_out), nn.Dropout(dropout)),
                         nn.LayerNorm(n_out))


class Residual(nn.Sequential):
    """``x + block(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class ImageRetrievalNet(nn.Module):
    """EEG/MEG window → CLIP-space image embedding (UBP projector or NICE TSConv; module doc).

    Parameters
    ----------
    n_channels, n_samples : int
        Window shape (paper: 63 × 250 at 250 Hz).
    n_outputs : int
        Embedding size: the targets' dimension (1024 for CLIP RN50 / ViT-H/14).
    srate : float
        Sampling rate in Hz (sets the TSConv kernel and pooling lengths).
    positions : array (n_channels, 3) | None
        Unused (accepted for the family interface).
    n_subjects : int
        Unused: one model per subject, as in the papers.
    encoder : {"ubp", "tsconv"}
        The flattened window (UBP) or NICE's temporal-spatial conv stem.
    dropout : float
        Dropout in the projector's residual block (UBP 0.3, NICE 0.5).
    n_filters, temporal_kernel_s, pool_s, pool_stride_s, conv_dropout
        TSConv sizes (seconds, rounded to samples at ``srate``); ignored by ``ubp``.
    shrinkage : float
        Covariance shrinkage toward the scaled identity in :meth:`fit_input`, in [0, 1].
    uncertainty : bool
        Weight the loss's pairs with :func:`uncertainty_weights` (UBP's idea).
    uncertainty_temperature : float
        Temperature of those weights, in batch standard deviations of the agreement.
    """

    def __init__(self, n_channels: int, n_samples: int, n_outputs: int, *, srate: float,
                 positions: np.ndarray | None = None, n_subjects: int = 1,
                 encoder: str = "ubp", dropout: float = 0.3, n_filters: int = 40,
                 temporal_kernel_s: float = 0.1, pool_s: float = 0.204,
                 pool_stride_s: float = 0.02, conv_dropout: float = 0.5,
                 shrinkage: float = 0.01, uncertainty: bool = True,
                 uncertainty_temperature: float = 0.5):
        super().__init__()
        if encoder == "ubp":
            self.features, n_features = nn.Flatten(1), n_channels * n_samples
        elif encoder == "tsconv":
            samples = [max(1, round(s * srate)) for s in (temporal_kernel_s, pool_s,
                                                          pool_stride_s)]
            self.features = TSConv(n_channels, n_samples, n_filters, *samples, conv_dropout)
            n_features = self.features.n_features
        else:
            raise ValueError(f"image-retrieval: unknown encoder {encoder!r} (ubp, tsconv)")
        self.encoder, self.shrinkage = encoder, shrinkage
        self.uncertainty, self.uncertainty_temperature = uncertainty, uncertainty_temperature
        self.register_buffer("input_mean", torch.zeros(n_channels))
        self.register_buffer("whiten", torch.eye(n_channels))
        self.projector = Projector(n_features, n_outputs, dropout)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

    def fit_input(self, windows: np.ndarray) -> None:
        """Fit the whitening buffers from training windows (n, n_samples, n_channels)."""
        mean, zca = whitening(windows, self.shrinkage)
        self.input_mean.copy_(torch.from_numpy(mean))
        self.whiten.copy_(torch.from_numpy(zca))

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, n_samples, n_channels) → embedding (batch, n_outputs), not normalised."""
        return self.projector(self.features((x - self.input_mean) @ self.whiten))

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """NICE's ``Proj_eeg(Enc_eeg(x))`` (``encoder="tsconv"``): the network without the
        whitening, on ``(batch, n_samples, n_channels)`` → ``(batch, n_outputs)``."""
        return self.projector(self.features(x))

    def inference_module(self, subject: int | None = None) -> nn.Module:
        """Eval-mode module for one window: ``(1, n_samples, n_channels)`` → ``(1, n_outputs)``
        embedding; BatchNorm folded into the convs, whitening mean folded into a bias, no
        dropout, no temperature. ``subject`` is ignored (no subject-specific layer)."""
        features = self.features.fused() if isinstance(self.features, TSConv) else nn.Flatten(1)
        projector = copy.deepcopy(self.projector).eval()
        projector[1][2] = nn.Identity()  # the residual block's dropout
        return _Embedder(self.whiten, -self.input_mean @ self.whiten, features, projector).eval()


class _Embedder(nn.Module):
    """``projector(features(x W + b))``: the compiled image-retrieval network."""

    def __init__(self, whiten: torch.Tensor, bias: torch.Tensor, features: nn.Module,
                 projector: nn.Module):
        super().__init__()
        self.register_buffer("whiten", whiten.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.features, self.projector = features, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.features(x @ self.whiten + self.bias))


def training_loss(model: ImageRetrievalNet, x: torch.Tensor, target: torch.Tensor,
                  subject: torch.Tensor | None) -> torch.Tensor:
    """Symmetric CLIP loss of ``model(x)`` against ``target`` (batch, n_outputs) float, its
    pairs weighted by :func:`uncertainty_weights` when ``model.uncertainty``."""
    brain = model(x, subject)
    weights = (uncertainty_weights(brain, target, model.uncertainty_temperature)
               if model.uncertainty else None)
    return clip_loss(brain, target, model.logit_scale, weights=weights)
