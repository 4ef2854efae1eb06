"""Judging validation honestly: chance levels, the reference baseline, the metric that picks the best
epoch, and the end-of-job warnings (docs/recipe.md).

Padded cmAP (BirdCLEF 2023) appends 5 rows of ones to truth and scores: with few validation
recordings per class, the padding dominates and random scores reach ~0.92 (16 recordings, 16 classes).
Selecting the best epoch by it then picks noise. `select_metric=auto` therefore uses val_cmap only when
random scores stay at or below `PADDED_CHANCE_LIMIT` on the job's validation set, and val_auc (0.5 at
chance, whatever the set's size) otherwise; the log says which and why.

On a small validation set that metric is also noisy: random scores of 16 recordings move val_auc by about
0.06-0.09 (standard deviation), more than epochs late in a run differ, so the highest epoch is mostly the luckiest
one. On real_birds the epoch picked that way scored 0.839 on held-out recordings (mean of 4 seeds), the last
epoch of the same runs 0.876 (docs/recipe.md). `select_epoch=auto` therefore delivers the last epoch (the end
of the learning-rate schedule) when the selection metric's spread under random scores exceeds
`SELECTION_NOISE_LIMIT`, and the best epoch otherwise.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from birdsed.config import Config
from birdsed.data.loaders import TrainingData
from birdsed.errors import ConfigError
from birdsed.metrics import padded_cmap
from birdsed.training.baseline import evaluate_baseline

logger = logging.getLogger(__name__)

METRICS = ("val_cmap", "val_auc")  # of the focal validation set: their chance levels and baselines
SOUNDSCAPE_METRICS = ("val_soundscape_auc", "val_soundscape_cmap")  # of the `soundscape_validation` windows
# Random scores above this padded cmAP: padding makes up most of the score, so cmAP cannot rank epochs.
PADDED_CHANCE_LIMIT = 0.5
# Random draws averaged for the chance levels; fewer on big validation sets (each draw costs a metric pass).
CHANCE_DRAWS = 20
CHANCE_CELLS_PER_DRAW = 1_000_000
# Validation probabilities whose standard deviation across items (mean over classes) is below this do not
# depend on the input: untrained models measured 0.008-0.02, trained ones 0.1-0.3 (docs/recipe.md).
FLAT_SCORE_STD = 0.03
# Above this standard deviation of the selection metric under random scores, ranking epochs by it picks noise.
# Late epochs of a run differ by a few hundredths; 16 validation recordings of 16 classes measure 0.06-0.09 (val_auc).
SELECTION_NOISE_LIMIT = 0.02
# A best val_auc within this of chance (0.5) is reported as "at chance".
NEAR_CHANCE = 0.05


def chance_levels(truth: np.ndarray, seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """(level, spread) of val_cmap and val_auc under uniform random scores on this validation truth: the mean
    of the draws (what a model at chance scores) and their standard deviation (how far luck alone moves it)."""
    draws = chance_draws(truth, seed)
    level = {name: float(np.mean(values)) for name, values in draws.items()}
    spread = {name: float(np.std(values)) for name, values in draws.items()}
    return level, spread


def chance_draws(truth: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """val_cmap and val_auc of each of several draws of uniform random scores (NaN without validation data).

    The draws sit side by side as extra columns of one matrix, so that AUC takes one rank pass. AUC is the
    Mann-Whitney rank formula (random scores have no ties); sklearn's roc_auc_score is 100x slower per column.
    """
    if len(truth) == 0:
        return {name: np.array([math.nan]) for name in METRICS}
    draws = max(3, min(CHANCE_DRAWS, CHANCE_CELLS_PER_DRAW // truth.size))
    tiled = (np.tile(truth, (1, draws)) > 0).astype(np.int64)
    scores = np.random.default_rng(seed).random(tiled.shape)
    columns = truth.shape[1]
    per_column_auc = column_aucs(tiled, scores).reshape(draws, columns)
    scored = ~np.isnan(per_column_auc[0])
    aucs = per_column_auc[:, scored].mean(axis=1) if scored.any() else np.full(draws, math.nan)
    blocks = zip(np.split(tiled, draws, axis=1), np.split(scores, draws, axis=1), strict=True)
    cmaps = [padded_cmap(truth_block, score_block) for truth_block, score_block in blocks]
    return {"val_cmap": np.asarray(cmaps), "val_auc": aucs}


def column_aucs(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC-AUC of each column for scores without ties; NaN for columns without positives or negatives."""
    positives = truth.sum(axis=0)
    negatives = len(truth) - positives
    ranks = scores.argsort(axis=0).argsort(axis=0) + 1  # 1-based rank of each score in its column
    rank_sums = (ranks * truth).sum(axis=0)
    auc = (rank_sums - positives * (positives + 1) / 2) / np.maximum(positives * negatives, 1)
    return np.where((positives > 0) & (negatives > 0), auc, math.nan)


