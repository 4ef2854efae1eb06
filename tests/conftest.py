"""Shared fixtures: small synthetic datasets, the real recordings when present, /opt/ml trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from birdsed.config import TINY_HYPERPARAMETERS
from birdsed.data.synthetic import make_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_BIRDS = REPO_ROOT.parent / "shared" / "data" / "real_birds"

# Tiny models, no DataLoader workers: seconds per job on a CPU. No ONNX export (15-30 s per job here):
# test_use_model.py and test_onnx.py export it.
FAST_HYPERPARAMETERS = {**TINY_HYPERPARAMETERS, "num_workers": 0, "export_onnx": False}


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """6 species x 10 recordings, mixed formats and sample rates."""
    return make_dataset(
        tmp_path_factory.mktemp("synthetic"), species=6, recordings_per_species=10, seconds=(3.0, 8.0), seed=11
    )


@pytest.fixture(scope="session")
def real_birds() -> Path:
    if not (REAL_BIRDS / "train_metadata.csv").is_file():
        pytest.skip(f"{REAL_BIRDS} is not present")
    return REAL_BIRDS
