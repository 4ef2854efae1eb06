"""Model quality on real recordings: a fixed split, per-recording scores, and the reference baseline.

The pieces of the model-quality benchmark (`launch/quality_bench.py`, see docs/recipe.md) that need no
job: the split (sorted by filename, stratified by primary label, a fixed seed), a train channel that is a
view of a waveform cache, held-out scoring with the predictor's windowed inference (score of a recording =
max over its windows, as in `code/predict.py`), and the log-mel-statistics + logistic-regression baseline
(one feature vector per whole recording, as issue 18 measured it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from birdsed.config import FeatureConfig
from birdsed.data import cache, metadata
from birdsed.data.audio import PCM_SCALE
from birdsed.metrics import macro_roc_auc
from birdsed.predict import Predictor, cut_windows
from birdsed.training.baseline import LogMelStatistics, fit_classifier, predict_scores

SPLIT_SEED = 20251126
HELDOUT_FRACTION = 0.3
# The baseline's front end in the benchmark: fixed, so that its score is the same reference on every line.
BASELINE_FEATURES = FeatureConfig(n_mels=64)


def split_recordings(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out): rows sorted by filename, `train_test_split(test_size=0.3, stratify=primary_label,
    random_state=20251126)`, each part sorted by filename again."""
    ordered = frame.sort_values("filename").reset_index(drop=True)
    train, heldout = train_test_split(
        ordered, test_size=HELDOUT_FRACTION, stratify=ordered["primary_label"], random_state=SPLIT_SEED
    )
    return train.sort_values("filename").reset_index(drop=True), heldout.sort_values("filename").reset_index(drop=True)


def write_cache_view(cache_root: Path, rows: pd.DataFrame, target: Path) -> Path:
    """A channel folder holding only `rows` of the cache at `cache_root`: its own metadata, the cache's
    index, and a link to the cache's arrays (nothing is copied)."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copyfile(cache_root / cache.CACHE_FILE, target / cache.CACHE_FILE)
    rows.to_csv(target / metadata.METADATA_FILE, index=False)
    (target / metadata.AUDIO_DIR).symlink_to((cache_root / metadata.AUDIO_DIR).resolve(), target_is_directory=True)
    return target


def cache_sample_rate(cache_root: Path) -> int:
    return int(json.loads((cache_root / cache.CACHE_FILE).read_text(encoding="utf-8"))["sample_rate"])


def load_waveform(cache_root: Path, filename: str) -> np.ndarray:
    """A whole recording from the cache, float32 in [-1, 1] (what `decode` gave `prepare`, to 16 bits)."""
    return np.load(cache.array_path(cache_root, filename)).astype(np.float32) / PCM_SCALE


def primary_truth(primary_labels: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    index = {label: position for position, label in enumerate(labels)}
    truth = np.zeros((len(primary_labels), len(labels)), dtype=np.int64)
    for row, label in enumerate(primary_labels):
        truth[row, index[label]] = 1
    return truth


def model_scores(
    predictor: Predictor, waveforms: Sequence[np.ndarray], window: int, max_windows: int = 0
) -> np.ndarray:
    """`[recordings, K]`: each recording's clip-wise probabilities, max over its windows (the first
    `max_windows` of them when that is not 0)."""
    rows = []
    for waveform in waveforms:
        windows = cut_windows(waveform, window)
        if max_windows:
            windows = windows[:max_windows]
        rows.append(predictor.predict_windows(windows)["clipwise"].max(axis=0))
    return np.stack(rows)


def recording_features(extractor: LogMelStatistics, waveform: np.ndarray) -> np.ndarray:
    """`[2 * n_mels]` baseline features of a whole recording."""
    with torch.no_grad():
        return extractor(torch.from_numpy(waveform)[None]).double().numpy()[0]


def baseline_scores(
    train_waveforms: Sequence[np.ndarray],
    train_labels: Sequence[int],
    heldout_waveforms: Sequence[np.ndarray],
    num_classes: int,
    sample_rate: int,
) -> np.ndarray:
    """The baseline as issue 18 measured it: one feature vector per whole recording (each band's mean and
    std over all of it), fitted on the training recordings, scored on the held-out ones."""
    extractor = LogMelStatistics(sample_rate, BASELINE_FEATURES)
    features = np.stack([recording_features(extractor, waveform) for waveform in train_waveforms])
    classifier = fit_classifier(features, np.asarray(train_labels))
    heldout = np.stack([recording_features(extractor, waveform) for waveform in heldout_waveforms])
    return predict_scores(classifier, heldout, num_classes)


def top1_accuracy(truth: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean(truth[np.arange(len(truth)), scores.argmax(axis=1)] > 0))


def auc(truth: np.ndarray, scores: np.ndarray) -> float:
    return macro_roc_auc(truth, scores)
