"""The model-quality benchmark: does the recipe learn real recordings, and does it beat a simple baseline?

    python launch/quality_bench.py --data ../shared/data/real_birds --workdir /tmp/quality \
        [--preset recipe] [--config NAME KEY=VALUE ...]... [--hp KEY=VALUE ...] [--train-windows 12] [--seeds 0 1 2]
        [--device auto|cpu|cuda]

The dataset (BirdCLEF layout) is decoded once into a waveform cache (`code/prepare.py`'s, kept in
`--workdir`, reused by later runs) and split 70/30 by recording: rows sorted by filename,
`train_test_split(test_size=0.3, stratify=primary_label, random_state=20251126)`. Each named
configuration trains through the real entrypoint (the sagemaker-training toolkit on a temporary
/opt/ml, as `launch/local_job.py`) on the 70 %, with the job's own validation split inside it; then
`birdsed.predict`'s windowed inference scores every recording (max over its 5 s windows) and macro
ROC-AUC is taken over the 30 % (`heldout_auc`) and over the training recordings (`train_auc`, their
first `--train-windows` windows). The log-mel-statistics + logistic-regression baseline (each mel
band's mean and std over a whole recording, 64 mels) is fitted on the training recordings and scored
on the held-out ones (`baseline_auc`). One line per configuration:

    config=NAME heldout_auc=X heldout_top1=X train_auc=X train_heldout_gap=X baseline_auc=X
        baseline_top1=X model_epoch=N model_val_auc=X job_baseline_val_auc=X steps=N minutes=X cpu_minutes=X

`model_epoch` and `model_val_auc` are the delivered epoch's (by the job's `select_epoch` rule: on real_birds'
16 validation recordings, the last epoch) and its score on the job's own validation recordings.

A job with `ema_decay` also gets `last_raw_heldout_auc` and `last_ema_heldout_auc`: its last checkpoint's raw
and averaged weights, scored the same way (a paired comparison within one run). `minutes` is the job's wall
time, `cpu_minutes` the CPU time of the job and its workers (on a shared machine the wall time depends on the
load; the CPU time much less). See docs/recipe.md for the figures.

One training seed says little on a small dataset: on real_birds the same configuration scored 0.762 and 0.834
held-out with `seed=0` and `seed=1`. `--seeds S ...` trains every configuration once per seed (as
`NAME_seedS`, hyperparameter `seed=S`), prints each run's line, then one line per configuration:

    config=NAME seeds=S,... heldout_auc_mean=X heldout_auc_min=X heldout_auc_max=X heldout_top1_mean=X
        train_auc_mean=X train_heldout_gap_mean=X baseline_auc=X minutes_mean=X cpu_minutes_mean=X
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from birdsed import predict, quality
from birdsed.data import cache, metadata
from birdsed.errors import DataError
from birdsed.export import window_samples
from birdsed.training import checkpoint
from birdsed_launch import local_job

SAMPLE_RATE = 32000
# Item 2 of issue 18: what a user sets to train from scratch; everything else is the job's default.
RECIPE_EPOCHS = 10
PRESETS = {
    "recipe": {
        "b0": {"backbone": "efficientnet_b0", "pretrained": "false"},
        "b0_augment_off": {"backbone": "efficientnet_b0", "pretrained": "false", "augment": "off"},
        "mnv3": {"backbone": "mobilenetv3_large_100", "pretrained": "false"},
        "mnv3_augment_off": {"backbone": "mobilenetv3_large_100", "pretrained": "false", "augment": "off"},
    },
}


@dataclass
class Split:
    train: pd.DataFrame
    heldout: pd.DataFrame
    labels: list[str]
    cache_root: Path
    channel: Path  # the train channel: a view of the cache with the training rows only
    train_waveforms: list[np.ndarray] = field(default_factory=list)
    heldout_waveforms: list[np.ndarray] = field(default_factory=list)

    def truth(self, rows: pd.DataFrame) -> np.ndarray:
        return quality.primary_truth(list(rows["primary_label"]), self.labels)


def prepare_split(data: Path, workdir: Path, sample_rate: int) -> Split:
    """Decode once into `workdir/cache-<rate>` (resumed when present), split, and write the train channel."""
    cache_root = workdir / f"cache-{sample_rate}"
    if not (cache.is_cache(cache_root) and cache.read_index(cache_root).complete):
        print(f"Decoding {data} into {cache_root} (once) ...", flush=True)
        cache.prepare_cache(data, cache_root, sample_rate, workers=2, progress=False)
    index = cache.read_index(cache_root)
    frame = pd.read_csv(data / metadata.METADATA_FILE, dtype=str, keep_default_na=False)
    unreadable = ~frame["filename"].isin(list(index.files))
    if unreadable.any():
        print(
            f"warning: {int(unreadable.sum())} unreadable recording(s) left out: {list(frame['filename'][unreadable])}"
        )
    train, heldout = quality.split_recordings(frame[~unreadable])
    split = Split(
        train=train,
        heldout=heldout,
        labels=sorted(frame["primary_label"].unique()),
        cache_root=cache_root,
        channel=quality.write_cache_view(cache_root, train, workdir / "train_channel"),
    )
    split.train_waveforms = [quality.load_waveform(cache_root, name) for name in train["filename"]]
    split.heldout_waveforms = [quality.load_waveform(cache_root, name) for name in heldout["filename"]]
    return split


def baseline(split: Split, sample_rate: int) -> dict[str, float]:
    scores = quality.baseline_scores(
        split.train_waveforms,
        [split.labels.index(label) for label in split.train["primary_label"]],
        split.heldout_waveforms,
        len(split.labels),
        sample_rate,
    )
    truth = split.truth(split.heldout)
    return {"baseline_auc": quality.auc(truth, scores), "baseline_top1": quality.top1_accuracy(truth, scores)}


def train(name: str, hyperparameters: dict[str, str], split: Split, workdir: Path) -> dict[str, object]:
    """One job through the toolkit on `workdir/jobs/<name>`; its wall time, CPU time and outputs."""
    base = workdir / "jobs" / name
    local_job.layout(base, {"train": split.channel}, hyperparameters, fresh=True)
    log = base.parent / f"{name}.log"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        completed = local_job.run_toolkit(base, stdout=handle, stderr=subprocess.STDOUT)
    minutes = (time.monotonic() - started) / 60
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_minutes = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / 60
    if completed.returncode != 0:
        failure = base / "output" / "failure"
        reason = failure.read_text(encoding="utf-8")[:500] if failure.exists() else f"see {log}"
        raise SystemExit(f"error: config {name} failed (exit {completed.returncode}): {reason}")
    metrics = json.loads((base / "output" / "data" / "metrics.json").read_text(encoding="utf-8"))
    return {"base": base, "minutes": minutes, "cpu_minutes": cpu_minutes, "metrics": metrics}


def evaluate(job: dict[str, object], split: Split, train_windows: int, device: torch.device) -> dict[str, float]:
    """Held-out and training AUC (and their gap) of a finished job's model, per recording (max over windows)."""
    loaded = predict.load_model(Path(job["base"]) / "model", device)
    if loaded.labels != split.labels:
        raise SystemExit(f"error: the model's labels differ from the dataset's: {loaded.labels}")
    predictor = predict.create_predictor(loaded, batch_size=32, amp=False)
    window = window_samples(loaded.cfg)
    heldout = quality.model_scores(predictor, split.heldout_waveforms, window)
    training = quality.model_scores(predictor, split.train_waveforms, window, max_windows=train_windows)
    heldout_truth, train_truth = split.truth(split.heldout), split.truth(split.train)
    scores = {
        "heldout_auc": quality.auc(heldout_truth, heldout),
        "heldout_top1": quality.top1_accuracy(heldout_truth, heldout),
        "train_auc": quality.auc(train_truth, training),
    }
    scores["train_heldout_gap"] = scores["train_auc"] - scores["heldout_auc"]
    return {**scores, **last_epoch_pair(Path(job["base"]), loaded, split)}


