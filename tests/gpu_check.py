"""The GPU check: every CUDA path of birdsed on one GPU in under 8 minutes, one line per check.

    python3 tests/gpu_check.py [--device auto|cuda|cpu] [--wheels DIR] [--workdir DIR] [--time-limit 450]
    make gpu-check

Runs on a bare Python with torch, torchaudio, timm, numpy, pandas, scikit-learn, scipy, tensorboard,
matplotlib, tqdm and psutil installed; no project `.venv`, no launcher, no internet. The rest
(soundfile, cffi, pycparser, soxr, optionally the sagemaker-training toolkit and its dependencies) comes
from a folder of wheels, installed into a private folder of this run (see docs/gpu-check.md).

Without CUDA (`--device cpu`, or `auto` on a machine without a GPU) the same checks run on the CPU
with tiny data: the smoke mode that `make test` runs, so that this script cannot rot.

Each check runs in a child process (a CUDA error cannot poison the next check) and prints
`PASS <check> key=value ...` or `FAIL <check> reason="..."`; the last line is the summary; the exit
status is 0 only when every check passed. Logs of every child are kept in the work folder.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CODE_DIR = REPO_ROOT / "code"
SCRIPT = Path(__file__).resolve()
WHEEL_DIRS = ("gpu_wheels", "shared/wheels", "../shared/wheels")
# Needed by every check (decoding audio); the toolkit is optional: without it, jobs start as it would start them.
REQUIRED_MODULES = ("soundfile", "soxr")  # what birdsed imports that the GPU machine lacks
RESULT_PREFIX = "GPU_CHECK_RESULT "
LOG_TAIL = 25  # lines of a failed child's log printed under its FAIL line

# The training checks use the test suite's tiny job (`birdsed.config.TINY_HYPERPARAMETERS`: timm's tiny
# EfficientNet at 16 kHz, seconds per epoch), which the setup step reads from birdsed; the benchmark runs
# the default backbone.
TINY_EXTRAS = {"pretrained": "false", "seed": 5}


@dataclass(frozen=True)
class Plan:
    """What one mode runs: the GPU check proper, or its tiny CPU smoke version."""

    mode: str
    species: int
    recordings_per_species: int
    seconds: tuple[float, float]
    learn_epochs: int
    min_val_auc: float
    step_backbone: str  # the model of the non-finite-step check
    bench_args: tuple[str, ...]
    timeouts: dict[str, float] = field(default_factory=dict)


GPU_PLAN = Plan(
    mode="cuda",
    species=6,
    recordings_per_species=12,
    seconds=(4.0, 10.0),
    learn_epochs=10,
    min_val_auc=0.8,
    step_backbone="efficientnet_b0",
    bench_args=("--device", "cuda", "--pipeline-batches", "30", "--baseline-samples", "64"),
    timeouts={"setup": 120, "learn": 150, "nonfinite": 90, "compile": 180, "torchrun": 120, "predict": 90},
)
SMOKE_PLAN = Plan(
    mode="cpu-smoke",
    species=3,
    recordings_per_species=6,
    seconds=(3.2, 5.0),
    learn_epochs=4,
    min_val_auc=0.6,
    step_backbone="test_efficientnet",
    bench_args=(
        *("--device", "cpu", "--backbone", "test_efficientnet", "--batch-size", "4", "--steps", "2"),
        *("--workers", "0", "--pipeline-batches", "2", "--baseline-samples", "4"),
    ),
    timeouts={"setup": 120, "learn": 180, "nonfinite": 90, "compile": 120, "torchrun": 180, "predict": 90},
)


# ---------------------------------------------------------------------------------------------
# The driver: no birdsed import here, so that a broken birdsed is a failed check, not a crash.


class CheckFailed(Exception):
    """A check's reason for failing, printed on its FAIL line."""


