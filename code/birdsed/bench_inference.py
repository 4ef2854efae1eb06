"""Benchmarks of reading and predicting (issue 12's memory limits; issue 17's CPU speed): key=value lines.

`memory`: peak resident memory (each case in a fresh process, so the peaks do not mix) of
- `crop_peak_mb_rate_<Hz>`: a job's crop reads (CropDataset over raw files, as a DataLoader worker
  reads them) of recordings at six odd sample rates, resampled to 32 kHz;
- `predict_peak_mb`, `prepare_peak_mb`: predict and prepare on one hour of 48 kHz stereo audio;
- `*_baseline_mb`: the same process after its imports, before any audio (torch alone is ~0.3 GB).
The limit is 1.5 GB each (issue 12): `within_limit=true|false`.

`predict`: CPU speed of the two predict backends per backbone (random init: speed does not depend on
training), each in a fresh process, keys prefixed `<backbone>.`:
- `predict_windows_per_s_torch` (eager, fp32) and `predict_windows_per_s_onnx` (onnxruntime, all graph
  optimisations), each at its best of `--batch-sizes` (named by `*_batch`; every size is printed too),
  5 s windows at 32 kHz with the job's default features, `--threads` threads (default 1: the rate per
  core), `onnx_speedup` their ratio (`onnx_speedup_at_batch_16`: both at the largest batch size),
  `max_abs_diff` between the backends' probabilities;
  rates are windows per second of the process's CPU time (`wall_*`: per wall-clock second, which on a
  shared machine also measures the neighbours);
- `decode_s_per_soundscape`: streaming a one-minute 32 kHz OGG (decode + windows, no model);
- `birdclef2025_minutes_per_model`: 700 one-minute soundscapes (12 windows each) at the faster backend's
  rate per core plus decoding, on Kaggle's 4 cores: 700 * (12 / rate + decode) / 4 / 60;
- `ensemble5_minutes`: five such models (the goal: within 30 of Kaggle's 90 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

ODD_RATES = (22254, 8001, 11127, 44101, 47999, 96001)
LIMIT_MB = 1536
SAMPLE_RATE = 32000
LONG_SECONDS = 3600
LONG_RATE = 48000


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def in_fresh_process(function: Callable[..., dict], *args: object) -> dict:
    """Run `function(*args)` in a new interpreter (spawn): its peak memory is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


# ---- inputs ----


def write_odd_rate_recording(path: Path, rate: int, seconds: float = 30.0) -> Path:
    rng = np.random.default_rng(rate)
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 1500 * t) + 0.05 * rng.standard_normal(len(t))
    sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
    return path


def write_long_recording(path: Path, seconds: int = LONG_SECONDS, rate: int = LONG_RATE) -> Path:
    """An hour of 48 kHz stereo FLAC, written a minute at a time (tones over quiet noise)."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=2, subtype="PCM_16", format="FLAC") as handle:
        for minute in range(0, seconds, 60):
            t = minute + np.arange(min(60, seconds - minute) * rate) / rate
            tone = 0.2 * np.sin(2 * np.pi * (2000 + 500 * np.sin(2 * np.pi * 0.1 * t)) * t)
            noise = 0.01 * rng.standard_normal((len(t), 2))
            handle.write((tone[:, None] + noise).astype(np.float32))
    return path


# ---- the cases, each run in a fresh process ----


def crop_case(path: str, crops: int = 64) -> dict:
    """Random 5 s crops of one recording through `CropDataset` with the raw-audio source."""
    from birdsed.data.audio import probe
    from birdsed.data.dataset import CropDataset
    from birdsed.data.metadata import Recordings

    baseline = peak_mb()
    seconds = probe(Path(path)).seconds
    recordings = Recordings(
        paths=[Path(path)],
        primary_labels=["a"],
        targets=np.ones((1, 1), dtype=np.float32),
        sample_weights=np.ones(1, dtype=np.float32),
        frame=None,
    )
    dataset = CropDataset(recordings, np.array([seconds]), SAMPLE_RATE, 5.0)
    for seed in range(crops):
        dataset[(0, seed)]
    return {"baseline_mb": baseline, "peak_mb": peak_mb()}


def predict_case(model_dir: str, audio: str, out: str) -> dict:
    import torch

    from birdsed import predict

    torch.set_num_threads(1)
    loaded = predict.load_model(Path(model_dir), torch.device("cpu"))
    baseline = peak_mb()
    started = time.perf_counter()
    summary = predict.predict_to_csv(
        predict.create_predictor(loaded, 16, amp=False, event_threshold=0.5), [Path(audio)], Path(out), progress=False
    )
    seconds = time.perf_counter() - started
    return {"baseline_mb": baseline, "peak_mb": peak_mb(), "windows": summary.windows, "seconds": seconds}


def prepare_case(audio: str, target: str) -> dict:
    from birdsed.data.cache import convert_recording

    baseline = peak_mb()
    started = time.perf_counter()
    entry = convert_recording(Path(audio), Path(target), SAMPLE_RATE)
    if not isinstance(entry, dict):
        raise RuntimeError(f"prepare failed: {entry}")
    seconds = time.perf_counter() - started
    return {"baseline_mb": baseline, "peak_mb": peak_mb(), "samples": entry["samples"], "seconds": seconds}


def write_model_dir(directory: Path, backbone: str) -> Path:
    """An untrained model (random init) of the job's shape: memory and speed do not depend on training."""
    import torch

    from birdsed.config import from_hyperparameters
    from birdsed.models import create_model
    from birdsed.training import outputs

    cfg = from_hyperparameters({"backbone": backbone, "pretrained": "false", "sample_rate": SAMPLE_RATE})
    labels = [f"species{index:03d}" for index in range(206)]  # BirdCLEF 2025's class count
    torch.manual_seed(0)
    outputs.write_model_dir(directory, create_model(cfg, len(labels)).state_dict(), labels, cfg)
    return directory


