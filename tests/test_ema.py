"""ema_decay: the averaged weights are what is validated, selected, kept and resumed, exactly."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from birdsed.config import from_hyperparameters
from birdsed.models import create_model
from birdsed.training import ema
from birdsed.training.checkpoint import list_checkpoints, load_epoch_checkpoint
from test_resume import FAULT_RUNNER, STEPS_PER_EPOCH, TRAIN_PY, assert_same_weights, opt_ml, run

SMALL = {"backbone": "test_efficientnet", "sample_rate": 16000, "fmax": 8000, "n_mels": 32, "n_fft": 512}
EMA = {"ema_decay": 0.9}


def test_no_average_without_ema_decay():
    model = create_model(from_hyperparameters(SMALL), 3)
    assert ema.create_ema(model, 0.0) is None


def test_the_average_of_a_compiled_model_runs_its_own_weights_not_the_models():
    torch.manual_seed(0)
    model = create_model(from_hyperparameters({**SMALL, "hop_length": 128, "duration": 1}), 3).eval()
    model.compile_core(backend="eager")
    average = ema.create_ema(model, 0.9)
    waveform = torch.randn(2, 16000)
    with torch.no_grad():
        before = average.module(waveform)["clipwise_logits"]
        for parameter in model.parameters():
            parameter.add_(0.5)
        assert not torch.allclose(model(waveform)["clipwise_logits"], before)
        torch.testing.assert_close(average.module(waveform)["clipwise_logits"], before)


def test_the_average_follows_timms_warmed_up_decay():
    model = torch.nn.Linear(2, 1)
    average = ema.create_ema(model, 0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
        average.update(model, step=1)  # the first update copies
        torch.testing.assert_close(average.module.weight, model.weight)
        model.weight.fill_(3.0)
        average.update(model, step=2)  # decay 1 - 2^-0.75 = 0.405
        expected = 0.4054 * 1.0 + 0.5946 * 3.0
        assert average.module.weight.flatten().tolist() == pytest.approx([expected] * 2, abs=1e-3)
    ema.reset(average, {"weight": torch.zeros(1, 2), "bias": torch.zeros(1)})
    assert average.module.weight.abs().sum() == 0


@pytest.mark.slow
def test_a_job_keeps_the_averaged_weights_and_resumes_them_exactly(tmp_path, synthetic_dataset):
    uninterrupted = opt_ml(tmp_path / "uninterrupted", synthetic_dataset)
    completed = run(uninterrupted, str(TRAIN_PY), **EMA)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    metrics = json.loads((uninterrupted / "output" / "data" / "metrics.json").read_text())
    best_epoch = metrics["best"]["epoch"]
    _, best_state = load_epoch_checkpoint(uninterrupted / "checkpoints", best_epoch)
    delivered = torch.load(uninterrupted / "model" / "model.pt", weights_only=True)
    assert_same_weights(delivered, best_state["ema"])  # the average of the best epoch, not its raw weights
    raw_differs = any(not torch.equal(delivered[name], best_state["model"][name]) for name in delivered)
    assert raw_differs

    killed = opt_ml(tmp_path / "killed", synthetic_dataset)
    # Mid epoch 2: the average must come back from the epoch-1 checkpoint and continue exactly.
    outcome = run(killed, str(FAULT_RUNNER), "--kill-after-step", str(STEPS_PER_EPOCH + 2), **EMA)
    assert outcome.returncode == -signal.SIGKILL, outcome.stdout[-2000:] + outcome.stderr[-2000:]
    restarted = run(killed, str(TRAIN_PY), **EMA)
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
    mine = torch.load(list_checkpoints(killed / "checkpoints")[-1], weights_only=True)
    reference = torch.load(list_checkpoints(uninterrupted / "checkpoints")[-1], weights_only=True)
    assert_same_weights(mine["ema"], reference["ema"])
    assert_same_weights(mine["model"], reference["model"])
    assert_same_weights(torch.load(killed / "model" / "model.pt", weights_only=True), delivered)
