"""Long generated OGG files: one soundfile.write call with a minute of audio crashes libvorbis (stack overflow)."""

import numpy as np
import soundfile as sf

from birdsed.data.synthetic import write_audio


def test_a_long_ogg_is_written_in_chunks_and_reads_back_whole(tmp_path):
    rate, seconds = 32000, 90
    waveform = (0.1 * np.sin(np.arange(rate * seconds) * 2 * np.pi * 1000 / rate)).astype(np.float32)
    write_audio(tmp_path / "long.ogg", waveform, rate, "OGG", "VORBIS")
    info = sf.info(tmp_path / "long.ogg")
    assert (info.samplerate, info.channels, info.frames) == (rate, 1, rate * seconds)
