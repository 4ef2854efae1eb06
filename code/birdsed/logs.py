"""Logging, configured once by the entrypoint: human lines on stdout, the metric line bare."""

from __future__ import annotations

import logging
import sys

METRICS_LOGGER = "birdsed.metrics"


def configure(rank: int = 0) -> None:
    """Timestamps and module names for people; the epoch metric line exactly as CloudWatch expects.

    Only the first process logs information and metrics; the others report warnings and errors,
    tagged with their rank.
    """
    level = logging.INFO if rank == 0 else logging.WARNING
    prefix = "" if rank == 0 else f"[rank {rank}] "
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s: {prefix}%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    metrics_handler = logging.StreamHandler(sys.stdout)
    metrics_handler.setFormatter(logging.Formatter("%(message)s"))
    metrics = logging.getLogger(METRICS_LOGGER)
    metrics.handlers[:] = [metrics_handler]
    metrics.propagate = False
    metrics.setLevel(level)
