import numpy as np
import pytest
import soundfile as sf
import torch

from birdsed.data.dataset import CropDataset
from birdsed.data.metadata import Recordings
from birdsed.data.sampler import ShardSampler, WeightedEpochSampler


def recordings(tmp_path, seconds_list, rate=8000):
    paths = []
    for number, seconds in enumerate(seconds_list):
        path = tmp_path / f"r{number}.wav"
        # Each sample encodes its own position (in steps of 4 samples, from 1), so a crop reveals where it
        # was cut; the values are exact in the int16 PCM that crops travel in.
        positions = np.arange(int(seconds * rate)) // 4 + 1
        sf.write(path, (positions / 32767).astype(np.float32), rate, subtype="FLOAT")
        paths.append(path)
    count = len(paths)
    return Recordings(
        paths=paths,
        primary_labels=["a"] * count,
        targets=np.eye(count, dtype=np.float32),
        sample_weights=np.ones(count, np.float32),
        frame=None,
    )


def test_random_crops_have_fixed_length_and_depend_only_on_the_crop_seed(tmp_path):
    data = CropDataset(recordings(tmp_path, [10.0]), np.array([10.0]), sample_rate=8000, duration=2.0)
    first, again, other = data[(0, 123)], data[(0, 123)], data[(0, 456)]
    assert first["waveform"].shape == (16000,) and first["waveform"].dtype == torch.int16
    torch.testing.assert_close(first["waveform"], again["waveform"])
    assert not torch.equal(first["waveform"], other["waveform"])
    start = (first["waveform"][0].item() - 1) * 4 / 8000
    assert 0 <= start <= 8.0
    assert first["target"].tolist() == [1.0] and first["weight"].item() == 1.0


def test_validation_crops_start_at_the_beginning(tmp_path):
    data = CropDataset(recordings(tmp_path, [10.0]), np.array([10.0]), sample_rate=8000, duration=2.0)
    assert data[0]["waveform"][0].item() == 1  # position 0
    torch.testing.assert_close(data[0]["waveform"], data[0]["waveform"])


def test_short_clips_are_padded_to_the_crop_length(tmp_path):
    data = CropDataset(recordings(tmp_path, [0.5]), np.array([0.5]), sample_rate=8000, duration=2.0)
    validation, training = data[0]["waveform"], data[(0, 7)]["waveform"]
    assert validation.shape == training.shape == (16000,)
    assert (validation[:4000] > 0).all() and (validation[4000:] == 0).all()
    assert (training != 0).sum() == 4000  # the clip sits somewhere in the window, zeros around it


def test_an_unreadable_crop_gets_zero_weight_instead_of_killing_the_job(tmp_path, caplog):
    items = recordings(tmp_path, [3.0])
    items.paths[0].write_bytes(b"truncated")
    data = CropDataset(items, np.array([3.0]), sample_rate=8000, duration=1.0)
    item = data[(0, 1)]
    assert item["weight"].item() == 0.0 and (item["waveform"] == 0).all()
    assert "Skipping a crop" in caplog.text


def test_sampler_draws_in_proportion_to_weights():
    sampler = WeightedEpochSampler(np.array([1.0, 3.0]), num_samples=20000, seed=0)
    indices = np.array([index for index, _ in sampler])
    assert (indices == 1).mean() == pytest.approx(0.75, abs=0.02)


def test_sampler_is_reproducible_per_epoch_and_resumes_mid_epoch():
    sampler = WeightedEpochSampler(np.ones(50), num_samples=40, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    assert full == list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) != full
    sampler.set_epoch(2, start=15)
    assert list(sampler) == full[15:] and len(sampler) == 25


def test_sampler_rejects_weights_that_cannot_be_sampled():
    with pytest.raises(ValueError):
        WeightedEpochSampler(np.zeros(3), num_samples=5, seed=0)


def test_processes_draw_disjoint_shares_of_one_weighted_sample():
    whole = WeightedEpochSampler(np.arange(1.0, 11.0), num_samples=20, seed=4)
    shares = [WeightedEpochSampler(np.arange(1.0, 11.0), num_samples=20, seed=4, rank=r, world_size=2) for r in (0, 1)]
    for sampler in [whole, *shares]:
        sampler.set_epoch(1)
    draws = list(whole)
    assert list(shares[0]) == draws[0::2] and list(shares[1]) == draws[1::2]
    uneven = [WeightedEpochSampler(np.ones(5), num_samples=7, seed=0, rank=r, world_size=3) for r in range(3)]
    assert [len(sampler) for sampler in uneven] == [3, 3, 3]


def test_validation_shards_are_equal_and_cover_every_item_once():
    shards = [ShardSampler(7, rank, 3) for rank in range(3)]
    assert [len(shard) for shard in shards] == [3, 3, 3]
    real = sorted(index for shard in shards for index in shard.indices[: shard.real])
    assert real == list(range(7))
