"""Where training crops start (`crop`) and how many an epoch draws (`min_epoch_crops`)."""

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdsed.config import from_hyperparameters
from birdsed.data import loaders
from birdsed.data.dataset import CropDataset, high_frequency_energy
from birdsed.data.metadata import make_recordings
from birdsed.errors import ConfigError

RATE = 8000
SECONDS = 60.0
CROP = 2.0
CALL_AT = 40.0  # seconds: the only call of the recording


class ArraySource:
    """Crops from waveforms held in memory, by path."""

    def __init__(self, waveforms: dict[Path, np.ndarray]) -> None:
        self.waveforms = waveforms

    def read(self, path: Path, start: int, count: int) -> np.ndarray:
        return self.waveforms[path][start : start + count]


@functools.cache
def one_call_recording() -> np.ndarray:
    """A minute of low rumble (loud, 40 Hz) with one short 3 kHz call at 40 s."""
    time = np.arange(int(SECONDS * RATE)) / RATE
    waveform = 0.5 * np.sin(2 * np.pi * 40 * time)
    call = (time >= CALL_AT) & (time < CALL_AT + 0.5)
    waveform[call] += 0.1 * np.sin(2 * np.pi * 3000 * time[call])
    return np.round(waveform * 32767 / 1.0).astype(np.int16)


def position_recording() -> np.ndarray:
    """Each sample holds its own position (modulo 32000): a crop's first sample tells where it starts."""
    return (np.arange(int(SECONDS * RATE)) % 32000).astype(np.int16)


def dataset(crop: str, candidates: int = 8, waveform: np.ndarray | None = None) -> CropDataset:
    path = Path("a.ogg")
    frame = pd.DataFrame({"primary_label": ["a"], "secondary_labels": [[]], "rating": [5.0], "path": [path]})
    recordings = make_recordings(frame, ["a"], 0.5)
    source = ArraySource({path: one_call_recording() if waveform is None else waveform})
    return CropDataset(recordings, np.array([SECONDS]), RATE, CROP, source, crop, candidates)


@functools.cache
def rumble_energy() -> float:
    return high_frequency_energy(one_call_recording()[: int(CROP * RATE)])


def holds_the_call(waveform: np.ndarray) -> bool:
    return high_frequency_energy(waveform) > 10 * rumble_energy()


def test_energy_crops_find_the_call_that_random_crops_mostly_miss():
    draws = range(200)
    random, energy = dataset("random"), dataset("energy", 16)
    random_hits = sum(holds_the_call(random[(0, seed)]["waveform"].numpy()) for seed in draws)
    energy_hits = sum(holds_the_call(energy[(0, seed)]["waveform"].numpy()) for seed in draws)
    # A 2 s crop holds the 0.5 s call for ~4 % of offsets; the best of 16 candidates far more often.
    assert random_hits < 0.1 * len(draws)
    assert energy_hits > 3 * random_hits and energy_hits > 0.3 * len(draws)


def test_high_frequency_energy_ranks_a_call_above_louder_rumble():
    time = np.arange(RATE) / RATE
    rumble = (0.5 * np.sin(2 * np.pi * 40 * time) * 32767).astype(np.int16)
    call = (0.05 * np.sin(2 * np.pi * 3000 * time) * 32767).astype(np.int16)
    assert high_frequency_energy(call) > high_frequency_energy(rumble)
    assert high_frequency_energy(np.zeros(1, np.int16)) == 0.0


def test_start_crops_stay_within_the_first_two_crop_lengths():
    data = dataset("start", waveform=position_recording())
    starts = [int(data[(0, seed)]["waveform"][0]) for seed in range(200)]
    assert min(starts) >= 0 and max(starts) <= CROP * RATE  # the crop ends within the first 2 x CROP seconds
    assert max(starts) > 0.8 * CROP * RATE  # and is not always the very start


def test_validation_crops_and_unknown_rules():
    data = dataset("energy")
    assert np.array_equal(data[0]["waveform"].numpy(), one_call_recording()[: int(CROP * RATE)])  # always the start
    with pytest.raises(ValueError, match="unknown crop rule"):
        dataset("loudest")
    with pytest.raises(ConfigError, match="'crop' must be one of random, energy, start"):
        from_hyperparameters({"crop": "loudest"})


def test_an_epoch_draws_at_least_min_epoch_crops():
    assert loaders.epoch_crops(96, 512) == 512
    assert loaders.epoch_crops(20_000, 512) == 20_000
    assert loaders.epoch_crops(96, 0) == 96
    assert from_hyperparameters({}).data.min_epoch_crops == 512
