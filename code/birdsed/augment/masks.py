"""Masking: a random span of the waveform, or of the spectrogram's frames or mel bins, set to zero.

On the spectrogram (standardised log-mel and its deltas, `[B, 3, mels, frames]`) zero is each item's
mean level, so a masked span reads as "nothing to see" rather than as a loud or silent patch; all three
channels are masked alike. One span per chosen item, its length uniform in [1, max_length].
"""

from __future__ import annotations

import torch

from birdsed.augment.base import BatchAugment, RandomStreams, replace, to_device


def zero_spans(items: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero `[start, start + length)` along `dim` of each item (`starts`, `lengths`: `[N]`, same device)."""
    size = items.shape[dim]
    positions = torch.arange(size, device=items.device)
    inside = (positions >= starts[:, None]) & (positions < (starts + lengths)[:, None])  # [N, size]
    shape = [len(items)] + [1] * (items.ndim - 1)
    shape[dim] = size
    return items.masked_fill(inside.view(shape), 0.0)


class _SpanMask(BatchAugment):
    """Zero one random span along `dim` of each chosen item; subclasses say how long it may be."""

    dim = -1

    def max_length(self, size: int) -> int:
        raise NotImplementedError

    def mask(self, batch: torch.Tensor) -> torch.Tensor:
        size = batch.shape[self.dim]
        longest = min(self.max_length(size), size)
        chosen = self.random.chosen(len(batch), self.p)
        if not len(chosen) or longest < 1:
            return batch
        lengths = self.random.integers(1, longest, (len(chosen),))
        starts = (torch.rand(len(chosen), generator=self.random.host) * (size - lengths + 1)).long()
        index = to_device(chosen, batch)
        masked = zero_spans(batch[index], to_device(starts, batch), to_device(lengths, batch), self.dim)
        return replace(batch, index, masked)


class WaveMask(_SpanMask):
    """Silence a span of up to `max_fraction` of each chosen waveform (a dropout of the recording)."""

    def __init__(self, p: float, max_fraction: float, random: RandomStreams) -> None:
        super().__init__(p, random)
        self.max_fraction = max_fraction

    def max_length(self, size: int) -> int:
        return int(self.max_fraction * size)

    def forward(self, waveform: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mask(waveform), target


class TimeMask(_SpanMask):
    """SpecAugment time masking: up to `max_fraction` of the frames of `[B, C, mels, frames]`."""

    def __init__(self, p: float, max_fraction: float, random: RandomStreams) -> None:
        super().__init__(p, random)
        self.max_fraction = max_fraction

    def max_length(self, size: int) -> int:
        return int(self.max_fraction * size)

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return self.mask(spectrogram)


class FreqMask(_SpanMask):
    """SpecAugment frequency masking: up to `max_bins` mel bins of `[B, C, mels, frames]`."""

    dim = -2

    def __init__(self, p: float, max_bins: int, random: RandomStreams) -> None:
        super().__init__(p, random)
        self.max_bins = max_bins

    def max_length(self, size: int) -> int:
        return self.max_bins

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return self.mask(spectrogram)
