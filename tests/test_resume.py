"""Never lose a run: exact resume after kill -9, SIGTERM mid-epoch, corrupt checkpoints, divergence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from birdsed.training.checkpoint import list_checkpoints
from birdsed_launch import local_job
from conftest import FAST_HYPERPARAMETERS, REPO_ROOT

pytestmark = pytest.mark.slow

# 3 epochs of 4 optimizer steps (54 training recordings, batches of 8, 2 micro-batches per step).
RESUME_HYPERPARAMETERS = {**FAST_HYPERPARAMETERS, "epochs": 3, "batch_size": 8, "grad_accum_steps": 2, "seed": 9}
STEPS_PER_EPOCH = 4
TRAIN_PY = REPO_ROOT / "code" / "train.py"
FAULT_RUNNER = Path(__file__).with_name("fault_runner.py")


def opt_ml(base: Path, dataset: Path) -> Path:
    (base / "input" / "data").mkdir(parents=True)
    (base / "input" / "data" / "train").symlink_to(dataset)
    return base


def arguments(**overrides) -> list[str]:
    return [f"--{key}={value}" for key, value in {**RESUME_HYPERPARAMETERS, **overrides}.items()]


def run(base: Path, *prefix: str, **overrides) -> subprocess.CompletedProcess:
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base)}
    env.pop("SM_HPS", None)
    command = [sys.executable, *prefix, *arguments(**overrides)]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=600)


def final_weights(base: Path) -> dict[str, torch.Tensor]:
    newest = list_checkpoints(base / "checkpoints")[-1]
    return torch.load(newest, weights_only=True)["model"]


def assert_same_weights(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for name in left:
        torch.testing.assert_close(left[name], right[name], atol=1e-5, rtol=0, msg=name)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, synthetic_dataset) -> Path:
    base = opt_ml(tmp_path_factory.mktemp("uninterrupted"), synthetic_dataset)
    completed = run(base, str(TRAIN_PY))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    state = torch.load(list_checkpoints(base / "checkpoints")[-1], weights_only=True)
    assert state["progress"]["step"] == 3 * STEPS_PER_EPOCH
    return base


@pytest.mark.parametrize(
    ("fault", "value"),
    [
        ("--kill-after-step", 2),  # in the middle of epoch 1, before any checkpoint
        # in the middle of epoch 2: a mid-epoch resume from a checkpoint, which the SIGTERM test also covers
        pytest.param("--kill-after-step", 6, marks=pytest.mark.extended),
        ("--kill-in-checkpoint-write", 2),  # half-way through writing epoch 2's checkpoint
    ],
)
def test_kill_9_then_restart_ends_with_the_uninterrupted_weights(
    tmp_path, synthetic_dataset, uninterrupted, fault, value
):
    base = opt_ml(tmp_path, synthetic_dataset)
    killed = run(base, str(FAULT_RUNNER), fault, str(value))
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert not (base / "model" / "model.pt").exists()
    restarted = run(base, str(TRAIN_PY))
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
    assert_same_weights(final_weights(base), final_weights(uninterrupted))
    assert_same_weights(
        torch.load(base / "model" / "model.pt", weights_only=True),
        torch.load(uninterrupted / "model" / "model.pt", weights_only=True),
    )
    history = json.loads((base / "output" / "data" / "metrics.json").read_text())["history"]
    reference = json.loads((uninterrupted / "output" / "data" / "metrics.json").read_text())["history"]
    assert [record["epoch"] for record in history] == [1, 2, 3]
    for mine, theirs in zip(history, reference, strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-6)
        assert mine["val_cmap"] == pytest.approx(theirs["val_cmap"], abs=1e-6)
    assert not list((base / "checkpoints").glob(".*tmp*"))


def start_toolkit_job(base: Path, dataset: Path) -> subprocess.Popen:
    local_job.layout(base, {"train": dataset}, {**RESUME_HYPERPARAMETERS, "epochs": 6})
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_PROGRAM": "train.py"}
    env.pop("SM_HPS", None)
    return subprocess.Popen(
        local_job.toolkit_train_command(),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def training_process(toolkit: subprocess.Popen) -> psutil.Process:
    for child in psutil.Process(toolkit.pid).children(recursive=True):
        if any(part.endswith("train.py") for part in child.cmdline()):
            return child
    raise AssertionError("the toolkit has not started train.py")


def test_sigterm_saves_a_mid_epoch_checkpoint_fast_and_resume_is_exact(tmp_path, synthetic_dataset):
    """SIGTERM to the training process (what the image's entrypoint forwards from `docker stop`)."""
    base = tmp_path / "stopped"
    toolkit = start_toolkit_job(base, synthetic_dataset)
    output = []
    for line in toolkit.stdout:
        output.append(line)
        if line.startswith("epoch=1 "):
            break
    time.sleep(1.0)  # somewhere inside epoch 2
    sent = time.monotonic()
    training_process(toolkit).send_signal(signal.SIGTERM)
    output.extend(toolkit.stdout)
    toolkit.wait(timeout=60)
    elapsed = time.monotonic() - sent
    text = "".join(output)
    assert elapsed < 30, text[-3000:]
    assert toolkit.returncode != 0
    failure = (base / "output" / "failure").read_text()
    assert "stopped by SIGTERM" in failure and "resumes from there" in failure
    assert not (base / "model" / "model.pt").exists()
    saved = torch.load(list_checkpoints(base / "checkpoints")[-1], weights_only=True)["progress"]
    assert saved["epoch"] >= 1 and saved["step"] > STEPS_PER_EPOCH

    (base / "output" / "failure").unlink()
    restarted = local_job.run_toolkit(base, capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stdout[-3000:]
    assert f"Resumed at epoch={saved['epoch'] + 1} batch={saved['batches_done']}" in restarted.stdout

    reference = tmp_path / "reference"
    local_job.layout(reference, {"train": synthetic_dataset}, {**RESUME_HYPERPARAMETERS, "epochs": 6})
    assert local_job.run_toolkit(reference, capture_output=True, text=True).returncode == 0
    assert_same_weights(final_weights(base), final_weights(reference))


def test_a_corrupt_newest_checkpoint_is_reported_and_the_previous_used(tmp_path, synthetic_dataset, uninterrupted):
    base = opt_ml(tmp_path, synthetic_dataset)
    assert run(base, str(TRAIN_PY), epochs=2).returncode == 0
    newest = list_checkpoints(base / "checkpoints")[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    restarted = run(base, str(TRAIN_PY))
    assert restarted.returncode == 0, restarted.stdout[-3000:]
    assert f"Checkpoint {newest.name} is unreadable" in restarted.stdout
    assert "Resumed at epoch=2 batch=0" in restarted.stdout
    assert_same_weights(final_weights(base), final_weights(uninterrupted))


def test_persistent_non_finite_losses_stop_the_job_without_a_model(tmp_path, synthetic_dataset):
    base = opt_ml(tmp_path, synthetic_dataset)
    completed = run(base, str(FAULT_RUNNER), "--nan-loss-from-step", "5", nonfinite_patience=3)
    assert completed.returncode == 1, completed.stdout[-3000:]
    assert completed.stdout.count("Skipped optimizer step") == 3
    failure = (base / "output" / "failure").read_text()
    assert "Training diverged" in failure and "3 consecutive optimizer steps" in failure
    assert not (base / "model" / "model.pt").exists()
