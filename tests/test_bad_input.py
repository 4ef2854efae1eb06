"""A catalogue of broken inputs, each with its expected outcome: skip and count, or fail with the reason."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from birdsed.commands import train as train_command
from conftest import FAST_HYPERPARAMETERS

pytestmark = pytest.mark.slow

RATE = 16000
QUICK_JOB = {**FAST_HYPERPARAMETERS, "epochs": 1, "max_steps": 1, "batch_size": 4, "augment": "off"}


@pytest.fixture(autouse=True)
def restore_logging():
    """train_command.main configures the root logger as a job would; give pytest its handlers back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def tone(seconds: float, frequency: float = 1000.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def write_dataset(
    root: Path, files: dict[str, bytes | tuple[np.ndarray, int, str] | None], extra_rows: str = ""
) -> Path:
    """`files`: filename -> audio (samples, rate, subtype), raw bytes, or None (listed but missing)."""
    rows = ["primary_label,secondary_labels,rating,filename"]
    for name, content in files.items():
        path = root / "train_audio" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            samples, rate, subtype = content
            sf.write(path, samples, rate, subtype=subtype)
        rows.append(f"{name.split('/')[0]},[],4,{name}")
    (root / "train_metadata.csv").write_text("\n".join(rows) + "\n" + extra_rows)
    return root


def good_files(count: int = 4) -> dict[str, tuple[np.ndarray, int, str]]:
    return {
        f"{label}/good{n}.wav": (tone(3.0, 600 + 900 * i), RATE, "PCM_16")
        for i, label in enumerate(("aaa1", "bbb1"))
        for n in range(count)
    }


def truncated(samples: np.ndarray, suffix: str, subtype: str, tmp: Path) -> bytes:
    path = tmp / f"whole{suffix}"
    sf.write(path, samples, RATE, subtype=subtype)
    data = path.read_bytes()
    return data[: len(data) // 2]


def run_job(base: Path, channels: dict[str, Path], **hyperparameters) -> int:
    (base / "input" / "data").mkdir(parents=True, exist_ok=True)
    for name, source in channels.items():
        (base / "input" / "data" / name).symlink_to(source)
    argv = [f"--{key}={value}" for key, value in {**QUICK_JOB, **hyperparameters}.items()]
    # In-process: the job reads this mapping, not os.environ; no Hugging Face Hub is asked.
    return train_command.main({"SAGEMAKER_BASE_DIR": str(base), "HF_HUB_OFFLINE": "1"}, argv)


def failure(base: Path) -> str:
    return (base / "output" / "failure").read_text()


def test_unusable_recordings_are_skipped_named_and_counted_and_odd_ones_used(tmp_path, capsys):
    nan_start = tone(3.0)
    nan_start[10] = np.nan
    nan_middle = tone(3.0)
    nan_middle[RATE + 5] = np.inf
    broken = {
        "aaa1/missing.wav": None,
        "aaa1/empty.ogg": b"",
        "aaa1/not_audio.ogg": b"<html>404 Not Found</html>" * 50,
        "aaa1/truncated.flac": truncated(tone(4.0), ".flac", "PCM_16", tmp_path),
        "bbb1/nan_start.wav": (nan_start, RATE, "FLOAT"),
        "bbb1/nan_middle.wav": (nan_middle, RATE, "FLOAT"),  # found by audio_check=full only
    }
    odd = {
        "aaa1/stereo48k.wav": (np.stack([tone(2.0, 800, 48000)] * 2, axis=1), 48000, "PCM_16"),
        "aaa1/narrow8k.flac": (tone(2.0, 700, 8000), 8000, "PCM_16"),
        "bbb1/very_short.ogg": (tone(0.2, 2500), RATE, "VORBIS"),
        "bbb1/silent.wav": (np.zeros(RATE * 2, np.float32), RATE, "PCM_16"),
        "bbb1/song.mp3": (tone(3.0, 2000, 44100), 44100, "MPEG_LAYER_III"),
        "bbb1/truncated.wav": truncated(tone(4.0, 2100), ".wav", "PCM_16", tmp_path),  # keeps its readable half
    }
    data = write_dataset(tmp_path / "data", {**good_files(), **broken, **odd})

    assert run_job(tmp_path / "quick", {"train": data}, max_skipped_fraction=0.5) == 0
    quick = capsys.readouterr().out
    assert "skipped_files=5 usable_files=15" in quick
    for name, reason in [("missing.wav", "file not found"), ("empty.ogg", "empty file"),
                         ("not_audio.ogg", "not readable audio"), ("truncated.flac", "decoding failed"),
                         ("nan_start.wav", "non-finite samples")]:  # fmt: skip
        assert len(re.findall(rf"Skipping \S*{re.escape(name)}: {reason}", quick)) == 1, name

    assert run_job(tmp_path / "full", {"train": data}, max_skipped_fraction=0.5, audio_check="full") == 0
    full = capsys.readouterr().out
    assert "audio_check=full skipped_files=6 usable_files=14" in full
    assert re.search(r"Skipping \S*nan_middle.wav: non-finite samples \(NaN or infinity\) near 0.0 s", full)
    for name in odd:
        assert f"Skipping {data / 'train_audio' / name}" not in full


def test_too_many_unusable_recordings_stop_the_job_before_training(tmp_path):
    files = {**good_files(2), "aaa1/bad1.ogg": b"x" * 100, "bbb1/bad2.ogg": b"", "bbb1/bad3.wav": None}
    data = write_dataset(tmp_path / "data", files)
    assert run_job(tmp_path / "job", {"train": data}) == train_command.EXIT_USER_ERROR
    reason = failure(tmp_path / "job")
    assert "3 of the 7 recordings in the 'train' channel (43%) could not be used" in reason
    assert "max_skipped_fraction=0.1" in reason
    assert not (tmp_path / "job" / "checkpoints").exists()


def dataset_variants(tmp_path: Path) -> dict[str, Path]:
    good = write_dataset(tmp_path / "good", good_files(2))
    variants = {"good": good}
    for name, text in {
        "no_csv": None,
        "missing_column": "primary_label,rating,filename\naaa1,4,aaa1/good0.wav\n",
        "no_rows": "primary_label,secondary_labels,rating,filename\n",
        "binary_csv": "\x00\x01\x02\xff\xfe",
    }.items():
        root = tmp_path / name
        shutil.copytree(good / "train_audio", root / "train_audio")
        if text is not None:
            (root / "train_metadata.csv").write_bytes(text.encode("latin-1"))
        variants[name] = root
    variants["nothing_readable"] = write_dataset(tmp_path / "unreadable", {"aaa1/a.ogg": b"", "bbb1/b.ogg": None})
    for name, content in {"html_weights": b"<html>404</html>", "empty_weights": b""}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / ("model.safetensors" if name == "html_weights" else "pytorch_model.bin")).write_bytes(
            content
        )
        variants[name] = tmp_path / name
    variants["unknown_labels"] = write_dataset(tmp_path / "val", {"zzz9/z.wav": (tone(3.0), RATE, "PCM_16")})
    return variants


AUTO = {"pretrained": "auto"}  # QUICK_JOB looks for no weights
FATAL = [
    ({}, {}, "The required 'train' channel is missing"),
    ({"train": "no_csv"}, {}, "train_metadata.csv is missing"),
    ({"train": "missing_column"}, {}, "lacks the required column(s) secondary_labels"),
    ({"train": "no_rows"}, {}, "has no rows: there is nothing to train on"),
    ({"train": "binary_csv"}, {}, "train_metadata.csv"),
    ({"train": "nothing_readable"}, {"max_skipped_fraction": 1}, "None of the 2 recordings"),
    ({"train": "good"}, {"learning_rate": "0.1"}, "Unknown hyperparameter 'learning_rate'"),
    ({"train": "good"}, {"epochs": "many"}, "Hyperparameter 'epochs' must be an integer; got 'many'"),
    ({"train": "good"}, {"val_fraction": "2"}, "Hyperparameter 'val_fraction' must be at most 0.9"),
    ({"train": "good"}, {"backbone": "efficientnet_b42"}, "Unknown backbone 'efficientnet_b42'"),
    ({"train": "good"}, {"pretrained": "true"}, "pretrained=true but no weights were found for backbone"),
    ({"train": "good", "validation": "unknown_labels"}, {}, "primary label(s) that training does not: zzz9"),
    ({"train": "good", "pretrained": "html_weights"}, AUTO, "model.safetensors is not a safetensors file"),
    ({"train": "good", "pretrained": "empty_weights"}, AUTO, "pytorch_model.bin is empty (0 bytes); expected the timm"),
    ({"train": "good"}, {"nproc_per_node": 64}, "nproc_per_node=64 but this host has"),
]


@pytest.mark.parametrize(("channels", "hyperparameters", "reason"), FATAL)
def test_fatal_problems_end_fast_with_a_reason(tmp_path, channels, hyperparameters, reason):
    variants = dataset_variants(tmp_path / "variants")
    base = tmp_path / "job"
    code = run_job(base, {name: variants[key] for name, key in channels.items()}, **hyperparameters)
    assert code == train_command.EXIT_USER_ERROR
    text = failure(base)
    assert reason in text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1  # one paragraph
    assert not (base / "checkpoints").exists() and not (base / "model").exists()
