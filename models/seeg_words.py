"""``seeg-words``: Du-IN, word classification from sEEG (output kind ``classes``).

(Over 500 lines on purpose: one paper's network with its own self-supervised pre-training,
which the training loop finds as this family module's :func:`pretrain`.)

Zheng et al., "Du-IN: Discrete units-guided mask modeling for decoding speech from
intracranial brain signals" (NeurIPS 2024); public code liulab-repository/Du-IN
(``params/duin_params.py``, ``models/duin/duin.py``).

Network (:class:`DuIN`), for one window ``(T samples, C channels)``:

1. **Per-window z-score** per channel (compiled in; zero-padded channels stay zero).
2. **Subject block**: one linear map ``C → d_neural`` with bias per subject, into a space
   shared by all subjects (``d_neural = 16`` in the paper, equal to its 16 padded channels;
   ``d_neural=None`` keeps ``C``).
3. **Tokenizer** (region-level tokens): the window is cut into ``T / patch_len`` patches of
   100 samples (100 ms at 1 kHz). On each patch a Conv1d stack runs over time with the
   channels as its input features: Conv1d(d_neural → 128, kernel 19, stride 10, padding
   (19 − 1)/2 = 9) → 128 k3 → 16 k3 (``same`` padding), each followed by BatchNorm and **no
   activation** (the tokenizer is affine in eval mode, as in the public code); its
   ``(16 filters × 10 steps)`` output is flattened position-major to one 160-d token per
   patch. *Our reading of "channel fusion"*: the first convolution's
   input is all channels of the region (after the subject map), so each token fuses the
   whole region, which is what the public code does (``PatchTokenizer`` with
   ``d_neural`` input channels); there is no separate fusion layer, and the parameter count
   (below) matches the paper's only this way.
4. **Encoder**: fixed sin-cos time embedding added to the tokens, then post-norm transformer
   blocks (8 blocks, 8 heads × 64, so attention runs in 512-d inside a 160-d model; queries
   and keys LayerNorm-ed per head over its 64 dimensions (one affine pair per block, shared
   by the heads) before the scaled dot product; FFN 2 × d_model with ReLU; attention dropout
   0.2, FFN hidden dropout 0.2 as in the params file). The block is written here because
   ``nn.TransformerEncoderLayer`` ties the head size to ``d_model / n_heads`` (20, not the
   paper's 64).
5. **Head**: flatten all tokens → Linear 128 → ReLU → Linear ``n_outputs`` (logits).

Initialisation as the public code: Linear weights truncated normal (std 0.02), biases zero,
then every Linear weight of transformer block ``b`` (0-based) divided by √(2(b+1)); the
subject maps truncated normal (std 0.02).

Correspondence with the reference (liulab-repository/Du-IN @ c2e289c, ``duin_cls``): steps
2–5 are its ``forward`` up to the logits before its sigmoid
(:meth:`DuIN.reference_forward`); step 1 stands in for its per-subject z-score in the data
pipeline. Loaded with Du-IN's weights (``rtbci import seeg-words``,
:mod:`rtbci.models.import_weights`) the logits agree to float precision
(tests/models/test_parity.py). rtbci's output is the softmax of these logits (Du-IN's
per-word sigmoid ranks the words the same way).

Size: with the paper's 4,000-sample window (the params file's ``seq_len``; 40 tokens) and
61 words this is 4,390,157 parameters at 10 subjects, the paper's 4.38 M (2,048 of them the
per-head Q/K LayerNorms). With the 3,000 samples of the paper's text (30 tokens) the flatten
head shrinks to 4,185,357.

:func:`pretrain` gives the paper's two self-supervised stages, simplified:
(1) a VQ-VAE whose encoder is the network's own subject block, tokenizer and transformer;
its quantizer (projection to ``d_codex``, l2-normalised codebook of ``codebook_size``,
nearest code by cosine, straight-through gradient, codebook + commitment loss with β = 1)
feeds a per-token MLP that reconstructs the z-scored patch signal;
(2) masked modelling: ``mask_ratio`` of the tokens are replaced by a learned mask
embedding before the encoder, which must predict the frozen stage-1 code index of each
masked token (cross-entropy). Both stages update the network in place; the heads live in
:class:`VectorQuantizer` and :class:`MaskedTokenHead`, never in :meth:`DuIN.inference_module`.

Deviations: the paper's VQ decoder (4 transformer blocks + transposed convs, with a
de-subject map back to the raw channels) is a per-token MLP here, and its codebook has
EMA updates and k-means init; here the codebook learns by gradient, starts from sampled
encoder outputs, and codes unused in an epoch restart on random latents of the last batch
(against codebook collapse). The MAE stage continues from the stage-1 weights (the paper may
start it afresh). ``positions`` are accepted and unused (Du-IN uses no electrode
geometry). Window length must be a multiple of ``patch_len``; kernel sizes and strides are
in samples (the paper's are at 1 kHz: at 250 Hz use ``patch_len=25`` with a shorter first
kernel and stride).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HPARAMS", "SMALL", "DuIN", "MaskedTokenHead", "VectorQuantizer", "pretrain",
           "training_loss"]

HPARAMS: dict = dict(
    patch_len=100, conv_filters=(128, 128, 16), conv_kernels=(19, 3, 3), conv_stride=10,
    d_neural=None, n_blocks=8, n_heads=8, d_head=64, ff_mult=2, attn_dropout=0.2, ff_dropout=0.2,
    d_hidden=128, codebook_size=2048, d_codex=64, mask_ratio=0.5,
)
SMALL: dict = dict(
    patch_len=100, conv_filters=(32, 32, 8), conv_kernels=(19, 3, 3), conv_stride=10,
    d_neural=None, n_blocks=2, n_heads=4, d_head=16, ff_mult=2, attn_dropout=0.2, ff_dropout=0.2,
    d_hidden=128, codebook_size=64, d_codex=16, mask_ratio=0.5,
)
ZSCORE_EPS = 1e-20  # added to the variance: unit-agnostic (volts or µV), keeps zero channels 0


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Per-window, per-channel z-score of ``(batch, time, channels)`` over time."""
    centred = x - x.mean(dim=1, keepdim=True)
    return centred / torch.sqrt(centred.square().mean(dim=1, keepdim=True) + ZSCORE_EPS)


