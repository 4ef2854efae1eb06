"""Pseudo-label rounds end to end: a kill -9 in the middle of round 2, and two processes sharing the soundscapes."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from birdsed.data.synthetic import make_dataset, make_soundscapes
from birdsed.training.checkpoint import list_checkpoints
from birdsed_launch import local_job
from conftest import FAST_HYPERPARAMETERS, REPO_ROOT, free_port
from test_distributed import toolkit_env
from test_resume import FAULT_RUNNER, assert_same_weights

pytestmark = pytest.mark.slow

# 1 focal epoch, then 2 rounds of 1 epoch, 4 optimizer steps each (3 species, 15 training recordings,
# batches of 4): round 2 is steps 9-12. Threshold 0 keeps every window, so every round trains on
# pseudo-labelled windows.
ROUND_HYPERPARAMETERS = {
    **FAST_HYPERPARAMETERS,
    "epochs": 1,
    "pseudo_rounds": 2,
    "pseudo_epochs": 1,
    "pseudo_threshold": 0.0,
    "batch_size": 4,
    "seed": 9,
    "select_metric": "val_soundscape_auc",
}
TRAIN_PY = REPO_ROOT / "code" / "train.py"
WINDOWS = 10  # 2 unlabelled recordings of 15 s, in 3 s windows
EPOCH_LINE = re.compile(
    r"epoch=\d+ train_loss=\S+ val_loss=\S+ val_cmap=\S+ val_auc=\S+ lr=\S+ "
    r"val_soundscape_auc=[\d.]+ val_soundscape_cmap=[\d.]+ round=(\d)"
)


@pytest.fixture(scope="module")
def channels(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("soundscapes")
    return {
        "train": make_dataset(root / "train", species=3, recordings_per_species=6, seconds=(3.0, 6.0), seed=3),
        "soundscape_validation": make_soundscapes(
            root / "labelled", species=3, files=2, seconds=12, sample_rate=16000, seed=1
        ),
        "soundscapes": make_soundscapes(
            root / "unlabelled", species=3, files=2, seconds=15, sample_rate=16000, seed=2, labelled=False
        ),
    }


def opt_ml(base: Path, channels: dict[str, Path]) -> Path:
    (base / "input" / "data").mkdir(parents=True)
    for name, source in channels.items():
        (base / "input" / "data" / name).symlink_to(source)
    return base


def run(base: Path, *prefix: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base)}
    env.pop("SM_HPS", None)
    arguments = [f"--{key}={value}" for key, value in ROUND_HYPERPARAMETERS.items()]
    return subprocess.run(
        [sys.executable, *prefix, *arguments], env=env, capture_output=True, text=True, check=False, timeout=900
    )


def newest_checkpoint(base: Path) -> dict:
    return torch.load(list_checkpoints(base / "checkpoints")[-1], weights_only=True)


def history(base: Path) -> list[dict]:
    return json.loads((base / "output" / "data" / "metrics.json").read_text())["history"]


def test_a_kill_in_the_middle_of_round_2_resumes_in_round_2_with_the_same_pseudo_labels(tmp_path, channels):
    reference = opt_ml(tmp_path / "uninterrupted", channels)
    completed = run(reference, str(TRAIN_PY))
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-3000:]
    output = completed.stdout
    rounds = [int(match.group(1)) for match in map(EPOCH_LINE.fullmatch, output.splitlines()) if match]
    assert rounds == [0, 1, 2], output[-4000:]
    for number in (1, 2):
        assert re.search(rf"^round={number} pseudo_windows={WINDOWS} kept={WINDOWS} mean_confidence=0\.\d+$",
                         output, re.MULTILINE), output[-4000:]  # fmt: skip
    assert newest_checkpoint(reference)["progress"]["step"] == 12
    assert [record["round"] for record in history(reference)] == [0, 1, 2]
    # The model is the best epoch of every round (not of the last round), with that epoch's weights.
    best = max(history(reference), key=lambda record: record["val_soundscape_auc"])
    metrics = json.loads((reference / "output" / "data" / "metrics.json").read_text())
    assert (metrics["best"]["epoch"], metrics["best"]["round"]) == (best["epoch"], best["round"])
    assert_same_weights(
        torch.load(reference / "model" / "model.pt", weights_only=True),
        torch.load(reference / "checkpoints" / "best_model_all_rounds.pt", weights_only=True),
    )

    base = opt_ml(tmp_path / "killed", channels)
    killed = run(base, str(FAULT_RUNNER), "--kill-after-step", "10")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    saved = newest_checkpoint(base)  # written when round 2 started, pseudo-labels and all
    assert (saved["progress"]["round"], saved["progress"]["step"], saved["progress"]["epoch"]) == (2, 8, 2)
    assert saved["pseudo_labels"]["round"] == 2 and len(saved["pseudo_labels"]["starts"]) == WINDOWS

    restarted = run(base, str(TRAIN_PY))
    assert restarted.returncode == 0, restarted.stdout[-4000:] + restarted.stderr[-3000:]
    assert f"Resumed in round=2 with its {WINDOWS} pseudo-labelled windows" in restarted.stdout
    assert "pseudo_windows=" not in restarted.stdout  # the saved pseudo-labels, not predicted again
    assert_same_weights(newest_checkpoint(base)["model"], newest_checkpoint(reference)["model"])
    assert_same_weights(
        torch.load(base / "model" / "model.pt", weights_only=True),
        torch.load(reference / "model" / "model.pt", weights_only=True),
    )
    for mine, theirs in zip(history(base), history(reference), strict=True):
        assert (mine["epoch"], mine["round"]) == (theirs["epoch"], theirs["round"])
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-6)
        assert mine["val_soundscape_auc"] == pytest.approx(theirs["val_soundscape_auc"], abs=1e-6)
    for number in (1, 2):
        name = f"pseudo_labels_round{number}.csv"
        assert (base / "output" / "data" / name).read_text() == (reference / "output" / "data" / name).read_text()


def test_two_processes_share_the_soundscapes_and_gather_every_window(tmp_path, channels):
    base = tmp_path / "job"
    # With a weight average too: its batch-norm statistics are shared for scoring and it restarts at the round.
    hyperparameters = {
        **ROUND_HYPERPARAMETERS, "pseudo_rounds": 1, "pseudo_epochs": 1, "nproc_per_node": 2, "ema_decay": 0.9
    }  # fmt: skip
    local_job.layout(base, channels, hyperparameters)
    completed = subprocess.run(
        local_job.toolkit_train_command(), env=toolkit_env(base, free_port()), capture_output=True, text=True,
        check=False, timeout=900,
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert "world_size=2" in output and output.count("Model written to") == 1
    assert f"round=1 pseudo_windows={WINDOWS} kept={WINDOWS}" in output
    assert [int(match.group(1)) for match in map(EPOCH_LINE.fullmatch, output.splitlines()) if match] == [0, 1]
    with open(base / "output" / "data" / "pseudo_labels_round1.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Each process predicted one of the two recordings; gathered, every window is there once, in order.
    windows = [(row["filename"], float(row["start"])) for row in rows]
    files = sorted({name for name, _ in windows})
    assert windows == [(name, float(start)) for name in files for start in range(0, 15, 3)]
    assert files == ["site0/SC0002_000.ogg", "site1/SC0002_001.flac"]
