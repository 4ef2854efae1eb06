"""Does pseudo-labelling help on soundscapes unlike the focal clips? A reproducible experiment; key=value lines.

    python launch/soundscape_experiment.py [--workdir DIR] [--seeds 0 1 2] [--backbone NAME] [--epochs 15] ...

Generates (seeded) a focal dataset and three sets of synthetic soundscapes with a domain shift from it
(quieter calls, several species at once, insect chorus, rain, stronger noise): `dev` (labelled: the
jobs' soundscape_validation channel, which picks each round's best epoch), `unlabelled` (the soundscapes
channel) and `test` (labelled, held out: seen by no job). Then it trains, with the real toolkit on this
machine (launch/local_job.py), the same job three ways:

- `rounds0`: pseudo_rounds=0;
- `rounds0_long`: pseudo_rounds=0 with as many epochs as the rounds job trains in all (a control: more
  training alone);
- `rounds2`: pseudo_rounds=2,

and scores each model on the held-out soundscape windows with the job's own window scoring (macro
ROC-AUC over the classes present, BirdCLEF 2024/25; padded cmAP). See docs/soundscapes.md for figures.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from birdsed import predict
from birdsed.data.soundscapes import labelled_windows, read_labels_file
from birdsed.metrics import macro_roc_auc
from birdsed.training.distributed import Distributed
from birdsed.training.soundscape_validation import evaluate_soundscapes, load
from birdsed_launch import demo, local_job
from birdsed_launch.local_job import REPO_ROOT

ROUND_LINE = re.compile(r"^round=\d+ pseudo_windows=\d+ kept=\d+ mean_confidence=\S+$", re.MULTILINE)


def train(base: Path, channels: dict[str, Path], hyperparameters: dict[str, object]) -> tuple[Path, str, float]:
    """One job with the real toolkit, from scratch; returns its model dir, its log and its minutes."""
    local_job.layout(base, channels, hyperparameters, fresh=True)
    started = time.monotonic()
    completed = local_job.run_toolkit(base, capture_output=True, text=True)
    (base / "job.log").write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        raise SystemExit(f"error: the job in {base} failed; see {base / 'job.log'}")
    return base / "model", completed.stdout, (time.monotonic() - started) / 60


def score(model_dir: Path, test_dir: Path) -> dict[str, float]:
    """Window ROC-AUC and padded cmAP of a trained model on held-out labelled soundscapes."""
    loaded = predict.load_model(model_dir, torch.device("cpu"))
    cfg = loaded.cfg
    one = Distributed(0, 0, 1, torch.device("cpu"))
    windows = load(labelled_windows(test_dir, loaded.labels, cfg.data.sample_rate, 0.0), cfg, one)
    return evaluate_soundscapes(windows, loaded.model, loaded, None, torch.device("cpu"), one, lambda: False)


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, float]:
    """The three jobs on one seed's data; prints their figures, returns their held-out window AUCs."""
    data = demo.make_data(args.workdir, seed, sets=("train", "dev", "unlabelled", "test"))
    common = {
        **demo.FOCAL_HYPERPARAMETERS,
        "backbone": args.backbone,
        "sample_rate": args.sample_rate,
        "fmax": min(14000, args.sample_rate // 2),
        "epochs": args.epochs,
        "seed": seed,
    }
    overrides = local_job.parse_hyperparameters(args.hp)  # last: --hp wins over the round settings too
    rounds = {**demo.ROUNDS_HYPERPARAMETERS, "pseudo_epochs": args.pseudo_epochs}
    jobs = {
        "rounds0": ({}, {}),
        "rounds0_long": ({"epochs": args.epochs + 2 * args.pseudo_epochs}, {}),
        "rounds2": (rounds, {"soundscapes": data["unlabelled"]}),
    }
    aucs = {}
    for name, (extra, channels) in jobs.items():
        if args.only and name not in args.only:
            continue
        base = args.workdir / f"seed{seed}" / name
        channels = {"train": data["train"], "soundscape_validation": data["dev"], **channels}
        model_dir, log, minutes = train(base, channels, {**common, **extra, **overrides})
        scores = score(model_dir, data["test"])
        prefix = f"seed{seed}_{name}"
        for line in ROUND_LINE.findall(log):
            print(f"{prefix}_{line.replace(' ', f' {prefix}_')}", flush=True)
        best = json.loads((base / "output" / "data" / "metrics.json").read_text())["best"]
        print(f"{prefix}_dev_val_soundscape_auc={best['val_soundscape_auc']:.4f}", flush=True)
        print(f"{prefix}_minutes={minutes:.1f}", flush=True)
        print(f"{prefix}_window_cmap={scores['val_soundscape_cmap']:.4f}", flush=True)
        print(f"{prefix}_window_auc={scores['val_soundscape_auc']:.4f}", flush=True)
        for key, value in pseudo_label_quality(base, args.workdir, seed, common["duration"]).items():
            print(f"{prefix}_{key}={value}", flush=True)
        aucs[name] = scores["val_soundscape_auc"]
    return aucs


def pseudo_label_quality(base: Path, workdir: Path, seed: int, duration: float) -> dict[str, str]:
    """How right each round's kept pseudo-labels were: the synthetic unlabelled set's labels are known.

    `roundR_pseudo_auc` (macro ROC-AUC of the soft targets over the kept windows), `roundR_pseudo_top1`
    (kept windows whose top class is present) and `roundR_kept_without_bird`.
    """
    files = sorted((base / "output" / "data").glob("pseudo_labels_round*.csv"))
    if not files:
        return {}
    truth_dir = workdir / f"data-seed{seed}" / f"unlabelled-labels-{duration:g}s"
    # The same audio again (same seed), with labels per job window; made again when the unlabelled set's size changes.
    demo.made_once(
        truth_dir,
        demo.SET_SIZES["unlabelled"],
        lambda path: demo.unlabelled_soundscapes(path, seed, labelled=True, window=duration),
    )
    truth = read_labels_file(truth_dir)  # the job's own reader of soundscape_labels.csv
    present = {(row.filename, row.start): set(row.labels) for row in truth.itertuples()}
    figures = {}
    for path in files:
        name = path.stem.removeprefix("pseudo_labels_")
        kept = pd.read_csv(path)
        classes = list(kept.columns[4:])  # filename, start, end, confidence, then one column per class
        labels = [present.get((row.filename, float(row.start))) for row in kept.itertuples()]
        matched = np.array([found is not None for found in labels], dtype=bool)
        if not matched.all():  # windows cut otherwise than the answer key's: score only the ones it covers
            figures[f"{name}_unmatched_windows"] = str((~matched).sum())
        kept, labels = kept[matched], [found for found in labels if found is not None]
        targets = np.array([[label in found for label in classes] for found in labels])
        scores = kept[classes].to_numpy()
        top = targets[np.arange(len(kept)), scores.argmax(axis=1)]
        figures[f"{name}_pseudo_auc"] = f"{macro_roc_auc(targets, scores):.4f}"
        figures[f"{name}_pseudo_top1"] = f"{top.mean():.3f}"
        figures[f"{name}_kept_without_bird"] = f"{(targets.sum(axis=1) == 0).mean():.3f}"
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "soundscape_experiment")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="data and training seeds")
    parser.add_argument("--backbone", default="test_efficientnet")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--epochs", type=int, default=demo.FOCAL_HYPERPARAMETERS["epochs"])
    parser.add_argument("--pseudo-epochs", type=int, default=demo.ROUNDS_HYPERPARAMETERS["pseudo_epochs"])
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE", help="more hyperparameters")
    parser.add_argument("--only", choices=("rounds0", "rounds0_long", "rounds2"), action="append")
    args = parser.parse_args(argv)

    print(f"backbone={args.backbone}\nsample_rate={args.sample_rate}", flush=True)
    print(f"epochs={args.epochs}\npseudo_epochs={args.pseudo_epochs}", flush=True)
    results: dict[str, list[float]] = {}
    for seed in args.seeds:
        for name, auc in run_seed(args, seed).items():
            results.setdefault(name, []).append(auc)
    for name, values in results.items():
        print(f"mean_window_auc_{name}={sum(values) / len(values):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
