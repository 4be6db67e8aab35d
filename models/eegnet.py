"""EEGNet-8,2 (family ``eegnet``).

Lawhern, Solon, Waytowich, Gordon, Hung & Lance 2018, "EEGNet: a compact convolutional
neural network for EEG-based brain-computer interfaces", J. Neural Eng. 15 056013, Table 2,
with F1 = 8 temporal filters and D = 2 spatial filters per temporal filter (F2 = 16):

1. temporal conv, F1 kernels of ``srate / 2`` samples ("same" padding, no bias) → BatchNorm;
2. depthwise spatial conv over all C electrodes, D per temporal filter, no bias, weights of
   max-norm 1 → BatchNorm → ELU → average pool 4 → dropout;
3. separable conv: depthwise (1 × 16 at 128 Hz) then pointwise to F2 (no bias) → BatchNorm →
   ELU → average pool 8 → dropout;
4. flatten → dense to the classes, weights of max-norm 0.25 → softmax (in
   :meth:`EEGNet.inference_module`; training uses cross-entropy on the logits).

Trained by rtbci's Adam loop (:func:`rtbci.models.fitting.fit`, which applies the max-norm
constraints after every step through :meth:`EEGNet.after_step`).

Deviations from the paper:

- the separable conv's kernel scales with the rate (``srate / 8`` samples: the paper's 16 at
  128 Hz), so the network keeps its time constants at the source's rate (the family does not
  resample; the pools stay 4 and 8 samples as in the paper);
- the input is centred and scaled per channel with the training windows' mean and standard
  deviation (:meth:`EEGNet.fit_input`, buffers), so volts, microvolts or z-scores train alike;
- dropout defaults to 0.25, the paper's within-subject value (rtbci trains on one person's
  calibration; use ``--set dropout=0.5`` across subjects);
- no early stopping on the validation split and no class weighting (``--epochs`` fixes the
  length; the paper trains 500 epochs and keeps the best validation loss).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtbci.models.heads import Probabilities

__all__ = ["HPARAMS", "SMALL", "EEGNet", "training_loss"]

HPARAMS = {"F1": 8, "D": 2, "F2": 16, "dropout": 0.25, "temporal_s": 0.5,
           "separable_s": 0.125, "pool1": 4, "pool2": 8}
SMALL = dict(HPARAMS)


def _same_conv(in_ch: int, out_ch: int, kernel: int, groups: int = 1) -> nn.Sequential:
    """A (1 × kernel) convolution over time with explicit "same" zero padding (left
    ``(kernel - 1) // 2``, as Keras), no bias."""
    left = (kernel - 1) // 2
    return nn.Sequential(nn.ZeroPad2d((left, kernel - 1 - left, 0, 0)),
                         nn.Conv2d(in_ch, out_ch, (1, kernel), groups=groups, bias=False))


class EEGNet(nn.Module):
    """EEGNet-F1,D: ``(batch, n_samples, n_channels)`` → class logits.

    Parameters
    ----------
    n_channels, n_samples, n_outputs : int
        Window shape (samples at ``srate`` Hz) and number of classes.
    srate : float
        Sampling rate in Hz (sets the temporal and separable kernels).
    F1, D, F2 : int
        Temporal filters, spatial filters per temporal filter, separable filters.
    dropout : float
        Dropout rate after each block.
    temporal_s, separable_s : float
        Kernel lengths in seconds (paper: 64 and 16 samples at 128 Hz).
    pool1, pool2 : int
        Average-pooling lengths in samples (paper: 4 and 8).
    positions, n_subjects
        Accepted for the family interface; unused.
    """

    def __init__(self, n_channels: int, n_samples: int, n_outputs: int, *, srate: float,
                 positions: np.ndarray | None = None, n_subjects: int = 1, F1: int = 8,
                 D: int = 2, F2: int = 16, dropout: float = 0.25, temporal_s: float = 0.5,
                 separable_s: float = 0.125, pool1: int = 4, pool2: int = 8):
        super().__init__()
        n_time = n_samples // pool1 // pool2
        if n_time < 1:
            raise ValueError(f"a {n_samples}-sample window is shorter than the pools "
                             f"({pool1} × {pool2} samples)")
        self.register_buffer("center", torch.zeros(n_channels))
        self.register_buffer("scale", torch.ones(n_channels))
        self.temporal = _same_conv(1, F1, max(1, round(temporal_s * srate)))
        self.bn1 = nn.BatchNorm2d(F1)
        self.spatial = nn.Conv2d(F1, F1 * D, (n_channels, 1), groups=F1, bias=False)
        self.bn2 = nn.BatchNorm2d(F1 * D)
        self.pool1 = nn.AvgPool2d((1, pool1))
        self.separable = nn.Sequential(
            _same_conv(F1 * D, F1 * D, max(1, round(separable_s * srate)), groups=F1 * D),
            nn.Conv2d(F1 * D, F2, 1, bias=False))
        self.bn3 = nn.BatchNorm2d(F2)
        self.pool2 = nn.AvgPool2d((1, pool2))
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(F2 * n_time, n_outputs)

    def fit_input(self, x: np.ndarray) -> None:
        """Per-channel mean and standard deviation of training windows (n, n_samples, C)."""
        mean, std = x.mean(axis=(0, 1)), x.std(axis=(0, 1))
        self.center.copy_(torch.from_numpy(mean.astype(np.float32)))
        self.scale.copy_(torch.from_numpy(np.where(std > 0, std, 1.0).astype(np.float32)))

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, n_samples, n_channels) → logits (batch, n_outputs)."""
        h = ((x - self.center) / self.scale).transpose(1, 2).unsqueeze(1)  # (b, 1, C, T)
        h = self.bn1(self.temporal(h))
        h = self.dropout(self.pool1(F.elu(self.bn2(self.spatial(h)))))  # (b, F1·D, 1, T/4)
        h = self.dropout(self.pool2(F.elu(self.bn3(self.separable(h)))))  # (b, F2, 1, T/32)
        return self.dense(h.flatten(1))

    @torch.no_grad()
    def after_step(self) -> None:
        """The paper's max-norm constraints: each spatial filter ≤ 1, each class's dense
        weights ≤ 0.25 (L2), applied after every optimiser step."""
        self.spatial.weight.copy_(torch.renorm(self.spatial.weight, 2, 0, 1.0))
        self.dense.weight.copy_(torch.renorm(self.dense.weight, 2, 0, 0.25))

    def inference_module(self, subject: int | None = None) -> nn.Module:
        """Eval-mode module for one window: ``(1, n_samples, n_channels)`` → probabilities."""
        return Probabilities(self).eval()


def training_loss(model: EEGNet, x: torch.Tensor, target: torch.Tensor,
                  subject: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the logits against class indices ``target`` (batch,)."""
    return F.cross_entropy(model(x, subject), target)
