"""A whole training job: data, model, resume, the epoch loop, checkpoints and outputs."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader

from birdsed.config import Config
from birdsed.data import loaders
from birdsed.data.dataset import CropDataset
from birdsed.data.sampler import WeightedEpochSampler
from birdsed.errors import DataError, TrainingStopped
from birdsed.losses import create_loss
from birdsed.models import create_model
from birdsed.models.backbone import check_backbone_name, resolve_weights
from birdsed.optim import create_optimizer, create_scheduler
from birdsed.sm_env import SageMakerEnv
from birdsed.training import outputs
from birdsed.training.amp import mixed_precision
from birdsed.training.checkpoint import atomic_save, load_latest_checkpoint, save_checkpoint
from birdsed.training.loop import Progress, Trainer, evaluate, train_one_epoch
from birdsed.training.signals import StopRequest

logger = logging.getLogger(__name__)
metrics_logger = logging.getLogger("birdsed.metrics")

BEST_WEIGHTS_FILE = "best_model.pt"


@dataclass
class Job:
    """Everything one training run works with, built once."""

    cfg: Config
    env: SageMakerEnv
    data: loaders.TrainingData
    trainer: Trainer
    sampler: WeightedEpochSampler
    train_loader: DataLoader
    val_loader: DataLoader
    truth: np.ndarray


def run(cfg: Config, env: SageMakerEnv) -> dict:
    """Train as configured; returns the best epoch's record."""
    job = build_job(cfg, env)
    progress = resume(job.trainer, env.checkpoint_dir, job.data.labels, cfg)
    with StopRequest() as stop:
        train_epochs(job, progress, stop)
    return finish(job.trainer, progress, env, cfg, job.data.labels)


def build_job(cfg: Config, env: SageMakerEnv) -> Job:
    seed_everything(cfg.run.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # Checks that need no data first: a wrong name should not wait for 25,000 files to be probed.
    check_backbone_name(cfg.model.backbone)
    weights = resolve_weights(cfg.model, env.channel("pretrained"))
    data = loaders.load_training_data(cfg, env.channel("train"), env.channel("validation"))
    model = create_model(cfg, len(data.labels), weights).to(device)
    trainer = build_trainer(cfg, model, data, device)
    logger.info(
        "world_size=1 device=%s amp=%s parameters=%d batches_per_epoch=%d",
        device,
        trainer.precision.dtype,
        sum(p.numel() for p in model.parameters()),
        trainer.batches_per_epoch,
    )
    sampler = loaders.make_sampler(data, cfg)
    pin_memory = device.type == "cuda"
    return Job(
        cfg=cfg,
        env=env,
        data=data,
        trainer=trainer,
        sampler=sampler,
        train_loader=loaders.train_loader(data, cfg, sampler, pin_memory),
        val_loader=loaders.validation_loader(data, cfg, pin_memory),
        truth=primary_truth(data.validation, data.labels),
    )


def train_epochs(job: Job, progress: Progress, stop: StopRequest) -> None:
    """The epoch loop; on a stop request it checkpoints where it is and raises `TrainingStopped`."""
    trainer, cfg = job.trainer, job.cfg
    for epoch in range(progress.epoch, cfg.optim.epochs):
        if trainer.limit_reached(progress):
            break
        if epoch != progress.epoch:
            progress.start_epoch(epoch)
        job.sampler.set_epoch(epoch, start=min(progress.batches_done * cfg.optim.batch_size, len(job.data.train)))
        train_one_epoch(trainer, job.train_loader, progress, stop)
        result = None if stop.requested else evaluate(trainer, job.val_loader, job.truth, stop)
        if result is None:
            stop_here(job, progress, stop)
        record = epoch_record(epoch, progress.epoch_loss, result, trainer.optimizer.param_groups[0]["lr"])
        metrics_logger.info(format_metrics(record))
        end_of_epoch(trainer, progress, record, job.env.checkpoint_dir, cfg, job.data.labels)
        log_memory(epoch)


def stop_here(job: Job, progress: Progress, stop: StopRequest) -> None:
    path = save_checkpoint(
        job.env.checkpoint_dir,
        checkpoint_state(job.trainer, progress, job.cfg, job.data.labels),
        progress.step,
        job.cfg.run.checkpoint_keep,
    )
    raise TrainingStopped(
        f"Training was stopped by {stop.signal_name} during epoch {progress.epoch + 1} at step {progress.step}; "
        f"its state was saved to {path.name} and a restarted job resumes from there. No model was written."
    )


def log_memory(epoch: int) -> None:
    """Resident memory of this process and its DataLoader workers, to show it stays flat."""
    process = psutil.Process()
    workers = sum(child.memory_info().rss for child in process.children(recursive=True))
    logger.info(
        "memory epoch=%d rss_mb=%.0f workers_rss_mb=%.0f peak_rss_mb=%.0f",
        epoch + 1,
        process.memory_info().rss / 2**20,
        workers / 2**20,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def optimizer_steps_per_epoch(batches: int, grad_accum_steps: int) -> int:
    return math.ceil(batches / grad_accum_steps)


def build_trainer(cfg: Config, model: torch.nn.Module, data: loaders.TrainingData, device: torch.device) -> Trainer:
    precision = mixed_precision(cfg.run.amp, device)
    optimizer = create_optimizer(model, cfg.optim)
    batches = math.ceil(len(data.train) / cfg.optim.batch_size)
    steps_per_epoch = optimizer_steps_per_epoch(batches, cfg.optim.grad_accum_steps)
    return Trainer(
        model=model,
        loss_fn=create_loss(cfg.loss, loaders.class_weight_tensor(data)).to(device),
        optimizer=optimizer,
        scheduler=create_scheduler(optimizer, cfg.optim, steps_per_epoch),
        scaler=precision.grad_scaler(),
        precision=precision,
        device=device,
        batches_per_epoch=batches,
        grad_accum_steps=cfg.optim.grad_accum_steps,
        max_grad_norm=cfg.optim.max_grad_norm,
        max_steps=cfg.optim.max_steps,
        nonfinite_patience=cfg.optim.nonfinite_patience,
    )


def primary_truth(dataset: CropDataset, labels: list[str]) -> np.ndarray:
    """Validation truth: the primary label only (a secondary bird may be absent from the crop)."""
    truth = np.zeros((len(dataset), len(labels)), dtype=np.int64)
    index = {label: position for position, label in enumerate(labels)}
    for row, label in enumerate(dataset.recordings.primary_labels):
        truth[row, index[label]] = 1
    return truth


def epoch_record(epoch: int, train_loss: float, result: dict, lr: float) -> dict:
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "val_loss": result["val_loss"],
        "val_cmap": result["val_cmap"],
        "val_auc": result["val_auc"],
        "lr": lr,
    }


def format_metrics(record: dict) -> str:
    """The one stable log line per epoch that the launcher's metric regexes read."""
    return (
        f"epoch={record['epoch']} train_loss={record['train_loss']:.6f} val_loss={record['val_loss']:.6f} "
        f"val_cmap={record['val_cmap']:.6f} val_auc={record['val_auc']:.6f} lr={record['lr']:.6e}"
    )


def end_of_epoch(
    trainer: Trainer, progress: Progress, record: dict, checkpoint_dir: Path, cfg: Config, labels: list[str]
) -> None:
    """Record the epoch, keep the best weights, write a checkpoint."""
    progress.history.append(record)
    progress.start_epoch(record["epoch"])
    score = record["val_cmap"]
    # Without validation data there is no "best": the latest weights are kept.
    if math.isnan(score) or score > progress.best_score:
        progress.best_score = -math.inf if math.isnan(score) else score
        atomic_save(trainer.model.state_dict(), checkpoint_dir / BEST_WEIGHTS_FILE)
    state = checkpoint_state(trainer, progress, cfg, labels)
    save_checkpoint(checkpoint_dir, state, progress.step, cfg.run.checkpoint_keep)


def checkpoint_state(trainer: Trainer, progress: Progress, cfg: Config, labels: list[str]) -> dict:
    """Everything needed to continue exactly; only tensors and plain values (weights_only loads it)."""
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "progress": dataclasses.asdict(progress),
        "labels": labels,
        "config": cfg.to_dict(),
        "rng": rng_state(),
    }


