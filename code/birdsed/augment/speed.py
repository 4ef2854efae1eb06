"""Time stretch and pitch shift, batched with a different factor per item, in the STFT domain.

Both rest on one phase vocoder that reads the input's STFT frames at a per-item rate (`steps = j * rate`),
interpolating magnitudes and accumulating phase so that each bin keeps its frequency. Every item of a
batch is processed by the same few tensor ops, whatever its factor: no per-item loop, no buckets.

- Time stretch by `rate` (> 1 faster and shorter, < 1 slower and longer), pitch unchanged: the output
  keeps the input's frame count, so the stretched sound is cut (slower) or followed by zeros (faster)
  to the crop's length.
- Pitch shift by `s` semitones (`f = 2 ** (s / 12)`), length and timing unchanged: stretch to `f` times
  the duration, zero the bins that would land above Nyquist, then read the result `f` times faster
  (bicubic interpolation, `grid_sample`): every frequency is multiplied by `f`. This is torchaudio's
  `pitch_shift` method, with the resampling done per item by interpolation; torchaudio's sinc resampler
  needs one kernel per ratio (slow for irrational ratios such as 2 ** (1/12)) and one ratio per call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from birdsed.augment.base import BatchAugment, RandomStreams, replace, to_device

# 75 % overlap, as torchaudio's pitch_shift; 16 ms windows at 32 kHz keep note onsets sharp.
N_FFT = 512
HOP = 128


def _stft(waveform: torch.Tensor) -> torch.Tensor:
    window = torch.hann_window(N_FFT, device=waveform.device)
    return torch.stft(waveform, N_FFT, HOP, window=window, return_complex=True)  # [N, bins, frames]


def _istft(spectrum: torch.Tensor, length: int) -> torch.Tensor:
    window = torch.hann_window(N_FFT, device=spectrum.device)
    return torch.istft(spectrum, N_FFT, HOP, window=window, length=length)


def phase_vocoder(spectrum: torch.Tensor, rates: torch.Tensor, frames: int) -> torch.Tensor:
    """`[N, bins, T]` complex STFT -> `[N, bins, frames]`, item i read at `rates[i]` input frames per output frame.

    Frames past the input's end are silent. Same maths as `torchaudio.functional.phase_vocoder`, whose
    rate is one number per call.
    """
    count, bins, length = spectrum.shape
    steps = torch.arange(frames, device=spectrum.device, dtype=torch.float32)[None, :] * rates[:, None]
    floor = steps.floor()
    alpha = (steps - floor)[:, None, :]  # [N, 1, frames]
    padded = F.pad(spectrum, (0, 2))  # two silent frames: reads past the end give zeros
    magnitudes, angles = padded.abs(), padded.angle()  # once per input frame, then gathered
    first = floor.long().clamp(max=length)[:, None, :].expand(count, bins, frames)
    advance = torch.linspace(0, math.pi * HOP, bins, device=spectrum.device)[:, None]  # expected per hop
    delta = angles.gather(-1, first + 1) - angles.gather(-1, first) - advance
    delta = delta - 2 * math.pi * torch.round(delta / (2 * math.pi))
    phase = torch.cat([angles[..., :1], (delta + advance)[..., :-1]], dim=-1).cumsum(dim=-1)
    magnitude = alpha * magnitudes.gather(-1, first + 1) + (1 - alpha) * magnitudes.gather(-1, first)
    return torch.polar(magnitude, phase)


def time_stretch(waveform: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """`[N, T]` -> `[N, T]`: item i played `rates[i]` times as fast, pitch kept, cut or zero-padded to T."""
    spectrum = _stft(waveform)
    stretched = phase_vocoder(spectrum, rates.to(spectrum.device), spectrum.shape[-1])
    return _istft(stretched, waveform.shape[-1])


def pitch_shift(waveform: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
    """`[N, T]` -> `[N, T]`: item i's frequencies times `2 ** (semitones[i] / 12)`, timing kept.

    `semitones` is a host tensor: the longest intermediate length is known without a device sync.
    """
    factors = 2.0 ** (semitones.float() / 12.0)
    largest = float(factors.max())
    spectrum = _stft(waveform)
    device_factors = to_device(factors, waveform)
    stretched = phase_vocoder(spectrum, 1.0 / device_factors, math.ceil(spectrum.shape[-1] * largest))
    # Reading f times faster moves bin k to k * f: drop what would fold back from above Nyquist.
    bins = torch.arange(stretched.shape[1], device=waveform.device)
    stretched = stretched * (bins[None, :] * device_factors[:, None] < stretched.shape[1]).unsqueeze(-1)
    length = waveform.shape[-1]
    slow = _istft(stretched, math.ceil(length * largest) + HOP)  # item i is f_i times as long as the input
    return _read_faster(slow, device_factors, length)


def _read_faster(waveform: torch.Tensor, factors: torch.Tensor, length: int) -> torch.Tensor:
    """`out[i, t] = waveform[i, t * factors[i]]` for t < length, bicubic between samples."""
    positions = torch.arange(length, device=waveform.device, dtype=torch.float32)[None, :] * factors[:, None]
    x = 2.0 * positions / (waveform.shape[-1] - 1) - 1.0  # grid_sample's [-1, 1] (align_corners=True)
    grid = torch.stack([x, torch.zeros_like(x)], dim=-1)[:, None]  # [N, 1, length, 2]
    image = waveform[:, None, None, :]  # [N, 1, 1, L]: a one-row image per item
    return F.grid_sample(image, grid, mode="bicubic", padding_mode="zeros", align_corners=True)[:, 0, 0]


class TimeStretch(BatchAugment):
    """Speed chosen items up or down by a rate drawn log-uniformly in [rate_min, rate_max], pitch kept."""

    def __init__(self, p: float, rate_min: float, rate_max: float, random: RandomStreams) -> None:
        super().__init__(p, random)
        self.rate_min, self.rate_max = rate_min, rate_max

    def forward(self, waveform: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.random.chosen(len(waveform), self.p)
        if not len(chosen):
            return waveform, target
        rates = self.random.log_uniform(len(chosen), self.rate_min, self.rate_max)
        index = to_device(chosen, waveform)
        return replace(waveform, index, time_stretch(waveform[index], to_device(rates, waveform))), target

    def extra_repr(self) -> str:
        return f"p={self.p}, rate=[{self.rate_min}, {self.rate_max}]"


class PitchShift(BatchAugment):
    """Shift chosen items by a number of semitones uniform in [semitones_min, semitones_max], timing kept."""

    def __init__(self, p: float, semitones_min: float, semitones_max: float, random: RandomStreams) -> None:
        super().__init__(p, random)
        self.semitones_min, self.semitones_max = semitones_min, semitones_max

    def forward(self, waveform: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.random.chosen(len(waveform), self.p)
        if not len(chosen):
            return waveform, target
        semitones = self.random.uniform(len(chosen), self.semitones_min, self.semitones_max)
        index = to_device(chosen, waveform)
        return replace(waveform, index, pitch_shift(waveform[index], semitones)), target

    def extra_repr(self) -> str:
        return f"p={self.p}, semitones=[{self.semitones_min}, {self.semitones_max}]"
