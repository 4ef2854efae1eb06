"""Lay out a folder as SageMaker lays out /opt/ml for the container, to mount with docker/run_local.sh.

    python docker/opt_ml.py DIR --train DATA_DIR [--validation DIR] [--pretrained DIR] [--noise DIR]
                            [--soundscape-validation DIR] [--soundscapes DIR] [--hp key=value ...]

Unlike `launch/local_job.py` (no Docker: links the channels and the code), this copies the
channels into `input/data/<channel>` (links would not resolve inside the container) and leaves
the code out: the image carries it in /opt/ml/code. The host is `algo-1`, as on SageMaker;
`docker/run_local.sh` starts the container with that hostname so the toolkit's DNS check passes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

# The config files are written exactly as for the Docker-free runs (launch/local_job.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "launch"))
import local_job

HOST = "algo-1"
CHANNELS = ("train", "validation", "pretrained", "noise", "soundscape_validation", "soundscapes")


def layout(base: Path, channels: Mapping[str, Path], hyperparameters: Mapping[str, object]) -> Path:
    """Create `base` with input/config/*.json, input/data/<channel>/ and empty model/ output/ checkpoints/."""
    local_job.write_config(base, list(channels), hyperparameters, hosts=[HOST], current_host=HOST, interface="eth0")
    for name in ("model", "output", "checkpoints"):
        (base / name).mkdir(exist_ok=True)
    for name, source in channels.items():
        target = base / "input" / "data" / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="the folder to lay out (mounted as /opt/ml)")
    for name in CHANNELS:
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=Path, required=name == "train", help=f"the {name} channel's folder")
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE", help="a hyperparameter")
    args = parser.parse_args(argv)
    channels = {name: getattr(args, name) for name in CHANNELS if getattr(args, name)}
    layout(args.base, channels, local_job.parse_hyperparameters(args.hp))
    print(args.base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
