"""Each augmentation does what it says, per item, with probability p, deterministically under a seed."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from birdsed.augment import (
    Augmentations,
    BackgroundNoise,
    FreqMask,
    Gain,
    GaussianNoise,
    Mix,
    PinkNoise,
    PitchShift,
    RandomStreams,
    TimeMask,
    TimeStretch,
    WaveMask,
    create_augmentations,
)
from birdsed.augment.masks import zero_spans
from birdsed.augment.speed import pitch_shift, time_stretch
from birdsed.config import AugmentConfig, from_hyperparameters
from birdsed.errors import ConfigError

RATE = 16000


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: extra intra-op threads only contend (several times slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def streams(seed=0):
    random = RandomStreams("cpu")
    random.seed(seed, epoch=0)
    return random


def tones(count=6, seconds=1.0, rate=RATE):
    """Items of different pitch and level, so that per-item scaling errors show."""
    t = torch.arange(int(rate * seconds)) / rate
    return torch.stack([(0.1 + 0.1 * i) * torch.sin(2 * math.pi * (300 + 250 * i) * t) for i in range(count)])


def targets(count=6, classes=6):
    return torch.eye(count, classes)


def snr_db(clean, noisy):
    return 10 * torch.log10(clean.pow(2).mean(-1) / (noisy - clean).pow(2).mean(-1))


def peak_frequency(wave, rate=RATE):
    wave = wave.numpy()
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)]


def onset_seconds(wave, rate=RATE, threshold=0.3):
    return int(np.argmax(wave.abs().numpy() > threshold)) / rate


@pytest.mark.parametrize("kind", [GaussianNoise, PinkNoise])
def test_noise_is_added_at_an_snr_within_the_asked_range(kind):
    clean = tones()
    noisy, _ = kind(1.0, 5.0, 15.0, streams())(clean, targets())
    measured = snr_db(clean, noisy)
    assert ((measured > 5.0 - 1e-3) & (measured < 15.0 + 1e-3)).all(), measured
    assert measured.std() > 0.5  # drawn per item


def test_pink_noise_power_falls_as_one_over_frequency():
    clean = torch.zeros(4, RATE) + 1e-3 * tones(4)
    noise = (PinkNoise(1.0, 0.0, 0.0, streams())(clean, targets(4))[0] - clean).numpy()
    power = (np.abs(np.fft.rfft(noise)) ** 2).mean(axis=0)
    frequencies = np.fft.rfftfreq(RATE, 1 / RATE)
    band = (frequencies > 50) & (frequencies < 7000)
    slope = np.polyfit(np.log(frequencies[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.1)


def test_background_noise_is_a_crop_of_the_bank_at_the_asked_snr():
    t = torch.arange(RATE * 3) / RATE
    bank = (20000 * torch.sin(2 * math.pi * 5000 * t)).to(torch.int16)  # a 5 kHz "background"
    clean = tones()
    noisy, _ = BackgroundNoise(1.0, 0.0, 10.0, bank, streams())(clean, targets())
    measured = snr_db(clean, noisy)
    assert ((measured > -1e-3) & (measured < 10.0 + 1e-3)).all(), measured
    assert all(peak_frequency(item) == pytest.approx(5000, abs=3) for item in noisy - clean)


def test_a_bank_shorter_than_the_crop_is_repeated():
    bank = torch.full((1000,), 5000, dtype=torch.int16)
    noisy, _ = BackgroundNoise(1.0, 10.0, 10.0, bank, streams())(tones(2), targets(2))
    assert snr_db(tones(2), noisy).allclose(torch.full((2,), 10.0), atol=1e-3)


@pytest.mark.parametrize("kind", [GaussianNoise, PinkNoise])
def test_silent_clips_stay_silent_and_finite(kind):
    silent = torch.zeros(3, RATE)
    noisy, _ = kind(1.0, 5.0, 15.0, streams())(silent, targets(3))
    assert torch.equal(noisy, silent)


def test_gain_scales_each_item_by_a_db_value_in_range():
    clean = tones()
    louder, _ = Gain(1.0, -6.0, 6.0, streams())(clean, targets())
    ratio_db = 20 * torch.log10(louder.abs().amax(-1) / clean.abs().amax(-1))
    assert ((ratio_db >= -6.0 - 1e-4) & (ratio_db <= 6.0 + 1e-4)).all()
    torch.testing.assert_close(louder, clean * 10 ** (ratio_db[:, None] / 20))
    assert ratio_db.std() > 0.5


def test_mixing_sums_two_to_three_clips_and_unions_their_labels():
    count = 8
    # Item i is the constant 2**i: a mixture's value names exactly which clips it holds.
    waves = (2.0 ** torch.arange(count))[:, None].repeat(1, 100)
    labels = torch.eye(count)
    labels[3, 5] = 0.5  # a secondary label travels with its clip
    weights = torch.linspace(0.2, 1.0, count)
    mixed, union, weight = Mix(1.0, 3, streams())(waves, labels, weights)
    sizes = []
    for item in range(count):
        members = [bit for bit in range(count) if int(mixed[item, 0].item()) >> bit & 1]
        assert item in members and torch.equal(mixed[item], mixed[item, :1].expand(100))
        sizes.append(len(members))
        torch.testing.assert_close(union[item], labels[members].amax(dim=0))
        assert weight[item] == weights[members].min()
    assert set(sizes) == {2, 3}


def test_mixing_never_exceeds_max_clips_and_leaves_its_inputs_alone():
    waves, labels = torch.ones(5, 10), torch.eye(5)
    before = waves.clone()
    mixed, union, weight = Mix(1.0, 2, streams())(waves, labels)
    assert torch.equal(waves, before) and weight is None
    assert (mixed == 2).all() and (union.sum(dim=1) == 2).all()


def test_zero_spans_zeroes_exactly_the_asked_span():
    items = torch.ones(2, 3, 20)
    out = zero_spans(items, torch.tensor([4, 0]), torch.tensor([5, 2]), dim=-1)
    assert (out[0, :, 4:9] == 0).all() and (out[0, :, :4] == 1).all() and (out[0, :, 9:] == 1).all()
    assert (out[1, :, :2] == 0).all() and (out[1, :, 2:] == 1).all()


def zero_runs(mask):
    """Start and length of each run of True in a 1-D boolean tensor."""
    padded = torch.cat([torch.tensor([False]), mask, torch.tensor([False])]).int()
    edges = torch.diff(padded)
    starts, ends = torch.nonzero(edges == 1).flatten(), torch.nonzero(edges == -1).flatten()
    return list(zip(starts.tolist(), (ends - starts).tolist(), strict=True))


def test_wave_mask_zeroes_one_span_up_to_the_asked_fraction():
    waves = torch.ones(16, 1000)
    masked, _ = WaveMask(1.0, 0.1, streams())(waves, targets(16, 3))
    for item in masked:
        runs = zero_runs(item == 0)
        assert len(runs) == 1 and 1 <= runs[0][1] <= 100


@pytest.mark.parametrize(("mask", "dim", "longest"), [("time", -1, 10), ("freq", -2, 8)])
def test_spectrogram_masks_zero_whole_frames_or_bins_on_all_channels(mask, dim, longest):
    spectrogram = torch.ones(16, 3, 32, 100)
    module = TimeMask(1.0, 0.1, streams()) if mask == "time" else FreqMask(1.0, 8, streams())
    masked = module(spectrogram)
    for item in masked:
        zero = (item == 0).all(dim=0)  # [mels, frames]: masked on all 3 channels alike
        assert torch.equal(zero, (item == 0).any(dim=0))
        along = zero.all(dim=0 if dim == -1 else 1)  # whole frames (time) or whole bins (freq)
        assert torch.equal(zero.any(dim=0 if dim == -1 else 1), along)
        runs = zero_runs(along)
        assert len(runs) == 1 and 1 <= runs[0][1] <= longest


def delayed_tone(frequency=1000.0, seconds=3.0, start=1.0):
    t = torch.arange(int(RATE * seconds)) / RATE
    return torch.where(t >= start, torch.sin(2 * math.pi * frequency * t), torch.zeros_like(t))


@pytest.mark.parametrize("rate", [0.8, 1.25])
def test_time_stretch_changes_duration_by_the_rate_and_keeps_pitch(rate):
    wave = delayed_tone()[None]
    stretched = time_stretch(wave, torch.tensor([rate]))[0]
    assert stretched.shape == wave[0].shape  # cut or padded back to the crop length
    assert onset_seconds(stretched) == pytest.approx(1.0 / rate, abs=0.01)  # the tone starts at 1 s / rate
    assert peak_frequency(stretched[int(1.5 * RATE) :]) == pytest.approx(1000, abs=4)


def test_time_stretch_changes_the_length_of_a_finite_sound():
    wave = delayed_tone(seconds=3.0, start=0.5) * (torch.arange(3 * RATE) < 1.5 * RATE)  # 1 s of tone
    stretched = time_stretch(torch.stack([wave, wave]), torch.tensor([0.8, 1.25]))
    durations = [(item.abs() > 0.3).nonzero().flatten() for item in stretched]
    lengths = [(d[-1] - d[0]).item() / RATE for d in durations]
    assert lengths == pytest.approx([1 / 0.8, 1 / 1.25], abs=0.02)


@pytest.mark.parametrize("semitones", [-3.0, 2.0])
def test_pitch_shift_moves_the_frequency_and_keeps_timing_and_length(semitones):
    wave = delayed_tone()[None]
    shifted = pitch_shift(wave, torch.tensor([semitones]))[0]
    assert shifted.shape == wave[0].shape
    assert peak_frequency(shifted[int(1.2 * RATE) :]) == pytest.approx(1000 * 2 ** (semitones / 12), rel=0.005)
    assert onset_seconds(shifted) == pytest.approx(1.0, abs=0.01)


def test_stretch_and_pitch_modules_draw_their_factor_per_item():
    waves = delayed_tone()[None].repeat(6, 1)
    stretched, _ = TimeStretch(1.0, 0.8, 1.25, streams())(waves, targets())
    onsets = [onset_seconds(item) for item in stretched]
    assert all(0.8 - 0.01 <= onset <= 1.25 + 0.01 for onset in onsets) and np.std(onsets) > 0.02
    shifted, _ = PitchShift(1.0, -2.0, 2.0, streams())(waves, targets())
    peaks = [peak_frequency(item[int(1.2 * RATE) :]) for item in shifted]
    assert all(1000 * 2 ** (-2 / 12) - 5 <= peak <= 1000 * 2 ** (2 / 12) + 5 for peak in peaks) and np.std(peaks) > 10


WAVEFORM_MODULES = {
    "gain": lambda p, r: Gain(p, -6, 6, r),
    "mix": lambda p, r: Mix(p, 3, r),
    "stretch": lambda p, r: TimeStretch(p, 0.8, 1.25, r),
    "pitch": lambda p, r: PitchShift(p, -2, 2, r),
    "background": lambda p, r: BackgroundNoise(p, 3, 20, (3000 * torch.randn(40000)).to(torch.int16), r),
    "noise": lambda p, r: GaussianNoise(p, 5, 20, r),
    "pink": lambda p, r: PinkNoise(p, 5, 20, r),
    "wave_mask": lambda p, r: WaveMask(p, 0.1, r),
}


@pytest.mark.parametrize("name", WAVEFORM_MODULES)
def test_p0_is_the_identity_and_p1_changes_every_item(name):
    waves, labels = tones(), targets()
    unchanged, same_labels = WAVEFORM_MODULES[name](0.0, streams())(waves, labels)[:2]
    assert torch.equal(unchanged, waves) and torch.equal(same_labels, labels)
    changed = WAVEFORM_MODULES[name](1.0, streams())(waves, labels)[0]
    assert changed.shape == waves.shape and torch.isfinite(changed).all()
    assert not torch.isclose(changed, waves).all(dim=1).any()


@pytest.mark.parametrize("module", [TimeMask, FreqMask])
def test_spectrogram_masks_p0_identity_p1_every_item(module):
    spectrogram = torch.randn(6, 3, 32, 50) + 5
    assert torch.equal(module(0.0, 0.2 if module is TimeMask else 8, streams())(spectrogram), spectrogram)
    masked = module(1.0, 0.2 if module is TimeMask else 8, streams())(spectrogram)
    assert ((masked == 0).flatten(1).any(dim=1)).all()


def everything_on(**overrides):
    fields = {
        name: 1.0 for name in AugmentConfig.__dataclass_fields__ if name.endswith("_p") and name != "background_p"
    }
    return AugmentConfig(**{**fields, **overrides})


def apply(augment, waves, labels, weights, spectrogram):
    out = augment.waveform(waves, labels, weights)
    return (*out, augment.spectrogram(spectrogram))


def test_the_pipeline_is_deterministic_under_a_seed_and_differs_across_seeds_and_epochs():
    inputs = (tones(), targets(), torch.ones(6), torch.randn(6, 3, 32, 50))
    results = {}
    for seed, epoch, rank in [(1, 0, 0), (1, 0, 0), (2, 0, 0), (1, 1, 0), (1, 0, 1)]:
        augment = create_augmentations(everything_on(), seed=seed, rank=rank)
        augment.set_epoch(epoch)
        results.setdefault((seed, epoch, rank), []).append(apply(augment, *inputs))
    first, again = results[(1, 0, 0)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    for other in (results[(2, 0, 0)][0], results[(1, 1, 0)][0], results[(1, 0, 1)][0]):
        assert not torch.equal(first[0], other[0]) and not torch.equal(first[3], other[3])


def test_saved_generator_state_replays_the_same_augmentation():
    augment = create_augmentations(everything_on(), seed=3)
    augment.set_epoch(4)
    inputs = (tones(), targets(), torch.ones(6), torch.randn(6, 3, 32, 50))
    apply(augment, *inputs)  # a batch before the checkpoint
    state = {key: value.clone() for key, value in augment.state_dict().items()}
    expected = apply(augment, *inputs)
    resumed = create_augmentations(everything_on(), seed=3)
    resumed.set_epoch(4)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, apply(resumed, *inputs), strict=True))


def test_augment_off_switches_everything_off():
    augment = create_augmentations(AugmentConfig(augment="off"), seed=0, noise_bank=torch.ones(100, dtype=torch.int16))
    inputs = (tones(), targets(), torch.ones(6), torch.randn(6, 3, 32, 50))
    assert all(a is b for a, b in zip(inputs, apply(augment, *inputs), strict=True))


def test_the_default_set_is_complete_and_background_noise_needs_the_channel(caplog):
    caplog.set_level("INFO")
    with_bank = create_augmentations(AugmentConfig(), seed=0, noise_bank=torch.ones(100, dtype=torch.int16))
    names = {type(m).__name__ for m in [*with_bank.waveform.modules(), *with_bank.spectrogram.modules()]}
    assert {
        "Gain",
        "Mix",
        "TimeStretch",
        "PitchShift",
        "BackgroundNoise",
        "GaussianNoise",
        "PinkNoise",
        "WaveMask",
        "TimeMask",
        "FreqMask",
    } <= names
    without = create_augmentations(AugmentConfig(), seed=0)
    assert "BackgroundNoise" not in {type(m).__name__ for m in without.waveform.modules()}
    assert "no 'noise' channel" in caplog.text


def test_validation_is_never_augmented():
    from birdsed.data.sampler import ShardSampler
    from birdsed.losses import create_loss
    from birdsed.models import create_model
    from birdsed.training.amp import mixed_precision
    from birdsed.training.distributed import Distributed
    from birdsed.training.loop import Trainer, evaluate
    from birdsed.training.signals import NeverStop

    cfg = from_hyperparameters(
        {"backbone": "test_efficientnet", "sample_rate": RATE, "fmax": 8000, "n_mels": 32, "n_fft": 512}
    )
    model = create_model(cfg, num_classes=3)
    waves, labels = tones(4), targets(4, 3)
    items = [{"waveform": waves[i], "target": labels[i], "weight": torch.tensor(1.0)} for i in range(4)]
    loader = DataLoader(items, batch_size=4, sampler=ShardSampler(len(items)))
    truth = np.eye(4, 3, dtype=np.int64)

    def trainer(augment):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        precision = mixed_precision("off", torch.device("cpu"))
        return Trainer(
            model=model,
            loss_fn=create_loss(cfg.loss, torch.ones(3)),
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
            scaler=precision.grad_scaler(),
            precision=precision,
            device=torch.device("cpu"),
            batches_per_epoch=1,
            grad_accum_steps=1,
            max_grad_norm=0,
            max_steps=0,
            nonfinite_patience=1,
            distributed=Distributed(0, 0, 1, torch.device("cpu")),
            augment=augment,
        )

    heavy = create_augmentations(everything_on(), seed=0)
    heavy.set_epoch(0)
    before = {key: value.clone() for key, value in heavy.state_dict().items()}
    plain = evaluate(trainer(Augmentations()), loader, truth, NeverStop())
    augmented = evaluate(trainer(heavy), loader, truth, NeverStop())
    np.testing.assert_array_equal(plain["scores"], augmented["scores"])
    assert all(torch.equal(before[key], value) for key, value in heavy.state_dict().items())  # no draws at all


def test_the_model_can_be_entered_with_a_spectrogram():
    """The train step calls `model(spectrogram=...)`, so a DistributedDataParallel wrapper sees the call."""
    from birdsed.models import create_model

    cfg = from_hyperparameters(
        {"backbone": "test_efficientnet", "sample_rate": RATE, "fmax": 8000, "n_mels": 32, "n_fft": 512}
    )
    model = create_model(cfg, num_classes=3).eval()
    waves = tones(2)
    with torch.no_grad():
        direct, entered = model(waves), model(spectrogram=model.frontend(waves))
    torch.testing.assert_close(direct["clipwise_logits"], entered["clipwise_logits"])


def test_augment_hyperparameters_are_checked():
    cfg = from_hyperparameters({"augment": "OFF", "mix_max_clips": "2", "noise_snr_min": "0"})
    assert cfg.augment.augment == "off" and cfg.augment.mix_max_clips == 2
    with pytest.raises(ConfigError, match="'noise_snr_min' \\(30\\) must not exceed 'noise_snr_max' \\(20\\)"):
        from_hyperparameters({"noise_snr_min": "30"})
    with pytest.raises(ConfigError, match="'mix_max_clips' must be at most 3"):
        from_hyperparameters({"mix_max_clips": "4"})
    with pytest.raises(ConfigError, match="'freq_mask_max_bins' \\(40\\) must not exceed n_mels \\(32\\)"):
        from_hyperparameters({"freq_mask_max_bins": "40", "n_mels": "32"})
    with pytest.raises(ConfigError, match="'stretch_p' must be at most 1"):
        from_hyperparameters({"stretch_p": "1.5"})
