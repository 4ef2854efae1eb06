"""Resuming with changed settings: the front end and the model are refused by name, the rest applied and logged.

Also the end of a finished run whose best_model.pt is damaged: the model comes from a checkpoint.
"""

from __future__ import annotations

import logging
import re
import shutil

import pytest
import torch

from birdsed import export
from birdsed.commands import train as train_command
from birdsed.config import from_hyperparameters
from birdsed.errors import ConfigError
from birdsed.training import resume_config
from birdsed.training.checkpoint import atomic_save, list_checkpoints
from conftest import FAST_HYPERPARAMETERS
from tiny_data import write_wav_dataset

pytestmark = pytest.mark.slow

FIRST = {**FAST_HYPERPARAMETERS, "epochs": 1, "batch_size": 4, "augment": "off", "seed": 3, "lr": 3e-3}


@pytest.fixture(scope="module", autouse=True)
def no_export():
    """torch.export of the model takes most of a tiny job's time and is tested elsewhere (test_export.py)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export, "export_model_dir", lambda *args: {"status": "skipped in this test"})
        yield


@pytest.fixture(autouse=True)
def restore_logging():
    """train_command.main configures the root logger as a job would; give pytest its handlers back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch run on 8 short recordings: its /opt/ml tree (checkpoints, best_model.pt, model)."""
    base = tmp_path_factory.mktemp("first")
    (base / "input" / "data").mkdir(parents=True)
    (base / "input" / "data" / "train").symlink_to(write_wav_dataset(tmp_path_factory.mktemp("data")))
    logging.getLogger().handlers[:] = []
    assert train_command.main({"SAGEMAKER_BASE_DIR": str(base)}, arguments(FIRST)) == 0
    return base


def arguments(hyperparameters: dict) -> list[str]:
    return [f"--{key}={value}" for key, value in hyperparameters.items()]


def copy_of(trained, tmp_path):
    base = tmp_path / "job"
    shutil.copytree(trained, base, symlinks=True)
    shutil.rmtree(base / "model")
    (base / "output" / "success").unlink(missing_ok=True)
    return base


def test_changing_the_front_end_on_resume_is_refused_naming_each_setting(trained, tmp_path):
    base = copy_of(trained, tmp_path)
    changed = {**FIRST, "epochs": 2, "n_fft": 512, "fmax": 7000}
    assert train_command.main({"SAGEMAKER_BASE_DIR": str(base)}, arguments(changed)) == train_command.EXIT_USER_ERROR
    failure = (base / "output" / "failure").read_text()
    assert "n_fft=1024 there, n_fft=512 in this job (the spectrogram front end)" in failure
    assert "fmax=8000 there, fmax=7000 in this job" in failure
    assert "Traceback" not in failure and len(failure.strip().splitlines()) == 1
    assert not (base / "model" / "model.pt").exists()


def test_a_new_lr_and_epochs_take_effect_on_resume_and_are_logged(trained, tmp_path, capsys):
    base = copy_of(trained, tmp_path)
    resumed = {**FIRST, "epochs": 2, "lr": 1e-3, "weight_decay": 0.05, "mix_p": 0.9}
    assert train_command.main({"SAGEMAKER_BASE_DIR": str(base)}, arguments(resumed)) == 0
    output = capsys.readouterr().out
    for line in ("resume: epochs 1 -> 2", "resume: lr 0.003 -> 0.001", "resume: weight_decay 0.01 -> 0.05"):
        assert line in output
    assert "Resumed at epoch=2 batch=0" in output
    # The cosine schedule ends at min_lr_ratio (0.01) x lr: the new lr's, not the checkpoint's 3e-5.
    assert re.search(r"^epoch=2 .* lr=1\.000000e-05$", output, re.MULTILINE), output[-2000:]
    state = torch.load(sorted((base / "checkpoints").glob("checkpoint-*.pt"))[-1], weights_only=True)
    decay = {group["name"]: group["weight_decay"] for group in state["optimizer"]["param_groups"]}
    assert decay == {"head_no_decay": 0.0, "head_decay": 0.05, "backbone_no_decay": 0.0, "backbone_decay": 0.05}
    assert state["config"]["optim"]["lr"] == 1e-3


def test_turning_on_ema_decay_on_resume_starts_the_average_from_the_checkpoints_weights(trained, tmp_path, capsys):
    base = copy_of(trained, tmp_path)
    first = torch.load(list_checkpoints(base / "checkpoints")[-1], weights_only=True)
    assert first["ema"] is None  # ema_decay was 0
    del first["ema"]  # as a checkpoint of a version before the average has it: no entry at all
    atomic_save(first, list_checkpoints(base / "checkpoints")[-1])
    resumed = {**FIRST, "epochs": 2, "ema_decay": 0.9}
    assert train_command.main({"SAGEMAKER_BASE_DIR": str(base)}, arguments(resumed)) == 0
    output = capsys.readouterr().out
    assert "resume: the checkpoint holds no weight average (ema_decay was 0); it starts from its weights" in output
    state = torch.load(list_checkpoints(base / "checkpoints")[-1], weights_only=True)
    assert state["ema"] is not None and state["ema"].keys() == state["model"].keys()


def test_a_damaged_best_model_at_the_end_falls_back_to_the_checkpoint(trained, tmp_path, capsys):
    base = copy_of(trained, tmp_path)
    best = base / "checkpoints" / "best_model.pt"
    best.write_bytes(best.read_bytes()[:5000])
    # select_epoch=best reads best_model.pt (this small validation set's auto rule, last, does not: below).
    assert train_command.main({"SAGEMAKER_BASE_DIR": str(base)}, arguments({**FIRST, "select_epoch": "best"})) == 0
    output = capsys.readouterr().out
    assert "best_model.pt is unreadable" in output and "moved aside to best_model.pt.unreadable" in output
    assert "The model is written with the weights of checkpoint-" in output and "(epoch 1, the best epoch)" in output
    newest = sorted((base / "checkpoints").glob("checkpoint-*.pt"))[-1]
    expected = torch.load(newest, weights_only=True)["model"]
    written = torch.load(base / "model" / "model.pt", weights_only=True)
    for name, tensor in expected.items():
        torch.testing.assert_close(written[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("change", "fixed"),
    [
        ({"sample_rate": 22050, "fmax": 8000}, "sample_rate"),
        ({"duration": 4}, "duration"),
        ({"n_mels": 64}, "n_mels"),
        ({"hop_length": 128}, "hop_length"),
        ({"fmin": 20}, "fmin"),
        ({"top_db": 60}, "top_db"),
        ({"backbone": "efficientnet_b0"}, "backbone"),
        ({"head": "chrononet"}, "head"),
        ({"gru_hidden": 64}, "gru_hidden"),
        ({"freeze_backbone": "true"}, "freeze_backbone"),
        ({"seed": 4}, "seed"),
    ],
)
def test_every_setting_that_shapes_the_model_or_its_input_is_fixed(tmp_path, change, fixed):
    saved = from_hyperparameters(FIRST).to_dict()
    with pytest.raises(ConfigError, match=rf"{fixed}=\S+ there, {fixed}=\S+ in this job"):
        resume_config.check_settings(saved, from_hyperparameters({**FIRST, **change}), tmp_path, automatic_split=True)


def test_the_split_settings_may_change_with_a_validation_channel(tmp_path, caplog):
    saved = from_hyperparameters(FIRST).to_dict()
    caplog.set_level(logging.INFO)
    resume_config.check_settings(saved, from_hyperparameters({**FIRST, "seed": 4}), tmp_path, automatic_split=False)
    assert "resume: seed 3 -> 4" in caplog.text


def test_a_checkpoint_of_an_earlier_version_with_best_score_in_its_progress_resumes(trained, tmp_path, capsys):
    """Progress no longer carries the round's best score (the history gives it); old checkpoints still load."""
    base = copy_of(trained, tmp_path)
    newest = list_checkpoints(base / "checkpoints")[-1]
    state = torch.load(newest, weights_only=True)
    state["progress"]["best_score"] = 0.5
    atomic_save(state, newest)
    assert train_command.main({"SAGEMAKER_BASE_DIR": str(base)}, arguments({**FIRST, "epochs": 2})) == 0
    assert "Resumed at epoch=2 batch=0" in capsys.readouterr().out
    assert (base / "model" / "model.pt").is_file()


def test_the_last_epoch_rule_writes_the_last_weights_whatever_best_model_holds(trained, tmp_path, capsys):
    """select_epoch=last (auto on this small validation set) delivers the weights training ended with."""
    base = copy_of(trained, tmp_path)
    (base / "checkpoints" / "best_model.pt").write_bytes(b"not a model")
    assert train_command.main({"SAGEMAKER_BASE_DIR": str(base)}, arguments(FIRST)) == 0
    output = capsys.readouterr().out
    assert "select_epoch=last (auto: random scores move val_auc by" in output
    assert "unreadable" not in output and "last epoch=1, select_epoch=last" in output
    newest = sorted((base / "checkpoints").glob("checkpoint-*.pt"))[-1]
    expected = torch.load(newest, weights_only=True)["model"]
    written = torch.load(base / "model" / "model.pt", weights_only=True)
    for name, tensor in expected.items():
        torch.testing.assert_close(written[name], tensor, rtol=0, atol=0, msg=name)
