from pathlib import Path

from birdsed import sm_env, torchrun
from birdsed.config import from_hyperparameters

SCRIPT = Path("/opt/ml/code/train.py")


def environment(**variables):
    return sm_env.from_environ({"SAGEMAKER_BASE_DIR": "/tmp/none", **variables})


def test_one_cpu_host_runs_a_single_process():
    assert torchrun.command(from_hyperparameters({}), environment(), 0, SCRIPT, []) is None


def test_one_process_per_gpu_on_every_host():
    env = environment(SM_HOSTS='["algo-1", "algo-2"]', SM_CURRENT_HOST="algo-2", SM_NUM_GPUS="4")
    command = torchrun.command(from_hyperparameters({}), env, 4, SCRIPT, ["--epochs", "3"])
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert command[3:8] == [
        "--nnodes=2", "--node_rank=1", "--nproc_per_node=4", "--master_addr=algo-1", "--master_port=29500",
    ]  # fmt: skip
    assert command[8:] == [str(SCRIPT), "--epochs", "3"]


def test_nproc_per_node_overrides_and_torchrun_children_never_relaunch():
    cfg = from_hyperparameters({"nproc_per_node": "2"})
    assert "--nproc_per_node=2" in torchrun.command(cfg, environment(), 0, SCRIPT, [])
    child = environment(LOCAL_RANK="0", RANK="1", WORLD_SIZE="2", TORCHELASTIC_RUN_ID="x")
    assert child.process.rank == 1 and child.process.world_size == 2
    assert torchrun.command(cfg, child, 0, SCRIPT, []) is None


def test_multi_host_jobs_pin_the_interface_sagemaker_names():
    env = environment(SM_HOSTS='["algo-1", "algo-2"]', SM_NETWORK_INTERFACE_NAME="eth0")
    assert torchrun.network_environment(env, {}) == {"NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0"}
    assert torchrun.network_environment(env, {"NCCL_SOCKET_IFNAME": "ens5"}) == {"GLOO_SOCKET_IFNAME": "eth0"}
    assert torchrun.network_environment(environment(SM_NETWORK_INTERFACE_NAME="eth0"), {}) == {}


def test_distributed_always_starts_torchrun_even_for_one_process():
    cfg = from_hyperparameters({"distributed": "always"})
    command = torchrun.command(cfg, environment(), 0, SCRIPT, [])
    assert "--nproc_per_node=1" in command and "--nnodes=1" in command
    child = environment(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1", TORCHELASTIC_RUN_ID="x")
    assert torchrun.command(cfg, child, 0, SCRIPT, []) is None


def test_one_process_joins_a_process_group_only_under_torchrun_with_distributed_always():
    from birdsed.training import distributed

    alone = distributed.setup(environment().process, always=True)  # not started by torchrun: nothing to join
    assert not alone.enabled and alone.world_size == 1
    assert not distributed.setup(environment().process).enabled
