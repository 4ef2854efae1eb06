"""Additive noise at a random signal-to-noise ratio: white (Gaussian), pink (1/f), and recorded background.

The noise is scaled per item so that `10 * log10(P_signal / P_noise)` equals the drawn SNR in dB, with
powers taken as the mean square over the whole crop. A silent item stays silent (its noise gets zero
power), so nothing divides by zero.
"""

from __future__ import annotations

import torch

from birdsed.augment.base import BatchAugment, RandomStreams, replace, to_device
from birdsed.data.audio import pcm16_to_float

# Below this mean square a noise crop counts as silent (int16 quantisation noise is ~1e-10).
SILENT_POWER = 1e-12


def add_at_snr(signal: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """`signal + scaled noise`, per row of `[N, T]`, at `snr_db` `[N]` (on the signal's device)."""
    signal_power = signal.pow(2).mean(dim=-1)
    noise_power = noise.pow(2).mean(dim=-1).clamp_min(SILENT_POWER)
    scale = torch.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return signal + noise * scale[:, None]


def pink_noise(white: torch.Tensor) -> torch.Tensor:
    """Shape white noise `[N, T]` to power falling as 1/f (amplitude as 1/sqrt(f)); no DC."""
    spectrum = torch.fft.rfft(white)
    bins = torch.arange(spectrum.shape[-1], device=white.device, dtype=white.dtype).clamp_min(1.0)
    spectrum = spectrum / bins.sqrt()
    spectrum[..., 0] = 0
    return torch.fft.irfft(spectrum, n=white.shape[-1])


class _NoiseAtSNR(BatchAugment):
    """Shared by the noise kinds: choose items, draw an SNR each, add `make_noise(count, length)`."""

    def __init__(self, p: float, snr_min: float, snr_max: float, random: RandomStreams) -> None:
        super().__init__(p, random)
        self.snr_min, self.snr_max = snr_min, snr_max

    def make_noise(self, count: int, length: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, waveform: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.random.chosen(len(waveform), self.p)
        if not len(chosen):
            return waveform, target
        snr = to_device(self.random.uniform(len(chosen), self.snr_min, self.snr_max), waveform)
        index = to_device(chosen, waveform)
        noisy = add_at_snr(waveform[index], self.make_noise(len(chosen), waveform.shape[-1]), snr)
        return replace(waveform, index, noisy), target

    def extra_repr(self) -> str:
        return f"p={self.p}, snr_db=[{self.snr_min}, {self.snr_max}]"


class GaussianNoise(_NoiseAtSNR):
    """White Gaussian noise at an SNR uniform in [snr_min, snr_max] dB."""

    def make_noise(self, count: int, length: int) -> torch.Tensor:
        return self.random.normal((count, length))


class PinkNoise(_NoiseAtSNR):
    """Pink (1/f) noise, as wind and distant surf sound, at an SNR uniform in [snr_min, snr_max] dB."""

    def make_noise(self, count: int, length: int) -> torch.Tensor:
        return pink_noise(self.random.normal((count, length)))


class BackgroundNoise(_NoiseAtSNR):
    """Random crops of recorded background noise (the `noise` channel) at a random SNR.

    `bank` is every noise recording concatenated into one int16 tensor, kept on the training device:
    a crop is one gather, with no reading or decoding during training. A crop may straddle two
    recordings, which sounds like a cut in the background and does no harm.
    """

    def __init__(self, p: float, snr_min: float, snr_max: float, bank: torch.Tensor, random: RandomStreams) -> None:
        super().__init__(p, snr_min, snr_max, random)
        if bank.ndim != 1 or len(bank) == 0:
            raise ValueError("the noise bank must be a non-empty 1-D tensor")
        self.register_buffer("bank", bank, persistent=False)

    def make_noise(self, count: int, length: int) -> torch.Tensor:
        bank = self.bank
        if len(bank) < length:
            bank = bank.repeat(-(-length // len(bank)))
        starts = self.random.integers(0, len(bank) - length, (count,))
        positions = to_device(starts, bank)[:, None] + torch.arange(length, device=bank.device)
        return pcm16_to_float(bank[positions])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bank_samples={len(self.bank)}"