def sincos_embedding(n_positions: int, d_model: int) -> torch.Tensor:
    """Transformer sin-cos position table ``(n_positions, d_model)`` (sin even, cos odd)."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                     * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : d_model // 2]
    return table


class SubjectBlock(nn.Module):
    """Per-subject affine channel map ``x @ W_s.T + b_s``, ``(B, T, C) → (B, T, D)``;
    weights ``(subjects, D, C)`` and biases ``(subjects, D)`` start truncated normal (std
    0.02), as Du-IN's subject layer."""

    def __init__(self, n_subjects: int, n_channels: int, n_out: int | None = None):
        super().__init__()
        n_out = n_channels if n_out is None else n_out
        self.weight = nn.Parameter(nn.init.trunc_normal_(
            torch.empty(n_subjects, n_out, n_channels), std=0.02))
        self.bias = nn.Parameter(nn.init.trunc_normal_(torch.empty(n_subjects, n_out),
                                                       std=0.02))

    def matrix(self, subject: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W (D, C), b (D,))`` of one subject; None → the mean over subjects."""
        if subject is None:
            return self.weight.mean(0), self.bias.mean(0)
        return self.weight[subject], self.bias[subject]

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None) -> torch.Tensor:
        if subject is None:
            weight, bias = self.matrix(None)
            return x @ weight.T + bias
        return torch.einsum("btc,bdc->btd", x, self.weight[subject]) + self.bias[subject][:, None]


class PatchTokenizer(nn.Module):
    """Conv stack per time patch → one token per patch: ``(B, T, C) → (B, T/P, d_model)``.

    The first conv has stride ``stride`` and padding ``(kernel − 1) // 2``, the others stride
    1 and ``same`` padding; every conv is followed by BatchNorm (no activation, as Du-IN);
    ``P / stride`` steps, so ``d_model = filters[-1] * P / stride``.
    """

    def __init__(self, n_channels: int, patch_len: int, filters: tuple[int, ...],
                 kernels: tuple[int, ...], stride: int):
        super().__init__()
        if patch_len % stride or len(filters) != len(kernels):
            raise ValueError(f"seeg-words: patch_len {patch_len} must be a multiple of "
                             f"conv_stride {stride}, one kernel per filter count")
        self.patch_len, self.n_steps = patch_len, patch_len // stride
        layers, c_in, length = [], n_channels, patch_len
        for i, (n_filters, kernel) in enumerate(zip(filters, kernels)):
            if i == 0:
                pad = (kernel - 1) // 2
                if (length + 2 * pad - kernel) // stride + 1 != self.n_steps:
                    raise ValueError(f"seeg-words: first kernel {kernel} with padding {pad} "
                                     f"does not give {self.n_steps} steps")
                conv = nn.Conv1d(c_in, n_filters, kernel, stride=stride, padding=pad)
            else:
                conv = nn.Conv1d(c_in, n_filters, kernel, padding="same")
            layers += [conv, nn.BatchNorm1d(n_filters)]
            c_in = n_filters
        self.convs = nn.Sequential(*layers)
        self.d_model = filters[-1] * self.n_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n_samples, n_channels = x.shape
        n_tokens = n_samples // self.patch_len
        patches = x.reshape(batch * n_tokens, self.patch_len, n_channels).transpose(1, 2)
        features = self.convs(patches)  # (B*N, filters, steps)
        return features.transpose(1, 2).reshape(batch, n_tokens, self.d_model)


class TransformerBlock(nn.Module):
    """Post-norm block: ``x = LN(x + MHA(x)); x = LN(x + FFN(x))``, head size independent;
    queries and keys LayerNorm-ed per head (``norm_q``, ``norm_k`` over ``d_head``); FFN
    Linear → ReLU → Linear."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, d_ff: int,
                 attn_dropout: float, ff_dropout: float):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.qkv = nn.Linear(d_model, 3 * n_heads * d_head)
        self.proj = nn.Linear(n_heads * d_head, d_model)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.norm_q, self.norm_k = nn.LayerNorm(d_head), nn.LayerNorm(d_head)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(ff_dropout),
                                 nn.Linear(d_ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n_tokens, _ = x.shape
        q, k, v = (self.qkv(x).reshape(batch, n_tokens, 3, self.n_heads, self.d_head)
                   .permute(2, 0, 3, 1, 4))
        q, k = self.norm_q(q), self.norm_k(k)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d_head), dim=-1)
        out = (self.attn_dropout(attn) @ v).transpose(1, 2).reshape(batch, n_tokens, -1)
        x = self.norm1(x + self.proj(out))
        return self.norm2(x + self.ffn(x))