def last_epoch_pair(base: Path, loaded: predict.LoadedModel, split: Split) -> dict[str, float]:
    """With `ema_decay`: held-out AUC of the last epoch's raw and averaged weights, a paired comparison (one run)."""
    newest = checkpoint.list_checkpoints(base / "checkpoints")
    state = torch.load(newest[-1], map_location="cpu", weights_only=True) if newest else {}
    if state.get("ema") is None:
        return {}
    pair = {}
    for key in ("model", "ema"):
        loaded.model.load_state_dict(state[key])
        predictor = predict.create_predictor(loaded, batch_size=32, amp=False)
        scores = quality.model_scores(predictor, split.heldout_waveforms, window_samples(loaded.cfg))
        pair[f"last_{'raw' if key == 'model' else 'ema'}_heldout_auc"] = quality.auc(split.truth(split.heldout), scores)
    return pair


def summary_line(name: str, job: dict[str, object], scores: dict[str, float], reference: dict[str, float]) -> str:
    metrics = job["metrics"]
    delivered = metrics.get("best") or {}  # metrics.json's record of the epoch that became the model
    values = {
        "config": name,
        **scores,
        **reference,
        "model_epoch": delivered.get("epoch"),
        "model_val_auc": delivered.get("val_auc"),
        "job_baseline_val_auc": (metrics.get("baseline") or {}).get("val_auc"),
        "steps": metrics.get("steps"),
        "minutes": job["minutes"],
        "cpu_minutes": job["cpu_minutes"],
    }
    return key_values(values)


