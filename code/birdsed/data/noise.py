"""The optional `noise` channel: background recordings for the background-noise augmentation.

Audio files of any format and rate anywhere under the channel, or a waveform cache made by
`code/prepare.py`. Everything is decoded once at the start of the job into one int16 tensor (the
"bank"), which the augmentation keeps on the training device: 1 hour at 32 kHz takes 230 MB.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from birdsed.data import cache
from birdsed.data.audio import AUDIO_SUFFIXES, AudioReadError, decode, to_pcm16
from birdsed.data.recordings import check_skipped_fraction
from birdsed.errors import DataError

logger = logging.getLogger(__name__)


def load_noise_bank(directory: Path | None, sample_rate: int, max_skipped_fraction: float = 1.0) -> torch.Tensor | None:
    """All of the channel's audio at `sample_rate`, concatenated, as int16; None without the channel.

    Unreadable files and damaged cache arrays are skipped (named in the log) and counted against
    `max_skipped_fraction`, as in the train channel.
    """
    if directory is None or not directory.is_dir():
        return None
    if cache.is_cache(directory):
        index = cache.open_for_training(directory, "noise", sample_rate)
        arrays, skipped = cache.load_arrays(index)
        skipped += len(index.unreadable)
    else:
        arrays, skipped = _decode_all(directory, sample_rate)
    arrays = [array for array in arrays if len(array)]
    if not arrays:
        raise DataError(
            f"The 'noise' channel ({directory}) holds no readable audio ({', '.join(AUDIO_SUFFIXES)} or a "
            "waveform cache); give it background recordings, or leave the channel out."
        )
    if skipped:
        logger.info("channel=noise skipped_files=%d usable_files=%d", skipped, len(arrays))
    check_skipped_fraction("noise", len(arrays) + skipped, len(arrays), max_skipped_fraction)
    bank = np.concatenate(arrays)
    logger.info("noise channel: recordings=%d seconds=%.1f", len(arrays), len(bank) / sample_rate)
    return torch.from_numpy(bank)


def _decode_all(directory: Path, sample_rate: int) -> tuple[list[np.ndarray], int]:
    arrays, skipped = [], 0
    for path in sorted(p for p in directory.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
        try:
            arrays.append(to_pcm16(decode(path, sample_rate))[0])
        except AudioReadError as error:
            logger.warning("Skipping noise file %s: %s", path, error)
            skipped += 1
    return arrays, skipped
