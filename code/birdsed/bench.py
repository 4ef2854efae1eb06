"""The input-pipeline benchmark behind `code/bench.py`: does the GPU ever wait for data?

Measured in one run on the same files (a generated corpus unless `--data` is given):

- `pipeline_samples_per_s`: the training DataLoader over the waveform cache (all workers, crops only).
- `baseline_samples_per_s`: the seed's way, per item in `__getitem__`: decode the whole file (soundfile),
  resample (torchaudio), augment on the CPU (the same modules on a batch of one), mel; same workers.
- `aug_ms_per_batch`: the batched augmentation + front end + masks on the device.
- `model_only_samples_per_s`: model forward + backward + optimizer step on device-resident batches.
- `step_samples_per_s`: the real `train_one_epoch`, fed by the real pipeline over the cache.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from birdsed.augment import Augmentations, create_augmentations
from birdsed.config import Config, from_hyperparameters
from birdsed.data import cache, loaders
from birdsed.data.audio import decode, pcm16_to_float, to_pcm16
from birdsed.data.dataset import CropDataset
from birdsed.data.sampler import WeightedEpochSampler
from birdsed.data.synthetic import make_dataset, pink_noise
from birdsed.features import LogMelDeltas
from birdsed.models import create_model
from birdsed.training.distributed import Distributed
from birdsed.training.job import build_trainer
from birdsed.training.loop import Progress, Trainer, finish_step, to_device, train_one_epoch
from birdsed.training.performance import configure_backends, optimise_model
from birdsed.training.signals import NeverStop

GPU_BACKBONE = "tf_efficientnetv2_s.in21k"  # the job's default
CPU_BACKBONE = "test_efficientnet"  # timm's tiny test net: a real backbone step in about a second on a CPU
SAMPLE_RATE = 32000
CLIP_SECONDS = 5.0


@dataclass(frozen=True)
class Settings:
    data: Path | None
    workdir: Path
    device: torch.device
    backbone: str
    batch_size: int
    steps: int
    workers: int
    pipeline_batches: int
    baseline_samples: int


class WholeFileDecode:
    """The seed's crop source: decode and resample the whole recording for every crop, then slice."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    def read(self, path: Path, start: int, count: int) -> np.ndarray:
        return to_pcm16(decode(path, self.sample_rate)[start : start + count])[0]


class SeedStyleDataset(CropDataset):
    """Everything per item in the worker, as the seed did: decode, resample, augment, mel."""

    def __init__(self, crops: CropDataset, augment: Augmentations, frontend: LogMelDeltas) -> None:
        super().__init__(
            crops.recordings, crops.seconds, crops.sample_rate, crops.duration, WholeFileDecode(SAMPLE_RATE)
        )
        self.augment = augment
        self.frontend = frontend

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        item = super().__getitem__(key)
        with torch.no_grad():
            waveform = pcm16_to_float(item["waveform"][None])
            waveform, target, weight = self.augment.waveform(waveform, item["target"][None], item["weight"][None])
            spectrogram = self.augment.spectrogram(self.frontend(waveform))
        return {"spectrogram": spectrogram[0], "target": target[0], "weight": weight[0]}


def bench_config(settings: Settings) -> Config:
    return from_hyperparameters(
        {
            "backbone": settings.backbone,
            "pretrained": "false",
            "sample_rate": SAMPLE_RATE,
            "duration": CLIP_SECONDS,
            "batch_size": settings.batch_size,
            "num_workers": settings.workers,
            "val_fraction": 0.0,
            "epochs": 1,
            "augment_ramp_steps": 0,  # the step rate with the full augmentation of a job past its first steps
        }
    )


def prepare_corpus(settings: Settings) -> tuple[Path, Path, float]:
    """The dataset (given, or generated once into the workdir) and its cache; returns prepare seconds."""
    data = settings.data or settings.workdir / "corpus"
    if settings.data is None and not (data / "train_metadata.csv").is_file():
        # 8 species x 8 recordings of 10-30 s, OGG and MP3 at 44.1 and 48 kHz: the formats of xeno-canto.
        make_dataset(
            data, species=8, recordings_per_species=8, seconds=(10.0, 30.0), sample_rates=(44100, 48000),
            formats=(".ogg", ".mp3"), seed=0,
        )  # fmt: skip
    started = time.perf_counter()
    cache.prepare_cache(data, settings.workdir / "cache", SAMPLE_RATE, settings.workers, progress=False)
    return data, settings.workdir / "cache", time.perf_counter() - started