class TokenEncoder(nn.Module):
    """Sin-cos time embedding + transformer blocks: ``(B, N, d) → (B, N, d)``."""

    def __init__(self, n_tokens: int, d_model: int, n_blocks: int, **block):
        super().__init__()
        self.register_buffer("time_embedding", sincos_embedding(n_tokens, d_model))
        self.blocks = nn.Sequential(*[TransformerBlock(d_model, **block)
                                      for _ in range(n_blocks)])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.blocks(tokens + self.time_embedding)


class DuIN(nn.Module):
    """Du-IN word classifier on sEEG windows (Zheng et al., NeurIPS 2024), module doc above.

    Parameters
    ----------
    n_channels, n_samples : int
        Window shape; ``n_samples`` a multiple of ``patch_len`` (paper: 16, 3000–4000 at 1 kHz).
    n_outputs : int
        Number of words (61 in the paper).
    srate : float
        Sampling rate in Hz (kept for the record; sizes are in samples).
    positions : array (n_channels, 3) | None
        Unused (Du-IN has no electrode geometry).
    n_subjects : int
        Number of subject maps.
    **hparams
        Keys of :data:`HPARAMS` (missing ones take the paper's values).

    Input ``x (batch, n_samples, n_channels)`` float32, any unit; output logits
    ``(batch, n_outputs)``.
    """

    def __init__(self, n_channels: int, n_samples: int, n_outputs: int, *, srate: float,
                 positions: np.ndarray | None = None, n_subjects: int = 1, **hparams):
        super().__init__()
        unknown = set(hparams) - set(HPARAMS)
        if unknown:
            raise TypeError(f"seeg-words: unknown hyper-parameters {sorted(unknown)}")
        hp = {**HPARAMS, **hparams}
        if n_samples % hp["patch_len"]:
            raise ValueError(f"seeg-words: window of {n_samples} samples is not a multiple of "
                             f"patch_len {hp['patch_len']}")
        self.hparams, self.srate = hp, float(srate)
        self.n_channels, self.n_samples, self.n_outputs = n_channels, n_samples, n_outputs
        self.n_tokens = n_samples // hp["patch_len"]
        d_neural = hp["d_neural"] or n_channels
        self.subject_block = SubjectBlock(n_subjects, n_channels, d_neural)
        self.tokenizer = PatchTokenizer(d_neural, hp["patch_len"], tuple(hp["conv_filters"]),
                                        tuple(hp["conv_kernels"]), hp["conv_stride"])
        self.d_model = self.tokenizer.d_model
        self.encoder = TokenEncoder(
            self.n_tokens, self.d_model, hp["n_blocks"], n_heads=hp["n_heads"],
            d_head=hp["d_head"], d_ff=hp["ff_mult"] * self.d_model,
            attn_dropout=hp["attn_dropout"], ff_dropout=hp["ff_dropout"])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(self.n_tokens * self.d_model,
                                                          hp["d_hidden"]),
                                  nn.ReLU(), nn.Linear(hp["d_hidden"], n_outputs))
        self.apply(_init_linear)
        with torch.no_grad():  # Du-IN: block b's Linear weights / √(2(b+1))
            for b, block in enumerate(self.encoder.blocks):
                for layer in block.modules():
                    if isinstance(layer, nn.Linear):
                        layer.weight.div_(math.sqrt(2 * (b + 1)))

    def reference_forward(self, x: torch.Tensor, subject: torch.Tensor | None) -> torch.Tensor:
        """Du-IN's ``duin_cls`` forward up to its pre-sigmoid logits: normalised windows
        ``(B, T, C)`` → ``(B, n_outputs)`` (steps 2–5, without this module's z-score)."""
        return self.head(self.encoder(self.tokenizer(self.subject_block(x, subject))))

    def tokens(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """Z-score, subject map and tokenizer: ``(B, T, C) → (B, N, d_model)``."""
        return self.tokenizer(self.subject_block(zscore(x), subject))

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, n_outputs)`` of windows ``x (B, T, C)``; ``subject (B,)`` long or None
        (None = the mean subject map)."""
        return self.head(self.encoder(self.tokens(x, subject)))

    def inference_module(self, subject: int | None = None) -> nn.Module:
        """Eval-mode copy for one window ``(1, T, C)`` → softmax probabilities
        ``(1, n_outputs)``, the subject map (mean map for None) folded into constants."""
        return _DuINInference(self, subject)


class _DuINInference(nn.Module):
    """Export form of :class:`DuIN`: z-score → constant affine map → tokens → encoder → softmax."""

    def __init__(self, model: DuIN, subject: int | None):
        super().__init__()
        net = copy.deepcopy(model).eval()
        with torch.no_grad():
            weight, bias = net.subject_block.matrix(subject)
        self.register_buffer("subject_weight_t", weight.T.detach().clone())
        self.register_buffer("subject_bias", bias.detach().clone())
        self.tokenizer, self.encoder, self.head = net.tokenizer, net.encoder, net.head
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mapped = zscore(x) @ self.subject_weight_t + self.subject_bias
        return torch.softmax(self.head(self.encoder(self.tokenizer(mapped))), dim=-1)


def _init_linear(module: nn.Module) -> None:
    """Du-IN's init of Linear layers: truncated normal (std 0.02) weights, zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def training_loss(model: DuIN, x: torch.Tensor, target: torch.Tensor,
                  subject: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of ``model(x, subject)`` against word indices ``target (B,)``."""
    return F.cross_entropy(model(x, subject), target.long())


# ---------------------------------------------------------------- self-supervised pretraining
class VectorQuantizer(nn.Module):
    """Pretraining only: codebook quantizer of encoder tokens and the patch reconstructor.

    Tokens ``(B, N, d_model)`` are projected to ``d_codex``, l2-normalised and snapped to the
    nearest (cosine) of ``codebook_size`` normalised codes; an MLP maps each quantized token
    back to its patch ``(patch_len × C)``.
    """

    def __init__(self, d_model: int, codebook_size: int, d_codex: int, patch_size: int,
                 beta: float = 1.0):
        super().__init__()
        self.beta = beta
        self.proj = nn.Linear(d_model, d_codex)
        self.codebook = nn.Parameter(torch.randn(codebook_size, d_codex))
        self.decoder = nn.Sequential(nn.Linear(d_codex, d_model), nn.GELU(),
                                     nn.Linear(d_model, patch_size))

    def latent(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised projections ``(B, N, d_codex)``."""
        return F.normalize(self.proj(tokens), dim=-1)

    def codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Nearest code index per token, ``(B, N)`` long."""
        return self.codes_of(self.latent(tokens))

    def codes_of(self, latent: torch.Tensor) -> torch.Tensor:
        """Nearest code index of each normalised latent ``(..., d_codex)``."""
        return (latent @ F.normalize(self.codebook, dim=-1).T).argmax(-1)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstructed patches ``(B, N, patch_size)``, codebook + β·commitment loss and the
        latents ``(B, N, d_codex)`` (for restarting dead codes)."""
        latent = self.latent(tokens)
        codebook = F.normalize(self.codebook, dim=-1)
        quantized = codebook[(latent @ codebook.T).argmax(-1)]
        loss = (F.mse_loss(quantized, latent.detach())
                + self.beta * F.mse_loss(latent, quantized.detach()))
        straight_through = latent + (quantized - latent).detach()
        return self.decoder(straight_through), loss, latent

    @torch.no_grad()
    def restart(self, dead: torch.Tensor, latents: torch.Tensor,
                generator: torch.Generator) -> None:
        """Move the codes flagged in ``dead (K,)`` onto random rows of ``latents (n, d_codex)``."""
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(len(latents), (n_dead,), generator=generator)
            self.codebook[dead] = latents[pick]


