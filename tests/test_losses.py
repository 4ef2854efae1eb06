import math

import pytest
import torch

from birdsed.config import LossConfig
from birdsed.losses import BCELoss, FocalLoss, create_loss


def test_focal_loss_matches_hand_computed_values():
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    loss = FocalLoss(gamma=2.0)(logits, targets)
    p = 1 / (1 + math.exp(-2))
    expected = [0.25 * math.log(2), (1 - (1 - p)) ** 2 * math.log(1 + math.exp(2))]
    torch.testing.assert_close(loss, torch.tensor([expected]))


def test_focal_loss_with_gamma_zero_is_bce():
    logits, targets = torch.randn(4, 6), torch.rand(4, 6)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, targets), BCELoss()(logits, targets))


def outputs(clip, frames=None):
    frames = clip.unsqueeze(1).repeat(1, 3, 1) if frames is None else frames
    return {"clipwise_logits": clip, "framewise_logits": frames}


def test_class_and_sample_weights_scale_the_loss():
    clip = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    plain = create_loss(LossConfig(loss="bce", frame_loss_weight=0), torch.ones(2))
    assert plain(outputs(clip), targets, torch.ones(2)).item() == pytest.approx(math.log(2))
    weighted = create_loss(LossConfig(loss="bce", frame_loss_weight=0), torch.tensor([2.0, 0.0]))
    assert weighted(outputs(clip), targets, torch.ones(2)).item() == pytest.approx(math.log(2))
    item_loss = torch.tensor([[5.0, 0.0], [0.0, 0.0]])  # item 0 right, item 1 unsure
    one_only = plain(outputs(item_loss), targets, torch.tensor([0.0, 1.0]))
    assert one_only.item() == pytest.approx(math.log(2))


def test_frame_term_uses_the_strongest_frame():
    clip = torch.zeros(1, 1)
    frames = torch.tensor([[[-9.0], [3.0], [-9.0]]])
    targets = torch.ones(1, 1)
    loss = create_loss(LossConfig(loss="bce", frame_loss_weight=0.5), torch.ones(1))
    expected = math.log(2) + 0.5 * math.log(1 + math.exp(-3))
    assert loss(outputs(clip, frames), targets, torch.ones(1)).item() == pytest.approx(expected, rel=1e-5)


def test_loss_is_float32_and_finite_under_autocast():
    loss = create_loss(LossConfig(), torch.ones(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        clip = torch.randn(4, 3).to(torch.bfloat16) * 30
        value = loss(outputs(clip), torch.randint(0, 2, (4, 3)).float(), torch.ones(4))
    assert value.dtype == torch.float32 and torch.isfinite(value)
