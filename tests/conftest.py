"""Shared fixtures: small synthetic datasets, the real recordings when present, /opt/ml trees."""

from __future__ import annotations

import importlib.util
import os
import random
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest

from birdsed.config import TINY_HYPERPARAMETERS
from birdsed.data.synthetic import make_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_BIRDS = REPO_ROOT.parent / "shared" / "data" / "real_birds"

# Tiny models, no DataLoader workers: seconds per job on a CPU. No ONNX export (15-30 s per job here):
# test_use_model.py and test_onnx.py export it.
FAST_HYPERPARAMETERS = {**TINY_HYPERPARAMETERS, "num_workers": 0, "export_onnx": False}


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range and in this xdist worker's own block of ports.

    `bind(port 0)` hands out an ephemeral port, and until the job binds it, any outgoing connection of a
    test running beside it may take it as its local port: a torchrun master then fails with EADDRINUSE
    and the other "host" waits 10 minutes for it (seen once in CI). Below the ephemeral range only an
    explicit bind takes a port, and each worker's block keeps two workers from picking the same one.
    """
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    low = 20000 + 1000 * (worker % 12)  # 20000..32000: under Linux's default ephemeral range (32768-60999)
    for port in random.sample(range(low, low + 1000), 50):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"No free port in {low}..{low + 999}")


def load_launch_script(name: str) -> ModuleType:
    """`launch/<name>.py` as a module (the launch scripts are not a package), fresh on every call."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def no_hugging_face_hub(tmp_path_factory):
    """Jobs started by tests never reach the internet nor this machine's Hugging Face cache or token.

    A job that looks for pretrained weights without a stand-in Hub (tests/hub_server.py) finds a closed
    port (refused at once) and an empty cache; tests of the Hub point HF_ENDPOINT at their own server.
    The port stays bound and never listens for the whole session: refused, and no server of a later test
    can be handed it.
    """
    with socket.socket() as closed_port, pytest.MonkeyPatch.context() as patch:
        closed_port.bind(("127.0.0.1", 0))
        patch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port.getsockname()[1]}")
        patch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
        patch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")  # as in the image: only the weights are asked for
        for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HOME"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(autouse=True)
def own_master_port(monkeypatch):
    """Each test's distributed jobs rendezvous on a port of their own: `make test` runs tests in parallel
    (pytest-xdist), and two jobs on torchrun's default port would join each other's process group."""
    monkeypatch.setenv("MASTER_PORT", str(free_port()))


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
