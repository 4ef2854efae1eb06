"""Starting one training process per device on each host, with torchrun (the launch contract).

The toolkit's `train` runs `train.py` once per host. When the job needs more than one process
(several GPUs, several hosts, or `nproc_per_node > 1`), that process runs torchrun's agent itself
(`run_agent`), which starts the processes and sets RANK / LOCAL_RANK / WORLD_SIZE for them, and
explains a rank killed by a signal. A process that torchrun started (ours, or the SageMaker SDK's
torchrun distribution) never relaunches.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch.distributed.run
from torch.distributed import DistNetworkError, DistStoreError
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from birdsed import sm_env, supervise
from birdsed.config import Config
from birdsed.errors import ConfigError, RendezvousError
from birdsed.sm_env import SageMakerEnv

logger = logging.getLogger(__name__)


def processes_per_node(cfg: Config, env: SageMakerEnv, visible_gpus: int) -> int:
    """`nproc_per_node`, or one per GPU (SageMaker's count, else what CUDA sees), or 1 on a CPU host."""
    if cfg.run.nproc_per_node:
        check_processes(cfg.run.nproc_per_node, visible_gpus, usable_cpus())
        return cfg.run.nproc_per_node
    return max(env.num_gpus or visible_gpus, 1)


def check_processes(requested: int, gpus: int, cpus: int) -> None:
    """One process per GPU at most (each takes `cuda:<local rank>`); without GPUs, one per CPU at most."""
    if gpus and requested > gpus:
        raise ConfigError(
            f"nproc_per_node={requested} but this host has {gpus} GPU(s): each training process needs a GPU of its "
            f"own. Set nproc_per_node to {gpus} or less (0: one per GPU), or use an instance with more GPUs."
        )
    if not gpus and requested > cpus:
        raise ConfigError(
            f"nproc_per_node={requested} but this host has no GPU and {cpus} CPU(s): more processes than CPUs only "
            f"compete for them. Set nproc_per_node to {cpus} or less."
        )


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_agent(command: Sequence[str], output_dir: Path) -> int:
    """Run torchrun's agent in this process (the `command` made above); its exit code is the job's.

    A rank killed by a signal (SIGKILL: out of memory) cannot explain itself, and the ranks torchrun
    then stops may report misleading errors: its reason replaces theirs.
    """
    arguments = list(command[command.index("torch.distributed.run") + 1 :])
    try:
        torch.distributed.run.main(arguments)
    except ChildFailedError as error:
        reason, code = supervise.describe_failures(error.failures)
        if reason:
            logger.error("%s", reason)
            sm_env.write_failure(output_dir, reason, replace=True)
        return code
    except SignalException as stop:  # SIGTERM: torchrun passed it on to the ranks, which saved a checkpoint
        return 128 + int(stop.sigval)
    except (DistNetworkError, DistStoreError) as error:  # the agents' rendezvous, before any rank started
        raise RendezvousError(rendezvous_reason(arguments, error)) from error
    return 0


def rendezvous_reason(arguments: Sequence[str], error: DistNetworkError | DistStoreError) -> str:
    """Why the hosts' torchrun agents could not meet, with what to check: the port, the other hosts, the first."""
    options = dict(
        argument.removeprefix("--").split("=", 1)
        for argument in arguments
        if argument.startswith("--") and "=" in argument
    )
    address = f"{options.get('master_addr', '?')}:{options.get('master_port', '?')}"
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "EADDRINUSE" in detail:
        return (
            f"torchrun could not open its rendezvous on {address}: another process on this host holds port "
            f"{options.get('master_port')}. Set the MASTER_PORT environment variable to a free port. ({detail})"
        )
    if "waiting for clients" in detail:  # the first host: the others never came
        return (
            f"torchrun on the first host ({address}) waited for the other hosts in vain: {detail} Their own logs "
            f"say why they did not join; check that they reach this host on that port."
        )
    return (
        f"torchrun on this host could not meet the first host at {address}: {detail}. The first host's own "
        f"log says why it did not open the rendezvous (it failed or started late); check that every host "
        f"reaches it on that port."
    )


def command(cfg: Config, env: SageMakerEnv, visible_gpus: int, script: Path, argv: Sequence[str]) -> list[str] | None:
    """The torchrun command line that runs `script argv` everywhere, or None when one process is enough
    (and `distributed=always` does not ask for torchrun anyway)."""
    if env.process.under_torchrun:
        return None
    per_node = processes_per_node(cfg, env, visible_gpus)
    if per_node * len(env.hosts) == 1 and cfg.run.distributed == "auto":
        return None
    if env.current_host not in env.hosts:
        raise ConfigError(f"This host ({env.current_host}) is not in the job's host list {list(env.hosts)}.")
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={len(env.hosts)}",
        f"--node_rank={env.hosts.index(env.current_host)}",
        f"--nproc_per_node={per_node}",
        f"--master_addr={env.hosts[0]}",
        f"--master_port={env.process.master_port}",
        str(script), *argv,
    ]  # fmt: skip


def network_environment(env: SageMakerEnv, environ: Mapping[str, str]) -> dict[str, str]:
    """Pin NCCL and gloo to the interface SageMaker names for traffic between hosts, unless set already.

    Left alone, they may pick an interface the other hosts cannot reach (e.g. a Docker bridge).
    """
    if len(env.hosts) == 1 or not env.network_interface:
        return {}
    names = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
    return {name: env.network_interface for name in names if name not in environ}
