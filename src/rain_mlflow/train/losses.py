"""Classification losses. Class weights balance rain / no rain from the training split's counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def balanced_class_weights(n_no_rain: int, n_rain: int) -> Tensor:
    """n / (2 * n_class): each class contributes equally to the loss (sklearn's 'balanced')."""
    total = n_no_rain + n_rain
    return torch.tensor([total / (2 * max(n_no_rain, 1)), total / (2 * max(n_rain, 1))], dtype=torch.float32)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, with optional class weights."""

    def __init__(self, gamma: float, weight: Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        log_p = F.log_softmax(logits.float(), dim=-1)
        log_p_true = log_p.gather(1, target[:, None]).squeeze(1)
        loss = -((1 - log_p_true.exp()) ** self.gamma) * log_p_true
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


def build_loss(kind: str, gamma: float, n_no_rain: int, n_rain: int) -> nn.Module:
    weights = balanced_class_weights(n_no_rain, n_rain)
    if kind == "focal":
        return FocalLoss(gamma, weights)
    if kind == "weighted_ce":
        return nn.CrossEntropyLoss(weight=weights)
    return nn.CrossEntropyLoss()