@dataclass
class Context:
    plan: Plan
    device: str
    work: Path
    deadline: float
    env: dict[str, str]
    launcher: str  # "toolkit" or "train.py"
    tiny: dict = field(default_factory=dict)  # the tiny job's hyperparameters, from the setup step
    results: list[tuple[str, bool]] = field(default_factory=list)
    artifacts: dict[str, Path] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def run_child(ctx: Context, name: str, command: Sequence[str], timeout: float, env: dict | None = None) -> str:
    """Run `command` in its own process group with its output in `<work>/logs/<name>.log`; returns the output.

    A child that outlives `timeout` (or the time left) is killed with everything it started (toolkit,
    torchrun, workers).
    """
    limit = min(timeout, ctx.remaining())
    if limit < 5:
        raise CheckFailed("not run: the time limit was reached")
    log = ctx.work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(f"$ {shlex.join(map(str, command))}\n")
        handle.flush()
        process = subprocess.Popen(
            list(map(str, command)),
            cwd=ctx.work,
            env=env or ctx.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise CheckFailed(f"timed out after {limit:.0f} s (log: {log})") from None
    output = log.read_text(encoding="utf-8", errors="replace")
    if code != 0:
        tail = "\n".join("    " + line for line in output.splitlines()[-LOG_TAIL:])
        raise CheckFailed(f"exit status {code} (log: {log})\n{tail}")
    return output


def run_step(ctx: Context, step: str, timeout: float, **arguments: object) -> dict:
    """Run one in-process check of this script (`--step`) in a child; returns the dict it reported."""
    command = [sys.executable, SCRIPT, "--step", step, "--device", ctx.device, "--workdir", ctx.work]
    output = run_child(ctx, step, [*command, "--arguments", json.dumps(arguments)], timeout)
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise CheckFailed(f"step {step} reported no result (log: {ctx.work / 'logs' / step}.log)")


def format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


def report(ctx: Context, name: str, check: Callable[[Context], dict]) -> None:
    """Run one check and print its PASS or FAIL line (figures as key=value)."""
    started = time.monotonic()
    try:
        figures = check(ctx)
        passed, detail = True, ""
    except CheckFailed as failure:
        figures, passed = {}, False
        reason, _, detail = str(failure).partition("\n")
        figures["reason"] = reason
    except Exception as error:  # noqa: BLE001 - any error in a check is that check's failure, not the script's
        figures, passed, detail = {"reason": f"{type(error).__name__}: {error}"}, False, ""
    figures = {"seconds": round(time.monotonic() - started, 1), **figures}
    pairs = " ".join(f"{key}={format_value(value)}" for key, value in figures.items())
    print(f"{'PASS' if passed else 'FAIL'} {name} {pairs}", flush=True)
    if detail:
        print(detail, flush=True)
    ctx.results.append((name, passed))


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise CheckFailed(reason)


# ---- setting up: wheels, environment, data ----


def find_wheel_dir(given: Path | None) -> Path | None:
    if given is not None:
        if not given.is_dir():
            raise SystemExit(f"error: --wheels {given}: no such folder")
        return given
    return next((REPO_ROOT / name for name in WHEEL_DIRS if (REPO_ROOT / name).is_dir()), None)


def install_wheels(wheel_dir: Path | None, site: Path) -> list[str]:
    """Install the folder's wheels whose distributions this Python lacks into `site` (offline, no deps).

    Nothing is installed into the system's Python, and what it has (numpy, torch, ...) is never shadowed.
    """
    if wheel_dir is None:
        return []
    missing = [wheel for wheel in sorted(wheel_dir.glob("*.whl")) if not installed(wheel_name(wheel))]
    if missing:
        shutil.rmtree(site, ignore_errors=True)
        command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", site, *missing]
        completed = subprocess.run(list(map(str, command)), capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise CheckFailed(f"pip could not install the wheels of {wheel_dir}: {completed.stderr.strip()[-500:]}")
    return [wheel_name(wheel) for wheel in missing]


def wheel_name(wheel: Path) -> str:
    return wheel.name.split("-")[0].lower().replace("_", "-")


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def importable(module: str, site: Path) -> bool:
    """Whether the children can import `module`: from this Python or from the run's private wheels.

    This process never puts `site` on its own path, so it asks both places.
    """
    in_site = importlib.machinery.PathFinder.find_spec(module, [str(site)]) is not None
    return in_site or importlib.util.find_spec(module) is not None


def child_environment(site: Path | None, device: str) -> dict[str, str]:
    """The environment of every child: birdsed from code/, the private wheels, nothing from the caller's paths."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "SM_", "SAGEMAKER_"))}
    paths = [str(CODE_DIR), *([str(site)] if site else [])]
    env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")
    env.setdefault("MPLBACKEND", "Agg")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke mode stays on the CPU even on a GPU machine
        env["OMP_NUM_THREADS"] = "1"  # tiny tensors: more threads only contend (torchrun does the same)
    return env


def check_setup(ctx: Context, installed_wheels: list[str]) -> dict:
    """The wheels, the versions, and the generated dataset every later check uses (one child)."""
    missing = [name for name in REQUIRED_MODULES if not importable(name, ctx.work / "site")]
    require(not missing, f"missing {', '.join(missing)}: bring the wheels (docs/gpu-check.md) and pass --wheels DIR")
    plan = ctx.plan
    figures = run_step(
        ctx,
        "setup",
        plan.timeouts["setup"],
        species=plan.species,
        recordings_per_species=plan.recordings_per_species,
        seconds=plan.seconds,
    )
    ctx.tiny = figures.pop("tiny_hyperparameters")
    return {"installed_wheels": ",".join(installed_wheels) or "none", "launcher": ctx.launcher, **figures}


# ---- jobs, started as the image starts them ----


def layout(base: Path, data: Path, hyperparameters: dict) -> Path:
    """An `/opt/ml` tree under `base`, as SageMaker writes it: config files, the train channel, the code."""
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    files = {
        "hyperparameters.json": {key: str(value) for key, value in hyperparameters.items()},
        "resourceconfig.json": {"current_host": "localhost", "hosts": ["localhost"], "network_interface_name": "lo"},
        "inputdataconfig.json": {"train": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}},
    }
    for name, payload in files.items():
        (config / name).write_text(json.dumps(payload), encoding="utf-8")
    (base / "input" / "data").mkdir(parents=True, exist_ok=True)
    (base / "input" / "data" / "train").symlink_to(data, target_is_directory=True)
    (base / "code").symlink_to(CODE_DIR, target_is_directory=True)
    return base


def run_job(ctx: Context, name: str, hyperparameters: dict, timeout: float) -> tuple[Path, str]:
    """A training job on `<work>/<name>`: the toolkit's `train` when installed, else `train.py` as it runs it."""
    shutil.rmtree(ctx.work / name, ignore_errors=True)  # a --workdir used before
    base = layout(ctx.work / name, ctx.work / "data", hyperparameters)
    env = {**ctx.env, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_PROGRAM": "train.py"}
    env["MASTER_PORT"] = str(free_port())
    if ctx.launcher == "toolkit":
        command = [sys.executable, "-c", "from sagemaker_training.cli.train import main; main()"]
    else:
        # What the toolkit does: SM_NUM_GPUS from the machine, hyperparameters as --name value, cwd = code dir.
        env["SM_NUM_GPUS"] = str(visible_gpus(ctx))
        arguments = [item for key, value in hyperparameters.items() for item in (f"--{key}", str(value))]
        command = [sys.executable, str(base / "code" / "train.py"), *arguments]
    output = run_child(ctx, name, command, timeout, env=env)
    return base, output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def visible_gpus(ctx: Context) -> int:
    import torch

    return torch.cuda.device_count() if ctx.device == "cuda" else 0


def read_metrics(base: Path) -> dict:
    return json.loads((base / "output" / "data" / "metrics.json").read_text(encoding="utf-8"))


def check_amp_learns(ctx: Context) -> dict:
    """fp16 autocast + GradScaler on CUDA (bf16 on CPU): the job learns, the scaler's state is in the checkpoint."""
    plan = ctx.plan
    # One process (no torchrun), as on a one-GPU instance: the most common job.
    hyperparameters = {
        **ctx.tiny,
        "epochs": plan.learn_epochs,
        "val_fraction": 0.25,
        "augment": "off",
        "nproc_per_node": 1,
    }
    base, output = run_job(ctx, "learn", hyperparameters, plan.timeouts["learn"])
    ctx.artifacts["model_dir"] = base / "model"
    best = read_metrics(base)["best"]
    scaler = scaler_state(base / "checkpoints")
    # fp16 on CUDA; on a CPU, bf16 where it has bf16 instructions, float32 (logged as None) elsewhere.
    allowed = ("torch.float16",) if ctx.device == "cuda" else ("torch.bfloat16", "None")
    used = next((name for name in allowed if f"amp={name} " in output), None)
    require(used is not None, f"the job did not train with amp={' or '.join(allowed)}")
    require(scaler["enabled"] == (ctx.device == "cuda"), f"GradScaler enabled={scaler['enabled']} on {ctx.device}")
    require(best["val_auc"] >= plan.min_val_auc, f"val_auc={best['val_auc']:.3f} < {plan.min_val_auc}")
    return {
        "val_auc": best["val_auc"],
        "threshold": plan.min_val_auc,
        "epochs": plan.learn_epochs,
        "amp": used.removeprefix("torch.").replace("None", "float32"),
        "grad_scaler_scale": scaler.get("scale", "disabled"),
    }


def scaler_state(checkpoint_dir: Path) -> dict:
    """The GradScaler's state in the job's last checkpoint: empty when it is disabled (bf16, float32)."""
    import torch

    checkpoints = sorted(checkpoint_dir.glob("checkpoint-*.pt"))  # checkpoint-<step, zero-padded>.pt
    require(bool(checkpoints), f"no checkpoint in {checkpoint_dir}")
    scaler = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)["scaler"]
    return {"enabled": bool(scaler), **({"scale": float(scaler["scale"])} if scaler else {})}


def check_torchrun(ctx: Context) -> dict:
    """`distributed=always` with one process: toolkit -> train.py -> torchrun -> NCCL (gloo on CPU) -> DDP."""
    hyperparameters = {
        **ctx.tiny,
        **{"epochs": 1, "max_steps": 3, "val_fraction": 0.25, "nproc_per_node": 1, "distributed": "always"},
    }
    base, output = run_job(ctx, "torchrun", hyperparameters, ctx.plan.timeouts["torchrun"])
    backend = "nccl" if ctx.device == "cuda" else "gloo"
    require("torch.distributed.run" in output and "--nproc_per_node=1" in output, "torchrun was not started")
    require(f"Joined the process group: backend={backend} world_size=1" in output, f"no {backend} process group")
    require((base / "model" / "model.pt").is_file(), "no model.pt written")
    steps = read_metrics(base)["history"]
    return {"launcher": ctx.launcher, "backend": backend, "world_size": 1, "epochs": len(steps)}


# ---- using the CUDA-trained model ----


BARE_RUN = textwrap.dedent(
    """
    import json, sys, torch
    program = torch.export.load(sys.argv[1]).module()
    with torch.inference_mode():
        probabilities = program(torch.load(sys.argv[2]))
    loaded = sorted(name for name in ("birdsed", "timm", "torchaudio", "soundfile") if name in sys.modules)
    print(json.dumps({"probabilities": probabilities.tolist(), "loaded": loaded, "cuda": torch.cuda.is_available()}))
    """
)


def max_difference(rows: list[list[float]], reference: list[list[float]]) -> float:
    require(len(rows) == len(reference), f"{len(rows)} rows where {len(reference)} were expected")
    return max(
        abs(a - b) for row, expected in zip(rows, reference, strict=True) for a, b in zip(row, expected, strict=True)
    )


def check_export(ctx: Context) -> dict:
    """The CUDA-trained model's model.pt2 runs in a bare `python -I` on the CPU (torch alone, no GPU)."""
    require("model_dir" in ctx.artifacts, "no trained model (the learning check failed)")
    model_dir = ctx.artifacts["model_dir"]
    status = read_metrics(model_dir.parent)["export"]
    require(status["status"] == "ok", f"the job's export failed: {status.get('reason')}")
    env = {"PATH": os.environ.get("PATH", ""), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-I", "-c", BARE_RUN, model_dir / "model.pt2", ctx.work / "windows.pt"]
    output = run_child(ctx, "export_bare", command, 120, env=env)
    result = json.loads(output.strip().splitlines()[-1])
    require(
        not result["loaded"] and not result["cuda"], f"the bare process used {result['loaded']} cuda={result['cuda']}"
    )
    ctx.artifacts["exported"] = result["probabilities"]
    # The job compared model.pt2 with the eager model on the CPU when it exported it.
    return {
        "windows": len(result["probabilities"]),
        "max_abs_diff_vs_eager": status["max_abs_diff"],
        "imports": "torch",
    }


def check_predict(ctx: Context) -> dict:
    """`predict.py --device cuda --amp` on the soundscape agrees with the exported float32 model."""
    require("exported" in ctx.artifacts, "no exported model's output to compare with (the export check failed)")
    out = ctx.work / "predict_amp.csv"
    command = [sys.executable, CODE_DIR / "predict.py", "--model", ctx.artifacts["model_dir"], "--quiet", "--amp"]
    command += ["--audio", ctx.work / "soundscape.ogg", "--out", out, "--device", ctx.device]
    output = run_child(ctx, "predict_amp", command, ctx.plan.timeouts["predict"])
    rows = [[float(value) for value in row.split(",")[1:]] for row in out.read_text(encoding="utf-8").splitlines()[1:]]
    require(all(0.0 <= value <= 1.0 for row in rows for value in row), "probabilities outside [0, 1]")
    difference = max_difference(rows, ctx.artifacts["exported"])
    require(difference < 0.05, f"--amp on {ctx.device} differs from the float32 model.pt2 by {difference:.3g}")
    require(output.strip().endswith(f"windows={len(rows)}"), "predict.py printed no summary line")
    return {"device": ctx.device, "amp": True, "windows": len(rows), "max_abs_diff_vs_fp32": difference}


# ---- the step checks and the benchmark ----


def check_nonfinite(ctx: Context) -> dict:
    return run_step(ctx, "nonfinite", ctx.plan.timeouts["nonfinite"], backbone=ctx.plan.step_backbone)


def check_compile(ctx: Context) -> dict:
    # The tiny backbone: inductor compiles efficientnet_b0's forward and backward for minutes, not the point here.
    return run_step(ctx, "compile", ctx.plan.timeouts["compile"], backbone=ctx.tiny["backbone"])


BENCH_KEYS = (
    "model_only_samples_per_s",
    "step_samples_per_s",
    "step_efficiency",
    "aug_ms_per_batch",
    "channels_last_speedup",
)


def check_bench(ctx: Context) -> dict:
    command = [sys.executable, CODE_DIR / "bench.py", *ctx.plan.bench_args, "--workdir", ctx.work / "bench"]
    if ctx.device == "cpu":
        command += ["--data", ctx.work / "data"]
    output = run_child(ctx, "bench", command, ctx.remaining())
    figures = dict(line.split("=", 1) for line in output.splitlines() if "=" in line and not line.startswith("$"))
    missing = [key for key in BENCH_KEYS if key not in figures]
    require(not missing, f"bench.py printed no {', '.join(missing)}")
    require(all(float(figures[key]) > 0 for key in BENCH_KEYS), f"bench figures not positive: {figures}")
    return {key: figures[key] for key in ("backbone", "batch_size", *BENCH_KEYS)}


CHECKS: tuple[tuple[str, Callable[[Context], dict]], ...] = (
    ("amp_learns", check_amp_learns),
    ("nonfinite_step_skipped", check_nonfinite),
    ("channels_last_compile_cudnn", check_compile),
    ("torchrun_process_group", check_torchrun),
    ("export_runs_on_cpu", check_export),
    ("predict_amp", check_predict),
    ("bench", check_bench),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda if available")
    parser.add_argument("--wheels", type=Path, help=f"folder of wheels (default: the first of {', '.join(WHEEL_DIRS)})")
    parser.add_argument("--workdir", type=Path, help="keep data, jobs and logs here (default: a temporary folder)")
    parser.add_argument("--time-limit", type=float, default=450.0, help="seconds for all checks (default: 450)")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: one in-process check, in a child
    parser.add_argument("--arguments", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        return run_internal_step(args.step, args.device, args.workdir, json.loads(args.arguments))
    started = time.monotonic()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="birdsed-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    plan = GPU_PLAN if device == "cuda" else SMOKE_PLAN
    site = work / "site"
    print(f"gpu_check mode={plan.mode} python={platform.python_version()} workdir={work}", flush=True)
    ctx = Context(plan, device, work, started + args.time_limit, child_environment(site, device), "train.py")
    try:
        installed_wheels = install_wheels(find_wheel_dir(args.wheels), site)
        # The children see the private wheels (child_environment); this process only asks whether they hold it.
        if importable("sagemaker_training", site):
            ctx.launcher = "toolkit"
    except CheckFailed as failure:
        installed_wheels = [f"failed: {failure}"]
    report(ctx, "setup", lambda ctx: check_setup(ctx, installed_wheels))
    if ctx.results[-1][1]:
        for name, check in CHECKS:
            report(ctx, name, check)
    failed = [name for name, passed in ctx.results if not passed]
    print(
        f"gpu_check mode={plan.mode} passed={len(ctx.results) - len(failed)} failed={len(failed)}"
        f"{' failed_checks=' + ','.join(failed) if failed else ''} seconds={time.monotonic() - started:.1f} "
        f"logs={work / 'logs'}",
        flush=True,
    )
    return 1 if failed else 0


def resolve_device(requested: str) -> str:
    """cuda when asked or available; asking for cuda without it is an error, not a silent CPU run."""
    try:
        import torch
    except ImportError as error:
        raise SystemExit(f'FAIL setup reason="this Python cannot import torch: {error}"') from None

    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: torch.cuda.is_available() is False on this machine")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


# ---------------------------------------------------------------------------------------------
# In-process checks, each run by a child (`--step NAME`) that imports birdsed from code/.


def run_internal_step(step: str, device: str, work: Path, arguments: dict) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
    result = STEPS[step](device, work, **arguments)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def step_setup(device: str, work: Path, species: int, recordings_per_species: int, seconds: list) -> dict:
    """Versions; the generated dataset; a 10 s soundscape (OGG, 32 kHz) and its windows as the model sees them."""
    import numpy as np
    import soundfile as sf
    import timm
    import torch
    import torchaudio

    from birdsed.data.audio import decode
    from birdsed.data.synthetic import make_dataset, synthesize_recording
    from birdsed.export import window_samples
    from birdsed.predict import cut_windows

    figures = {"torch": torch.__version__, "torchaudio": torchaudio.__version__, "timm": timm.__version__}
    figures["soundfile"] = sf.__version__
    if device == "cuda":
        figures.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, gpus=torch.cuda.device_count())
    make_dataset(work / "data", species, recordings_per_species, tuple(seconds), seed=7)
    labels = sorted(path.name for path in (work / "data" / "train_audio").iterdir())
    soundscape = synthesize_recording(np.random.default_rng(1), labels[0], labels[1:2], 10.0, 32000)
    sf.write(work / "soundscape.ogg", soundscape, 32000)
    cfg = tiny_config()
    windows = cut_windows(decode(work / "soundscape.ogg", cfg.data.sample_rate), window_samples(cfg))
    torch.save(torch.from_numpy(windows), work / "windows.pt")
    figures.update(recordings=species * recordings_per_species, soundscape_windows=len(windows))
    return {**figures, "tiny_hyperparameters": tiny_hyperparameters()}


def tiny_hyperparameters() -> dict:
    from birdsed.config import TINY_HYPERPARAMETERS

    return {**TINY_HYPERPARAMETERS, **TINY_EXTRAS}


def tiny_config(**overrides: object):
    from birdsed.config import from_hyperparameters

    return from_hyperparameters({**tiny_hyperparameters(), **overrides})


def tiny_trainer(backbone: str, device_name: str, compile_model: bool = False):
    """A real model, optimizer, loss and Trainer on the device, set up as a job sets them up."""
    import torch

    from birdsed.losses import create_loss
    from birdsed.models import create_model
    from birdsed.optim import create_optimizer, create_scheduler
    from birdsed.training.amp import mixed_precision
    from birdsed.training.distributed import Distributed
    from birdsed.training.loop import Trainer
    from birdsed.training.performance import configure_backends, optimise_model

    device = torch.device(device_name)
    cfg = tiny_config(backbone=backbone)
    configure_backends(device)
    torch.manual_seed(0)
    model = optimise_model(create_model(cfg, 4).to(device), compile_model)
    precision = mixed_precision("auto", device)
    optimizer = create_optimizer(model, cfg.optim)
    trainer = Trainer(
        model=model,
        loss_fn=create_loss(cfg.loss, torch.ones(4)).to(device),
        optimizer=optimizer,
        scheduler=create_scheduler(optimizer, cfg.optim, steps_per_epoch=10),
        scaler=precision.grad_scaler(),
        precision=precision,
        device=device,
        batches_per_epoch=10,
        grad_accum_steps=1,
        max_grad_norm=cfg.optim.max_grad_norm,
        max_steps=0,
        nonfinite_patience=3,
        distributed=Distributed(0, 0, 1, device),
    )
    return trainer, cfg


def make_batch(cfg, device, seed: int, poison: bool = False) -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed)
    samples = int(cfg.data.duration * cfg.data.sample_rate)
    waveform = 0.1 * torch.randn(8, samples, generator=generator)
    if poison:
        waveform[0, :100] = float("nan")
    target = torch.nn.functional.one_hot(torch.arange(8) % 4, 4).float()
    return {"waveform": waveform.to(device), "target": target.to(device), "weight": torch.ones(8, device=device)}


def train_step(trainer, progress, batch) -> float:
    from birdsed.training.loop import finish_step, forward_backward
    from birdsed.training.signals import NeverStop

    loss = forward_backward(trainer, batch)
    finish_step(trainer, progress, [loss], NeverStop())
    return float(loss)


def weights(trainer):
    import torch

    return torch.cat([parameter.detach().float().flatten() for parameter in trainer.model.parameters()])


def step_nonfinite(device: str, work: Path, backbone: str) -> dict:
    """A NaN loss is skipped by the loop; on CUDA an fp16 overflow is skipped by the GradScaler; training goes on."""
    import math

    import torch

    from birdsed.training.loop import Progress

    trainer, cfg = tiny_trainer(backbone, device)
    progress = Progress()
    train_step(trainer, progress, make_batch(cfg, device, 0))
    before, scale_before = weights(trainer), trainer.scaler.get_scale() if trainer.scaler.is_enabled() else None
    bad_loss = train_step(trainer, progress, make_batch(cfg, device, 1, poison=True))
    if not (math.isnan(bad_loss) and progress.nonfinite_steps == 1 and torch.equal(before, weights(trainer))):
        raise RuntimeError(f"a NaN loss was not skipped: loss={bad_loss} nonfinite_steps={progress.nonfinite_steps}")
    result = {"backbone": backbone, "nan_step_skipped": True, "nonfinite_steps": progress.nonfinite_steps}
    if trainer.scaler.is_enabled():
        scale_after_nan = trainer.scaler.get_scale()
        if not scale_after_nan < scale_before:
            raise RuntimeError(f"the GradScaler kept its scale {scale_before} after a NaN step")
        # An fp16 overflow: a finite loss whose scaled gradients are inf. The GradScaler skips the step itself.
        trainer.scaler.update(new_scale=2.0**60)
        before = weights(trainer)
        train_step(trainer, progress, make_batch(cfg, device, 2))
        overflow_skipped = torch.equal(before, weights(trainer)) and trainer.scaler.get_scale() < 2.0**60
        if not overflow_skipped:
            raise RuntimeError("an fp16 gradient overflow was not skipped by the GradScaler")
        # From 2**60 the scaler would need ~45 skipped steps to come down; go on from where it was.
        trainer.scaler.update(new_scale=scale_after_nan)
        result.update(scale_before=scale_before, scale_after_nan=scale_after_nan, overflow_skipped_by_scaler=True)
    before = weights(trainer)
    losses = [train_step(trainer, progress, make_batch(cfg, device, seed)) for seed in (3, 4)]
    if not (all(math.isfinite(loss) for loss in losses) and not torch.equal(before, weights(trainer))):
        raise RuntimeError(f"training did not continue after the skipped steps: losses={losses}")
    result.update(steps=progress.step, loss_after=losses[-1])
    return result


def step_compile(device: str, work: Path, backbone: str) -> dict:
    """cuDNN benchmark on, channels_last weights, torch.compile of backbone + head for a few real train steps."""
    import functools

    import torch

    from birdsed.models import create_model
    from birdsed.training.loop import Progress

    backend = "inductor"
    if device == "cpu":
        # The CPU smoke mode traces with dynamo but skips inductor's C++ code generation (minutes on 2 cores).
        backend = "eager"
        torch.compile = functools.partial(torch.compile, backend=backend)
    trainer, cfg = tiny_trainer(backbone, device, compile_model=True)
    expected_keys = list(create_model(cfg, 4).state_dict())
    keys_unchanged = list(trainer.model.state_dict()) == expected_keys
    convolutions = [p for name, p in trainer.model.named_parameters() if p.ndim == 4]
    channels_last = all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    if device == "cuda" and not (channels_last and torch.backends.cudnn.benchmark):
        raise RuntimeError(f"channels_last={channels_last} cudnn.benchmark={torch.backends.cudnn.benchmark}")
    if not keys_unchanged:
        raise RuntimeError("compiling changed the state_dict keys: checkpoints would not load into a plain model")
    progress, times = Progress(), []
    for seed in range(4):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss = train_step(trainer, progress, make_batch(cfg, device, seed))
        times.append(time.perf_counter() - started)
        if loss != loss:
            raise RuntimeError(f"non-finite loss at compiled step {seed + 1}")
    return {
        "backbone": backbone,
        "compile_backend": backend,
        "channels_last": channels_last,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "compiled_steps": len(times),
        "first_step_s": round(times[0], 1),
        "step_ms": round(1000 * min(times[1:]), 1),
        "state_dict_keys_unchanged": keys_unchanged,
    }


STEPS: dict[str, Callable[..., dict]] = {
    "setup": step_setup,
    "nonfinite": step_nonfinite,
    "compile": step_compile,
}

if __name__ == "__main__":
    sys.exit(main())