def loader_rate(dataset: CropDataset, settings: Settings, batches: int, repeats: int) -> float:
    """Samples per second of a DataLoader as training builds it, over `batches` batches (median of repeats).

    Each timed epoch starts from a fresh `iter()` of persistent workers that have already started, so
    neither worker start-up nor batches prefetched before the clock started count.
    """
    sampler = WeightedEpochSampler(np.ones(len(dataset)), batches * settings.batch_size, seed=0)
    options = loaders.worker_options(settings.workers, pin_memory=settings.device.type == "cuda")
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, **options)
    sampler.set_epoch(0, start=max(0, len(sampler) - 2 * settings.batch_size))  # warm-up: start the workers
    consume(loader)
    rates = []
    for epoch in range(1, repeats + 1):
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        samples = consume(loader)
        rates.append(samples / (time.perf_counter() - started))
    return statistics.median(rates)


def consume(loader: DataLoader) -> int:
    return sum(len(batch["target"]) for batch in loader)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, function: Callable[[], object], repeats: int) -> float:
    """Median seconds of `function` over `repeats` runs after one warm-up run."""
    function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def device_batch(dataset: CropDataset, settings: Settings) -> dict[str, torch.Tensor]:
    """One real batch of crops, on the device."""
    items = [dataset[(index % len(dataset), index)] for index in range(settings.batch_size)]
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    return to_device(batch, settings.device)


def noise_bank() -> torch.Tensor:
    """A minute of pink noise standing in for a `noise` channel, so background noise is measured too."""
    return torch.from_numpy(to_pcm16(0.05 * pink_noise(np.random.default_rng(0), 60 * SAMPLE_RATE))[0])


def augmentation_ms(cfg: Config, batch: dict[str, torch.Tensor], settings: Settings) -> float:
    """Batched augmentation (defaults, with a background-noise bank) + front end + masks, per batch."""
    augment = create_augmentations(cfg.augment, 0, settings.device, noise_bank())
    frontend = LogMelDeltas(SAMPLE_RATE, cfg.features).to(settings.device)
    epochs = iter(range(10**6))

    @torch.no_grad()
    def run() -> None:
        augment.set_epoch(next(epochs))  # different draws each time: an average batch, not a lucky one
        waveform, _, _ = augment.waveform(batch["waveform"], batch["target"], batch["weight"])
        augment.spectrogram(frontend(waveform))

    return 1000 * timed(settings.device, run, repeats=max(3, settings.steps))


def model_only_rate(trainer: Trainer, batch: dict[str, torch.Tensor], settings: Settings) -> float:
    """Forward + backward + step of the whole model (front end included) on a device-resident batch."""
    progress = Progress()

    def step() -> None:
        with trainer.precision.autocast():
            outputs = trainer.model(batch["waveform"])
        loss = trainer.loss_fn(outputs, batch["target"], batch["weight"])
        trainer.scaler.scale(loss).backward()
        finish_step(trainer, progress, [loss.detach()], NeverStop())  # the same one sync per step as training

    return settings.batch_size / timed(settings.device, step, repeats=settings.steps)


def step_rate(trainer: Trainer, dataset: CropDataset, cfg: Config, settings: Settings) -> float:
    """The real train step (`train_one_epoch`: pipeline, augmentation, model), samples per second."""
    trainer.augment = create_augmentations(cfg.augment, 0, settings.device, noise_bank())
    sampler = WeightedEpochSampler(np.ones(len(dataset)), settings.steps * settings.batch_size, seed=0)
    options = loaders.worker_options(settings.workers, pin_memory=settings.device.type == "cuda")
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, **options)
    sampler.set_epoch(0, start=max(0, len(sampler) - 2 * settings.batch_size))  # warm-up
    train_one_epoch(trainer, loader, Progress(), NeverStop())
    sampler.set_epoch(1)
    trainer.augment.set_epoch(1)
    synchronize(settings.device)
    started = time.perf_counter()
    train_one_epoch(trainer, loader, Progress(), NeverStop())  # each step ends with a sync: the device has finished
    return settings.steps * settings.batch_size / (time.perf_counter() - started)


