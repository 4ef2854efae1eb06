"""SageMaker training entrypoint (SAGEMAKER_PROGRAM): parse, configure, run.

Run by the sagemaker-training toolkit as `python train.py --name value ...`, or by hand the same
way; see docs/hyperparameters.md for the hyperparameters.
"""

import os
import sys
from pathlib import Path

from birdsed import supervise

if __name__ == "__main__":
    if supervise.needs_supervisor(os.environ):
        # This process only waits, so that a child killed for memory still leaves a failure reason.
        sys.exit(supervise.run([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], os.environ))
    from birdsed.commands.train import main  # torch and the rest: in the child only

    sys.exit(main(os.environ, sys.argv[1:], script=Path(__file__).resolve()))
