"""One epoch of training and one pass of validation, short enough to read whole.

The loop can stop after any optimizer step (a stop request or `max_steps`) and continue later
from exactly there: `Progress` says how many batches of the epoch are done, and the sampler
skips them on resume.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

from birdsed.augment import Augmentations
from birdsed.data.audio import pcm16_to_float
from birdsed.data.sampler import ShardSampler
from birdsed.errors import DataError, DivergenceError
from birdsed.metrics import macro_roc_auc, padded_cmap
from birdsed.training.amp import MixedPrecision
from birdsed.training.distributed import Distributed, assemble_rows, unwrap
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
    history: list[dict] = field(default_factory=list)
    round: int = 0  # pseudo-label round (birdsed.training.rounds); 0: the focal data only

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
    scheduler: Scheduler  # timm's, stepped per optimizer update (birdsed.optim)
    scaler: torch.amp.GradScaler
    precision: MixedPrecision
    device: torch.device
    batches_per_epoch: int
    grad_accum_steps: int
    max_grad_norm: float  # 0 = no clipping
    max_steps: int  # 0 = no limit
    nonfinite_patience: int
    distributed: Distributed
    # Training-only, on the device; the default augments nothing. Validation never uses it.
    augment: Augmentations = field(default_factory=Augmentations)
    ema: ModelEmaV3 | None = None  # the averaged weights (`ema_decay`), birdsed.training.ema

    def limit_reached(self, progress: Progress) -> bool:
        return bool(self.max_steps) and progress.step >= self.max_steps

    @property
    def evaluated_model(self) -> nn.Module:
        """What is validated, selected and saved as the model: the averaged weights when there are any."""
        return self.ema.module if self.ema is not None else unwrap(self.model)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move a batch to the device; int16 PCM waveforms (half the bytes to move) become float32 there."""
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    if moved["waveform"].dtype == torch.int16:
        moved["waveform"] = pcm16_to_float(moved["waveform"])
    return moved


def train_one_epoch(trainer: Trainer, loader: DataLoader, progress: Progress, stop: StopRequest) -> bool:
    """Train over the rest of the epoch; returns True when it stopped early on a stop request.

    Returns early, at an optimizer-step boundary, on a stop request (agreed by all processes) or
    at `max_steps`.
    """
    trainer.model.train()
    step_losses: list[torch.Tensor] = []
    usable_crops, crops = 0, 0
    for batch in loader:
        progress.batches_done += 1
        # A crop that could not be read comes with weight 0 (see CropDataset); counted on the CPU, no sync.
        usable_crops += int((batch["weight"] > 0).sum())
        crops += len(batch["weight"])
        at_boundary = progress.batches_done % trainer.grad_accum_steps == 0
        at_boundary = at_boundary or progress.batches_done == trainer.batches_per_epoch
        trainer.augment.set_step(progress.step)
        step_losses.append(forward_backward(trainer, to_device(batch, trainer.device), sync_gradients=at_boundary))
        if at_boundary:
            if finish_step(trainer, progress, step_losses, stop):
                return True
            step_losses = []
            if trainer.limit_reached(progress):
                break
    check_crops(trainer, progress, usable_crops, crops)
    return False


def check_crops(trainer: Trainer, progress: Progress, usable: int, total: int) -> None:
    """Log the crops that could not be read; stop when none could, rather than "train" on silence.

    Files are checked when the job starts, so this only happens when they change under the job
    (a cache synced over while training, a volume gone), but then an epoch of zero-weight crops
    would end with `train_loss=0.000000`, a model and `output/success`.
    """
    totals = torch.tensor([float(usable), float(total)], dtype=torch.float64, device=trainer.device)
    usable, total = (int(value) for value in trainer.distributed.sum(totals).tolist())
    if usable < total:
        logger.warning(
            "Skipped %d of the %d training crops of epoch %d: unreadable (each named above); they contributed nothing",
            total - usable,
            total,
            progress.epoch + 1,
        )
    if total and not usable:
        raise DataError(
            f"None of the {total} training crops of epoch {progress.epoch + 1} could be read (the log names each "
            "file and reason): the training files changed or were damaged after the job's start check. No model was "
            "written. Check the train channel's files (for a waveform cache: rerun code/prepare.py and upload the "
            "cache again), then restart the job."
        )


