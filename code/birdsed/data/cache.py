"""The waveform cache: every recording decoded and resampled once, read back by memory map.

Written by `code/prepare.py` (`prepare_cache`), read by training when a channel holds `cache.json`.
Layout of a cache folder (upload it as is, e.g. `aws s3 sync CACHE s3://bucket/prefix`):

    cache.json                        the index and marker (below); its presence makes a folder a cache
    train_metadata.csv                a verbatim copy of the input's metadata
    train_audio/<filename>.npy        one per readable recording: mono int16 at the cache's sample rate,
                                      `<filename>` exactly as in the metadata (`abc1/XC123.ogg.npy`)

Samples are float waveforms clipped to [-1, 1] and stored as `round(x * 32767)` (no per-file
normalisation, so levels stay as recorded; clipped samples are counted per file): the int16 PCM that
crops travel in from the workers, so a crop is a plain copy. `cache.json` holds
`format` ("birdsed-waveform-cache"), `version`, `complete` (false while `prepare` runs), `sample_rate`,
`dtype`, `scale`, counts, `files` ({filename: {"samples", "clipped"}}: durations come from here, so
training probes nothing) and `unreadable` ({filename: reason}).

Every `.npy` is written to a hidden temporary file and renamed into place, so a file under its final
name is complete and a rerun of `prepare` skips it; a killed run leaves only temporary files, which
the rerun removes. A crop opens its file, memory-maps it, copies its span and closes both again, so
persistent workers hold no file handles between items ("too many open files" on big datasets).
"""

from __future__ import annotations

import io
import json
import logging
import mmap
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from birdsed import atomic
from birdsed.atomic import TEMPORARY_MARK, atomic_open, atomic_path
from birdsed.data import metadata
from birdsed.data.audio import PCM_SCALE, AudioReadError, StreamReport, read_blocks, to_pcm16
from birdsed.errors import DataError

logger = logging.getLogger(__name__)

CACHE_FILE = "cache.json"
FORMAT = "birdsed-waveform-cache"
VERSION = 1
SCALE = PCM_SCALE
SUFFIX = ".npy"
# Headers checked at once at the start of a job (I/O-bound: a streamed channel fetches each one).
CHECK_THREADS = 16
# What a header check reads: numpy pads a 1-D array's header to 128 bytes, so this is ample; a file
# whose header does not fit is not one prepare wrote, and is named unreadable.
HEADER_BYTES = 4096
HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@dataclass(frozen=True)
class CacheIndex:
    """What `cache.json` says about a cache folder."""

    root: Path
    sample_rate: int
    complete: bool
    files: dict[str, dict[str, int]]
    unreadable: dict[str, str]

    def samples(self, filename: str) -> int | None:
        entry = self.files.get(filename)
        return None if entry is None else int(entry["samples"])


@dataclass
class PrepareReport:
    """The outcome of one `prepare_cache` run."""

    converted: int = 0
    skipped: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)
    index: CacheIndex | None = None


def is_cache(directory: Path | None) -> bool:
    return directory is not None and (directory / CACHE_FILE).is_file()


def array_path(root: Path, filename: str) -> Path:
    """Where the recording `filename` (as named in the metadata) lives in the cache at `root`."""
    return root / metadata.AUDIO_DIR / (filename + SUFFIX)


def read_span(path: Path, start: int, count: int) -> np.ndarray:
    """int16 samples `[start, start + count)` (shorter at the end of the recording), via a memory map.

    The same as `np.load(path, mmap_mode="r")[start:start + count]`, at a third of the cost per crop
    (numpy.memmap's set-up dominates a 5 s copy); the file and map are closed before returning.
    """
    try:
        with open(path, "rb") as handle:
            shape, dtype, offset = _read_header(handle)
            start = min(start, shape[0])
            count = max(0, min(count, shape[0] - start))
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return np.frombuffer(mapped, dtype=dtype, count=count, offset=offset + start * dtype.itemsize).copy()
    except (OSError, ValueError) as error:
        raise AudioReadError(f"cache file unreadable ({error})") from None


def _read_header(handle: BinaryIO) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of the `.npy` file open in `handle`; ValueError if it is not one."""
    read_header = HEADER_READERS.get(np.lib.format.read_magic(handle))
    if read_header is None:
        raise ValueError("unsupported .npy version")
    shape, _, dtype = read_header(handle)
    return shape, dtype, handle.tell()


@dataclass(frozen=True)
class CachedWaveforms:
    """A crop source for `CropDataset`: reads spans from the cache's memory-mapped arrays."""

    def read(self, path: Path, start: int, count: int) -> np.ndarray:
        return read_span(path, start, count)


