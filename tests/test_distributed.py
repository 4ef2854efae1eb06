"""Several processes on CPU (gloo) through the real toolkit: one host x 2, and two loopback "hosts" x 1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from birdsed_launch import local_job
from conftest import FAST_HYPERPARAMETERS, free_port

pytestmark = pytest.mark.slow

# Augmentation off: these tests are about learning together in few epochs (augmented: twice as many).
DDP_HYPERPARAMETERS = {**FAST_HYPERPARAMETERS, "batch_size": 8, "val_fraction": 0.3, "seed": 5, "augment": "off"}


def toolkit_env(base, port: int) -> dict[str, str]:
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_PROGRAM": "train.py"}
    # PYTHONFAULTHANDLER: a process sent SIGABRT prints its Python stack (how a hang shows where it hangs)
    env.update(MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo", PYTHONFAULTHANDLER="1")
    env.pop("SM_HPS", None)
    return env


def run_together(jobs: list[tuple[list[str], dict[str, str], Path]], timeout: float) -> list[tuple[int, str]]:
    """(exit code, output) of (command, env, job directory)s run side by side; output in `<directory>/stdout.txt`.

    When one fails or time runs out, the others are stopped: a "host" whose master is gone waits 10 minutes
    for it. Their outputs come back either way, so a failure shows every host's own reason, and a hang
    each process's stack.
    """
    processes = []
    for command, env, directory in jobs:
        with (directory / "stdout.txt").open("w") as sink:
            processes.append(
                subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
            )
    deadline = time.monotonic() + timeout
    while any(process.poll() is None for process in processes):
        if time.monotonic() > deadline or any(process.poll() for process in processes):
            for process in processes:
                if process.poll() is None:
                    dump_stacks_and_kill(process)
        time.sleep(0.5)
    return [
        (process.returncode, (job[2] / "stdout.txt").read_text()) for process, job in zip(processes, jobs, strict=True)
    ]


def dump_stacks_and_kill(process: subprocess.Popen) -> None:
    """Every process under the toolkit's prints its stack (SIGABRT, faulthandler), the toolkit passes it on,
    then the whole session is killed (with the ranks torchrun started)."""
    try:
        below = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        below = []
    for child in below:  # one at a time, so their stacks do not interleave
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGABRT)
        time.sleep(1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_job(base: Path, env: dict[str, str], timeout: float = 420) -> tuple[int, str]:
    """(exit code, output) of the toolkit's `train` in the job folder `base`; a hang ends with every stack."""
    return run_together([(local_job.toolkit_train_command(), env, base)], timeout)[0]


def metrics(base) -> dict:
    return json.loads((base / "output" / "data" / "metrics.json").read_text())


def test_one_host_two_processes_learn_and_resume(tmp_path, synthetic_dataset):
    base = tmp_path / "job"
    local_job.layout(base, {"train": synthetic_dataset}, {**DDP_HYPERPARAMETERS, "nproc_per_node": 2, "epochs": 8})
    env = toolkit_env(base, free_port())
    code, output = run_job(base, env)
    assert code == 0, output[-6000:]
    assert "torch.distributed.run" in output and "--nproc_per_node=2" in output
    assert "world_size=2" in output and "effective_batch_size=16" in output
    assert output.count("Model written to") == 1  # only rank 0 writes
    assert len([line for line in output.splitlines() if line.startswith("epoch=")]) == 8
    assert metrics(base)["best"]["val_auc"] > 0.85, metrics(base)["best"]

    local_job.layout(base, {"train": synthetic_dataset}, {**DDP_HYPERPARAMETERS, "nproc_per_node": 2, "epochs": 9})
    code, output = run_job(base, toolkit_env(base, free_port()))  # a new port, as a restarted job's new host has
    assert code == 0, output[-6000:]
    assert "Resumed at epoch=9 batch=0" in output
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
        jobs.append((local_job.toolkit_train_command(), toolkit_env(base, port), base))
    outcomes = run_together(jobs, timeout=600)
    report = "\n\n".join(
        f"{host}: exit {code}\n{output[-3000:]}" for host, (code, output) in zip(hosts, outcomes, strict=True)
    )
    assert [code for code, _ in outcomes] == [0, 0], report
    first, second = [(base, output) for (_, _, base), (_, output) in zip(jobs, outcomes, strict=True)]
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


def test_a_taken_master_port_is_a_one_line_reason_not_a_traceback(tmp_path, synthetic_dataset):
    base = tmp_path / "job"
    local_job.layout(base, {"train": synthetic_dataset}, {**DDP_HYPERPARAMETERS, "nproc_per_node": 2})
    with socket.create_server(("127.0.0.1", free_port())) as holder:
        env = toolkit_env(base, holder.getsockname()[1])
        completed = subprocess.run(
            local_job.toolkit_train_command(), env=env, capture_output=True, text=True, check=False, timeout=300
        )
    failure = (base / "output" / "failure").read_text()
    assert completed.returncode != 0
    assert failure.startswith(f"torchrun could not open its rendezvous on localhost:{env['MASTER_PORT']}: another")
    assert "Set the MASTER_PORT environment variable to a free port" in failure and "Traceback" not in failure
