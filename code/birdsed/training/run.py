"""A whole training job: data, model, resume, the epoch loop, checkpoints and outputs."""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import torch

from birdsed.augment import create_augmentations
from birdsed.config import Config
from birdsed.data import loaders
from birdsed.data.dataset import CropDataset
from birdsed.data.noise import load_noise_bank
from birdsed.errors import DataError
from birdsed.losses import create_loss
from birdsed.models import create_model
from birdsed.models.backbone import resolve_weights
from birdsed.optim import create_optimizer, create_scheduler
from birdsed.sm_env import SageMakerEnv
from birdsed.training import outputs
from birdsed.training.amp import mixed_precision
from birdsed.training.checkpoint import atomic_save, load_latest_checkpoint, save_checkpoint
from birdsed.training.loop import Progress, Trainer, evaluate, train_one_epoch
from birdsed.training.performance import configure_backends, optimise_model

logger = logging.getLogger(__name__)
metrics_logger = logging.getLogger("birdsed.metrics")

BEST_WEIGHTS_FILE = "best_model.pt"


def run(cfg: Config, env: SageMakerEnv) -> dict:
    """Train as configured; returns the best epoch's record."""
    seed_everything(cfg.run.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configure_backends(device)
    data = loaders.load_training_data(cfg, env.channel("train"), env.channel("validation"))
    weights = resolve_weights(cfg.model, env.channel("pretrained"))
    model = optimise_model(create_model(cfg, len(data.labels), weights).to(device), device, cfg.run.compile)
    steps_per_epoch = optimizer_steps_per_epoch(len(data.train), cfg)
    trainer = build_trainer(cfg, model, data, device, steps_per_epoch)
    noise_bank = load_noise_bank(env.channel("noise"), cfg.data.sample_rate)
    trainer.augment = create_augmentations(cfg.augment, cfg.run.seed, device, noise_bank)
    progress = resume(trainer, env.checkpoint_dir, data.labels, cfg)
    logger.info(
        "world_size=1 device=%s amp=%s parameters=%d steps_per_epoch=%d",
        device,
        trainer.precision.dtype,
        sum(p.numel() for p in model.parameters()),
        steps_per_epoch,
    )
    sampler = loaders.make_sampler(data, cfg)
    train_loader = loaders.train_loader(data, cfg, sampler, pin_memory=device.type == "cuda")
    val_loader = loaders.validation_loader(data, cfg, pin_memory=device.type == "cuda")
    truth = primary_truth(data.validation, data.labels)
    for epoch in range(progress.epoch, cfg.optim.epochs):
        if trainer.limit_reached(progress):
            break
        sampler.set_epoch(epoch)
        trainer.augment.set_epoch(epoch)
        train_loss = train_one_epoch(trainer, train_loader, progress)
        result = evaluate(trainer, val_loader, truth)
        record = epoch_record(epoch, train_loss, result, trainer.optimizer.param_groups[0]["lr"])
        metrics_logger.info(format_metrics(record))
        end_of_epoch(trainer, progress, record, env.checkpoint_dir, cfg, data.labels)
    return finish(trainer, progress, env, cfg, data.labels)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def optimizer_steps_per_epoch(train_items: int, cfg: Config) -> int:
    batches = math.ceil(train_items / cfg.optim.batch_size)
    return math.ceil(batches / cfg.optim.grad_accum_steps)


def build_trainer(
    cfg: Config, model: torch.nn.Module, data: loaders.TrainingData, device: torch.device, steps_per_epoch: int
) -> Trainer:
    precision = mixed_precision(cfg.run.amp, device)
    optimizer = create_optimizer(model, cfg.optim)
    return Trainer(
        model=model,
        loss_fn=create_loss(cfg.loss, loaders.class_weight_tensor(data)).to(device),
        optimizer=optimizer,
        scheduler=create_scheduler(optimizer, cfg.optim, steps_per_epoch),
        scaler=precision.grad_scaler(),
        precision=precision,
        device=device,
        grad_accum_steps=cfg.optim.grad_accum_steps,
        max_grad_norm=cfg.optim.max_grad_norm,
        max_steps=cfg.optim.max_steps,
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
    progress.epoch = record["epoch"]
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
        "epoch": progress.epoch,
        "step": progress.step,
        "best_score": progress.best_score,
        "history": progress.history,
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
    logger.info("Resumed at epoch=%d step=%d", state["epoch"], state["step"])
    return Progress(
        epoch=state["epoch"], step=state["step"], best_score=state["best_score"], history=list(state["history"])
    )


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
