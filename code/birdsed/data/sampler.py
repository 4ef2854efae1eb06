"""Weighted sampling that is reproducible per epoch and can resume mid-epoch.

Each draw carries its own crop seed, so a crop depends only on (seed, epoch, position in the
epoch): not on the number of workers, their scheduling, or whether the job was restarted.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A seed for one epoch and one purpose (`stream`), statistically independent of the others."""
    sequence = np.random.SeedSequence([seed, epoch, stream])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A torch generator for one epoch and one purpose (`stream`), independent of the others."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, stream))


class WeightedEpochSampler(Sampler[tuple[int, int]]):
    """Draw `num_samples` recordings with replacement, proportionally to `weights`, per epoch.

    Yields `(index, crop_seed)`. `set_epoch` selects the epoch; `start` skips draws already
    consumed (resume mid-epoch) without changing the ones that follow.
    """

    def __init__(self, weights: np.ndarray, num_samples: int, seed: int) -> None:
        if len(weights) == 0 or not np.all(np.isfinite(weights)) or weights.sum() <= 0:
            raise ValueError("sampler weights must be finite, non-negative and not all zero")
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def draws(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All draws of the current epoch: recording indices and crop seeds."""
        generator = epoch_generator(self.seed, self.epoch, stream=1)
        indices = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        crop_seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator)
        return indices, crop_seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, crop_seeds = self.draws()
        for position in range(self.start, self.num_samples):
            yield int(indices[position]), int(crop_seeds[position])

    def __len__(self) -> int:
        return self.num_samples - self.start
