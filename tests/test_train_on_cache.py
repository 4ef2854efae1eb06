"""End to end through the real toolkit: a job trains on a waveform cache, with the full augmentation set."""

import json

import numpy as np
import pytest
import soundfile as sf

from birdsed.data import cache
from birdsed.data.synthetic import make_dataset, pink_noise
from birdsed_launch import local_job
from conftest import FAST_HYPERPARAMETERS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared_cache(tmp_path_factory):
    raw = make_dataset(tmp_path_factory.mktemp("raw"), species=3, recordings_per_species=4, seconds=(3.0, 6.0), seed=4)
    output = tmp_path_factory.mktemp("cache") / "cache"
    cache.prepare_cache(raw, output, FAST_HYPERPARAMETERS["sample_rate"], workers=2, progress=False)
    return output


def run_job(base, channels, **hyperparameters):
    local_job.layout(base, channels, {**FAST_HYPERPARAMETERS, **hyperparameters})
    return local_job.run_toolkit(base, capture_output=True, text=True)


def test_a_job_trains_on_a_cache_with_background_noise_and_every_augmentation(tmp_path, prepared_cache):
    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(noise / "wind.ogg", 0.1 * pink_noise(np.random.default_rng(0), 44100 * 2), 44100)
    completed = run_job(
        tmp_path / "job",
        {"train": prepared_cache, "noise": noise},
        epochs=1,
        max_steps=2,
        num_workers=1,
        **{name: 1.0 for name in ("gain_p", "mix_p", "stretch_p", "pitch_p", "background_p", "noise_p")},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    rate = FAST_HYPERPARAMETERS["sample_rate"]
    assert f"channel=train source=cache sample_rate={rate} skipped_files=0 usable_files=12" in completed.stdout
    assert "noise channel: recordings=1 seconds=2.0" in completed.stdout
    assert "BackgroundNoise(p=1.0" in completed.stdout and "FreqMask(p=0.3" in completed.stdout
    history = json.loads((tmp_path / "job" / "output" / "data" / "metrics.json").read_text())["history"]
    assert np.isfinite(history[-1]["train_loss"])


def test_a_cache_at_another_sample_rate_fails_the_job_with_the_reason(tmp_path, prepared_cache):
    rate = FAST_HYPERPARAMETERS["sample_rate"]
    other = 2 * rate
    completed = run_job(tmp_path, {"train": prepared_cache}, sample_rate=other)
    assert completed.returncode == 1
    failure = (tmp_path / "output" / "failure").read_text()
    assert f"prepared at {rate} Hz but the job's sample_rate is {other} Hz" in failure
    assert "Traceback" not in failure
