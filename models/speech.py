"""Speech-segment retrieval from MEG/EEG (family ``speech``, output kind ``retrieval``).

After Défossez, Caucheteux, Rapin, Kabeli & King, "Decoding speech perception from
non-invasive brain recordings" (Nature Machine Intelligence 2023; arXiv 2208.12266): a
"brain module" maps a 3 s window (120 Hz, 360 samples) to a (features × time) map that a
CLIP loss aligns with the speech features (wav2vec 2.0, 1024-d) of the heard segment.
rtbci's own implementation of that brain module, in this order:

1. **Per-window input steps** (compiled in): per-channel baseline (mean of the first
   ``baseline_s`` = 0.3 s) subtracted, robust scaling ``(x − median) / IQR`` with buffers
   from :meth:`SpeechNet.fit_input` (identity before), clamp to ±``clamp`` (20).
2. **Spatial attention** ("channel merger"): sensor positions projected to 2-D
   (:func:`project_positions`), a Fourier embedding of ``fourier_dim`` features
   (:func:`fourier_features`, n = √(D/2) frequencies per axis, margin 0.2), learned heads
   ``(n_merger, D)``; scores → softmax over sensors → each output is a weighted sum of sensors.
   Sensors without a position get score −∞; in training, all sensors within
   ``dropout_radius`` of one random point of the unit square are dropped (−∞), per batch.
3. **Initial 1×1 conv** ``n_merger → n_merger`` and a **subject layer** (one
   ``n_merger × n_merger`` matrix per subject, ``randn / √n_merger`` init); ``subject=None``
   uses the mean matrix (rtbci's choice for an unseen subject).
4. **Conv stack** of ``depth`` layers, ``hidden`` channels, kernel 3, dilation
   ``dilation_growth ** (k % dilation_period)`` (2, 5), length-preserving padding. As
   brainmagick's ``ConvSequence`` with the paper's ``complex_out``: layer ``k`` is
   conv → BatchNorm → GELU (the last layer included), then a residual add when input and
   output shapes match (all but the first layer when ``n_merger ≠ hidden``), then after
   every 2nd layer (k = 1, 3, …, the last included) a GLU block:
   Conv1d(hidden → 2·hidden, kernel ``2 glu_context + 1``, padding ``glu_context``) + GLU
   over channels.
5. **Head**: Conv1d 1×1 (hidden → 2·hidden) → GELU → ConvTranspose1d kernel 1
   (2·hidden → ``n_outputs``); the time axis is kept: output ``(batch, n_outputs, n_samples)``.

Training (:func:`training_loss`): ``rtbci.models.contrastive.clip_loss`` brain → target only
(``symmetric=False``, as in the paper) with a learnable ``logit_scale``. Time-pooled targets
``(batch, D)`` are compared with the time-mean of the brain map (:meth:`SpeechNet.pooled`,
taken before the linear last layer: the same values, several times cheaper to train).

Compile (:meth:`SpeechNet.inference_module`): the merger softmax, the initial conv and the
subject matrix fold exactly into one constant ``(n_merger × n_channels)`` matmul plus a bias
``S b₀`` (the conv bias passes through the subject matrix); BatchNorm folds into the convs.
``pool=True`` outputs the time-mean ``(1, n_outputs)`` — the CPU-friendly retrieval against a
1024-d bank; since the last layer is linear the mean is taken before it (exact, and it skips
the largest matmul of the head).

Correspondence with the reference (facebookresearch/brainmagick @ 1aa77d2,
``bm.models.simpleconv.SimpleConv``, ``clip_conv`` configuration): steps 2–5 are its
``forward`` (:meth:`SpeechNet.reference_forward`, on ``(batch, channels, time)``); step 1 is
its data pipeline (baseline, ``RobustScaler``, clamp), done here per window. Loaded with
brainmagick's weights (``rtbci import speech``, :mod:`rtbci.models.import_weights`) the two
agree to float precision (tests/models/test_parity.py).

Deviations and choices: brainmagick takes MNE layout positions (2-D, each axis min-max
scaled to [0, 1]); with 3-D ``positions`` rtbci projects head coordinates to 2-D itself
(azimuthal equidistant about the mean sensor direction seen from the head-coordinate origin,
each axis then scaled to [0, 1]); ``layout`` (``(n_channels, 2)`` in [0, 1], None rows =
no position) takes the reference's 2-D positions as they are instead. With
``positions=None`` and no ``layout`` the Fourier embedding is replaced by one-hot sensor
identities, i.e. the heads become free ``(n_merger, n_channels)`` scores, and spatial dropout
is off. brainmagick's ``initial_linear`` width is ``n_merger`` here. The
learnable ``logit_scale`` is rtbci's (shared with the other retrieval families). The 150 ms
brain–speech shift and the standard scaling of the targets belong to data preparation,
not here.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from rtbci.models.contrastive import LOGIT_SCALE_INIT, clip_loss

__all__ = ["HPARAMS", "SMALL", "ConvStack", "PooledSpeechInference", "SpeechInference",
           "SpeechNet", "fourier_features", "prepare", "project_positions", "training_loss"]

HPARAMS = {"n_merger": 270, "fourier_dim": 2048, "dropout_radius": 0.2, "hidden": 320,
           "depth": 10, "kernel_size": 3, "dilation_period": 5, "glu_every": 2,
           "dilation_growth": 2, "glu_context": 1, "baseline_s": 0.3, "clamp": 20.0}
SMALL = {**HPARAMS, "n_merger": 32, "fourier_dim": 128, "hidden": 32}  # depth 10: the
# receptive field (~1 s) must reach the brain response 150–500 ms after the speech it tracks

FOURIER_MARGIN = 0.2


def project_positions(positions: np.ndarray) -> np.ndarray:
    """2-D sensor layout in [0, 1]² from 3-D head coordinates.

    Azimuthal equidistant projection about the mean sensor direction (seen from the origin):
    radius = angle to that direction, azimuth measured in the tangent plane from the
    coordinate axis least aligned with it; then each axis is min-max scaled to [0, 1].

    Parameters
    ----------
    positions : array (n_channels, 3)
        Metres (any unit: only directions matter), NaN rows for unknown positions.

    Returns
    -------
    array (n_channels, 2), float64; NaN rows where the input row is not finite.
    """
    pos = np.asarray(positions, dtype=np.float64)
    valid = np.isfinite(pos).all(axis=1)
    u = pos[valid] / np.maximum(np.linalg.norm(pos[valid], axis=1, keepdims=True), 1e-12)
    centre = u.mean(axis=0)
    centre /= max(np.linalg.norm(centre), 1e-12)
    axis = np.eye(3)[np.argmin(np.abs(centre))]
    e1 = axis - (axis @ centre) * centre
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(centre, e1)
    theta = np.arccos(np.clip(u @ centre, -1.0, 1.0))
    phi = np.arctan2(u @ e2, u @ e1)
    xy = theta[:, None] * np.column_stack([np.cos(phi), np.sin(phi)])
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    out = np.full((len(pos), 2), np.nan)
    out[valid] = (xy - lo) / np.maximum(hi - lo, 1e-12)
    return out


def fourier_features(xy: np.ndarray, dim: int, margin: float = FOURIER_MARGIN) -> np.ndarray:
    """Fourier embedding of 2-D positions in [0, 1]² (Défossez et al.'s spatial attention).

    With ``n = √(dim/2)`` integer frequencies per axis, the phases are
    ``2π (fx (x + m) + fy (y + m)) / (1 + 2m)`` for all ``n²`` pairs ``(fx, fy)``, and the
    features are their cosines then sines.

    Parameters
    ----------
    xy : array (n_channels, 2)
        Normalised positions; NaN rows give zero features.
    dim : int
        Feature count D; ``dim / 2`` must be a perfect square (2048 → 32 frequencies).
    margin : float
        m above.

    Returns
    -------
    array (n_channels, dim), float64.
    """
    n_freqs = math.isqrt(dim // 2)
    if dim % 2 or n_freqs**2 != dim // 2:
        raise ValueError(f"fourier_dim={dim}: dim / 2 must be a perfect square (e.g. 128, 2048)")
    freqs = np.arange(n_freqs)
    pos = np.nan_to_num(np.asarray(xy, dtype=np.float64), nan=0.0) + margin
    phase = 2 * np.pi / (1 + 2 * margin) * (pos[:, 0, None, None] * freqs[:, None]
                                            + pos[:, 1, None, None] * freqs[None, :])
    features = np.concatenate([np.cos(phase).reshape(len(pos), -1),
                               np.sin(phase).reshape(len(pos), -1)], axis=1)
    features[~np.isfinite(np.asarray(xy, dtype=np.float64)).all(axis=1)] = 0.0
    return features


def prepare(x: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, n_baseline: int,
            clamp: float) -> torch.Tensor:
    """Baseline, robust scaling and clamp: ``(batch, time, channels)`` → ``(batch, channels,
    time)``. ``center`` and ``scale`` are per channel, shape ``(channels, 1)``."""
    x = x.transpose(1, 2)
    x = x - x[..., :n_baseline].mean(dim=-1, keepdim=True)
    return ((x - center) / scale).clamp(-clamp, clamp)


def _merger_inputs(n_channels: int, positions: np.ndarray | None, fourier_dim: int,
                   layout: list | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xy (C, 2), embedding (C, E), score offset (C,))`` of the channel merger: from the
    2-D ``layout`` as it is, else from 3-D ``positions`` projected, else one-hot identities."""
    if layout is not None:
        xy = np.array([[np.nan] * 2 if p is None else p for p in layout], dtype=np.float64)
        if xy.shape != (n_channels, 2):
            raise ValueError(f"layout must have shape ({n_channels}, 2), got {xy.shape}")
        valid = np.isfinite(xy).all(axis=1)
    else:
        valid = (np.zeros(n_channels, bool) if positions is None
                 else np.isfinite(np.asarray(positions, dtype=np.float64)).all(axis=1))
        xy = project_positions(positions) if valid.any() else None
    if valid.any():
        embedding = fourier_features(xy, fourier_dim)
    else:  # no geometry: one-hot sensor identities, free scores per sensor
        xy, embedding, valid = np.full((n_channels, 2), np.nan), np.eye(n_channels), ~valid
    return xy, embedding, np.where(valid, 0.0, -np.inf)


class ConvStack(nn.Module):
    """The dilated residual conv stack with GLU blocks: ``(batch, in, T)`` → ``(batch, hidden, T)``.

    Layer ``k``: conv (dilation ``dilation_growth ** (k % dilation_period)``) → BatchNorm →
    GELU → ``+ input`` when shapes match → GLU block (kernel ``2 glu_context + 1``) after
    every ``glu_every``-th layer.
    """

    def __init__(self, in_channels: int, hidden: int, depth: int, kernel_size: int,
                 dilation_period: int, glu_every: int, dilation_growth: int = 2,
                 glu_context: int = 1):
        super().__init__()
        self.convs, self.norms, self.glus = nn.ModuleList(), nn.ModuleList(), nn.ModuleDict()
        for k in range(depth):
            dilation = dilation_growth ** (k % dilation_period)
            self.convs.append(nn.Conv1d(in_channels if k == 0 else hidden, hidden, kernel_size,
                                        padding=kernel_size // 2 * dilation, dilation=dilation))
            self.norms.append(nn.BatchNorm1d(hidden))
            if (k + 1) % glu_every == 0:
                self.glus[str(k)] = nn.Conv1d(hidden, 2 * hidden, 2 * glu_context + 1,
                                              padding=glu_context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            y = F.gelu(norm(conv(x)))
            x = y + x if y.shape == x.shape else y
            if str(k) in self.glus:
                x = F.glu(self.glus[str(k)](x), dim=1)
        return x

    def fused(self) -> ConvStack:
        """An eval-mode copy with each BatchNorm folded into its conv (norms become Identity)."""
        out = copy.deepcopy(self).eval()
        for k, (conv, norm) in enumerate(zip(out.convs, out.norms)):
            out.convs[k] = fuse_conv_bn_eval(conv, norm)
            out.norms[k] = nn.Identity()
        return out


class SpeechNet(nn.Module):
    """Défossez et al.'s brain module: a MEG/EEG window → a speech-feature map for CLIP retrieval.

    Input ``(batch, n_samples, n_channels)`` float32 (sensor units as recorded; scaled by the
    fitted robust scaler), output ``(batch, n_outputs, n_samples)``. See the module docstring.

    Parameters
    ----------
    n_channels, n_samples : int
        Window shape; the paper's is 3 s at 120 Hz (360 samples).
    n_outputs : int
        Speech-feature dimension (1024 for wav2vec 2.0 large).
    srate : float
        Sampling rate in Hz (sets the baseline length).
    positions : array (n_channels, 3) | None
        Sensor positions in metres, head coordinates; NaN rows are excluded from the merger.
    n_subjects : int
        Number of subject matrices.
    n_merger, fourier_dim, dropout_radius, hidden, depth, kernel_size, dilation_period,
    glu_every, dilation_growth, glu_context, baseline_s, clamp
        See :data:`HPARAMS` and the module docstring.
    layout : list of (x, y) | None
        2-D sensor layout in [0, 1]² used as it is (brainmagick's MNE-layout positions; a
        None row = no position); it replaces the projection of ``positions``.
    """

    def __init__(self, n_channels: int, n_samples: int, n_outputs: int, *, srate: float,
                 positions: np.ndarray | None = None, n_subjects: int = 1,
                 n_merger: int = 270, fourier_dim: int = 2048, dropout_radius: float = 0.2,
                 hidden: int = 320, depth: int = 10, kernel_size: int = 3,
                 dilation_period: int = 5, glu_every: int = 2, dilation_growth: int = 2,
                 glu_context: int = 1, baseline_s: float = 0.3, clamp: float = 20.0,
                 layout: list | None = None):
        super().__init__()
        self.n_baseline = max(1, round(baseline_s * srate))
        if self.n_baseline > n_samples:
            raise ValueError(f"baseline_s={baseline_s} s is longer than the {n_samples}-sample "
                             "window")
        self.clamp, self.dropout_radius = float(clamp), float(dropout_radius)
        self.register_buffer("center", torch.zeros(n_channels, 1))
        self.register_buffer("scale", torch.ones(n_channels, 1))
        self._init_merger(n_channels, positions, fourier_dim, n_merger, layout)
        self.initial = nn.Conv1d(n_merger, n_merger, 1)
        self.subject_weights = nn.Parameter(
            torch.randn(n_subjects, n_merger, n_merger) / math.sqrt(n_merger))
        self.encoder = ConvStack(n_merger, hidden, depth, kernel_size, dilation_period,
                                 glu_every, dilation_growth, glu_context)
        self.head_in = nn.Conv1d(hidden, 2 * hidden, 1)
        self.head_out = nn.ConvTranspose1d(2 * hidden, n_outputs, 1)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

    def _init_merger(self, n_channels: int, positions: np.ndarray | None, fourier_dim: int,
                     n_merger: int, layout: list | None = None) -> None:
        """Buffers ``embedding`` (C, E), ``positions_2d`` (C, 2), ``score_offset`` (C,) and
        the learned ``heads`` (n_merger, E)."""
        if positions is not None and np.shape(positions) != (n_channels, 3):
            raise ValueError(f"positions must have shape ({n_channels}, 3), got "
                             f"{np.shape(positions)}")
        xy, embedding, offset = _merger_inputs(n_channels, positions, fourier_dim, layout)
        self.register_buffer("embedding", torch.tensor(embedding, dtype=torch.float32))
        self.register_buffer("positions_2d", torch.tensor(xy, dtype=torch.float32))
        self.register_buffer("score_offset", torch.tensor(offset, dtype=torch.float32))
        self.heads = nn.Parameter(torch.randn(n_merger, embedding.shape[1])
                                  / math.sqrt(embedding.shape[1]))

    def set_layout(self, layout: list) -> None:
        """Replace the sensors' 2-D layout (``(n_channels, 2)`` in [0, 1], None rows = no
        position), as brainmagick takes positions with each batch; the heads stay."""
        xy, embedding, offset = _merger_inputs(len(self.score_offset), None,
                                               self.embedding.shape[1], layout)
        for name, value in (("positions_2d", xy), ("embedding", embedding),
                            ("score_offset", offset)):
            getattr(self, name).copy_(torch.tensor(value, dtype=torch.float32))

    def merger_weights(self, drop_center: torch.Tensor | None = None) -> torch.Tensor:
        """Spatial-attention matrix ``(n_merger, n_channels)``, rows summing to 1.

        drop_center : tensor (2,) | None
            A point of the 2-D layout: sensors within ``dropout_radius`` of it get weight 0
            (unless that would drop every sensor). None: no spatial dropout.
        """
        offset = self.score_offset
        if drop_center is not None:
            dist = (self.positions_2d - drop_center).norm(dim=1)
            dropped = torch.where(dist <= self.dropout_radius, -torch.inf, offset)
            if torch.isfinite(dropped).any():
                offset = dropped
        return torch.softmax(self.heads @ self.embedding.T + offset, dim=1)

    def subject_matrix(self, subject: torch.Tensor | None) -> torch.Tensor:
        """``(batch, n_merger, n_merger)`` for subject indices ``(batch,)``, or the mean matrix
        ``(n_merger, n_merger)`` for None (unseen subject)."""
        if subject is None:
            return self.subject_weights.mean(dim=0)
        return self.subject_weights[subject]

    def fit_input(self, windows: np.ndarray) -> None:
        """Fit the robust scaler: per-channel median and IQR of the baseline-corrected training
        windows ``(n, n_samples, n_channels)`` (all samples pooled). A zero IQR becomes 1."""
        x = np.asarray(windows, dtype=np.float64)
        x = x - x[:, :self.n_baseline].mean(axis=1, keepdims=True)
        q25, median, q75 = np.percentile(x.reshape(-1, x.shape[-1]), [25, 50, 75], axis=0)
        iqr = np.where(q75 - q25 > 0, q75 - q25, 1.0)
        self.center.copy_(torch.tensor(median[:, None], dtype=torch.float32))
        self.scale.copy_(torch.tensor(iqr[:, None], dtype=torch.float32))

    def features(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """The map before the last (linear) layer: (batch, 2·hidden, n_samples)."""
        return self.prepared_features(
            prepare(x, self.center, self.scale, self.n_baseline, self.clamp), subject)

    def prepared_features(self, h: torch.Tensor, subject: torch.Tensor | None) -> torch.Tensor:
        """Steps 2–5 up to the last layer: prepared ``(batch, channels, time)`` →
        ``(batch, 2·hidden, time)``."""
        center = torch.rand(2, device=h.device) if self.training else None
        h = self.initial(torch.matmul(self.merger_weights(center), h))
        h = torch.matmul(self.subject_matrix(subject), h)
        return F.gelu(self.head_in(self.encoder(h)))

    def reference_forward(self, h: torch.Tensor, subject: torch.Tensor | None) -> torch.Tensor:
        """brainmagick's ``SimpleConv.forward``: steps 2–5 on a prepared (baseline-corrected,
        scaled, clamped) ``(batch, channels, time)`` → ``(batch, n_outputs, time)``."""
        return self.head_out(self.prepared_features(h, subject))

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, n_samples, n_channels); subject: (batch,) long or None.

        Returns the speech-feature map (batch, n_outputs, n_samples). In training mode the
        spatial dropout draws one point per call.
        """
        return self.head_out(self.features(x, subject))

    def pooled(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """The time-mean of :meth:`forward`, (batch, n_outputs), taken before the last layer
        (exact: that layer is linear) to skip its largest matmul."""
        return self.head_out(self.features(x, subject).mean(dim=-1, keepdim=True))[..., 0]

    def inference_module(self, subject: int | None = None, pool: bool = False) -> nn.Module:
        """Eval-mode module for one window ``(1, n_samples, n_channels)`` → the speech-feature
        map ``(1, n_outputs, n_samples)``, or its time-mean ``(1, n_outputs)`` with ``pool``.

        Merger, initial conv and subject matrix (None: the mean) are folded into one constant
        matmul; BatchNorm into the convs.
        """
        return (PooledSpeechInference if pool else SpeechInference)(self, subject).eval()


class SpeechInference(nn.Module):
    """A :class:`SpeechNet` with its montage and subject folded in (see
    :meth:`SpeechNet.inference_module`)."""

    def __init__(self, model: SpeechNet, subject: int | None):
        super().__init__()
        self.n_baseline, self.clamp = model.n_baseline, model.clamp
        with torch.no_grad():
            index = None if subject is None else torch.tensor([subject])
            s = model.subject_matrix(index).reshape(model.initial.out_channels, -1).double()
            weight = s @ model.initial.weight[..., 0].double() @ model.merger_weights().double()
            bias = s @ model.initial.bias.double()
        self.register_buffer("center", model.center.clone())
        self.register_buffer("scale", model.scale.clone())
        self.register_buffer("spatial", weight.float())
        self.register_buffer("spatial_bias", bias.float()[:, None])
        self.encoder = model.encoder.fused()
        self.head_in = copy.deepcopy(model.head_in)
        self.head_out = copy.deepcopy(model.head_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(1, n_samples, n_channels) → the head's hidden map (1, 2·hidden, n_samples)."""
        h = prepare(x, self.center, self.scale, self.n_baseline, self.clamp)
        h = self.encoder(torch.matmul(self.spatial, h) + self.spatial_bias)
        return F.gelu(self.head_in(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, n_samples, n_channels) → (1, n_outputs, n_samples)."""
        return self.head_out(self.features(x))


class PooledSpeechInference(SpeechInference):
    """:class:`SpeechInference` with a time-mean output ``(1, n_outputs)``, taken before the
    last (linear) layer. A class of its own, so compiled-artefact caches keyed on the class
    and weights tell it from the map variant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, n_samples, n_channels) → (1, n_outputs)."""
        return self.head_out(self.features(x).mean(dim=-1, keepdim=True))[..., 0]


def training_loss(model: SpeechNet, x: torch.Tensor, target: torch.Tensor,
                  subject: torch.Tensor | None) -> torch.Tensor:
    """CLIP loss brain → target (``symmetric=False``) with the model's ``logit_scale``.

    target : (batch, n_outputs, n_samples) maps, or time-pooled (batch, n_outputs), in which
    case the brain map is averaged over time first.
    """
    brain = model.pooled(x, subject) if target.dim() == 2 else model(x, subject)
    return clip_loss(brain, target, model.logit_scale, symmetric=False)
