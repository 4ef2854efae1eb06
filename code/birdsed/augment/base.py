"""What every batch augmentation shares: explicit random streams and per-item selection.

An augmentation applies its effect to each item of a batch with probability `p`, with parameters
drawn per item. Only the chosen items are processed (`chosen` -> `index` -> compute -> `replace`), so
an expensive effect at p=0.2 costs a fifth of the batch. Random numbers never come from the global
RNG: they come from a `RandomStreams`, seeded by (seed, epoch), whose state can be saved and restored.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from birdsed.data.sampler import epoch_seed

# Streams of `epoch_seed`, plus the process's rank (the sampler uses stream 1): independent of the
# sampler's draws and of the other processes' augmentations.
HOST_STREAM = 1000
DEVICE_STREAM = 2000


class RandomStreams:
    """The augmentations' two generators.

    `host` (CPU) draws which items get an effect and their parameters: small vectors, and having them
    on the host means the train step never waits for the device to learn how many items to process or
    how long a stretched item is. `on_device` draws the noise signals where they are used (a CUDA
    generator on a GPU). Both are reseeded by `seed(seed, epoch, rank)`; `state_dict` captures both.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.host = torch.Generator()
        self.on_device = torch.Generator(device=self.device)
        # Scales every augmentation's probability: below 1 while `augment_ramp_steps` ramps augmentation in.
        self.strength = 1.0

    def seed(self, seed: int, epoch: int, rank: int = 0) -> None:
        """Seeds from (seed, epoch, rank): each process of a multi-GPU job augments its own share differently."""
        self.host.manual_seed(epoch_seed(seed, epoch, HOST_STREAM + rank))
        self.on_device.manual_seed(epoch_seed(seed, epoch, DEVICE_STREAM + rank))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Both generator states as CPU byte tensors (loadable with `torch.load(weights_only=True)`)."""
        return {"host": self.host.get_state(), "device": self.on_device.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.host.set_state(state["host"])
        self.on_device.set_state(state["device"])

    def chosen(self, batch_size: int, p: float) -> torch.Tensor:
        """Indices (host) of the items that get the effect: each with probability `p` x `strength`."""
        return torch.nonzero(torch.rand(batch_size, generator=self.host) < p * self.strength).squeeze(1)

    def uniform(self, count: int, low: float, high: float) -> torch.Tensor:
        """`count` host floats uniform in [low, high]."""
        return low + (high - low) * torch.rand(count, generator=self.host)

    def log_uniform(self, count: int, low: float, high: float) -> torch.Tensor:
        """Uniform in log space: a factor of 0.8 is as likely as 1.25."""
        return torch.exp(self.uniform(count, math.log(low), math.log(high)))

    def integers(self, low: int, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Host integers uniform in [low, high] (inclusive), as int64."""
        return torch.randint(low, high + 1, shape, generator=self.host)

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal noise on the device."""
        return torch.randn(shape, generator=self.on_device, device=self.device)


class BatchAugment(nn.Module):
    """Base of the augmentations: probability `p` per item, random numbers from `random`."""

    def __init__(self, p: float, random: RandomStreams) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p
        self.random = random

    def extra_repr(self) -> str:
        return f"p={self.p}"


def audible_power(waveform: torch.Tensor) -> torch.Tensor:
    """Mean square of the first difference of each row of `[N, T]`: a high-pass (gain 2 sin(pi f / rate)) that
    weighs a 4 kHz call about 30 dB above 100 Hz wind or handling noise of the same power, so the level of
    a crop is the level of what the model hears in it (birdsed.data.dataset uses the same measure)."""
    if waveform.shape[-1] < 2:
        return waveform.pow(2).mean(dim=-1)
    return torch.diff(waveform, dim=-1).pow(2).mean(dim=-1)


def to_device(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Host parameters to the batch's device without waiting for the device (no sync)."""
    return values.to(like.device, non_blocking=True)


def replace(batch: torch.Tensor, index: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """A copy of `batch` with the items at `index` (device) replaced; the input is left untouched."""
    return batch.index_copy(0, index, items.to(batch.dtype))
