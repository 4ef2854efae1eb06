"""freeze_backbone_epochs and backbone_lr_scale: the head alone first, then everything; exact across a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from birdsed.config import from_hyperparameters
from birdsed.errors import ConfigError
from birdsed.models import create_model
from birdsed.training import finetune, resume_config
from birdsed.training.checkpoint import list_checkpoints
from birdsed.training.loop import Progress, Trainer, finish_step, forward_backward
from birdsed.training.signals import NeverStop
from birdsed_launch import local_job
from conftest import FAST_HYPERPARAMETERS, REPO_ROOT
from cpu_trainer import cpu_trainer
from hub_server import COMMIT, serve_weights, timm_weights
from tiny_data import write_wav_dataset

CLASSES = 2
RATE = FAST_HYPERPARAMETERS["sample_rate"]


def small_config(**overrides):
    return from_hyperparameters({**FAST_HYPERPARAMETERS, "duration": 1, "epochs": 3, **overrides})


def make_trainer(cfg) -> Trainer:
    torch.manual_seed(0)
    return cpu_trainer(create_model(cfg, CLASSES), cfg, CLASSES, batches_per_epoch=2)


def train_steps(trainer: Trainer, progress: Progress, steps: int) -> None:
    trainer.model.train()
    for _ in range(steps):
        batch = {
            "waveform": 0.1 * torch.randn(2, RATE),
            "target": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
            "weight": torch.ones(2),
        }
        finish_step(trainer, progress, [forward_backward(trainer, batch)], NeverStop())


def test_the_frozen_epochs_train_the_head_alone_then_everything_at_the_backbones_scale():
    cfg = small_config(freeze_backbone_epochs=1, backbone_lr_scale=0.1)
    trainer = make_trainer(cfg)
    model, progress = trainer.model, Progress()
    backbone = {name: tensor.clone() for name, tensor in model.backbone.state_dict().items()}
    head = model.head.classifier.weight.detach().clone()

    finetune.set_phase(trainer, cfg, epoch=0)
    train_steps(trainer, progress, 2)
    after = model.backbone.state_dict()
    assert all(torch.equal(backbone[name], after[name]) for name in backbone)  # batch-norm statistics too
    assert not torch.equal(head, model.head.classifier.weight)
    frozen = [p for group in trainer.optimizer.param_groups[2:] for p in group["params"]]
    assert frozen and not any(p in trainer.optimizer.state for p in frozen)  # AdamW never touched them

    finetune.set_phase(trainer, cfg, epoch=1)
    assert all(p.requires_grad for p in model.backbone.parameters()) and model.backbone.training
    train_steps(trainer, progress, 1)
    assert not torch.equal(backbone["conv_stem.weight"], model.backbone.conv_stem.weight)
    assert all(p in trainer.optimizer.state for p in frozen)
    assert trainer.optimizer.state[frozen[0]]["step"] == 1  # fresh moments from the switch on
    head_lr, backbone_lr = (trainer.optimizer.param_groups[i]["lr"] for i in (1, 3))
    assert backbone_lr == pytest.approx(0.1 * head_lr)


def test_freeze_backbone_epochs_with_a_permanently_frozen_backbone_is_refused():
    with pytest.raises(ConfigError, match="'freeze_backbone_epochs' has no effect with freeze_backbone=true"):
        small_config(freeze_backbone=True, freeze_backbone_epochs=2)


def two_group_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    """The same moments laid out as birdsed 0.1.0 saved them: matrices, then 1-D parameters, in model order."""
    index = {id(p): i for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    state = optimizer.state_dict()["state"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    order = [p for p in trainable if p.ndim > 1] + [p for p in trainable if p.ndim <= 1]
    groups = [len([p for p in trainable if p.ndim > 1]), len([p for p in trainable if p.ndim <= 1])]
    old_state = {old: state[index[id(p)]] for old, p in enumerate(order) if index[id(p)] in state}
    base = {"lr": 3e-3, "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False, "initial_lr": 3e-3}
    return {
        "state": old_state,
        "param_groups": [
            {**base, "weight_decay": 0.01, "params": list(range(groups[0]))},
            {**base, "weight_decay": 0.0, "params": list(range(groups[0], groups[0] + groups[1]))},
        ],
    }


def test_an_older_checkpoints_optimizer_state_is_migrated_parameter_by_parameter():
    cfg = small_config()
    trainer = make_trainer(cfg)
    train_steps(trainer, Progress(), 2)
    old = two_group_state(trainer.optimizer, trainer.model)

    fresh = make_trainer(cfg)
    fresh.model.load_state_dict(trainer.model.state_dict())
    resume_config.load_optimizer_state(fresh.optimizer, fresh.scheduler, old, fresh.model, cfg.optim, step=2)
    names = dict(trainer.model.named_parameters())
    for name, parameter in fresh.model.named_parameters():
        torch.testing.assert_close(fresh.optimizer.state[parameter], trainer.optimizer.state[names[name]])
    assert [group["lr"] for group in fresh.optimizer.param_groups] == [
        group["lr"] for group in trainer.optimizer.param_groups
    ]

    other = make_trainer(small_config(head="chrononet"))
    with pytest.raises(ConfigError, match="written for another model"):
        resume_config.load_optimizer_state(other.optimizer, other.scheduler, old, other.model, cfg.optim, step=2)


# ---- end to end: the Hub's tensors, the head alone, unfrozen; kill -9 in the first unfrozen epoch, restart ----

REPO = "timm/test_efficientnet.r160_in1k"  # timm's Hub repository of test_efficientnet's default weights
FINETUNE_JOB = {
    **FAST_HYPERPARAMETERS,
    "epochs": 2,
    "batch_size": 2,
    "pretrained": "true",
    "freeze_backbone_epochs": 1,
    "backbone_lr_scale": 0.5,
    "val_fraction": 0.25,
    "augment": "off",
    "seed": 3,
}
STEPS_PER_EPOCH = 3  # 6 training recordings in batches of 2


def run_killed_job(base: Path, data: Path, env: dict[str, str], *prefix: str) -> subprocess.CompletedProcess:
    """`code/train.py` (or the fault runner) on a SageMaker tree at `base`, as the toolkit would run it."""
    local_job.layout(base, {"train": data}, FINETUNE_JOB)
    arguments = [f"--{key}={value}" for key, value in FINETUNE_JOB.items()]
    full_env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), **env}
    full_env.pop("SM_HPS", None)
    command = [sys.executable, *(prefix or [str(REPO_ROOT / "code" / "train.py")]), *arguments]
    return subprocess.run(command, env=full_env, capture_output=True, text=True, check=False, timeout=600)


def checkpoints(base: Path) -> list[dict]:
    return [torch.load(path, weights_only=True) for path in list_checkpoints(base / "checkpoints")]


def backbone_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name.removeprefix("backbone."): t for name, t in state.items() if name.startswith("backbone.")}


@pytest.mark.slow
def test_a_job_starts_from_the_hubs_tensors_fine_tunes_and_resumes_exactly_across_the_unfreeze(tmp_path):
    data = write_wav_dataset(tmp_path / "data")
    served = timm_weights("test_efficientnet", seed=5)
    summary = f"hub:{REPO}@{COMMIT}"
    with serve_weights(REPO, served) as hub:
        env = {"HF_ENDPOINT": hub.url}
        # Through the real toolkit, uninterrupted.
        base = tmp_path / "uninterrupted"
        local_job.layout(base, {"train": data}, FINETUNE_JOB)
        reference = local_job.run_toolkit(base, env, capture_output=True, text=True)
        assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
        assert next(line for line in reference.stdout.splitlines() if "weights=" in line).endswith(f"weights={summary}")
        assert "epoch=1: backbone frozen: the head trains alone" in reference.stdout
        assert "epoch=2: backbone unfrozen" in reference.stdout

        killed_base = tmp_path / "killed"
        runner = str(Path(__file__).with_name("fault_runner.py"))
        killed = run_killed_job(killed_base, data, env, runner, "--kill-after-step", str(STEPS_PER_EPOCH + 1))
        assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
        assert checkpoints(killed_base)[-1]["progress"]["epoch"] == 1  # the frozen epoch's checkpoint
        restarted = run_killed_job(killed_base, data, env)
        assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
        assert "Resumed at epoch=2 batch=0" in restarted.stdout
        assert len(hub.downloads()) == 2  # once per job: the restart uses the copy kept in the checkpoint dir

    # The frozen epoch left the backbone exactly as served (batch-norm statistics too); the head learnt.
    frozen, unfrozen = checkpoints(base)
    for name, tensor in backbone_of(frozen["model"]).items():
        torch.testing.assert_close(tensor, served[name], rtol=0, atol=0, msg=name)
    assert not torch.equal(frozen["model"]["backbone.conv_stem.weight"], unfrozen["model"]["backbone.conv_stem.weight"])
    config = json.loads((base / "model" / "config.json").read_text())
    metrics = json.loads((base / "output" / "data" / "metrics.json").read_text())
    assert config["weights"] == metrics["weights"] == frozen["weights"] == summary
    assert (base / "checkpoints" / "hub-weights" / REPO / COMMIT / "model.safetensors").is_file()

    # Killed one update into the unfrozen epoch and restarted: the uninterrupted run's weights.
    mine = checkpoints(killed_base)[-1]
    assert mine["progress"]["step"] == unfrozen["progress"]["step"] == 2 * STEPS_PER_EPOCH
    for name, tensor in unfrozen["model"].items():
        torch.testing.assert_close(mine["model"][name], tensor, atol=1e-5, rtol=0, msg=name)
    assert mine["weights"] == summary


def test_freezing_for_every_epoch_is_refused():
    with pytest.raises(ConfigError, match=r"'freeze_backbone_epochs' \(3\) must be less than epochs \(3\)"):
        small_config(freeze_backbone_epochs=3)
