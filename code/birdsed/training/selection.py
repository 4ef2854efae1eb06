"""Judging validation honestly: chance levels, the reference baseline, the metric that picks the best
epoch, and the end-of-job warnings (docs/recipe.md).

Padded cmAP (BirdCLEF 2023) appends 5 rows of ones to truth and scores: with few validation
recordings per class, the padding dominates and random scores reach ~0.92 (16 recordings, 16 classes).
Selecting the best epoch by it then picks noise. `select_metric=auto` therefore uses val_cmap only when
random scores stay at or below `PADDED_CHANCE_LIMIT` on the job's validation set, and val_auc (0.5 at
chance, whatever the set's size) otherwise; the log says which and why.
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
# A best val_auc within this of chance (0.5) is reported as "at chance".
NEAR_CHANCE = 0.05


def chance_levels(truth: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Mean val_cmap and val_auc of uniform random scores on this validation truth.

    The draws sit side by side as extra columns of one matrix: both metrics are macro averages over
    columns, so one pass gives the mean over draws. AUC is the Mann-Whitney rank formula (random scores
    have no ties), sklearn's roc_auc_score is 100x slower per column here.
    """
    if len(truth) == 0:
        return {name: math.nan for name in METRICS}
    draws = max(3, min(CHANCE_DRAWS, CHANCE_CELLS_PER_DRAW // truth.size))
    tiled = (np.tile(truth, (1, draws)) > 0).astype(np.int64)
    scores = np.random.default_rng(seed).random(tiled.shape)
    return {"val_cmap": padded_cmap(tiled, scores), "val_auc": rank_auc(tiled, scores)}


def rank_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Macro ROC-AUC over columns with positives and negatives, for scores without ties."""
    positives = truth.sum(axis=0)
    negatives = len(truth) - positives
    scored = (positives > 0) & (negatives > 0)
    if not scored.any():
        return math.nan
    ranks = scores.argsort(axis=0).argsort(axis=0) + 1  # 1-based rank of each score in its column
    rank_sums = (ranks * truth).sum(axis=0)
    auc = (rank_sums - positives * (positives + 1) / 2) / np.maximum(positives * negatives, 1)
    return float(auc[scored].mean())


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


def check_available(metric: str, has_soundscape_validation: bool) -> None:
    """A soundscape metric needs the channel that produces it."""
    if metric in SOUNDSCAPE_METRICS and not has_soundscape_validation:
        raise ConfigError(
            f"select_metric={metric} needs a 'soundscape_validation' channel (audio + soundscape_labels.csv); "
            "add the channel or pick val_cmap / val_auc."
        )


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
    baseline_note: str = ""
    warned_flat: bool = field(default=False, compare=False)

    def log_start(self, validation_recordings: int) -> None:
        logger.info(
            "chance_val_cmap=%.6f chance_val_auc=%.6f (random scores on the %d validation recordings)",
            self.chance["val_cmap"], self.chance["val_auc"], validation_recordings,
        )  # fmt: skip
        logger.info("select_metric=%s (%s)", self.metric, self.reason)

    def summary(self) -> dict:
        """For metrics.json."""
        return {
            "select_metric": self.metric,
            "select_reason": self.reason,
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
        """Warnings about the delivered model (the best epoch), each also logged."""
        if not best or math.isnan(best.get("val_auc", math.nan)):
            return []
        warnings = []
        epoch, auc = best["epoch"], best["val_auc"]
        if self.baseline and not auc > self.baseline["val_auc"]:
            warnings.append(
                f"The model's best epoch ({epoch}, by {self.metric}) has val_auc={auc:.4f}, which does not beat the "
                f"baseline's baseline_val_auc={self.baseline['val_auc']:.4f} (log-mel statistics + logistic "
                "regression): the network has not learned more than band energies tell. Train longer, use "
                "pretrained weights, or see docs/recipe.md."
            )
        if auc < self.chance["val_auc"] + NEAR_CHANCE:
            warnings.append(
                f"The best epoch's val_auc={auc:.4f} is at or below chance level "
                f"(chance_val_auc={self.chance['val_auc']:.2f}): the model has not learned."
            )
        spread = best.get("val_score_std", math.nan)
        if spread < FLAT_SCORE_STD:
            warnings.append(
                f"The best epoch's validation predictions barely vary (std {spread:.4f} across items): the model "
                "scores every input nearly alike."
            )
        for warning in warnings:
            logger.warning(warning)
        return warnings


def build_reference(
    cfg: Config, data: TrainingData, truth: np.ndarray, device: torch.device, workers: int
) -> ValidationReference:
    """Chance levels, the selection metric and the baseline of this job's validation set, logged once."""
    chance = chance_levels(truth, cfg.run.seed)
    metric, reason = choose_metric(cfg.validation.select_metric, chance)
    reference = ValidationReference(metric, reason, chance)
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
