"""One epoch of training and one pass of validation, short enough to read whole."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from birdsed.augment import Augmentations
from birdsed.data.audio import pcm16_to_float
from birdsed.metrics import macro_roc_auc, padded_cmap
from birdsed.training.amp import MixedPrecision


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # the next epoch to run, 0-based
    step: int = 0  # optimizer steps taken
    best_score: float = -math.inf
    history: list[dict] = field(default_factory=list)


@dataclass
class Trainer:
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    precision: MixedPrecision
    device: torch.device
    grad_accum_steps: int
    max_grad_norm: float
    max_steps: int  # 0 = no limit
    # Training-only, on the device; the default augments nothing. Validation never uses it.
    augment: Augmentations = field(default_factory=Augmentations)

    def limit_reached(self, progress: Progress) -> bool:
        return bool(self.max_steps) and progress.step >= self.max_steps


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move a batch to the device; int16 PCM waveforms (half the bytes to move) become float32 there."""
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    if moved["waveform"].dtype == torch.int16:
        moved["waveform"] = pcm16_to_float(moved["waveform"])
    return moved


def train_one_epoch(trainer: Trainer, loader: DataLoader, progress: Progress) -> float:
    """Train over `loader`; returns the mean loss. Stops early at `max_steps`."""
    trainer.model.train()
    total = torch.zeros((), device=trainer.device)  # summed on device: no sync per step
    batches = 0
    last_batch = len(loader) - 1
    for index, batch in enumerate(loader):
        batch = to_device(batch, trainer.device)
        waveform, target, weight = trainer.augment.waveform(batch["waveform"], batch["target"], batch["weight"])
        with trainer.precision.autocast():
            spectrogram = trainer.augment.spectrogram(trainer.model.frontend(waveform))
            outputs = trainer.model(spectrogram=spectrogram)
        loss = trainer.loss_fn(outputs, target, weight)
        trainer.scaler.scale(loss / trainer.grad_accum_steps).backward()
        total += loss.detach()
        batches += 1
        if (index + 1) % trainer.grad_accum_steps == 0 or index == last_batch:
            optimizer_step(trainer)
            progress.step += 1
            if trainer.limit_reached(progress):
                break
    return (total / max(batches, 1)).item()


def optimizer_step(trainer: Trainer) -> None:
    if trainer.max_grad_norm:
        trainer.scaler.unscale_(trainer.optimizer)
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.max_grad_norm)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scheduler.step()


@torch.no_grad()
def evaluate(trainer: Trainer, loader: DataLoader, truth: np.ndarray) -> dict[str, float | np.ndarray]:
    """Validation loss, padded cmAP and macro ROC-AUC over fixed crops; NaN without data."""
    if len(loader.dataset) == 0:
        return {"val_loss": math.nan, "val_cmap": math.nan, "val_auc": math.nan, "scores": np.zeros((0, 0))}
    trainer.model.eval()
    total, count, scores = 0.0, 0, []
    for batch in loader:
        batch = to_device(batch, trainer.device)
        with trainer.precision.autocast():
            outputs = trainer.model(batch["waveform"])
        loss = trainer.loss_fn(outputs, batch["target"], torch.ones_like(batch["weight"]))
        total += loss.item() * len(batch["waveform"])
        count += len(batch["waveform"])
        scores.append(torch.sigmoid(outputs["clipwise_logits"].float()).cpu())
    probabilities = torch.cat(scores).numpy()
    return {
        "val_loss": total / count,
        "val_cmap": padded_cmap(truth, probabilities),
        "val_auc": macro_roc_auc(truth, probabilities),
        "scores": probabilities,
    }
