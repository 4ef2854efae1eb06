"""A stop request from SIGTERM (a stopped or interrupted spot job) or SIGINT (Ctrl-C).

SageMaker sends SIGTERM, then SIGKILL 120 s later. The handler only records the request; the
loop notices it at the next optimizer-step boundary, saves a checkpoint and stops, so the state
on disk is always one the loop could have produced without the signal.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Records SIGTERM / SIGINT while installed (use as a context manager)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(number).name
            logger.warning("%s received: saving a checkpoint at the next step, then stopping", self.signal_name)

    def __enter__(self) -> StopRequest:
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


class NeverStop:
    """A stop request that never comes (tools that run the loop outside a job)."""

    requested = False
    signal_name = None
