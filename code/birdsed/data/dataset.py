"""Fixed-length waveform crops with their multi-hot targets and loss weights.

Workers only read and crop; everything heavy that can be batched (features, augmentation) runs on
the training device.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import Dataset

from birdsed.data.audio import AudioReadError, fit_length, read_segment
from birdsed.data.metadata import Recordings

logger = logging.getLogger(__name__)


class CropDataset(Dataset):
    """Crops of `duration` seconds at `sample_rate` from the recordings of one split.

    Training items are requested as `(index, crop_seed)` by `WeightedEpochSampler` and cut at a
    random offset drawn from that seed; validation items are requested by index and always start at
    the beginning of the recording, so validation scores are comparable between epochs.
    """

    def __init__(
        self,
        recordings: Recordings,
        seconds: np.ndarray,
        sample_rate: int,
        duration: float,
    ) -> None:
        self.recordings = recordings
        self.seconds = seconds
        self.sample_rate = sample_rate
        self.duration = duration
        self.length = int(round(duration * sample_rate))

    def __len__(self) -> int:
        return len(self.recordings)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, crop_seed = key if isinstance(key, tuple) else (key, None)
        weight = float(self.recordings.sample_weights[index])
        try:
            if crop_seed is None:
                waveform = fit_length(self._read(index, 0.0), self.length)
            else:
                waveform = self._random_crop(index, np.random.default_rng(crop_seed))
        except AudioReadError as error:
            # The header was fine when the job started, the body is not (e.g. truncated): this
            # item contributes nothing (weight 0) rather than killing a long job.
            logger.warning("Skipping a crop of %s: %s", self.recordings.paths[index], error)
            waveform, weight = np.zeros(self.length, dtype=np.float32), 0.0
        return {
            "waveform": torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)),
            "target": torch.from_numpy(self.recordings.targets[index]),
            "weight": torch.tensor(weight, dtype=torch.float32),
        }

    def _read(self, index: int, start: float) -> np.ndarray:
        return read_segment(self.recordings.paths[index], start, self.duration, self.sample_rate)

    def _random_crop(self, index: int, rng: np.random.Generator) -> np.ndarray:
        slack = float(self.seconds[index]) - self.duration
        if slack > 0:
            return fit_length(self._read(index, rng.uniform(0.0, slack)), self.length)
        # A short clip lands at a random place in the window, zeros around it.
        clip = self._read(index, 0.0)[: self.length]
        offset = int(rng.integers(0, self.length - len(clip) + 1))
        waveform = np.zeros(self.length, dtype=np.float32)
        waveform[offset : offset + len(clip)] = clip
        return waveform
