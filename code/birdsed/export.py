"""A model that runs without birdsed: `torch.export` of waveforms -> clip-wise probabilities.

`model.pt2` holds the whole forward pass (mel front end, backbone, SED head, sigmoid) as an
ExportedProgram of plain aten operators, so `torch.export.load` alone runs it: no birdsed, timm
or torchaudio import. Checked on torch 2.9.1: torchaudio's MelSpectrogram, AmplitudeToDB and
ComputeDeltas export cleanly, so no TorchScript fallback is needed.

The batch dimension is dynamic; the time dimension is fixed to one training window
(`duration * sample_rate` samples). A dynamic time dimension was tried and dropped: the attention
head's `max_pool1d` and the GRU head specialise the frame count, and timm's TF-"same" padding
(the default tf_efficientnetv2 backbone) did not finish symbolic shape solving in minutes. The
model is trained on fixed windows anyway; longer recordings are cut into windows (see predict).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from torch import nn

from birdsed.config import Config
from birdsed.models import create_model

logger = logging.getLogger(__name__)

EXPORT_FILE = "model.pt2"
# torch.export specialises a dimension of size 0 or 1, so the example batch has 2 items.
EXAMPLE_BATCH = 2
# The exported program must agree with the eager model at least this well.
VERIFY_ATOL = 1e-4


class ClipProbabilities(nn.Module):
    """Waveforms `[B, T]` at the training sample rate -> clip-wise probabilities `[B, K]`.

    The exported model's whole contract; the sigmoid is part of it so users need no post-processing.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(waveform)["clipwise_logits"].float())


def window_samples(cfg: Config) -> int:
    """Samples in one training window (as the training crops are cut)."""
    return int(round(cfg.data.duration * cfg.data.sample_rate))


def export_program(model: nn.Module, samples: int) -> torch.export.ExportedProgram:
    """Export `ClipProbabilities(model)` on CPU for batches of `[B, samples]` waveforms."""
    wrapper = ClipProbabilities(model).cpu().eval()
    example = torch.randn(EXAMPLE_BATCH, samples)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        return torch.export.export(wrapper, (example,), dynamic_shapes={"waveform": {0: batch}})


def verify(program: torch.export.ExportedProgram, model: nn.Module, samples: int) -> float:
    """Max abs difference to the eager model on a batch size other than the example's."""
    waveform = torch.randn(EXAMPLE_BATCH + 1, samples)
    with torch.no_grad():
        expected = ClipProbabilities(model).eval()(waveform)
        exported = program.module()(waveform)
    difference = float((expected - exported).abs().max())
    if not difference <= VERIFY_ATOL:
        raise RuntimeError(f"exported model differs from the eager model by {difference:.3g} (> {VERIFY_ATOL})")
    return difference


def save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    """Write to a temporary file, then rename: `path` is either absent or complete."""
    # torch.export.save warns unless the name ends in .pt2.
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        torch.export.save(program, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def export_model_dir(model_dir: Path, state_dict: dict[str, torch.Tensor], labels: list[str], cfg: Config) -> dict:
    """Write `model.pt2` beside `model.pt`; returns the status recorded in metrics.json.

    A failed export never costs the trained model: it is logged as a warning with its reason and
    reported as `{"status": "failed", "reason": ...}`; `model.pt` stays the model of record.
    """
    started = time.monotonic()
    samples = window_samples(cfg)
    try:
        model = create_model(cfg, len(labels)).cpu().eval()
        model.load_state_dict(state_dict)
        program = export_program(model, samples)
        difference = verify(program, model, samples)
        save_program(program, model_dir / EXPORT_FILE)
    except Exception as error:  # noqa: BLE001 - any export failure must leave the trained model usable
        reason = f"{type(error).__name__}: {error}".strip()[:2000]
        logger.warning("Export of %s failed; model.pt is still complete. Reason: %s", EXPORT_FILE, reason)
        return {"status": "failed", "reason": reason}
    seconds = time.monotonic() - started
    logger.info(
        "Exported %s (batch dynamic, %d samples) in %.1f s, max_abs_diff=%.2e",
        EXPORT_FILE,
        samples,
        seconds,
        difference,
    )
    return {
        "status": "ok",
        "file": EXPORT_FILE,
        "format": "torch.export",
        "input_samples": samples,
        "sample_rate": cfg.data.sample_rate,
        "max_abs_diff": difference,
        "seconds": round(seconds, 2),
    }
