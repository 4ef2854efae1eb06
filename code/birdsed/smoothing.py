"""Smoothing of window probabilities over neighbouring windows of one recording (`predict.py --smooth K`).

A bird that sings in one 5 s window is likely to sing in the next; BirdCLEF 2024's winners averaged
each window's probabilities with its neighbours'. Only windows of the same recording are averaged.
"""

from __future__ import annotations

import numpy as np


def smooth_windows(probabilities: np.ndarray, k: int) -> np.ndarray:
    """`[windows, K]` -> each row averaged with up to `k` rows on each side (fewer at the ends).

    Near the first and last window the average is over the windows that exist, not over zeros,
    so the ends are not pulled down. `k = 0` returns the probabilities unchanged.
    """
    if k < 0:
        raise ValueError(f"k must be at least 0, got {k}")
    values = np.asarray(probabilities, dtype=np.float64)
    if k == 0 or len(values) < 2:
        return np.asarray(probabilities)
    # Cumulative sums give every window's [i - k, i + k] sum in one pass.
    cumulative = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    index = np.arange(len(values))
    low, high = np.maximum(index - k, 0), np.minimum(index + k + 1, len(values))
    means = (cumulative[high] - cumulative[low]) / (high - low)[:, None]
    return means.astype(np.asarray(probabilities).dtype)
