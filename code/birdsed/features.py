"""Waveform batch -> 3-channel log-mel image (mel dB, delta, delta-delta), on the training device."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from birdsed.config import FeatureConfig

NORMALISE_EPS = 1e-5
# `spec_norm=fixed`: one affine map for every crop, near the level of real recordings (5 s xeno-canto crops at the
# default features: mean -30 dB, 10 dB within a crop and 10 dB between crops), so values stay of order 1.
FIXED_DB_MEAN, FIXED_DB_STD = -30.0, 14.0


def mel_spectrogram(
    sample_rate: int, features: FeatureConfig, hop_length: int | None = None
) -> torchaudio.transforms.MelSpectrogram:
    """The power mel spectrogram of the feature settings (Slaney scale and norm); `hop_length` overrides theirs."""
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate,
        n_fft=features.n_fft,
        hop_length=hop_length or features.hop_length,
        f_min=features.fmin,
        f_max=features.fmax,
        n_mels=features.n_mels,
        power=2.0,
        norm="slaney",
        mel_scale="slaney",
    )


class LogMelDeltas(nn.Module):
    """`[B, T]` waveforms -> `[B, 3, n_mels, frames]`: log-mel (`spec_norm`: standardised per crop by default), its
    delta and delta-delta.

    Runs in float32 even under autocast: dB of a power spectrogram overflows fp16 and bf16 loses
    the small differences the deltas are made of.
    """

    def __init__(self, sample_rate: int, features: FeatureConfig) -> None:
        super().__init__()
        self.mel = mel_spectrogram(sample_rate, features)
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=features.top_db)
        self.deltas = torchaudio.transforms.ComputeDeltas(win_length=5)
        self.per_item = features.spec_norm == "item"

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            power = self.mel(waveform.float()).unsqueeze(1)  # [B, 1, mels, frames]
            # top_db clamps per item only when each item is its own "channel" group.
            decibels = self.to_db(power).squeeze(1)  # [B, mels, frames]
            normalised = self.normalise(decibels)
            delta = self.deltas(normalised)
            delta2 = self.deltas(delta)
            return torch.stack([normalised, delta, delta2], dim=1)  # [B, 3, mels, frames]

    def normalise(self, decibels: torch.Tensor) -> torch.Tensor:
        if not self.per_item:
            return (decibels - FIXED_DB_MEAN) / FIXED_DB_STD
        mean = decibels.mean(dim=(1, 2), keepdim=True)
        std = decibels.std(dim=(1, 2), keepdim=True)
        return (decibels - mean) / (std + NORMALISE_EPS)
