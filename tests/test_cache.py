"""The waveform cache: prepare (parallel, resumable), round trip, detection by training, workers."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from birdsed.commands import prepare
from birdsed.config import from_hyperparameters
from birdsed.data import audio, cache, loaders
from birdsed.data.metadata import read_metadata
from birdsed.data.noise import load_noise_bank
from birdsed.data.sampler import WeightedEpochSampler
from birdsed.data.synthetic import make_dataset
from birdsed.errors import DataError

RATE = 16000
QUANTUM = 1.0 / cache.SCALE


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """3 species x 4 recordings in OGG, MP3, FLAC and WAV at 16-48 kHz (some stereo), plus a broken file."""
    root = make_dataset(
        tmp_path_factory.mktemp("small"),
        species=3,
        recordings_per_species=4,
        seconds=(1.5, 4.0),
        sample_rates=(16000, 44100, 48000),
        seed=3,
    )
    broken = "dwnwhi1/XC_broken.ogg"
    (root / "train_audio" / broken).write_bytes(b"not audio at all" * 50)
    with open(root / "train_metadata.csv", "a", encoding="utf-8") as handle:
        handle.write(f"dwnwhi1,[],['song'],0,0,x,x,x,x,4.0,,{broken}\n")
    return root


@pytest.fixture(scope="module")
def prepared(small_dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("cache") / "cache"
    report = cache.prepare_cache(small_dataset, output, RATE, workers=2, progress=False)
    return output, report


def test_the_cache_round_trip_equals_direct_decoding(small_dataset, prepared):
    output, report = prepared
    names = [name for name in read_metadata(small_dataset)["filename"] if "broken" not in name]
    assert report.converted == len(names) == 12
    for name in names:
        direct = audio.decode(small_dataset / "train_audio" / name, RATE)
        cached = np.load(cache.array_path(output, name)).astype(np.float32) / cache.SCALE
        assert cached.shape == direct.shape
        np.testing.assert_allclose(cached, np.clip(direct, -1, 1), atol=QUANTUM / 2 + 1e-7)
        span = cache.read_span(cache.array_path(output, name), 100, 5000)
        assert span.dtype == np.int16
        np.testing.assert_array_equal(span, np.load(cache.array_path(output, name))[100:5100])
        tail = cache.read_span(cache.array_path(output, name), len(cached) - 10, 5000)
        np.testing.assert_array_equal(tail, np.load(cache.array_path(output, name))[-10:])  # short at the end
        assert len(cache.read_span(cache.array_path(output, name), len(cached) + 5, 100)) == 0


def test_the_index_names_the_rate_the_durations_and_the_unreadable_files(small_dataset, prepared):
    output, _ = prepared
    index = json.loads((output / cache.CACHE_FILE).read_text())
    assert index["format"] == cache.FORMAT and index["version"] == cache.VERSION and index["complete"]
    assert index["sample_rate"] == RATE and index["recordings"] == 12 and index["unreadable_count"] == 1
    assert index["unreadable"]["dwnwhi1/XC_broken.ogg"].startswith("decoding failed")
    assert all(entry["samples"] > RATE for entry in index["files"].values())
    # Resampling and MP3 can overshoot a peak of 0.9 by a little: counted, then clipped.
    assert index["clipped_samples"] == sum(entry["clipped"] for entry in index["files"].values()) < 100
    assert (output / "train_metadata.csv").read_bytes() == (small_dataset / "train_metadata.csv").read_bytes()


def test_a_rerun_skips_finished_files_and_redoes_half_written_ones(small_dataset, tmp_path):
    output = tmp_path / "cache"
    first = cache.prepare_cache(small_dataset, output, RATE, workers=1, progress=False)
    assert first.converted == 12 and first.skipped == 0 and len(first.unreadable) == 1
    name = next(iter(first.index.files))
    target = cache.array_path(output, name)
    # A killed run leaves a temporary file (never taken as done) and, at worst, a truncated array.
    stray = target.with_name(f".{target.name}{cache.TEMPORARY_MARK}999")
    stray.write_bytes(target.read_bytes()[:200])
    other = cache.array_path(output, sorted(first.index.files)[-1])
    other.write_bytes(other.read_bytes()[:-10])
    second = cache.prepare_cache(small_dataset, output, RATE, workers=1, progress=False)
    assert second.converted == 1 and second.skipped == 11 and not stray.exists()
    assert second.index.files == first.index.files
    third = cache.prepare_cache(small_dataset, output, RATE, workers=1, progress=False)
    assert third.converted == 0 and third.skipped == 12
    with pytest.raises(DataError, match="already holds a waveform cache at 16000 Hz"):
        cache.prepare_cache(small_dataset, output, 32000, workers=1, progress=False)


def test_training_detects_the_cache_and_reads_the_same_crops_as_from_raw_audio(tmp_path):
    # 16 kHz WAV: no resampling, and both sources give int16 PCM: the crops are identical.
    raw = make_dataset(tmp_path / "raw", species=2, recordings_per_species=3, seconds=(2.0, 4.0),
                       sample_rates=(RATE,), formats=(".wav",), seed=1)  # fmt: skip
    cache.prepare_cache(raw, tmp_path / "cache", RATE, workers=1, progress=False)
    cfg = from_hyperparameters({"sample_rate": RATE, "fmax": 8000, "duration": 3, "val_fraction": 0.3})
    from_raw = loaders.load_training_data(cfg, raw, None)
    from_cache = loaders.load_training_data(cfg, tmp_path / "cache", None)
    assert (from_raw.source, from_cache.source) == ("raw", "cache")
    assert isinstance(from_cache.validation.source, cache.CachedWaveforms)
    np.testing.assert_allclose(from_raw.train.seconds, from_cache.train.seconds, atol=1e-6)
    for key in [0, 1, (0, 5), (1, 77), (2, 1234)]:
        a, b = from_raw.train[key], from_cache.train[key]
        assert a["waveform"].dtype == torch.int16 and torch.equal(a["waveform"], b["waveform"])
        assert torch.equal(a["target"], b["target"]) and torch.equal(a["weight"], b["weight"])


def test_a_cache_at_another_rate_fails_with_both_rates_and_what_to_do(prepared):
    output, _ = prepared
    cfg = from_hyperparameters({})
    with pytest.raises(DataError) as raised:
        loaders.load_training_data(cfg, output, None)
    message = str(raised.value)
    assert "prepared at 16000 Hz" in message and "sample_rate is 32000 Hz" in message
    assert "sample_rate=16000" in message and "--sample-rate 32000" in message


def test_an_unfinished_cache_is_refused(prepared, tmp_path):
    output, _ = prepared
    index = json.loads((output / cache.CACHE_FILE).read_text())
    (tmp_path / cache.CACHE_FILE).write_text(json.dumps({**index, "complete": False}))
    with pytest.raises(DataError, match="incomplete"):
        cache.open_for_training(tmp_path, "train", RATE)


def test_a_cache_crop_of_a_damaged_array_gets_zero_weight(prepared, tmp_path):
    output, _ = prepared
    cfg = from_hyperparameters({"sample_rate": RATE, "fmax": 8000, "duration": 1})
    data = loaders.load_training_data(cfg, output, None)
    path = data.train.recordings.paths[0]
    saved = path.read_bytes()
    try:
        path.write_bytes(b"garbage")
        assert data.train[(0, 1)]["weight"].item() == 0.0
    finally:
        path.write_bytes(saved)


def test_the_noise_channel_reads_audio_files_or_a_cache(prepared, tmp_path):
    output, _ = prepared
    from_cache = load_noise_bank(output, RATE)
    assert from_cache.dtype == torch.int16
    assert len(from_cache) == sum(entry["samples"] for entry in cache.read_index(output).files.values())
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "sub" / "wind.flac", np.full(8000, 0.25, np.float32), 8000)
    (tmp_path / "notes.txt").write_text("not audio")
    from_files = load_noise_bank(tmp_path, RATE)
    assert len(from_files) == pytest.approx(16000, abs=10) and load_noise_bank(None, RATE) is None


def test_prepare_cli_fails_with_a_one_line_reason(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    arguments = ["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out"), "--workers", "1"]
    assert prepare.main(arguments) == 1
    assert "train_metadata.csv is missing" in capsys.readouterr().err.strip()
    (tmp_path / "empty" / "train_metadata.csv").write_text(
        "primary_label,secondary_labels,rating,filename\nabc,[],4,abc/gone.ogg\n"
    )
    assert prepare.main(arguments) == 1
    printed = capsys.readouterr()
    assert "unreadable: abc/gone.ogg: file not found" in printed.out
    assert printed.err.strip().splitlines()[-1].startswith("error: none of the recordings")  # after the progress bar


class Keys(Dataset):
    def __getitem__(self, key):
        return torch.tensor(key)

    def __len__(self):
        return 10


def test_persistent_workers_follow_the_samplers_epoch():
    sampler = WeightedEpochSampler(np.ones(10), num_samples=12, seed=0)
    loader = DataLoader(Keys(), batch_size=4, sampler=sampler, **loaders.worker_options(1, pin_memory=False))
    seen = {}
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        expected = [torch.tensor(pair) for pair in sampler]
        got = [row for batch in loader for row in batch]
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
        seen.setdefault(epoch, []).append(torch.stack(got))
    assert torch.equal(seen[0][0], seen[0][1]) and not torch.equal(seen[0][0], seen[1][0])
    assert loader._iterator is not None and loader.persistent_workers
