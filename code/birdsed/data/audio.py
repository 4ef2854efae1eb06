"""Decoding (soundfile) and resampling (soxr) of recordings of any format and rate.

Two ways in: `read_segment` decodes one span (a training crop: seek + read + resample), and
`stream_audio` decodes a whole recording in blocks (predict, prepare, soundscapes), so memory stays
flat in the recording's length. Both resample with soxr; see `resample` for why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import numpy as np
import soundfile as sf
import soxr
import torch

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
    try:
        if not path.is_file():
            raise AudioReadError("file not found")
        if path.stat().st_size == 0:
            raise AudioReadError("empty file")
        with _mpeg_noise_filtered(_is_mp3(path)):
            info = sf.info(str(path))
    except OSError as error:  # permissions, an I/O error of a flaky mount, a file gone since it was listed
        raise AudioReadError(f"cannot be read ({error.strerror or error})") from None
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
        with _mpeg_noise_filtered(_is_mp3(path)), sf.SoundFile(str(path)) as audio:
            frames = _decode_all(audio) if full else _decode_ends(audio, info)
    except OSError as error:
        raise AudioReadError(f"cannot be read ({error.strerror or error})") from None
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


# soxr rather than torchaudio's `Resample`: torchaudio builds an exact polyphase kernel of
# (new / g) x (orig / g) taps in float64 (g = gcd of the rates), e.g. 16000 x 11141 taps (GBs) for
# 22254 -> 32000 Hz, per rate pair and per process; soxr approximates any ratio with a filter whose
# length depends only on the quality setting (memory bounded, whatever the rates), is about 3x faster
# (librosa's benchmark: 7 ms vs 19 ms) and has a streaming API (`ResampleStream`) that keeps the filter
# state across blocks, so a recording resampled block by block equals the one-shot result exactly
# (checked in the tests). "HQ" is soxr's default and librosa's `soxr_hq`: 20-bit precision, passband
# to 91 % of the lower Nyquist frequency, aliasing rejected (tested in tests/test_resample.py).
RESAMPLE_QUALITY = "HQ"


def resample(waveform: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a mono float32 waveform (soxr, band-limited; memory proportional to the audio)."""
    if orig_rate == new_rate or len(waveform) == 0:
        return waveform
    return soxr.resample(np.ascontiguousarray(waveform, dtype=np.float32), orig_rate, new_rate, RESAMPLE_QUALITY)


def _to_mono(frames: np.ndarray) -> np.ndarray:
    return frames.mean(axis=1, dtype=np.float32) if frames.ndim == 2 else frames.astype(np.float32)


# libmpg123's own stderr lines: "[src/libmpg123/layer3.c:...] error: ...", "Note: Xing stream size ...",
# "Warning: Xing stream size off by ...". Python's logging writes "WARNING ...", which does not match.
MPEG_NOISE_PREFIXES = (b"[src/libmpg123/", b"Note: ", b"Warning: ")


