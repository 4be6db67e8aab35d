"""Motor-learning graph neural network over the electrode graph (family ``motor-gnn``).

After Nardi, Han, Haar & Faisal, "Graph Neural Networks Uncover Geometric Neural
Representations in Reinforcement-Based Motor Learning" (2024): EEG channels are the nodes of
a graph whose edges come from the electrode geometry; the network reads a pre-movement window
and predicts the previous trial's outcome (or any k classes). The paper does not publish layer
types and sizes, so rtbci's network is a plain, compile-friendly GCN:

1. per-node temporal features: one temporal convolution shared by all channels
   (``n_filters`` kernels of ``kernel_s`` seconds) → BatchNorm → ELU → average pooling of
   ``pool_s`` seconds → a linear map to ``hidden`` features per node;
2. ``n_layers`` graph convolutions ``H ← ELU(Â H W)`` with the **dense** symmetric-normalised
   adjacency ``Â = D^-1/2 (A + I) D^-1/2`` stored as a buffer (a matmul: no scatter, no
   dynamic shapes, so it exports to ONNX and TensorRT as is);
3. readout: ``readout="nodes"`` (default) concatenates the nodes' features → dropout →
   linear → class logits, so the decision can weight electrodes individually as a linear
   decoder does; ``"mean"`` averages over nodes first (permutation-invariant, the usual GNN
   readout).

``A`` joins each electrode to its ``k`` nearest neighbours (symmetrised) on the montage
positions. Per-channel importance is gradient × input of the predicted class, summed over
time (:func:`channel_importance`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtbci.models.heads import Probabilities

__all__ = ["HPARAMS", "SMALL", "MotorGNN", "channel_importance", "knn_adjacency",
           "normalized_adjacency", "training_loss"]

HPARAMS = {"n_filters": 8, "kernel_s": 0.1, "pool_s": 0.04, "hidden": 32, "n_layers": 2,
           "k_neighbours": 6, "dropout": 0.25, "readout": "nodes"}
SMALL = dict(HPARAMS)


def knn_adjacency(positions: np.ndarray, k: int) -> np.ndarray:
    """Symmetric 0/1 adjacency joining each electrode to its ``k`` nearest neighbours.

    positions : array (n_channels, 3), metres. Channels without a position (NaN) get no edge.
    Returns an array (n_channels, n_channels) of float32, zero diagonal.
    """
    pos = np.asarray(positions, dtype=np.float64)
    n = len(pos)
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    dist[np.isnan(dist)] = np.inf
    np.fill_diagonal(dist, np.inf)
    adjacency = np.zeros((n, n), np.float32)
    k = min(k, n - 1)
    for i in range(n):
        near = np.argsort(dist[i])[:k]
        adjacency[i, near[np.isfinite(dist[i, near])]] = 1.0
    return np.maximum(adjacency, adjacency.T)


def normalized_adjacency(adjacency: np.ndarray) -> np.ndarray:
    """``D^-1/2 (A + I) D^-1/2`` of a symmetric adjacency ``A`` (n, n): GCN propagation."""
    a = np.asarray(adjacency, dtype=np.float64) + np.eye(len(adjacency))
    d = 1.0 / np.sqrt(a.sum(axis=1))
    return (a * d[:, None] * d[None, :]).astype(np.float32)


class MotorGNN(nn.Module):
    """Dense GCN on the electrode graph: ``(batch, n_samples, n_channels)`` → class logits.

    Parameters
    ----------
    n_channels, n_samples : int
        Window shape (samples at ``srate`` Hz).
    n_outputs : int
        Number of classes.
    srate : float
        Sampling rate in Hz (sets the kernel and pooling lengths).
    positions : array (n_channels, 3) | None
        Electrode positions in metres (the graph). None: a fully connected graph.
    n_subjects : int
        Accepted for the family interface; the GNN has no subject-specific layer.
    n_filters, kernel_s, pool_s, hidden, n_layers, k_neighbours, dropout, readout
        See the module docstring (:data:`HPARAMS`).
    """

    def __init__(self, n_channels: int, n_samples: int, n_outputs: int, *, srate: float,
                 positions: np.ndarray | None = None, n_subjects: int = 1,
                 n_filters: int = 8, kernel_s: float = 0.1, pool_s: float = 0.04,
                 hidden: int = 32, n_layers: int = 2, k_neighbours: int = 6,
                 dropout: float = 0.25, readout: str = "nodes"):
        super().__init__()
        if readout not in ("nodes", "mean"):
            raise ValueError(f"readout must be 'nodes' or 'mean', not {readout!r}")
        kernel = max(1, round(kernel_s * srate))
        pool = max(1, round(pool_s * srate))
        if kernel > n_samples:
            raise ValueError(f"kernel_s={kernel_s} s is longer than the {n_samples}-sample window")
        if positions is None:
            adjacency = np.ones((n_channels, n_channels), np.float32) - np.eye(n_channels)
        else:
            adjacency = knn_adjacency(positions, k_neighbours)
        self.register_buffer("adjacency", torch.from_numpy(normalized_adjacency(adjacency)))
        self.temporal = nn.Conv2d(1, n_filters, (1, kernel), bias=False)
        self.bn = nn.BatchNorm2d(n_filters)
        self.pool = nn.AvgPool2d((1, pool))
        n_time = (n_samples - kernel + 1) // pool
        self.node_in = nn.Linear(n_filters * n_time, hidden)
        self.graph = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_layers))
        self.dropout = nn.Dropout(dropout)
        self.pool_nodes = readout == "mean"
        self.readout = nn.Linear(hidden if self.pool_nodes else hidden * n_channels, n_outputs)

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, n_samples, n_channels) → logits (batch, n_outputs)."""
        h = x.transpose(1, 2).unsqueeze(1)  # (batch, 1, channels, time)
        h = self.pool(F.elu(self.bn(self.temporal(h))))  # (batch, filters, channels, time')
        h = self.node_in(h.permute(0, 2, 1, 3).flatten(2))  # (batch, channels, hidden)
        for layer in self.graph:
            h = F.elu(torch.matmul(self.adjacency, layer(h)))
        h = h.mean(dim=1) if self.pool_nodes else h.flatten(1)
        return self.readout(self.dropout(h))

    def inference_module(self, subject: int | None = None) -> nn.Module:
        """Eval-mode module for one window: ``(1, n_samples, n_channels)`` → probabilities."""
        return Probabilities(self).eval()




def training_loss(model: MotorGNN, x: torch.Tensor, target: torch.Tensor,
                  subject: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the logits against class indices ``target`` (batch,)."""
    return F.cross_entropy(model(x, subject), target)


def channel_importance(model: nn.Module, window: np.ndarray) -> tuple[int, np.ndarray]:
    """Gradient × input of the predicted class, summed over time, per channel.

    window : array (n_samples, n_channels). Returns the predicted class index and an array
    (n_channels,) of importances, normalised to sum 1 over channels (absolute values).
    """
    was_training = model.training
    model.eval()
    x = torch.tensor(window[None], dtype=torch.float32, requires_grad=True)
    logits = model(x)
    predicted = int(logits.argmax())
    logits[0, predicted].backward()
    model.train(was_training)
    relevance = (x.grad * x).detach()[0].sum(dim=0).abs().numpy()
    return predicted, relevance / max(float(relevance.sum()), 1e-12)
