"""Regression test of issue 18: with the default augmentation, loss and data-size rules, a tiny model fits a
small set of real recordings (4 species of real_birds). Before the fix an epoch drew one crop per recording,
so a small set got a handful of optimizer steps and the model stayed at chance on its own training clips."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from birdsed.augment import create_augmentations
from birdsed.config import from_hyperparameters
from birdsed.data import cache, loaders, metadata
from birdsed.data.sampler import ShardSampler
from birdsed.models import create_model
from birdsed.training.distributed import Distributed
from birdsed.training.job import build_trainer, primary_truth
from birdsed.training.loop import Progress, evaluate, train_one_epoch
from birdsed.training.signals import NeverStop
from conftest import FAST_HYPERPARAMETERS

pytestmark = pytest.mark.slow

SPECIES = 4
EPOCHS = 2


@pytest.fixture(scope="module")
def small_real_cache(real_birds, tmp_path_factory):
    """The first 4 species of real_birds (40 recordings), decoded once at the tiny jobs' sample rate."""
    raw = tmp_path_factory.mktemp("real_subset")
    frame = pd.read_csv(real_birds / metadata.METADATA_FILE, dtype=str, keep_default_na=False)
    chosen = sorted(frame["primary_label"].unique())[:SPECIES]
    frame[frame["primary_label"].isin(chosen)].to_csv(raw / metadata.METADATA_FILE, index=False)
    (raw / metadata.AUDIO_DIR).symlink_to(real_birds / metadata.AUDIO_DIR, target_is_directory=True)
    output = raw.parent / f"{raw.name}_cache"
    cache.prepare_cache(raw, output, FAST_HYPERPARAMETERS["sample_rate"], workers=2, progress=False)
    return output


def test_the_default_recipe_lets_a_tiny_model_fit_a_small_real_subset(small_real_cache):
    hyperparameters = {**FAST_HYPERPARAMETERS, "epochs": EPOCHS, "val_fraction": 0, "seed": 3}
    hyperparameters.pop("min_epoch_crops")  # the job's default data-size rule, not the tests' one-crop epochs
    cfg = from_hyperparameters(hyperparameters)
    assert cfg.augment.augment == "on"
    torch.manual_seed(cfg.run.seed)
    data = loaders.load_training_data(cfg, small_real_cache, None)
    cpu = torch.device("cpu")
    model = create_model(cfg, len(data.labels), class_prior=loaders.class_prior(data))  # as the job builds it
    trainer = build_trainer(cfg, model, data, Distributed(0, 0, 1, cpu))
    trainer.augment = create_augmentations(cfg.augment, cfg.run.seed, cpu)
    sampler = loaders.make_sampler(data, cfg)
    loader = loaders.train_loader(data, cfg, sampler, pin_memory=False)
    progress = Progress()
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        trainer.augment.set_epoch(epoch)
        train_one_epoch(trainer, loader, progress, NeverStop())
        progress.start_epoch(epoch + 1)
    assert progress.step == EPOCHS * trainer.batches_per_epoch >= 60  # 36 recordings, yet dozens of steps

    # Its own training recordings (their first seconds, as validation crops them), without augmentation.
    truth = primary_truth(data.train, data.labels)
    plain = DataLoader(data.train, batch_size=32, sampler=ShardSampler(len(data.train)))
    result = evaluate(trainer, plain, truth, NeverStop())
    print(f"steps={progress.step} train_auc={result['val_auc']:.3f} train_cmap={result['val_cmap']:.3f}")
    assert result["val_auc"] > 0.85, result["val_auc"]  # chance is 0.5
    assert float(np.std(result["scores"], axis=0).mean()) > 0.05  # not the same scores for every input