class MpegNoiseFilter:
    """Drop libmpg123's lines from C-level stderr (file descriptor 2) while MP3 calls run; keep the rest.

    libmpg123, inside libsndfile, prints a "part2_3_length too large" line for the first frame after
    every seek in an MP3 (its bit reservoir lies before the seek point; the frame is simply decoded
    short) and "Xing stream size off" for files whose header misstates their size: noise that would
    flood the job log, once per crop. Only a process-wide redirect of fd 2 catches C-level writes, so
    while one of the calls that print (open, seek, read of an MP3) runs, fd 2 points at a private
    temporary file; when the last such call ends, fd 2 is restored and every line that is not
    libmpg123's is written to it. Other threads' messages of that moment are delayed, never lost.
    Several threads may read at once: the redirect is shared and counted (the first call redirects,
    the last restores and forwards).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls = 0
        self._saved: int | None = None
        self._capture: IO[bytes] | None = None
        self._fork_handler_registered = False

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
            if not self._fork_handler_registered:
                # A child forked in the middle of a call must not inherit the redirect.
                os.register_at_fork(after_in_child=self._forget_in_child)
                self._fork_handler_registered = True
            self._calls += 1
            if self._calls == 1:
                sys.stderr.flush()
                self._capture = tempfile.TemporaryFile(prefix="birdsed-stderr-")
                self._saved = os.dup(2)
                os.dup2(self._capture.fileno(), 2)

    def _exit(self) -> None:
        with self._lock:
            self._calls -= 1
            if self._calls == 0 and self._saved is not None and self._capture is not None:
                sys.stderr.flush()
                os.dup2(self._saved, 2)
                os.close(self._saved)
                self._saved = None
                self._forward(self._capture)
                self._capture = None

    @staticmethod
    def _forward(capture: IO[bytes]) -> None:
        with capture:
            capture.seek(0)
            kept = [
                line for line in capture.read().splitlines(keepends=True) if not line.startswith(MPEG_NOISE_PREFIXES)
            ]
        data = b"".join(kept)
        while data:
            data = data[os.write(2, data) :]

    def _forget_in_child(self) -> None:
        self._lock = threading.Lock()
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        self._calls, self._saved, self._capture = 0, None, None


_mpeg_noise_filtered = MpegNoiseFilter()  # one per process, as file descriptor 2 is


def _is_mp3(path: Path) -> bool:
    return path.suffix.lower() == ".mp3"


def read_segment(path: Path, start_seconds: float, seconds: float | None, sample_rate: int) -> np.ndarray:
    """Decode `seconds` of audio from `start_seconds` (all of it when None), mono, at `sample_rate`.

    Only the asked span is decoded (seek + read), so a 5 s crop of a 10 min file stays cheap.
    The result may be shorter than asked at the end of the file.
    """
    try:
        with _mpeg_noise_filtered(_is_mp3(path)), sf.SoundFile(str(path)) as audio:
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


def clip_full_scale(waveform: np.ndarray) -> int:
    """Clip a float waveform to [-1, 1] in place (the rule of training's int16 crops, for every reader);
    returns how many samples were beyond full scale (float WAVs can hold any value)."""
    clipped = int(np.count_nonzero(np.abs(waveform) > 1.0))
    if clipped:
        np.clip(waveform, -1.0, 1.0, out=waveform)
    return clipped


def pcm16_to_float(samples: torch.Tensor) -> torch.Tensor:
    """int16 PCM -> float32 in [-1, 1] (on whatever device the samples are)."""
    return samples.float() * (1.0 / PCM_SCALE)


@dataclass(frozen=True)
class RawAudio:
    """A crop source for `CropDataset`: seek + decode + resample the asked span of the original file.

    Samples beyond full scale are clipped (int16 crops) and logged once per recording and process
    with the count in the first crop that had them, as predict and prepare log theirs.
    """

    sample_rate: int
    _clipped_warned: set[Path] = field(default_factory=set, compare=False, repr=False)

    def read(self, path: Path, start: int, count: int) -> np.ndarray:
        """int16 samples `[start, start + count)` at `sample_rate` (shorter at the end of the recording)."""
        waveform = read_segment(path, start / self.sample_rate, count / self.sample_rate, self.sample_rate)
        samples, clipped = to_pcm16(waveform)
        if clipped and path not in self._clipped_warned:
            self._clipped_warned.add(path)
            logger.warning(
                "%s: %d samples beyond full scale clipped to [-1, 1] in a crop (logged once per file)", path, clipped
            )
        return samples


# ---- streaming: a whole recording in blocks, memory flat in its length ----

NonFinitePolicy = Literal["zero", "raise"]
MAX_SPANS = 100  # non-finite runs remembered per recording (their count is always exact)


@dataclass
class StreamReport:
    """What `read_blocks` found in a recording; complete once its blocks are exhausted.

    `samples` are output samples (at the asked rate); `nonfinite_spans` are `(start, stop)` seconds of
    the first `MAX_SPANS` runs of non-finite input samples, which are replaced by 0 under policy "zero".
    """

    native_rate: int = 0
    native_frames: int = 0
    samples: int = 0
    clipped: int = 0
    nonfinite: int = 0
    nonfinite_spans: list[tuple[float, float]] = field(default_factory=list)

    def describe_nonfinite(self) -> str:
        shown = ", ".join(f"{start:.2f}-{stop:.2f} s" for start, stop in self.nonfinite_spans[:5])
        more = "" if len(self.nonfinite_spans) <= 5 else ", ..."
        return f"{self.nonfinite} non-finite samples (NaN or infinity) at {shown}{more}"


def read_blocks(
    path: Path,
    sample_rate: int,
    block_seconds: float = 60.0,
    report: StreamReport | None = None,
    nonfinite: NonFinitePolicy = "zero",
) -> Iterator[np.ndarray]:
    """Yield a recording as consecutive mono float32 blocks at `sample_rate`, decoding `block_seconds`
    of input at a time; their concatenation equals decoding, downmixing and resampling the whole file.

    The file is decoded to its real end (a VBR MP3's header only estimates its length). Samples are
    clipped to [-1, 1] and counted, non-finite ones are zeroed and located (or raise, policy "raise"),
    in `report`. Raises `AudioReadError` for an unusable file, also after blocks were yielded.
    """
    report = report if report is not None else StreamReport()
    if not path.is_file():
        raise AudioReadError("file not found")
    if path.stat().st_size == 0:
        raise AudioReadError("empty file")
    mp3 = _is_mp3(path)
    try:
        with _mpeg_noise_filtered(mp3):
            audio = sf.SoundFile(str(path))
        with audio:
            report.native_rate = audio.samplerate
            block_frames = max(1, int(round(block_seconds * audio.samplerate)))
            resampler = None
            if audio.samplerate != sample_rate:
                resampler = soxr.ResampleStream(audio.samplerate, sample_rate, 1, "float32", RESAMPLE_QUALITY)
            while True:
                with _mpeg_noise_filtered(mp3):  # only around the calls that print, not between blocks
                    frames = audio.read(frames=block_frames, dtype="float32", always_2d=True)
                last = len(frames) < block_frames
                mono = _sanitise(_to_mono(frames), report, nonfinite)
                report.native_frames += len(mono)
                block = resampler.resample_chunk(mono, last=last) if resampler is not None else mono
                if len(block):
                    report.clipped += clip_full_scale(block)
                    report.samples += len(block)
                    yield block
                if last:
                    break
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioReadError(f"decoding failed ({error})") from None
    if report.native_frames == 0:
        raise AudioReadError("no audio frames could be decoded")


def _sanitise(mono: np.ndarray, report: StreamReport, policy: NonFinitePolicy) -> np.ndarray:
    """Zero (and locate) non-finite samples of one block of input, or raise under policy "raise"."""
    bad = ~np.isfinite(mono)
    if not bad.any():
        return mono
    offset = report.native_frames
    edges = np.flatnonzero(np.diff(np.concatenate([[False], bad, [False]]).astype(np.int8)))
    runs = edges.reshape(-1, 2) + offset
    if policy == "raise":
        raise AudioReadError(f"non-finite samples (NaN or infinity) near {runs[0, 0] / report.native_rate:.1f} s")
    report.nonfinite += int(bad.sum())
    room = MAX_SPANS - len(report.nonfinite_spans)
    report.nonfinite_spans.extend(
        (start / report.native_rate, stop / report.native_rate) for start, stop in runs[:room]
    )
    mono[bad] = 0.0
    return mono


def stream_audio(path: Path, sample_rate: int, block_seconds: float = 60.0) -> Iterator[np.ndarray]:
    """Consecutive mono float32 blocks of a recording at `sample_rate` (see `read_blocks`): the one
    streaming reader for long recordings. Raises `AudioReadError` for an unusable file.

    Clipped and non-finite (zeroed) samples are logged once per file, with their count, at the end.
    """
    report = StreamReport()
    yield from read_blocks(path, sample_rate, block_seconds, report)
    if report.clipped:
        logger.warning("%s: %d samples beyond full scale clipped to [-1, 1]", path, report.clipped)
    if report.nonfinite:
        logger.warning("%s: %s set to 0", path, report.describe_nonfinite())


def decode(path: Path, sample_rate: int) -> np.ndarray:
    """Decode a whole recording, mono, at `sample_rate`, clipped to [-1, 1]; non-finite samples raise."""
    return np.concatenate(list(read_blocks(path, sample_rate, nonfinite="raise")))


def fit_length(waveform: np.ndarray, length: int) -> np.ndarray:
    """Pad with zeros (short clips) or cut to exactly `length` samples."""
    if len(waveform) >= length:
        return waveform[:length]
    return np.pad(waveform, (0, length - len(waveform)))
