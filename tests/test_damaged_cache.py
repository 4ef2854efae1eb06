"""A waveform cache damaged after `prepare` (an interrupted `aws s3 sync`), and crops that fail mid-job.

Each damaged array is found at the start of the job from its header and size, skipped with its
reason and counted against `max_skipped_fraction`, in the train channel and in the noise channel;
a job whose crops all fail later stops with a reason instead of reporting success.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from birdsed.commands import train as train_command
from birdsed.config import from_hyperparameters
from birdsed.data import cache, loaders
from birdsed.data.audio import AudioReadError
from birdsed.data.noise import load_noise_bank
from birdsed.errors import DataError
from conftest import FAST_HYPERPARAMETERS
from tiny_data import NAMES, RATE, write_wav_dataset

LONG_NAME = "aaa1/" + "x" * 260 + ".wav"


@pytest.fixture(autouse=True)
def restore_logging():
    """train_command.main configures the root logger as a job would; give pytest its handlers back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """8 short WAV recordings of 2 classes, as a cache."""
    raw = write_wav_dataset(tmp_path_factory.mktemp("raw"), NAMES)
    output = tmp_path_factory.mktemp("cache") / "cache"
    cache.prepare_cache(raw, output, RATE, workers=1, progress=False)
    return output


def damaged_copy(prepared_dir, tmp_path):
    """The cache as an interrupted sync leaves it: one array truncated, one empty, one not an array, one missing."""
    target = tmp_path / "damaged"
    shutil.copytree(prepared_dir, target)
    arrays = {name: cache.array_path(target, name) for name in NAMES}
    data = arrays[NAMES[0]].read_bytes()
    arrays[NAMES[0]].write_bytes(data[: len(data) // 3])
    arrays[NAMES[1]].write_bytes(b"")
    arrays[NAMES[4]].write_text("<Error><Code>AccessDenied</Code></Error>")
    arrays[NAMES[5]].unlink()
    return target


def test_prepare_reports_a_name_too_long_for_the_file_system_as_unreadable(tmp_path):
    raw = write_wav_dataset(tmp_path / "raw", NAMES[:1], [f"aaa1,[],4,{LONG_NAME}"])
    report = cache.prepare_cache(raw, tmp_path / "cache", RATE, workers=1, progress=False)
    assert report.converted == 1
    assert "file name too long (a path part of 264 bytes" in report.unreadable[LONG_NAME]


def test_damaged_arrays_are_found_at_start_named_counted_and_limited(prepared, tmp_path, caplog):
    damaged = damaged_copy(prepared, tmp_path)
    caplog.set_level(logging.INFO)
    frame, listed = cache.usable_recordings(damaged, "train", RATE)
    assert sorted(frame["filename"]) == sorted(NAMES[2:4] + NAMES[6:])
    assert listed == len(NAMES)
    assert "skipped_files=4 usable_files=4" in caplog.text
    for name, reason in [
        (NAMES[0], "cache array truncated"),
        (NAMES[1], "cache array is empty (0 bytes"),
        (NAMES[4], "cache array unreadable"),
        (NAMES[5], "cache array missing"),
    ]:
        assert f"Skipping {name}: {reason}" in caplog.text, name

    cfg = from_hyperparameters({**FAST_HYPERPARAMETERS, "max_skipped_fraction": 0.4})
    with pytest.raises(DataError, match=r"4 of the 8 recordings in the 'train' channel \(50%\) could not be used"):
        loaders.load_training_data(cfg, damaged, None)


def test_odd_arrays_get_a_reason_each(tmp_path):
    """A folder, a 2-D array, a float array and a header longer than what the check reads."""
    folder = tmp_path / "folder.npy"
    folder.mkdir()
    square, floats = tmp_path / "square.npy", tmp_path / "floats.npy"
    np.save(square, np.zeros((4, 4), np.int16))
    np.save(floats, np.zeros(16, np.float32))
    long_header = tmp_path / "long_header.npy"
    header = b"{'descr': '<i2', 'fortran_order': False, 'shape': (16,), }".ljust(cache.HEADER_BYTES + 63) + b"\n"
    long_header.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(32))
    assert cache.check_array(folder, 16).startswith("cache array unreadable")
    assert cache.check_array(square, 16) == "cache array is not mono int16 (shape (4, 4), dtype int16)"
    assert cache.check_array(floats, 16) == "cache array is not mono int16 (shape (16,), dtype float32)"
    assert cache.check_array(long_header, 16).startswith("cache array unreadable")


def test_a_damaged_noise_cache_is_skipped_file_by_file_and_limited(prepared, tmp_path, caplog):
    noise = tmp_path / "noise"
    shutil.copytree(prepared, noise)
    truncated = cache.array_path(noise, NAMES[3])
    truncated.write_bytes(truncated.read_bytes()[:200])
    bank = load_noise_bank(noise, RATE)
    assert len(bank) == 7 * int(3.5 * RATE)
    assert f"Skipping {truncated}: cache array truncated" in caplog.text
    with pytest.raises(DataError, match=r"1 of the 8 recordings in the 'noise' channel \(12%\)"):
        load_noise_bank(noise, RATE, max_skipped_fraction=0.1)


@pytest.mark.slow
def test_a_job_whose_crops_all_fail_stops_without_a_model(prepared, tmp_path, monkeypatch, capsys):
    """The arrays pass the start check, then every read fails (the files changed under the job)."""

    def broken(path, start, count):
        raise AudioReadError("cache file unreadable (Input/output error)")

    monkeypatch.setattr(cache, "read_span", broken)
    base = tmp_path / "job"
    (base / "input" / "data").mkdir(parents=True)
    (base / "input" / "data" / "train").symlink_to(prepared)
    hyperparameters = {**FAST_HYPERPARAMETERS, "epochs": 1, "batch_size": 4, "augment": "off"}
    code = train_command.main({"SAGEMAKER_BASE_DIR": str(base)}, [f"--{k}={v}" for k, v in hyperparameters.items()])
    output = capsys.readouterr().out
    assert code == train_command.EXIT_USER_ERROR, output[-3000:]
    failure = (base / "output" / "failure").read_text()
    assert "None of the 6 training crops of epoch 1 could be read" in failure
    assert "Skipped 6 of the 6 training crops of epoch 1" in output
    assert "train_loss=0.000000" not in output
    assert not (base / "model" / "model.pt").exists()
