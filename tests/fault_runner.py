"""Run a training job with a fault injected, for the resume tests (never used in production).

    python tests/fault_runner.py --kill-after-step N [train.py arguments]
    python tests/fault_runner.py --kill-in-checkpoint-write N [train.py arguments]
    python tests/fault_runner.py --nan-loss-from-step N [train.py arguments]

The job is `birdsed.commands.train.main`, exactly as `code/train.py` runs it; only one function is wrapped.
"""

from __future__ import annotations

import io
import math
import os
import signal
import sys

import torch

from birdsed.commands import train
from birdsed.training import checkpoint, loop


def kill_after_step(limit: int) -> None:
    finish_step = loop.finish_step

    def finish_then_die(trainer, progress, losses, stop):
        stopping = finish_step(trainer, progress, losses, stop)
        if progress.step >= limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return stopping

    loop.finish_step = finish_then_die


def kill_in_checkpoint_write(number: int) -> None:
    """SIGKILL halfway through writing the `number`-th checkpoint file."""
    save = torch.save
    writes = 0

    def half_save_then_die(obj, handle, *args, **kwargs):
        nonlocal writes
        if ".checkpoint-" in str(getattr(handle, "name", "")):
            writes += 1
            if writes == number:
                buffer = io.BytesIO()
                save(obj, buffer)
                handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return save(obj, handle, *args, **kwargs)

    checkpoint.torch.save = half_save_then_die


def nan_loss_from_step(first: int) -> None:
    forward_backward = loop.forward_backward
    steps = 0

    def poisoned(trainer, batch, sync_gradients=True):
        nonlocal steps
        steps += 1
        loss = forward_backward(trainer, batch, sync_gradients)
        return loss * math.nan if steps >= first else loss

    loop.forward_backward = poisoned


FAULTS = {
    "--kill-after-step": kill_after_step,
    "--kill-in-checkpoint-write": kill_in_checkpoint_write,
    "--nan-loss-from-step": nan_loss_from_step,
}

if __name__ == "__main__":
    fault, value, *arguments = sys.argv[1:]
    FAULTS[fault](int(value))
    sys.exit(train.main(os.environ, arguments))
