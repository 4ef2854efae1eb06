"""Run the training container's contract on this machine, without Docker.

The command-line script; the code is `birdsed_launch.local_job` (installed by `make setup`).
"""

import sys

from birdsed_launch.local_job import main

if __name__ == "__main__":
    sys.exit(main())
