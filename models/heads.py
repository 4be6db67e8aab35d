"""Output heads the class families share for their inference modules."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Probabilities"]


class Probabilities(nn.Module):
    """Softmax of a network's logits ``(batch, n_classes)``: what the live decoder reports."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=-1)
