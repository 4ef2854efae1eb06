"""`--local`: the job in SDK v3 local mode, on this machine's Docker, with SageMaker's output layout.

SDK v3 (`sagemaker.train.local.local_container`) writes a compose file under a container root and
runs `docker compose up` (the v2 plugin) or else `docker-compose` (1.28 or later, for the GPU
device request); `local_gpu` asks compose for every GPU (NVIDIA Container Toolkit). The container
starts with no command, so the image's entrypoint must train when given no argument. The SDK
leaves `model.tar.gz` in `<root>/compressed_artifacts/`, ignoring the output path; this module
moves it to `<output-path>/<job-name>/output/model.tar.gz`, where SageMaker would put it.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from birdsed_launch.checks import ECR_IMAGE, LaunchError, UsageError, parse_s3_uri

logger = logging.getLogger(__name__)

ARTIFACTS = ("model.tar.gz", "output.tar.gz")
DEFAULT_OUTPUT = "birdsed-local"
COMPOSE_FILE = "docker-compose.yaml"


def local_path(value: str, option: str) -> Path:
    """A local folder from `file:///abs/path` or a plain path."""
    path = Path(value.removeprefix("file://")).expanduser().resolve()
    if value.startswith("s3://") or "://" in value.removeprefix("file://"):
        raise UsageError(f"{option} '{value}' must be a local folder (a path or file:///path) with --local")
    return path


def resolve_channels(channels: dict[str, str]) -> dict[str, str]:
    """Local folders (checked, made absolute) and S3 URIs (downloaded by the SDK) by channel name."""
    resolved = {}
    for name, source in channels.items():
        option = "--" + name.replace("_", "-")
        if source.startswith("s3://"):
            resolved[name] = parse_s3_uri(source, option).uri
            continue
        path = local_path(source, option)
        if not path.is_dir():
            raise UsageError(f"{option} {source}: no such folder")
        resolved[name] = str(path)
    return resolved


def gpu_available() -> bool:
    """True when `nvidia-smi -L` lists a GPU: then the job runs as `local_gpu`."""
    nvidia_smi = shutil.which("nvidia-smi")
    if not nvidia_smi:
        return False
    try:
        listing = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listing.returncode == 0 and "GPU" in listing.stdout


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def check_docker() -> None:
    """What SDK local mode needs, checked the way the SDK looks for it, so it fails here in one line."""
    if not shutil.which("docker"):
        raise LaunchError("--local needs Docker: no 'docker' command on PATH")
    if _run(["docker", "version", "--format", "{{.Server.Version}}"]).returncode != 0:
        raise LaunchError("--local needs a running Docker daemon: 'docker version' cannot reach it")
    compose = _run(["docker", "compose", "version"])
    match = re.search(r"version\s+v?(\d+)", compose.stdout)
    if compose.returncode == 0 and match and int(match[1]) >= 2:
        return
    if not shutil.which("docker-compose"):
        raise LaunchError(
            "--local needs Docker Compose: the 'docker compose' v2 plugin or 'docker-compose' (1.28 or later)"
        )


def check_local_image(image_uri: str) -> None:
    """An image missing locally is pulled by the SDK only from ECR; anything else must be built first."""
    if ECR_IMAGE.fullmatch(image_uri):
        return
    if _run(["docker", "image", "inspect", image_uri]).returncode != 0:
        raise LaunchError(
            f"image {image_uri} is not in the local Docker: build it (docker/build.sh) or pass --image-uri"
        )


def make_container_root(output_dir: Path) -> Path:
    """A scratch folder for the SDK beside the results (same file system: artifacts are moved, not copied)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".birdsed-local-", dir=output_dir))


def failure_reason(container_root: Path) -> str:
    """The first line of the container's `/opt/ml/output/failure`, if it wrote one."""
    for failure in sorted(container_root.glob("algo-*/output/failure")):
        lines = [line for line in failure.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[0].strip()
    return ""


def job_name(container_root: Path) -> str:
    """The job name the SDK generated, from the compose file it wrote (TRAINING_JOB_NAME)."""
    match = re.search(r"TRAINING_JOB_NAME=([A-Za-z0-9-]+)", (container_root / COMPOSE_FILE).read_text())
    if not match:
        raise LaunchError(f"local mode: no TRAINING_JOB_NAME in {container_root / COMPOSE_FILE}")
    return match[1]


def collect_artifacts(container_root: Path, output_dir: Path) -> Path:
    """Move the SDK's archives to `<output>/<job>/output/` and drop the scratch folder; returns model.tar.gz."""
    destination = output_dir / job_name(container_root) / "output"
    destination.mkdir(parents=True, exist_ok=True)
    for name in ARTIFACTS:
        source = container_root / "compressed_artifacts" / name
        if source.exists():
            shutil.move(source, destination / name)
    try:
        shutil.rmtree(container_root)
    except OSError as error:  # files the container wrote as root, on a machine where we are not root
        logger.warning("could not remove %s (%s); remove it with 'sudo rm -rf'", container_root, error.strerror)
    return destination / "model.tar.gz"