def with_seeds(configs: dict[str, dict[str, str]], seeds: list[int] | None) -> dict[str, list[tuple[str, dict]]]:
    """Each configuration's runs: itself, or one per training seed (`NAME_seedS` with `seed=S`)."""
    if not seeds:
        return {name: [(name, hyperparameters)] for name, hyperparameters in configs.items()}
    return {
        name: [(f"{name}_seed{seed}", {**hyperparameters, "seed": str(seed)}) for seed in seeds]
        for name, hyperparameters in configs.items()
    }


SEED_MEANS = ("heldout_top1", "train_auc", "train_heldout_gap")


def seeds_line(name: str, seeds: list[int], runs: list[dict[str, float]], reference: dict[str, float]) -> str:
    """The mean (and range of heldout_auc) of one configuration's runs over its training seeds."""
    heldout = [run["heldout_auc"] for run in runs]
    values: dict[str, object] = {
        "config": name,
        "seeds": ",".join(str(seed) for seed in seeds),
        "heldout_auc_mean": float(np.mean(heldout)),
        "heldout_auc_min": min(heldout),
        "heldout_auc_max": max(heldout),
        **{f"{key}_mean": float(np.mean([run[key] for run in runs])) for key in SEED_MEANS},
        **reference,
        "minutes_mean": float(np.mean([run["minutes"] for run in runs])),
        "cpu_minutes_mean": float(np.mean([run["cpu_minutes"] for run in runs])),
    }
    return key_values(values)


def key_values(values: dict[str, object]) -> str:
    """One `key=value` line (floats to 4 decimals, missing values as nan)."""
    return " ".join(f"{key}={format_value(value)}" for key, value in values.items())


def format_value(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return "nan" if value is None else str(value)


def parse_configs(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """Named configurations: a preset's and `--config NAME KEY=VALUE ...`'s; `--hp` fills in what they leave."""
    configs: dict[str, dict[str, str]] = {}
    for name, hyperparameters in PRESETS.get(args.preset, {}).items():
        configs[name] = {**hyperparameters, "epochs": str(args.epochs)}
    for name, *items in args.config or []:
        configs[name] = local_job.parse_hyperparameters(items)
    common = local_job.parse_hyperparameters(args.hp)
    return {name: {**common, **hyperparameters} for name, hyperparameters in configs.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="BirdCLEF-style dataset (e.g. real_birds)")
    parser.add_argument("--workdir", type=Path, required=True, help="cache, channel, jobs and logs go here")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="named set of configurations")
    parser.add_argument("--epochs", type=int, default=RECIPE_EPOCHS, help="epochs of the preset's configurations")
    parser.add_argument(
        "--config", nargs="+", action="append", metavar="NAME [KEY=VALUE]", help="a named configuration (repeatable)"
    )
    parser.add_argument(
        "--hp", action="append", default=[], metavar="KEY=VALUE", help="for every configuration that does not set KEY"
    )
    parser.add_argument(
        "--train-windows", type=int, default=12, help="windows per training recording for train_auc (0: all)"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the held-out predictions run (fp32); the jobs pick their own device (auto: CUDA when present)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the benchmark's own baseline fit")
    parser.add_argument(
        "--seeds", type=int, nargs="+", metavar="S", help="train every configuration once per training seed"
    )
    args = parser.parse_args(argv)
    if not args.preset and not args.config:
        parser.error("name at least one configuration (--preset or --config)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = parse_configs(args)
    args.workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    try:
        split = prepare_split(args.data, args.workdir, SAMPLE_RATE)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    sizes = f"train_recordings={len(split.train)} heldout_recordings={len(split.heldout)} classes={len(split.labels)}"
    print(f"split {sizes}", flush=True)
    reference = {} if args.no_baseline else baseline(split, SAMPLE_RATE)
    if reference:
        print(" ".join(f"{key}={value:.4f}" for key, value in reference.items()), flush=True)
    for name, runs in with_seeds(configs, args.seeds).items():
        results = []
        for run_name, hyperparameters in runs:
            print(f"training config={run_name} {' '.join(f'{k}={v}' for k, v in hyperparameters.items())}", flush=True)
            job = train(run_name, hyperparameters, split, args.workdir)
            scores = evaluate(job, split, args.train_windows, device)
            print(summary_line(run_name, job, scores, reference), flush=True)
            results.append({**scores, "minutes": job["minutes"], "cpu_minutes": job["cpu_minutes"]})
        if args.seeds:
            print(seeds_line(name, args.seeds, results, reference), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
