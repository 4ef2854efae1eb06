import pytest
import timm
import torch
from safetensors.torch import save_file

from birdsed.config import from_hyperparameters
from birdsed.errors import ConfigError, DataError
from birdsed.models import create_model
from birdsed.models.backbone import create_backbone, find_pretrained_weights
from birdsed.models.heads import AttentionSEDHead, ChronoNetHead
from birdsed.models.weights import RANDOM, resolve_weights
from birdsed.sm_env import HubSettings

SMALL = {
    "backbone": "test_efficientnet",
    "sample_rate": 16000,
    "fmax": 8000,
    "n_mels": 32,
    "n_fft": 512,
    "hop_length": 128,
    "duration": 1,
}


@pytest.mark.parametrize("head", [AttentionSEDHead(16, 5), ChronoNetHead(16, 5, hidden=8)])
def test_heads_name_clipwise_and_framewise_logits(head):
    outputs = head(torch.randn(2, 16, 4, 10))
    assert outputs["clipwise_logits"].shape == (2, 5)
    assert outputs["framewise_logits"].shape == (2, 10, 5)
    torch.testing.assert_close(outputs["attention"].sum(dim=1), torch.ones(2, 5))
    # The clip logit is the attention-weighted mean of frame logits: within their range.
    frames = outputs["framewise_logits"]
    assert (outputs["clipwise_logits"] <= frames.max(dim=1).values + 1e-5).all()
    assert (outputs["clipwise_logits"] >= frames.min(dim=1).values - 1e-5).all()


@pytest.mark.parametrize("head", ["attention", "chrononet"])
def test_every_parameter_gets_a_finite_gradient(head):
    model = create_model(from_hyperparameters({**SMALL, "head": head}), num_classes=4)
    outputs = model(torch.randn(3, 16000) * 0.1)
    (outputs["clipwise_logits"].sum() + outputs["framewise_logits"].sum()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert all(torch.isfinite(value).all() for value in outputs.values())


def test_freeze_backbone_trains_only_the_head_and_keeps_batchnorm_statistics():
    model = create_model(from_hyperparameters({**SMALL, "freeze_backbone": "true"}), num_classes=4)
    model.train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert not model.backbone.training and model.head.training
    running = [b.clone() for name, b in model.backbone.named_buffers() if "running_mean" in name]
    model(torch.randn(2, 16000))
    after = [b for name, b in model.backbone.named_buffers() if "running_mean" in name]
    assert all(torch.equal(x, y) for x, y in zip(running, after, strict=False))


def test_unknown_backbone_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="Unknown backbone 'efficientnet_b99'"):
        create_model(from_hyperparameters({**SMALL, "backbone": "efficientnet_b99"}), num_classes=2)


OFFLINE = HubSettings(offline=True, cache_dir=None)


def test_pretrained_weights_load_from_the_channel(tmp_path):
    source = timm.create_model("test_efficientnet", num_classes=1000)
    save_file(source.state_dict(), tmp_path / "model.safetensors")
    cfg = from_hyperparameters({**SMALL, "pretrained": "true"})
    weights = resolve_weights(cfg.model, tmp_path, OFFLINE, tmp_path / "checkpoints")
    assert weights.path == tmp_path / "model.safetensors" and weights.summary == "channel:model.safetensors"
    backbone = create_backbone(cfg.model, weights.path)
    torch.testing.assert_close(backbone.conv_stem.weight, source.conv_stem.weight)


def test_pretrained_true_without_weights_fails_and_auto_warns(tmp_path, caplog):
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(DataError, match="pretrained=true but no weights were found for backbone 'test_efficientnet'"):
        resolve_weights(from_hyperparameters({**SMALL, "pretrained": "true"}).model, tmp_path, OFFLINE, checkpoints)
    auto = from_hyperparameters({**SMALL, "pretrained": "auto"}).model
    assert resolve_weights(auto, None, OFFLINE, checkpoints) == RANDOM
    assert "RANDOM initialisation" in caplog.text and "HF_HUB_OFFLINE is set" in caplog.text
    assert (
        resolve_weights(from_hyperparameters({**SMALL, "pretrained": "false"}).model, tmp_path, OFFLINE, checkpoints)
        == RANDOM
    )


def test_several_weight_files_pick_the_one_named_after_the_backbone(tmp_path):
    (tmp_path / "other.pth").write_bytes(b"x")
    (tmp_path / "test_efficientnet.safetensors").write_bytes(b"x")
    assert find_pretrained_weights(tmp_path, "test_efficientnet.r160_in1k").name == "test_efficientnet.safetensors"
    (tmp_path / "third.bin").write_bytes(b"x")
    (tmp_path / "test_efficientnet.safetensors").unlink()
    with pytest.raises(DataError, match="holds 2 weight files"):
        find_pretrained_weights(tmp_path, "test_efficientnet")


def test_vision_transformers_are_refused_with_a_reason():
    with pytest.raises(ConfigError, match="not a \\[B, C, F, T\\] feature map"):
        create_backbone(from_hyperparameters({**SMALL, "backbone": "test_vit"}).model, None)
