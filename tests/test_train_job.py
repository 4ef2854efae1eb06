"""End to end: the real sagemaker-training toolkit `train` on a temporary /opt/ml tree."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from birdsed.data import metadata
from birdsed.metrics import padded_cmap
from birdsed_launch import local_job
from conftest import FAST_HYPERPARAMETERS, REPO_ROOT

pytestmark = pytest.mark.slow


def run_job(base, channels, **hyperparameters):
    local_job.layout(base, channels, {**FAST_HYPERPARAMETERS, **hyperparameters})
    return local_job.run_toolkit(base, capture_output=True, text=True)


def chance_cmap(truth, draws=200):
    rng = np.random.default_rng(0)
    return float(np.mean([padded_cmap(truth, rng.random(truth.shape)) for _ in range(draws)]))


def test_toolkit_trains_a_model_that_learns(tmp_path, synthetic_dataset):
    # Augmentation (on by default) trades early fit for generalisation: with it this tiny set needs about
    # twice the epochs (measured: 24 epochs, val_cmap 0.996). This test is about the loop learning fast.
    completed = run_job(tmp_path, {"train": synthetic_dataset}, epochs=12, val_fraction=0.3, seed=5, augment="off")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert (tmp_path / "output" / "success").exists()
    assert not (tmp_path / "output" / "failure").exists()

    lines = [line for line in completed.stdout.splitlines() if line.startswith("epoch=")]
    assert len(lines) == 12
    assert all(
        __import__("re").fullmatch(r"epoch=\d+ train_loss=\S+ val_loss=\S+ val_cmap=\S+ val_auc=\S+ lr=\S+", line)
        for line in lines
    )
    labels = json.loads((tmp_path / "model" / "labels.json").read_text())
    assert labels == sorted(metadata.read_metadata(synthetic_dataset)["primary_label"].unique())
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model"]["backbone"] == "test_efficientnet"
    state = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    assert state["head.classifier.weight"].shape[0] == len(labels)

    history = json.loads((tmp_path / "output" / "data" / "metrics.json").read_text())
    best = history["best"]
    frame = metadata.read_metadata(synthetic_dataset)
    _, validation = metadata.split_train_validation(frame, 0.3, seed=5)
    truth = np.eye(len(labels))[[labels.index(label) for label in validation["primary_label"]]]
    chance = chance_cmap(truth)
    print(f"best={best} chance_cmap={chance:.4f}")
    assert best["val_cmap"] > chance + 0.5 * (1 - chance), (best, chance)
    assert best["val_auc"] > 0.9, best
    assert history["history"][-1]["train_loss"] < history["history"][0]["train_loss"]
    assert len(list((tmp_path / "checkpoints").glob("checkpoint-*.pt"))) == 3


@pytest.mark.extended  # test_distributed.py and test_resume_changes.py resume a finished job with more epochs too
def test_restart_resumes_from_the_checkpoint(tmp_path, synthetic_dataset):
    first = run_job(tmp_path, {"train": synthetic_dataset}, epochs=2)
    assert first.returncode == 0, first.stdout[-3000:]
    second = run_job(tmp_path, {"train": synthetic_dataset}, epochs=3)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "Resumed at epoch=3 batch=0" in second.stdout
    assert [line.split()[0] for line in second.stdout.splitlines() if line.startswith("epoch=")] == ["epoch=3"]
    history = json.loads((tmp_path / "output" / "data" / "metrics.json").read_text())["history"]
    assert [record["epoch"] for record in history] == [1, 2, 3]


def test_validation_channel_replaces_the_split_and_chrononet_trains(tmp_path, synthetic_dataset):
    completed = run_job(
        tmp_path,
        {"train": synthetic_dataset, "validation": synthetic_dataset},
        epochs=1,
        head="chrononet",
        gru_hidden=32,
        max_steps=2,
        grad_accum_steps=2,
        amp="off",
    )
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert "validation_recordings=60" in completed.stdout
    history = json.loads((tmp_path / "output" / "data" / "metrics.json").read_text())["history"]
    assert len(history) == 1


@pytest.mark.parametrize(
    ("channels", "hyperparameters", "reason"),
    [
        ({"train": "DATA"}, {"epochs": "ten"}, "Hyperparameter 'epochs' must be an integer; got 'ten'."),
        ({"train": "DATA"}, {"learning_rate": "0.1"}, "Unknown hyperparameter 'learning_rate'."),
        ({"train": "DATA"}, {"backbone": "resnet9000"}, "Unknown backbone 'resnet9000'"),
        ({"train": "DATA"}, {"pretrained": "true"}, "pretrained=true but no weights were found for backbone"),
        ({}, {}, "The required 'train' channel is missing"),
    ],
)
def test_fatal_errors_write_the_reason_and_exit_non_zero(
    tmp_path, synthetic_dataset, channels, hyperparameters, reason
):
    channels = {name: synthetic_dataset for name in channels}
    completed = run_job(tmp_path, channels, **hyperparameters)
    assert completed.returncode != 0
    failure = (tmp_path / "output" / "failure").read_text()
    assert reason in failure
    assert "Traceback" not in failure
    assert not (tmp_path / "model" / "model.pt").exists()


def test_train_py_runs_directly_with_command_line_hyperparameters(tmp_path, synthetic_dataset):
    (tmp_path / "input" / "data").mkdir(parents=True)
    (tmp_path / "input" / "data" / "train").symlink_to(synthetic_dataset)
    args = [f"--{key}={value}" for key, value in FAST_HYPERPARAMETERS.items()]
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "code" / "train.py"), *args, "--epochs", "1", "--max_steps", "1"],
        env={"SAGEMAKER_BASE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert (tmp_path / "model" / "model.pt").exists()
    assert (tmp_path / "output" / "data" / "metrics.json").exists()
