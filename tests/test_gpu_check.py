"""The GPU check (tests/gpu_check.py) in its CPU smoke mode, on an isolated interpreter, so that it cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

import gpu_check
from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "tests" / "gpu_check.py"
CHECKS = [
    "setup",
    "amp_learns",
    "nonfinite_step_skipped",
    "channels_last_compile_cudnn",
    "torchrun_process_group",
    "export_runs_on_cpu",
    "predict_amp",
    "bench",
]


def run_check(*arguments: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -I tests/gpu_check.py ...`: no PYTHONPATH, no user site, nothing of the test's own paths."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    command = [sys.executable, "-I", str(SCRIPT), *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=timeout)


@pytest.mark.slow
def test_the_cpu_smoke_mode_runs_every_check_and_passes(tmp_path):
    completed = run_check("--device", "cpu", "--workdir", str(tmp_path))
    lines = completed.stdout.splitlines()
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-2000:]
    results = [line for line in lines if line.startswith(("PASS ", "FAIL "))]
    assert [line.split()[1] for line in results] == CHECKS
    assert all(line.startswith("PASS ") for line in results), results
    assert lines[0].startswith("gpu_check mode=cpu-smoke ")
    assert lines[-1].startswith("gpu_check mode=cpu-smoke passed=8 failed=0 ")
    figures = dict(pair.split("=", 1) for pair in results[-1].split()[2:])
    assert set(gpu_check.BENCH_KEYS) <= set(figures)
    assert "backend=gloo" in results[4] and "launcher=toolkit" in results[4]


def test_checks_past_the_time_limit_fail_and_the_exit_status_says_so(tmp_path):
    completed = run_check("--device", "cpu", "--workdir", str(tmp_path), "--time-limit", "1", timeout=120)
    assert completed.returncode == 1
    (line,) = [line for line in completed.stdout.splitlines() if line.startswith(("PASS ", "FAIL "))]
    assert line.startswith("FAIL setup ") and line.endswith(' reason="not run: the time limit was reached"')
    summary = completed.stdout.splitlines()[-1]
    assert summary.startswith("gpu_check mode=cpu-smoke passed=0 failed=1 failed_checks=setup ")


def test_cuda_asked_for_without_cuda_is_refused_not_run_on_the_cpu(tmp_path):
    if gpu_check.resolve_device("auto") == "cuda":
        pytest.skip("this machine has CUDA")
    completed = run_check("--device", "cuda", "--workdir", str(tmp_path), timeout=120)
    assert completed.returncode != 0
    assert "--device cuda: torch.cuda.is_available() is False" in completed.stderr


def make_wheel(folder, name: str) -> None:
    """A minimal pure-Python wheel `name`-1.0 holding the module `name`."""
    tag = f"{name}-1.0"
    with zipfile.ZipFile(folder / f"{tag}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}.py", "VALUE = 1\n")
        wheel.writestr(f"{tag}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        wheel.writestr(
            f"{tag}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{tag}.dist-info/RECORD", "")


def test_wheels_install_offline_into_the_run_folder_and_never_shadow_installed_packages(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "birdsed_wheel_probe")
    make_wheel(wheels, "numpy")  # installed already: must not be installed again over the real one
    site = tmp_path / "site"
    assert gpu_check.install_wheels(wheels, site) == ["birdsed-wheel-probe"]
    assert (site / "birdsed_wheel_probe.py").is_file()
    assert not (site / "numpy.py").exists()
    # This process never has `site` on its path; the setup check must still see what the children will import.
    assert gpu_check.importable("birdsed_wheel_probe", site)
    assert gpu_check.importable("numpy", site)
    assert not gpu_check.importable("birdsed_not_a_module", site)
