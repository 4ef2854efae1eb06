"""The demo: a real training run on the embedded synthetic dataset, on CPU, with two pseudo-label rounds.

Generates (seeded) a BirdCLEF-style dataset (6 species of synthetic calls in pink noise and wind, mixed
formats and sample rates) into `demo_run/data-seed0/train`, and synthetic soundscapes unlike it (quieter,
overlapping calls in insects, rain and wind): 24 labelled minutes (`dev`, the soundscape_validation
channel) and 32 unlabelled ones (`unlabelled`, the soundscapes channel). It lays out `demo_run/opt_ml` as
SageMaker would and runs the real sagemaker-training toolkit's `train` on it: the same entrypoint the
image runs. The job is `launch/soundscape_experiment.py`'s `rounds2` job for seed 0 (one place defines
both, `DEMO_HYPERPARAMETERS` and `make_data`), so the demo's figures are the experiment's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from birdsed.config import TINY_HYPERPARAMETERS
from birdsed.data.synthetic import make_dataset, make_soundscapes
from birdsed_launch import local_job
from birdsed_launch.local_job import REPO_ROOT

SPECIES = 6
DEMO_SEED = 0
# Minutes on a CPU: the tests' tiny settings (birdsed.config.TINY_HYPERPARAMETERS): timm's smallest EfficientNet
# (test_efficientnet, random init: the demo downloads nothing) on 3 s crops at 16 kHz, 48 mel bands, batch 16.
# Real jobs use efficientnet_b0 and up, pretrained.
FOCAL_HYPERPARAMETERS = {
    **TINY_HYPERPARAMETERS,
    # The first teacher decides what the rounds can teach: 31 epochs (15 plus two 8-epoch rounds' worth, the
    # control that beat 15 epochs with rounds) of 12 steps, where 15 of 4 left round 0 undertrained.
    "epochs": 31,
    # 12 steps an epoch instead of 4 (58 training recordings): an 8-epoch round then draws ~600 pseudo-labelled
    # windows, about each kept one once, where 4-step epochs and 4-epoch rounds drew ~90 (docs/soundscapes.md).
    "min_epoch_crops": 192,
    "val_fraction": 0.2,
    "seed": DEMO_SEED,
    # Each round's best epoch (and the model delivered) by the score on the labelled soundscapes.
    "select_metric": "val_soundscape_auc",
}
# Long, gentle rounds (8 epochs at 0.1 x lr): the student keeps the teacher's weights and sees every kept window.
# On three seeds the dev score rose over both rounds with these; with 4-epoch rounds (at 0.1 or 0.3 x lr)
# round 2 fell below round 1 on some (docs/soundscapes.md, "How the demo's settings were chosen").
ROUNDS_HYPERPARAMETERS = {"pseudo_rounds": 2, "pseudo_epochs": 8, "pseudo_lr_scale": 0.1}
DEMO_HYPERPARAMETERS = {**FOCAL_HYPERPARAMETERS, **ROUNDS_HYPERPARAMETERS}


# Recordings per species of `train`; one-minute recordings of each soundscape set. A set's marker file records
# its size, so a set made by an older demo with other sizes is made again rather than silently reused.
SET_SIZES = {"train": 12, "dev": 24, "unlabelled": 32, "test": 16}


def make_data(
    workdir: Path, seed: int = DEMO_SEED, sets: tuple[str, ...] = ("train", "dev", "unlabelled")
) -> dict[str, Path]:
    """The focal dataset and the soundscape sets, generated once per `workdir` and seed: `train` (focal
    clips), `dev` (labelled soundscapes), `unlabelled`, and `test` (labelled, for held-out scoring)."""
    data = workdir / f"data-seed{seed}"
    makers = {
        "train": lambda path: make_dataset(path, species=SPECIES, recordings_per_species=SET_SIZES["train"], seed=seed),
        "dev": lambda path: make_soundscapes(path, SPECIES, files=SET_SIZES["dev"], seconds=60, seed=1000 + seed),
        "unlabelled": lambda path: unlabelled_soundscapes(path, seed),
        "test": lambda path: make_soundscapes(path, SPECIES, files=SET_SIZES["test"], seconds=60, seed=3000 + seed),
    }
    for name in sets:
        made_once(data / name, SET_SIZES[name], makers[name])
    return {name: data / name for name in sets}


def made_once(path: Path, size: int, make: Callable[[Path], object]) -> None:
    """`make(path)` unless the marker beside `path` (`.NAME.done`, holding `size`) says it is already there.

    A set without that marker is half-written (an interrupted run) or an older demo's: it is removed first.
    """
    done = path.parent / f".{path.name}.done"
    if done.is_file() and done.read_text().strip() == str(size):
        return
    print(f"Generating {path.name} in {path} ...", file=sys.stderr, flush=True)
    if path.exists():
        shutil.rmtree(path)
    make(path)
    done.write_text(f"{size}\n")


def unlabelled_soundscapes(path: Path, seed: int, labelled: bool = False, window: float = 5.0) -> Path:
    """The `unlabelled` set; with `labelled`, the same audio with its labels (the experiment's answer key)."""
    files = SET_SIZES["unlabelled"]
    return make_soundscapes(path, SPECIES, files=files, seconds=60, labelled=labelled, window=window, seed=2000 + seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "demo_run", help="where data and outputs go")
    parser.add_argument("--epochs", type=int, default=DEMO_HYPERPARAMETERS["epochs"])
    args = parser.parse_args(argv)

    data = make_data(args.workdir)
    channels = {"train": data["train"], "soundscape_validation": data["dev"], "soundscapes": data["unlabelled"]}
    base = args.workdir / "opt_ml"
    if base.exists():
        shutil.rmtree(base)  # a fresh job each time: no resume from an earlier demo
    local_job.layout(base, channels, {**DEMO_HYPERPARAMETERS, "epochs": args.epochs})
    print(
        "The demo uses pretrained=false: it downloads no weights and trains a small EfficientNet "
        "(timm's test_efficientnet) from random initialisation; real jobs start efficientnet_b0 and up from the "
        "Hugging Face Hub's ImageNet weights (docs/pretrained.md).",
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
    scores = f"val_cmap={best['val_cmap']:.4f} val_auc={best['val_auc']:.4f}"
    print(f"Best epoch {best['epoch']} (round {best.get('round', 0)}): {scores}")
    print(f"Soundscape windows, best epoch of each round: {round_summary(metrics['history'])}")
    return 0


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
