import pytest
import torch

from birdsed.config import OptimConfig
from birdsed.optim import create_optimizer, create_scheduler, warmup_cosine


@pytest.mark.parametrize(("step", "expected"), [(0, 0.25), (3, 1.0), (4, 1.0), (8, 0.5), (12, 0.0), (20, 0.0)])
def test_warmup_then_cosine(step, expected):
    assert warmup_cosine(step, warmup_steps=4, total_steps=12, min_ratio=0.0) == pytest.approx(expected)


def test_scheduler_ends_at_the_minimum_ratio_and_respects_max_steps():
    model = torch.nn.Linear(2, 2)
    optimizer = create_optimizer(model, OptimConfig(lr=1.0))
    scheduler = create_scheduler(
        optimizer, OptimConfig(lr=1.0, epochs=10, warmup_epochs=1, max_steps=30, min_lr_ratio=0.1), steps_per_epoch=5
    )
    for _ in range(30):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_biases_and_norms_are_not_decayed():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = create_optimizer(model, OptimConfig(weight_decay=0.05)).param_groups
    assert decay["weight_decay"] == 0.05 and [p.ndim for p in decay["params"]] == [2]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3
