"""Several training processes (torchrun): the process group and the few collectives the loop needs.

With one process every method is a cheap no-op, so the loop reads the same either way.
NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from birdsed.sm_env import ProcessGroupEnv

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    joined: bool = False  # in a process group: more than one process, or one with distributed=always

    @property
    def enabled(self) -> bool:
        return self.joined

    @property
    def is_main(self) -> bool:
        """The first process of the first host: the only one that writes checkpoints and outputs."""
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any."""
        if not self.enabled:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)).item())

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes (in place; returned for chaining)."""
        if self.enabled:
            dist.all_reduce(values)
        return values

    def gather(self, value: object) -> list[object]:
        """Every process's `value`, in rank order, on every process."""
        if not self.enabled:
            return [value]
        gathered: list[object] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast(self, value: object) -> object:
        """Rank 0's `value` on every process."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Return when every process has come here."""
        if self.enabled:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics) in `model` on every process, so all score the same model."""
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def computed_once(self, compute: Callable[[], T]) -> T:
        """`compute()` on the first process only; its result, or the error it raised, on every process.

        For start-up work every process needs but one can do (checking 25,000 recordings): the others
        wait instead of repeating it, and an error reaches all of them, so none waits for a result
        that will never come.
        """
        if not self.enabled:
            return compute()
        outcome: tuple[bool, object] | None = None
        if self.is_main:
            try:
                outcome = (True, compute())
            except Exception as error:  # noqa: BLE001 - re-raised below, on every process
                outcome = (False, error)
        succeeded, payload = self.broadcast(outcome)
        if not succeeded:
            raise payload
        return payload

    def wrap(self, model: nn.Module, sync_batchnorm: bool) -> nn.Module:
        """DistributedDataParallel around `model` (SyncBatchNorm first if asked), or `model` itself."""
        if not self.enabled:
            return model
        if sync_batchnorm:
            from timm.layers import convert_sync_batchnorm  # timm's knows its fused BatchNormAct2d

            model = convert_sync_batchnorm(model)
        device_ids = [self.local_rank] if self.device.type == "cuda" else None
        # Every parameter gets a gradient in every step (the backbone is built that way and checked, see
        # models/probe.py), so DDP needs no extra pass over the graph to find unused ones.
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)


def setup(process: ProcessGroupEnv, always: bool = False) -> Distributed:
    """Join the process group torchrun describes (or stay alone) and pick this process's device.

    `always`: join it even as the only process, when torchrun started this one (`distributed=always`).
    """
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", process.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    joins = process.world_size > 1 or (always and process.under_torchrun)
    if joins and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        logger.info("Joined the process group: backend=%s world_size=%d", dist.get_backend(), process.world_size)
    return Distributed(process.rank, process.local_rank, process.world_size, device, joined=dist.is_initialized())


def teardown() -> None:
    """Leave the process group; the objects that still hold it (a DDP wrapper in a reference cycle) are freed first."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel, for state dicts and exports."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def assemble_rows(parts: list[tuple[list[int], np.ndarray]], total: int) -> np.ndarray:
    """Rows gathered from processes as (dataset indices, rows) back in dataset order; padding duplicates collapse."""
    width = next((rows.shape[1] for _, rows in parts if rows.size), 0)
    result = np.zeros((total, width), dtype=np.float32)
    for indices, rows in parts:
        if len(indices):
            result[np.asarray(indices)] = rows
    return result
