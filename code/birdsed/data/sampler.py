"""Weighted sampling that is reproducible per epoch and can resume mid-epoch.

Each draw carries its own crop seed, so a crop depends only on (seed, epoch, position in the
epoch): not on the number of workers, their scheduling, or whether the job was restarted.
"""

from __future__ import annotations

import math
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
    """Draw recordings with replacement, proportionally to `weights`, per epoch.

    Yields `(index, crop_seed)`. Every process draws the same epoch-seeded sample of
    `num_samples` (rounded up to a multiple of `world_size`) and takes the positions
    `rank, rank + world_size, ...`: disjoint shares of one weighted sample. `set_epoch` selects
    the epoch; `start` skips draws of this share already consumed (resume mid-epoch) without
    changing the ones that follow.
    """

    def __init__(self, weights: np.ndarray, num_samples: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if len(weights) == 0 or not np.all(np.isfinite(weights)) or weights.sum() <= 0:
            raise ValueError("sampler weights must be finite, non-negative and not all zero")
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.per_rank = math.ceil(num_samples / world_size)
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = min(start, self.per_rank)

    def draws(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of the current epoch's draws: recording indices and crop seeds."""
        generator = epoch_generator(self.seed, self.epoch, stream=1)
        total = self.per_rank * self.world_size
        indices = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        crop_seeds = torch.randint(0, 2**62, (total,), generator=generator)
        return indices[self.rank :: self.world_size], crop_seeds[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, crop_seeds = self.draws()
        for position in range(self.start, self.per_rank):
            yield int(indices[position]), int(crop_seeds[position])

    def __len__(self) -> int:
        return self.per_rank - self.start


class ShardSampler(Sampler[int]):
    """Indices `rank, rank + world_size, ...` of a fixed-order dataset, padded to equal shares.

    Equal shares keep the processes' collectives in step; `real` says how many of this
    share's items are not padding (padding repeats the first indices and is dropped when
    results are gathered).
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))
        self.real = len(self.indices)
        share = math.ceil(size / world_size) if size else 0
        self.indices += list(range(share - self.real))[: share - self.real]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
