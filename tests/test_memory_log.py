"""The per-epoch memory line: workers' RSS and USS, read without failing when a worker ends meanwhile."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import psutil

from birdsed.training import job
from birdsed_launch.memory_profile import MEMORY_LINE


def test_workers_memory_sums_the_children_and_their_unique_pages():
    child = subprocess.Popen([sys.executable, "-c", "import time; data = b'x' * (64 * 2**20); time.sleep(60)"])
    try:
        for _ in range(100):  # until the child has touched its 64 MB
            if psutil.Process(child.pid).memory_full_info().uss > 60 * 2**20:
                break
            time.sleep(0.05)
        rss, uss = job.workers_memory(psutil.Process())
    finally:
        child.kill()
        child.wait()
    assert uss > 60 * 2**20
    assert rss >= uss


class EndedWorker:
    def memory_full_info(self):
        raise psutil.NoSuchProcess(pid=123)


class LiveWorker:
    def memory_full_info(self):
        return FullMemory(rss=10, uss=4)


class FullMemory:
    def __init__(self, rss: int, uss: int) -> None:
        self.rss, self.uss = rss, uss


class FakeProcess:
    def children(self, recursive: bool):
        return [EndedWorker(), LiveWorker(), EndedWorker()]


def test_a_worker_that_ends_while_it_is_read_is_left_out_not_an_error():
    assert job.workers_memory(FakeProcess()) == (10, 4)


def test_the_memory_line_parses_with_the_profile_s_pattern(caplog):
    with caplog.at_level(logging.INFO, logger=job.logger.name):
        job.log_memory(epoch=0)
    lines = [record.getMessage() for record in caplog.records if "memory epoch" in record.getMessage()]
    (match,) = [MEMORY_LINE.search(line) for line in lines]
    assert match is not None and match.group(1) == "1"
