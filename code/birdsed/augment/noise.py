"""Additive noise at a random signal-to-noise ratio: white (Gaussian), pink (1/f), and recorded background.

The noise is scaled per item so that `10 * log10(P_signal / P_noise)` equals the drawn SNR in dB. With
`reference="band"` (the jobs' default, `noise_snr_reference`) powers are taken after a first-difference
high-pass (`audible_power`); with `"crop"` as the plain mean square over the crop. Real recordings often
hold most of their power below 1 kHz (wind, handling, traffic: a quarter of real_birds' crops have more
than half their power there), and measured over the whole crop such a crop got white noise louder than
its bird: 10 % of them ended below -2.5 dB SNR within 1-10 kHz at the nominal 5 dB (docs/recipe.md).
A silent item stays silent (its noise gets zero power), so nothing divides by zero.
"""

from __future__ import annotations

import torch

from birdsed.augment.base import BatchAugment, RandomStreams, audible_power, replace, to_device
from birdsed.data.audio import pcm16_to_float

# Below this mean square a noise crop counts as silent (int16 quantisation noise is ~1e-10).
SILENT_POWER = 1e-12
SNR_REFERENCES = ("band", "crop")


def add_at_snr(
    signal: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor, reference: str = "crop"
) -> torch.Tensor:
    """`signal + scaled noise`, per row of `[N, T]`, at `snr_db` `[N]` (on the signal's device); powers per
    `reference`: "crop" (mean square) or "band" (mean square after a first-difference high-pass)."""
    power = audible_power if reference == "band" else (lambda rows: rows.pow(2).mean(dim=-1))
    signal_power = power(signal)
    noise_power = power(noise).clamp_min(SILENT_POWER)
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

    def __init__(
        self, p: float, snr_min: float, snr_max: float, random: RandomStreams, reference: str = "crop"
    ) -> None:
        super().__init__(p, random)
        if reference not in SNR_REFERENCES:
            raise ValueError(f"unknown SNR reference '{reference}'; choose one of {', '.join(SNR_REFERENCES)}")
        self.snr_min, self.snr_max, self.reference = snr_min, snr_max, reference

    def make_noise(self, count: int, length: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, waveform: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.random.chosen(len(waveform), self.p)
        if not len(chosen):
            return waveform, target
        snr = to_device(self.random.uniform(len(chosen), self.snr_min, self.snr_max), waveform)
        index = to_device(chosen, waveform)
        noisy = add_at_snr(waveform[index], self.make_noise(len(chosen), waveform.shape[-1]), snr, self.reference)
        return replace(waveform, index, noisy), target

    def extra_repr(self) -> str:
        return f"p={self.p}, snr_db=[{self.snr_min}, {self.snr_max}], reference={self.reference}"


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

    def __init__(
        self,
        p: float,
        snr_min: float,
        snr_max: float,
        bank: torch.Tensor,
        random: RandomStreams,
        reference: str = "crop",
    ) -> None:
        super().__init__(p, snr_min, snr_max, random, reference)
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
