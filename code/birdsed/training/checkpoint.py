"""Checkpoints in `/opt/ml/checkpoints`: atomic writes, the last few kept, safe loading.

A checkpoint is one dict of tensors and plain values, so it loads with `weights_only=True`.
It is written to a temporary file in the same directory, flushed to disk, then renamed: a kill
at any instant leaves either the old set or the new one, never a half-written file under a
checkpoint name. SageMaker syncs this directory to S3 and copies it back on a restart.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^checkpoint-(\d{8})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints, oldest first (by the optimizer step in their name)."""
    if not directory.is_dir():
        return []
    found = [path for path in directory.iterdir() if NAME_PATTERN.match(path.name)]
    return sorted(found, key=lambda path: int(NAME_PATTERN.match(path.name).group(1)))


def atomic_save(state: dict, path: Path) -> None:
    """Write `state` to `path` so that `path` is either absent/old or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(directory: Path, state: dict, step: int, keep: int) -> Path:
    """Save a checkpoint for `step` and prune all but the newest `keep`."""
    path = directory / checkpoint_name(step)
    atomic_save(state, path)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files left by a process killed while writing (they were never renamed)."""
    if not directory.is_dir():
        return
    for path in directory.glob(".*.tmp-*"):
        logger.info("Removing %s, left by an interrupted write", path.name)
        path.unlink(missing_ok=True)


def load_latest_checkpoint(directory: Path) -> dict | None:
    """The newest checkpoint that loads; corrupt or truncated ones are reported and passed over."""
    remove_stale_temporaries(directory)
    for path in reversed(list_checkpoints(directory)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file means "try the previous one"
            logger.warning("Checkpoint %s is unreadable (%s); trying the previous one", path.name, error)
            continue
        logger.info("Resuming from %s", path.name)
        return state
    return None
