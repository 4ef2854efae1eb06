"""End to end: a toolkit job's outputs used as a user would — predict, the exported model, plots, TensorBoard.

One tiny model is trained through the real toolkit for this module.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from birdsed import predict, reports
from birdsed.commands import predict as predict_cli
from birdsed.data.audio import decode
from birdsed_launch import local_job
from conftest import FAST_HYPERPARAMETERS, REPO_ROOT

pytestmark = pytest.mark.slow

MODEL_FILES = ("model.pt", "labels.json", "config.json", "model.pt2")
EPOCHS = 2
DURATION = FAST_HYPERPARAMETERS["duration"]  # whole seconds: row ids are <stem>_<integer>
SAMPLE_RATE = FAST_HYPERPARAMETERS["sample_rate"]


@pytest.fixture(scope="module")
def job(tmp_path_factory, synthetic_dataset):
    base = tmp_path_factory.mktemp("job")
    local_job.layout(
        base, {"train": synthetic_dataset}, {**FAST_HYPERPARAMETERS, "epochs": EPOCHS, "val_fraction": 0.3}
    )
    completed = local_job.run_toolkit(base, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return base


@pytest.fixture(scope="module")
def labels(job):
    return json.loads((job / "model" / "labels.json").read_text())


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_model_dir_holds_the_exported_model(job):
    assert sorted(path.name for path in (job / "model").iterdir()) == sorted(MODEL_FILES)
    metrics = json.loads((job / "output" / "data" / "metrics.json").read_text())
    assert metrics["export"]["status"] == "ok", metrics["export"]
    assert metrics["export"]["max_abs_diff"] <= 1e-4


def test_the_exported_model_runs_without_birdsed_and_matches_the_training_model(job, labels, tmp_path):
    loaded = predict.load_model(job / "model", torch.device("cpu"))
    waveform = torch.randn(5, DURATION * SAMPLE_RATE)  # a batch size other than the export example's 2
    with torch.no_grad():
        expected = torch.sigmoid(loaded.model(waveform)["clipwise_logits"])
    torch.save(waveform, tmp_path / "waveform.pt")
    script = textwrap.dedent(
        """
        import sys, torch
        program = torch.export.load(sys.argv[1]).module()
        with torch.inference_mode():
            torch.save(program(torch.load(sys.argv[2])), sys.argv[3])
        loaded = sorted(name for name in ("birdsed", "timm", "torchaudio") if name in sys.modules)
        assert not loaded, loaded
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            script,
            str(job / "model" / "model.pt2"),
            str(tmp_path / "waveform.pt"),
            str(tmp_path / "out.pt"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    exported = torch.load(tmp_path / "out.pt")
    assert exported.shape == (5, len(labels))
    torch.testing.assert_close(exported, expected, atol=1e-4, rtol=0)


def test_training_writes_plots_tensorboard_and_per_class_ap(job, labels):
    data_dir = job / "output" / "data"
    for name in reports.PLOT_FILES:
        assert (data_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    events = EventAccumulator(str(data_dir / reports.TENSORBOARD_DIR))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert set(reports.EPOCH_SCALARS) <= scalars
    assert [event.step for event in events.Scalars("val_cmap")] == list(range(1, EPOCHS + 1))
    assert any(tag.startswith("per_class_ap/") for tag in scalars)
    metrics = json.loads((data_dir / "metrics.json").read_text())
    assert list(metrics["per_class_ap"]) == labels
    assert metrics["per_class_ap"] == dict(zip(labels, metrics["best"]["per_class_ap"], strict=True))


def test_predict_command_on_model_tar_gz_writes_rows_columns_and_events(job, labels, tmp_path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # as SageMaker packs /opt/ml/model
        for name in MODEL_FILES:
            tar.add(job / "model" / name, arcname=name)
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "soundscape_123.ogg", np.random.default_rng(0).normal(0, 0.1, 32000 * 10).astype("float32"), 32000)
    (audio / "truncated.flac").write_bytes(b"fLaC\x00\x00\x00\x22")
    out, events = tmp_path / "preds.csv", tmp_path / "events.csv"
    completed = subprocess.run(
        [
            *(sys.executable, str(REPO_ROOT / "code" / "predict.py"), "--model", str(archive), "--audio", str(audio)),
            *("--out", str(out), "--events", str(events), "--event-threshold", "0.3"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    windows = math.ceil(10 / DURATION)
    assert completed.stdout.strip().splitlines()[-1] == f"predicted_files=1 skipped_files=1 windows={windows}"
    assert "Skipping" in completed.stderr and "truncated.flac" in completed.stderr
    rows = read_rows(out)
    assert list(rows[0]) == ["row_id", *labels]
    assert [row["row_id"] for row in rows] == [f"soundscape_123_{DURATION * (index + 1)}" for index in range(windows)]
    with open(events, encoding="utf-8") as handle:
        assert handle.readline().strip() == "file,onset_s,offset_s,label,score"
    for event in read_rows(events):
        assert event["label"] in labels and event["file"] == str(audio / "soundscape_123.ogg")
        assert 0 <= float(event["onset_s"]) < float(event["offset_s"]) <= 10.0
        assert 0.3 <= float(event["score"]) <= 1.0


def test_predict_on_a_real_recording(job, labels, real_birds, tmp_path, capsys):
    recording = real_birds / "train_audio" / "vireo_latimeri" / "XC344045.mp3"  # 28 s, 48 kHz MP3
    if not recording.is_file():
        pytest.skip(f"{recording} is not present")
    out = tmp_path / "preds.csv"
    code = predict_cli.main(["--model", str(job / "model"), "--audio", str(recording), "--out", str(out), "--amp"])
    assert code == 0
    windows = math.ceil(len(decode(recording, SAMPLE_RATE)) / (DURATION * SAMPLE_RATE))
    rows = read_rows(out)
    assert [row["row_id"] for row in rows] == [f"XC344045_{DURATION * (index + 1)}" for index in range(windows)]
    assert list(rows[0]) == ["row_id", *labels]
    probabilities = np.array([[float(row[label]) for label in labels] for row in rows])
    assert probabilities.shape == (windows, len(labels))
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    assert capsys.readouterr().out.strip() == f"predicted_files=1 skipped_files=0 windows={windows}"
