"""A stand-in `docker` CLI for testing SDK local mode on a machine without a Docker engine.

It answers the few commands the launcher and the SageMaker SDK run, and for
`docker compose -f FILE up ...` it does what our image would do in each service's container:
it lays out an `/opt/ml` tree from the compose file's volume mounts (as symlinks under a
temporary base folder) and runs the real sagemaker-training toolkit's `train` on it with
`SAGEMAKER_BASE_DIR`, with the compose file's environment. The one liberty: host names `algo-N`,
which compose's network resolves, are rewritten to localhost (one container at a time here).
The compose file is copied to `$FAKE_DOCKER_LOG/` for the tests to read. Images named in
`$FAKE_DOCKER_IMAGES` (comma separated) "exist"; with `$FAKE_DOCKER_NO_RUN` set no container
runs. Tests put an executable `docker` that runs this file on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
OPT_ML = "/opt/ml"


def main(argv: list[str]) -> int:
    if argv[:1] == ["version"]:
        print("27.3.1")
        return 0
    if argv[:2] == ["compose", "version"]:
        print("Docker Compose version v2.29.7")
        return 0
    if argv[:2] == ["image", "inspect"]:
        return 0 if argv[2] in os.environ.get("FAKE_DOCKER_IMAGES", "").split(",") else 1
    if argv[:1] == ["images"]:
        return 0
    if argv[:1] == ["compose"] and "up" in argv:
        return compose_up(Path(argv[argv.index("-f") + 1]))
    print(f"fake docker: unsupported command {argv}", file=sys.stderr)
    return 125


def compose_up(compose_file: Path) -> int:
    compose = yaml.safe_load(compose_file.read_text())
    log = Path(os.environ["FAKE_DOCKER_LOG"])
    log.mkdir(parents=True, exist_ok=True)
    shutil.copy(compose_file, log / "docker-compose.yaml")
    if os.environ.get("FAKE_DOCKER_NO_RUN"):  # tests that only read the compose file
        return 0
    codes = [run_container(service) for service in compose["services"].values()]
    return max(codes)


def run_container(service: dict) -> int:
    """The container's entrypoint with no command: the toolkit's `train` on the mounted /opt/ml."""
    with tempfile.TemporaryDirectory() as base:
        mounts = [volume.removesuffix(":z").rsplit(":", 1) for volume in service["volumes"]]
        # Outer mounts first, so an inner one (input/data/train inside input) lands inside it.
        for host, container in sorted(mounts, key=lambda mount: mount[1].count("/")):
            Path(host).mkdir(parents=True, exist_ok=True)  # docker creates a missing bind-mount source
            target = Path(base, os.path.relpath(container, OPT_ML))
            if Path(os.path.realpath(target)) == Path(host).resolve():  # already there through an outer mount
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.rmdir()
            target.symlink_to(host, target_is_directory=True)
        Path(base, "code").symlink_to(REPO_ROOT / "code", target_is_directory=True)
        resolve_hosts_locally(Path(base, "input", "config", "resourceconfig.json"))
        environment = dict(item.split("=", 1) for item in service["environment"])
        env = {**os.environ, **environment, "SAGEMAKER_BASE_DIR": base, "SAGEMAKER_PROGRAM": "train.py"}
        env.pop("SM_HPS", None)
        train = Path(sys.executable).parent / "train"
        return subprocess.run([str(train)], env=env, check=False).returncode


def resolve_hosts_locally(resource_config: Path) -> None:
    """Compose's network makes `algo-N` resolvable, and the toolkit waits until it is; here it is us."""
    config = json.loads(resource_config.read_text())
    names = {host: "localhost" for host in config["hosts"]}
    config["current_host"] = names[config["current_host"]]
    config["hosts"] = [names[host] for host in config["hosts"]]
    resource_config.write_text(json.dumps(config))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
