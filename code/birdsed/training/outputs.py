"""What a job leaves behind: the model dir and the metrics history."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from birdsed import atomic
from birdsed.config import Config
from birdsed.training.checkpoint import atomic_save

MODEL_FILE = "model.pt"
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"


def write_json(path: Path, payload: object) -> None:
    """Write JSON atomically, with NaN written as null."""
    atomic.write_text(path, json.dumps(_finite(payload), indent=2) + "\n")


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


# config.json's entry beside the config's sections: where the backbone's starting weights came from.
WEIGHTS_KEY = "weights"


def write_model_dir(
    model_dir: Path, state_dict: dict[str, torch.Tensor], labels: list[str], cfg: Config, weights: str | None = None
) -> None:
    """`model.pt` (weights), `labels.json` (output order), `config.json` (how it was trained, and from what)."""
    atomic_save(state_dict, model_dir / MODEL_FILE)
    write_json(model_dir / LABELS_FILE, labels)
    write_json(model_dir / CONFIG_FILE, {**cfg.to_dict(), **({WEIGHTS_KEY: weights} if weights else {})})


def write_metrics(output_data_dir: Path, history: list[dict], best: dict | None, summary: dict | None = None) -> None:
    """The history, the best epoch, and `summary` entries (e.g. per-class AP, export status)."""
    write_json(output_data_dir / METRICS_FILE, {"history": history, "best": best, **(summary or {})})
