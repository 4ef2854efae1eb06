"""Models that run without birdsed: `model.pt2` (torch.export) and `model.onnx` (onnxruntime).

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

import contextlib
import copy
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from birdsed.atomic import atomic_path
from birdsed.config import Config
from birdsed.models import create_model

logger = logging.getLogger(__name__)

EXPORT_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 18
ONNX_INPUT = "waveform"
ONNX_OUTPUTS = ("clipwise", "framewise")
# Waveforms the ONNX export is checked on (validation crops when the job has them).
CHECK_BATCH = 4
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


class SliceDeltas(nn.Module):
    """torchaudio's `ComputeDeltas(win_length=5)` (replicate padding) without its grouped conv1d:
    delta[t] = (x[t+1] - x[t-1] + 2 (x[t+2] - x[t-2])) / 10 over the last dimension."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        frames = features.shape[-1]
        padded = F.pad(features, (2, 2), mode="replicate")
        near = padded[..., 3 : 3 + frames] - padded[..., 1 : 1 + frames]
        far = padded[..., 4 : 4 + frames] - padded[..., 0:frames]
        return (near + 2 * far) / 10


class DftMelSpectrogram(nn.Module):
    """torchaudio's `MelSpectrogram` (power 2, centred, reflect padding, its window and filterbank) with
    the DFT as matmuls: n_fft = N1 x N2, a real DFT of size N1 over each frame's N2 interleaved
    subsequences, twiddle factors, then a complex DFT of size N2 of which only the bins up to Nyquist are
    computed; the filterbank's rows are reordered to the bins' order (k = k1 + N1 k2)."""

    def __init__(self, mel: nn.Module) -> None:
        super().__init__()
        spectrogram = mel.spectrogram
        n_fft, filterbank = spectrogram.n_fft, mel.mel_scale.fb  # fb: [n_fft // 2 + 1, n_mels]
        if spectrogram.win_length != n_fft or spectrogram.power != 2.0 or not spectrogram.center:
            raise ValueError("DftMelSpectrogram supports the front end's settings only (power 2, centred, full window)")
        n1 = max(divisor for divisor in range(1, math.isqrt(n_fft) + 1) if n_fft % divisor == 0)
        n2, k2 = n_fft // n1, n_fft // n1 // 2 + 1
        self.n_fft, self.hop, self.n1, self.n2 = n_fft, spectrogram.hop_length, n1, n2
        index1, index2 = torch.arange(n1, dtype=torch.float64), torch.arange(n2, dtype=torch.float64)
        inner = 2 * math.pi * torch.outer(index1, index1) / n1  # [k1, n1]
        twiddle = 2 * math.pi * torch.outer(index1, index2) / n_fft  # [k1, n2]
        outer = 2 * math.pi * torch.outer(index2, torch.arange(k2, dtype=torch.float64)) / n2  # [n2, k2]
        for name, value in {
            "inner_cos": torch.cos(inner), "inner_minus_sin": -torch.sin(inner),
            "twiddle_cos": torch.cos(twiddle), "twiddle_sin": torch.sin(twiddle),
            "outer_cos": torch.cos(outer), "outer_sin": torch.sin(outer),
        }.items():  # fmt: skip
            self.register_buffer(name, value.float())
        self.register_buffer("window", spectrogram.window.detach().float().clone())
        bins = (torch.arange(n1)[:, None] + n1 * torch.arange(k2)[None, :]).reshape(-1)  # row k1 * k2 + j -> bin
        reordered = torch.zeros(n1 * k2, filterbank.shape[1])
        inside = bins < filterbank.shape[0]
        reordered[inside] = filterbank[bins[inside]].float()
        self.register_buffer("filterbank", reordered)

    def frames(self, waveform: torch.Tensor) -> torch.Tensor:
        """`[B, T]` -> windowed frames `[B, F, n_fft]`, centred with reflect padding, as torch.stft cuts them."""
        pad = self.n_fft // 2
        padded = F.pad(waveform.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        count = 1 + (padded.shape[-1] - self.n_fft) // self.hop
        pieces = -(-self.n_fft // self.hop)  # hops per frame, rounded up
        needed = (count + pieces - 1) * self.hop
        padded = F.pad(padded, (0, max(0, needed - padded.shape[-1])))
        chunks = padded[:, :needed].unflatten(-1, (count + pieces - 1, self.hop))  # [B, F + pieces - 1, hop]
        frames = torch.cat([chunks[:, start : start + count] for start in range(pieces)], dim=-1)
        return frames[..., : self.n_fft] * self.window

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        frames = self.frames(waveform).unflatten(-1, (self.n1, self.n2))  # [B, F, n1, n2]
        real = torch.matmul(self.inner_cos, frames)  # [B, F, k1, n2]
        imaginary = torch.matmul(self.inner_minus_sin, frames)
        real, imaginary = (
            real * self.twiddle_cos + imaginary * self.twiddle_sin,
            imaginary * self.twiddle_cos - real * self.twiddle_sin,
        )
        spectrum_real = torch.matmul(real, self.outer_cos) + torch.matmul(imaginary, self.outer_sin)  # [B, F, k1, k2]
        spectrum_imaginary = torch.matmul(imaginary, self.outer_cos) - torch.matmul(real, self.outer_sin)
        power = (spectrum_real * spectrum_real + spectrum_imaginary * spectrum_imaginary).flatten(-2)
        return torch.matmul(power, self.filterbank).transpose(1, 2)  # [B, n_mels, F]


class OnnxOutputs(nn.Module):
    """Waveforms `[B, T]` -> (clip-wise `[B, K]`, frame-wise `[B, T', K]`) probabilities: the ONNX contract."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).cpu().eval()
        self.model.frontend.mel = DftMelSpectrogram(self.model.frontend.mel)
        self.model.frontend.deltas = SliceDeltas()
        self.eval()  # the wrapper too: torch.onnx.export warns about (and would trace) a module in training mode

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model(waveform)
        return torch.sigmoid(outputs["clipwise_logits"].float()), torch.sigmoid(outputs["framewise_logits"].float())


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
    """Write atomically: `path` is either absent or complete (the temporary name keeps the .pt2 that
    torch.export.save asks for)."""
    with atomic_path(path) as temporary:
        torch.export.save(program, temporary)


def export_onnx(model: nn.Module, samples: int, path: Path) -> None:
    """Write `OnnxOutputs(model)` as ONNX (dynamo exporter) to `path`, via a temporary file."""
    import onnx

    wrapper = OnnxOutputs(model)
    example = torch.randn(EXAMPLE_BATCH, samples)
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(path) as temporary:
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                dynamic_shapes={"waveform": {0: batch}},
                input_names=[ONNX_INPUT],
                output_names=list(ONNX_OUTPUTS),
                opset_version=ONNX_OPSET,
                optimize=True,
                verbose=False,
            )
        onnx.save_model(program.model_proto, temporary)
        onnx.checker.check_model(str(temporary))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs every pass (INFO) and every torchvision operator it cannot annotate (WARNING)
    to the job log; only its errors matter there."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def verify_onnx(path: Path, model: nn.Module, waveforms: torch.Tensor) -> dict[str, float]:
    """Max abs difference of each ONNX output to the eager model's (onnxruntime, CPU) on `waveforms`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        outputs = model.cpu().eval()(waveforms)
    expected = [torch.sigmoid(outputs[f"{name}_logits"].float()) for name in ONNX_OUTPUTS]
    actual = session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: waveforms.numpy().astype(np.float32)})
    return {
        f"max_abs_diff_{name}": float(np.abs(got - want.numpy()).max())
        for name, got, want in zip(ONNX_OUTPUTS, actual, expected, strict=True)
    }


