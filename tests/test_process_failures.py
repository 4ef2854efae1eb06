"""Processes that die without a word (killed for memory), and more processes than the host has devices for."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import pytest
import torch.distributed.run
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from birdsed import sm_env, supervise, torchrun
from birdsed.commands import train as train_command
from birdsed.config import from_hyperparameters
from birdsed.data.audio import RawAudio
from birdsed.errors import ConfigError, RendezvousError
from conftest import FAST_HYPERPARAMETERS
from tiny_data import write_wav_dataset

MEMORY = "was killed by SIGKILL (signal 9), most likely by the out-of-memory killer"


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_training_process_killed_by_sigkill_leaves_a_memory_reason(tmp_path):
    environ = {"SAGEMAKER_BASE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    code = supervise.run(python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), environ)
    assert code == 128 + signal.SIGKILL
    failure = (tmp_path / "output" / "failure").read_text()
    assert failure.startswith(f"The training process {MEMORY}") and "Lower batch_size, or num_workers" in failure


def test_the_supervised_child_runs_the_job_and_its_exit_code_is_kept(tmp_path):
    environ = {"SAGEMAKER_BASE_DIR": str(tmp_path)}
    assert (
        supervise.run(
            python(f"import os, sys; sys.exit(3 if os.environ['{supervise.SUPERVISED_ENV}'] else 0)"), environ
        )
        == 3
    )
    assert not (tmp_path / "output" / "failure").exists()
    assert not supervise.needs_supervisor({supervise.SUPERVISED_ENV: "1"})
    assert not supervise.needs_supervisor({"LOCAL_RANK": "0"})  # a rank of the SDK's torchrun
    assert supervise.needs_supervisor({"SAGEMAKER_BASE_DIR": "/opt/ml"})


def test_a_rank_killed_under_torchrun_replaces_the_other_ranks_reports(tmp_path, monkeypatch):
    (tmp_path / "failure").write_text("Internal error: RuntimeError: Connection closed by peer\n")
    failures = {0: ProcessFailure(0, 101, 1, "<N/A>"), 1: ProcessFailure(1, 102, -signal.SIGKILL, "<N/A>")}

    def agent(arguments):
        assert arguments == ["--nproc_per_node=2", "train.py"]
        raise ChildFailedError("train.py", failures)

    monkeypatch.setattr(torch.distributed.run, "main", agent)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py"]
    assert torchrun.run_agent(command, tmp_path) == 128 + signal.SIGKILL
    failure = (tmp_path / "failure").read_text()
    assert failure.startswith(f"Training process rank 1 (of torchrun) {MEMORY}")

    (tmp_path / "failure").write_text("The user's own reason\n")
    failures = {0: ProcessFailure(0, 101, 1, "<N/A>")}
    assert torchrun.run_agent(command, tmp_path) == 1
    assert (tmp_path / "failure").read_text() == "The user's own reason\n"


@pytest.mark.slow
def test_a_dataloader_worker_killed_for_memory_is_a_reason_not_a_traceback(tmp_path, monkeypatch):
    def killed(self, path, start, count):
        import os

        os.kill(os.getpid(), signal.SIGKILL)  # in the worker process, as the out-of-memory killer would

    monkeypatch.setattr(RawAudio, "read", killed)
    base = tmp_path / "job"
    (base / "input" / "data").mkdir(parents=True)
    (base / "input" / "data" / "train").symlink_to(write_wav_dataset(tmp_path / "data"))
    hyperparameters = {**FAST_HYPERPARAMETERS, "epochs": 1, "batch_size": 4, "num_workers": 1}
    code = train_command.main({"SAGEMAKER_BASE_DIR": str(base)}, [f"--{k}={v}" for k, v in hyperparameters.items()])
    assert code == train_command.EXIT_USER_ERROR
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("A DataLoader worker (a child of the training process) was killed or exited unexpectedly")
    assert "most likely by the out-of-memory killer" in failure and "Lower batch_size, or num_workers" in failure
    assert "Traceback" not in failure


@pytest.mark.parametrize(
    ("requested", "gpus", "cpus", "message"),
    [
        (8, 4, 96, "nproc_per_node=8 but this host has 4 GPU(s): each training process needs a GPU of its own"),
        (3, 0, 2, "nproc_per_node=3 but this host has no GPU and 2 CPU(s)"),
    ],
)
def test_more_processes_than_devices_are_refused(requested, gpus, cpus, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        torchrun.check_processes(requested, gpus, cpus)
    torchrun.check_processes(gpus or cpus, gpus, cpus)


def test_nproc_per_node_is_checked_against_the_gpus_cuda_sees():
    env = sm_env.from_environ({"SAGEMAKER_BASE_DIR": "/tmp/none", "SM_NUM_GPUS": "1"})
    with pytest.raises(ConfigError, match="nproc_per_node=2 but this host has 1 GPU"):
        torchrun.command(from_hyperparameters({"nproc_per_node": "2"}), env, 1, Path("train.py"), [])


def test_hosts_that_cannot_meet_get_the_address_and_what_to_check(tmp_path, monkeypatch):
    def agent(arguments):
        raise torch.distributed.DistNetworkError(
            "The client socket has timed out after 600000ms while trying to connect"
        )

    monkeypatch.setattr(torch.distributed.run, "main", agent)
    command = [sys.executable, "-m", "torch.distributed.run", "--master_addr=algo-1", "--master_port=29500", "train.py"]
    with pytest.raises(RendezvousError) as raised:
        torchrun.run_agent(command, tmp_path)
    reason = str(raised.value)
    assert reason.startswith("torchrun on this host could not meet the first host at algo-1:29500: The client socket")
    assert "The first host's own log says why" in reason

    def first_host(arguments):
        raise torch.distributed.DistStoreError("Timed out after 601 seconds waiting for clients. 1/2 clients joined.")

    monkeypatch.setattr(torch.distributed.run, "main", first_host)
    with pytest.raises(
        RendezvousError, match=r"^torchrun on the first host \(algo-1:29500\) waited for the other hosts"
    ):
        torchrun.run_agent(command, tmp_path)
