"""Device settings that make the training step fast; each a no-op where it does not help."""

from __future__ import annotations

import logging

import torch

from birdsed.models import SEDModel

logger = logging.getLogger(__name__)


def configure_backends(device: torch.device) -> None:
    """cuDNN benchmark mode: the crops have one fixed shape, so the autotuned kernels are reused."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def optimise_model(model: SEDModel, compile_model: bool, memory_format: str = "channels_last") -> SEDModel:
    """The weights' layout (`memory_format`), optionally torch.compile of backbone and head (`SEDModel.compile_core`).

    Tensor-core convolutions are meant for NHWC, and so are oneDNN's CPU convolutions: an efficientnet_b0 step on
    2 CPU cores is 1.38x faster channels_last, while a tf_efficientnetv2_s step on an H100 was 0.81x as fast
    (`code/bench.py`'s channels_last_speedup, docs/performance.md), hence the choice.
    """
    if memory_format == "channels_last":
        model.to(memory_format=torch.channels_last)
    if compile_model:
        logger.info("compile=true: compiling backbone and head (the first steps are slow)")
        model.compile_core()
    return model
