"""Device settings that make the training step fast; each a no-op where it does not help (CPU)."""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def configure_backends(device: torch.device) -> None:
    """cuDNN benchmark mode: the crops have one fixed shape, so the autotuned kernels are reused."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def optimise_model(model: nn.Module, device: torch.device, compile_model: bool) -> nn.Module:
    """channels_last on CUDA (tensor-core convolutions want NHWC), optionally torch.compile.

    Only `forward_spectrogram` (backbone + head, where the time goes) is compiled, on the instance:
    the train step and `forward` both go through it, and `state_dict` keys stay unchanged, so
    checkpoints and the exported model load into an uncompiled model.
    """
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if compile_model:
        logger.info("compile=true: compiling backbone and head (the first steps are slow)")
        model.forward_spectrogram = torch.compile(model.forward_spectrogram)
    return model
