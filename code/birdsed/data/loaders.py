"""From channels to DataLoaders: labels, split, datasets, weighted sampling, worker settings.

Which recordings of a channel are usable (probing, skip policy) is `birdsed.data.recordings`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from birdsed.config import Config
from birdsed.data import cache, metadata
from birdsed.data.dataset import CropDataset, CropSource
from birdsed.data.recordings import usable_recordings
from birdsed.data.sampler import ShardSampler, WeightedEpochSampler
from birdsed.errors import DataError

logger = logging.getLogger(__name__)

# Batches each worker keeps ready: enough to ride out a slow read (a cold S3-backed file).
PREFETCH_BATCHES = 4


@dataclass(frozen=True)
class TrainingData:
    labels: list[str]
    train: CropDataset
    validation: CropDataset
    source: str  # "cache" or "raw": what the train channel holds
    sampler_weights: np.ndarray
    class_weights: np.ndarray


def load_training_data(cfg: Config, train_dir: Path | None, validation_dir: Path | None) -> TrainingData:
    """Read the channels, drop unusable recordings, split, and weight; fail early with a reason."""
    if train_dir is None or not train_dir.is_dir():
        raise DataError(
            "The required 'train' channel is missing: give the job a 'train' input channel "
            "(S3 prefix holding train_metadata.csv and train_audio/)."
        )
    frame, train_source = usable_recordings(train_dir, "train", cfg)
    labels = metadata.build_vocabulary(frame)
    if validation_dir is not None:
        train_frame, (val_frame, val_source) = frame, usable_recordings(validation_dir, "validation", cfg)
        _check_known_labels(val_frame, labels)
        _warn_overlap(train_frame, val_frame)
    else:
        train_frame, val_frame = metadata.split_train_validation(frame, cfg.data.val_fraction, cfg.run.seed)
        val_source = train_source
    train_frame, val_frame = metadata.fill_ratings(train_frame), metadata.fill_ratings(val_frame)
    logger.info(
        "classes=%d train_recordings=%d validation_recordings=%d", len(labels), len(train_frame), len(val_frame)
    )
    return TrainingData(
        labels=labels,
        train=_dataset(cfg, train_frame, labels, train_source),
        validation=_dataset(cfg, val_frame, labels, val_source),
        source="cache" if isinstance(train_source, cache.CachedWaveforms) else "raw",
        sampler_weights=metadata.sampling_weights(train_frame, labels),
        class_weights=metadata.class_weights(train_frame, labels),
    )


def _check_known_labels(frame: pd.DataFrame, labels: list[str]) -> None:
    unknown = sorted(set(frame["primary_label"]) - set(labels))
    if unknown:
        raise DataError(
            f"The validation channel has primary label(s) that training does not: {', '.join(unknown[:10])}. "
            "Every validation label must also appear as a primary label in the train channel."
        )


def _warn_overlap(train_frame: pd.DataFrame, val_frame: pd.DataFrame) -> None:
    """The same recording in both channels inflates every validation score; say so (it is not an error)."""
    shared = sorted(set(train_frame["filename"]) & set(val_frame["filename"]))
    if shared:
        logger.warning(
            "%d of the %d validation recordings are also in the train channel (same filename, e.g. %s): validation "
            "scores will look better than they are. Remove them from one of the channels.",
            len(shared),
            len(val_frame),
            shared[:3],
        )


def _dataset(cfg: Config, frame: pd.DataFrame, labels: list[str], source: CropSource) -> CropDataset:
    recordings = metadata.make_recordings(frame, labels, cfg.data.secondary_weight)
    seconds = frame["seconds"].to_numpy() if len(frame) else np.zeros(0)
    return CropDataset(
        recordings, seconds, cfg.data.sample_rate, cfg.data.duration, source, cfg.data.crop, cfg.data.crop_candidates
    )


def resolve_num_workers(requested: int, processes_per_node: int = 1) -> int:
    """-1 means the CPUs this host may use, shared between its training processes."""
    if requested >= 0:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // processes_per_node)


def worker_options(num_workers: int, pin_memory: bool, processes_per_node: int = 1, seed: int = 0) -> dict[str, object]:
    """Workers that live for the whole job (no restart per epoch), each a few batches ahead.

    The sampler stays in the main process, so `set_epoch` still takes effect every epoch with
    persistent workers: each epoch's `iter(loader)` draws its indices anew and sends them out.
    Worker seeds come from the loader's own generator, not the global RNG, so starting an
    iterator (and once more on a mid-epoch resume) does not shift dropout's RNG.
    """
    workers = resolve_num_workers(num_workers, processes_per_node)
    return {
        "num_workers": workers,
        "pin_memory": pin_memory,
        "persistent_workers": workers > 0,
        "prefetch_factor": PREFETCH_BATCHES if workers else None,
        "generator": torch.Generator().manual_seed(seed),
    }


def train_loader(
    data: TrainingData, cfg: Config, sampler: WeightedEpochSampler, pin_memory: bool, processes_per_node: int = 1
) -> DataLoader:
    options = worker_options(cfg.data.num_workers, pin_memory, processes_per_node, cfg.run.seed)
    return DataLoader(data.train, batch_size=cfg.optim.batch_size, sampler=sampler, drop_last=False, **options)


def validation_loader(
    data: TrainingData, cfg: Config, sampler: ShardSampler, pin_memory: bool, processes_per_node: int = 1
) -> DataLoader:
    options = worker_options(cfg.data.num_workers, pin_memory, processes_per_node, cfg.run.seed)
    return DataLoader(data.validation, batch_size=cfg.optim.batch_size, sampler=sampler, **options)


def epoch_crops(train_recordings: int, min_epoch_crops: int) -> int:
    """Crops drawn per epoch: one per training recording, and at least `min_epoch_crops`.

    Small datasets need it: at one crop per recording, 100 recordings and batch 32 make 3 optimizer steps
    an epoch, 90 in a default job, far too few to train a network (docs/recipe.md). Large datasets are
    unaffected (an epoch stays one pass, in expectation, over their recordings).
    """
    return max(train_recordings, min_epoch_crops)


def make_sampler(data: TrainingData, cfg: Config, rank: int = 0, world_size: int = 1) -> WeightedEpochSampler:
    crops = epoch_crops(len(data.train), cfg.data.min_epoch_crops)
    if rank == 0 and crops > len(data.train):
        logger.info(
            "epoch_crops=%d: %d training recordings < min_epoch_crops=%d, so each is cropped about %.1f times an epoch",
            crops, len(data.train), cfg.data.min_epoch_crops, crops / max(1, len(data.train)),
        )  # fmt: skip
    return WeightedEpochSampler(
        data.sampler_weights, num_samples=crops, seed=cfg.run.seed, rank=rank, world_size=world_size
    )


def class_prior(data: TrainingData) -> np.ndarray:
    """Each class's mean target over the training recordings as the sampler draws them (weighted): the
    rate at which the model will see it, before augmentation."""
    targets = np.asarray(data.train.recordings.targets, dtype=np.float64)
    weights = np.asarray(data.sampler_weights, dtype=np.float64)
    if not len(targets) or weights.sum() <= 0:
        return np.full(len(data.labels), 1.0 / max(len(data.labels), 1))
    return weights @ targets / weights.sum()


def class_weight_tensor(data: TrainingData) -> torch.Tensor:
    return torch.as_tensor(data.class_weights, dtype=torch.float32)
