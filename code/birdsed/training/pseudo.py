"""Pseudo-labels from unlabelled soundscapes: predict every window, keep the confident ones as soft targets.

The prediction pass streams each recording in consecutive windows of the training `duration`
(the windows and row ids of `code/predict.py`), decodes in DataLoader workers while the device
predicts batches with the job's mixed precision, and keeps only what a kept window needs (its
recording, start and sparse soft target): memory stays flat for multi-hour files. With several
processes each predicts its share of the recordings and the kept windows are gathered, in one
order whatever the number of processes.

Training then swaps pseudo-labelled windows into batches (`PseudoMixSampler`): every item of an
epoch is, with probability `pseudo_p`, replaced by a kept window drawn uniformly. The swapped items
go through the same augmentations as focal crops.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from birdsed.atomic import atomic_open
from birdsed.config import SoundscapeConfig
from birdsed.data.audio import PCM_SCALE, AudioReadError, RawAudio, fit_length, to_pcm16
from birdsed.data.dataset import CropDataset
from birdsed.data.sampler import WeightedEpochSampler, epoch_generator
from birdsed.data.soundscapes import UNLABELLED_CHANNEL, SoundscapeFile, consecutive_windows
from birdsed.errors import DataError
from birdsed.predict import Predictor, format_seconds
from birdsed.training.distributed import Distributed
from birdsed.training.soundscape_validation import shard_by_load

logger = logging.getLogger(__name__)

MIX_STREAM = 3  # `epoch_generator` stream of the swap draws (the sampler's own draws are stream 1)


def pseudo_targets(
    probabilities: np.ndarray, threshold: float, power: float, minimum: float
) -> tuple[np.ndarray, np.ndarray]:
    """`[N, K]` probabilities -> (kept `[N]`, soft targets `[N, K]`).

    A window is kept when its top probability is >= `threshold`; its targets are the probabilities
    raised to `power`, with values below `minimum` (after the power) set to 0.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    kept = probabilities.max(axis=1, initial=0.0) >= threshold
    targets = probabilities**power
    targets[targets < minimum] = 0.0
    return kept, targets.astype(np.float32)


