"""Which settings a resumed job may change, and applying the ones that changed.

A checkpoint holds the config it was trained with. Settings that shape the model or what it
sees (front end, sample rate, crop length, architecture, the train/validation split) must be the
same, or the weights would continue under a front end they were not trained for while config.json
states another; a resume with any of them changed is refused, naming each. Everything else
(epochs, lr, augmentation, ...) may change: each change is logged, and the optimizer settings
that a loaded optimizer and scheduler state would otherwise override (lr, weight_decay) are
applied, so the schedule continues from the resumed step with the new values.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

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


def apply_optimizer_settings(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: OptimConfig
) -> None:
    """Put this job's lr and weight_decay into a loaded optimizer and scheduler state.

    The scheduler's multipliers come from this job's config (epochs, warmup_epochs, min_lr_ratio
    are not saved, only the step), but its base learning rates and the optimizer's weight decay
    come from the checkpoint. Recomputing lr = base x multiplier(step) gives the value the
    scheduler would have set itself, so an unchanged resume continues exactly.
    """
    decay_group = optimizer.param_groups[0]  # see create_optimizer: decayed weights first, then the rest
    decay_group["weight_decay"] = cfg.weight_decay
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    for group, multiplier in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = cfg.lr
        group["lr"] = cfg.lr * multiplier(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


def batches_in_new_size(batches_done: int, old_batch_size: int, new_batch_size: int) -> int:
    """A mid-epoch position in batches of another size: whole new batches already drawn (a few draws repeat)."""
    return batches_done * old_batch_size // new_batch_size
