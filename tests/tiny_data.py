"""A few seconds of WAV noise per recording, in the BirdCLEF layout: the cheapest dataset a job can train on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from conftest import FAST_HYPERPARAMETERS

RATE = FAST_HYPERPARAMETERS["sample_rate"]
SECONDS = 3.5
NAMES = [f"{label}/XC{label[0]}{n}.wav" for label in ("aaa1", "bbb1") for n in range(4)]


def write_wav_dataset(root: Path, names: Sequence[str] = NAMES, extra_rows: Sequence[str] = ()) -> Path:
    """`names` as WAV files (label = first folder) and their metadata rows, plus `extra_rows` verbatim."""
    rows = ["primary_label,secondary_labels,rating,filename"]
    rng = np.random.default_rng(0)
    for name in names:
        path = root / "train_audio" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * rng.standard_normal(int(SECONDS * RATE)), RATE, subtype="PCM_16")
        rows.append(f"{name.split('/')[0]},[],4,{name}")
    (root / "train_metadata.csv").write_text("\n".join([*rows, *extra_rows]) + "\n")
    return root