@dataclass(frozen=True)
class PseudoLabels:
    """The kept windows of one round, sorted by recording then start; targets stored sparse (CSR)."""

    round: int
    files: list[str]  # recordings (paths below the channel) that have kept windows
    file_index: np.ndarray  # [M] into `files`
    starts: np.ndarray  # [M] first sample, at the job's sample rate
    confidence: np.ndarray  # [M] top probability
    indptr: np.ndarray  # [M + 1] CSR row pointers into `columns` / `values`
    columns: np.ndarray  # [nnz] class index
    values: np.ndarray  # [nnz] soft target
    windows: int  # windows predicted (kept or not)
    mean_confidence: float  # mean top probability over all predicted windows

    def __len__(self) -> int:
        return len(self.starts)

    def target(self, index: int, num_classes: int) -> np.ndarray:
        dense = np.zeros(num_classes, dtype=np.float32)
        row = slice(self.indptr[index], self.indptr[index + 1])
        dense[self.columns[row]] = self.values[row]
        return dense

    def summary(self) -> str:
        """The round's log line."""
        return (
            f"round={self.round} pseudo_windows={self.windows} kept={len(self)} "
            f"mean_confidence={self.mean_confidence:.6f}"
        )

    def state_dict(self) -> dict:
        """Tensors and plain values only: checkpoints load with `weights_only=True`."""
        arrays = ("file_index", "starts", "confidence", "indptr", "columns", "values")
        return {
            "round": self.round,
            "files": list(self.files),
            "windows": self.windows,
            "mean_confidence": self.mean_confidence,
            **{name: torch.from_numpy(np.ascontiguousarray(getattr(self, name))) for name in arrays},
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> PseudoLabels:
        arrays = {name: state[name].numpy() for name in ("file_index", "starts", "confidence", "indptr", "columns")}
        return cls(
            round=int(state["round"]),
            files=list(state["files"]),
            windows=int(state["windows"]),
            mean_confidence=float(state["mean_confidence"]),
            values=state["values"].numpy(),
            **arrays,
        )


# ---- the prediction pass ----


class WindowStream(IterableDataset):
    """Consecutive windows of this process's recordings; DataLoader workers split the recordings."""

    def __init__(self, files: list[SoundscapeFile], share: list[int], sample_rate: int, length: int) -> None:
        self.files, self.share, self.sample_rate, self.length = files, share, sample_rate, length

    def __iter__(self) -> Iterator[dict[str, object]]:
        worker = get_worker_info()
        share = self.share if worker is None else self.share[worker.id :: worker.num_workers]
        for file_index in share:
            path = self.files[file_index].path
            try:
                for window, samples in enumerate(consecutive_windows(path, self.sample_rate, self.length)):
                    yield {"file": file_index, "window": window, "waveform": torch.from_numpy(to_pcm16(samples)[0])}
            except AudioReadError as error:
                logger.warning("Soundscape %s stopped decoding (%s); its windows so far are used", path, error)


@dataclass
class _Kept:
    """What one process keeps while predicting: only the kept windows, with sparse targets."""

    file: list[np.ndarray]
    window: list[np.ndarray]
    confidence: list[np.ndarray]
    rows: list[np.ndarray]
    columns: list[np.ndarray]
    values: list[np.ndarray]
    windows: int = 0
    confidence_sum: float = 0.0
    count: int = 0  # kept so far
    stopped: bool = False

    @classmethod
    def empty(cls) -> _Kept:
        return cls([], [], [], [], [], [])

    def add(self, files: np.ndarray, windows: np.ndarray, probabilities: np.ndarray, cfg: SoundscapeConfig) -> None:
        top = probabilities.max(axis=1)
        self.windows += len(top)
        self.confidence_sum += float(top.astype(np.float64).sum())
        kept, targets = pseudo_targets(probabilities, cfg.pseudo_threshold, cfg.pseudo_power, cfg.pseudo_min)
        rows, columns = np.nonzero(targets[kept])
        self.file.append(files[kept])
        self.window.append(windows[kept])
        self.confidence.append(top[kept])
        self.rows.append(rows + self.count)
        self.count += int(kept.sum())
        self.columns.append(columns)
        self.values.append(targets[kept][rows, columns])

    def arrays(self) -> dict[str, np.ndarray]:
        def join(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

        return {
            "file": join(self.file, np.int64),
            "window": join(self.window, np.int64),
            "confidence": join(self.confidence, np.float32),
            "rows": join(self.rows, np.int64),
            "columns": join(self.columns, np.int64),
            "values": join(self.values, np.float32),
        }


def predict_share(
    predictor: Predictor,
    files: list[SoundscapeFile],
    share: list[int],
    length: int,
    loader_options: dict,
    cfg: SoundscapeConfig,
    stop_requested: object,
) -> _Kept:
    """Predict every window of this process's recordings; keep the confident ones."""
    stream = WindowStream(files, share, predictor.loaded.cfg.data.sample_rate, length)
    loader = DataLoader(stream, batch_size=predictor.batch_size, **loader_options)
    kept = _Kept.empty()
    for batch in loader:
        if stop_requested():
            kept.stopped = True
            break
        waveform = batch["waveform"].numpy().astype(np.float32) * (1.0 / PCM_SCALE)
        probabilities = predictor.predict_windows(waveform)["clipwise"]
        kept.add(batch["file"].numpy(), batch["window"].numpy(), probabilities, cfg)
    return kept


def label_round(
    round_number: int,
    predictor: Predictor,
    files: list[SoundscapeFile],
    length: int,
    loader_options: dict,
    cfg: SoundscapeConfig,
    group: Distributed,
    stop_requested: object,
) -> PseudoLabels | None:
    """Every process predicts its share; the kept windows of all are gathered. None: a stop was requested."""
    started = time.perf_counter()
    predictor.loaded.model.eval()
    share = shard_by_load([float(file.frames) for file in files], group.world_size)[group.rank]
    local = predict_share(predictor, files, share, length, loader_options, cfg, stop_requested)
    parts = group.gather((local.arrays(), local.windows, local.confidence_sum, local.stopped))
    if any(part[3] for part in parts):
        return None
    labels = merge(round_number, [part[0] for part in parts], files, length)
    windows = sum(part[1] for part in parts)
    confidence = sum(part[2] for part in parts) / windows if windows else float("nan")
    labels = dataclasses.replace(labels, windows=windows, mean_confidence=confidence)
    seconds = time.perf_counter() - started
    logger.info(
        "Round %d: predicted %d soundscape windows of %d recordings in %.1f s (%.1f windows/s)",
        round_number, windows, len(files), seconds, windows / max(seconds, 1e-9),
    )  # fmt: skip
    return labels


def merge(
    round_number: int, parts: list[dict[str, np.ndarray]], files: list[SoundscapeFile], length: int
) -> PseudoLabels:
    """The processes' kept windows as one set, sorted by recording then window (independent of their number)."""
    file = np.concatenate([part["file"] for part in parts])
    window = np.concatenate([part["window"] for part in parts])
    confidence = np.concatenate([part["confidence"] for part in parts])
    offsets = np.cumsum([0] + [len(part["file"]) for part in parts])
    rows = np.concatenate([part["rows"] + offset for part, offset in zip(parts, offsets, strict=False)])
    columns = np.concatenate([part["columns"] for part in parts])
    values = np.concatenate([part["values"] for part in parts])
    order = np.lexsort((window, file))  # by file, then window
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    entries = np.lexsort((columns, rank[rows]))  # CSR entries in the new row order
    new_rows, columns, values = rank[rows][entries], columns[entries], values[entries]
    used = np.unique(file)
    names = [files[index].name for index in used]
    return PseudoLabels(
        round=round_number,
        files=names,
        file_index=np.searchsorted(used, file[order]).astype(np.int64),
        starts=(window[order] * length).astype(np.int64),
        confidence=confidence[order].astype(np.float32),
        indptr=np.concatenate([[0], np.cumsum(np.bincount(new_rows, minlength=len(order)))]).astype(np.int64),
        columns=columns.astype(np.int64),
        values=values.astype(np.float32),
        windows=0,
        mean_confidence=float("nan"),
    )


def write_csv(path: Path, labels: PseudoLabels, classes: list[str], sample_rate: int, length: int) -> None:
    """`pseudo_labels_round<R>.csv`: one row per kept window, its soft targets by class; atomic."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "start", "end", "confidence", *classes])
        for index in range(len(labels)):
            start = labels.starts[index] / sample_rate
            target = labels.target(index, len(classes))
            writer.writerow([
                labels.files[labels.file_index[index]],
                format_seconds(start),
                format_seconds(start + length / sample_rate),
                f"{labels.confidence[index]:.4f}",
                *(f"{value:.4f}" if value else "0" for value in target),
            ])  # fmt: skip


# ---- training on them ----


class PseudoWindowDataset(Dataset):
    """Kept windows as training items: `duration` of audio from the recording, the soft target, weight 1."""

    def __init__(self, labels: PseudoLabels, channel_dir: Path, num_classes: int, sample_rate: int, length: int):
        self.labels, self.num_classes, self.length = labels, num_classes, length
        self.paths = [channel_dir / name for name in labels.files]
        missing = [str(path) for path in self.paths if not path.is_file()]
        if missing:
            raise DataError(
                f"The pseudo-labels of round {labels.round} name {len(missing)} recording(s) that are not in the "
                f"'{UNLABELLED_CHANNEL}' channel (e.g. {missing[0]}); resume with the same channel, or use a new "
                "checkpoint location."
            )
        self.source = RawAudio(sample_rate)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path = self.paths[self.labels.file_index[index]]
        weight = 1.0
        try:
            waveform = fit_length(self.source.read(path, int(self.labels.starts[index]), self.length), self.length)
        except AudioReadError as error:
            logger.warning("Skipping a pseudo-labelled window of %s: %s", path, error)
            waveform, weight = np.zeros(self.length, dtype=np.int16), 0.0
        return {
            "waveform": torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.int16)),
            "target": torch.from_numpy(self.labels.target(index, self.num_classes)),
            "weight": torch.tensor(weight, dtype=torch.float32),
        }


class MixedDataset(Dataset):
    """Focal crops (indices below `len(focal)`) and pseudo-labelled windows (the indices after)."""

    def __init__(self, focal: CropDataset, pseudo: PseudoWindowDataset) -> None:
        self.focal, self.pseudo = focal, pseudo

    def __len__(self) -> int:
        return len(self.focal) + len(self.pseudo)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, _ = key
        if index < len(self.focal):
            return self.focal[key]
        return self.pseudo[index - len(self.focal)]


class PseudoMixSampler(Sampler[tuple[int, int]]):
    """The focal sampler's draws, each swapped with probability `p` for a uniformly drawn pseudo window.

    The swaps depend only on (seed, epoch, position), like the focal draws, so an epoch is the same
    in every run, resumed mid-epoch (`set_epoch(epoch, start)`) or not, and the processes of a
    multi-GPU job take disjoint shares of one sequence.
    """

    def __init__(self, base: WeightedEpochSampler, focal_count: int, pseudo_count: int, p: float, seed: int) -> None:
        self.base, self.focal_count, self.pseudo_count, self.p, self.seed = base, focal_count, pseudo_count, p, seed

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.base.set_epoch(epoch, start)

    def swaps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of the epoch: which positions are swapped, and for which pseudo window."""
        base = self.base
        generator = epoch_generator(self.seed, base.epoch, stream=MIX_STREAM)
        total = base.per_rank * base.world_size
        swapped = torch.rand(total, generator=generator) < self.p
        picks = torch.randint(0, max(self.pseudo_count, 1), (total,), generator=generator)
        if not self.pseudo_count:
            swapped[:] = False
        return swapped[base.rank :: base.world_size], picks[base.rank :: base.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, crop_seeds = self.base.draws()
        swapped, picks = self.swaps()
        for position in range(self.base.start, self.base.per_rank):
            index = self.focal_count + int(picks[position]) if swapped[position] else int(indices[position])
            yield index, int(crop_seeds[position])

    def __len__(self) -> int:
        return len(self.base)
