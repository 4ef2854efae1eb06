"""Files that are either absent/old or complete: the one "temporary file, then rename" of the project.

A job can be killed at any instruction (spot interruption, memory kill, a user's Ctrl-C), and a half-written
checkpoint, model or CSV is worse than none. Every writer goes through `atomic_path`: a temporary name
unique to the call (two writers of one target never share it), the data fsynced, the rename, then the
directory fsynced (the rename is durable only once the directory entry is on disk).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# In every temporary name: what a clean-up of an interrupted run's leftovers looks for.
TEMPORARY_MARK = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for the caller (or a library) to write; renamed over `path` on success.

    The temporary name, `.<name>.tmp-<random><suffix>`, is hidden, marked, and keeps `path`'s suffix (some
    writers, like `torch.export.save`, check it). It is created here with the umask's permissions (unlike
    mkstemp's 0600), so the result reads like any other file. On an exception it is removed and `path` is
    left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}{TEMPORARY_MARK}{uuid.uuid4().hex[:12]}{path.suffix}")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temporary
        fsync_file(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs: object) -> Iterator[IO]:
    """`open(path, mode)` through `atomic_path`: the file appears complete, or not at all."""
    with atomic_path(path) as temporary, open(temporary, mode, **kwargs) as handle:
        yield handle


def write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def existing_ancestor(path: Path) -> Path:
    """The closest existing folder above `path` (or a file in its way): where writing `path` would start."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
