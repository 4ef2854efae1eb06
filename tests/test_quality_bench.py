"""launch/quality_bench.py --seeds: every configuration trains once per training seed, and a line per
configuration gives the mean and range over the seeds (one seed moved real_birds' held-out AUC by 0.07)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from birdsed.config import TINY_HYPERPARAMETERS, from_hyperparameters
from birdsed.models import create_model
from birdsed.predict import LoadedModel
from conftest import load_launch_script


def load_script():
    return load_launch_script("quality_bench")


def figures(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split())


def test_without_seeds_each_configuration_runs_once_as_configured():
    bench = load_script()
    runs = bench.with_seeds({"b0": {"backbone": "efficientnet_b0", "seed": "7"}}, None)
    assert runs == {"b0": [("b0", {"backbone": "efficientnet_b0", "seed": "7"})]}


def test_seeds_replace_the_configured_seed_and_name_each_run():
    bench = load_script()
    runs = bench.with_seeds({"b0": {"backbone": "efficientnet_b0", "seed": "7"}, "mnv3": {}}, [0, 2])
    assert runs == {
        "b0": [
            ("b0_seed0", {"backbone": "efficientnet_b0", "seed": "0"}),
            ("b0_seed2", {"backbone": "efficientnet_b0", "seed": "2"}),
        ],
        "mnv3": [("mnv3_seed0", {"seed": "0"}), ("mnv3_seed2", {"seed": "2"})],
    }


def test_the_seeds_line_averages_the_runs_by_hand():
    bench = load_script()
    runs = [
        {"heldout_auc": 0.762, "heldout_top1": 0.25, "train_auc": 0.90, "train_heldout_gap": 0.138, "minutes": 10.0,
         "cpu_minutes": 20.0},
        {"heldout_auc": 0.834, "heldout_top1": 0.15, "train_auc": 0.92, "train_heldout_gap": 0.086, "minutes": 12.0,
         "cpu_minutes": 22.0},
    ]  # fmt: skip
    line = figures(bench.seeds_line("b0", [0, 1], runs, {"baseline_auc": 0.9009}))
    assert line["config"] == "b0" and line["seeds"] == "0,1"
    assert float(line["heldout_auc_mean"]) == pytest.approx(0.798)
    assert (line["heldout_auc_min"], line["heldout_auc_max"]) == ("0.7620", "0.8340")
    assert float(line["heldout_top1_mean"]) == pytest.approx(0.2)
    assert float(line["train_auc_mean"]) == pytest.approx(0.91)
    assert float(line["train_heldout_gap_mean"]) == pytest.approx(0.112)
    assert line["baseline_auc"] == "0.9009"
    assert (float(line["minutes_mean"]), float(line["cpu_minutes_mean"])) == (11.0, 21.0)


def test_main_trains_each_seed_and_prints_every_run_and_the_mean(tmp_path, monkeypatch, capsys):
    bench = load_script()
    frame = pd.DataFrame({"primary_label": ["a", "b"], "filename": ["a/1.ogg", "b/1.ogg"]})
    split = SimpleNamespace(train=frame, heldout=frame, labels=["a", "b"])
    trained = []
    heldout = {"0": 0.7, "1": 0.8}
    devices = []

    def fake_train(name, hyperparameters, split, workdir):
        trained.append((name, hyperparameters["seed"], hyperparameters["backbone"]))
        metrics = {"best": {"val_auc": 0.6}, "baseline": {"val_auc": 0.5}, "steps": 16}
        return {
            "base": tmp_path / name,
            "minutes": 1.0,
            "cpu_minutes": 2.0,
            "metrics": metrics,
            "seed": hyperparameters["seed"],
        }

    def fake_evaluate(job, split, train_windows, device):
        devices.append(device.type)
        auc = heldout[job["seed"]]
        return {"heldout_auc": auc, "heldout_top1": 0.5, "train_auc": 0.9, "train_heldout_gap": 0.9 - auc}

    monkeypatch.setattr(bench, "prepare_split", lambda data, workdir, rate: split)
    monkeypatch.setattr(bench, "baseline", lambda split, rate: {"baseline_auc": 0.9})
    monkeypatch.setattr(bench, "train", fake_train)
    monkeypatch.setattr(bench, "evaluate", fake_evaluate)
    arguments = [
        "--data",
        str(tmp_path),
        "--workdir",
        str(tmp_path / "w"),
        "--config",
        "b0",
        "backbone=efficientnet_b0",
    ]
    assert bench.main([*arguments, "--seeds", "0", "1", "--device", "cpu"]) == 0
    assert devices == ["cpu", "cpu"]

    assert trained == [("b0_seed0", "0", "efficientnet_b0"), ("b0_seed1", "1", "efficientnet_b0")]
    lines = [figures(line) for line in capsys.readouterr().out.splitlines() if line.startswith("config=")]
    assert [line["config"] for line in lines] == ["b0_seed0", "b0_seed1", "b0"]
    assert [line["heldout_auc"] for line in lines[:2]] == ["0.7000", "0.8000"]
    assert lines[2]["seeds"] == "0,1" and float(lines[2]["heldout_auc_mean"]) == pytest.approx(0.75)


def test_a_job_with_a_weight_average_scores_its_last_raw_and_averaged_weights(tmp_path):
    bench = load_script()
    cfg = from_hyperparameters({**TINY_HYPERPARAMETERS, "duration": 1})
    torch.manual_seed(0)
    model = create_model(cfg, 2).eval()
    raw = {name: value.clone() for name, value in model.state_dict().items()}
    averaged = create_model(cfg, 2).state_dict()  # other weights: other scores
    truth = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    waveforms = [np.random.default_rng(index).normal(size=32000).astype(np.float32) for index in range(4)]
    split = SimpleNamespace(heldout_waveforms=waveforms, truth=lambda rows: truth, heldout=None)
    loaded = LoadedModel(model=model, labels=["a", "b"], cfg=cfg)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"model": raw, "ema": averaged}, tmp_path / "checkpoints" / "checkpoint-00000010.pt")
    pair = bench.last_epoch_pair(tmp_path, loaded, split)
    assert set(pair) == {"last_raw_heldout_auc", "last_ema_heldout_auc"}
    assert all(0.0 <= value <= 1.0 for value in pair.values())

    torch.save({"model": raw, "ema": raw}, tmp_path / "checkpoints" / "checkpoint-00000020.pt")  # the newest
    same = bench.last_epoch_pair(tmp_path, loaded, split)
    assert same["last_raw_heldout_auc"] == same["last_ema_heldout_auc"] == pair["last_raw_heldout_auc"]

    torch.save({"model": raw, "ema": None}, tmp_path / "checkpoints" / "checkpoint-00000030.pt")
    assert bench.last_epoch_pair(tmp_path, loaded, split) == {}
