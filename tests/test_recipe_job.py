"""End to end through the toolkit: a job logs its chance levels, selection metric and baseline, keeps them in
metrics.json and the plot, and warns at the end when the model does not beat the baseline."""

import json
import re

import pytest

from birdsed_launch import local_job
from conftest import FAST_HYPERPARAMETERS

pytestmark = pytest.mark.slow


def test_a_job_that_has_not_learned_says_so_against_its_baseline_and_chance(tmp_path, synthetic_dataset):
    local_job.layout(tmp_path, {"train": synthetic_dataset}, {**FAST_HYPERPARAMETERS, "epochs": 1, "max_steps": 1})
    completed = local_job.run_toolkit(tmp_path, capture_output=True, text=True)
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-3000:]

    # Each reference is logged once, before training, in key=value form.
    assert len(re.findall(r"chance_val_cmap=[\d.]+ chance_val_auc=[\d.]+ \(random scores", log)) == 1
    assert len(re.findall(r"select_metric=val_auc \(auto: random scores reach val_cmap=", log)) == 1
    # A validation set this small ranks epochs by luck: the model is the last epoch's, and the log says why.
    assert len(re.findall(r"select_epoch=last \(auto: random scores move val_auc by 0\.\d+ \(sd\)", log)) == 1
    baseline_lines = re.findall(r"baseline_val_auc=([\d.]+) baseline_val_cmap=([\d.]+)", log)
    assert len(baseline_lines) == 1
    baseline_auc = float(baseline_lines[0][0])
    assert baseline_auc > 0.7  # band statistics tell the synthetic species apart

    metrics = json.loads((tmp_path / "output" / "data" / "metrics.json").read_text())
    assert metrics["baseline"]["val_auc"] == pytest.approx(baseline_auc, abs=1e-6)
    assert metrics["chance"]["val_auc"] == pytest.approx(0.5, abs=0.1)
    assert metrics["select_metric"] == "val_auc" and metrics["steps"] == 1
    assert metrics["select_epoch"] == "last" and "luckiest" in metrics["select_epoch_reason"]
    assert "val_score_std" in metrics["history"][0]
    # One optimizer step has not learned anything: the job says so, in the log and in metrics.json.
    assert any("does not beat the baseline's baseline_val_auc=" in warning for warning in metrics["warnings"])
    assert "does not beat the baseline's baseline_val_auc=" in log
    assert (tmp_path / "output" / "data" / "val_metrics.png").stat().st_size > 0
    assert re.search(r"Model written to .* \(last epoch=1, select_epoch=last: val_cmap=[\d.]+ val_auc=[\d.]+\)", log)
