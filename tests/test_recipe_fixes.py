"""The causes issue 18 found, each pinned: the classifier starts at the class prior, noise SNRs are measured in
the band the model hears, and (an option) mixed clips meet at equal audible levels (docs/recipe.md)."""

import math

import numpy as np
import pytest
import torch

from birdsed.augment.base import RandomStreams, audible_power
from birdsed.augment.mix import LEVEL_SPREAD_DB, Mix
from birdsed.augment.noise import GaussianNoise, add_at_snr
from birdsed.config import from_hyperparameters
from birdsed.data.loaders import TrainingData, class_prior
from birdsed.models import create_model
from conftest import FAST_HYPERPARAMETERS

RATE = 16000


def streams(seed=0):
    random = RandomStreams("cpu")
    random.seed(seed, epoch=0)
    return random


def tone(frequency, amplitude, seconds=1.0):
    t = torch.arange(int(RATE * seconds)) / RATE
    return amplitude * torch.sin(2 * math.pi * frequency * t)


def db(ratio):
    return 10 * torch.log10(ratio)


@pytest.mark.parametrize("head", ["attention", "chrononet"])
def test_a_fresh_model_starts_at_the_class_prior(head):
    cfg = from_hyperparameters({**FAST_HYPERPARAMETERS, "head": head, "head_bias": "prior"})
    prior = np.array([0.5, 0.25, 0.2, 0.05])
    model = create_model(cfg, 4, class_prior=prior).eval()
    bias = model.head.sed.classifier.bias if head == "chrononet" else model.head.classifier.bias
    torch.testing.assert_close(torch.sigmoid(bias), torch.tensor(prior, dtype=torch.float32))
    with torch.no_grad():
        clip = torch.sigmoid(model(torch.randn(8, int(cfg.data.duration * cfg.data.sample_rate)))["clipwise_logits"])
    # Attention weights sum to 1, so the bias passes straight into the clip output: near the prior, not 0.5.
    assert np.abs(clip.mean(0).numpy() - prior).max() < 0.1


def test_head_bias_zero_keeps_the_default_initialisation():
    cfg = from_hyperparameters({**FAST_HYPERPARAMETERS, "head_bias": "zero"})
    torch.manual_seed(0)
    model = create_model(cfg, 3, class_prior=np.array([0.1, 0.1, 0.1]))
    assert model.head.classifier.bias.abs().max() < 1.0  # PyTorch's uniform init, not logit(0.1) = -2.2


def test_class_prior_is_the_sampler_weighted_share_of_positive_targets():
    class Recordings:
        targets = np.array([[1, 0], [1, 0.5], [0, 1]], dtype=np.float32)

    class Train:
        recordings = Recordings()

    data = TrainingData(["a", "b"], Train(), None, "cache", np.array([1.0, 1.0, 2.0]), np.ones(2))
    np.testing.assert_allclose(class_prior(data), [0.5, 0.625])


def test_equal_levels_bring_a_quiet_clip_to_the_item_level():
    loud, quiet = tone(3000, 0.5), tone(3000, 0.5 * 10 ** (-40 / 20))  # 40 dB apart, as recordings can be
    waves, labels = torch.stack([loud, quiet]), torch.eye(2)
    for levels, low, high in [("equal", -LEVEL_SPREAD_DB - 0.1, LEVEL_SPREAD_DB + 0.1), ("raw", -40.5, -39.5)]:
        mixed, union, _ = Mix(1.0, 2, streams(), levels)(waves, labels)
        added = mixed[0] - loud  # item 0's partner is item 1, the only other clip
        ratio = db(audible_power(added[None]) / audible_power(loud[None]))
        assert low < float(ratio) < high, (levels, ratio)
        assert torch.equal(union, torch.ones(2, 2))


def test_equal_levels_leave_silent_clips_as_they_are():
    waves = torch.stack([tone(1000, 0.3), torch.zeros(RATE)])
    mixed, _, _ = Mix(1.0, 2, streams(), "equal")(waves, torch.eye(2))
    assert torch.isfinite(mixed).all() and torch.equal(mixed[0], waves[0])


def test_band_snr_ignores_low_frequency_rumble():
    """A quiet 4 kHz call under loud 60 Hz rumble: measured over the whole crop, 10 dB SNR white noise drowns the
    call; measured in the band, the noise sits 10 dB under what the model hears."""
    call, rumble = tone(4000, 0.02), tone(60, 0.5)
    crop = (call + rumble)[None]
    noise = torch.randn(1, RATE, generator=torch.Generator().manual_seed(0))
    for reference in ("crop", "band"):
        added = add_at_snr(crop, noise, torch.tensor([10.0]), reference) - crop
        call_to_noise = db(audible_power(call[None]) / audible_power(added))
        if reference == "band":
            assert float(db(audible_power(crop) / audible_power(added))) == pytest.approx(10.0, abs=1e-3)
            assert float(call_to_noise) > 8.0
        else:
            assert float(call_to_noise) < -10.0


def test_the_jobs_defaults_band_snr_raw_mix_zero_bias():
    from birdsed.augment import create_augmentations

    cfg = from_hyperparameters({})
    assert (cfg.augment.noise_snr_reference, cfg.augment.mix_levels, cfg.model.head_bias) == ("band", "raw", "zero")
    augment = create_augmentations(cfg.augment, 0)
    noises = [m for m in augment.waveform.after_mix if isinstance(m, GaussianNoise)]
    assert noises and noises[0].reference == "band" and augment.waveform.mix.levels == "raw"
    equal = create_augmentations(from_hyperparameters({"mix_levels": "equal"}).augment, 0)
    assert equal.waveform.mix.levels == "equal"
