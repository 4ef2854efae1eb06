"""Which epoch is best: the score named by the `select_metric` hyperparameter."""

from __future__ import annotations

import math

from birdsed.errors import ConfigError

SOUNDSCAPE_METRICS = ("val_soundscape_auc", "val_soundscape_cmap")
METRICS = ("val_cmap", "val_auc", *SOUNDSCAPE_METRICS)
DEFAULT_METRIC = "val_cmap"  # what `auto` means here


def resolve(metric: str) -> str:
    """`auto` -> the metric it stands for; the others as they are."""
    return DEFAULT_METRIC if metric == "auto" else metric


def selection_score(record: dict, metric: str) -> float:
    """The epoch record's score under `metric` (higher is better); NaN when the record has none."""
    value = record.get(resolve(metric))
    return math.nan if value is None else float(value)


def check_available(metric: str, has_soundscape_validation: bool) -> None:
    """A soundscape metric needs the channel that produces it."""
    if resolve(metric) in SOUNDSCAPE_METRICS and not has_soundscape_validation:
        raise ConfigError(
            f"select_metric={metric} needs a 'soundscape_validation' channel (audio + soundscape_labels.csv); "
            "add the channel or pick val_cmap / val_auc."
        )
