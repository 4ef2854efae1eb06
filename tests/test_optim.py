"""timm's AdamW and cosine schedule: the groups, the decay rule, the per-update schedule, backbone_lr_scale."""

import math

import pytest
import torch
from torch import nn

from birdsed.config import OptimConfig
from birdsed.optim import GROUPS, create_optimizer, create_scheduler, schedule_steps


class TwoParts(nn.Module):
    """What the optimizer sees of an SEDModel: a backbone and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))


def rates(cfg: OptimConfig, updates: int, steps_per_epoch: int) -> list[list[float]]:
    """The learning rate of each group at each update, as the training loop steps the scheduler."""
    optimizer = create_optimizer(TwoParts(), cfg)
    scheduler = create_scheduler(optimizer, cfg, steps_per_epoch)
    seen = []
    for step in range(updates):
        seen.append([group["lr"] for group in optimizer.param_groups])
        scheduler.step_update(step + 1)
    return seen


def test_groups_biases_and_norms_are_not_decayed_and_every_parameter_is_in_one_group():
    model = TwoParts()
    optimizer = create_optimizer(model, OptimConfig(weight_decay=0.05, backbone_lr_scale=0.1))
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert [group["name"] for group in optimizer.param_groups] == [name for name, _, _ in GROUPS]
    assert [p.ndim for p in groups["backbone_decay"]["params"]] == [4]
    assert [p.ndim for p in groups["head_decay"]["params"]] == [2]
    assert all(p.ndim == 1 for name in ("head_no_decay", "backbone_no_decay") for p in groups[name]["params"])
    assert groups["head_decay"]["weight_decay"] == groups["backbone_decay"]["weight_decay"] == 0.05
    assert groups["head_no_decay"]["weight_decay"] == groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert groups["backbone_decay"]["lr_scale"] == 0.1 and "lr_scale" not in groups["head_decay"]
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


def test_warmup_then_cosine_per_update_to_the_minimum_ratio():
    cfg = OptimConfig(lr=1.0, epochs=3, warmup_epochs=1, min_lr_ratio=0.1)
    head = [row[0] for row in rates(cfg, 12, steps_per_epoch=4)]
    assert head[0] == pytest.approx(0.25)  # the first update: lr / warmup updates
    assert head[:5] == sorted(head[:5]) and head[4] == pytest.approx(1.0)  # warmup reaches lr at update 4
    assert head[4:] == sorted(head[4:], reverse=True)
    assert head[8] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert head[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_max_steps_shortens_the_schedule():
    assert schedule_steps(OptimConfig(epochs=10, warmup_epochs=1, max_steps=30), steps_per_epoch=5) == (30, 5)
    assert schedule_steps(OptimConfig(epochs=1, warmup_epochs=5), steps_per_epoch=3) == (3, 2)


def test_the_backbone_follows_the_schedule_at_its_scale():
    cfg = OptimConfig(lr=2.0, epochs=2, warmup_epochs=0.5, backbone_lr_scale=0.25)
    for row in rates(cfg, 8, steps_per_epoch=4):
        head_no_decay, head_decay, backbone_no_decay, backbone_decay = row
        assert head_no_decay == head_decay and backbone_no_decay == backbone_decay
        assert backbone_decay == pytest.approx(0.25 * head_decay)


def test_the_schedule_is_a_function_of_the_update_count():
    """A resumed job sets the rates with step_update(step): the same as the uninterrupted run's."""
    cfg = OptimConfig(lr=1.0, epochs=3, warmup_epochs=1)
    uninterrupted = rates(cfg, 12, steps_per_epoch=4)
    optimizer = create_optimizer(TwoParts(), cfg)
    scheduler = create_scheduler(optimizer, cfg, 4)
    scheduler.step_update(7)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(uninterrupted[7])