def forward_backward(trainer: Trainer, batch: dict[str, torch.Tensor], sync_gradients: bool = True) -> torch.Tensor:
    """One micro-batch: augment, forward under autocast, backward of the accumulation-scaled loss.

    The model is entered with the (masked) spectrogram through `forward`, so a DDP wrapper sees the
    call; only the front end, which has no parameters, runs outside it. Under DDP, gradients are
    all-reduced only on the micro-batch that ends an optimizer step.
    """
    waveform, target, weight = trainer.augment.waveform(batch["waveform"], batch["target"], batch["weight"])
    no_sync = getattr(trainer.model, "no_sync", None)
    with contextlib.nullcontext() if sync_gradients or no_sync is None else no_sync():
        with trainer.precision.autocast():
            spectrogram = trainer.augment.spectrogram(unwrap(trainer.model).frontend(waveform))
            outputs = trainer.model(spectrogram=spectrogram)
        loss = trainer.loss_fn(outputs, target, weight)
        trainer.scaler.scale(loss / trainer.grad_accum_steps).backward()
    return loss.detach()


def finish_step(trainer: Trainer, progress: Progress, losses: list[torch.Tensor], stop: StopRequest) -> bool:
    """Step the optimizer, or skip the step when a loss or the gradients are not finite; True: stop now.

    This is the loop's one host-device sync per optimizer step; with several processes one
    all-reduce here makes them agree on skipping and stopping and sums the epoch's loss. With fp16
    an overflow in the gradients is the GradScaler's business (it skips and lowers the scale); a
    non-finite loss is not.
    """
    trainer.scaler.unscale_(trainer.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.max_grad_norm or math.inf)
    local = torch.stack(losses).float()
    finite = torch.isfinite(local).all()
    bad = ~finite if trainer.scaler.is_enabled() else ~finite | ~torch.isfinite(norm)
    summary = torch.stack([
        bad.float(),
        torch.tensor(float(stop.requested), device=local.device),
        torch.where(finite, local.sum(), 0.0),
        torch.tensor(float(len(losses)), device=local.device),
    ])  # fmt: skip
    any_bad, any_stop, loss_sum, batches, *local_values = torch.cat([trainer.distributed.sum(summary), local]).tolist()
    if any_bad:
        skip_nonfinite_step(trainer, progress, local_values, norm.item())
    else:
        trainer.scaler.step(trainer.optimizer)
        if trainer.ema is not None:
            trainer.ema.update(unwrap(trainer.model), step=progress.step + 1)
        progress.epoch_loss_sum += loss_sum
        progress.epoch_loss_batches += int(batches)
        progress.consecutive_nonfinite = 0
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)
    progress.step += 1
    trainer.scheduler.step_update(progress.step)  # the rates of the next update (timm's scheduler, per update)
    return any_stop > 0


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
    """Validation loss, padded cmAP and macro ROC-AUC over fixed crops; None if a stop was requested.

    Each process scores its share (`ShardSampler`); scores are gathered so the metrics cover the
    whole validation set on every process.
    """
    if len(truth) == 0:
        return {"val_loss": math.nan, "val_cmap": math.nan, "val_auc": math.nan, "scores": np.zeros((0, 0))}
    if trainer.ema is None:
        model = trainer.model  # the DDP wrapper hands rank 0's batch-norm statistics to every process
    else:
        model = trainer.ema.module
        trainer.distributed.broadcast_buffers(model)  # each process averages its own batch-norm statistics
    model.eval()
    sampler: ShardSampler = loader.sampler
    loss_sum, count, scores = 0.0, 0, []
    for batch in loader:
        if trainer.distributed.any(stop.requested):
            return None
        batch = to_device(batch, trainer.device)
        size = len(batch["waveform"])
        real = (torch.arange(size, device=trainer.device) + count) < sampler.real  # False: padding
        with trainer.precision.autocast():
            outputs = model(batch["waveform"])
        if real.any():
            loss = trainer.loss_fn(outputs, batch["target"], real.float())
            loss_sum += loss.item() * real.sum().item()
        count += size
        scores.append(torch.sigmoid(outputs["clipwise_logits"].float()).cpu())
    local = (sampler.indices[: sampler.real], torch.cat(scores).numpy()[: sampler.real])
    probabilities = assemble_rows(trainer.distributed.gather(local), len(truth))
    totals = torch.tensor([loss_sum, float(sampler.real)], dtype=torch.float64, device=trainer.device)
    loss_sum, real_count = trainer.distributed.sum(totals).tolist()
    return {
        "val_loss": loss_sum / real_count,
        "val_cmap": padded_cmap(truth, probabilities),
        "val_auc": macro_roc_auc(truth, probabilities),
        "scores": probabilities,
    }