def read_index(root: Path) -> CacheIndex:
    """Parse `cache.json`; raise `DataError` when it is not a cache this version can read."""
    try:
        raw = json.loads((root / CACHE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{root / CACHE_FILE} is not readable JSON ({error}); rerun prepare.") from None
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise DataError(
            f"{root / CACHE_FILE} is not a {FORMAT} version {VERSION} index (format={raw.get('format')!r}, "
            f"version={raw.get('version')!r}); rebuild the cache with this birdsed's code/prepare.py."
        )
    return CacheIndex(
        root=root,
        sample_rate=int(raw["sample_rate"]),
        complete=bool(raw.get("complete", False)),
        files=dict(raw.get("files", {})),
        unreadable=dict(raw.get("unreadable", {})),
    )


def open_for_training(root: Path, channel: str, sample_rate: int) -> CacheIndex:
    """The index of a finished cache whose rate is the job's, or a `DataError` saying what to do."""
    index = read_index(root)
    if not index.complete:
        raise DataError(
            f"The waveform cache in the '{channel}' channel is incomplete (its prepare run did not finish); "
            "rerun code/prepare.py with the same --output (it resumes), then upload the cache again."
        )
    if index.sample_rate != sample_rate:
        raise DataError(
            f"The waveform cache in the '{channel}' channel was prepared at {index.sample_rate} Hz but the job's "
            f"sample_rate is {sample_rate} Hz. Set the hyperparameter sample_rate={index.sample_rate}, or rebuild "
            f"the cache with code/prepare.py --sample-rate {sample_rate} into a new folder."
        )
    return index


@dataclass(frozen=True)
class ArrayHead:
    """What `check_array` reads of a cache array: its size and first bytes, or why it could not."""

    size: int = 0
    head: bytes = b""
    problem: str | None = None


def read_head(path: Path) -> ArrayHead:
    """The I/O half of `check_array`: the file's size and its first `HEADER_BYTES` bytes."""
    too_long = metadata.name_too_long(str(path))
    if too_long:
        return ArrayHead(problem=too_long)
    try:
        size = path.stat().st_size
        if size == 0:
            return ArrayHead(problem="cache array is empty (0 bytes; an interrupted copy?)")
        with open(path, "rb") as handle:
            return ArrayHead(size=size, head=handle.read(HEADER_BYTES))
    except FileNotFoundError:
        return ArrayHead(problem="cache array missing (train_audio/<filename>.npy)")
    except OSError as error:
        return ArrayHead(problem=f"cache array unreadable ({error})")


def check_head(head: ArrayHead, samples: int) -> str | None:
    """The parsing half of `check_array`: why `head` is not an array of `samples` int16 samples, or None."""
    if head.problem:
        return head.problem
    try:
        shape, dtype, offset = _read_header(io.BytesIO(head.head))
    except (ValueError, EOFError) as error:
        return f"cache array unreadable ({error})"
    if len(shape) != 1 or dtype != np.int16:
        return f"cache array is not mono int16 (shape {shape}, dtype {dtype})"
    if shape[0] != samples:
        return f"cache array holds {shape[0]} samples where cache.json says {samples}"
    expected = offset + samples * dtype.itemsize
    if head.size != expected:
        damage = "truncated" if head.size < expected else "too long"
        return f"cache array {damage}: {head.size} bytes, expected {expected}"
    return None


def check_array(path: Path, samples: int) -> str | None:
    """Why the cache array at `path` cannot be used, or None when it holds `samples` int16 samples.

    Only the header and the file's size are read, so checking every array at the start of a job
    is cheap; it finds what an interrupted copy (`aws s3 sync`) leaves under the final names:
    empty files, truncated files, files that are not arrays at all.
    """
    return check_head(read_head(path), samples)


def check_arrays(root: Path, names: list[str], samples: list[int]) -> list[str | None]:
    """`check_array` for many recordings: the reads in threads (on a streamed FastFile channel each
    header is a fetch), the parsing in this one, because numpy parses a header with `ast`, and
    CPython 3.11's parser is not safe to run in threads at once (gh-106905: a spurious
    "SystemError: AST constructor recursion depth mismatch", seen in CI on 3.11.7).
    """
    paths = [array_path(root, name) for name in names]
    with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:
        heads = list(pool.map(read_head, paths))
    return [check_head(head, count) for head, count in zip(heads, samples, strict=True)]


def usable_recordings(root: Path, channel: str, sample_rate: int) -> tuple[pd.DataFrame, int]:
    """The channel's metadata rows that the cache holds, with `path` (the array) and `seconds` added, and
    the number of rows listed.

    Rows whose array is missing, empty, truncated or disagrees with `cache.json` are skipped,
    each named with its reason, and counted against `max_skipped_fraction` by the caller.
    """
    index = open_for_training(root, channel, sample_rate)
    frame = metadata.read_metadata(root)
    samples = [index.samples(name) for name in frame["filename"]]
    indexed = [name for name, count in zip(frame["filename"], samples, strict=True) if count]
    problems = dict(zip(indexed, check_arrays(root, indexed, [count for count in samples if count]), strict=True))
    usable = []
    for name, count in zip(frame["filename"], samples, strict=True):
        reason = problems.get(name) if count else index.unreadable.get(name, "not in the cache (or empty)")
        if reason:
            logger.warning("Skipping %s: %s", name, reason)
        usable.append(reason is None)
    logger.info(
        "channel=%s source=cache sample_rate=%d skipped_files=%d usable_files=%d",
        channel,
        index.sample_rate,
        len(frame) - sum(usable),
        sum(usable),
    )
    if not any(usable):
        raise DataError(
            f"None of the {len(frame)} recordings in the '{channel}' channel's metadata are in its waveform cache; "
            "check the prepare run's summary of unreadable files."
        )
    listed = len(frame)
    frame = frame[usable].reset_index(drop=True)
    seconds = [index.samples(name) / index.sample_rate for name in frame["filename"]]
    frame = frame.assign(path=[array_path(root, name) for name in frame["filename"]], seconds=seconds)
    return frame, listed


def load_arrays(index: CacheIndex) -> tuple[list[np.ndarray], int]:
    """Every usable recording of a cache, whole, as int16 (for small channels such as background noise).

    Damaged arrays are skipped, each named in the log with its reason; returns (arrays, skipped).
    """
    names = sorted(index.files)
    arrays, skipped = [], 0
    for name, reason in zip(names, check_arrays(index.root, names, [index.samples(n) for n in names]), strict=True):
        path = array_path(index.root, name)
        if reason:
            logger.warning("Skipping %s: %s", path, reason)
            skipped += 1
        else:
            arrays.append(np.load(path))
    return arrays, skipped


# ----------------------------------------------------------------------------------------------
# Writing a cache (`prepare`)


def prepare_cache(
    input_dir: Path, output_dir: Path, sample_rate: int, workers: int, progress: bool = True
) -> PrepareReport:
    """Decode and resample every recording of `input_dir` into the cache at `output_dir`, resumably.

    Recordings whose array is already complete are skipped; unreadable ones are reported (and tried
    again by the next run). Raises `DataError` when the input has no metadata or the output holds a
    cache at another sample rate.
    """
    if input_dir.resolve() == output_dir.resolve():
        raise DataError("--output must be a folder other than --input.")
    _check_output_dir(output_dir)
    names = sorted(set(metadata.read_metadata(input_dir)["filename"]))
    previous = _previous_files(output_dir, sample_rate)
    _write_index(output_dir, sample_rate, files=previous, unreadable={}, complete=False)
    _remove_temporaries(output_dir)
    report, files, todo = PrepareReport(), {}, []
    for name in names:
        samples = _complete_length(array_path(output_dir, name))
        if samples is None:
            todo.append(name)
        else:
            files[name] = {"samples": samples, "clipped": previous.get(name, {}).get("clipped", 0)}
    report.skipped = len(files)
    for name, outcome in _convert_all(input_dir, output_dir, todo, sample_rate, workers, progress):
        if isinstance(outcome, AudioReadError):
            report.unreadable[name] = str(outcome)
        else:
            files[name] = outcome
            report.converted += 1
    _copy_atomically(input_dir / metadata.METADATA_FILE, output_dir / metadata.METADATA_FILE)
    report.index = _write_index(output_dir, sample_rate, files, report.unreadable, complete=True)
    return report


def _check_output_dir(output_dir: Path) -> None:
    """Refuse an output that cannot become a folder before any work is done (one-line reasons)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"--output {output_dir} is an existing file, not a folder; name a new or existing folder.")
    ancestor = atomic.existing_ancestor(output_dir)
    if not ancestor.is_dir():
        raise DataError(f"--output {output_dir}: {ancestor} is a file, so the folder cannot be created there.")
    writable = output_dir if output_dir.exists() else ancestor
    if not os.access(writable, os.W_OK | os.X_OK):
        raise DataError(f"--output {output_dir}: no permission to write in {writable}.")


def _convert_all(
    input_dir: Path, output_dir: Path, names: list[str], sample_rate: int, workers: int, progress: bool
) -> Iterator[tuple[str, dict[str, int] | AudioReadError]]:
    """Convert `names` in a process pool (one decode per core), yielding results as they finish."""
    jobs = [(input_dir / metadata.AUDIO_DIR / name, array_path(output_dir, name), sample_rate) for name in names]
    bar = tqdm(total=len(jobs), desc="prepare", unit="file", disable=not progress)
    if workers <= 1 or len(jobs) <= 1:
        for name, job in zip(names, jobs, strict=True):
            yield name, convert_recording(*job)
            bar.update()
    else:
        # fork: the workers inherit the imported modules instead of importing torch again.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_single_threaded) as pool:
            futures = {pool.submit(convert_recording, *job): name for name, job in zip(names, jobs, strict=True)}
            for future in as_completed(futures):
                yield futures[future], future.result()
                bar.update()
    bar.close()


def _single_threaded() -> None:
    # One process per core: torch's own threads would only compete with the other workers.
    torch.set_num_threads(1)


def convert_recording(source: Path, target: Path, sample_rate: int) -> dict[str, int] | AudioReadError:
    """Decode one recording into its cache array; returns its entry, or the error (not raised: pool-safe).

    The recording is decoded, downmixed and resampled in blocks (`read_blocks`) and each block is
    appended to the array as it comes, so a worker's memory does not grow with the recording's length.
    The `.npy` header is written first with a length of 0 and rewritten in place at the end (numpy pads
    the header so that the length can grow without moving the data).
    """
    too_long = metadata.name_too_long(str(source)) or metadata.name_too_long(str(target))
    if too_long:  # asked first: is_file() raises for such a name instead of answering False
        return AudioReadError(too_long)
    if not source.is_file():
        return AudioReadError("file not found")
    target.parent.mkdir(parents=True, exist_ok=True)
    report = StreamReport()
    try:
        with atomic_open(target, "wb") as handle:
            header_bytes = _write_npy_header(handle, 0)
            for block in read_blocks(source, sample_rate, report=report, nonfinite="raise"):
                handle.write(to_pcm16(block)[0].tobytes())
            if report.samples == 0:
                raise AudioReadError("no audio frames")
            handle.seek(0)
            if _write_npy_header(handle, report.samples) != header_bytes:
                raise RuntimeError("the .npy header changed size when rewritten")  # numpy guarantees it does not
    except AudioReadError as error:
        return error
    return {"samples": report.samples, "clipped": report.clipped}


def _write_npy_header(handle: BinaryIO, samples: int) -> int:
    """Write the `.npy` (version 1.0) header of a 1-D int16 array at the handle's position; returns its size."""
    start = handle.tell()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int16)), "fortran_order": False, "shape": (samples,)}
    np.lib.format.write_array_header_1_0(handle, header)
    return handle.tell() - start


