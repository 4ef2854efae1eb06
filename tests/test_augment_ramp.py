"""augment_ramp_steps: every augmentation's probability rises linearly from 0 to its value over the first
optimizer steps (issue 18: from scratch, full augmentation from the first step left efficientnet_b0 under-fitted)."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from birdsed.augment import create_augmentations
from birdsed.augment.base import RandomStreams
from birdsed.config import AugmentConfig, from_hyperparameters
from birdsed.data.sampler import ShardSampler
from birdsed.models import create_model
from birdsed.training.loop import Progress, train_one_epoch
from birdsed.training.signals import NeverStop
from cpu_trainer import cpu_trainer


def test_the_strength_rises_linearly_with_the_step_and_stays_at_one():
    augment = create_augmentations(AugmentConfig(augment_ramp_steps=4), seed=0)
    strengths = []
    for step in range(6):
        augment.set_step(step)
        strengths.append(augment.random.strength)
    assert strengths == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    unramped = create_augmentations(AugmentConfig(augment_ramp_steps=0), seed=0)
    unramped.set_step(0)
    assert unramped.random.strength == 1.0


@pytest.mark.parametrize(("strength", "expected"), [(1.0, 0.5), (0.5, 0.25), (0.0, 0.0)])
def test_the_strength_scales_the_share_of_chosen_items(strength, expected):
    random = RandomStreams()
    random.host.manual_seed(0)
    random.strength = strength
    share = len(random.chosen(20000, 0.5)) / 20000
    assert share == pytest.approx(expected, abs=0.01)


def test_the_default_ramps_over_200_steps_and_the_tests_tiny_jobs_do_not():
    from birdsed.config import TINY_HYPERPARAMETERS

    assert from_hyperparameters({}).augment.augment_ramp_steps == 200
    assert from_hyperparameters(TINY_HYPERPARAMETERS).augment.augment_ramp_steps == 0


class StrengthRecorder(nn.Module):
    """Stands in for the waveform stage and records the strength each micro-batch is augmented at."""

    def __init__(self, random: RandomStreams) -> None:
        super().__init__()
        self.random, self.seen = random, []

    def forward(self, waveform, target, weight):
        self.seen.append(self.random.strength)
        return waveform, target, weight


def test_the_train_loop_sets_each_batch_to_its_optimizer_steps_strength_also_after_a_resume():
    cfg = from_hyperparameters(
        {"backbone": "test_efficientnet", "sample_rate": 16000, "fmax": 8000, "n_mels": 32, "n_fft": 512}
    )
    items = [
        {"waveform": torch.randn(16000), "target": torch.eye(2)[i % 2], "weight": torch.tensor(1.0)} for i in range(10)
    ]
    loader = DataLoader(items, batch_size=2, sampler=ShardSampler(len(items)))  # BatchNorm wants 2
    trainer = cpu_trainer(create_model(cfg, 2), cfg, classes=2, batches_per_epoch=5)
    trainer.augment = create_augmentations(AugmentConfig(augment_ramp_steps=4), seed=0)
    recorder = StrengthRecorder(trainer.augment.random)
    trainer.augment.waveform = recorder
    train_one_epoch(trainer, loader, Progress(), NeverStop())
    assert recorder.seen == [0.25, 0.5, 0.75, 1.0, 1.0]
    # A job resumed at its second optimizer step continues the ramp where it was.
    recorder.seen.clear()
    train_one_epoch(trainer, DataLoader(items[:4], batch_size=2), Progress(step=1), NeverStop())
    assert recorder.seen == [0.5, 0.75]
