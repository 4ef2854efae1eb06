"""Scoring labelled soundscape windows every epoch: `val_soundscape_auc` and `val_soundscape_cmap`.

A window of any length is cut into consecutive windows of the training `duration` (the last one
zero-padded) exactly as `code/predict.py` cuts a recording, run through the model by the same
`Predictor`, and scored by the maximum over its pieces: a bird anywhere in the window counts. The
pieces are decoded once, when the job starts, and kept as 16-bit samples; each process keeps and
scores the windows of its share of the recordings, and the scores are gathered.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from birdsed.config import Config
from birdsed.data.audio import PCM_SCALE, to_pcm16
from birdsed.data.soundscapes import LabelledWindows, safe_spans
from birdsed.export import window_samples
from birdsed.metrics import macro_roc_auc, padded_cmap
from birdsed.predict import LoadedModel, Predictor, cut_windows
from birdsed.training.amp import MixedPrecision
from birdsed.training.distributed import Distributed, assemble_rows

logger = logging.getLogger(__name__)

# Pieces scored between two checks for a stop request.
CHUNK_BATCHES = 8


@dataclass
class SoundscapeValidation:
    truth: np.ndarray  # [N, K] every window, on every process
    pieces: np.ndarray  # [S, samples] int16: this process's duration-long pieces
    owners: np.ndarray  # [S] position in `mine` of each piece's window
    mine: np.ndarray  # [n] the windows (indices into `truth`) this process scores
    chunk: int  # pieces per chunk
    chunks: int  # chunks per process, the same on every process (their collectives stay in step)


def shard_by_load(loads: list[float], world_size: int) -> list[list[int]]:
    """Items dealt to `world_size` shares, heaviest first to the lightest share: balanced and deterministic."""
    shares: list[list[int]] = [[] for _ in range(world_size)]
    totals = [0.0] * world_size
    for item in sorted(range(len(loads)), key=lambda index: (-loads[index], index)):
        lightest = min(range(world_size), key=lambda rank: (totals[rank], rank))
        shares[lightest].append(item)
        totals[lightest] += loads[item]
    return [sorted(share) for share in shares]


def load(windows: LabelledWindows, cfg: Config, group: Distributed) -> SoundscapeValidation:
    """Decode this process's share of the windows into duration-long pieces."""
    sample_rate, length = cfg.data.sample_rate, window_samples(cfg)
    seconds = windows.ends - windows.starts
    loads = [float(seconds[windows.file_index == index].sum()) for index in range(len(windows.files))]
    my_files = shard_by_load(loads, group.world_size)[group.rank]
    mine = np.flatnonzero(np.isin(windows.file_index, my_files))  # in file order, then start: as read
    pieces, owners = [], []
    for file_index in my_files:
        rows = np.flatnonzero(windows.file_index == file_index)
        spans = [
            (int(round(windows.starts[row] * sample_rate)), int(round(windows.ends[row] * sample_rate))) for row in rows
        ]
        segments = safe_spans(windows.files[file_index].path, sample_rate, spans)
        for owner, segment in zip(np.searchsorted(mine, rows), segments, strict=True):
            cut = cut_windows(segment, length)
            pieces.append(to_pcm16(cut)[0])
            owners.extend([owner] * len(cut))
    stacked = np.concatenate(pieces) if pieces else np.zeros((0, length), dtype=np.int16)
    chunk = CHUNK_BATCHES * cfg.optim.batch_size
    chunks = max(math.ceil(count / chunk) for count in group.gather(len(stacked)))
    total = sum(group.gather(stacked.nbytes))
    logger.info(
        "soundscape_validation windows=%d pieces=%d audio_mb=%.0f (16-bit, held for the whole job)",
        len(windows), sum(group.gather(len(stacked))), total / 2**20,
    )  # fmt: skip
    return SoundscapeValidation(windows.truth, stacked, np.asarray(owners, dtype=np.int64), mine, chunk, chunks)


def score_pieces(predictor: Predictor, pieces: np.ndarray) -> np.ndarray:
    """int16 pieces `[S, samples]` -> clip-wise probabilities `[S, K]`, by `code/predict.py`'s predictor."""
    return predictor.predict_windows(pieces.astype(np.float32) * (1.0 / PCM_SCALE))["clipwise"]


def window_scores(piece_scores: np.ndarray, owners: np.ndarray, windows: int) -> np.ndarray:
    """The maximum over each window's pieces: `[S, K]` -> `[windows, K]`."""
    scores = np.zeros((windows, piece_scores.shape[1]), dtype=np.float32)
    np.maximum.at(scores, owners, piece_scores)
    return scores


def soundscape_metrics(truth: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Macro ROC-AUC over the classes present (BirdCLEF 2024/25) and padded cmAP (BirdCLEF 2023)."""
    return {"val_soundscape_auc": macro_roc_auc(truth, scores), "val_soundscape_cmap": padded_cmap(truth, scores)}


@torch.no_grad()
def evaluate_soundscapes(
    validation: SoundscapeValidation,
    model: nn.Module,
    loaded: LoadedModel,
    precision: MixedPrecision | None,
    device: torch.device,
    group: Distributed,
    stop_requested: object,
) -> dict[str, float] | None:
    """Both metrics over every window (all processes take part); None when a stop was requested.

    `model` is the trained model (the DDP wrapper, if any); `loaded` holds its unwrapped module.
    `stop_requested()` is asked once per chunk, by every process together.
    """
    group.broadcast_buffers(loaded.model)
    model.eval()
    predictor = Predictor(loaded, device, validation.chunk // CHUNK_BATCHES, precision)
    parts = [np.zeros((0, len(loaded.labels)), dtype=np.float32)]
    for index in range(validation.chunks):
        if group.any(bool(stop_requested())):
            return None
        pieces = validation.pieces[index * validation.chunk : (index + 1) * validation.chunk]
        if len(pieces):
            parts.append(score_pieces(predictor, pieces))
    local = window_scores(np.concatenate(parts), validation.owners, len(validation.mine))
    scores = assemble_rows(group.gather((validation.mine.tolist(), local)), len(validation.truth))
    return soundscape_metrics(validation.truth, scores)
