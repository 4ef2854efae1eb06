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

from birdsed.atomic import TEMPORARY_MARK, atomic_open

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^checkpoint-(\d{8})\.pt$")
# What every checkpoint this code writes holds; a file without them is not ours.
CHECKPOINT_KEYS = ("model", "progress")
# Appended to the name of a file under a checkpoint name that does not load (no longer matches NAME_PATTERN).
UNREADABLE_SUFFIX = ".unreadable"


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
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)


def save_checkpoint(directory: Path, state: dict, step: int, keep: int) -> Path:
    """Save a checkpoint for `step` and prune all but the newest `keep` that load.

    Only checkpoints that load count towards `keep`: an unreadable or foreign file under a
    checkpoint name (a truncated copy, another program's file, one with a higher step left by an
    earlier run) is moved aside, never kept in place of a good one, so pruning cannot delete every
    checkpoint that would resume the job.
    """
    path = directory / checkpoint_name(step)
    atomic_save(state, path)
    kept = 1  # the one just written and flushed
    for old in reversed(list_checkpoints(directory)):
        if old == path:
            continue
        problem = checkpoint_problem(old)  # at most keep + 1 files are here: the others were pruned before
        if problem is not None:
            move_aside(old, problem)
        elif kept < keep:
            kept += 1
        else:
            old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path, mmap: bool = False) -> dict:
    """Load a checkpoint (tensors only, `weights_only`); raise `ValueError` saying why it is not one of ours.

    `mmap=True` maps the tensors instead of reading them: checking a file costs its index, not its size.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # noqa: BLE001 - any failure to load means "not a usable checkpoint"
        raise ValueError(f"unreadable: {type(error).__name__}: {first_line(error)}") from None
    if not isinstance(state, dict) or not set(CHECKPOINT_KEYS) <= set(state):
        found = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"not a birdsed checkpoint (no {' and '.join(CHECKPOINT_KEYS)}; found {found})")
    return state


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot resume a job, or None when it loads (cheaply: tensors are only mapped)."""
    try:
        read_checkpoint(path, mmap=True)
    except ValueError as error:
        return str(error)
    return None


def move_aside(path: Path, problem: str) -> Path:
    """Rename a file that is not a usable checkpoint to `<name>.unreadable` (kept for inspection), with a warning."""
    target = path.with_name(path.name + UNREADABLE_SUFFIX)
    os.replace(path, target)
    logger.warning("%s is %s; moved aside to %s", path.name, problem, target.name)
    return target


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else "no message"


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files left by a process killed while writing (they were never renamed)."""
    if not directory.is_dir():
        return
    for path in directory.glob(f".*{TEMPORARY_MARK}*"):
        logger.info("Removing %s, left by an interrupted write", path.name)
        path.unlink(missing_ok=True)


def load_latest_checkpoint(directory: Path) -> dict | None:
    """The newest checkpoint that loads; corrupt, truncated or foreign ones are reported and moved aside."""
    remove_stale_temporaries(directory)
    for path in reversed(list_checkpoints(directory)):
        try:
            state = read_checkpoint(path)
        except ValueError as error:
            logger.warning("Checkpoint %s is unreadable (%s); trying the previous one", path.name, error)
            move_aside(path, str(error))
            continue
        logger.info("Resuming from %s", path.name)
        return state
    return None


def load_epoch_checkpoint(directory: Path, epoch: int) -> tuple[Path, dict] | None:
    """The checkpoint written at the end of `epoch` (1-based) if one loads, else the newest that loads.

    For the model of a finished run whose best weights file is unreadable. Tensors are mapped, not read.
    """
    newest = None
    for path in reversed(list_checkpoints(directory)):
        try:
            state = read_checkpoint(path, mmap=True)
        except ValueError:
            continue
        progress = state["progress"]
        if progress.get("epoch") == epoch and not progress.get("batches_done"):
            return path, state
        newest = newest or (path, state)
    return newest
