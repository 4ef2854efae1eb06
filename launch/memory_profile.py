"""Measure whether memory stays flat over a long CPU training run (issue: never lose a run).

The command-line script; the code is `birdsed_launch.memory_profile` (installed by `make setup`).
"""

import sys

from birdsed_launch.memory_profile import main

if __name__ == "__main__":
    sys.exit(main())