# ---- predict speed ----

BIRDCLEF_SOUNDSCAPES = 700  # BirdCLEF 2025's hidden test set: ~700 one-minute soundscapes, 90 min on 4 CPU cores
KAGGLE_CORES = 4


def speed_case(backbone: str, workdir: str, batch_sizes: list[int], threads: int, windows: int, repeats: int) -> dict:
    """windows/s of both backends at each batch size (median of `repeats`), on the same random-init model
    and the same windows."""
    import onnxruntime
    import torch

    from birdsed import export, predict

    torch.set_num_threads(threads)
    model_dir = Path(workdir) / backbone
    if not (model_dir / export.ONNX_FILE).is_file():  # a rerun with --workdir reuses the export
        write_model_dir(model_dir, backbone)
    loaded = predict.load_model(model_dir, torch.device("cpu"))
    samples = export.window_samples(loaded.cfg)
    results: dict = {"onnxruntime": onnxruntime.__version__}
    if not (model_dir / export.ONNX_FILE).is_file():
        started = time.perf_counter()
        export.export_onnx(loaded.model, samples, model_dir / export.ONNX_FILE)
        results["export_s"] = time.perf_counter() - started
    windows_in = (0.1 * np.random.default_rng(0).standard_normal((windows, samples))).astype(np.float32)
    predictors = {
        (backend, size): predict.create_predictor(
            loaded, size, False, backend=backend, threads=threads, model_dir=model_dir
        )
        for backend in predict.BACKENDS
        for size in batch_sizes
    }
    for predictor in predictors.values():
        predictor.predict_windows(windows_in[: 2 * predictor.batch_size])  # warm-up (allocations, first runs)
    rates: dict[tuple[str, int], list[float]] = {key: [] for key in predictors}
    walls: dict[tuple[str, int], list[float]] = {key: [] for key in predictors}
    outputs = {}
    for _ in range(repeats):  # interleaved, so that a busy spell of the neighbours hits every case alike
        for (backend, size), predictor in predictors.items():
            # CPU time of the process, not wall time: on a shared machine the wall clock measures the neighbours.
            started, started_wall = time.process_time(), time.perf_counter()
            outputs[backend] = predictor.predict_windows(windows_in)
            rates[backend, size].append(windows / (time.process_time() - started))
            walls[backend, size].append(windows / (time.perf_counter() - started_wall))
    for (backend, size), values in rates.items():
        results[f"{backend}_b{size}"] = statistics.median(values)
        results[f"wall_{backend}_b{size}"] = statistics.median(walls[backend, size])
    results["max_abs_diff"] = max(
        float(np.abs(outputs["torch"][name] - outputs["onnx"][name]).max()) for name in export.ONNX_OUTPUTS
    )
    return results


def decode_case(path: str) -> dict:
    from birdsed.data.audio import stream_audio
    from birdsed.predict import stream_windows

    started = time.process_time()
    for _ in range(3):
        count = sum(1 for _ in stream_windows(stream_audio(Path(path), SAMPLE_RATE), 5 * SAMPLE_RATE))
    return {"seconds": (time.process_time() - started) / 3, "windows": count}


