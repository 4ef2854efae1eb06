"""Soundscape channels: long recordings, their labelled windows, and windows read by streaming.

`soundscape_validation` holds audio files (any format, any folder depth) and `soundscape_labels.csv`
with one row per window: `filename,start,end,labels` (path below the channel, seconds, space-separated
class names, empty for no bird). `soundscapes` holds unlabelled recordings of any length. Recordings
are decoded block by block (`stream_audio`), so a multi-hour file never sits whole in memory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from birdsed.data.audio import AUDIO_SUFFIXES, AudioInfo, AudioReadError, inspect_many, stream_audio
from birdsed.errors import DataError

logger = logging.getLogger(__name__)

LABELS_FILE = "soundscape_labels.csv"
LABEL_COLUMNS = ("filename", "start", "end", "labels")
VALIDATION_CHANNEL = "soundscape_validation"
UNLABELLED_CHANNEL = "soundscapes"
# Errors name at most this many offending rows or labels: enough to find the pattern.
SHOWN = 5


@dataclass(frozen=True)
class SoundscapeFile:
    path: Path
    name: str  # the path below the channel, POSIX style: the `filename` of labels and pseudo-labels
    frames: int  # at the job's sample rate (from the header)


def find_audio(channel_dir: Path) -> list[Path]:
    """Audio files anywhere below `channel_dir`, sorted by path (hidden files and folders skipped)."""
    found = []
    for path in channel_dir.rglob("*"):
        parts = path.relative_to(channel_dir).parts
        if path.suffix.lower() in AUDIO_SUFFIXES and not any(part.startswith(".") for part in parts):
            if path.is_file():
                found.append(path)
    return sorted(found)


def usable_files(paths: Sequence[Path], channel_dir: Path, sample_rate: int) -> list[SoundscapeFile]:
    """Probe every file (header + first and last second); skip and name the unusable ones."""
    infos = inspect_many(list(paths))
    files = []
    for path, info in zip(paths, infos, strict=True):
        if isinstance(info, AudioInfo):
            frames = math.ceil(info.frames * sample_rate / info.sample_rate)
            files.append(SoundscapeFile(path, path.relative_to(channel_dir).as_posix(), frames))
        else:
            logger.warning("Skipping %s: %s", path, info)
    return files


def check_skipped(channel: str, listed: int, usable: int, max_fraction: float) -> None:
    """A few bad recordings are skipped; none usable, or more than `max_fraction` unusable, stops the job."""
    skipped = listed - usable
    logger.info("channel=%s usable_files=%d skipped_files=%d", channel, usable, skipped)
    if listed and (not usable or skipped / listed > max_fraction):
        raise DataError(
            f"{skipped} of the {listed} recordings of the '{channel}' channel could not be used (more than "
            f"max_skipped_fraction={max_fraction:g}); the log names each file and its reason."
        )


def unlabelled_files(channel_dir: Path, sample_rate: int, max_skipped_fraction: float) -> list[SoundscapeFile]:
    """The usable recordings of the `soundscapes` channel."""
    paths = find_audio(channel_dir)
    if not paths:
        raise DataError(
            f"The '{UNLABELLED_CHANNEL}' channel ({channel_dir}) holds no audio files "
            f"({', '.join(AUDIO_SUFFIXES)}); point it at unlabelled soundscapes, e.g. BirdCLEF's train_soundscapes/."
        )
    files = usable_files(paths, channel_dir, sample_rate)
    check_skipped(UNLABELLED_CHANNEL, len(paths), len(files), max_skipped_fraction)
    return files


# ---- the labels of soundscape_validation ----


@dataclass(frozen=True)
class LabelledWindows:
    """The windows of `soundscape_labels.csv` whose recording is usable, in file order, then start."""

    files: list[SoundscapeFile]
    file_index: np.ndarray  # [N] index into `files`
    starts: np.ndarray  # [N] seconds
    ends: np.ndarray  # [N] seconds
    truth: np.ndarray  # [N, K] int64 multi-hot

    def __len__(self) -> int:
        return len(self.starts)


def read_labels_file(channel_dir: Path) -> pd.DataFrame:
    """`soundscape_labels.csv` with its columns checked and typed: filename, start, end (floats), labels (lists).

    Any malformed row is an error naming its line: these are the labels a model is judged by.
    """
    path = channel_dir / LABELS_FILE
    if not path.is_file():
        raise DataError(
            f"The '{VALIDATION_CHANNEL}' channel ({channel_dir}) has no {LABELS_FILE}: it needs one with the "
            "columns filename,start,end,labels (one row per window) beside the audio files."
        )
    try:
        # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DataError(f"{path} is not a readable CSV file ({reason}).") from None
    frame.columns = [str(column).strip().lower() for column in frame.columns]
    missing = [column for column in LABEL_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(
            f"{path} lacks the column(s) {', '.join(missing)}; expected the header filename,start,end,labels "
            f"(found: {', '.join(frame.columns) or 'nothing'})."
        )
    if frame.empty:
        raise DataError(f"{path} lists no windows.")
    frame = frame[list(LABEL_COLUMNS)].apply(lambda column: column.str.strip())
    return _typed(frame, path)


def _typed(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    start = pd.to_numeric(frame["start"], errors="coerce")
    end = pd.to_numeric(frame["end"], errors="coerce")
    valid = start.notna() & end.notna() & np.isfinite(start) & np.isfinite(end) & (start >= 0) & (end > start)
    _reject(frame, ~valid, path, "start and end must be seconds with 0 <= start < end")
    names = frame["filename"]
    bad_name = names.eq("") | names.map(_leaves_channel)
    _reject(frame, bad_name, path, "filename must be a path below the channel (no absolute path, no '..')")
    return frame.assign(
        filename=names.map(lambda name: PurePosixPath(name).as_posix()),  # "./a.ogg" and "a.ogg": one recording
        start=start.astype(float),
        end=end.astype(float),
        labels=frame["labels"].str.split(),
    )


def _leaves_channel(name: str) -> bool:
    pure = PurePosixPath(name.replace("\\", "/"))
    return pure.is_absolute() or ".." in pure.parts


def _reject(frame: pd.DataFrame, bad: pd.Series, path: Path, rule: str) -> None:
    if not bad.any():
        return
    rows = frame[bad].head(SHOWN)
    # Line numbers as an editor shows them: the header is line 1.
    lines = zip(rows.index, rows.to_numpy(), strict=True)
    shown = "; ".join(f"line {index + 2}: {','.join(map(str, row))}" for index, row in lines)
    raise DataError(f"{path}: {int(bad.sum())} row(s) are malformed ({rule}), e.g. {shown}.")


def check_known_labels(frame: pd.DataFrame, labels: Sequence[str], path: Path) -> None:
    """Every class named in the windows must be one the model is trained on."""
    known = set(labels)
    unknown = sorted({label for window in frame["labels"] for label in window} - known)
    if not unknown:
        return
    affected = int(frame["labels"].map(lambda window: any(label not in known for label in window)).sum())
    hint = ""
    if "nocall" in unknown:
        hint = " Leave 'labels' empty for a window without birds ('nocall' is BirdCLEF's spelling of that)."
    raise DataError(
        f"{path}: {len(unknown)} label(s) in {affected} window(s) are not classes of the training data: "
        f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}. Every soundscape label must be a "
        f"primary label of the train channel.{hint}"
    )


def labelled_windows(
    channel_dir: Path, labels: Sequence[str], sample_rate: int, max_skipped_fraction: float
) -> LabelledWindows:
    """Parse and check the labels, probe the recordings they name, and drop windows that cannot be scored."""
    frame = read_labels_file(channel_dir)
    path = channel_dir / LABELS_FILE
    check_known_labels(frame, labels, path)
    names = sorted(set(frame["filename"]))
    missing = [name for name in names if not (channel_dir / name).is_file()]
    if missing:
        logger.warning(
            "%d recording(s) named in %s are not in the channel (e.g. %s): their windows are skipped",
            len(missing), LABELS_FILE, ", ".join(missing[:SHOWN]),
        )  # fmt: skip
    files = usable_files([channel_dir / name for name in names if name not in set(missing)], channel_dir, sample_rate)
    check_skipped(VALIDATION_CHANNEL, len(names), len(files), max_skipped_fraction)
    return _windows(frame, files, labels, sample_rate, path)


def _windows(
    frame: pd.DataFrame, files: list[SoundscapeFile], labels: Sequence[str], sample_rate: int, path: Path
) -> LabelledWindows:
    position = {file.name: index for index, file in enumerate(files)}
    seconds = np.array([file.frames / sample_rate for file in files])
    file_index = frame["filename"].map(lambda name: position.get(name, -1)).to_numpy()
    known = file_index >= 0
    inside = np.zeros(len(frame), dtype=bool)
    inside[known] = frame["start"].to_numpy()[known] < seconds[file_index[known]]
    beyond = int((known & ~inside).sum())
    if beyond:
        logger.warning("%d window(s) of %s start after the end of their recording: not scored", beyond, path.name)
    kept = frame[inside].assign(file_index=file_index[inside])
    kept = kept.sort_values(["file_index", "start", "end"], kind="stable")
    if kept.empty:
        raise DataError(f"No window of {path} lies within a usable recording.")
    column = {label: index for index, label in enumerate(labels)}
    truth = np.zeros((len(kept), len(labels)), dtype=np.int64)
    for row, window in enumerate(kept["labels"]):
        truth[row, [column[label] for label in window]] = 1
    logger.info(
        "channel=%s windows=%d files=%d windows_skipped=%d", VALIDATION_CHANNEL, len(kept), len(files),
        len(frame) - len(kept),
    )  # fmt: skip
    return LabelledWindows(
        files=files,
        file_index=kept["file_index"].to_numpy(dtype=np.int64),
        starts=kept["start"].to_numpy(dtype=np.float64),
        ends=kept["end"].to_numpy(dtype=np.float64),
        truth=truth,
    )


# ---- windows read by streaming ----


def read_spans(path: Path, sample_rate: int, spans: Iterable[tuple[int, int]]) -> Iterator[np.ndarray]:
    """The samples `[start, stop)` of each span, in one streaming pass; spans must come sorted by start.

    Each result has exactly `stop - start` samples (zeros past the end of the recording). Only the
    samples from the current span's start onwards are kept, so memory stays flat.
    """
    blocks = stream_audio(path, sample_rate)
    buffer, offset, exhausted = np.zeros(0, dtype=np.float32), 0, False
    for start, stop in spans:
        while True:
            drop = min(max(start - offset, 0), len(buffer))
            buffer, offset = buffer[drop:], offset + drop
            if exhausted or offset + len(buffer) >= stop:
                break
            block = next(blocks, None)
            if block is None:
                exhausted = True
            else:
                buffer = np.concatenate([buffer, block])
        piece = buffer[max(start - offset, 0) : max(stop - offset, 0)]
        yield np.pad(piece, (0, stop - start - len(piece)))


def consecutive_windows(path: Path, sample_rate: int, length: int) -> Iterator[np.ndarray]:
    """Consecutive `length`-sample windows of a recording, the last zero-padded (as `predict.cut_windows`)."""
    buffer = np.zeros(0, dtype=np.float32)
    for block in stream_audio(path, sample_rate):
        buffer = np.concatenate([buffer, block])
        whole = len(buffer) // length
        for index in range(whole):
            yield buffer[index * length : (index + 1) * length]
        buffer = buffer[whole * length :]
    if len(buffer):
        yield np.pad(buffer, (0, length - len(buffer)))


def window_count(frames: int, length: int) -> int:
    """How many windows `consecutive_windows` yields for a recording of `frames` samples."""
    return math.ceil(frames / length)


def safe_spans(path: Path, sample_rate: int, spans: Sequence[tuple[int, int]]) -> Iterator[np.ndarray]:
    """`read_spans`, but a recording that fails part-way gives zeros for the rest (logged once)."""
    reader = read_spans(path, sample_rate, spans)
    for index in range(len(spans)):
        try:
            yield next(reader)
        except AudioReadError as error:
            logger.warning("%s failed to decode after %d window(s) (%s); the rest count as silence", path, index, error)
            for start, stop in spans[index:]:
                yield np.zeros(stop - start, dtype=np.float32)
            return
