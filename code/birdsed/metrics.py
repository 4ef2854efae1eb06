"""Validation metrics of the BirdCLEF competitions (scikit-learn does the arithmetic)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

CMAP_PADDING = 5


def padded_cmap(truth: np.ndarray, scores: np.ndarray, padding: int = CMAP_PADDING) -> float:
    """BirdCLEF 2023 padded cmAP: append `padding` rows of all-ones, then macro average precision.

    The padding gives classes without positives a defined AP and damps classes with few.
    """
    truth = (np.asarray(truth) > 0).astype(np.int64)
    ones = np.ones((padding, truth.shape[1]))
    padded_truth = np.concatenate([truth, ones.astype(np.int64)])
    padded_scores = np.concatenate([np.asarray(scores, dtype=np.float64), ones])
    return float(average_precision_score(padded_truth, padded_scores, average="macro"))


def macro_roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """BirdCLEF 2024/25 macro ROC-AUC over the classes that have both positives and negatives.

    NaN when no class qualifies (e.g. a single-class validation set).
    """
    truth = (np.asarray(truth) > 0).astype(np.int64)
    positives = truth.sum(axis=0)
    scored = (positives > 0) & (positives < len(truth))
    if not scored.any():
        return float("nan")
    return float(roc_auc_score(truth[:, scored], np.asarray(scores)[:, scored], average="macro"))


def per_class_average_precision(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AP per class (NaN for classes without positives), for reports and plots."""
    truth = (np.asarray(truth) > 0).astype(np.int64)
    result = np.full(truth.shape[1], np.nan)
    for column in np.flatnonzero(truth.sum(axis=0) > 0):
        result[column] = average_precision_score(truth[:, column], scores[:, column])
    return result
