"""Lay out a folder as SageMaker lays out /opt/ml for the image, to mount with docker/run_local.sh.

    python docker/opt_ml.py DIR --train DATA_DIR [--validation DIR] [--pretrained DIR] [--noise DIR]
                            [--soundscape-validation DIR] [--soundscapes DIR] [--hp key=value ...]

The channels are copied (links would not resolve inside the container) and the code is left out (the
image carries it); see `birdsed_launch.local_job.container_layout`.
"""

import argparse
import sys
from pathlib import Path

from birdsed_launch import local_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="the folder to lay out (mounted as /opt/ml)")
    local_job.add_job_options(parser)
    args = parser.parse_args(argv)
    local_job.container_layout(args.base, local_job.chosen_channels(args), local_job.parse_hyperparameters(args.hp))
    print(args.base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