def run_benchmark(settings: Settings) -> Iterator[tuple[str, object]]:
    """Yield (key, value) pairs as they are measured."""
    cfg = bench_config(settings)
    configure_backends(settings.device)
    yield from describe(settings)
    data_dir, cache_dir, prepare_s = prepare_corpus(settings)
    index = cache.read_index(cache_dir)
    yield "corpus", "generated" if settings.data is None else str(data_dir)
    yield "recordings", len(index.files)
    yield "corpus_hours", round(sum(entry["samples"] for entry in index.files.values()) / SAMPLE_RATE / 3600, 3)
    yield "prepare_s", round(prepare_s, 1)
    data = loaders.load_training_data(cfg, cache_dir, None)
    pipeline = loader_rate(data.train, settings, settings.pipeline_batches, repeats=3)
    yield "pipeline_samples_per_s", round(pipeline, 1)
    raw = loaders.load_training_data(cfg, data_dir, None).train
    cpu_augment = create_augmentations(cfg.augment, 0, "cpu", noise_bank())
    seed_style = SeedStyleDataset(raw, cpu_augment, LogMelDeltas(SAMPLE_RATE, cfg.features))
    baseline = loader_rate(seed_style, settings, max(1, settings.baseline_samples // settings.batch_size), repeats=1)
    yield "baseline_samples_per_s", round(baseline, 2)
    yield "pipeline_speedup", round(pipeline / baseline, 1)
    batch = device_batch(data.train, settings)
    yield "aug_ms_per_batch", round(augmentation_ms(cfg, batch, settings), 1)
    model = optimise_model(create_model(cfg, len(data.labels)).to(settings.device), False, "channels_last")
    trainer = build_trainer(cfg, model, data, Distributed(0, 0, 1, settings.device))
    model_only = model_only_rate(trainer, batch, settings)
    yield "model_only_samples_per_s", round(model_only, 2)
    step = step_rate(trainer, data.train, cfg, settings)
    yield "step_samples_per_s", round(step, 2)
    yield "step_efficiency", round(step / model_only, 3)
    # The same model in PyTorch's default (contiguous NCHW) layout: what `optimise_model`'s channels_last buys.
    contiguous = build_trainer(cfg, create_model(cfg, len(data.labels)).to(settings.device), data, trainer.distributed)
    contiguous_rate = model_only_rate(contiguous, batch, settings)
    yield "model_only_contiguous_samples_per_s", round(contiguous_rate, 2)
    yield "channels_last_speedup", round(model_only / contiguous_rate, 2)


def describe(settings: Settings) -> Iterator[tuple[str, object]]:
    yield "device", settings.device.type
    yield "backbone", settings.backbone
    yield "batch_size", settings.batch_size
    yield "workers", settings.workers
    yield "steps", settings.steps
    yield "sample_rate", SAMPLE_RATE
    yield "clip_seconds", CLIP_SECONDS
    if settings.device.type == "cpu":
        yield (
            "note",
            (
                f"CPU run: the CPU is both the training device and the workers' machine, so step figures for "
                f"{settings.backbone} and step_efficiency say nothing about a GPU; run with --device cuda there"
            ),
        )


def parse_settings(argv: list[str] | None, workdir: Path) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a BirdCLEF-style dataset (default: generate a corpus)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--backbone", help=f"default: {GPU_BACKBONE} on cuda, {CPU_BACKBONE} on cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, help="timed train steps (default: 30 on cuda, 5 on cpu)")
    parser.add_argument("--workers", type=int, default=-1, help="DataLoader workers (default: one per CPU)")
    parser.add_argument("--pipeline-batches", type=int, default=100, help="batches per timed pipeline epoch")
    parser.add_argument("--baseline-samples", type=int, default=256, help="items timed for the seed's way")
    parser.add_argument("--workdir", type=Path, help="keep the corpus and cache here (default: a temporary folder)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    on_gpu = device.type == "cuda"
    return Settings(
        data=args.data,
        workdir=args.workdir or workdir,
        device=device,
        backbone=args.backbone or (GPU_BACKBONE if on_gpu else CPU_BACKBONE),
        batch_size=args.batch_size,
        steps=args.steps or (30 if on_gpu else 5),
        workers=loaders.resolve_num_workers(args.workers),
        pipeline_batches=args.pipeline_batches,
        baseline_samples=args.baseline_samples,
    )


def main(argv: list[str] | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="birdsed-bench-") as temporary:
        settings = parse_settings(argv, Path(temporary))
        with contextlib.suppress(BrokenPipeError):
            for key, value in run_benchmark(settings):
                print(f"{key}={value}", flush=True)
    return 0