class MaskedTokenHead(nn.Module):
    """Pretraining only: learned mask embedding and the code-index classifier of the MAE."""

    def __init__(self, d_model: int, codebook_size: int):
        super().__init__()
        self.mask_embedding = nn.Parameter(torch.zeros(d_model))
        nn.init.trunc_normal_(self.mask_embedding, std=0.02)
        self.classifier = nn.Linear(d_model, codebook_size)

    def forward(self, model: DuIN, x: torch.Tensor, subject: torch.Tensor | None,
                mask: torch.Tensor) -> torch.Tensor:
        """Code logits ``(B, N, codebook_size)``; ``mask (B, N)`` bool marks hidden tokens."""
        tokens = model.tokens(x, subject)
        tokens = torch.where(mask[..., None], self.mask_embedding.to(tokens.dtype), tokens)
        return self.classifier(model.encoder(tokens))


def _patches(model: DuIN, x: torch.Tensor) -> torch.Tensor:
    """Z-scored window cut into patches: ``(B, T, C) → (B, N, patch_len * C)``."""
    return zscore(x).reshape(len(x), model.n_tokens, -1)


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _run_vq(model: DuIN, vq: VectorQuantizer, data, epochs: int, batch_size: int, lr: float,
            generator: torch.Generator, progress) -> list[float]:
    params = list(model.subject_block.parameters()) + list(model.tokenizer.parameters())
    optimizer = torch.optim.Adam(params + list(model.encoder.parameters())
                                 + list(vq.parameters()), lr=lr)
    x_all, s_all = data
    losses = []
    for epoch in range(epochs):
        total, used = 0.0, torch.zeros(len(vq.codebook), dtype=torch.bool)
        for idx in _batches(len(x_all), batch_size, generator):
            x, subject = x_all[idx], None if s_all is None else s_all[idx]
            recon, vq_loss, latent = vq(model.encoder(model.tokens(x, subject)))
            loss = F.mse_loss(recon, _patches(model, x)) + vq_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            used[vq.codes_of(latent.detach())] = True
        if epoch < epochs - 1:
            vq.restart(~used, latent.detach().reshape(-1, latent.shape[-1]), generator)
        losses.append(total / len(x_all))
        if progress is not None:
            progress("vq", epoch, losses[-1])
    return losses


