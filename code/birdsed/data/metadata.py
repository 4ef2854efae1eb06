"""`train_metadata.csv`: parsing, label vocabulary, ratings, split, class and sample weights.

Rules (documented in docs/data.md):
- `secondary_labels` is a Python-list string (`"['a', 'b']"`); secondary labels outside the
  vocabulary (the primary labels of the training data) are ignored and counted.
- `rating` 0 means "not rated" on xeno-canto, so 0 and empty ratings are both filled: with the mean
  rating of the recording's primary label, then with the global mean, else 5.
- Class weights are `count ** -0.5` of each primary label in the training split; they drive the
  weighted sampler and the loss.
"""

from __future__ import annotations

import ast
import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from birdsed.errors import DataError

logger = logging.getLogger(__name__)

METADATA_FILE = "train_metadata.csv"
AUDIO_DIR = "train_audio"
REQUIRED_COLUMNS = ("primary_label", "secondary_labels", "rating", "filename")
MAX_RATING = 5.0
# A recording rated 1 still teaches something: its loss weight is rating / 5, at least this.
MIN_RATING_WEIGHT = 0.2
# Separators tried, in order, when the header lacks the required columns split at commas.
DELIMITERS = (",", ";", "\t", "|")
# What a spreadsheet on Windows saves "CSV" in; it decodes Latin-1 text the same way.
FALLBACK_ENCODING = "cp1252"
# The longest file or folder name (one path part) that Linux file systems (ext4, xfs) hold.
NAME_MAX_BYTES = 255


@dataclass(frozen=True)
class Recordings:
    """The usable recordings of one split, aligned row by row with their targets and weights."""

    paths: list[Path]
    primary_labels: list[str]
    targets: np.ndarray  # [N, C] float32, 1 for the primary label, secondary_weight for secondary
    sample_weights: np.ndarray  # [N] float32, rating-based, mean 1 over the training split
    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.paths)


def read_metadata(channel_dir: Path) -> pd.DataFrame:
    """Read and normalise `train_metadata.csv` of a channel; paths are made absolute.

    Rows that cannot be used (no label, no filename, a filename leaving `train_audio/`, a repeated
    filename) are dropped and counted; odd values are normalised as documented in docs/data.md.
    """
    csv_path = channel_dir / METADATA_FILE
    frame = _load_csv(csv_path)
    frame = _drop_unusable_rows(frame, csv_path)
    secondary = frame["secondary_labels"].map(parse_secondary_labels)
    malformed = frame["secondary_labels"][secondary.isna()]
    if len(malformed):
        logger.warning(
            "%d malformed secondary_labels value(s) read as [] (e.g. %s)", len(malformed), list(malformed[:3])
        )
    rating = pd.to_numeric(frame["rating"], errors="coerce")
    odd_ratings = int((frame["rating"].str.strip().ne("") & ~rating.between(0, MAX_RATING)).sum())
    if odd_ratings:
        logger.warning("%d rating(s) not a number from 0 to 5: treated as unrated", odd_ratings)
    frame = frame.assign(
        secondary_labels=secondary.map(lambda labels: labels or []),
        rating=rating.where(rating.between(0, MAX_RATING)),
        path=[channel_dir / AUDIO_DIR / name for name in frame["filename"]],
    )
    _log_label_oddities(frame)
    return frame.reset_index(drop=True)


def _load_csv(csv_path: Path) -> pd.DataFrame:
    if not csv_path.is_file():
        raise DataError(f"{csv_path} is missing: the channel must hold {METADATA_FILE} beside {AUDIO_DIR}/.")
    text = _read_text(csv_path)
    header = text.split("\n", 1)[0]
    delimiter = _delimiter(header, csv_path)
    try:
        # skipinitialspace: "a, b, c" (spaces after the commas) reads as "a,b,c", quoted values included.
        frame = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{csv_path} is not a readable CSV file: {' '.join(str(error).split())}.") from None
    frame.columns = _column_names(frame.columns, header, delimiter, csv_path)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(
            f"{csv_path} lacks the required column(s) {', '.join(missing)}; it needs {', '.join(REQUIRED_COLUMNS)}"
            f"{_delimiter_hint(header)}."
        )
    if frame.empty:
        raise DataError(f"{csv_path} has no rows: there is nothing to train on.")
    return frame.assign(
        primary_label=frame["primary_label"].str.strip(), filename=_normalise_filenames(frame["filename"])
    )