def _complete_length(path: Path) -> int | None:
    """The sample count of a complete array file, or None when it is missing or truncated."""
    try:
        with open(path, "rb") as handle:
            shape, dtype, header_end = _read_header(handle)
    except (OSError, ValueError, EOFError):
        return None
    if len(shape) != 1 or dtype != np.int16:
        return None
    complete = path.stat().st_size == header_end + shape[0] * dtype.itemsize
    return int(shape[0]) if complete else None


def _previous_files(output_dir: Path, sample_rate: int) -> dict[str, dict[str, int]]:
    """The files of an earlier run into `output_dir`; refuse to mix sample rates in one cache."""
    if not is_cache(output_dir):
        return {}
    index = read_index(output_dir)
    if index.sample_rate != sample_rate:
        raise DataError(
            f"{output_dir} already holds a waveform cache at {index.sample_rate} Hz; prepare the "
            f"{sample_rate} Hz cache into another folder (or pass --sample-rate {index.sample_rate} to resume)."
        )
    return index.files


def _remove_temporaries(output_dir: Path) -> None:
    """Half-written arrays of a killed run; never mistaken for finished ones (hidden, other name)."""
    audio_dir = output_dir / metadata.AUDIO_DIR
    if audio_dir.is_dir():
        for path in audio_dir.rglob(f".*{SUFFIX}{TEMPORARY_MARK}*"):
            path.unlink(missing_ok=True)


def _write_index(
    output_dir: Path, sample_rate: int, files: dict[str, dict[str, int]], unreadable: dict[str, str], complete: bool
) -> CacheIndex:
    total = sum(entry["samples"] for entry in files.values())
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "complete": complete,
        "sample_rate": sample_rate,
        "dtype": "int16",
        "scale": SCALE,
        "layout": f"{metadata.AUDIO_DIR}/<filename>{SUFFIX}",
        "recordings": len(files),
        "seconds": round(total / sample_rate, 3),
        "clipped_samples": sum(entry["clipped"] for entry in files.values()),
        "unreadable_count": len(unreadable),
        "files": dict(sorted(files.items())),
        "unreadable": dict(sorted(unreadable.items())),
    }
    atomic.write_text(output_dir / CACHE_FILE, json.dumps(payload, indent=1) + "\n")
    return CacheIndex(output_dir, sample_rate, complete, payload["files"], payload["unreadable"])


def _copy_atomically(source: Path, target: Path) -> None:
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)
