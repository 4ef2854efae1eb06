"""Chance levels, the metric that picks the best epoch, and the end-of-job warnings (birdsed.training.selection)."""

import logging
import math

import numpy as np
import pytest

from birdsed.training import selection


def one_per_class(classes: int, per_class: int = 1) -> np.ndarray:
    return np.repeat(np.eye(classes, dtype=np.int64), per_class, axis=0)


def test_random_scores_flatter_padded_cmap_on_small_sets_but_not_auc():
    small, _ = selection.chance_levels(one_per_class(16))
    assert small["val_cmap"] > 0.85  # the issue measured ~0.92 with 16 validation recordings
    assert small["val_auc"] == pytest.approx(0.5, abs=0.05)
    large, _ = selection.chance_levels(one_per_class(16, per_class=40))
    assert large["val_cmap"] < 0.3
    assert large["val_auc"] == pytest.approx(0.5, abs=0.02)


def test_rank_auc_agrees_with_sklearn():
    from birdsed.metrics import macro_roc_auc

    truth = np.random.default_rng(1).random((30, 5)) < 0.3
    truth[:, 4] = False  # no positives: left out by both
    scores = np.random.default_rng(2).random((30, 5))
    assert selection.rank_auc(truth.astype(int), scores) == pytest.approx(macro_roc_auc(truth, scores))


def test_auto_selects_val_auc_where_padding_flatters_cmap_and_says_why():
    metric, reason = selection.choose_metric("auto", selection.chance_levels(one_per_class(16))[0])
    assert metric == "val_auc" and "padding" in reason and "val_cmap=0.9" in reason
    metric, _ = selection.choose_metric("auto", selection.chance_levels(one_per_class(16, per_class=40))[0])
    assert metric == "val_cmap"
    assert selection.choose_metric("val_cmap", {"val_cmap": 0.95, "val_auc": 0.5}) == ("val_cmap", "asked for")
    # A single-class validation set has no AUC: cmAP is all there is.
    assert selection.choose_metric("auto", {"val_cmap": 0.99, "val_auc": math.nan})[0] == "val_cmap"


def test_the_best_epoch_is_the_best_by_the_chosen_metric():
    history = [
        {"epoch": 1, "val_cmap": 0.93, "val_auc": 0.48},
        {"epoch": 2, "val_cmap": 0.91, "val_auc": 0.81},
        {"epoch": 3, "val_cmap": math.nan, "val_auc": math.nan},
    ]
    assert selection.best_record(history, "val_cmap")["epoch"] == 1
    assert selection.best_record(history, "val_auc")["epoch"] == 2
    unscored = [{"epoch": 1, "val_cmap": math.nan, "val_auc": math.nan}, {"epoch": 2, "val_cmap": math.nan}]
    assert selection.best_record(unscored, "val_auc")["epoch"] == 2
    assert selection.best_record([], "val_auc") is None


def test_chance_noise_is_large_on_small_sets_and_small_on_large_ones():
    # Theory for one positive among n: the AUC is uniform on {0, 1/(n-1), ..., 1}, sd ~0.3; a macro mean of 16
    # such classes ~0.3 / 4.
    small = selection.chance_draws(one_per_class(16))
    assert len(small["val_auc"]) == selection.CHANCE_DRAWS
    assert 0.05 < np.std(small["val_auc"]) < 0.11
    large = selection.chance_draws(one_per_class(16, per_class=60))
    assert np.std(large["val_auc"]) < selection.SELECTION_NOISE_LIMIT
    # The per-draw values give the chance levels the job logs and the spreads that choose its epoch rule.
    level, spread = selection.chance_levels(one_per_class(16))
    assert np.mean(small["val_cmap"]) == pytest.approx(level["val_cmap"])
    assert np.std(small["val_auc"]) == pytest.approx(spread["val_auc"])
    empty = selection.chance_draws(np.zeros((0, 4), dtype=np.int64))
    assert math.isnan(selection.chance_levels(np.zeros((0, 4), dtype=np.int64))[0]["val_auc"])
    assert all(math.isnan(values[0]) for values in empty.values())


