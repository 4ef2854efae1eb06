"""Several processes on CPU (gloo) through the real toolkit: one host x 2, and two loopback "hosts" x 1."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from birdsed_launch import local_job
from conftest import FAST_HYPERPARAMETERS

pytestmark = pytest.mark.slow

# Augmentation off: these tests are about learning together in few epochs (augmented: twice as many).
DDP_HYPERPARAMETERS = {**FAST_HYPERPARAMETERS, "batch_size": 8, "val_fraction": 0.3, "seed": 5, "augment": "off"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def toolkit_env(base, port: int) -> dict[str, str]:
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_PROGRAM": "train.py"}
    env.update(MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    env.pop("SM_HPS", None)
    return env


def metrics(base) -> dict:
    return json.loads((base / "output" / "data" / "metrics.json").read_text())


def test_one_host_two_processes_learn_and_resume(tmp_path, synthetic_dataset):
    base = tmp_path / "job"
    local_job.layout(base, {"train": synthetic_dataset}, {**DDP_HYPERPARAMETERS, "nproc_per_node": 2, "epochs": 8})
    env = toolkit_env(base, free_port())
    first = subprocess.run(local_job.toolkit_train_command(), env=env, capture_output=True, text=True, check=False)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-4000:]
    assert "torch.distributed.run" in output and "--nproc_per_node=2" in output
    assert "world_size=2" in output and "effective_batch_size=16" in output
    assert output.count("Model written to") == 1  # only rank 0 writes
    assert len([line for line in output.splitlines() if line.startswith("epoch=")]) == 8
    assert metrics(base)["best"]["val_auc"] > 0.85, metrics(base)["best"]

    local_job.layout(base, {"train": synthetic_dataset}, {**DDP_HYPERPARAMETERS, "nproc_per_node": 2, "epochs": 9})
    second = subprocess.run(local_job.toolkit_train_command(), env=env, capture_output=True, text=True, check=False)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert "Resumed at epoch=9 batch=0" in second.stdout
    assert [record["epoch"] for record in metrics(base)["history"]] == list(range(1, 10))


def test_two_hosts_on_loopback_train_together_and_only_the_first_writes(tmp_path, synthetic_dataset):
    hosts = ("localhost", "127.0.0.1")
    port = free_port()
    jobs = []
    for host in hosts:
        base = tmp_path / host
        local_job.layout(
            base, {"train": synthetic_dataset}, {**DDP_HYPERPARAMETERS, "epochs": 8}, hosts=hosts, current_host=host
        )
        command = local_job.toolkit_train_command()
        jobs.append(
            (
                base,
                subprocess.Popen(
                    command, env=toolkit_env(base, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                ),
            )
        )
    results = [(base, process.communicate(timeout=900)[0], process.returncode) for base, process in jobs]
    for base, output, code in results:
        assert code == 0, f"{base.name}: {output[-4000:]}"
    first, second = results
    assert "--nnodes=2" in first[1] and "--node_rank=0" in first[1] and "--node_rank=1" in second[1]
    assert "world_size=2" in first[1]
    assert (first[0] / "model" / "model.pt").exists() and metrics(first[0])["best"]["val_auc"] > 0.85
    assert not (second[0] / "model" / "model.pt").exists()
    assert not list((second[0] / "checkpoints").glob("checkpoint-*"))
    assert not [line for line in second[1].splitlines() if line.startswith("epoch=")]


def test_a_data_error_found_by_the_first_process_ends_every_process(tmp_path):
    """Only rank 0 checks the recordings; its error must reach rank 1 instead of leaving it waiting."""
    data = tmp_path / "data"
    (data / "train_audio").mkdir(parents=True)
    (data / "train_metadata.csv").write_text("primary_label,secondary_labels,rating,filename\na,[],3,a/gone.ogg\n")
    base = tmp_path / "job"
    local_job.layout(base, {"train": data}, {**DDP_HYPERPARAMETERS, "nproc_per_node": 2})
    env = toolkit_env(base, free_port())
    completed = subprocess.run(
        local_job.toolkit_train_command(), env=env, capture_output=True, text=True, check=False, timeout=300
    )
    assert completed.returncode != 0
    assert "None of the 1 recordings" in (base / "output" / "failure").read_text()
    assert "[rank 1] None of the 1 recordings" in completed.stdout
