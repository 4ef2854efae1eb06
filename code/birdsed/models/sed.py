"""The SED model: feature front end + timm backbone + SED head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from birdsed.config import Config
from birdsed.features import LogMelDeltas
from birdsed.models.backbone import create_backbone
from birdsed.models.heads import create_head


class SEDModel(nn.Module):
    """Waveforms `[B, T]` -> `{"clipwise_logits": [B, K], "framewise_logits": [B, T', K], ...}`.

    `forward(spectrogram=...)` (and `forward_spectrogram`) enter after the front end, so that the
    training step can mask the spectrogram between the two without putting augmentation in `forward`.
    The train step goes through `forward` so that a DistributedDataParallel wrapper sees the call.
    """

    def __init__(self, frontend: nn.Module, backbone: nn.Module, head: nn.Module, freeze_backbone: bool) -> None:
        super().__init__()
        self.frontend = frontend
        self.backbone = backbone
        self.head = head
        # Backbone + head, where the time goes; `compile_core` swaps in a compiled version of it.
        self._core = self._backbone_and_head
        self.freeze_backbone = False
        self.set_backbone_frozen(freeze_backbone)

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Frozen: no gradient for the backbone's parameters and its batch norms keep their statistics."""
        self.freeze_backbone = frozen
        self.backbone.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> SEDModel:
        super().train(mode)
        if self.freeze_backbone:
            # A frozen backbone also keeps its batch-norm statistics.
            self.backbone.eval()
        return self

    def compile_core(self, **options: object) -> None:
        """torch.compile backbone + head in place. `state_dict` keys stay unchanged, so checkpoints and the
        exported model load into an uncompiled model; the front end stays eager (its STFT gains nothing)."""
        self._core = torch.compile(self._backbone_and_head, **options)

    def use_eager_core(self) -> None:
        """Undo `compile_core` (for a copy: a compiled core stays bound to the model it was compiled from)."""
        self._core = self._backbone_and_head

    def forward_spectrogram(self, spectrogram: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._core(spectrogram)

    def _backbone_and_head(self, spectrogram: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.backbone.forward_features(spectrogram))

    def forward(
        self, waveform: torch.Tensor | None = None, *, spectrogram: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """From waveforms `[B, T]`, or from the front end's `[B, 3, mels, frames]` when `spectrogram` is given."""
        if spectrogram is None:
            spectrogram = self.frontend(waveform)
        return self.forward_spectrogram(spectrogram)


def create_model(
    cfg: Config, num_classes: int, weights: Path | None = None, class_prior: np.ndarray | None = None
) -> SEDModel:
    """Build the model named by the config; `weights` initialises the backbone, `class_prior` (each class's
    share of positive targets in training) the classifier's bias when `head_bias=prior`."""
    backbone = create_backbone(cfg.model, weights)
    head = create_head(cfg.model, backbone.num_features, num_classes)
    if class_prior is not None and cfg.model.head_bias == "prior":
        head.set_prior(torch.as_tensor(class_prior, dtype=torch.float32))
    frontend = LogMelDeltas(cfg.data.sample_rate, cfg.features)
    return SEDModel(frontend, backbone, head, cfg.model.freeze_backbone)