def run_predict_speed(
    workdir: Path, backbones: list[str], batch_sizes: list[int], threads: int, windows: int, repeats: int
) -> Iterator[tuple[str, object]]:
    yield "machine", f"{platform.processor() or platform.machine()} cpus={multiprocessing.cpu_count()}"
    yield "threads", threads
    yield "windows", windows
    yield "repeats", repeats
    soundscape = workdir / "soundscape_1min.ogg"
    t = np.arange(60 * SAMPLE_RATE) / SAMPLE_RATE
    sf.write(soundscape, (0.2 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32), SAMPLE_RATE, format="OGG")
    decode = in_fresh_process(decode_case, str(soundscape))
    yield "decode_s_per_soundscape", round(decode["seconds"], 3)
    for backbone in backbones:
        result = in_fresh_process(speed_case, backbone, str(workdir), batch_sizes, threads, windows, repeats)
        if "export_s" in result:
            yield f"{backbone}.export_onnx_s", round(result["export_s"], 1)
        best = {}
        for backend in ("torch", "onnx"):
            for batch_size in batch_sizes:
                yield (
                    f"{backbone}.{backend}_windows_per_s_batch_{batch_size}",
                    round(result[f"{backend}_b{batch_size}"], 2),
                )
            best[backend] = max(batch_sizes, key=lambda size, backend=backend: result[f"{backend}_b{size}"])
        torch_rate, onnx_rate = result[f"torch_b{best['torch']}"], result[f"onnx_b{best['onnx']}"]
        per_core = max(torch_rate, onnx_rate) / threads
        minutes = BIRDCLEF_SOUNDSCAPES * (12 / per_core + decode["seconds"]) / KAGGLE_CORES / 60
        same = max(batch_sizes)
        yield f"{backbone}.predict_windows_per_s_torch", round(torch_rate, 2)
        yield f"{backbone}.predict_windows_per_s_torch_batch", best["torch"]
        yield f"{backbone}.predict_windows_per_s_onnx", round(onnx_rate, 2)
        yield f"{backbone}.predict_windows_per_s_onnx_batch", best["onnx"]
        yield f"{backbone}.onnx_speedup", round(onnx_rate / torch_rate, 2)
        yield f"{backbone}.onnx_speedup_at_batch_{same}", round(result[f"onnx_b{same}"] / result[f"torch_b{same}"], 2)
        yield f"{backbone}.wall_windows_per_s_onnx", round(result[f"wall_onnx_b{best['onnx']}"], 2)
        yield f"{backbone}.max_abs_diff", f"{result['max_abs_diff']:.2e}"
        yield f"{backbone}.birdclef2025_minutes_per_model", round(minutes, 1)
        yield f"{backbone}.ensemble5_minutes", round(5 * minutes, 1)
    yield "onnxruntime", result["onnxruntime"]


# ---- commands ----


def run_memory(workdir: Path, backbone: str) -> Iterator[tuple[str, object]]:
    yield "machine", f"{platform.processor() or platform.machine()} cpus={multiprocessing.cpu_count()}"
    yield "limit_mb", LIMIT_MB
    peaks = []
    for rate in ODD_RATES:
        path = write_odd_rate_recording(workdir / f"odd_{rate}.wav", rate)
        result = in_fresh_process(crop_case, str(path))
        peaks.append(result["peak_mb"])
        yield f"crop_peak_mb_rate_{rate}", round(result["peak_mb"])
    yield "crop_baseline_mb", round(result["baseline_mb"])
    long = write_long_recording(workdir / "hour_48k_stereo.flac")
    yield "long_recording", f"{LONG_SECONDS}s {LONG_RATE}Hz stereo FLAC {long.stat().st_size / 2**20:.0f}MB"
    result = in_fresh_process(prepare_case, str(long), str(workdir / "hour.npy"))
    peaks.append(result["peak_mb"])
    yield "prepare_peak_mb", round(result["peak_mb"])
    yield "prepare_baseline_mb", round(result["baseline_mb"])
    yield "prepare_s", round(result["seconds"], 1)
    model_dir = write_model_dir(workdir / "model", backbone)
    yield "predict_backbone", backbone
    result = in_fresh_process(predict_case, str(model_dir), str(long), str(workdir / "preds.csv"))
    peaks.append(result["peak_mb"])
    yield "predict_peak_mb", round(result["peak_mb"])
    yield "predict_baseline_mb", round(result["baseline_mb"])
    yield "predict_windows", result["windows"]
    yield "predict_s", round(result["seconds"], 1)
    yield "max_peak_mb", round(max(peaks))
    yield "within_limit", str(max(peaks) <= LIMIT_MB).lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    memory = commands.add_parser("memory", help="peak memory of crop reads at odd rates, predict and prepare")
    memory.add_argument("--backbone", default="efficientnet_b0", help="the model predict runs (random init)")
    memory.add_argument("--workdir", type=Path, help="keep the generated files here (default: a temporary folder)")
    speed = commands.add_parser("predict", help="windows/s of predict's torch and onnx backends on this CPU")
    speed.add_argument("--backbones", default="tf_efficientnetv2_s.in21k,efficientnet_b0", help="comma-separated")
    speed.add_argument("--batch-sizes", default="1,4,16", help="comma-separated; each backend's best is reported")
    speed.add_argument("--threads", type=int, default=1, help="threads per backend (1: the rate per core)")
    speed.add_argument("--windows", type=int, default=32, help="5 s windows per timed run")
    speed.add_argument("--repeats", type=int, default=3, help="timed runs per case, interleaved; the median is printed")
    speed.add_argument("--workdir", type=Path, help="keep the generated files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="birdsed-bench-") as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.command == "memory":
            lines = run_memory(workdir, args.backbone)
        else:
            backbones = [name.strip() for name in args.backbones.split(",") if name.strip()]
            batch_sizes = [int(size) for size in args.batch_sizes.split(",") if size.strip()]
            lines = run_predict_speed(workdir, backbones, batch_sizes, args.threads, args.windows, args.repeats)
        with contextlib.suppress(BrokenPipeError):
            for key, value in lines:
                print(f"{key}={value}", flush=True)
    return 0
