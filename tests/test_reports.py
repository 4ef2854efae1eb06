"""Plots (valid PNGs, NaN-safe) and TensorBoard event files with the epoch scalars."""

from __future__ import annotations

import math

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from birdsed import reports

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = ["aaa1", "bbb2", "ccc3"]


def history(epochs: int = 3) -> list[dict]:
    return [
        {
            "epoch": epoch,
            "train_loss": 1.0 / epoch,
            "val_loss": 1.2 / epoch,
            "val_cmap": 0.5 + 0.1 * epoch,
            "val_auc": math.nan if epoch == 1 else 0.6 + 0.1 * epoch,
            "lr": 1e-3,
            "per_class_ap": [0.1 * epoch, math.nan, 0.9],
        }
        for epoch in range(1, epochs + 1)
    ]


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_plots_are_written_as_pngs(tmp_path):
    records = history()
    paths = reports.write_plots(tmp_path, records, records[-1], LABELS, [5, 0, 12])
    assert [path.name for path in paths] == list(reports.PLOT_FILES)
    for path in paths:
        assert_png(path)


def test_plots_without_history_or_validation_still_render(tmp_path):
    for path in reports.write_plots(tmp_path, [], None, LABELS, [1, 2, 3]):
        assert_png(path)


def test_per_class_ap_helpers():
    truth = [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    scores = [[0.9, 0.1, 0.2], [0.2, 0.8, 0.1], [0.7, 0.3, 0.1]]
    values = reports.per_class_ap(np.array(truth), np.array(scores))
    assert values[:2] == [1.0, 1.0] and math.isnan(values[2])
    assert all(math.isnan(value) for value in reports.per_class_ap(np.zeros((0, 3)), np.zeros((0, 0))))
    assert reports.class_counts(["bbb2", "aaa1", "bbb2"], LABELS) == [1, 2, 0]
    assert reports.ap_by_label(LABELS, {"per_class_ap": [0.5, 0.25, 1.0]}) == {"aaa1": 0.5, "bbb2": 0.25, "ccc3": 1.0}
    assert reports.ap_by_label(LABELS, None) == {}


def test_tensorboard_gets_epoch_scalars_and_the_best_per_class_ap(tmp_path):
    reporter = reports.create_reporter(tmp_path, LABELS, [1, 2, 3])
    records = history()
    for record in records:
        reporter.log_epoch(record)
    reporter.finish(records, records[-1])

    events = EventAccumulator(str(tmp_path / reports.TENSORBOARD_DIR))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert set(reports.EPOCH_SCALARS) <= scalars
    assert {"per_class_ap/aaa1", "per_class_ap/ccc3"} <= scalars
    assert "per_class_ap/bbb2" not in scalars  # NaN (no positives) is not logged
    assert [event.step for event in events.Scalars("train_loss")] == [1, 2, 3]
    assert [event.step for event in events.Scalars("val_auc")] == [2, 3]  # the NaN epoch is skipped
    assert math.isclose(events.Scalars("per_class_ap/aaa1")[0].value, 0.3, rel_tol=1e-6)


def test_tensorboard_can_be_turned_off(tmp_path):
    reporter = reports.create_reporter(tmp_path, LABELS, [1, 2, 3], tensorboard=False)
    reporter.log_epoch(history()[0])
    reporter.finish(history(1), history(1)[0])
    assert not (tmp_path / reports.TENSORBOARD_DIR).exists()
    assert_png(tmp_path / "loss.png")
