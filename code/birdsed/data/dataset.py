"""Fixed-length waveform crops with their multi-hot targets and loss weights.

Workers only pick a recording and read a crop from a source (the waveform cache's memory maps, or
seek + decode of the original file) and return it; everything heavy that can be batched (features,
augmentation) runs on the training device. The crop rules live here once, for every source.

Crops are int16 PCM (full scale 32767): half the bytes of float32 through the workers' shared memory,
pinned memory and the bus, which is what limits a loader that does no other work. `to_device` in the
training loop turns them into float32 on the device.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from birdsed.data.audio import AudioReadError, RawAudio, fit_length
from birdsed.data.metadata import Recordings

logger = logging.getLogger(__name__)


CROP_RULES = ("random", "energy", "start")


def high_frequency_energy(samples: np.ndarray) -> float:
    """Mean square of the first difference: a high-pass (gain 2 sin(pi f / rate)) that counts a 4 kHz call
    about 30 dB above 100 Hz wind or handling noise of the same power."""
    return float(np.mean(np.square(np.diff(samples.astype(np.float32))))) if len(samples) > 1 else 0.0


class CropSource(Protocol):
    """Where crops come from: `read` returns int16 samples `[start, start + count)` at the job's rate,
    shorter at the end of the recording, or raises `AudioReadError`."""

    def read(self, path: Path, start: int, count: int) -> np.ndarray: ...


class CropDataset(Dataset):
    """Crops of `duration` seconds at `sample_rate` from the recordings of one split.

    Training items are requested as `(index, crop_seed)` by `WeightedEpochSampler` and cut at an
    offset drawn from that seed by the `crop` rule (`random`: uniform; `energy`: the one of `candidates`
    uniform crops with the most high-frequency energy; `start`: uniform within the first two crop
    lengths); validation items are requested by index and always start at the beginning of the
    recording, so validation scores are comparable between epochs. `seconds` is each recording's length
    (from its header, or from the cache index).
    """

    def __init__(
        self,
        recordings: Recordings,
        seconds: np.ndarray,
        sample_rate: int,
        duration: float,
        source: CropSource | None = None,
        crop: str = "random",
        candidates: int = 4,
    ) -> None:
        if crop not in CROP_RULES:
            raise ValueError(f"unknown crop rule '{crop}'; choose one of {', '.join(CROP_RULES)}")
        self.crop_rule = crop
        self.candidates = candidates
        self.recordings = recordings
        self.seconds = seconds
        self.sample_rate = sample_rate
        self.duration = duration
        self.length = int(round(duration * sample_rate))
        self.samples = np.round(np.asarray(seconds, dtype=np.float64) * sample_rate).astype(np.int64)
        self.source = source if source is not None else RawAudio(sample_rate)

    def __len__(self) -> int:
        return len(self.recordings)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, crop_seed = key if isinstance(key, tuple) else (key, None)
        weight = float(self.recordings.sample_weights[index])
        rng = None if crop_seed is None else np.random.default_rng(crop_seed)
        try:
            waveform = self.crop(index, rng)
        except AudioReadError as error:
            # The header was fine when the job started, the body is not (e.g. truncated): this
            # item contributes nothing (weight 0) rather than killing a long job.
            logger.warning("Skipping a crop of %s: %s", self.recordings.paths[index], error)
            waveform, weight = np.zeros(self.length, dtype=np.int16), 0.0
        return {
            "waveform": torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.int16)),
            "target": torch.from_numpy(self.recordings.targets[index]),
            "weight": torch.tensor(weight, dtype=torch.float32),
        }

    def crop(self, index: int, rng: np.random.Generator | None) -> np.ndarray:
        """The first `length` samples (rng None: validation), or a random window drawn from `rng`."""
        if rng is None:
            return fit_length(self._read(index, 0), self.length)
        slack = int(self.samples[index]) - self.length
        if slack > 0 and self.crop_rule == "energy":
            starts = rng.integers(0, slack + 1, size=self.candidates)
            crops = [fit_length(self._read(index, int(start)), self.length) for start in starts]
            return max(crops, key=high_frequency_energy)
        if slack > 0:
            last = min(slack, self.length) if self.crop_rule == "start" else slack
            return fit_length(self._read(index, int(rng.integers(0, last + 1))), self.length)
        # A short clip lands at a random place in the window, zeros around it.
        clip = self._read(index, 0)[: self.length]
        offset = int(rng.integers(0, self.length - len(clip) + 1))
        waveform = np.zeros(self.length, dtype=np.int16)
        waveform[offset : offset + len(clip)] = clip
        return waveform

    def _read(self, index: int, start: int) -> np.ndarray:
        return self.source.read(self.recordings.paths[index], start, self.length)