def _run_mae(model: DuIN, teacher: DuIN, vq: VectorQuantizer, mae: MaskedTokenHead, data,
             epochs: int, batch_size: int, lr: float, generator: torch.Generator,
             progress) -> list[float]:
    params = [p for m in (model.subject_block, model.tokenizer, model.encoder, mae)
              for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    x_all, s_all = data
    n_masked = max(1, round(model.hparams["mask_ratio"] * model.n_tokens))
    losses = []
    for epoch in range(epochs):
        total = 0.0
        for idx in _batches(len(x_all), batch_size, generator):
            x, subject = x_all[idx], None if s_all is None else s_all[idx]
            with torch.no_grad():
                target = vq.codes(teacher.encoder(teacher.tokens(x, subject)))
            rank = torch.rand(len(idx), model.n_tokens, generator=generator).argsort(-1)
            mask = rank < n_masked
            logits = mae(model, x, subject, mask)
            loss = F.cross_entropy(logits[mask], target[mask])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x_all))
        if progress is not None:
            progress("mae", epoch, losses[-1])
    return losses


def pretrain(model: DuIN, windows: np.ndarray, epochs: int, seed: int,
             progress: Callable[[str, int, float], None] | None = None, *,
             subjects: np.ndarray | None = None, batch_size: int = 64,
             lr: float = 3e-4) -> dict:
    """Du-IN's self-supervised stages on unlabelled windows; updates ``model`` in place.

    Stage 1 trains a VQ-VAE (the model's subject block, tokenizer and encoder, then a
    :class:`VectorQuantizer`) for ``epochs`` epochs; stage 2 freezes a copy of it as the
    teacher of code indices and trains the model's tokenizer and encoder with a
    :class:`MaskedTokenHead` for ``epochs`` epochs. The classifier head is untouched.

    Parameters
    ----------
    model : DuIN
    windows : array (n, n_samples, n_channels)
        Unlabelled windows (any unit; z-scored inside).
    epochs : int
        Epochs of each stage.
    seed : int
        Seeds the new heads, shuffling and masks.
    progress : callable(stage, epoch, loss) | None
        Called after each epoch with stage ``"vq"`` or ``"mae"`` and the epoch's mean loss.
    subjects : array (n,) of int | None
        Subject index per window (None = the mean subject map).
    batch_size : int
    lr : float
        Adam learning rate (the paper's peak is 3e-4).

    Returns
    -------
    dict
        ``vq_loss`` and ``mae_loss`` (per-epoch mean losses) and ``code_usage`` (fraction of
        the codebook that the training tokens use after stage 1).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    hp, was_training = model.hparams, model.training
    data = (torch.as_tensor(windows, dtype=torch.float32),
            None if subjects is None else torch.as_tensor(subjects, dtype=torch.long))
    vq = VectorQuantizer(model.d_model, hp["codebook_size"], hp["d_codex"],
                         hp["patch_len"] * model.n_channels)
    mae = MaskedTokenHead(model.d_model, hp["codebook_size"])
    model.train()
    _init_codebook(model, vq, data, generator)
    vq_losses = _run_vq(model, vq, data, epochs, batch_size, lr, generator, progress)
    teacher = copy.deepcopy(model).eval()
    vq.eval()
    usage = _code_usage(teacher, vq, data, batch_size)
    mae_losses = _run_mae(model, teacher, vq, mae, data, epochs, batch_size, lr, generator,
                          progress)
    model.train(was_training)
    return {"vq_loss": vq_losses, "mae_loss": mae_losses, "code_usage": usage}


@torch.no_grad()
def _init_codebook(model: DuIN, vq: VectorQuantizer, data, generator: torch.Generator) -> None:
    """Codes start at latents of random training tokens (the paper: k-means init)."""
    x_all, s_all = data
    idx = torch.randperm(len(x_all), generator=generator)[:256]
    latent = vq.latent(model.encoder(model.tokens(
        x_all[idx], None if s_all is None else s_all[idx]))).reshape(-1, vq.codebook.shape[1])
    pick = torch.randint(len(latent), (len(vq.codebook),), generator=generator)
    vq.codebook.copy_(latent[pick] + 0.01 * torch.randn(vq.codebook.shape, generator=generator))


@torch.no_grad()
def _code_usage(teacher: DuIN, vq: VectorQuantizer, data, batch_size: int) -> float:
    """Fraction of codes that are the nearest code of at least one training token."""
    x_all, s_all = data
    used = torch.zeros(len(vq.codebook), dtype=torch.bool)
    for start in range(0, len(x_all), batch_size):
        sl = slice(start, start + batch_size)
        codes = vq.codes(teacher.encoder(teacher.tokens(
            x_all[sl], None if s_all is None else s_all[sl])))
        used[codes.flatten()] = True
    return float(used.float().mean())
