import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdsed.data import audio
from birdsed.data.metadata import read_metadata


def sine(frequency, sample_rate, seconds, channels=1):
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    wave = (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def peak_frequency(wave, sample_rate):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1 / sample_rate)[np.argmax(spectrum)]


@pytest.mark.parametrize(
    ("suffix", "subtype"), [(".wav", "PCM_16"), (".flac", "PCM_16"), (".ogg", "VORBIS"), (".mp3", "MPEG_LAYER_III")]
)
@pytest.mark.parametrize("native_rate", [22050, 44100, 48000])
def test_any_format_and_rate_decodes_to_the_target_rate_keeping_pitch(tmp_path, suffix, subtype, native_rate):
    path = tmp_path / f"tone{suffix}"
    sf.write(path, sine(1000, native_rate, 2.0, channels=2), native_rate, subtype=subtype)
    wave = audio.decode(path, 32000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == pytest.approx(64000, abs=2000)  # MP3 adds encoder padding
    assert peak_frequency(wave, 32000) == pytest.approx(1000, abs=5)


def test_read_segment_seeks_to_the_asked_span(tmp_path):
    rate = 16000
    ramp = (np.arange(rate * 4) / (rate * 4)).astype(np.float32)
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp, rate, subtype="FLOAT")
    segment = audio.read_segment(path, start_seconds=1.5, seconds=1.0, sample_rate=rate)
    np.testing.assert_allclose(segment, ramp[24000:40000])
    tail = audio.read_segment(path, start_seconds=3.5, seconds=1.0, sample_rate=rate)
    assert len(tail) == 8000  # the end of the file: shorter than asked


def test_fit_length_pads_and_cuts():
    np.testing.assert_array_equal(audio.fit_length(np.ones(3, np.float32), 5), [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(audio.fit_length(np.arange(6, dtype=np.float32), 4), [0, 1, 2, 3])


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "file not found"), (b"", "empty file"), (b"this is not audio" * 100, "not readable audio")],
)
def test_probe_names_the_reason_a_file_is_unusable(tmp_path, content, reason):
    path = tmp_path / "bad.ogg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(audio.AudioReadError, match=reason):
        audio.probe(path)


def test_inspect_many_returns_errors_in_place(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, sine(440, 8000, 0.5), 8000)
    infos = audio.inspect_many([good, tmp_path / "missing.wav"])
    assert isinstance(infos[0], audio.AudioInfo) and infos[0].sample_rate == 8000
    assert infos[0].seconds == pytest.approx(0.5)
    assert isinstance(infos[1], audio.AudioReadError)


def test_every_real_recording_decodes(real_birds):
    """The 160 xeno-canto MP3s (44.1/48 kHz, mono and stereo, 3.5-241 s) decode at 32 kHz."""
    frame = read_metadata(real_birds)
    assert len(frame) == 160
    durations = []
    for path in frame["path"]:
        info = audio.probe(path)
        wave = audio.decode(path, 32000)
        assert np.isfinite(wave).all() and np.abs(wave).max() > 0
        # A VBR MP3's header length is an estimate (seen here: up to 10 % long); never short.
        assert 0.88 * info.seconds <= len(wave) / 32000 <= info.seconds + 0.1
        durations.append(info.seconds)
    assert pd.Series(durations).between(3, 250).all()
