"""Decoding (soundfile) and resampling (torchaudio) of recordings of any format and rate."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
from collections.abc import Iterator
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
        with _native_stderr_silenced(_is_mp3(path)):
            info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioReadError(f"not readable audio ({error})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioReadError("no audio frames")
    return AudioInfo(frames=int(info.frames), sample_rate=int(info.samplerate), channels=int(info.channels))


CHECK_SECONDS = 1.0  # decoded at each end of a recording by the quick check
CHECK_BLOCK_FRAMES = 1 << 18  # the full check decodes in blocks: a long file never sits whole in memory


def inspect(path: Path, full: bool = False) -> AudioInfo:
    """Header, then decoded samples: raise `AudioReadError` with the reason a recording is unusable.

    The quick check decodes the first and the last second (catching most truncated and corrupt
    files for the price of two seeks); the full check decodes everything, finds non-finite samples
    anywhere and measures the true length (a VBR MP3's header only estimates it).
    """
    info = probe(path)
    try:
        with _native_stderr_silenced(_is_mp3(path)), sf.SoundFile(str(path)) as audio:
            frames = _decode_all(audio) if full else _decode_ends(audio, info)
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioReadError(f"decoding failed ({error})") from None
    if frames == 0:
        raise AudioReadError("no audio frames could be decoded")
    return AudioInfo(frames=frames if full else info.frames, sample_rate=info.sample_rate, channels=info.channels)


def _check_finite(block: np.ndarray, where: str) -> None:
    if not np.isfinite(block).all():
        raise AudioReadError(f"non-finite samples (NaN or infinity) {where}")


def _decode_ends(audio: sf.SoundFile, info: AudioInfo) -> int:
    span = int(CHECK_SECONDS * info.sample_rate)
    head = audio.read(frames=span, dtype="float32", always_2d=True)
    _check_finite(head, "at the start")
    if info.frames > span:
        audio.seek(max(info.frames - span, 0))
        tail = audio.read(frames=span, dtype="float32", always_2d=True)
        _check_finite(tail, "at the end")
    return len(head)


def _decode_all(audio: sf.SoundFile) -> int:
    """Decode to the real end (not `SoundFile.blocks`, which trusts the header's length)."""
    frames = 0
    while len(block := audio.read(frames=CHECK_BLOCK_FRAMES, dtype="float32", always_2d=True)):
        _check_finite(block, f"near {frames / audio.samplerate:.1f} s")
        frames += len(block)
    return frames


def inspect_many(paths: list[Path], full: bool = False, threads: int | None = None) -> list[AudioInfo | AudioReadError]:
    """Inspect many files in parallel (libsndfile releases the GIL); errors are returned, not raised."""

    def safe_inspect(path: Path) -> AudioInfo | AudioReadError:
        try:
            return inspect(path, full)
        except AudioReadError as error:
            return error

    with ThreadPoolExecutor(max_workers=threads or min(32, (os.cpu_count() or 1) * 2)) as pool:
        return list(pool.map(safe_inspect, paths))


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


class _NativeStderrSilencer:
    """Silence C-level stderr (file descriptor 2) while MP3s are opened, sought or decoded.

    libmpg123, inside libsndfile, prints a "part2_3_length too large" line for the first frame
    after every seek in an MP3 (its bit reservoir lies before the seek point; the frame is simply
    decoded short) and "Xing stream size off" for files whose header misstates their size. Both are
    noise that would flood the job log, once per crop. File descriptor 2 is one per process and
    several threads may read at once, so the redirect is shared and counted: the first reader
    redirects, the last one restores.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers = 0
        self._saved: int | None = None

    @contextlib.contextmanager
    def __call__(self, enabled: bool) -> Iterator[None]:
        if not enabled:
            yield
            return
        self._enter()
        try:
            yield
        finally:
            self._exit()

    def _enter(self) -> None:
        with self._lock:
            self._readers += 1
            if self._readers == 1:
                sys.stderr.flush()
                self._saved = os.dup(2)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)

    def _exit(self) -> None:
        with self._lock:
            self._readers -= 1
            if self._readers == 0 and self._saved is not None:
                os.dup2(self._saved, 2)
                os.close(self._saved)
                self._saved = None


_native_stderr_silenced = _NativeStderrSilencer()  # one per process, as file descriptor 2 is


def _is_mp3(path: Path) -> bool:
    return path.suffix.lower() == ".mp3"


def read_segment(path: Path, start_seconds: float, seconds: float | None, sample_rate: int) -> np.ndarray:
    """Decode `seconds` of audio from `start_seconds` (all of it when None), mono, at `sample_rate`.

    Only the asked span is decoded (seek + read), so a 5 s crop of a 10 min file stays cheap.
    The result may be shorter than asked at the end of the file.
    """
    try:
        with _native_stderr_silenced(_is_mp3(path)), sf.SoundFile(str(path)) as audio:
            native_rate = audio.samplerate
            start = min(int(round(start_seconds * native_rate)), max(audio.frames - 1, 0))
            count = -1 if seconds is None else int(round(seconds * native_rate))
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


# placeholder: replaced by the issue-12 streaming decoder at merge
def stream_audio(path: Path, sample_rate: int, block_seconds: float = 60.0) -> Iterator[np.ndarray]:
    """Consecutive mono float32 blocks of a recording at `sample_rate`; raises `AudioReadError`.

    Only one block is decoded at a time, so memory stays flat however long the recording. Each block
    is resampled on its own (a block edge may carry a tiny resampling transient).
    """
    silenced = _native_stderr_silenced
    try:
        with silenced(_is_mp3(path)):
            audio = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioReadError(f"not readable audio ({error})") from None
    with audio:
        native_rate = audio.samplerate
        frames = max(1, int(block_seconds * native_rate))
        while True:
            try:
                with silenced(_is_mp3(path)):
                    block = audio.read(frames=frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, ValueError) as error:
                raise AudioReadError(f"decoding failed ({error})") from None
            if not len(block):
                return
            mono = _to_mono(block)
            if not np.isfinite(mono).all():
                raise AudioReadError("non-finite samples")
            yield resample(mono, native_rate, sample_rate)
