"""The augmentation set of a training job, built from `AugmentConfig` in one place.

Two stages, called explicitly by the train step (the model's `forward` stays free of augmentation):

    waveform, target, weight = augment.waveform(waveform, target, weight)   # [B, T], [B, K], [B]
    spectrogram = augment.spectrogram(model.frontend(waveform))             # [B, 3, mels, frames]
    outputs = model(spectrogram=spectrogram)                                # through a DDP wrapper, if any

Waveform order: gain, mix, time stretch, pitch shift, background noise, Gaussian noise, pink noise,
wave mask (gain first so that mixed clips differ in level; noise after mixing so the SNR is the
mixture's). Spectrogram: time mask, then frequency mask. Validation calls the model's plain
`forward` and never sees any of this.

Determinism and resume: all random numbers come from `augment.random` (`RandomStreams`). Call
`augment.set_epoch(epoch)` at the start of every epoch (it reseeds from (seed, epoch, rank)); for an
exact mid-epoch resume save `augment.state_dict()` with the checkpoint and, after `set_epoch(epoch)`,
`augment.load_state_dict(saved)`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from birdsed.augment.base import RandomStreams
from birdsed.augment.level import Gain
from birdsed.augment.masks import FreqMask, TimeMask, WaveMask
from birdsed.augment.mix import Mix
from birdsed.augment.noise import BackgroundNoise, GaussianNoise, PinkNoise
from birdsed.augment.speed import PitchShift, TimeStretch
from birdsed.config import AugmentConfig

logger = logging.getLogger(__name__)


class WaveformAugmentations(nn.Module):
    """`(waveform [B, T], target [B, K], weight [B]) -> (waveform, target, weight)`: the waveform stage."""

    def __init__(self, before_mix: list[nn.Module], mix: Mix | None, after_mix: list[nn.Module]) -> None:
        super().__init__()
        self.before_mix = nn.ModuleList(before_mix)
        self.mix = mix
        self.after_mix = nn.ModuleList(after_mix)

    def forward(
        self, waveform: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for augment in self.before_mix:
            waveform, target = augment(waveform, target)
        if self.mix is not None:
            waveform, target, weight = self.mix(waveform, target, weight)
        for augment in self.after_mix:
            waveform, target = augment(waveform, target)
        return waveform, target, weight


class SpectrogramAugmentations(nn.Module):
    """`[B, 3, mels, frames] -> [B, 3, mels, frames]`: the masks on the front end's output."""

    def __init__(self, masks: list[nn.Module]) -> None:
        super().__init__()
        self.masks = nn.ModuleList(masks)

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        for mask in self.masks:
            spectrogram = mask(spectrogram)
        return spectrogram


@dataclass
class Augmentations:
    """Both stages and the random streams they share; `seed` with `set_epoch` makes runs repeatable."""

    waveform: WaveformAugmentations = field(default_factory=lambda: WaveformAugmentations([], None, []))
    spectrogram: SpectrogramAugmentations = field(default_factory=lambda: SpectrogramAugmentations([]))
    random: RandomStreams = field(default_factory=RandomStreams)
    seed: int = 0
    rank: int = 0  # the process's rank in a multi-GPU job
    ramp_steps: int = 0  # `augment_ramp_steps`: probabilities rise linearly to their values over these steps

    def set_step(self, step: int) -> None:
        """Scale every probability for optimizer step `step` (0-based): (step + 1) / ramp_steps, at most 1.

        A function of the step alone, so a resumed or multi-process run augments alike."""
        self.random.strength = min(1.0, (step + 1) / self.ramp_steps) if self.ramp_steps else 1.0

    def set_epoch(self, epoch: int) -> None:
        """Reseed from (seed, epoch, rank): epoch e augments alike in every run, resumed or not."""
        self.random.seed(self.seed, epoch, self.rank)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.random.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.random.load_state_dict(state)


def create_augmentations(
    cfg: AugmentConfig,
    seed: int,
    device: torch.device | str = "cpu",
    noise_bank: torch.Tensor | None = None,
    rank: int = 0,
) -> Augmentations:
    """The configured augmentations on `device`; those with p=0 (or all, with augment=off) are left out.

    `noise_bank` (int16 samples of the `noise` channel, see `birdsed.data.noise`) enables background noise.
    """
    random = RandomStreams(device)
    if cfg.augment == "off":
        logger.info("augment=off: training without augmentation")
        return Augmentations(random=random, seed=seed, rank=rank)
    if cfg.augment_ramp_steps:
        logger.info(
            "augment_ramp_steps=%d: augmentation probabilities rise from 0 to their values over the first %d "
            "optimizer steps (a network from scratch learns slowly under full augmentation)",
            cfg.augment_ramp_steps,
            cfg.augment_ramp_steps,
        )
    before = [Gain(cfg.gain_p, cfg.gain_db_min, cfg.gain_db_max, random)] if cfg.gain_p else []
    mix = Mix(cfg.mix_p, cfg.mix_max_clips, random, cfg.mix_levels) if cfg.mix_p else None
    after = _after_mix(cfg, random, noise_bank.to(device) if noise_bank is not None else None)
    masks = [
        TimeMask(cfg.time_mask_p, cfg.time_mask_max_fraction, random),
        FreqMask(cfg.freq_mask_p, cfg.freq_mask_max_bins, random),
    ]
    augmentations = Augmentations(
        WaveformAugmentations(before, mix, after),
        SpectrogramAugmentations([mask for mask in masks if mask.p]),
        random,
        seed,
        rank,
        cfg.augment_ramp_steps,
    )
    logger.info("augmentations: %s", describe(augmentations))
    return augmentations


def _after_mix(cfg: AugmentConfig, random: RandomStreams, bank: torch.Tensor | None) -> list[nn.Module]:
    if cfg.background_p and bank is None:
        logger.info("Background noise augmentation is off: the job has no 'noise' channel.")
    candidates = [
        TimeStretch(cfg.stretch_p, cfg.stretch_min, cfg.stretch_max, random),
        PitchShift(cfg.pitch_p, cfg.pitch_semitones_min, cfg.pitch_semitones_max, random),
        BackgroundNoise(
            cfg.background_p, cfg.background_snr_min, cfg.background_snr_max, bank, random, cfg.noise_snr_reference
        )
        if bank is not None
        else None,
        GaussianNoise(cfg.noise_p, cfg.noise_snr_min, cfg.noise_snr_max, random, cfg.noise_snr_reference),
        PinkNoise(cfg.pink_noise_p, cfg.pink_noise_snr_min, cfg.pink_noise_snr_max, random, cfg.noise_snr_reference),
        WaveMask(cfg.wave_mask_p, cfg.wave_mask_max_fraction, random),
    ]
    return [augment for augment in candidates if augment is not None and augment.p]


def describe(augmentations: Augmentations) -> str:
    """One line naming the active augmentations and their settings, for the job log."""
    stage = augmentations.waveform
    modules = [*stage.before_mix, *([stage.mix] if stage.mix is not None else []), *stage.after_mix]
    modules += list(augmentations.spectrogram.masks)
    return ", ".join(f"{type(module).__name__}({module.extra_repr()})" for module in modules) or "none"
