"""The failure contract of a training job (as the toolkit's trainer.py).

User errors (hyperparameters, data, channels) write their one-paragraph reason to
`output/failure` and exit 1. Anything else writes the error and its traceback (SageMaker shows
the first 1,024 characters, so the message comes first) and exits 2.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from birdsed import config, logs, sm_env, supervise, torchrun
from birdsed.errors import TrainingStopped, UserError
from birdsed.training.job import run

logger = logging.getLogger(__name__)

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 2
EXIT_STOPPED = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM
# code/train.py, which torchrun starts once per process (this file is code/birdsed/commands/train.py).
TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "train.py"
# What PyTorch's DataLoader raises in the training process when a worker died: SIGKILL (by the out-of-memory
# killer) is reported either way, depending on which of its checks notices first.
DATALOADER_DIED = re.compile(r"DataLoader worker \(pid.*\) (is killed by signal: Killed|exited unexpectedly)")


def main(environ: Mapping[str, str], argv: Sequence[str], script: Path = TRAIN_SCRIPT) -> int:
    logs.configure()
    output_dir = sm_env.output_dir_from(environ)
    try:
        env = sm_env.from_environ(environ, argv)
        logs.configure(rank=env.process.rank)
        cfg = config.from_hyperparameters(env.hyperparameters)
        logger.info("hyperparameters: %s", cfg.hyperparameters())
        launch = torchrun.command(cfg, env, torch.cuda.device_count(), script, argv)
        if launch:
            logger.info("Starting %s", " ".join(launch))
            # This process becomes torchrun's agent: its ranks inherit the environment.
            os.environ.update({**environ, **torchrun.network_environment(env, environ)})
            return torchrun.run_agent(launch, output_dir)
        run(cfg, env)
    except TrainingStopped as stopped:
        logger.warning("%s", stopped)
        sm_env.write_failure(output_dir, str(stopped))
        return EXIT_STOPPED
    except UserError as error:
        logger.error("%s", error)
        sm_env.write_failure(output_dir, str(error))
        return EXIT_USER_ERROR
    except Exception as error:
        if DATALOADER_DIED.search(str(error)):
            reason = supervise.killed_reason("A DataLoader worker (a child of the training process)", signal.SIGKILL)
            reason = reason.replace("was killed by SIGKILL (signal 9)", "was killed or exited unexpectedly")
            logger.error("%s (%s)", reason, error)
            sm_env.write_failure(output_dir, reason)
            return EXIT_USER_ERROR
        reason = f"Internal error: {type(error).__name__}: {error}\n\n{traceback.format_exc()}"
        logger.exception("Training failed")
        sm_env.write_failure(output_dir, reason)
        return EXIT_INTERNAL_ERROR
    return 0
