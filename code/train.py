"""SageMaker training entrypoint (SAGEMAKER_PROGRAM): parse, configure, run.

Run by the sagemaker-training toolkit as `python train.py --name value ...`, or by hand the same
way; see README.md for the hyperparameters.
"""

import os
import sys
from pathlib import Path

from birdsed.commands.train import main

if __name__ == "__main__":
    sys.exit(main(os.environ, sys.argv[1:], script=Path(__file__).resolve()))
