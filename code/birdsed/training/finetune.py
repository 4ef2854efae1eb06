"""Fine-tuning schedules: the head alone for the first `freeze_backbone_epochs` epochs, then the whole model.

The phase follows from the epoch number alone, so a resumed job (at any epoch, mid-epoch included)
is in the phase the uninterrupted job was in. While frozen, the backbone's parameters take no
gradient (no backward pass through the backbone: the head-only epochs are cheaper) and its batch
norms keep their statistics (eval mode), so it stays exactly as loaded. The optimizer holds the
backbone's parameters all along (`optim.py`): AdamW leaves a parameter without a gradient alone,
so its moments start at the first update after the switch, and the learning-rate schedule, counted
in updates over the whole run, goes on without a jump (the backbone at `backbone_lr_scale` x lr).
"""

from __future__ import annotations

import gc
import logging

from birdsed.config import Config
from birdsed.training.distributed import unwrap
from birdsed.training.loop import Trainer

logger = logging.getLogger(__name__)


def backbone_frozen(cfg: Config, epoch: int) -> bool:
    """Whether epoch `epoch` (0-based) trains the head only."""
    return cfg.model.freeze_backbone or epoch < cfg.optim.freeze_backbone_epochs


def set_phase(trainer: Trainer, cfg: Config, epoch: int) -> None:
    """Freeze or unfreeze the backbone for `epoch`; a no-op when it already is as it should be.

    DistributedDataParallel fixes the parameters it synchronises when it wraps the model, so at a
    switch the model is wrapped anew (which broadcasts rank 0's weights: the same on every process).
    """
    model = unwrap(trainer.model)
    frozen = backbone_frozen(cfg, epoch)
    trainable = any(parameter.requires_grad for parameter in model.backbone.parameters())
    if model.freeze_backbone == frozen and trainable != frozen:
        return
    model.set_backbone_frozen(frozen)
    if trainer.distributed.enabled:
        trainer.model = None
        gc.collect()  # the old wrapper's gradient hooks go with it
        trainer.model = trainer.distributed.wrap(model, sync_batchnorm=False)  # already converted, if asked
    if cfg.optim.freeze_backbone_epochs and not cfg.model.freeze_backbone:
        what = "frozen: the head trains alone" if frozen else "unfrozen: the whole model trains"
        logger.info(
            "epoch=%d: backbone %s (freeze_backbone_epochs=%d)", epoch + 1, what, cfg.optim.freeze_backbone_epochs
        )
