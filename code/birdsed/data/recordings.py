"""Which recordings of a channel can be used: probing, the skip policy, and where crops are read from.

A channel holds either raw audio (every file probed once at start, crops decoded per item) or a waveform cache
made by `code/prepare.py` (recognised by its `cache.json`; its arrays are checked against the index). Unusable
files are skipped, each named with its reason, and counted against `max_skipped_fraction`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from birdsed.config import Config
from birdsed.data import cache, metadata
from birdsed.data.audio import AudioInfo, AudioReadError, RawAudio, inspect_many
from birdsed.data.dataset import CropSource
from birdsed.errors import DataError

logger = logging.getLogger(__name__)


def usable_recordings(directory: Path, channel: str, cfg: Config) -> tuple[pd.DataFrame, CropSource]:
    """The usable recordings of a channel and the source their crops are read from."""
    if cache.is_cache(directory):
        (frame, listed), source = (
            cache.usable_recordings(directory, channel, cfg.data.sample_rate),
            cache.CachedWaveforms(),
        )
    else:
        (frame, listed), source = (
            _usable(metadata.read_metadata(directory), channel, cfg.data.audio_check),
            RawAudio(cfg.data.sample_rate),
        )
    check_skipped_fraction(channel, listed, len(frame), cfg.data.max_skipped_fraction)
    return frame, source


def _usable(frame: pd.DataFrame, channel: str, audio_check: str) -> tuple[pd.DataFrame, int]:
    """Check every file once; skip (and name, with the reason) those that cannot be used.

    Returns the usable rows (with `seconds`) and the number of rows listed, for the skip limit."""
    infos = _inspect(frame, full=audio_check == "full")
    usable = [isinstance(info, AudioInfo) for info in infos]
    for path, info in zip(frame["path"], infos, strict=True):
        if not isinstance(info, AudioInfo):
            logger.warning("Skipping %s: %s", path, info)
    skipped = len(frame) - sum(usable)
    logger.info(
        "channel=%s source=raw audio_check=%s skipped_files=%d usable_files=%d",
        channel, audio_check, skipped, sum(usable),
    )  # fmt: skip
    if not any(usable):
        raise DataError(
            f"None of the {len(frame)} recordings listed in the '{channel}' channel's metadata could be "
            "read (see the log for each file's reason); check that train_audio/ holds the files "
            "named in the 'filename' column."
        )
    seconds = [info.seconds for info in infos if isinstance(info, AudioInfo)]
    return frame[usable].assign(seconds=seconds).reset_index(drop=True), len(frame)


def _inspect(frame: pd.DataFrame, full: bool) -> list[AudioInfo | AudioReadError]:
    """`inspect_many` of the rows' files; a name no file system can hold is a skip, never probed (it would raise)."""
    too_long = [metadata.name_too_long(name) for name in frame["filename"]]
    probed = iter(
        inspect_many([path for path, reason in zip(frame["path"], too_long, strict=True) if not reason], full)
    )
    return [AudioReadError(reason) if reason else next(probed) for reason in too_long]


def check_skipped_fraction(channel: str, listed: int, usable: int, max_fraction: float) -> None:
    """A few bad files are normal; many mean the wrong data or a broken upload, so stop before training."""
    skipped = listed - usable
    if listed and skipped / listed > max_fraction:
        raise DataError(
            f"{skipped} of the {listed} recordings in the '{channel}' channel ({skipped / listed:.0%}) could not "
            f"be used, more than max_skipped_fraction={max_fraction:g}; the log names each file and its reason. "
            "Fix or remove those files (or raise max_skipped_fraction to train on the rest)."
        )
