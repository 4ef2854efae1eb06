"""Device settings that make the training step fast; each a no-op where it does not help."""

from __future__ import annotations

import logging

import torch

from birdsed.models import SEDModel

logger = logging.getLogger(__name__)

CHANNELS_LAST_DEVICES = ("cuda", "cpu")


def configure_backends(device: torch.device) -> None:
    """cuDNN benchmark mode: the crops have one fixed shape, so the autotuned kernels are reused."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def optimise_model(model: SEDModel, device: torch.device, compile_model: bool) -> SEDModel:
    """channels_last on CUDA and CPU, optionally torch.compile of backbone and head (`SEDModel.compile_core`).

    Tensor-core convolutions want NHWC, and so do oneDNN's CPU convolutions: an efficientnet_b0 step on 2 CPU
    cores is 1.38x faster channels_last (`code/bench.py`'s channels_last_speedup, docs/performance.md).
    """
    if device.type in CHANNELS_LAST_DEVICES:
        model.to(memory_format=torch.channels_last)
    if compile_model:
        logger.info("compile=true: compiling backbone and head (the first steps are slow)")
        model.compile_core()
    return model
