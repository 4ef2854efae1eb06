"""Which settings a resumed job may change, and applying the ones that changed.

A checkpoint holds the config it was trained with. Settings that shape the model or what it
sees (front end, sample rate, crop length, architecture, the train/validation split) must be the
same, or the weights would continue under a front end they were not trained for while config.json
states another; a resume with any of them changed is refused, naming each. Everything else
(epochs, lr, augmentation, ...) may change: each change is logged, and the optimizer settings
that a loaded optimizer state would otherwise override (lr, weight_decay, backbone_lr_scale) are
applied, so the schedule continues from the resumed step with the new values.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from timm.scheduler.scheduler import Scheduler
from torch import nn

from birdsed import optim
from birdsed.config import Config, OptimConfig
from birdsed.errors import ConfigError

logger = logging.getLogger(__name__)

SPLIT = "the train/validation split"
# Settings a checkpoint cannot continue under, with why (the group named in the error).
FIXED_SETTINGS = {
    **dict.fromkeys(("backbone", "head", "gru_hidden", "freeze_backbone"), "the model"),
    **dict.fromkeys(("sample_rate", "duration"), "the model's input"),
    **dict.fromkeys(("n_mels", "n_fft", "hop_length", "fmin", "fmax", "top_db"), "the spectrogram front end"),
    **dict.fromkeys(("seed", "val_fraction"), SPLIT),
}


def changed_settings(saved: dict[str, dict[str, object]], cfg: Config) -> dict[str, tuple[object, object]]:
    """{name: (checkpoint's value, this job's value)} for every hyperparameter that differs.

    Names the checkpoint does not know (written by an older birdsed) are left out.
    """
    before = {name: value for section in saved.values() for name, value in section.items()}
    return {
        name: (before[name], value)
        for name, value in cfg.hyperparameters().items()
        if name in before and before[name] != value
    }


def check_settings(saved: dict[str, dict[str, object]], cfg: Config, directory: Path, automatic_split: bool) -> None:
    """Refuse a resume that changes a fixed setting (all of them named); log every other change.

    `automatic_split`: validation is split off the train channel (no validation channel), so the
    split's settings are fixed too.
    """
    changes = changed_settings(saved, cfg)
    fixed_names = {name for name, why in FIXED_SETTINGS.items() if automatic_split or why != SPLIT}
    fixed = {name: values for name, values in changes.items() if name in fixed_names}
    if fixed:
        listed = "; ".join(
            f"{name}={show(old)} there, {name}={show(new)} in this job ({FIXED_SETTINGS[name]})"
            for name, (old, new) in fixed.items()
        )
        raise ConfigError(
            f"Cannot resume from the checkpoints in {directory}: {listed}. These settings shape the model or its "
            "input, so its weights cannot continue under the new values. Set them back to continue, or start afresh "
            "with a new checkpoint location (a new --job-name)."
        )
    for name, (old, new) in changes.items():
        logger.info("resume: %s %s -> %s", name, show(old), show(new))


def show(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, scheduler: Scheduler, saved: dict, model: nn.Module, cfg: OptimConfig, step: int
) -> None:
    """Continue the checkpoint's optimizer (its per-parameter moments) under this job's settings, at update `step`.

    The settings of the groups (lr, weight_decay, backbone_lr_scale) are this job's, so a resume may
    change them; the schedule is a function of the update count (`optim.create_scheduler`), so setting
    the rates for `step` is what the uninterrupted run's scheduler did: an unchanged resume is exact.
    A checkpoint written before the optimizer came from timm's factory (two groups, no names) is migrated.
    """
    if not all("name" in group for group in saved["param_groups"]):
        saved = migrate_two_group_state(saved, optimizer, model)
    optimizer.load_state_dict(saved)
    for group, settings in zip(optimizer.param_groups, optim.group_settings(cfg), strict=True):
        group.update(settings, initial_lr=cfg.lr)
    scheduler.step_update(step)


def migrate_two_group_state(saved: dict, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
    """A checkpoint's optimizer state from before the timm optimizer (birdsed 0.1.0), in this optimizer's layout.

    That optimizer had two groups over the trainable parameters in model order: matrices (decayed),
    then 1-D parameters. Each parameter's moments move to its place in this optimizer's groups.
    """
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    old_order = [p for p in trainable if p.ndim > 1] + [p for p in trainable if p.ndim <= 1]
    old_ids = [index for group in saved["param_groups"] for index in group["params"]]
    new_index = {id(parameter): index for index, parameter in enumerate(_parameters(optimizer))}
    if len(old_ids) != len(old_order) or not set(map(id, old_order)) <= set(new_index):
        raise ConfigError(
            f"The checkpoint's optimizer state holds {len(old_ids)} parameters, this model trains {len(old_order)}: "
            "it was written for another model. Start afresh with a new checkpoint location (a new --job-name)."
        )
    state = {}
    for parameter, old_id in zip(old_order, old_ids, strict=True):
        moments = saved["state"].get(old_id)
        if moments is None:
            continue
        if moments["exp_avg"].shape != parameter.shape:
            raise ConfigError(
                "The checkpoint's optimizer state does not fit this model's parameters (another model?). Start "
                "afresh with a new checkpoint location (a new --job-name)."
            )
        state[new_index[id(parameter)]] = moments
    logger.info("resume: optimizer state of an older birdsed migrated to timm's optimizer (%d parameters)", len(state))
    return {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}


def _parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [parameter for group in optimizer.param_groups for parameter in group["params"]]


def batches_in_new_size(batches_done: int, old_batch_size: int, new_batch_size: int) -> int:
    """A mid-epoch position in batches of another size: whole new batches already drawn (a few draws repeat)."""
    return batches_done * old_batch_size // new_batch_size
