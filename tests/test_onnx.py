"""model.onnx (issue 17): written by a job, equal to the torch model, run by onnxruntime + numpy alone
(the Kaggle snippet of docs/predict.md, for real), and predict.py's two backends and Raven tables."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import soundfile as sf
import torch

from birdsed import export, predict
from birdsed.commands import predict as predict_cli
from birdsed.data.audio import decode
from birdsed_launch import local_job
from conftest import FAST_HYPERPARAMETERS, REPO_ROOT

pytestmark = pytest.mark.slow

SAMPLE_RATE = FAST_HYPERPARAMETERS["sample_rate"]
DURATION = FAST_HYPERPARAMETERS["duration"]


@pytest.fixture(scope="module")
def job(tmp_path_factory, synthetic_dataset) -> Path:
    """A short toolkit job that exports ONNX, as every job does by default."""
    base = tmp_path_factory.mktemp("job")
    hyperparameters = {
        **FAST_HYPERPARAMETERS, "export_onnx": True, "epochs": 1, "max_steps": 2, "batch_size": 4, "val_fraction": 0.3
    }  # fmt: skip
    local_job.layout(base, {"train": synthetic_dataset}, hyperparameters)
    completed = local_job.run_toolkit(base, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return base


@pytest.fixture(scope="module")
def model_dir(job) -> Path:
    return job / "model"


@pytest.fixture(scope="module")
def loaded(model_dir):
    return predict.load_model(model_dir, torch.device("cpu"))


@pytest.fixture(scope="module")
def session(model_dir):
    return onnxruntime.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def torch_probabilities(loaded, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        outputs = loaded.model(torch.from_numpy(waveform))
    return tuple(torch.sigmoid(outputs[f"{name}_logits"]).numpy() for name in ("clipwise", "framewise"))


def chirp(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * (2000 + 800 * np.sin(2 * np.pi * 0.5 * t)) * t) + 0.05 * rng.standard_normal(len(t))
    return wave.astype(np.float32)


def read_rows(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


# ---- the export's front end ----


@pytest.mark.parametrize(
    ("n_fft", "hop", "n_mels", "sample_rate"), [(2048, 512, 128, 32000), (1024, 256, 48, 16000), (1000, 300, 64, 22050)]
)
def test_the_matmul_dft_mel_equals_torchaudios(n_fft, hop, n_mels, sample_rate):
    from birdsed.config import FeatureConfig
    from birdsed.features import LogMelDeltas

    frontend = LogMelDeltas(
        sample_rate, FeatureConfig(n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmax=sample_rate / 2)
    )
    waveform = 0.3 * torch.randn(3, int(2.3 * sample_rate), generator=torch.Generator().manual_seed(n_fft))
    with torch.no_grad():
        expected, got = frontend.mel(waveform), export.DftMelSpectrogram(frontend.mel)(waveform)
        deltas, sliced = frontend.deltas(expected), export.SliceDeltas()(expected)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(sliced, deltas, rtol=1e-5, atol=1e-5)


# ---- the job's export ----


def test_every_job_writes_a_checked_model_onnx(model_dir, job):
    status = json.loads((job / "output" / "data" / "metrics.json").read_text())["export"]["onnx"]
    assert status["status"] == "ok", status
    assert status["max_abs_diff"] <= 1e-4 and status["checked_on"] == "4 waveforms"  # validation crops
    graph = onnx.load(model_dir / "model.onnx")
    assert max(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")) >= 17
    assert [node.name for node in graph.graph.input] == ["waveform"]
    assert [node.name for node in graph.graph.output] == ["clipwise", "framewise"]
    batch, samples = graph.graph.input[0].type.tensor_type.shape.dim
    assert batch.dim_param and samples.dim_value == DURATION * SAMPLE_RATE  # dynamic batch, one window
    operators = {node.op_type for node in graph.graph.node}
    assert {"MatMul", "Log"} <= operators and "STFT" not in operators  # the front end is in the graph, as matmuls


def test_the_exported_wrapper_is_in_eval_mode_even_for_a_model_in_training_mode(loaded):
    model = loaded.model.train()
    try:
        wrapper = export.OnnxOutputs(model)
    finally:
        model.eval()
    assert not any(module.training for module in wrapper.modules())


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_torch_on_random_audio(loaded, session, batch):
    waveform = (0.3 * np.random.default_rng(batch).standard_normal((batch, DURATION * SAMPLE_RATE))).astype(np.float32)
    clipwise, framewise = session.run(["clipwise", "framewise"], {"waveform": waveform})
    expected_clipwise, expected_framewise = torch_probabilities(loaded, waveform)
    assert clipwise.shape == (batch, len(loaded.labels)) and framewise.shape == expected_framewise.shape
    np.testing.assert_allclose(clipwise, expected_clipwise, atol=1e-4, rtol=0)
    np.testing.assert_allclose(framewise, expected_framewise, atol=1e-4, rtol=0)


def test_onnx_matches_torch_on_real_audio(loaded, session, real_birds):
    path = sorted((real_birds / "train_audio").rglob("*.mp3"))[3]
    windows = predict.cut_windows(decode(path, SAMPLE_RATE), DURATION * SAMPLE_RATE)[:8]
    clipwise, framewise = session.run(["clipwise", "framewise"], {"waveform": windows})
    expected_clipwise, expected_framewise = torch_probabilities(loaded, windows)
    np.testing.assert_allclose(clipwise, expected_clipwise, atol=1e-4, rtol=0)
    np.testing.assert_allclose(framewise, expected_framewise, atol=1e-4, rtol=0)


def test_a_failed_onnx_export_is_recorded_not_raised(tmp_path, loaded, monkeypatch, caplog):
    def unsupported(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::imaginary")

    monkeypatch.setattr(export, "export_onnx", unsupported)
    monkeypatch.setattr(export, "export_pt2", lambda *args: {"status": "ok"})  # tested in test_export.py
    assert loaded.cfg.run.export_onnx
    status = export.export_model_dir(tmp_path, loaded.model.state_dict(), loaded.labels, loaded.cfg)
    assert status["status"] == "ok"
    assert status["onnx"] == {"status": "failed", "reason": "RuntimeError: unsupported operator aten::imaginary"}
    assert "Export of model.onnx failed; model.pt is still complete" in caplog.text
    assert not (tmp_path / "model.onnx").exists()


# ---- predict.py's backends and Raven tables ----


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    sf.write(folder / "at_rate.wav", chirp(7.5, SAMPLE_RATE, 0), SAMPLE_RATE)
    sf.write(folder / "stereo_44k.flac", np.stack([chirp(4.0, 44100, 1), chirp(4.0, 44100, 2)], axis=1), 44100)
    return folder


def run_predict(model_dir: Path, audio: Path, out: Path, *extra: str) -> None:
    args = ["--model", str(model_dir), "--audio", str(audio), "--out", str(out), "--quiet", *extra]
    assert predict_cli.main(args) == 0


def test_both_backends_give_the_same_csv(model_dir, recordings, tmp_path):
    for backend in ("torch", "onnx"):
        run_predict(model_dir, recordings, tmp_path / f"{backend}.csv", "--backend", backend, "--threads", "1")
    by_torch, by_onnx = read_rows(tmp_path / "torch.csv"), read_rows(tmp_path / "onnx.csv")
    assert [row["row_id"] for row in by_torch] == [row["row_id"] for row in by_onnx]
    assert len(by_torch) == 3 + 2 and list(by_torch[0]) == list(by_onnx[0])
    values = [[float(row[key]) for key in row if key != "row_id"] for row in (*by_torch, *by_onnx)]
    difference = np.abs(np.array(values[: len(by_torch)]) - np.array(values[len(by_torch) :])).max()
    assert difference <= 1e-4


def test_onnx_backend_exports_for_a_model_dir_without_model_onnx(model_dir, recordings, tmp_path, monkeypatch):
    older = tmp_path / "older_model"
    older.mkdir()
    for name in ("model.pt", "labels.json", "config.json"):
        (older / name).write_bytes((model_dir / name).read_bytes())
    exported = []

    def export_copy(model, samples, path):  # the exporter itself is tested above; here: the plumbing
        exported.append(samples)
        path.write_bytes((model_dir / "model.onnx").read_bytes())

    monkeypatch.setattr(predict, "export_onnx", export_copy)
    run_predict(older, recordings / "at_rate.wav", tmp_path / "preds.csv", "--backend", "onnx")
    assert exported == [DURATION * SAMPLE_RATE] and len(read_rows(tmp_path / "preds.csv")) == 3
    assert not (older / "model.onnx").exists()


def test_raven_tables_parse_back_with_the_events_times(model_dir, recordings, tmp_path):
    events = tmp_path / "events.csv"
    run_predict(
        model_dir, recordings, tmp_path / "preds.csv", "--events", str(events), "--events-format", "raven",
        "--event-threshold", "0", "--backend", "onnx",
    )  # fmt: skip
    tables = sorted((tmp_path / "events_raven").iterdir())
    assert [table.name for table in tables] == ["at_rate.Table.1.selections.txt", "stereo_44k.Table.1.selections.txt"]
    by_file = {}
    for row in read_rows(events):
        by_file.setdefault(Path(row["file"]).name, []).append(row)
    for table in tables:
        rows = read_rows(table, delimiter="\t")
        assert list(rows[0])[:7] == [
            *("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)"),
            *("Low Freq (Hz)", "High Freq (Hz)"),
        ]
        recording = rows[0]["Begin File"]
        expected = by_file[recording]
        assert [int(row["Selection"]) for row in rows] == list(range(1, len(expected) + 1))
        assert [(row["Begin Time (s)"], row["End Time (s)"], row["Species"]) for row in rows] == [
            (event["onset_s"], event["offset_s"], event["label"]) for event in expected
        ]
        # Threshold 0: every label is one event from 0 to the end of the recording.
        seconds = sf.info(recordings / recording).duration
        assert all(float(row["Begin Time (s)"]) == 0 for row in rows)
        assert all(abs(float(row["End Time (s)"]) - seconds) < 1e-3 for row in rows)
        assert {row["Low Freq (Hz)"] for row in rows} == {"50"} and {row["High Freq (Hz)"] for row in rows} == {"8000"}


# ---- the Kaggle snippet of docs/predict.md, run for real ----


def kaggle_snippet() -> str:
    text = (REPO_ROOT / "docs" / "predict.md").read_text(encoding="utf-8")
    section = text.split("## In a Kaggle notebook", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_kaggle_snippet_reproduces_predict_rows_with_onnxruntime_and_numpy_only(model_dir, recordings, tmp_path):
    audio = recordings / "at_rate.wav"
    run_predict(model_dir, audio, tmp_path / "preds.csv")
    script = kaggle_snippet()
    script = re.sub(r'^MODEL_DIR = ".*"', f"MODEL_DIR = {str(model_dir)!r}", script, count=1, flags=re.MULTILINE)
    script = re.sub(r'^AUDIO = ".*"', f"AUDIO = {str(audio)!r}", script, count=1, flags=re.MULTILINE)
    script += (
        "\nimport sys\n"
        "heavy = sorted(name for name in ('torch', 'birdsed', 'timm', 'torchaudio', 'soxr', 'pandas') "
        "if name in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    expected, got = read_rows(tmp_path / "preds.csv"), read_rows(tmp_path / "submission.csv")
    assert (
        [row["row_id"] for row in got] == [row["row_id"] for row in expected] == ["at_rate_3", "at_rate_6", "at_rate_9"]
    )
    for want, have in zip(expected, got, strict=True):
        assert list(have) == list(want)
        assert max(abs(float(have[key]) - float(want[key])) for key in want if key != "row_id") <= 1e-4
