"""Windowed inference: windows, row ids, events, model dirs and archives, the CLI's error contract.

The model here is an untrained tiny one written straight into a model dir (fast); the trained
model of a real toolkit job is used in test_use_model.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from birdsed import predict
from birdsed.commands import predict as predict_cli
from birdsed.config import from_hyperparameters
from birdsed.models import create_model
from birdsed.training import outputs
from conftest import FAST_HYPERPARAMETERS

LABELS = ["aaa1", "bbb2", "ccc3"]
# Row ids below assume 3 s windows at 16 kHz.
HYPERPARAMETERS = {**FAST_HYPERPARAMETERS, "duration": 3, "sample_rate": 16000, "pretrained": "false"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    cfg = from_hyperparameters(HYPERPARAMETERS)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model")
    outputs.write_model_dir(directory, create_model(cfg, len(LABELS)).state_dict(), LABELS, cfg)
    return directory


def write_tone(path: Path, seconds: float, sample_rate: int, channels: int = 1) -> Path:
    samples = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = (0.3 * np.sin(2 * np.pi * 2000 * samples)).astype(np.float32)
    sf.write(path, np.stack([tone] * channels, axis=1) if channels > 1 else tone, sample_rate)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ---- pure helpers ----


def test_cut_windows_pads_only_the_last_window():
    windows = predict.cut_windows(np.arange(1, 8, dtype=np.float32), 3)
    assert windows.tolist() == [[1, 2, 3], [4, 5, 6], [7, 0, 0]]
    assert predict.cut_windows(np.ones(6, dtype=np.float32), 3).shape == (2, 3)


def test_row_ids_name_the_end_second_of_each_window():
    assert predict.row_ids("soundscape_123", 3, 5.0) == ["soundscape_123_5", "soundscape_123_10", "soundscape_123_15"]
    # Non-integer durations keep milliseconds, so ids stay unique.
    assert predict.row_ids("s", 3, 2.5) == ["s_2.5", "s_5", "s_7.5"]
    assert len(set(predict.row_ids("s", 10, 0.4))) == 10


def test_frame_runs_and_events_merge_across_windows_and_drop_padding():
    assert predict.frame_runs(np.array([False, True, True, False, True])) == [(1, 3), (4, 5)]
    # 2 windows x 4 frames of 1 s; label 0 is on from frame 2 to 5 (across the boundary).
    frames = np.zeros((8, 2))
    frames[2:6, 0] = [0.6, 0.9, 0.7, 0.55]
    frames[7, 1] = 0.99  # in the padding after the end of a 6.5 s recording
    frames[6, 1] = 0.8  # covers 6..7 s, cut at 6.5 s
    events = predict.detect_events("f.wav", frames, 1.0, 6.5, ["a", "b"], threshold=0.5)
    assert events == [predict.Event("f.wav", 2.0, 6.0, "a", 0.9), predict.Event("f.wav", 6.0, 6.5, "b", 0.8)]


def test_find_audio_files_recurses_into_dirs_and_keeps_named_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.wav", "a/b/y.OGG", "a/notes.txt", "z.flac"):
        (tmp_path / name).write_bytes(b"")
    found = predict.find_audio_files([tmp_path / "a", tmp_path / "z.flac", tmp_path / "missing.mp3"])
    assert found == [tmp_path / "a/b/y.OGG", tmp_path / "a/x.wav", tmp_path / "z.flac", tmp_path / "missing.mp3"]


def test_config_round_trips_through_config_json(model_dir):
    sections = json.loads((model_dir / "config.json").read_text())
    cfg = predict.config_from_json(sections, model_dir / "config.json")
    assert cfg.hyperparameters() == from_hyperparameters(HYPERPARAMETERS).hyperparameters()


# ---- model dirs and archives ----


def make_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def test_model_tar_gz_with_files_at_root_or_in_a_folder_loads(tmp_path, model_dir):
    files = {name: (model_dir / name).read_bytes() for name in ("model.pt", "labels.json", "config.json")}
    for prefix in ("", "model/"):
        archive = make_tar(tmp_path / f"m{len(prefix)}.tar.gz", {prefix + name: data for name, data in files.items()})
        with predict.open_model_dir(archive) as directory:
            loaded = predict.load_model(directory, torch.device("cpu"))
        assert loaded.labels == LABELS
        assert not directory.exists()  # the temporary extraction is gone


@pytest.mark.parametrize(
    ("members", "links", "message"),
    [
        ({"../evil.txt": b"x"}, None, "outside the archive"),
        ({"/abs.txt": b"x"}, None, "an absolute path"),
        ({"model.pt": b"x"}, {"labels.json": "/etc/passwd"}, "a link"),
    ],
)
def test_unsafe_archives_are_refused(tmp_path, members, links, message):
    archive = make_tar(tmp_path / "bad.tar.gz", members, links)
    with pytest.raises(predict.ModelDirError, match=message), predict.open_model_dir(archive):
        pass


def test_invalid_model_dirs_name_the_problem(tmp_path, model_dir):
    (tmp_path / "labels.json").write_text("[]")
    with pytest.raises(predict.ModelDirError, match=r"missing model\.pt, config\.json"):
        predict.load_model(tmp_path, torch.device("cpu"))
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "config.json").write_text((model_dir / "config.json").read_text())
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    with pytest.raises(predict.ModelDirError, match=r"model\.pt: cannot load the weights"):
        predict.load_model(tmp_path, torch.device("cpu"))
    (tmp_path / "config.json").write_text('{"model": {"backbone": "test_efficientnet", "epochs_typo": 3}}')
    with pytest.raises(predict.ModelDirError, match="Unknown hyperparameter 'epochs_typo'"):
        predict.load_model(tmp_path, torch.device("cpu"))


# ---- the command line ----


def test_cli_predicts_any_format_and_rate_and_skips_bad_files(tmp_path, model_dir, capsys, caplog):
    audio = tmp_path / "audio"
    (audio / "deeper").mkdir(parents=True)
    write_tone(audio / "stereo_22k.wav", 7.0, 22050, channels=2)  # 3 windows of 3 s, the last padded
    write_tone(audio / "deeper" / "flac_44k.flac", 3.0, 44100)  # exactly one window
    write_tone(audio / "ogg_48k.ogg", 1.2, 48000)  # shorter than a window
    (audio / "broken.mp3").write_bytes(b"ID3 definitely not an mp3 frame")
    (audio / "empty.wav").write_bytes(b"")
    out, events = tmp_path / "out" / "preds.csv", tmp_path / "out" / "events.csv"

    code = predict_cli.main(
        [
            *("--model", str(model_dir), "--audio", str(audio), "--out", str(out), "--events", str(events)),
            *("--event-threshold", "0", "--batch-size", "2", "--quiet"),
        ]
    )

    assert code == 0
    assert capsys.readouterr().out.strip() == "predicted_files=3 skipped_files=2 windows=5"
    assert "broken.mp3" in caplog.text and "empty.wav: empty file" in caplog.text
    rows = read_rows(out)
    assert list(rows[0]) == ["row_id", *LABELS]
    assert [row["row_id"] for row in rows] == [
        "flac_44k_3",
        "ogg_48k_3",
        "stereo_22k_3",
        "stereo_22k_6",
        "stereo_22k_9",
    ]
    assert all(0.0 <= float(row[label]) <= 1.0 for row in rows for label in LABELS)
    # Threshold 0: every label is one event per recording, from 0 to the recording's end.
    ends = {(row["file"], row["label"]): float(row["offset_s"]) for row in read_rows(events)}
    assert list(read_rows(events)[0]) == ["file", "onset_s", "offset_s", "label", "score"]
    assert len(ends) == 9
    assert math.isclose(ends[(str(audio / "stereo_22k.wav"), "aaa1")], 7.0, abs_tol=1e-3)


def test_cli_exits_non_zero_with_a_reason_when_nothing_is_predicted(tmp_path, model_dir, capsys):
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVE broken")
    out = tmp_path / "preds.csv"
    code = predict_cli.main(["--model", str(model_dir), "--audio", str(tmp_path / "bad.wav"), "--out", str(out)])
    assert code == 1
    assert "error: No recording could be predicted (1 skipped" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("model", ["missing_dir", "not_a.tar.gz"])
def test_cli_reports_an_invalid_model_without_a_traceback(tmp_path, capsys, model):
    write_tone(tmp_path / "a.wav", 1.0, 16000)
    (tmp_path / "not_a.tar.gz").write_bytes(b"plain bytes")
    code = predict_cli.main(["--model", str(tmp_path / model), "--audio", str(tmp_path / "a.wav"), "--out", "x.csv"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: --model") and "Traceback" not in err