def rank_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Macro ROC-AUC over columns with positives and negatives, for scores without ties."""
    aucs = column_aucs(truth, scores)
    return math.nan if np.isnan(aucs).all() else float(np.nanmean(aucs))


def choose_metric(requested: str, chance: dict[str, float]) -> tuple[str, str]:
    """(metric, reason) for `select_metric` = auto, val_cmap or val_auc."""
    if requested != "auto":
        return requested, "asked for"
    if math.isnan(chance["val_auc"]):
        return (
            "val_cmap",
            "auto: val_auc is undefined on this validation set (no class has both positives and negatives)",
        )
    if chance["val_cmap"] > PADDED_CHANCE_LIMIT:
        return "val_auc", (
            f"auto: random scores reach val_cmap={chance['val_cmap']:.3f} on this validation set "
            f"(above {PADDED_CHANCE_LIMIT}), so padding, not the model, makes most of the cmAP; "
            "val_auc is 0.5 at chance"
        )
    return "val_cmap", f"auto: random scores reach val_cmap={chance['val_cmap']:.3f}, at most {PADDED_CHANCE_LIMIT}"


def choose_epoch_rule(requested: str, metric: str, noise: dict[str, float], recordings: int) -> tuple[str, str]:
    """(rule, reason) for `select_epoch` = auto, best or last; `noise`: each focal metric's standard deviation
    over `chance_draws` (how far luck alone moves it on this validation set)."""
    if requested != "auto":
        return requested, "asked for"
    if metric in SOUNDSCAPE_METRICS:
        return "best", f"auto: {metric} was asked for by name; set select_epoch=last to deliver the last epoch"
    spread = noise.get(metric, math.nan)
    if not spread > SELECTION_NOISE_LIMIT:
        return "best", f"auto: random scores move {metric} by {spread:.3f} (sd) here, at most {SELECTION_NOISE_LIMIT}"
    return "last", (
        f"auto: random scores move {metric} by {spread:.3f} (sd) on these {recordings} validation recordings, "
        f"above {SELECTION_NOISE_LIMIT}: the highest epoch would be the luckiest, so the model is the last "
        "epoch's, at the end of the learning-rate schedule"
    )


def check_available(metric: str, has_soundscape_validation: bool) -> None:
    """A soundscape metric needs the channel that produces it."""
    if metric in SOUNDSCAPE_METRICS and not has_soundscape_validation:
        raise ConfigError(
            f"select_metric={metric} needs a 'soundscape_validation' channel (audio + soundscape_labels.csv); "
            "add the channel or pick val_cmap / val_auc."
        )


def chosen_record(history: list[dict], metric: str, rule: str) -> dict | None:
    """The epoch whose weights become the model: the last one, or the best by `metric`."""
    if rule == "last":
        return history[-1] if history else None
    return best_record(history, metric)


def selection_score(record: dict, metric: str) -> float:
    """The record's score for picking the best epoch (NaN without validation data)."""
    value = record.get(metric)
    return math.nan if value is None else float(value)


def describe_scores(record: dict, metric: str) -> str:
    """`val_cmap=X val_auc=X`, and the selection metric when it is another one (a soundscape metric)."""
    names = (*METRICS, metric) if metric not in METRICS else METRICS
    return " ".join(f"{name}={selection_score(record, name):.4f}" for name in names)


def best_record(history: list[dict], metric: str) -> dict | None:
    """The epoch with the highest `metric` (the first of equals); the last epoch when none was scored."""
    scored = [record for record in history if not math.isnan(selection_score(record, metric))]
    if scored:
        return max(scored, key=lambda record: selection_score(record, metric))
    return history[-1] if history else None


def score_spread(scores: np.ndarray) -> float:
    """Standard deviation of the validation probabilities across items, averaged over classes."""
    if len(scores) < 2:
        return math.nan
    return float(np.mean(np.std(scores, axis=0)))