def _read_text(csv_path: Path) -> str:
    """The file as text: UTF-8 (with or without a byte-order mark), else Windows-1252 with a warning."""
    raw = csv_path.read_bytes()
    if b"\x00" in raw:
        raise DataError(f"{csv_path} is not a text CSV file (it holds NUL bytes); save the metadata as UTF-8 CSV.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        position = error.start
    try:
        text = raw.decode(FALLBACK_ENCODING)
    except UnicodeDecodeError:
        raise DataError(
            f"{csv_path} is not UTF-8 text (undecodable byte at position {position}); save it as UTF-8."
        ) from None
    logger.warning(
        "%s is not UTF-8 (first undecodable byte at position %d): read as Windows-1252 (Latin-1). Save it as UTF-8 "
        "to be sure that labels and filenames with accents are read as meant.",
        csv_path,
        position,
    )
    return text


def _delimiter(header: str, csv_path: Path) -> str:
    """',' unless the header only has the required columns when split at another separator (';', tab, '|')."""
    for delimiter in DELIMITERS:
        names = {name.strip() for name in next(csv.reader([header], delimiter=delimiter), [])}
        if set(REQUIRED_COLUMNS) <= names:
            if delimiter != ",":
                logger.warning("%s is separated by %r, not by commas: read it as such", csv_path, delimiter)
            return delimiter
    return ","


def _delimiter_hint(header: str) -> str:
    found = [delimiter for delimiter in DELIMITERS[1:] if delimiter in header]
    return (
        f" (the header holds {found[0]!r}: is the file separated by {found[0]!r}? It must be a comma-separated CSV)"
        if found
        else ""
    )


def _column_names(columns: pd.Index, header: str, delimiter: str, csv_path: Path) -> list[str]:
    """Column names without surrounding spaces; a repeated name warns, and its first column is the one used."""
    names = [name.strip() for name in next(csv.reader([header], delimiter=delimiter), [])]
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    if repeated:
        logger.warning(
            "%s names column(s) %s more than once; the first column of each name is used", csv_path, repeated
        )
    stripped, seen = [], set()
    for column in columns:
        name = str(column).strip()
        # pandas renames exact repeats "name.1"; names that became equal only once stripped get the same.
        while name in seen:
            name += ".1"
        seen.add(name)
        stripped.append(name)
    return stripped


def _normalise_filenames(filenames: pd.Series) -> pd.Series:
    """Strip spaces and turn Windows separators ('abc1\\XC1.ogg') into '/' (the layout of train_audio/)."""
    filenames = filenames.str.strip()
    windows = filenames.str.contains("\\", regex=False)
    if windows.any():
        logger.warning(
            "%d filename(s) use Windows backslashes; read with '/' instead (e.g. %s)",
            int(windows.sum()),
            list(filenames[windows][:3]),
        )
    return filenames.str.replace("\\", "/", regex=False)


def name_too_long(filename: str) -> str | None:
    """The skip reason for a name with a path part longer than file systems allow, else None.

    `Path.is_file()` raises (ENAMETOOLONG) for such a name instead of answering False, so every
    place that probes a metadata filename asks this first.
    """
    longest = max((len(part.encode("utf-8", "surrogateescape")) for part in PurePosixPath(filename).parts), default=0)
    if longest > NAME_MAX_BYTES:
        return f"file name too long (a path part of {longest} bytes; file systems allow {NAME_MAX_BYTES})"
    return None


def _drop_unusable_rows(frame: pd.DataFrame, csv_path: Path) -> pd.DataFrame:
    reasons = pd.Series("", index=frame.index)
    reasons[frame["primary_label"].eq("")] = "no primary_label"
    reasons[frame["filename"].eq("") & reasons.eq("")] = "no filename"
    escapes = frame["filename"].map(_leaves_audio_dir) & reasons.eq("")
    reasons[escapes] = "filename outside train_audio/"
    repeated = frame["filename"].duplicated(keep="first") & reasons.eq("")
    reasons[repeated] = "repeated filename (first row kept)"
    dropped = reasons.ne("")
    for reason, count in reasons[dropped].value_counts().items():
        examples = list(frame.loc[reasons.eq(reason), "filename"][:3])
        logger.warning("Dropped %d metadata row(s): %s (e.g. %s)", count, reason, examples)
    if dropped.all():
        raise DataError(f"{csv_path} has no usable rows: every row lacks a label or a valid, unique filename.")
    return frame[~dropped]


def _leaves_audio_dir(filename: str) -> bool:
    """Absolute paths and '..' would read files outside the channel's train_audio/."""
    path = PurePosixPath(filename.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts


def _log_label_oddities(frame: pd.DataFrame) -> None:
    labels = pd.Series(frame["primary_label"].unique())
    folded = labels.groupby(labels.str.casefold()).agg(list)
    for variants in folded[folded.map(len) > 1]:
        logger.warning("Labels %s differ only in case: they are distinct classes", variants)
    singles = frame["primary_label"].value_counts()
    singles = list(singles[singles == 1].index)
    if singles:
        logger.info(
            "%d class(es) have a single recording: trained on, never validated (e.g. %s)", len(singles), singles[:5]
        )


def parse_secondary_labels(value: object) -> list[str] | None:
    """`"['a', 'b']"` -> `['a', 'b']`; empty gives `[]`, malformed gives None."""
    text = str(value).strip()
    if not text or text in {"[]", "nan", "None"}:
        return []
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(parsed, str):
        parsed = [parsed]
    if not isinstance(parsed, (list, tuple)):
        return None
    return [str(label).strip() for label in parsed if str(label).strip()]


def fill_ratings(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill unrated recordings with their label's mean rating, then the global mean, else 5."""
    rating = frame["rating"].where(frame["rating"] > 0)
    unrated = int(rating.isna().sum())
    by_label = rating.groupby(frame["primary_label"]).transform("mean")
    global_mean = rating.mean()
    filled = rating.fillna(by_label).fillna(MAX_RATING if np.isnan(global_mean) else global_mean)
    if unrated:
        logger.info("Filled %d missing or zero rating(s) (per label, then global mean)", unrated)
    return frame.assign(rating=filled)


def build_vocabulary(frame: pd.DataFrame) -> list[str]:
    """Class names in output order: the sorted primary labels."""
    return sorted(frame["primary_label"].unique())


def build_targets(frame: pd.DataFrame, labels: list[str], secondary_weight: float) -> np.ndarray:
    """Multi-hot targets; secondary labels outside the vocabulary are ignored and counted."""
    index = {label: position for position, label in enumerate(labels)}
    targets = np.zeros((len(frame), len(labels)), dtype=np.float32)
    ignored = 0
    for row, (primary, secondary) in enumerate(zip(frame["primary_label"], frame["secondary_labels"], strict=False)):
        for label in secondary:
            if label in index:
                targets[row, index[label]] = max(targets[row, index[label]], secondary_weight)
            else:
                ignored += 1
        targets[row, index[primary]] = 1.0
    if ignored:
        logger.info("Ignored %d secondary label(s) outside the training vocabulary", ignored)
    return targets


def split_train_validation(frame: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out one recording of every class that has at least 2, then a random fraction more.

    Every class keeps at least one training recording; classes with a single recording are
    train-only (they cannot be validated without being unseen in training).
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    remaining = frame["primary_label"].value_counts().to_dict()
    validation: list[int] = []
    seen: set[str] = set()
    for row in order:
        label = frame.at[row, "primary_label"]
        if label not in seen and remaining[label] >= 2:
            seen.add(label)
            validation.append(row)
            remaining[label] -= 1
    target_size = int(round(val_fraction * len(frame)))
    chosen = set(validation)
    for row in order:
        if len(validation) >= target_size:
            break
        label = frame.at[row, "primary_label"]
        if row not in chosen and remaining[label] >= 2:
            validation.append(row)
            chosen.add(row)
            remaining[label] -= 1
    train_rows = [row for row in range(len(frame)) if row not in chosen]
    return frame.iloc[train_rows].reset_index(drop=True), frame.iloc[sorted(validation)].reset_index(drop=True)


def class_weights(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """`count ** -0.5` per class (count of primary labels), normalised to mean 1 over classes.

    Classes absent from `frame` get the weight of a class seen once.
    """
    counts = frame["primary_label"].value_counts().reindex(labels).fillna(1.0).to_numpy(dtype=np.float64)
    weights = np.power(np.maximum(counts, 1.0), -0.5)
    return (weights / weights.mean()).astype(np.float32)


def sampling_weights(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """Per-recording sampler weight: the class weight of its primary label."""
    per_class = dict(zip(labels, class_weights(frame, labels), strict=False))
    return np.array([per_class[label] for label in frame["primary_label"]], dtype=np.float64)


def rating_weights(frame: pd.DataFrame) -> np.ndarray:
    """Per-recording loss weight from its (filled) rating, normalised to mean 1."""
    weights = np.clip(frame["rating"].to_numpy(dtype=np.float64) / MAX_RATING, MIN_RATING_WEIGHT, 1.0)
    return (weights / weights.mean()).astype(np.float32)


def make_recordings(frame: pd.DataFrame, labels: list[str], secondary_weight: float) -> Recordings:
    return Recordings(
        paths=list(frame["path"]),
        primary_labels=list(frame["primary_label"]),
        targets=build_targets(frame, labels, secondary_weight),
        sample_weights=rating_weights(frame) if len(frame) else np.zeros(0, np.float32),
        frame=frame,
    )
