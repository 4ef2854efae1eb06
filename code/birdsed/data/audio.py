"""Decoding (soundfile) and resampling (torchaudio) of recordings of any format and rate."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".ogg", ".flac", ".wav", ".mp3", ".oga", ".opus")
# Crops travel from the workers as 16-bit PCM (half the bytes of float32), full scale = this value.
PCM_SCALE = 32767


class AudioReadError(Exception):
    """A recording that cannot be used; the message is the reason logged for the skip."""


@dataclass(frozen=True)
class AudioInfo:
    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def probe(path: Path) -> AudioInfo:
    """Read the header of a recording; raise `AudioReadError` if it is unusable."""
    if not path.is_file():
        raise AudioReadError("file not found")
    if path.stat().st_size == 0:
        raise AudioReadError("empty file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioReadError(f"not readable audio ({error})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioReadError("no audio frames")
    return AudioInfo(frames=int(info.frames), sample_rate=int(info.samplerate), channels=int(info.channels))


def probe_many(paths: list[Path], threads: int = 8) -> list[AudioInfo | AudioReadError]:
    """Probe many files in parallel (header reads are I/O bound); errors are returned, not raised."""

    def safe_probe(path: Path) -> AudioInfo | AudioReadError:
        try:
            return probe(path)
        except AudioReadError as error:
            return error

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(safe_probe, paths))


@functools.lru_cache(maxsize=16)
def _resampler(orig_rate: int, new_rate: int) -> torchaudio.transforms.Resample:
    # The windowed-sinc kernel is built once per rate pair and reused for every crop.
    return torchaudio.transforms.Resample(orig_rate, new_rate)


def resample(waveform: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a mono float32 waveform with torchaudio's band-limited sinc interpolation."""
    if orig_rate == new_rate:
        return waveform
    with torch.no_grad():
        resampled = _resampler(orig_rate, new_rate)(torch.from_numpy(np.ascontiguousarray(waveform)))
    return resampled.numpy()


def _to_mono(frames: np.ndarray) -> np.ndarray:
    return frames.mean(axis=1, dtype=np.float32) if frames.ndim == 2 else frames.astype(np.float32)


@contextlib.contextmanager
def _native_stderr_silenced(enabled: bool):
    """Silence C-level stderr (file descriptor 2) for the duration of a read.

    libmpg123, inside libsndfile, prints a "part2_3_length too large" line for the first frame
    after every seek in an MP3 (its bit reservoir lies before the seek point). The frame is simply
    decoded short; the message is noise that would flood the job log, once per crop.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def read_segment(path: Path, start_seconds: float, seconds: float | None, sample_rate: int) -> np.ndarray:
    """Decode `seconds` of audio from `start_seconds` (all of it when None), mono, at `sample_rate`.

    Only the asked span is decoded (seek + read), so a 5 s crop of a 10 min file stays cheap.
    The result may be shorter than asked at the end of the file.
    """
    try:
        with sf.SoundFile(str(path)) as audio:
            native_rate = audio.samplerate
            start = min(int(round(start_seconds * native_rate)), max(audio.frames - 1, 0))
            count = -1 if seconds is None else int(round(seconds * native_rate))
            with _native_stderr_silenced(bool(start) and audio.format == "MP3"):
                if start:
                    audio.seek(start)
                frames = audio.read(frames=count, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioReadError(f"decoding failed ({error})") from None
    mono = _to_mono(frames)
    if not np.isfinite(mono).all():
        raise AudioReadError("non-finite samples")
    return resample(mono, native_rate, sample_rate)


def to_pcm16(waveform: np.ndarray) -> tuple[np.ndarray, int]:
    """float waveform -> (int16 samples, number of samples beyond [-1, 1] that had to be clipped)."""
    clipped = int(np.count_nonzero(np.abs(waveform) > 1.0))
    return np.round(np.clip(waveform, -1.0, 1.0) * PCM_SCALE).astype(np.int16), clipped


def pcm16_to_float(samples: torch.Tensor) -> torch.Tensor:
    """int16 PCM -> float32 in [-1, 1] (on whatever device the samples are)."""
    return samples.float() * (1.0 / PCM_SCALE)


@dataclass(frozen=True)
class RawAudio:
    """A crop source for `CropDataset`: seek + decode + resample the asked span of the original file."""

    sample_rate: int

    def read(self, path: Path, start: int, count: int) -> np.ndarray:
        """int16 samples `[start, start + count)` at `sample_rate` (shorter at the end of the recording)."""
        waveform = read_segment(path, start / self.sample_rate, count / self.sample_rate, self.sample_rate)
        return to_pcm16(waveform)[0]


def decode(path: Path, sample_rate: int) -> np.ndarray:
    """Decode a whole recording, mono, at `sample_rate`."""
    return read_segment(path, 0.0, None, sample_rate)


def fit_length(waveform: np.ndarray, length: int) -> np.ndarray:
    """Pad with zeros (short clips) or cut to exactly `length` samples."""
    if len(waveform) >= length:
        return waveform[:length]
    return np.pad(waveform, (0, length - len(waveform)))