@dataclass
class ValidationReference:
    """What a job's validation scores are compared with; computed once at the start."""

    metric: str
    reason: str
    chance: dict[str, float]
    baseline: dict | None = None  # BaselineResult.to_dict(), None when off or impossible
    epoch_rule: str = "best"  # select_epoch resolved: "best" (by `metric`) or "last"
    epoch_reason: str = "asked for"
    baseline_note: str = ""
    warned_flat: bool = field(default=False, compare=False)

    def log_start(self, validation_recordings: int) -> None:
        logger.info(
            "chance_val_cmap=%.6f chance_val_auc=%.6f (random scores on the %d validation recordings)",
            self.chance["val_cmap"], self.chance["val_auc"], validation_recordings,
        )  # fmt: skip
        logger.info("select_metric=%s (%s)", self.metric, self.reason)
        logger.info("select_epoch=%s (%s)", self.epoch_rule, self.epoch_reason)

    def delivered(self, history: list[dict]) -> dict | None:
        """The record whose weights become the model (of the job, or of the round `history` holds)."""
        return chosen_record(history, self.metric, self.epoch_rule)

    def describe_choice(self, record: dict) -> str:
        """`best epoch=N by val_auc` or `last epoch=N`, for log lines about the delivered model."""
        if self.epoch_rule == "last":
            return f"last epoch={record['epoch']}, select_epoch=last"
        return f"best epoch={record['epoch']} by {self.metric}"

    def summary(self) -> dict:
        """For metrics.json."""
        return {
            "select_metric": self.metric,
            "select_reason": self.reason,
            "select_epoch": self.epoch_rule,
            "select_epoch_reason": self.epoch_reason,
            "chance": self.chance,
            "baseline": self.baseline,
        }

    def plot_lines(self) -> dict[str, float]:
        """Horizontal reference lines of the validation-metrics plot."""
        lines = {f"chance {name}": value for name, value in self.chance.items()}
        if self.baseline:
            lines |= {f"baseline {name}": self.baseline[name] for name in METRICS}
        return {name: value for name, value in lines.items() if math.isfinite(value)}

    def check_epoch(self, record: dict) -> None:
        """Warn once, the first epoch whose predictions do not depend on the input."""
        spread = record.get("val_score_std", math.nan)
        if not self.warned_flat and spread < FLAT_SCORE_STD:
            self.warned_flat = True
            logger.warning(
                "Validation predictions barely vary at epoch %d (std %.4f across items, below %.2f): the model "
                "gives every input nearly the same scores. Normal for the first epochs of a run; if it lasts, the "
                "model is not learning (see docs/recipe.md).",
                record["epoch"], spread, FLAT_SCORE_STD,
            )  # fmt: skip

    def end_of_job_warnings(self, best: dict | None) -> list[str]:
        """Warnings about the delivered model (`best`: its epoch's record), each also logged."""
        if not best or math.isnan(best.get("val_auc", math.nan)):
            return []
        warnings = []
        auc = best["val_auc"]
        if self.baseline and not auc > self.baseline["val_auc"]:
            warnings.append(
                f"The model ({self.describe_choice(best)}) has val_auc={auc:.4f}, which does not beat the "
                f"baseline's baseline_val_auc={self.baseline['val_auc']:.4f} (log-mel statistics + logistic "
                "regression): the network has not learned more than band energies tell. Train longer, use "
                "pretrained weights, or see docs/recipe.md."
            )
        if auc < self.chance["val_auc"] + NEAR_CHANCE:
            warnings.append(
                f"The model's val_auc={auc:.4f} is at or below chance level "
                f"(chance_val_auc={self.chance['val_auc']:.2f}): the model has not learned."
            )
        spread = best.get("val_score_std", math.nan)
        if spread < FLAT_SCORE_STD:
            warnings.append(
                f"The model's validation predictions barely vary (std {spread:.4f} across items): it "
                "scores every input nearly alike."
            )
        for warning in warnings:
            logger.warning(warning)
        return warnings


def build_reference(
    cfg: Config, data: TrainingData, truth: np.ndarray, device: torch.device, workers: int
) -> ValidationReference:
    """Chance levels, the selection metric and the baseline of this job's validation set, logged once."""
    chance, noise = chance_levels(truth, cfg.run.seed)
    metric, reason = choose_metric(cfg.validation.select_metric, chance)
    rule, rule_reason = choose_epoch_rule(cfg.validation.select_epoch, metric, noise, len(truth))
    reference = ValidationReference(metric, reason, chance, epoch_rule=rule, epoch_reason=rule_reason)
    if len(truth):
        reference.log_start(len(truth))
    if cfg.validation.baseline == "off" or not len(truth):
        reference.baseline_note = "baseline=off" if len(truth) else "no validation data"
        logger.info("No baseline: %s", reference.baseline_note)
        return reference
    try:
        result = evaluate_baseline(
            data.train, data.validation, truth, cfg.data.sample_rate, cfg.features, cfg.run.seed, workers, device
        )
    except Exception as error:  # noqa: BLE001 - a reference must never cost the user the job
        reference.baseline_note = f"{type(error).__name__}: {error}"
        logger.warning("The baseline was skipped: %s", reference.baseline_note)
        return reference
    reference.baseline = result.to_dict()
    logger.info(
        "%s (log-mel statistics + logistic regression on %d training crops, %.1f s)",
        result.line(), result.train_crops, result.seconds,
    )  # fmt: skip
    return reference
