"""Batch augmentations on the training device: each a small module with a probability `p` per item."""

from birdsed.augment.base import BatchAugment, RandomStreams
from birdsed.augment.level import Gain
from birdsed.augment.masks import FreqMask, TimeMask, WaveMask
from birdsed.augment.mix import Mix
from birdsed.augment.noise import BackgroundNoise, GaussianNoise, PinkNoise
from birdsed.augment.pipeline import (
    Augmentations,
    SpectrogramAugmentations,
    WaveformAugmentations,
    create_augmentations,
)
from birdsed.augment.speed import PitchShift, TimeStretch

__all__ = [
    "Augmentations",
    "BackgroundNoise",
    "BatchAugment",
    "FreqMask",
    "Gain",
    "GaussianNoise",
    "Mix",
    "PinkNoise",
    "PitchShift",
    "RandomStreams",
    "SpectrogramAugmentations",
    "TimeMask",
    "TimeStretch",
    "WaveMask",
    "WaveformAugmentations",
    "create_augmentations",
]
