import math

import pytest
import torch
from timm.scheduler import CosineLRScheduler

from birdsed.errors import DivergenceError
from birdsed.training.amp import mixed_precision
from birdsed.training.distributed import Distributed
from birdsed.training.loop import Progress, Trainer, finish_step
from birdsed.training.signals import NeverStop


def tiny_trainer(patience=3):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    precision = mixed_precision("off", torch.device("cpu"))
    return Trainer(
        model=model,
        loss_fn=torch.nn.Identity(),
        optimizer=optimizer,
        scheduler=CosineLRScheduler(optimizer, t_initial=100, t_in_epochs=False),
        scaler=precision.grad_scaler(),
        precision=precision,
        device=torch.device("cpu"),
        batches_per_epoch=10,
        grad_accum_steps=1,
        max_grad_norm=1.0,
        max_steps=0,
        nonfinite_patience=patience,
        distributed=Distributed(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")),
    )


def backward(trainer, value):
    output = trainer.model(torch.ones(1, 2)).sum()
    loss = output - output.detach() + value  # a real gradient, and exactly `value` as the loss
    loss.backward()
    return loss.detach()


def test_a_finite_step_updates_and_counts_the_loss():
    trainer, progress = tiny_trainer(), Progress()
    before = trainer.model.weight.clone()
    finish_step(trainer, progress, [backward(trainer, 2.0)], NeverStop())
    assert not torch.equal(before, trainer.model.weight)
    assert progress.step == 1 and progress.epoch_loss == 2.0 and progress.nonfinite_steps == 0


def test_a_non_finite_step_is_skipped_counted_and_the_streak_resets_on_recovery():
    trainer, progress = tiny_trainer(), Progress()
    before = trainer.model.weight.clone()
    finish_step(trainer, progress, [backward(trainer, math.nan)], NeverStop())
    assert torch.equal(before, trainer.model.weight)
    assert all(p.grad is None for p in trainer.model.parameters())
    assert progress.step == 1 and progress.nonfinite_steps == 1 and math.isnan(progress.epoch_loss)
    finish_step(trainer, progress, [backward(trainer, 1.0)], NeverStop())
    assert progress.consecutive_nonfinite == 0 and progress.nonfinite_steps == 1 and progress.epoch_loss == 1.0


def test_persistent_non_finite_steps_raise_with_a_reason():
    trainer, progress = tiny_trainer(patience=2), Progress()
    finish_step(trainer, progress, [backward(trainer, math.inf)], NeverStop())
    with pytest.raises(DivergenceError, match="2 consecutive optimizer steps"):
        finish_step(trainer, progress, [backward(trainer, math.nan)], NeverStop())
