"""What a person looks at after training: PNG plots and TensorBoard event files.

Both go into the output data dir (`/opt/ml/output/data`). TensorBoard files go to its
`tensorboard/` folder, which the launcher's `--tensorboard-s3-uri` names as SageMaker's
TensorBoardOutputConfig LocalPath, so SageMaker syncs them to S3 while the job runs.

Plots are drawn on `matplotlib.figure.Figure` objects with an explicit Agg canvas: no pyplot, so
importing this module changes no global backend and leaks no figures.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch.utils.tensorboard import SummaryWriter

from birdsed.metrics import per_class_average_precision

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
EPOCH_SCALARS = ("train_loss", "val_loss", "val_cmap", "val_auc", "lr")
# Curves of val_metrics.png; the soundscape ones only when the job scored soundscapes.
VALIDATION_CURVES = ("val_cmap", "val_auc")
SOUNDSCAPE_CURVES = ("val_soundscape_auc", "val_soundscape_cmap")
PLOT_FILES = ("loss.png", "val_metrics.png", "per_class_ap.png", "class_distribution.png")


def per_class_ap(truth: np.ndarray, scores: np.ndarray) -> list[float]:
    """Validation AP per class in label order (NaN for classes without positives)."""
    if len(scores) == 0:
        return [math.nan] * truth.shape[1]
    return [float(value) for value in per_class_average_precision(truth, scores)]


def class_counts(primary_labels: Sequence[str], labels: Sequence[str]) -> list[int]:
    """Training recordings per class (by primary label), in label order."""
    counts = Counter(primary_labels)
    return [counts.get(label, 0) for label in labels]


def ap_by_label(labels: Sequence[str], record: dict | None) -> dict[str, float]:
    """The `per_class_ap` of an epoch record as label -> AP (empty when the record has none)."""
    values = (record or {}).get("per_class_ap") or []
    return dict(zip(labels, values, strict=False))


class Reporter:
    """Per-epoch TensorBoard scalars, and at the end the per-class AP and the PNG plots.

    `writer=None` turns TensorBoard off (e.g. every rank but 0); a process that writes no
    outputs should not create a Reporter at all.
    """

    def __init__(
        self, output_data_dir: Path, labels: list[str], train_counts: list[int], writer: SummaryWriter | None
    ) -> None:
        self.output_data_dir = output_data_dir
        self.labels = labels
        self.train_counts = train_counts
        self.writer = writer

    def log_epoch(self, record: dict) -> None:
        if self.writer is None:
            return
        for name in (*EPOCH_SCALARS, *SOUNDSCAPE_CURVES):  # soundscape scores: only jobs that have them
            value = record.get(name)
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(name, value, global_step=record["epoch"])
        self.writer.flush()

    def finish(self, history: list[dict], best: dict | None, references: dict[str, float] | None = None) -> None:
        """Per-class AP of the delivered epoch to TensorBoard, all plots to PNG; closes the writer.

        `references` (name -> value: chance levels, the baseline) are drawn as dashed lines on the
        validation-metrics plot."""
        if self.writer is not None:
            for label, value in ap_by_label(self.labels, best).items():
                if value is not None and math.isfinite(value):
                    self.writer.add_scalar(f"per_class_ap/{label}", value, global_step=best["epoch"])
            self.writer.close()
        try:
            write_plots(self.output_data_dir, history, best, self.labels, self.train_counts, references)
        except Exception as error:  # noqa: BLE001 - the model is already written; a plot must not fail the job
            logger.warning("Plots were not written: %s: %s", type(error).__name__, error)


def create_reporter(
    output_data_dir: Path, labels: list[str], train_counts: list[int], tensorboard: bool = True
) -> Reporter:
    writer = SummaryWriter(log_dir=str(output_data_dir / TENSORBOARD_DIR)) if tensorboard else None
    return Reporter(output_data_dir, labels, train_counts, writer)


def write_plots(
    output_data_dir: Path,
    history: list[dict],
    best: dict | None,
    labels: list[str],
    train_counts: list[int],
    references: dict[str, float] | None = None,
) -> list[Path]:
    """`loss.png`, `val_metrics.png`, `per_class_ap.png`, `class_distribution.png`."""
    ap = ap_by_label(labels, best)
    figures = {
        "loss.png": plot_curves(history, ("train_loss", "val_loss"), "loss"),
        "val_metrics.png": plot_curves(history, validation_curves(history), "validation score", references),
        "per_class_ap.png": plot_bars(
            list(ap), [_nan_if_missing(value) for value in ap.values()], "AP", _ap_title(ap, best)
        ),
        "class_distribution.png": plot_bars(labels, train_counts, "recordings", "training recordings per class"),
    }
    output_data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, figure in figures.items():
        FigureCanvasAgg(figure)
        figure.savefig(output_data_dir / name, dpi=100)
        paths.append(output_data_dir / name)
    logger.info("Plots written to %s: %s", output_data_dir, ", ".join(figures))
    return paths


def validation_curves(history: list[dict]) -> tuple[str, ...]:
    scored = [name for name in SOUNDSCAPE_CURVES if any(name in record for record in history)]
    return (*VALIDATION_CURVES, *scored)


def round_starts(history: list[dict]) -> list[tuple[int, int]]:
    """(epoch, round) of the first epoch of each pseudo-label round after round 0."""
    starts, previous = [], 0
    for record in history:
        if record.get("round", 0) != previous:
            previous = record["round"]
            starts.append((record["epoch"], previous))
    return starts


def plot_curves(
    history: list[dict], names: Sequence[str], ylabel: str, references: dict[str, float] | None = None
) -> Figure:
    """One line per metric over epochs (missing or NaN values leave gaps); pseudo-label rounds marked;
    `references` as dashed lines, in the colour of the metric they name (e.g. "baseline val_auc" with val_auc)."""
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.add_subplot()
    epochs = [record["epoch"] for record in history]
    colours = {}
    for name in names:
        values = [_nan_if_missing(record.get(name)) for record in history]
        colours[name] = axes.plot(epochs, values, marker="o", label=name)[0].get_color()
    for label, value in (references or {}).items():
        colour = next((colour for name, colour in colours.items() if label.endswith(name)), "grey")
        style = ":" if label.startswith("chance") else "--"
        axes.axhline(value, color=colour, linestyle=style, linewidth=1, label=f"{label} {value:.3f}")
    for epoch, number in round_starts(history):
        axes.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=1)
        axes.annotate(f"round {number}", (epoch - 0.5, 1), xycoords=("data", "axes fraction"), fontsize=8, va="top")
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def plot_bars(names: Sequence[str], values: Sequence[float], xlabel: str, title: str) -> Figure:
    """A horizontal bar per class: labels stay readable for hundreds of species."""
    figure = Figure(figsize=(7, max(2.5, 0.25 * len(names) + 1.2)), layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    axes.barh(positions, values)
    axes.set_yticks(positions, labels=list(names), fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    return figure


def _ap_title(ap: dict[str, float], best: dict | None) -> str:
    if not best or not ap:
        return "validation AP per class (no validation data)"
    missing = sum(1 for value in ap.values() if value is None or not math.isfinite(value))
    note = f"; {missing} without validation recordings (no bar)" if missing else ""
    return f"validation AP per class, epoch {best['epoch']} (the model's){note}"


def _nan_if_missing(value: float | None) -> float:
    return math.nan if value is None else value
