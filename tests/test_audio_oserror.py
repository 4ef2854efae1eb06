"""An OSError while probing (permissions, a flaky mount's I/O error) is a named skip, not an internal error."""

import errno

import numpy as np
import pytest
import soundfile as sf

from birdsed.data import audio


@pytest.mark.parametrize("where", ["info", "open"])
def test_os_errors_while_reading_are_audio_read_errors_with_the_reason(tmp_path, monkeypatch, where):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000)

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sf, "info" if where == "info" else "SoundFile", fail)
    [result] = audio.inspect_many([path])
    assert isinstance(result, audio.AudioReadError)
    assert str(result) == "cannot be read (Input/output error)"
