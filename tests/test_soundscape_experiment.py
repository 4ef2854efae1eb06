"""launch/soundscape_experiment.py: the jobs it trains get the hyperparameters asked for (--hp last)."""

from __future__ import annotations

import importlib.util
import json

from birdsed_launch import demo
from conftest import REPO_ROOT


def load_script():
    spec = importlib.util.spec_from_file_location(
        "soundscape_experiment", REPO_ROOT / "launch" / "soundscape_experiment.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hp_overrides_reach_every_job_even_the_round_settings(tmp_path, monkeypatch, capsys):
    experiment = load_script()
    trained = {}

    def fake_train(base, channels, hyperparameters):
        trained[base.name] = hyperparameters
        (base / "output" / "data").mkdir(parents=True)
        (base / "output" / "data" / "metrics.json").write_text(json.dumps({"best": {"val_soundscape_auc": 0.5}}))
        return base / "model", "", 0.1

    monkeypatch.setattr(experiment, "train", fake_train)
    monkeypatch.setattr(experiment, "score", lambda *args: {"val_soundscape_auc": 0.6, "val_soundscape_cmap": 0.4})
    monkeypatch.setattr(demo, "make_data", lambda workdir, seed, sets: {name: tmp_path / name for name in sets})
    arguments = ["--workdir", str(tmp_path), "--seeds", "0", "--pseudo-epochs", "2"]
    assert experiment.main([*arguments, "--hp", "pseudo_lr_scale=0.1", "--hp", "mix_p=0"]) == 0

    assert set(trained) == {"rounds0", "rounds0_long", "rounds2"}
    assert trained["rounds2"]["pseudo_lr_scale"] == "0.1"  # not the demo's 0.3 (--hp values stay strings)
    assert trained["rounds2"]["pseudo_epochs"] == 2 and trained["rounds2"]["pseudo_rounds"] == 2
    assert all(job["mix_p"] == "0" for job in trained.values())
    assert trained["rounds0_long"]["epochs"] == demo.FOCAL_HYPERPARAMETERS["epochs"] + 4
    assert "mean_window_auc_rounds2=0.6000" in capsys.readouterr().out
