"""The demo: a real training run on the embedded synthetic dataset, on CPU, in a few minutes.

Generates a BirdCLEF-style dataset (8 species of synthetic calls in pink noise and wind, mixed
formats and sample rates) into `demo_run/data`, lays out `demo_run/opt_ml` as SageMaker would, and
runs the real sagemaker-training toolkit's `train` on it: the same entrypoint the image runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from birdsed.data.synthetic import make_dataset
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
    "num_workers": 2,
    "seed": 7,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "demo_run", help="where data and outputs go")
    parser.add_argument("--epochs", type=int, default=DEMO_HYPERPARAMETERS["epochs"])
    args = parser.parse_args(argv)

    data_dir = args.workdir / "data"
    if not (data_dir / "train_metadata.csv").is_file():
        print(f"Generating the demo dataset in {data_dir} ...", flush=True)
        make_dataset(data_dir, species=8, recordings_per_species=16, seed=2026)
    base = args.workdir / "opt_ml"
    if base.exists():
        shutil.rmtree(base)  # a fresh job each time: no resume from an earlier demo
    local_job.layout(base, {"train": data_dir}, {**DEMO_HYPERPARAMETERS, "epochs": args.epochs})
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
    best = json.loads((base / "output" / "data" / "metrics.json").read_text())["best"]
    print(f"\nDemo finished in {minutes:.1f} min.")
    print(f"Model: {base / 'model'} (model.pt, model.pt2, labels.json, config.json)")
    print(f"Best epoch {best['epoch']}: val_cmap={best['val_cmap']:.4f} val_auc={best['val_auc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
