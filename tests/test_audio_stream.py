"""Resampling (soxr: bounded memory, quality), block-wise streaming, and what the readers do with
odd samples (beyond full scale, NaN) and with libmpg123's stderr noise (issue 12, items 1-2)."""

from __future__ import annotations

import inspect as pyinspect
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from birdsed.data import audio

ODD_RATES = (22254, 8001, 11127, 44101, 47999, 96001)


def tone(frequency: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def peak(wave: np.ndarray, rate: int) -> tuple[float, float]:
    """(frequency, amplitude) of the strongest sinusoid, from a Hann-windowed spectrum."""
    window = np.hanning(len(wave))
    spectrum = np.abs(np.fft.rfft(wave * window))
    index = int(np.argmax(spectrum))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[index]), float(2 * spectrum[index] / window.sum())


def rss() -> int:
    """Resident bytes of this process now (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- resampling ----


def test_resampling_an_odd_rate_costs_memory_of_the_audio_not_of_the_rate_ratio():
    """torchaudio's kernel for 3001 -> 16000 Hz alone was 16000 x 3001 float64 taps (384 MB), kept per
    rate pair; 22254 -> 32000 Hz took 6 GB. soxr's filter is bounded whatever the ratio."""
    before = rss()
    for rate in (3001, *ODD_RATES):
        for target in (16000, 32000):
            assert len(audio.resample(tone(440, rate, 1.0), rate, target)) == pytest.approx(target, abs=2)
    assert rss() - before < 64 * 2**20


@pytest.mark.parametrize("rate", ODD_RATES)
def test_resampling_keeps_frequency_and_amplitude(rate):
    wave = audio.resample(tone(1000, rate, 2.0), rate, 32000)
    frequency, amplitude = peak(wave[3200:-3200], 32000)  # away from the edges' filter transients
    assert frequency == pytest.approx(1000, abs=2)
    assert amplitude == pytest.approx(0.5, abs=0.01)


def test_downsampling_rejects_what_would_alias():
    """A 20 kHz tone does not fit under 16 kHz (Nyquist of 32 kHz): it must vanish, not fold to 12 kHz."""
    wave = audio.resample(tone(20000, 48000, 1.0), 48000, 32000)
    assert np.sqrt(np.mean(wave[1000:-1000] ** 2)) < 1e-4  # > 70 dB below the tone's 0.35 RMS


# ---- streaming ----


def test_stream_audio_has_the_public_shape():
    signature = pyinspect.signature(audio.stream_audio)
    assert list(signature.parameters) == ["path", "sample_rate", "block_seconds"]
    assert signature.parameters["block_seconds"].default == 60.0


@pytest.mark.parametrize(("rate", "channels", "block_seconds"), [(22254, 2, 0.37), (48000, 1, 1.0), (32000, 2, 0.5)])
def test_blocks_equal_the_whole_file_result(tmp_path, rate, channels, block_seconds):
    rng = np.random.default_rng(rate)
    frames = (0.3 * rng.standard_normal((int(rate * 3.3), channels))).astype(np.float32)
    path = tmp_path / "noise.wav"
    sf.write(path, frames, rate, subtype="FLOAT")
    blocks = list(audio.stream_audio(path, 32000, block_seconds))
    assert len(blocks) > 3 and all(block.dtype == np.float32 and block.ndim == 1 for block in blocks)
    whole = np.clip(audio.resample(frames.mean(axis=1, dtype=np.float32), rate, 32000), -1, 1)
    streamed = np.concatenate(blocks)
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-4, rtol=0)


def test_no_decode_call_reads_more_than_one_block(tmp_path, monkeypatch):
    """predict and prepare decoded whole files (7.5 GB for an hour of 48 kHz stereo)."""
    path = tmp_path / "long.wav"
    sf.write(path, tone(440, 8000, 7.0), 8000)
    reads = []
    original = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    assert sum(len(block) for block in audio.stream_audio(path, 16000, block_seconds=2.0)) == 112000
    assert reads and all(0 < frames <= 16000 for frames in reads)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "file not found"), (b"", "empty file"), (b"this is not audio" * 100, "decoding failed")],
)
def test_stream_audio_raises_audio_read_error_for_unusable_files(tmp_path, content, reason):
    path = tmp_path / "bad.flac"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(audio.AudioReadError, match=reason):
        list(audio.stream_audio(path, 32000))


