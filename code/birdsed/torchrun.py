"""Starting one training process per device on each host, with torchrun (the launch contract).

The toolkit's `train` runs `train.py` once per host. When the job needs more than one process
(several GPUs, several hosts, or `nproc_per_node > 1`), `train.py` replaces itself with torchrun,
which starts the processes and sets RANK / LOCAL_RANK / WORLD_SIZE for them. A process that
torchrun started (ours, or the SageMaker SDK's torchrun distribution) never relaunches.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from birdsed.config import Config
from birdsed.errors import ConfigError
from birdsed.sm_env import SageMakerEnv

logger = logging.getLogger(__name__)


def processes_per_node(cfg: Config, env: SageMakerEnv, visible_gpus: int) -> int:
    """`nproc_per_node`, or one per GPU (SageMaker's count, else what CUDA sees), or 1 on a CPU host."""
    if cfg.run.nproc_per_node:
        return cfg.run.nproc_per_node
    return max(env.num_gpus or visible_gpus, 1)


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
