"""From channels to DataLoaders: metadata, split, usable files, datasets, weighted sampling."""

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
from birdsed.data import metadata
from birdsed.data.audio import AudioInfo, probe_many
from birdsed.data.dataset import CropDataset
from birdsed.data.sampler import ShardSampler, WeightedEpochSampler
from birdsed.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    labels: list[str]
    train: CropDataset
    validation: CropDataset
    sampler_weights: np.ndarray
    class_weights: np.ndarray


def load_training_data(cfg: Config, train_dir: Path | None, validation_dir: Path | None) -> TrainingData:
    """Read the channels, drop unusable recordings, split, and weight; fail early with a reason."""
    if train_dir is None or not train_dir.is_dir():
        raise DataError(
            "The required 'train' channel is missing: give the job a 'train' input channel "
            "(S3 prefix holding train_metadata.csv and train_audio/)."
        )
    frame = _usable(metadata.read_metadata(train_dir), "train")
    labels = metadata.build_vocabulary(frame)
    if validation_dir is not None:
        train_frame, val_frame = frame, _usable(metadata.read_metadata(validation_dir), "validation")
        _check_known_labels(val_frame, labels)
    else:
        train_frame, val_frame = metadata.split_train_validation(frame, cfg.data.val_fraction, cfg.run.seed)
    train_frame, val_frame = metadata.fill_ratings(train_frame), metadata.fill_ratings(val_frame)
    logger.info(
        "classes=%d train_recordings=%d validation_recordings=%d", len(labels), len(train_frame), len(val_frame)
    )
    return TrainingData(
        labels=labels,
        train=_dataset(cfg, train_frame, labels),
        validation=_dataset(cfg, val_frame, labels),
        sampler_weights=metadata.sampling_weights(train_frame, labels),
        class_weights=metadata.class_weights(train_frame, labels),
    )


def _usable(frame: pd.DataFrame, channel: str) -> pd.DataFrame:
    """Probe every file once; skip (and name) those that cannot be read."""
    infos = probe_many(list(frame["path"]))
    usable = [isinstance(info, AudioInfo) for info in infos]
    for path, info in zip(frame["path"], infos, strict=False):
        if not isinstance(info, AudioInfo):
            logger.warning("Skipping %s: %s", path, info)
    skipped = len(frame) - sum(usable)
    logger.info("channel=%s skipped_files=%d usable_files=%d", channel, skipped, sum(usable))
    if not any(usable):
        raise DataError(
            f"None of the {len(frame)} recordings listed in the '{channel}' channel's metadata could be "
            "read (see the log for each file's reason); check that train_audio/ holds the files "
            "named in the 'filename' column."
        )
    seconds = [info.seconds for info in infos if isinstance(info, AudioInfo)]
    return frame[usable].assign(seconds=seconds).reset_index(drop=True)


def _check_known_labels(frame: pd.DataFrame, labels: list[str]) -> None:
    unknown = sorted(set(frame["primary_label"]) - set(labels))
    if unknown:
        raise DataError(
            f"The validation channel has primary label(s) that training does not: {', '.join(unknown[:10])}. "
            "Every validation label must also appear as a primary label in the train channel."
        )


def _dataset(cfg: Config, frame: pd.DataFrame, labels: list[str]) -> CropDataset:
    recordings = metadata.make_recordings(frame, labels, cfg.data.secondary_weight)
    seconds = frame["seconds"].to_numpy() if len(frame) else np.zeros(0)
    return CropDataset(recordings, seconds, cfg.data.sample_rate, cfg.data.duration)


def resolve_num_workers(requested: int, processes_per_node: int = 1) -> int:
    """-1 means the CPUs this host may use, shared between its training processes."""
    if requested >= 0:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // processes_per_node)


def train_loader(
    data: TrainingData, cfg: Config, sampler: WeightedEpochSampler, pin_memory: bool, processes_per_node: int = 1
) -> DataLoader:
    workers = resolve_num_workers(cfg.data.num_workers, processes_per_node)
    return DataLoader(
        data.train,
        batch_size=cfg.optim.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        generator=_loader_generator(cfg),
    )


def validation_loader(
    data: TrainingData, cfg: Config, sampler: ShardSampler, pin_memory: bool, processes_per_node: int = 1
) -> DataLoader:
    workers = resolve_num_workers(cfg.data.num_workers, processes_per_node)
    return DataLoader(
        data.validation,
        batch_size=cfg.optim.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=_loader_generator(cfg),
    )


def _loader_generator(cfg: Config) -> torch.Generator:
    # Worker seeds come from this generator, not the global RNG, so starting a DataLoader
    # iterator (every epoch, and once more on a mid-epoch resume) does not shift dropout's RNG.
    return torch.Generator().manual_seed(cfg.run.seed)


def make_sampler(data: TrainingData, cfg: Config, rank: int = 0, world_size: int = 1) -> WeightedEpochSampler:
    return WeightedEpochSampler(
        data.sampler_weights, num_samples=len(data.train), seed=cfg.run.seed, rank=rank, world_size=world_size
    )


def class_weight_tensor(data: TrainingData) -> torch.Tensor:
    return torch.as_tensor(data.class_weights, dtype=torch.float32)