def test_auto_delivers_the_last_epoch_where_the_metric_cannot_rank_epochs_and_says_why():
    noisy = {"val_cmap": 0.01, "val_auc": 0.08}
    rule, reason = selection.choose_epoch_rule("auto", "val_auc", noisy, 16)
    assert rule == "last"
    assert "move val_auc by 0.080 (sd) on these 16 validation recordings, above 0.02" in reason
    # The rule looks at the metric that selects: val_cmap barely moves here.
    assert selection.choose_epoch_rule("auto", "val_cmap", noisy, 16)[0] == "best"
    assert selection.choose_epoch_rule("auto", "val_auc", {"val_auc": math.nan}, 0)[0] == "best"
    assert selection.choose_epoch_rule("best", "val_auc", noisy, 16) == ("best", "asked for")
    assert selection.choose_epoch_rule("last", "val_cmap", {}, 900) == ("last", "asked for")
    # A soundscape metric asked for by name keeps its best epoch (its noise is not the focal set's).
    rule, reason = selection.choose_epoch_rule("auto", "val_soundscape_auc", noisy, 16)
    assert rule == "best" and "select_epoch=last" in reason


def test_the_delivered_epoch_follows_the_rule():
    history = [{"epoch": 1, "val_auc": 0.81}, {"epoch": 2, "val_auc": 0.74}]
    assert selection.chosen_record(history, "val_auc", "best")["epoch"] == 1
    assert selection.chosen_record(history, "val_auc", "last")["epoch"] == 2
    assert selection.chosen_record([], "val_auc", "last") is None
    last = selection.ValidationReference("val_auc", "test", {"val_auc": 0.5}, epoch_rule="last")
    assert last.delivered(history)["epoch"] == 2
    assert last.describe_choice(history[1]) == "last epoch=2, select_epoch=last"
    best = selection.ValidationReference("val_auc", "test", {"val_auc": 0.5})
    assert best.describe_choice(history[0]) == "best epoch=1 by val_auc"


def test_score_spread_tells_constant_predictions_from_informative_ones():
    truth = one_per_class(8, per_class=3)
    flat = np.full(truth.shape, 0.06) + np.random.default_rng(0).normal(0, 0.005, truth.shape)
    assert selection.score_spread(flat) < selection.FLAT_SCORE_STD
    assert selection.score_spread(0.1 + 0.8 * truth) > 0.2
    assert math.isnan(selection.score_spread(np.zeros((1, 8))))


def reference(baseline_auc: float | None) -> selection.ValidationReference:
    baseline = None if baseline_auc is None else {"val_auc": baseline_auc, "val_cmap": 0.9}
    return selection.ValidationReference("val_auc", "test", {"val_cmap": 0.92, "val_auc": 0.5}, baseline)


def test_the_end_of_job_warns_when_the_model_does_not_beat_the_baseline(caplog):
    best = {"epoch": 4, "val_cmap": 0.93, "val_auc": 0.61, "val_score_std": 0.15}
    with caplog.at_level(logging.WARNING, logger="birdsed.training.selection"):
        warnings = reference(0.83).end_of_job_warnings(best)
    assert len(warnings) == 1
    assert "val_auc=0.6100, which does not beat the baseline's baseline_val_auc=0.8300" in warnings[0]
    assert warnings[0] in caplog.text
    assert reference(0.55).end_of_job_warnings(best) == []
    assert reference(None).end_of_job_warnings(best) == []  # baseline=off: nothing to compare with


def test_the_end_of_job_warns_about_chance_level_and_flat_predictions():
    stuck = {"epoch": 2, "val_cmap": 0.92, "val_auc": 0.52, "val_score_std": 0.01}
    warnings = reference(None).end_of_job_warnings(stuck)
    assert any("at or below chance level" in warning for warning in warnings)
    assert any("barely vary (std 0.0100" in warning for warning in warnings)
    assert reference(0.8).end_of_job_warnings({"epoch": 1, "val_cmap": math.nan, "val_auc": math.nan}) == []


def test_flat_predictions_are_reported_once_during_training(caplog):
    watched = reference(None)
    with caplog.at_level(logging.WARNING, logger="birdsed.training.selection"):
        for epoch in (1, 2, 3):
            watched.check_epoch({"epoch": epoch, "val_score_std": 0.001 if epoch < 3 else 0.2})
    assert caplog.text.count("Validation predictions barely vary") == 1
    assert "at epoch 1" in caplog.text


def test_reference_lines_for_the_plot_and_metrics():
    lines = reference(0.83).plot_lines()
    assert lines == {"chance val_cmap": 0.92, "chance val_auc": 0.5, "baseline val_cmap": 0.9, "baseline val_auc": 0.83}
    summary = reference(None).summary()
    assert summary["select_metric"] == "val_auc" and summary["baseline"] is None
