"""The benchmark behind `code/bench_pseudo.py`: how fast a pseudo-label round predicts soundscapes.

Measured on the same recordings (generated 32 kHz OGG soundscapes unless `--data` is given), with
the job's own code (`birdsed.training.pseudo.label_round`: streamed decoding in DataLoader workers,
batches of `2 x batch_size` windows on the device, the job's mixed precision):

- `pseudo_windows_per_s`: the whole prediction pass, windows of `duration` seconds per second;
- `decode_windows_per_s`: the workers' decoding alone (no model), to see which side limits;
- `model_windows_per_s`: the model alone on device-resident batches;
- `round_s_per_soundscape_hour`: what one round's pass costs per hour of soundscapes (3600 / duration
  windows / `pseudo_windows_per_s`);
- `peak_rss_mb`, `peak_worker_rss_mb`: the highest resident memory of this process and of any DataLoader
  worker: flat whatever the recordings' length, as only a block of audio is decoded at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from birdsed.bench import CPU_BACKBONE, GPU_BACKBONE, synchronize
from birdsed.config import Config, from_hyperparameters
from birdsed.data import loaders
from birdsed.data.soundscapes import find_audio, usable_files, window_count
from birdsed.data.synthetic import make_soundscapes
from birdsed.export import window_samples
from birdsed.models import create_model
from birdsed.predict import LoadedModel, Predictor
from birdsed.training import pseudo, rounds
from birdsed.training.amp import mixed_precision
from birdsed.training.distributed import Distributed
from birdsed.training.performance import configure_backends, optimise_model

SAMPLE_RATE = 32000
CLASSES = 206  # BirdCLEF 2025


def bench_config(backbone: str, batch_size: int, workers: int) -> Config:
    return from_hyperparameters(
        {"backbone": backbone, "pretrained": "false", "sample_rate": SAMPLE_RATE, "duration": 5.0,
         "batch_size": batch_size, "num_workers": workers, "pseudo_threshold": 0.5}
    )  # fmt: skip


def soundscapes(data: Path | None, workdir: Path, minutes: float) -> Path:
    """The recordings to predict: given, or generated once (files of 5 minutes)."""
    if data is not None:
        return data
    folder = workdir / "soundscapes"
    if not (folder / ".done").exists():
        files = max(1, round(minutes / 5))
        make_soundscapes(folder, files=files, seconds=min(300.0, 60 * minutes), labelled=False, seed=0)
        (folder / ".done").touch()
    return folder


def decode_rate(stream: pseudo.WindowStream, options: dict, batch_size: int) -> float:
    started = time.perf_counter()
    windows = sum(len(batch["file"]) for batch in DataLoader(stream, batch_size=batch_size, **options))
    return windows / (time.perf_counter() - started)


def model_rate(predictor: Predictor, samples: int, device: torch.device, repeats: int = 5) -> float:
    batch = np.random.default_rng(0).uniform(-0.1, 0.1, (predictor.batch_size, samples)).astype(np.float32)
    predictor.predict_windows(batch)  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        predictor.predict_windows(batch)
    synchronize(device)
    return repeats * len(batch) / (time.perf_counter() - started)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = args.backbone or (GPU_BACKBONE if device.type == "cuda" else CPU_BACKBONE)
    workers = loaders.resolve_num_workers(args.workers)
    cfg = bench_config(backbone, args.batch_size, workers)
    configure_backends(device)
    folder = soundscapes(args.data, workdir, args.minutes)
    files = usable_files(find_audio(folder), folder, SAMPLE_RATE)
    length = window_samples(cfg)
    model = optimise_model(create_model(cfg, CLASSES).to(device), False).eval()
    predictor = Predictor(
        LoadedModel(model, [f"c{index}" for index in range(CLASSES)], cfg),
        device,
        rounds.PREDICT_BATCH_FACTOR * cfg.optim.batch_size,
        mixed_precision(cfg.run.amp, device),
    )
    options = {**loaders.worker_options(workers, device.type == "cuda"), "persistent_workers": False}
    one = Distributed(0, 0, 1, device)
    started = time.perf_counter()
    labels = pseudo.label_round(1, predictor, files, length, options, cfg.soundscapes, one, lambda: False)
    synchronize(device)
    seconds = time.perf_counter() - started
    stream = pseudo.WindowStream(files, list(range(len(files))), SAMPLE_RATE, length)
    rate = labels.windows / seconds
    return {
        "device": device.type,
        "backbone": backbone,
        "workers": workers,
        "predict_batch": predictor.batch_size,
        "amp": str(predictor.precision.dtype).removeprefix("torch."),
        "soundscape_hours": round(sum(file.frames for file in files) / SAMPLE_RATE / 3600, 3),
        "windows": sum(window_count(file.frames, length) for file in files),
        "pseudo_windows_per_s": round(rate, 1),
        "decode_windows_per_s": round(decode_rate(stream, options, predictor.batch_size), 1),
        "model_windows_per_s": round(model_rate(predictor, length, device), 1),
        "round_s_per_soundscape_hour": round(3600 / cfg.data.duration / rate, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_worker_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a folder of soundscapes (default: generate --minutes of them)")
    parser.add_argument("--minutes", type=float, default=20.0, help="generated soundscape minutes (default 20)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--backbone", help=f"default: {GPU_BACKBONE} on cuda, {CPU_BACKBONE} on cpu")
    parser.add_argument("--batch-size", type=int, default=32, help="the job's batch_size (prediction: twice it)")
    parser.add_argument("--workers", type=int, default=-1, help="DataLoader workers (default: one per CPU)")
    parser.add_argument("--workdir", type=Path, help="keep the generated soundscapes here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="birdsed-bench-pseudo-") as temporary:
        with contextlib.suppress(BrokenPipeError):
            for key, value in run(args, args.workdir or Path(temporary)).items():
                print(f"{key}={value}", flush=True)
    return 0
