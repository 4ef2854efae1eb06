"""Run the training container's contract on this machine, without Docker.

Lays out a folder exactly as SageMaker lays out `/opt/ml` (config JSON files, channels, code) and
runs the real sagemaker-training toolkit's `train` command on it with `SAGEMAKER_BASE_DIR`. The
demo and the end-to-end tests use it; it is also handy to try a dataset before paying for a job.

    python launch/local_job.py --base /tmp/job --train DATA_DIR [--hp epochs=3 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from birdsed import atomic
from birdsed.parsing import split_key_value
from birdsed.sm_env import CHANNELS

# This file is launch/birdsed_launch/local_job.py in the repository; the job's code is the repository's code/.
REPO_ROOT = Path(__file__).resolve().parents[2]
CODE_DIR = REPO_ROOT / "code"
# The host name SageMaker gives a single-instance job's container (docker/run_local.sh uses it too).
CONTAINER_HOST = "algo-1"


def layout(
    base: Path,
    channels: Mapping[str, Path],
    hyperparameters: Mapping[str, object],
    hosts: Sequence[str] = ("localhost",),
    current_host: str = "localhost",
    fresh: bool = False,
) -> Path:
    """Create `base` as an `/opt/ml` tree: config files, channel links, the code; returns `base`.

    `hosts` and `current_host` describe a multi-host job (one tree per host); they must resolve. `fresh`
    first removes what an earlier job left in `base`: the toolkit would resume its checkpoints, not train anew.
    """
    if fresh and base.exists():
        shutil.rmtree(base)
    write_config(base, channels, hyperparameters, hosts, current_host, interface="lo")
    data_dir = base / "input" / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, source in channels.items():
        _link(Path(source).resolve(), data_dir / name)
    _link(CODE_DIR, base / "code")
    return base


def container_layout(base: Path, channels: Mapping[str, Path], hyperparameters: Mapping[str, object]) -> Path:
    """Lay out `base` for the image (mounted part by part as /opt/ml, see docker/run_local.sh).

    Unlike `layout`, channels are copied into `input/data/<channel>` (links would not resolve inside the
    container) and the code is left out (the image carries it); the host is `algo-1`, as on SageMaker.
    """
    write_config(base, list(channels), hyperparameters, [CONTAINER_HOST], CONTAINER_HOST, interface="eth0")
    for name in ("model", "output", "checkpoints"):
        (base / name).mkdir(exist_ok=True)
    for name, source in channels.items():
        target = base / "input" / "data" / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
    return base


def write_config(
    base: Path,
    channels: Sequence[str],
    hyperparameters: Mapping[str, object],
    hosts: Sequence[str],
    current_host: str,
    interface: str,
) -> None:
    """`input/config/{hyperparameters,resourceconfig,inputdataconfig}.json`, as SageMaker writes them."""
    config_dir = base / "input" / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    # SageMaker delivers every hyperparameter value as a string.
    _write_json(config_dir / "hyperparameters.json", {key: str(value) for key, value in hyperparameters.items()})
    _write_json(
        config_dir / "resourceconfig.json",
        {"current_host": current_host, "hosts": list(hosts), "network_interface_name": interface},
    )
    _write_json(
        config_dir / "inputdataconfig.json",
        {
            name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
            for name in channels
        },
    )


def _write_json(path: Path, payload: object) -> None:
    atomic.write_text(path, json.dumps(payload, indent=2))


def _link(source: Path, target: Path) -> None:
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    target.symlink_to(source, target_is_directory=True)


def toolkit_train_command() -> list[str]:
    """The toolkit's `train` console script of the running Python environment."""
    script = Path(sys.executable).parent / "train"
    if not script.exists():
        raise SystemExit(
            f"error: the sagemaker-training toolkit's 'train' command is not installed beside {sys.executable}"
        )
    return [str(script)]


def run_toolkit(base: Path, extra_env: Mapping[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the toolkit's `train` on `base`, as the container's entrypoint would on `/opt/ml`."""
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_PROGRAM": "train.py", **(extra_env or {})}
    env.pop("SM_HPS", None)
    return subprocess.run(toolkit_train_command(), env=env, check=False, **kwargs)


def parse_hyperparameters(items: list[str]) -> dict[str, str]:
    """`--hp key=value` items -> a mapping; a malformed item ends the script with one line."""
    pairs = {}
    for item in items:
        pair = split_key_value(item)
        if pair is None:
            raise SystemExit(f"error: --hp expects key=value, got '{item}'")
        pairs[pair[0]] = pair[1]
    return pairs


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """`--train DIR` (required), `--<channel> DIR` for the other channels, `--hp KEY=VALUE` (repeatable)."""
    for name in CHANNELS:
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=Path, required=name == "train", help=f"the {name} channel's folder")
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE", help="a hyperparameter")


def chosen_channels(args: argparse.Namespace) -> dict[str, Path]:
    return {name: getattr(args, name) for name in CHANNELS if getattr(args, name)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="folder to use as /opt/ml")
    add_job_options(parser)
    args = parser.parse_args(argv)
    layout(args.base, chosen_channels(args), parse_hyperparameters(args.hp))
    return run_toolkit(args.base).returncode


if __name__ == "__main__":
    sys.exit(main())
