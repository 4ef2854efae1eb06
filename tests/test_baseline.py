"""The log-mel statistics + logistic regression baseline every job fits at start (birdsed.training.baseline)."""

import dataclasses
import logging

import numpy as np
import pytest
import torch

from birdsed.config import FeatureConfig, from_hyperparameters
from birdsed.data import loaders
from birdsed.data.dataset import CropDataset
from birdsed.data.metadata import Recordings
from birdsed.training import baseline, selection
from birdsed.training.job import primary_truth
from conftest import FAST_HYPERPARAMETERS

FEATURES = FeatureConfig(n_mels=32, n_fft=512, hop_length=128, fmax=8000.0)
RATE = 16000


def tone(frequency: float, seconds: float = 1.0, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    time = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * frequency * time) + noise * rng.normal(size=len(time))).astype(np.float32)


def test_features_are_each_bands_mean_and_spread_and_find_the_tone():
    extractor = baseline.LogMelStatistics(RATE, FEATURES)
    features = extractor(torch.from_numpy(np.stack([tone(500), tone(4000)])))
    assert features.shape == (2, 2 * FEATURES.n_mels)
    means = features[:, : FEATURES.n_mels]
    assert int(means[0].argmax()) < int(means[1].argmax())  # the higher tone lights a higher band


def test_the_classifier_separates_separable_classes_and_scores_unseen_classes_zero():
    extractor = baseline.LogMelStatistics(RATE, FEATURES)
    frequencies = (400, 1500, 5000)
    waves = [tone(frequency, seed=seed) for frequency in frequencies for seed in range(6)]
    features = extractor(torch.from_numpy(np.stack(waves))).double().numpy()
    labels = np.repeat([0, 2, 3], 6)  # class 1 of 4 never appears in training
    classifier = baseline.fit_classifier(features, labels)
    scores = baseline.predict_scores(classifier, features, num_classes=4)
    assert scores.shape == (18, 4)
    assert np.all(scores[:, 1] == 0)
    assert np.all(scores.argmax(axis=1) == labels)
    with pytest.raises(ValueError, match="fewer than two classes"):
        baseline.fit_classifier(features[:6], labels[:6])


def test_the_crop_sample_is_bounded_whatever_the_dataset_size():
    small = baseline.crop_plan(10, seed=0)
    assert len(small) == 10 * baseline.MAX_CROPS_PER_RECORDING
    assert sorted({index for index, _ in small}) == list(range(10))
    assert len({seed for _, seed in small}) == len(small)  # every crop its own offset
    large = baseline.crop_plan(50_000, seed=0, max_crops=1024)
    assert len(large) == 1024 and len({index for index, _ in large}) == 1024
    assert baseline.crop_plan(50_000, seed=0, max_crops=1024) == large  # reproducible
    assert baseline.crop_plan(0, seed=0) == []


@pytest.fixture(scope="module")
def training_data(synthetic_dataset):
    cfg = from_hyperparameters({**FAST_HYPERPARAMETERS, "val_fraction": 0.3})
    return cfg, loaders.load_training_data(cfg, synthetic_dataset, None)


def test_the_baseline_fits_training_crops_and_scores_validation_well_above_chance(training_data):
    cfg, data = training_data
    truth = primary_truth(data.validation, data.labels)
    result = baseline.evaluate_baseline(
        data.train, data.validation, truth, cfg.data.sample_rate, cfg.features, seed=0, max_crops=64
    )
    # The synthetic species differ in pitch and rhythm: band statistics alone tell most of them apart.
    assert result.val_auc > 0.85, result
    assert 0 < result.train_crops <= 64
    assert result.line() == f"baseline_val_auc={result.val_auc:.6f} baseline_val_cmap={result.val_cmap:.6f}"


def test_a_baseline_that_cannot_be_fitted_is_skipped_with_a_reason_not_an_error(training_data, caplog):
    cfg, data = training_data
    truth = primary_truth(data.validation, data.labels)
    train, label = data.train, data.labels[0]
    rows = [row for row, primary in enumerate(train.recordings.primary_labels) if primary == label]
    recordings = train.recordings
    one_class = CropDataset(
        Recordings(
            [recordings.paths[row] for row in rows],
            [label] * len(rows),
            recordings.targets[rows],
            recordings.sample_weights[rows],
            recordings.frame.iloc[rows],
        ),
        train.seconds[rows],
        train.sample_rate,
        train.duration,
        train.source,
    )
    single = dataclasses.replace(data, train=one_class)
    with caplog.at_level(logging.INFO, logger="birdsed.training.selection"):
        reference = selection.build_reference(cfg, single, truth, torch.device("cpu"), workers=0)
    assert reference.baseline is None
    assert "The baseline was skipped: ValueError: the training sample holds fewer than two classes" in caplog.text
    assert "chance_val_cmap=" in caplog.text and "select_metric=val_auc" in caplog.text
    off = from_hyperparameters({**FAST_HYPERPARAMETERS, "baseline": "off"})
    assert selection.build_reference(off, data, truth, torch.device("cpu"), workers=0).baseline is None
