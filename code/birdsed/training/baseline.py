"""The reference every job is measured against: log-mel statistics + logistic regression.

Each crop becomes a short vector, every mel band's mean and standard deviation over time (in dB), and a
multinomial logistic regression on standardised vectors predicts the primary label. It knows nothing of
time structure, yet on small real datasets it is a strong reference (0.87 held-out macro ROC-AUC on
`real_birds`, see docs/recipe.md): a network whose best `val_auc` does not beat it has not learned.

It is fitted once at the start of a job, on the CPU, from a bounded sample of training crops (at most
`MAX_CROPS`, several random crops per recording when there are few recordings), and scored on the same
validation crops as the model. Reading the crops goes through the job's own dataset, so the baseline sees
exactly what the model sees, minus augmentation.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchaudio
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from birdsed.config import FeatureConfig
from birdsed.data.audio import pcm16_to_float
from birdsed.features import mel_spectrogram
from birdsed.metrics import macro_roc_auc, padded_cmap

logger = logging.getLogger(__name__)

# A bounded sample: reading and featurising 1,024 crops takes seconds, whatever the dataset's size.
MAX_CROPS = 1024
# Several crops of one recording add views of it; beyond a few they add little but time.
MAX_CROPS_PER_RECORDING = 8
# Regularisation of the logistic regression (sklearn's default); iterations enough to converge here.
REGULARISATION_C = 1.0
MAX_ITERATIONS = 2000
FEATURE_BATCH = 64


class LogMelStatistics(nn.Module):
    """`[B, T]` waveforms -> `[B, 2 * n_mels]`: each mel band's mean and standard deviation over time, in dB.

    The job's mel settings, but frames do not overlap (hop = n_fft): statistics over time need no overlap,
    and it makes the features 4x cheaper than the model's front end.
    """

    def __init__(self, sample_rate: int, features: FeatureConfig) -> None:
        super().__init__()
        self.mel = mel_spectrogram(sample_rate, features, hop_length=max(features.hop_length, features.n_fft))
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=features.top_db)

    @torch.no_grad()
    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        decibels = self.to_db(self.mel(waveform.float()).unsqueeze(1)).squeeze(1)  # [B, mels, frames]
        return torch.cat([decibels.mean(dim=-1), decibels.std(dim=-1)], dim=1)


def fit_classifier(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> Pipeline:
    """StandardScaler + multinomial logistic regression on `features` `[N, D]` and class indices `[N]`.

    Raises ValueError when `labels` hold fewer than two classes (there is nothing to tell apart).
    """
    if len(np.unique(labels)) < 2:
        raise ValueError("the training sample holds fewer than two classes")
    classifier = make_pipeline(
        StandardScaler(), LogisticRegression(C=REGULARISATION_C, max_iter=MAX_ITERATIONS, random_state=seed)
    )
    with warnings.catch_warnings():
        # Not converging to the last digit is no reason to flood a job's log; the scores are still usable.
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(features, labels)
    return classifier


def predict_scores(classifier: Pipeline, features: np.ndarray, num_classes: int) -> np.ndarray:
    """Class probabilities `[N, num_classes]`; classes the classifier never saw score 0."""
    scores = np.zeros((len(features), num_classes), dtype=np.float64)
    if len(features):
        scores[:, classifier.classes_] = classifier.predict_proba(features)
    return scores


def crop_plan(recordings: int, seed: int, max_crops: int = MAX_CROPS) -> list[tuple[int, int]]:
    """`(recording index, crop seed)` pairs: up to `MAX_CROPS_PER_RECORDING` crops of every recording when
    the data is small, one crop of each of `max_crops` randomly chosen recordings when it is large."""
    rng = np.random.default_rng(seed)
    if recordings == 0:
        return []
    per_recording = max(1, min(MAX_CROPS_PER_RECORDING, max_crops // recordings))
    chosen = np.arange(recordings) if recordings <= max_crops else np.sort(rng.choice(recordings, max_crops, False))
    indices = np.repeat(chosen, per_recording)
    crop_seeds = rng.integers(0, 2**62, size=len(indices))
    return list(zip(indices.tolist(), crop_seeds.tolist(), strict=True))


def extract_features(
    dataset: Dataset, keys: Sequence, extractor: LogMelStatistics, device: torch.device, workers: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, targets and sample weights of `dataset[key]` for each key, in order."""
    loader = DataLoader(dataset, batch_size=FEATURE_BATCH, sampler=list(keys), num_workers=workers)
    features, targets, weights = [], [], []
    for batch in loader:
        waveform = pcm16_to_float(batch["waveform"].to(device))
        features.append(extractor(waveform).double().cpu().numpy())
        targets.append(batch["target"].numpy())
        weights.append(batch["weight"].numpy())
    if not features:
        return np.zeros((0, 0)), np.zeros((0, 0)), np.zeros(0)
    return np.concatenate(features), np.concatenate(targets), np.concatenate(weights)


@dataclass(frozen=True)
class BaselineResult:
    val_auc: float
    val_cmap: float
    train_crops: int
    seconds: float

    def line(self) -> str:
        """The one log line of the baseline (not the per-epoch metric line: no metric regex reads it)."""
        return f"baseline_val_auc={self.val_auc:.6f} baseline_val_cmap={self.val_cmap:.6f}"

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def evaluate_baseline(
    train: Dataset,
    validation: Dataset,
    truth: np.ndarray,
    sample_rate: int,
    features: FeatureConfig,
    seed: int,
    workers: int = 0,
    device: torch.device | None = None,
    max_crops: int = MAX_CROPS,
) -> BaselineResult:
    """Fit on a bounded sample of training crops, score the validation crops (their fixed first seconds).

    Crops that could not be read (sample weight 0) are left out of the fit. Raises ValueError when there is
    nothing to fit or score.
    """
    started = time.monotonic()
    device = device or torch.device("cpu")
    extractor = LogMelStatistics(sample_rate, features).to(device)
    train_x, train_y, train_w = extract_features(
        train, crop_plan(len(train), seed, max_crops), extractor, device, workers
    )
    readable = train_w > 0
    if not readable.any():
        raise ValueError("no training crop could be read")
    classifier = fit_classifier(train_x[readable], train_y[readable].argmax(axis=1), seed)
    val_x, _, _ = extract_features(validation, range(len(validation)), extractor, device, workers)
    scores = predict_scores(classifier, val_x, truth.shape[1])
    return BaselineResult(
        val_auc=macro_roc_auc(truth, scores),
        val_cmap=padded_cmap(truth, scores),
        train_crops=int(readable.sum()),
        seconds=round(time.monotonic() - started, 2),
    )


def nan_result() -> BaselineResult:
    return BaselineResult(math.nan, math.nan, 0, 0.0)