def export_onnx_file(model: nn.Module, samples: int, path: Path, waveforms: torch.Tensor) -> dict:
    """Export, check against the eager model on `waveforms`, and describe it (for metrics.json)."""
    started = time.monotonic()
    export_onnx(model, samples, path)
    differences = verify_onnx(path, model, waveforms)
    worst = max(differences.values())
    if not worst <= VERIFY_ATOL:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"model.onnx differs from the eager model by {worst:.3g} (> {VERIFY_ATOL})")
    return {
        "status": "ok",
        "file": path.name,
        "format": "onnx",
        "opset": ONNX_OPSET,
        "inputs": {ONNX_INPUT: ["batch", samples]},
        "outputs": {ONNX_OUTPUTS[0]: ["batch", "classes"], ONNX_OUTPUTS[1]: ["batch", "frames", "classes"]},
        "checked_on": f"{len(waveforms)} waveforms",
        "max_abs_diff": worst,
        **differences,
        "seconds": round(time.monotonic() - started, 2),
    }


def check_waveforms(dataset: object, samples: int, count: int = CHECK_BATCH) -> torch.Tensor:
    """Up to `count` waveforms `[N, samples]` of a crop dataset (validation crops), else seeded noise."""
    from birdsed.data.audio import pcm16_to_float

    items = []
    for index in range(min(count, len(dataset) if dataset is not None else 0)):
        try:
            items.append(pcm16_to_float(dataset[index]["waveform"]))
        except Exception:  # noqa: BLE001 - a crop that cannot be read only costs one check waveform
            continue
    if items:
        return torch.stack(items)[:, :samples]
    generator = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(count, samples, generator=generator)


def export_model_dir(
    model_dir: Path,
    state_dict: dict[str, torch.Tensor],
    labels: list[str],
    cfg: Config,
    check: torch.Tensor | None = None,
) -> dict:
    """Write `model.pt2` (and `model.onnx` when `cfg.run.export_onnx`) beside `model.pt`; returns the
    status recorded in metrics.json. `check`: waveforms `[N, samples]` (a validation batch) the ONNX
    model is compared on.

    A failed export never costs the trained model: it is logged as a warning with its reason and
    reported as `{"status": "failed", "reason": ...}` (for ONNX under `"onnx"`); `model.pt` stays the
    model of record.
    """
    status = export_pt2(model_dir, state_dict, labels, cfg)
    if cfg.run.export_onnx:
        status["onnx"] = export_onnx_model_dir(model_dir, state_dict, labels, cfg, check)
    return status


def export_onnx_model_dir(
    model_dir: Path, state_dict: dict[str, torch.Tensor], labels: list[str], cfg: Config, check: torch.Tensor | None
) -> dict:
    samples = window_samples(cfg)
    try:
        model = create_model(cfg, len(labels)).cpu().eval()
        model.load_state_dict(state_dict)
        waveforms = check if check is not None else check_waveforms(None, samples)
        status = export_onnx_file(model, samples, model_dir / ONNX_FILE, waveforms)
    except Exception as error:  # noqa: BLE001 - any export failure must leave the trained model usable
        reason = f"{type(error).__name__}: {error}".strip()[:2000]
        logger.warning("Export of %s failed; model.pt is still complete. Reason: %s", ONNX_FILE, reason)
        return {"status": "failed", "reason": reason}
    logger.info(
        "Exported %s (opset %d, batch dynamic, %d samples) in %.1f s, max_abs_diff=%.2e on %s",
        ONNX_FILE,
        ONNX_OPSET,
        samples,
        status["seconds"],
        status["max_abs_diff"],
        status["checked_on"],
    )
    return status


def export_pt2(model_dir: Path, state_dict: dict[str, torch.Tensor], labels: list[str], cfg: Config) -> dict:
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
