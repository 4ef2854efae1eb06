"""launch/soundscape_experiment.py: the jobs get the hyperparameters asked for (--hp last), and the kept
pseudo-labels are scored against the synthetic unlabelled set's answer key."""

from __future__ import annotations

import json
import subprocess

from birdsed_launch import demo, local_job
from conftest import load_launch_script

PSEUDO_LABELS = """filename,start,end,confidence,a,b
x.ogg,0,3,0.9,0.9,0.2
x.ogg,3,6,0.6,0.6,0.5
y.ogg,0,3,0.7,0.1,0.7
y.ogg,3,6,0.8,0.3,0.8
z.ogg,0,3,0.8,0.8,0.1
"""
ANSWER_KEY = "filename,start,end,labels\nx.ogg,0,3,a\nx.ogg,3,6,b\ny.ogg,0,3,\ny.ogg,3,6,b\n"


def write_answer_key(path, seed, labelled, window):
    assert labelled and window == 3.0
    path.mkdir(parents=True)
    (path / "soundscape_labels.csv").write_text(ANSWER_KEY)
    return path


def load_script():
    return load_launch_script("soundscape_experiment")


def test_hp_overrides_reach_every_job_even_the_round_settings(tmp_path, monkeypatch, capsys):
    experiment = load_script()
    trained = {}

    def fake_train(base, channels, hyperparameters):
        trained[base.name] = hyperparameters
        (base / "output" / "data").mkdir(parents=True)
        (base / "output" / "data" / "metrics.json").write_text(json.dumps({"best": {"val_soundscape_auc": 0.5}}))
        if hyperparameters.get("pseudo_rounds"):
            (base / "output" / "data" / "pseudo_labels_round1.csv").write_text(PSEUDO_LABELS)
        return base / "model", "", 0.1

    monkeypatch.setattr(experiment, "train", fake_train)
    monkeypatch.setattr(experiment, "score", lambda *args: {"val_soundscape_auc": 0.6, "val_soundscape_cmap": 0.4})
    monkeypatch.setattr(demo, "make_data", lambda workdir, seed, sets: {name: tmp_path / name for name in sets})
    monkeypatch.setattr(demo, "unlabelled_soundscapes", write_answer_key)
    arguments = ["--workdir", str(tmp_path), "--seeds", "0", "--pseudo-epochs", "2"]
    assert experiment.main([*arguments, "--hp", "pseudo_lr_scale=0.2", "--hp", "mix_p=0"]) == 0

    assert set(trained) == {"rounds0", "rounds0_long", "rounds2"}
    assert trained["rounds2"]["pseudo_lr_scale"] == "0.2"  # not the demo's 0.1 (--hp values stay strings)
    assert trained["rounds2"]["pseudo_epochs"] == 2 and trained["rounds2"]["pseudo_rounds"] == 2
    assert all(job["mix_p"] == "0" for job in trained.values())
    assert trained["rounds0_long"]["epochs"] == demo.FOCAL_HYPERPARAMETERS["epochs"] + 4
    output = capsys.readouterr().out
    assert "mean_window_auc_rounds2=0.6000" in output
    # The kept pseudo-labels against the answer key: class a (x0 yes; x3, y0, y3 no) AUC 1; class b (x3 0.5
    # and y3 0.8 yes; x0 0.2 and y0 0.7 no) AUC 3/4; top-1 right on x0 and y3; y0 holds no bird; z0 is not in the key.
    for line in ("round1_pseudo_auc=0.8750", "round1_pseudo_top1=0.500", "round1_kept_without_bird=0.250"):
        assert f"seed0_rounds2_{line}" in output
    assert "seed0_rounds2_round1_unmatched_windows=1" in output
    assert "seed0_rounds0_round1" not in output


def test_a_job_trains_afresh_when_the_experiment_runs_again(tmp_path, monkeypatch):
    experiment = load_script()
    base, channel = tmp_path / "seed0" / "rounds2", tmp_path / "train"
    channel.mkdir()
    (base / "checkpoints").mkdir(parents=True)
    (base / "checkpoints" / "checkpoint-epoch0023.pt").write_bytes(b"an earlier run's")
    seen = []

    def fake_toolkit(job_base, **options):
        seen.append(sorted(path.name for path in (job_base / "checkpoints").glob("*")))
        return subprocess.CompletedProcess([], 0, stdout="", stderr="")

    monkeypatch.setattr(local_job, "run_toolkit", fake_toolkit)
    experiment.train(base, {"train": channel}, {"epochs": 1})
    assert seen == [[]]  # the earlier checkpoint would have been resumed, not retrained
