"""An exponential moving average of the weights (timm's ModelEmaV3), the model that is validated and kept.

Averaging the last steps' weights smooths the noise of small batches and short schedules: the weights a
job validates, selects and delivers are the average, the raw ones go on training. timm's decay warmup,
1 - (1 + step)^-3/4, averages over about the last quarter of the steps so far and is capped by `ema_decay`:
a 240-step job averages its last ~60 steps, a 100,000-step one its last 1 / (1 - ema_decay).
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn

WARMUP_POWER = 0.75  # timm's choice for jobs of under a million steps


def create_ema(model: nn.Module, decay: float) -> ModelEmaV3 | None:
    """The average of `model` (unwrapped, on its device), or None for `ema_decay=0`."""
    if not decay:
        return None
    ema = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=WARMUP_POWER)
    # A compiled core is a function bound to the original model, which the copy would go on calling.
    use_eager_core = getattr(ema.module, "use_eager_core", None)
    if use_eager_core is not None:
        use_eager_core()
    return ema


def reset(ema: ModelEmaV3, weights: dict[str, torch.Tensor]) -> None:
    """Start the average again from `weights` (a round's start): its first update copies the model anyway."""
    ema.module.load_state_dict(weights)
