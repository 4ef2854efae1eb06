"""pretrained=auto|true through the real sagemaker-training toolkit, against a stand-in Hub on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
import torch

from birdsed_launch import local_job
from conftest import FAST_HYPERPARAMETERS
from hub_server import COMMIT, SilentHub, serve_weights, timm_weights

pytestmark = pytest.mark.slow

REPO = "timm/test_efficientnet.r160_in1k"  # timm's Hub repository of test_efficientnet's default weights


def run_job(base, data, env, **hyperparameters):
    local_job.layout(base, {"train": data}, {**FAST_HYPERPARAMETERS, "epochs": 1, **hyperparameters})
    return local_job.run_toolkit(base, env, capture_output=True, text=True)


def test_the_job_starts_from_the_hubs_tensors_and_records_where_they_came_from(tmp_path, synthetic_dataset):
    served = timm_weights("test_efficientnet", seed=5)
    with serve_weights(REPO, served) as hub:
        # The one epoch trains the head alone: the backbone must still be exactly the served tensors.
        job = run_job(tmp_path, synthetic_dataset, {"HF_ENDPOINT": hub.url}, pretrained="true", freeze_backbone_epochs=1)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert len(hub.downloads()) == 1
    summary = f"hub:{REPO}@{COMMIT}"
    assert [line for line in job.stdout.splitlines() if "weights=" in line][0].endswith(f"weights={summary}")
    model = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    backbone = {name.removeprefix("backbone."): t for name, t in model.items() if name.startswith("backbone.")}
    assert backbone and backbone.keys() <= served.keys()
    for name, tensor in backbone.items():
        torch.testing.assert_close(tensor, served[name], rtol=0, atol=0, msg=name)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["weights"] == summary
    assert json.loads((tmp_path / "output" / "data" / "metrics.json").read_text())["weights"] == summary
    kept = tmp_path / "checkpoints" / "hub-weights" / REPO / COMMIT / "model.safetensors"
    assert kept.is_file()  # uploaded with the checkpoints: a spot restart starts from it without the Hub


def test_a_silent_hub_means_random_weights_soon_and_true_fails_in_one_line(tmp_path, synthetic_dataset):
    with SilentHub() as silent:
        env = {"HF_ENDPOINT": silent.url, "HF_HUB_ETAG_TIMEOUT": "1"}  # 3 tries of 1 s instead of 25 s of waiting
        job = run_job(tmp_path / "auto", synthetic_dataset, env, pretrained="auto")
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "weights=random" in job.stdout
        assert "did not answer within 25 s (3 tries; last: ReadTimeout" in job.stdout + job.stderr
        assert "RANDOM initialisation" in job.stdout + job.stderr and "--pretrained hub" in job.stdout + job.stderr
        metrics = json.loads((tmp_path / "auto" / "output" / "data" / "metrics.json").read_text())
        assert metrics["weights"] == "random"

        failed = run_job(tmp_path / "true", synthetic_dataset, env, pretrained="true")
    assert failed.returncode != 0
    failure = (tmp_path / "true" / "output" / "failure").read_text().strip()
    assert failure.startswith("pretrained=true but no weights were found for backbone 'test_efficientnet'")
    assert "\n" not in failure and "did not answer" in failure
    assert not (tmp_path / "true" / "model" / "model.pt").exists()
