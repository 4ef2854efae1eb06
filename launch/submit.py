"""Submit a birdsed training job to Amazon SageMaker (SageMaker Python SDK v3, `ModelTrainer`).

The command-line script; the code is `birdsed_launch.submit` (installed by `make setup`).
"""

import sys

from birdsed_launch.submit import main

if __name__ == "__main__":
    sys.exit(main())
