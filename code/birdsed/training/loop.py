"""One epoch of training and one pass of validation, short enough to read whole.

The loop can stop after any optimizer step (a stop request or `max_steps`) and continue later
from exactly there: `Progress` says how many batches of the epoch are done, and the sampler
skips them on resume.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from birdsed.errors import DivergenceError
from birdsed.metrics import macro_roc_auc, padded_cmap
from birdsed.training.amp import MixedPrecision
from birdsed.training.signals import StopRequest

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # the epoch in progress, or the next one, 0-based
    batches_done: int = 0  # training batches of `epoch` already consumed
    step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    epoch_loss_sum: float = 0.0  # finite training losses of `epoch` so far
    epoch_loss_batches: int = 0
    nonfinite_steps: int = 0  # skipped in the whole run
    consecutive_nonfinite: int = 0
    best_score: float = -math.inf
    history: list[dict] = field(default_factory=list)

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.batches_done, self.epoch_loss_sum, self.epoch_loss_batches = epoch, 0, 0.0, 0

    @property
    def epoch_loss(self) -> float:
        return self.epoch_loss_sum / self.epoch_loss_batches if self.epoch_loss_batches else math.nan


@dataclass
class Trainer:
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    precision: MixedPrecision
    device: torch.device
    batches_per_epoch: int
    grad_accum_steps: int
    max_grad_norm: float  # 0 = no clipping
    max_steps: int  # 0 = no limit
    nonfinite_patience: int

    def limit_reached(self, progress: Progress) -> bool:
        return bool(self.max_steps) and progress.step >= self.max_steps


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def train_one_epoch(trainer: Trainer, loader: DataLoader, progress: Progress, stop: StopRequest) -> None:
    """Train over the rest of the epoch; returns early, at a step boundary, on a stop request or max_steps."""
    trainer.model.train()
    step_losses: list[torch.Tensor] = []
    for batch in loader:
        step_losses.append(forward_backward(trainer, to_device(batch, trainer.device)))
        progress.batches_done += 1
        at_boundary = progress.batches_done % trainer.grad_accum_steps == 0
        if at_boundary or progress.batches_done == trainer.batches_per_epoch:
            finish_step(trainer, progress, step_losses)
            step_losses = []
            if stop.requested or trainer.limit_reached(progress):
                return


def forward_backward(trainer: Trainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One micro-batch: forward under autocast, backward of the accumulation-scaled loss."""
    with trainer.precision.autocast():
        outputs = trainer.model(batch["waveform"])
    loss = trainer.loss_fn(outputs, batch["target"], batch["weight"])
    trainer.scaler.scale(loss / trainer.grad_accum_steps).backward()
    return loss.detach()


def finish_step(trainer: Trainer, progress: Progress, losses: list[torch.Tensor]) -> None:
    """Step the optimizer, or skip the step when the loss or the gradients are not finite.

    This is the loop's one host-device sync per optimizer step. With fp16 an overflow in the
    gradients is the GradScaler's business (it skips and lowers the scale); a non-finite loss is not.
    """
    trainer.scaler.unscale_(trainer.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.max_grad_norm or math.inf)
    *loss_values, norm_value = torch.stack([*losses, norm.to(losses[0].dtype)]).float().tolist()
    finite = all(math.isfinite(value) for value in loss_values)
    finite = finite and (math.isfinite(norm_value) or trainer.scaler.is_enabled())
    if finite:
        trainer.scaler.step(trainer.optimizer)
        progress.epoch_loss_sum += sum(loss_values)
        progress.epoch_loss_batches += len(loss_values)
        progress.consecutive_nonfinite = 0
    else:
        skip_nonfinite_step(trainer, progress, loss_values, norm_value)
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scheduler.step()
    progress.step += 1


def skip_nonfinite_step(trainer: Trainer, progress: Progress, losses: list[float], norm: float) -> None:
    progress.nonfinite_steps += 1
    progress.consecutive_nonfinite += 1
    logger.warning(
        "Skipped optimizer step %d: non-finite loss or gradients (losses=%s grad_norm=%s); nonfinite_steps=%d",
        progress.step + 1,
        [round(value, 4) for value in losses],
        norm,
        progress.nonfinite_steps,
    )
    if progress.consecutive_nonfinite >= trainer.nonfinite_patience:
        raise DivergenceError(
            f"Training diverged: the loss or its gradients were not finite for {progress.consecutive_nonfinite} "
            f"consecutive optimizer steps (epoch {progress.epoch + 1}, step {progress.step + 1}). No model was "
            "written. Lower 'lr', keep gradient clipping on ('max_grad_norm'), or try amp=off; the last good "
            "checkpoint is kept in the checkpoint location."
        )


@torch.no_grad()
def evaluate(trainer: Trainer, loader: DataLoader, truth: np.ndarray, stop: StopRequest) -> dict | None:
    """Validation loss, padded cmAP and macro ROC-AUC over fixed crops; None if a stop was requested."""
    if len(loader.dataset) == 0:
        return {"val_loss": math.nan, "val_cmap": math.nan, "val_auc": math.nan, "scores": np.zeros((0, 0))}
    trainer.model.eval()
    total, count, scores = 0.0, 0, []
    for batch in loader:
        if stop.requested:
            return None
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
