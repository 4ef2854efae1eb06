"""The demo: a real training run on the embedded synthetic dataset, on CPU (24 min measured on 2 shared cores).

Generates a BirdCLEF-style dataset (8 species of synthetic calls in pink noise and wind, mixed
formats and sample rates) into `demo_run/data`, and synthetic soundscapes unlike it (quieter,
overlapping calls in insects, rain and wind): labelled ones (`demo_run/soundscapes_labelled`, the
soundscape_validation channel) and unlabelled ones (`demo_run/soundscapes`, for 2 pseudo-label
rounds). It lays out `demo_run/opt_ml` as SageMaker would and runs the real sagemaker-training
toolkit's `train` on it: the same entrypoint the image runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from birdsed.data.synthetic import make_dataset, make_soundscapes
from birdsed_launch import local_job
from birdsed_launch.local_job import REPO_ROOT

DEMO_HYPERPARAMETERS = {
    "backbone": "efficientnet_b0",  # an EfficientNet small enough for a CPU
    # The demo downloads nothing: no pretrained weights from the Hugging Face Hub (a real job's default,
    # pretrained=auto, would fetch them); the backbone starts from random weights.
    "pretrained": "false",
    "epochs": 30,
    "batch_size": 16,
    "lr": 2e-3,
    "n_mels": 64,
    "duration": 5,
    "val_fraction": 0.25,
    # One crop per training recording per epoch (96): the default's 512 suits datasets too small for an epoch
    # of steps; the demo's minutes are budgeted in epochs.
    "min_epoch_crops": 0,
    "num_workers": 2,
    "seed": 7,
    # Soundscapes (docs/soundscapes.md): each round's best epoch by the soundscape score, then 2 rounds.
    "select_metric": "val_soundscape_auc",
    "pseudo_rounds": 2,
    "pseudo_epochs": 10,
}
# The soundscapes' calls: quieter than the focal clips' (0.15-0.25), not so quiet that a CPU-sized model
# trained for minutes is left guessing (launch/soundscape_experiment.py uses the harder default).
DEMO_CALL_LEVEL = (0.05, 0.15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "demo_run", help="where data and outputs go")
    parser.add_argument("--epochs", type=int, default=DEMO_HYPERPARAMETERS["epochs"])
    args = parser.parse_args(argv)

    channels = make_data(args.workdir)
    base = args.workdir / "opt_ml"
    if base.exists():
        shutil.rmtree(base)  # a fresh job each time: no resume from an earlier demo
    local_job.layout(base, channels, {**DEMO_HYPERPARAMETERS, "epochs": args.epochs})
    print(
        "The demo uses pretrained=false: it downloads no weights and trains efficientnet_b0 from random "
        "initialisation (real jobs start from the Hugging Face Hub's ImageNet weights; see docs/pretrained.md).",
        flush=True,
    )
    started = time.monotonic()
    completed = local_job.run_toolkit(base)
    minutes = (time.monotonic() - started) / 60
    if completed.returncode != 0:
        failure = base / "output" / "failure"
        reason = failure.read_text() if failure.exists() else "(no failure file)"
        print(f"\nDemo training failed (exit {completed.returncode}): {reason}", file=sys.stderr)
        return completed.returncode
    metrics = json.loads((base / "output" / "data" / "metrics.json").read_text())
    best = metrics["best"]
    print(f"\nDemo finished in {minutes:.1f} min.")
    print(f"Model: {base / 'model'} (model.pt, model.pt2, labels.json, config.json)")
    print(f"Best epoch {best['epoch']}: val_cmap={best['val_cmap']:.4f} val_auc={best['val_auc']:.4f}")
    print(f"Soundscape windows, best epoch of each round: {round_summary(metrics['history'])}")
    return 0


def make_data(workdir: Path) -> dict[str, Path]:
    """The focal dataset and the soundscapes, generated once into `workdir`."""
    data_dir, labelled, unlabelled = workdir / "data", workdir / "soundscapes_labelled", workdir / "soundscapes"
    if not (data_dir / "train_metadata.csv").is_file():
        print(f"Generating the demo dataset in {data_dir} ...", flush=True)
        make_dataset(data_dir, species=8, recordings_per_species=16, seed=2026)
    if not (labelled / "soundscape_labels.csv").is_file():
        print(f"Generating labelled soundscapes in {labelled} ...", flush=True)
        make_soundscapes(labelled, species=8, files=2, seconds=60, level=DEMO_CALL_LEVEL, seed=2027)
    if not (unlabelled / ".complete").is_file():
        print(f"Generating unlabelled soundscapes in {unlabelled} ...", flush=True)
        make_soundscapes(unlabelled, species=8, files=8, seconds=60, labelled=False, level=DEMO_CALL_LEVEL, seed=2028)
        (unlabelled / ".complete").touch()
    return {"train": data_dir, "soundscape_validation": labelled, "soundscapes": unlabelled}


def round_summary(history: list[dict]) -> str:
    """`round 0 val_soundscape_auc=0.78 -> round 1 ...`: the best epoch of each round."""
    best: dict[int, float] = {}
    for record in history:
        value = record.get("val_soundscape_auc")
        if value is not None:
            best[record.get("round", 0)] = max(best.get(record.get("round", 0), 0.0), value)
    return " -> ".join(f"round {number} val_soundscape_auc={value:.4f}" for number, value in sorted(best.items()))


if __name__ == "__main__":
    sys.exit(main())
