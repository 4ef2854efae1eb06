"""A float32 CPU Trainer for in-process tests of a training step (one process, no AMP)."""

import torch
from torch import nn

from birdsed.losses import create_loss
from birdsed.optim import create_optimizer, create_scheduler
from birdsed.training.amp import mixed_precision
from birdsed.training.distributed import Distributed
from birdsed.training.loop import Trainer


def cpu_trainer(model: nn.Module, cfg, classes: int, batches_per_epoch: int) -> Trainer:
    """The job's Trainer for `model` with `cfg`'s optimizer and schedule; stops at the first non-finite step."""
    cpu = torch.device("cpu")
    precision = mixed_precision("off", cpu)
    optimizer = create_optimizer(model, cfg.optim)
    return Trainer(
        model=model,
        loss_fn=create_loss(cfg.loss, torch.ones(classes)),
        optimizer=optimizer,
        scheduler=create_scheduler(optimizer, cfg.optim, steps_per_epoch=batches_per_epoch),
        scaler=precision.grad_scaler(),
        precision=precision,
        device=cpu,
        batches_per_epoch=batches_per_epoch,
        grad_accum_steps=1,
        max_grad_norm=cfg.optim.max_grad_norm,
        max_steps=0,
        nonfinite_patience=1,
        distributed=Distributed(0, 0, 1, cpu),
    )
