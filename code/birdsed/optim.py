"""AdamW and warmup + cosine from timm's factories, with the head and the backbone in groups of their own.

`create_optimizer` is `timm.optim.create_optimizer_v2(..., "adamw")` over four named groups, always
in this order (a checkpoint's optimizer state is laid out by it): the head without weight decay,
the head with it, the backbone without, the backbone with. timm's grouping keeps biases, norms (all
1-D parameters) and a model's `no_weight_decay()` names out of weight decay. The backbone's groups
carry `lr_scale = backbone_lr_scale`, which timm's scheduler multiplies into their learning rate
at every update; group 0 is the head's, whose rate the epoch line reports.

`create_scheduler` is timm's `CosineLRScheduler` counted in optimizer updates (`t_in_epochs=False`):
linear warmup, then cosine down to `lr * min_lr_ratio`. It holds no state beyond the update count:
`scheduler.step_update(step)` sets the rates for update `step`, which is how a resumed job continues.
"""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from birdsed.config import OptimConfig

# (group name, model part, decayed): the fixed layout of the optimizer's groups.
GROUPS = (
    ("head_no_decay", "head", False),
    ("head_decay", "head", True),
    ("backbone_no_decay", "backbone", False),
    ("backbone_decay", "backbone", True),
)


def split_by_decay(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(no decay, decay) by timm's rule; by structure only, so a resume may change weight_decay."""
    skip = getattr(module, "no_weight_decay", lambda: ())()
    groups = param_groups_weight_decay(module, weight_decay=1.0, no_weight_decay_list=tuple(skip))
    by_decay = {bool(group["weight_decay"]): group["params"] for group in groups}
    return by_decay.get(False, []), by_decay.get(True, [])


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """The four groups of GROUPS; the model has `head` and `backbone` (the front end has no parameters)."""
    parts = {part: split_by_decay(getattr(model, part)) for part in ("head", "backbone")}
    groups = []
    for name, part, decayed in GROUPS:
        group = {"name": name, "params": parts[part][decayed], "weight_decay": cfg.weight_decay if decayed else 0.0}
        if part == "backbone":
            group["lr_scale"] = cfg.backbone_lr_scale
        groups.append(group)
    return groups


def group_settings(cfg: OptimConfig) -> list[dict]:
    """What `param_groups` sets besides the parameters, in GROUPS order: re-applied after loading a checkpoint."""
    return [
        {"name": name, "weight_decay": cfg.weight_decay if decayed else 0.0}
        | ({"lr_scale": cfg.backbone_lr_scale} if part == "backbone" else {})
        for name, part, decayed in GROUPS
    ]


def create_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over every trainable parameter (the backbone's too when it starts frozen for some epochs)."""
    return create_optimizer_v2(
        model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay, param_group_fn=lambda m: param_groups(m, cfg)
    )


def warmup_steps(cfg: OptimConfig, steps_per_epoch: int, total: int) -> int:
    """Warmup updates of a schedule `total` updates long (at least one update after warmup)."""
    return min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total - 1, 0))


def schedule_steps(cfg: OptimConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(total optimizer updates, warmup updates) of the run."""
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    return total, warmup_steps(cfg, steps_per_epoch, total)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int) -> CosineLRScheduler:
    """Warmup from lr / warmup (the first update's rate) to lr, then cosine to lr * min_lr_ratio at the last update."""
    return cosine_scheduler(optimizer, cfg, *schedule_steps(cfg, steps_per_epoch))


def cosine_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total: int, warmup: int) -> CosineLRScheduler:
    """timm's warmup + cosine over `total` updates (`warmup` of them warming up), counted from update 0."""
    for group in optimizer.param_groups:  # the schedule's base rate; lr_scale applies on top
        group["initial_lr"] = cfg.lr
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total - warmup, 1),
        lr_min=cfg.lr * cfg.min_lr_ratio,
        warmup_t=warmup,
        warmup_lr_init=cfg.lr / warmup if warmup else 0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )
