"""Losses on SED logits, weighted per class (count ** -0.5) and per sample (rating)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from birdsed.config import LossConfig


class FocalLoss(nn.Module):
    """Binary focal loss on logits: BCE scaled by `(1 - p_t) ** gamma`, per element.

    Soft targets (secondary labels at e.g. 0.5) are allowed: `p_t` is the probability given to
    the target, `p * y + (1 - p) * (1 - y)`.
    """

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        probability = torch.sigmoid(logits)
        p_t = probability * targets + (1 - probability) * (1 - targets)
        return (1 - p_t).pow(self.gamma) * bce


class BCELoss(nn.Module):
    """Elementwise binary cross-entropy on logits."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


class SEDLoss(nn.Module):
    """Clip-wise loss plus `frame_weight` x the loss on the strongest frame of each class.

    The frame term trains the frame-wise output directly (its max over time must agree with the
    clip label), which keeps frame-wise scores usable for event times. Elements are weighted by
    class weights, items by sample weights; the result is their weighted mean in float32.
    """

    def __init__(self, criterion: nn.Module, class_weights: torch.Tensor, frame_weight: float) -> None:
        super().__init__()
        self.criterion = criterion
        self.frame_weight = frame_weight
        self.register_buffer("class_weights", class_weights.float())

    def forward(
        self, outputs: dict[str, torch.Tensor], targets: torch.Tensor, sample_weights: torch.Tensor
    ) -> torch.Tensor:
        targets = targets.float()
        loss = self._weighted(outputs["clipwise_logits"], targets, sample_weights)
        if self.frame_weight:
            strongest = outputs["framewise_logits"].max(dim=1).values
            loss = loss + self.frame_weight * self._weighted(strongest, targets, sample_weights)
        return loss

    def _weighted(self, logits: torch.Tensor, targets: torch.Tensor, sample_weights: torch.Tensor) -> torch.Tensor:
        elementwise = self.criterion(logits.float(), targets) * self.class_weights  # [B, K]
        per_item = elementwise.mean(dim=1)
        return (per_item * sample_weights).sum() / sample_weights.sum().clamp_min(1e-6)


CRITERIA: dict[str, Callable[[LossConfig], nn.Module]] = {
    "focal": lambda cfg: FocalLoss(cfg.focal_gamma),
    "bce": lambda cfg: BCELoss(),
}


def create_loss(cfg: LossConfig, class_weights: torch.Tensor) -> SEDLoss:
    if cfg.loss not in CRITERIA:
        raise ValueError(f"unknown loss '{cfg.loss}'; choose one of {', '.join(CRITERIA)}")
    return SEDLoss(CRITERIA[cfg.loss](cfg), class_weights, cfg.frame_loss_weight)
