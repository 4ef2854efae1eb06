"""timm backbones without their classifier, final pooling and other head-side modules; weights from a local file.

Which file (the `pretrained` channel's, the Hugging Face Hub's, or none) is decided in `models/weights.py`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
from torch import nn

import birdsed.models.weights_file as weights_file
from birdsed.config import ModelConfig
from birdsed.errors import ConfigError, DataError
from birdsed.models.probe import keep_used_modules

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def find_pretrained_weights(channel_dir: Path | None, backbone: str) -> Path | None:
    """The weights file in the `pretrained` channel: the only one, or the one named after the backbone."""
    if channel_dir is None or not channel_dir.is_dir():
        return None
    candidates = sorted(path for path in channel_dir.rglob("*") if path.is_file() and path.suffix in WEIGHT_SUFFIXES)
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    stems = {backbone, backbone.split(".")[0]}
    named = [path for path in candidates if path.stem in stems or path.parent.name in stems]
    if len(named) == 1:
        return named[0]
    raise DataError(
        f"The pretrained channel holds {len(candidates)} weight files "
        f"({', '.join(path.name for path in candidates[:5])}); keep one, or name it '{backbone}.safetensors'."
    )


def check_backbone_name(name: str) -> None:
    if not timm.is_model(name):
        raise ConfigError(
            f"Unknown backbone '{name}': it is not a timm model name "
            "(see timm.list_models(), e.g. tf_efficientnetv2_s.in21k, efficientnet_b0)."
        )


def create_backbone(cfg: ModelConfig, weights: Path | None, in_chans: int = 3) -> nn.Module:
    """A timm model returning feature maps `[B, C, F, T]` from `forward_features`.

    Weights load through timm's own loader (safetensors or `torch.load(weights_only=True)`), which
    drops the classifier and adapts the stem to `in_chans`. Head-side modules that `forward_features`
    does not use are dropped too, and parameters that would get no gradient are refused (`probe`).
    """
    check_backbone_name(cfg.backbone)
    shapes = weights_file.read_shapes(weights, cfg.backbone) if weights else {}
    options = {"pretrained_cfg_overlay": {"file": str(weights)}} if weights else {}
    options |= {"pretrained": weights is not None, "num_classes": 0, "global_pool": "", "in_chans": in_chans}
    try:
        model = _create_timm_model(cfg.backbone, cfg.drop_path_rate, options)
    except Exception as error:  # noqa: BLE001 - timm's families fail to build in many ways; the user needs the reason
        if weights is None:
            raise ConfigError(
                f"Backbone '{cfg.backbone}' cannot be built as a feature extractor by timm: "
                f"{type(error).__name__}: {error}"
            ) from None
        raise weights_file.loading_error(weights, cfg.backbone, error) from None
    keep_used_modules(model, cfg.backbone, in_chans)
    if weights:
        weights_file.check_loaded(model, shapes, weights, cfg.backbone)
        logger.info("Loaded pretrained weights for %s from %s", cfg.backbone, weights)
    return model


def _create_timm_model(name: str, drop_path_rate: float, options: dict) -> nn.Module:
    """`timm.create_model` with stochastic depth; families without it (ghostnet, inception_v3) refuse the
    argument with a TypeError, and are built without it, with a warning."""
    try:
        return timm.create_model(name, drop_path_rate=drop_path_rate, **options)
    except TypeError as error:
        if "drop_path_rate" not in str(error):
            raise
    logger.warning("Backbone %s has no stochastic depth: drop_path_rate=%s is not used", name, drop_path_rate)
    return timm.create_model(name, **options)
