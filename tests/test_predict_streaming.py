"""predict and prepare on long and odd recordings: streamed windows, unique row ids, output paths
checked before any work, clipped and NaN samples (issue 12, items 2, 8, 9, 10 and weak spots)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from birdsed import predict
from birdsed.commands import predict as predict_cli
from birdsed.commands import prepare as prepare_cli
from birdsed.config import from_hyperparameters
from birdsed.data import audio, cache
from birdsed.data.synthetic import make_dataset
from birdsed.models import create_model
from birdsed.training import outputs
from conftest import FAST_HYPERPARAMETERS

LABELS = ["aaa1", "bbb2", "ccc3"]
HYPERPARAMETERS = {**FAST_HYPERPARAMETERS, "duration": 1, "sample_rate": 16000, "pretrained": "false"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    cfg = from_hyperparameters(HYPERPARAMETERS)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model")
    outputs.write_model_dir(directory, create_model(cfg, len(LABELS)).state_dict(), LABELS, cfg)
    return directory


@pytest.fixture(scope="module")
def loaded(model_dir):
    return predict.load_model(model_dir, torch.device("cpu"))


def chirps(seconds: float, rate: int, amplitude: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = np.sin(2 * np.pi * (800 + 600 * np.sin(2 * np.pi * 0.3 * t)) * t) + 0.3 * rng.standard_normal(len(t))
    return (amplitude * wave / np.abs(wave).max()).astype(np.float32)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run_cli(model_dir: Path, *args: str) -> int:
    return predict_cli.main(["--model", str(model_dir), "--quiet", *args])


# ---- windows across block edges, events across windows ----


def test_streamed_windows_equal_the_windows_of_the_whole_recording():
    wave = np.arange(1, 101, dtype=np.float32)
    for block in (1, 7, 30, 100, 1000):
        blocks = [wave[start : start + block] for start in range(0, len(wave), block)]
        windows = np.stack(list(predict.stream_windows(blocks, 30)))
        np.testing.assert_array_equal(windows, predict.cut_windows(wave, 30))
    assert list(predict.stream_windows([], 30)) == []
    assert [len(batch) for batch in predict.batched(predict.stream_windows([wave], 10), 4)] == [4, 4, 2]


def reference_events(frames, frame_seconds, seconds, labels, threshold):
    """The obvious whole-array computation the streaming tracker must reproduce."""
    frames = frames[: int(np.ceil(seconds / frame_seconds - 1e-9))]
    events = []
    for column, label in enumerate(labels):
        for start, stop in predict.frame_runs(frames[:, column] >= threshold):
            offset = min(stop * frame_seconds, seconds)
            score = float(frames[start:stop, column].max())
            events.append(predict.Event("f", start * frame_seconds, offset, label, score))
    return sorted(events, key=lambda event: (event.onset_s, event.label))


@pytest.mark.parametrize("seed", range(4))
def test_event_tracker_fed_window_by_window_equals_the_whole_array(seed):
    rng = np.random.default_rng(seed)
    per_window, windows, labels = 5, 7, ["a", "b", "c"]
    frames = rng.random((per_window * windows, len(labels)))
    seconds = rng.uniform(per_window * (windows - 1), per_window * windows)  # 1 s frames, last window padded
    tracker = predict.EventTracker("f", labels, 0.4, 1.0)
    for start in range(0, len(frames), 2 * per_window):  # batches of 2 windows
        tracker.feed(frames[start : start + 2 * per_window], hold=per_window)
    assert tracker.finish(seconds) == reference_events(frames, 1.0, seconds, labels, 0.4)


def test_predicting_in_small_blocks_equals_predicting_in_one(tmp_path, loaded):
    path = tmp_path / "long.wav"
    sf.write(path, chirps(4.3, 22050), 22050)
    results = []
    for block_seconds in (0.7, 1000.0):
        predictor = predict.Predictor(loaded, torch.device("cpu"), 3, event_threshold=0.5, block_seconds=block_seconds)
        results.append(predictor.predict_file(path))
    small, one = results
    assert small.row_ids == one.row_ids == [f"long_{end}" for end in range(1, 6)]
    np.testing.assert_allclose(small.probabilities, one.probabilities, atol=1e-6)
    assert small.events == one.events


# ---- row ids ----


def test_row_ids_are_unique_when_stems_collide(tmp_path, model_dir, caplog):
    audio = tmp_path / "audio"
    for name in ("site1/rec_001.wav", "site2/rec_001.wav", "rec_001.flac", "other.wav"):
        (audio / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(audio / name, chirps(1.5, 16000), 16000)
    out = tmp_path / "preds.csv"
    with caplog.at_level(logging.WARNING):
        assert run_cli(model_dir, "--audio", str(audio), "--out", str(out)) == 0
    ids = [row["row_id"] for row in read_rows(out)]
    assert len(ids) == len(set(ids)) == 8
    assert set(ids) == {
        *("other_1", "other_2"),
        *("rec_001.flac_1", "rec_001.flac_2"),
        *("site1/rec_001.wav_1", "site1/rec_001.wav_2", "site2/rec_001.wav_1", "site2/rec_001.wav_2"),
    }
    assert "3 recordings share a file stem" in caplog.text


def test_file_ids_fall_back_to_the_path_as_given():
    inputs = [predict.AudioInput(Path("a/x.wav"), Path("a")), predict.AudioInput(Path("b/x.wav"), Path("b"))]
    assert predict.file_ids(inputs) == ["a/x.wav", "b/x.wav"]
    assert predict.file_ids([predict.AudioInput(Path("a/x.wav"))]) == ["x"]


# ---- outputs checked before predicting ----


@pytest.mark.parametrize("case", ["out_is_a_dir", "parent_is_a_file", "out_is_events", "events_is_a_dir"])
def test_unusable_outputs_are_refused_before_predicting(tmp_path, model_dir, capsys, monkeypatch, case):
    sf.write(tmp_path / "a.wav", chirps(1.0, 16000), 16000)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    out, events = {
        "out_is_a_dir": (tmp_path / "folder", None),
        "parent_is_a_file": (tmp_path / "file.txt" / "sub" / "preds.csv", None),
        "out_is_events": (tmp_path / "same.csv", tmp_path / "same.csv"),
        "events_is_a_dir": (tmp_path / "preds.csv", tmp_path / "folder"),
    }[case]

    def never(*args, **kwargs):
        raise AssertionError("predicted before checking the outputs")

    monkeypatch.setattr(predict.Predictor, "predict_file", never)
    monkeypatch.setattr(predict, "load_model", never)
    args = ["--audio", str(tmp_path / "a.wav"), "--out", str(out)] + (["--events", str(events)] if events else [])
    assert run_cli(model_dir, *args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --") and err.count("\n") == 1, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.wav", "file.txt", "folder"]
    assert not list((tmp_path / "folder").iterdir())


# ---- odd samples ----


def test_samples_beyond_full_scale_are_clipped_in_predict_as_in_training(tmp_path, loaded, caplog):
    wave = chirps(2.0, 16000, amplitude=4.0)
    sf.write(tmp_path / "loud.wav", wave, 16000, subtype="FLOAT")
    sf.write(tmp_path / "clipped.wav", np.clip(wave, -1, 1), 16000, subtype="FLOAT")
    predictor = predict.Predictor(loaded, torch.device("cpu"))
    with caplog.at_level(logging.WARNING):
        loud = predictor.predict_file(tmp_path / "loud.wav")
    clipped = predictor.predict_file(tmp_path / "clipped.wav")
    np.testing.assert_allclose(loud.probabilities, clipped.probabilities, atol=1e-6)
    count = int(np.count_nonzero(np.abs(wave) > 1))
    assert caplog.text.count("beyond full scale") == 1 and f"{count} samples beyond full scale" in caplog.text


def test_nan_samples_zero_their_windows_not_the_whole_file(tmp_path, model_dir, caplog, capsys):
    wave = chirps(4.0, 16000)
    wave[40000:40100] = np.nan  # in the third 1 s window
    sf.write(tmp_path / "nan.wav", wave, 16000, subtype="FLOAT")
    sf.write(tmp_path / "allnan.wav", np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    clean = wave.copy()
    clean[40000:40100] = 0
    sf.write(tmp_path / "zeroed.wav", clean, 16000, subtype="FLOAT")
    out = tmp_path / "preds.csv"
    with caplog.at_level(logging.WARNING):
        assert run_cli(model_dir, "--audio", str(tmp_path), "--out", str(out)) == 0
    assert capsys.readouterr().out.strip() == "predicted_files=2 skipped_files=1 windows=8"
    rows = {row["row_id"]: row for row in read_rows(out)}
    assert [row_id for row_id in rows if row_id.startswith("nan_")] == ["nan_1", "nan_2", "nan_3", "nan_4"]
    for end in range(1, 5):
        assert rows[f"nan_{end}"] == {**rows[f"zeroed_{end}"], "row_id": f"nan_{end}"}
    assert "100 non-finite samples (NaN or infinity) at 2.50-2.51 s set to 0" in caplog.text
    assert "windows with zeroed samples: nan_3" in caplog.text
    assert "Skipping" in caplog.text and "allnan.wav: every sample is non-finite" in caplog.text


# ---- prepare ----


def test_prepare_refuses_an_output_that_is_a_file_in_one_line(tmp_path, small_dataset, capsys):
    (tmp_path / "cache").write_text("not a folder")
    code = prepare_cli.main(["--input", str(small_dataset), "--output", str(tmp_path / "cache"), "--workers", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output {tmp_path / 'cache'} is an existing file, not a folder;")
    assert err.count("\n") == 1
    code = prepare_cli.main(["--input", str(small_dataset), "--output", str(tmp_path / "cache" / "x")])
    assert code == 1 and "is a file, so the folder cannot be created" in capsys.readouterr().err


@pytest.fixture
def small_dataset(tmp_path):
    return make_dataset(tmp_path / "data", species=2, recordings_per_species=2, seconds=(1.0, 2.0), seed=1)


def test_prepare_converts_in_blocks_into_the_same_array(tmp_path, monkeypatch):
    """prepare decoded whole files (7.1 GB per worker for an hour of 48 kHz stereo)."""
    source = tmp_path / "long.wav"
    sf.write(source, np.stack([chirps(65.0, 8000), chirps(65.0, 8000, seed=1)], axis=1), 8000)
    expected, _ = audio.to_pcm16(audio.decode(source, 16000))
    reads = []
    original = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    entry = cache.convert_recording(source, tmp_path / "x.npy", 16000)
    array = np.load(tmp_path / "x.npy")
    assert entry == {"samples": 65 * 16000, "clipped": 0} and array.shape == (65 * 16000,) and array.dtype == np.int16
    np.testing.assert_array_equal(array, expected)
    assert len(reads) >= 2 and all(0 < frames <= 60 * 8000 for frames in reads)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["long.wav", "x.npy"]  # no temporary left


# ---- reading ahead ----


def test_the_prefetcher_reads_ahead_in_order_and_hands_each_error_to_its_recording(tmp_path):
    paths = []
    for index, seconds in enumerate((2.5, 0.0, 1.2, 3.0)):
        path = tmp_path / f"r{index}.wav"
        if seconds:
            sf.write(path, chirps(seconds, 8000, seed=index), 8000)
        else:
            path.write_bytes(b"not audio at all" * 10)
        paths.append(path)
    inputs = [predict.AudioInput(path) for path in paths]
    with predict.Prefetcher(inputs, 16000, block_seconds=1.0, depth=2) as prefetcher:
        results = []
        for index, (found, blocks, report) in enumerate(prefetcher.streams()):
            assert found.path == paths[index]
            if index == 3:
                next(iter(blocks))  # abandoned after one block: the rest is skipped, nothing hangs
                results.append("abandoned")
                continue
            try:
                streamed = np.concatenate(list(blocks))
            except audio.AudioReadError as error:
                results.append(str(error))
                continue
            np.testing.assert_array_equal(streamed, audio.decode(paths[index], 16000))
            assert report.samples == len(streamed)
            results.append(len(streamed))
    assert results[0] == 40000 and results[2] == 19200 and results[3] == "abandoned"
    assert results[1].startswith("decoding failed")
    assert not prefetcher.thread.is_alive()


def test_a_prefetcher_left_early_stops_its_thread(tmp_path):
    sf.write(tmp_path / "long.wav", chirps(30.0, 8000), 8000)
    inputs = [predict.AudioInput(tmp_path / "long.wav")] * 3
    with predict.Prefetcher(inputs, 16000, block_seconds=0.5, depth=1) as prefetcher:
        next(prefetcher.streams())
    assert not prefetcher.thread.is_alive()
