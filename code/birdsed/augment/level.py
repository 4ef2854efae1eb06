"""Gain: a random level change in dB."""

from __future__ import annotations

import torch

from birdsed.augment.base import BatchAugment, RandomStreams, replace, to_device


class Gain(BatchAugment):
    """Multiply chosen items by `10 ** (g / 20)`, `g` uniform in [db_min, db_max] dB.

    The front end standardises each item, so a gain alone changes little; it matters before mixing
    (the relative level of mixed clips) and it is applied first in the pipeline for that reason.
    """

    def __init__(self, p: float, db_min: float, db_max: float, random: RandomStreams) -> None:
        super().__init__(p, random)
        self.db_min, self.db_max = db_min, db_max

    def forward(self, waveform: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.random.chosen(len(waveform), self.p)
        if not len(chosen):
            return waveform, target
        factors = 10.0 ** (self.random.uniform(len(chosen), self.db_min, self.db_max) / 20.0)
        index = to_device(chosen, waveform)
        return replace(waveform, index, waveform[index] * to_device(factors, waveform)[:, None]), target
