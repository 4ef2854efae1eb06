"""Sound-event-detection heads: time-attention pooling over backbone feature maps (PANNs style).

Heads return logits; sigmoid is applied only for metrics and export so that losses stay
autocast-safe.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from birdsed.config import ModelConfig

# Bounds of an initial class prior: a class absent from the draws still gets a finite bias.
PRIOR_MIN, PRIOR_MAX = 1e-3, 0.5


class AttentionSEDHead(nn.Module):
    """Feature map `[B, C, F, T]` -> named clip-wise and frame-wise logits.

    Frequency is averaged away, neighbouring frames are smoothed (max + mean pooling), and each
    class pools its frame-wise logits with its own softmax attention over time (PANNs' AttBlock).
    """

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.2) -> None:
        super().__init__()
        self.dropout = nn.Dropout(drop_rate)
        self.project = nn.Linear(in_features, in_features)
        self.attention = nn.Conv1d(in_features, num_classes, kernel_size=1)
        self.classifier = nn.Conv1d(in_features, num_classes, kernel_size=1)

    @torch.no_grad()
    def set_prior(self, prior: torch.Tensor) -> None:
        """Start the classifier's bias at each class's log-odds: a fresh model outputs the class prior, the
        constant a loss is lowest for before any feature is learnt (clip and frame outputs alike)."""
        prior = prior.to(self.classifier.bias).clamp(PRIOR_MIN, PRIOR_MAX)
        self.classifier.bias.copy_(torch.log(prior / (1 - prior)))

    def pool_frequency(self, features: torch.Tensor) -> torch.Tensor:
        frames = features.mean(dim=2)  # [B, C, T]
        return F.max_pool1d(frames, 3, stride=1, padding=1) + F.avg_pool1d(frames, 3, stride=1, padding=1)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.attend(self.pool_frequency(features))

    def attend(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """`[B, C, T]` frame features -> outputs."""
        frames = self.dropout(frames)
        frames = F.relu(self.project(frames.transpose(1, 2))).transpose(1, 2)  # [B, C, T]
        frames = self.dropout(frames)
        attention = torch.softmax(torch.tanh(self.attention(frames)), dim=-1)  # [B, K, T]
        frame_logits = self.classifier(frames)  # [B, K, T]
        clip_logits = (attention * frame_logits).sum(dim=-1)  # [B, K]
        return {
            "clipwise_logits": clip_logits,
            "framewise_logits": frame_logits.transpose(1, 2),  # [B, T, K]
            "attention": attention.transpose(1, 2),  # [B, T, K]
        }


class ChronoNetHead(nn.Module):
    """A bidirectional GRU over time before the attention head (the seed's v2 design).

    The GRU lets each frame see its context, which helps calls longer than the backbone's
    receptive field.
    """

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.2, hidden: int = 256) -> None:
        super().__init__()
        self.sed = AttentionSEDHead(2 * hidden, num_classes, drop_rate)
        self.gru = nn.GRU(in_features, hidden, batch_first=True, bidirectional=True)

    def set_prior(self, prior: torch.Tensor) -> None:
        self.sed.set_prior(prior)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        frames = features.mean(dim=2).transpose(1, 2)  # [B, T, C]
        context, _ = self.gru(frames)  # [B, T, 2 * hidden]
        return self.sed(context.transpose(1, 2).unsqueeze(2))  # [B, 2 * hidden, 1, T]


HEADS: dict[str, Callable[[int, int, ModelConfig], nn.Module]] = {
    "attention": lambda channels, classes, cfg: AttentionSEDHead(channels, classes, cfg.drop_rate),
    "chrononet": lambda channels, classes, cfg: ChronoNetHead(channels, classes, cfg.drop_rate, cfg.gru_hidden),
}


def create_head(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    """The SED head named by `cfg.head` on top of `in_features` backbone channels."""
    if cfg.head not in HEADS:
        raise ValueError(f"unknown head '{cfg.head}'; choose one of {', '.join(HEADS)}")
    return HEADS[cfg.head](in_features, num_classes, cfg)
