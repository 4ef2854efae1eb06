"""Mixed precision policy: fp16 + GradScaler on CUDA, bf16 autocast on CPUs with bf16 instructions, or off."""

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


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix instructions. Without them oneDNN emulates bf16, and autocast is
    slower than float32 (measured on an AVX512 Xeon without BF16: an efficientnet_b0 step took 1.8x the
    CPU time of float32, see docs/recipe.md)."""
    cpu = getattr(torch._C, "_cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def mixed_precision(mode: str, device: torch.device) -> MixedPrecision:
    """`auto`: fp16 on CUDA, bf16 on a CPU with bf16 instructions, else float32; `off`: float32 everywhere."""
    if mode == "off":
        return MixedPrecision(device.type, None)
    if device.type == "cuda":
        return MixedPrecision(device.type, torch.float16)
    return MixedPrecision(device.type, torch.bfloat16 if cpu_has_native_bf16() else None)
