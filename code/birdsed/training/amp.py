"""Mixed precision policy: fp16 + GradScaler on CUDA, bf16 autocast on CPU, or off."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MixedPrecision:
    device_type: str
    dtype: torch.dtype | None  # None: full float32

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # Only fp16 needs loss scaling; bf16 has float32's exponent range.
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype is torch.float16)


def mixed_precision(mode: str, device: torch.device) -> MixedPrecision:
    """`auto`: fp16 on CUDA, bf16 on CPU; `off`: float32 everywhere."""
    if mode == "off":
        return MixedPrecision(device.type, None)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return MixedPrecision(device.type, dtype)
