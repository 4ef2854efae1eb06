"""Logging, configured once by the entrypoint: human lines on stdout, the metric line bare."""

from __future__ import annotations

import logging
import sys

METRICS_LOGGER = "birdsed.metrics"


def configure(level: int = logging.INFO) -> None:
    """Timestamps and module names for people; the epoch metric line exactly as CloudWatch expects."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    metrics_handler = logging.StreamHandler(sys.stdout)
    metrics_handler.setFormatter(logging.Formatter("%(message)s"))
    metrics = logging.getLogger(METRICS_LOGGER)
    metrics.handlers[:] = [metrics_handler]
    metrics.propagate = False
    metrics.setLevel(logging.INFO)