def rng_state() -> dict:
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume(trainer: Trainer, checkpoint_dir: Path, labels: list[str], cfg: Config) -> Progress:
    """Continue from the newest loadable checkpoint, if any."""
    state = load_latest_checkpoint(checkpoint_dir)
    if state is None:
        return Progress()
    if state["labels"] != labels:
        raise DataError(
            f"The checkpoints in {checkpoint_dir} were made for {len(state['labels'])} other classes; "
            "this dataset's labels differ. Use a new checkpoint location for a different dataset."
        )
    saved_model = state["config"]["model"]
    if (saved_model["backbone"], saved_model["head"]) != (cfg.model.backbone, cfg.model.head):
        raise DataError(
            f"The checkpoints in {checkpoint_dir} are for backbone={saved_model['backbone']} "
            f"head={saved_model['head']}; this job asks for backbone={cfg.model.backbone} "
            f"head={cfg.model.head}. Use a new checkpoint location or the same model."
        )
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    progress = Progress(**state["progress"])
    logger.info("Resumed at epoch=%d batch=%d step=%d", progress.epoch + 1, progress.batches_done, progress.step)
    return progress


def finish(trainer: Trainer, progress: Progress, env: SageMakerEnv, cfg: Config, labels: list[str]) -> dict:
    """Write the best weights, labels and config to the model dir, and the metrics history."""
    best_path = env.checkpoint_dir / BEST_WEIGHTS_FILE
    if best_path.is_file():
        weights = torch.load(best_path, map_location="cpu", weights_only=True)
    else:
        weights = trainer.model.state_dict()
    outputs.write_model_dir(env.model_dir, weights, labels, cfg)
    best = best_record(progress.history)
    outputs.write_metrics(env.output_data_dir, progress.history, best)
    if best is not None:
        logger.info("Model written to %s (best epoch=%d val_cmap=%.4f)", env.model_dir, best["epoch"], best["val_cmap"])
    return best or {}


def best_record(history: list[dict]) -> dict | None:
    scored = [record for record in history if not math.isnan(record["val_cmap"])]
    if scored:
        return max(scored, key=lambda record: record["val_cmap"])
    return history[-1] if history else None
