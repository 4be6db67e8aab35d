"""The CLIP / InfoNCE objective and retrieval metrics shared by the retrieval families.

Brain outputs and candidate targets are compared by cosine similarity; a maps-shaped output
``(n, features, time)`` is flattened, as in Défossez et al. (the whole map is the embedding).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["clip_loss", "normalize", "retrieval_metrics", "topk_hits", "LOGIT_SCALE_INIT"]

LOGIT_SCALE_INIT = float(np.log(1 / 0.07))  # CLIP's initial temperature, as a log scale


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows flattened to vectors and scaled to unit L2 norm: ``(n, ...)`` → ``(n, d)``."""
    return F.normalize(x.flatten(1), dim=1)


def clip_loss(brain: torch.Tensor, target: torch.Tensor, logit_scale: torch.Tensor | float,
              weights: torch.Tensor | None = None, symmetric: bool = True) -> torch.Tensor:
    """InfoNCE over the batch: item ``i``'s brain output must pick target ``i`` among all.

    Parameters
    ----------
    brain : tensor (n, ...)
        Brain outputs (flattened per item).
    target : tensor (n, ...)
        Target embeddings of the same items, same flattened size.
    logit_scale : tensor or float
        Log of the inverse temperature (learnable in CLIP; ``exp`` is capped at 100).
    weights : tensor (n,) | None
        Per-pair weights (e.g. UBP's uncertainty weights), normalised here to mean 1.
    symmetric : bool
        Average the brain→target and target→brain directions (CLIP); False keeps only
        brain→target (Défossez et al.).
    """
    scale = torch.as_tensor(logit_scale, device=brain.device).exp().clamp(max=100.0)
    logits = scale * normalize(brain) @ normalize(target).T
    labels = torch.arange(len(logits), device=logits.device)
    loss = F.cross_entropy(logits, labels, reduction="none")
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, labels, reduction="none"))
    if weights is not None:
        return (loss * (weights / weights.mean().clamp_min(1e-12))).mean()
    return loss.mean()


def topk_hits(scores: np.ndarray, true_index: np.ndarray, ks: tuple[int, ...]) -> dict[int, float]:
    """Fraction of rows whose true candidate ranks in the top ``k``, for each ``k``.

    scores : array (n_queries, n_candidates); true_index : array (n_queries,) of ints.

    The rank counts ties and NaN against the query: a candidate scoring the same as the true
    one, or NaN, ranks ahead of it, and a NaN true score is a miss. So a collapsed network
    (one output for every query) scores at most chance, never a perfect 1.0.
    """
    n = scores.shape[1]
    rows = np.arange(len(scores))
    true_score = scores[rows, true_index]
    others = np.array(scores, dtype=np.float64)
    others[rows, true_index] = -np.inf
    with np.errstate(invalid="ignore"):
        ahead = (others >= true_score[:, None]) | np.isnan(others)
    rank = ahead.sum(axis=1)  # 0 = best
    rank[np.isnan(true_score)] = n
    return {k: float(np.mean(rank < k)) for k in ks}


def retrieval_metrics(brain: np.ndarray, bank: np.ndarray, true_index: np.ndarray) -> dict:
    """``top1`` / ``top5`` / ``top10``, ``n_candidates`` and ``chance`` (of top-1) of retrieving
    each query's candidate in ``bank`` by cosine similarity.

    brain : array (n_queries, ...); bank : array (n_candidates, ...) of the same flattened size.
    """
    b = torch.as_tensor(np.asarray(brain, np.float32))
    c = torch.as_tensor(np.asarray(bank, np.float32))
    scores = (normalize(b) @ normalize(c).T).numpy()
    n = len(bank)
    hits = topk_hits(scores, np.asarray(true_index), (1, 5, 10))
    return {"top1": hits[1], "top5": hits[5], "top10": hits[10], "n_candidates": n,
            "chance": 1.0 / n}
