"""The exported model: same probabilities as the eager model, any batch size; a failed export is reported."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from birdsed import export
from birdsed.config import from_hyperparameters
from birdsed.models import create_model
from conftest import FAST_HYPERPARAMETERS

LABELS = ["aaa1", "bbb2", "ccc3", "ddd4"]


@pytest.fixture(scope="module")
def trained_like():
    cfg = from_hyperparameters({**FAST_HYPERPARAMETERS, "duration": 3, "sample_rate": 16000, "pretrained": "false"})
    torch.manual_seed(0)
    return cfg, create_model(cfg, len(LABELS)).state_dict()


def eager_probabilities(cfg, state_dict, waveform):
    model = create_model(cfg, len(LABELS)).eval()
    model.load_state_dict(state_dict)
    with torch.no_grad():
        return torch.sigmoid(model(waveform)["clipwise_logits"])


@pytest.mark.filterwarnings("ignore:The given buffer is not writable")  # inside torch.export.load
def test_export_matches_the_eager_model_for_any_batch_size(tmp_path, trained_like):
    cfg, state_dict = trained_like
    status = export.export_model_dir(tmp_path, state_dict, LABELS, cfg)
    assert status["status"] == "ok", status
    assert status["input_samples"] == 48000 and status["sample_rate"] == 16000
    json.dumps(status)  # it goes into metrics.json
    program = torch.export.load(tmp_path / export.EXPORT_FILE).module()
    for batch in (1, 5):
        waveform = torch.randn(batch, status["input_samples"])
        with torch.no_grad():
            exported = program(waveform)
        assert exported.shape == (batch, len(LABELS))
        torch.testing.assert_close(exported, eager_probabilities(cfg, state_dict, waveform), atol=1e-4, rtol=0)


def test_a_failed_export_is_logged_and_reported_not_raised(tmp_path, trained_like, monkeypatch, caplog):
    cfg, state_dict = trained_like

    def unsupported(model, samples):
        raise RuntimeError("unsupported operator aten::imaginary")

    monkeypatch.setattr(export, "export_program", unsupported)
    with caplog.at_level(logging.WARNING, logger="birdsed.export"):
        status = export.export_model_dir(tmp_path, state_dict, LABELS, cfg)
    assert status == {"status": "failed", "reason": "RuntimeError: unsupported operator aten::imaginary"}
    assert "model.pt is still complete" in caplog.text and "aten::imaginary" in caplog.text
    assert not (tmp_path / export.EXPORT_FILE).exists()
    assert not list(tmp_path.iterdir())
