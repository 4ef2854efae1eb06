"""Mixing 2 to 3 clips of the batch into one, with the union of their labels (SED)."""

from __future__ import annotations

import torch

from birdsed.augment.base import BatchAugment, RandomStreams, audible_power, replace, to_device

MIX_LEVELS = ("equal", "raw")
# With levels="equal", each added clip lands within this many dB of the item's audible level (uniform).
LEVEL_SPREAD_DB = 6.0
# Below this audible power a clip is silent in the band: it is added as it is (nothing to scale).
SILENT_POWER = 1e-12


class Mix(BatchAugment):
    """Add 1 to `max_clips - 1` other clips of the batch to each chosen item.

    The mixture hears every bird of its clips, so its target is their elementwise maximum (the union,
    keeping each label's strongest value). With `levels="raw"` (the default, `mix_levels`) clips are summed
    at their own levels (the pipeline's gain runs before, so relative levels vary). Recorded levels of real
    recordings differ a lot (real_birds: 37 % of crop pairs by more than 10 dB, 11 % by more than 20 dB), so
    the quieter clip can be inaudible while its label is in the union; `levels="equal"` first scales each
    added clip to the item's audible level (`audible_power`), then by a random factor within
    +-`LEVEL_SPREAD_DB` (docs/recipe.md). The mixture's sample weight is the smallest of its clips':
    a union of labels is only as trustworthy as its least trustworthy clip, and a crop that failed to
    read (weight 0, silent, yet labelled) must not hand its label to a mixture.

    This module alone also takes and returns the sample weights: `(x, y, weight) -> (x, y, weight)`.
    """

    def __init__(self, p: float, max_clips: int, random: RandomStreams, levels: str = "raw") -> None:
        super().__init__(p, random)
        if max_clips < 2:
            raise ValueError(f"max_clips must be at least 2, got {max_clips}")
        if levels not in MIX_LEVELS:
            raise ValueError(f"unknown mix levels '{levels}'; choose one of {', '.join(MIX_LEVELS)}")
        self.max_clips = max_clips
        self.levels = levels

    def forward(
        self, waveform: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        size = len(waveform)
        chosen = self.random.chosen(size, self.p)
        slots = min(self.max_clips - 1, size - 1)
        if not len(chosen) or slots < 1:
            return waveform, target, weight
        partners, active = self._partners(chosen, size, slots)
        index, partners, active = (to_device(values, waveform) for values in (chosen, partners, active))
        scale = active if self.levels == "raw" else active * self._equal_levels(waveform, index, partners)
        mixed = waveform[index] + (waveform[partners] * scale[..., None]).sum(dim=1)  # [N, slots, T] -> [N, T]
        union = torch.maximum(target[index], (target[partners] * active[..., None]).amax(dim=1))
        waveform, target = replace(waveform, index, mixed), replace(target, index, union)
        if weight is not None:
            partner_weights = torch.where(active > 0, weight[partners], torch.full_like(weight[partners], torch.inf))
            weight = replace(weight, index, torch.minimum(weight[index], partner_weights.amin(dim=1)))
        return waveform, target, weight

    def _equal_levels(self, waveform: torch.Tensor, index: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
        """`[N, slots]` factors that bring each partner to its item's audible level, +- the spread."""
        power = audible_power(waveform)
        item, partner = power[index][:, None], power[partners]
        spread = to_device(self.random.uniform(partners.numel(), -LEVEL_SPREAD_DB, LEVEL_SPREAD_DB), waveform)
        factor = torch.sqrt(item / partner.clamp_min(SILENT_POWER)) * 10.0 ** (spread.view(partners.shape) / 20.0)
        audible = (item > SILENT_POWER) & (partner > SILENT_POWER)
        return torch.where(audible, factor, torch.ones_like(factor))

    def _partners(self, chosen: torch.Tensor, size: int, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For each chosen item, `slots` distinct other items, and which of them are mixed in (1.0)."""
        offsets = torch.rand(len(chosen), size - 1, generator=self.random.host).argsort(dim=1)[:, :slots] + 1
        partners = (chosen[:, None] + offsets) % size  # never the item itself
        extra = self.random.integers(1, slots, (len(chosen),))  # how many clips join: 1 .. slots
        active = (torch.arange(slots)[None, :] < extra[:, None]).float()
        return partners, active

    def extra_repr(self) -> str:
        return f"p={self.p}, max_clips={self.max_clips}, levels={self.levels}"
