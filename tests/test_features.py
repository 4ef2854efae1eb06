import dataclasses

import torch

from birdsed.config import FeatureConfig
from birdsed.features import FIXED_DB_STD, LogMelDeltas

FEATURES = FeatureConfig(n_mels=32, n_fft=512, hop_length=128, fmin=50, fmax=8000)


def tone_batch(frequencies, rate=16000, seconds=1.0):
    t = torch.arange(int(rate * seconds)) / rate
    return torch.stack([0.3 * torch.sin(2 * torch.pi * f * t) + 0.01 * torch.randn_like(t) for f in frequencies])


def test_output_is_three_channels_of_mels_by_frames():
    frontend = LogMelDeltas(16000, FEATURES)
    out = frontend(tone_batch([500, 2000]))
    assert out.shape == (2, 3, 32, 16000 // 128 + 1)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_log_mel_channel_is_standardised_per_item():
    out = LogMelDeltas(16000, FEATURES)(tone_batch([500, 3000]) * torch.tensor([[1.0], [100.0]]))
    torch.testing.assert_close(out[:, 0].mean(dim=(1, 2)), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:, 0].std(dim=(1, 2)), torch.ones(2), atol=1e-3, rtol=0)


def test_fixed_scale_keeps_the_level_that_per_item_standardisation_removes():
    """`spec_norm=fixed`: 10x the amplitude is +20 dB, a shift of the log-mel by 20 / FIXED_DB_STD; same deltas."""
    waveform = tone_batch([1000])
    louder = torch.cat([waveform, 10.0 * waveform])
    fixed = LogMelDeltas(16000, dataclasses.replace(FEATURES, spec_norm="fixed"))(louder)
    torch.testing.assert_close(
        fixed[1, 0] - fixed[0, 0], torch.full_like(fixed[0, 0], 20.0 / FIXED_DB_STD), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(fixed[1, 1:], fixed[0, 1:], atol=1e-4, rtol=0)
    per_item = LogMelDeltas(16000, FEATURES)(louder)
    torch.testing.assert_close(per_item[1], per_item[0], atol=1e-3, rtol=0)


def test_items_do_not_influence_each_other_in_a_batch():
    """top_db clamping and normalisation must be per item, not per batch."""
    frontend = LogMelDeltas(16000, FEATURES)
    batch = tone_batch([500, 3000])
    batch[1] *= 1e-4  # a much quieter item beside a loud one
    together = frontend(batch)
    alone = frontend(batch[1:])
    torch.testing.assert_close(together[1:], alone, atol=1e-4, rtol=1e-4)


def test_a_tone_lights_the_right_mel_band_and_deltas_vanish_when_steady():
    frontend = LogMelDeltas(16000, FEATURES)
    low, high = frontend(tone_batch([400, 5000], seconds=2.0))
    assert low[0].mean(dim=1).argmax() < high[0].mean(dim=1).argmax()
    steady = low[1:, :, 20:-20]  # away from the edges the tone does not change
    assert steady.abs().mean() < 0.2 * low[0].abs().mean()


def test_features_stay_float32_under_autocast():
    frontend = LogMelDeltas(16000, FEATURES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = frontend(tone_batch([1000]))
    assert out.dtype == torch.float32
