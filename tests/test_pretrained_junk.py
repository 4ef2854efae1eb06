"""Junk in the `pretrained` channel: a user error naming the file and what was expected, never a traceback."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from birdsed.config import from_hyperparameters
from birdsed.errors import DataError
from birdsed.models import weights as pretrained
from birdsed.models.backbone import create_backbone
from birdsed.sm_env import HubSettings
from conftest import FAST_HYPERPARAMETERS

CFG = from_hyperparameters({**FAST_HYPERPARAMETERS, "pretrained": "true"}).model
EXPECTED = "expected the timm weights of 'test_efficientnet': the model.safetensors of the Hugging Face repo timm/"


def resolve_weights(cfg, channel):
    return pretrained.resolve_weights(cfg, channel, HubSettings(offline=True), channel / "checkpoints").path


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def backbone_weights() -> dict[str, torch.Tensor]:
    return timm.create_model("test_efficientnet", num_classes=1000).state_dict()


# (file name, writer, problem) for junk found when the channel is resolved, before any data is read.
UNREADABLE = [
    (
        "model.safetensors",
        lambda p: p.write_text("<html><body>404 Not Found</body></html>"),
        "is not a safetensors file",
    ),
    ("model.safetensors", lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{"), "is not a safetensors file"),
    ("pytorch_model.bin", lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    ("pytorch_model.bin", lambda p: p.write_bytes(b"\x80\x02}q\x00(X\x01"), "is not a PyTorch weights file"),
    ("weights.pth", lambda p: torch.save([1, 2, 3], p), "holds a list, not a state dict of tensors"),
    ("weights.pt", lambda p: torch.save({"w": Payload()}, p), "holds pickled Python objects besides tensors"),
]


@pytest.mark.parametrize(("name", "write", "problem"), UNREADABLE)
def test_an_unreadable_weights_file_is_refused_before_the_data_is_read(tmp_path, name, write, problem):
    write(tmp_path / name)
    with pytest.raises(DataError) as raised:
        resolve_weights(CFG, tmp_path)
    message = str(raised.value)
    assert message.startswith(f"The pretrained weights file {tmp_path / name} {problem}")
    assert EXPECTED in message and "\n" not in message


def test_another_models_weights_are_refused_not_silently_ignored(tmp_path):
    """With the classifier removed timm loads non-strictly: unrelated tensors used to leave a random backbone."""
    save_file({"layer1.0.conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "model.safetensors")
    with pytest.raises(DataError, match=r"holds the weights of another model: only 0 of the backbone's \d+ tensors"):
        create_backbone(CFG, resolve_weights(CFG, tmp_path))


def test_weights_with_the_wrong_shapes_are_refused_in_one_line(tmp_path):
    weights = backbone_weights()
    weights["conv_stem.weight"] = torch.zeros(5, 3, 3, 3)
    torch.save(weights, tmp_path / "pytorch_model.bin")
    with pytest.raises(DataError) as raised:
        create_backbone(CFG, resolve_weights(CFG, tmp_path))
    message = str(raised.value)
    assert "does not fit 'test_efficientnet' (RuntimeError: size mismatch for conv_stem.weight" in message
    assert "\n" not in message


def test_a_training_checkpoint_holding_the_weights_loads(tmp_path):
    weights = backbone_weights()
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 3}, tmp_path / "ckpt.pth")
    backbone = create_backbone(CFG, resolve_weights(CFG, tmp_path))
    torch.testing.assert_close(backbone.conv_stem.weight, weights["conv_stem.weight"])