def test_samples_beyond_full_scale_are_clipped_and_counted_once(tmp_path, caplog):
    path = tmp_path / "loud.wav"
    wave = tone(300, 32000, 2.0, amplitude=3.0)
    sf.write(path, wave, 32000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING):
        streamed = np.concatenate(list(audio.stream_audio(path, 32000, block_seconds=0.5)))
    assert np.abs(streamed).max() == 1.0
    expected = int(np.count_nonzero(np.abs(wave) > 1))
    assert caplog.text.count("beyond full scale") == 1 and f"{expected} samples beyond full scale" in caplog.text
    # Training's raw crops: the same rule, also logged once per file.
    source = audio.RawAudio(32000)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        crops = [source.read(path, start, 16000) for start in (0, 16000, 32000)]
    assert max(int(np.abs(crop).max()) for crop in crops) == audio.PCM_SCALE
    assert caplog.text.count("beyond full scale") == 1


def test_non_finite_samples_are_zeroed_and_located_or_raise(tmp_path):
    wave = tone(300, 16000, 4.0)
    wave[24000:24010] = np.nan
    wave[50000] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    report = audio.StreamReport()
    streamed = np.concatenate(list(audio.read_blocks(path, 32000, 1.0, report)))
    assert np.isfinite(streamed).all() and len(streamed) == 128000
    assert report.nonfinite == 11
    assert report.nonfinite_spans == [(1.5, 24010 / 16000), (50000 / 16000, 50001 / 16000)]
    assert "11 non-finite samples" in report.describe_nonfinite() and "1.50-1.50 s" in report.describe_nonfinite()
    with pytest.raises(audio.AudioReadError, match=r"non-finite samples \(NaN or infinity\) near 1.5 s"):
        audio.decode(path, 32000)


# ---- libmpg123's stderr noise ----


def test_mpeg_noise_is_dropped_and_other_threads_stderr_is_kept(tmp_path, capfd):
    """The old silencer pointed fd 2 at /dev/null while any MP3 was open: other threads' errors vanished."""
    path = tmp_path / "tone.mp3"
    sf.write(path, tone(440, 44100, 6.0), 44100, subtype="MPEG_LAYER_III")
    capfd.readouterr()
    with audio._mpeg_noise_filtered(True):
        os.write(2, b"[src/libmpg123/layer3.c:INT123_do_layer3():1804] error: part2_3_length too large\n")
        os.write(2, b"Note: Xing stream size 123 differs by 5% from determined/given file size!\n")
        other = threading.Thread(target=os.write, args=(2, b"ERROR other thread: disk full\n"))
        other.start()
        other.join()
        segment = audio.read_segment(path, 3.0, 1.0, 32000)  # seeks into the MP3 (real libmpg123 output)
    err = capfd.readouterr().err
    assert len(segment) == 32000
    assert "ERROR other thread: disk full" in err
    assert "libmpg123" not in err and "Xing" not in err
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"  # fd 2 is restored


def test_streaming_a_real_recording_equals_decoding_it_whole(real_birds):
    path = sorted((real_birds / "train_audio").rglob("*.mp3"))[0]
    streamed = np.concatenate(list(audio.stream_audio(Path(path), 32000, block_seconds=1.3)))
    with sf.SoundFile(path) as handle:
        frames = handle.read(dtype="float32", always_2d=True)
    whole = np.clip(audio.resample(frames.mean(axis=1, dtype=np.float32), handle.samplerate, 32000), -1, 1)
    np.testing.assert_allclose(streamed, whole, atol=1e-4, rtol=0)
