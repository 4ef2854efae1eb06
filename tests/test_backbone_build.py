"""Backbones timm builds in its own way: without stochastic depth, or not at all."""

import logging

import pytest
import timm

from birdsed.config import from_hyperparameters
from birdsed.errors import ConfigError
from birdsed.models.backbone import create_backbone


def test_a_family_without_stochastic_depth_is_built_without_it(caplog):
    caplog.set_level(logging.WARNING)
    model = create_backbone(from_hyperparameters({"backbone": "ghostnet_100"}).model, None)
    assert model.num_features == 960
    assert "ghostnet_100 has no stochastic depth: drop_path_rate=0.1 is not used" in caplog.text


def test_a_backbone_timm_cannot_build_is_a_config_error_with_the_reason(monkeypatch):
    def refuse(name, **options):
        raise RuntimeError("features_only not implemented for this family")

    monkeypatch.setattr(timm, "create_model", refuse)
    with pytest.raises(ConfigError, match=r"Backbone 'resnet18' cannot be built .* RuntimeError: features_only"):
        create_backbone(from_hyperparameters({"backbone": "resnet18"}).model, None)
