"""The demo: a real training run on the embedded synthetic dataset, on CPU, in a few minutes.

The command-line script; the code is `birdsed_launch.demo` (installed by `make setup`).
"""

import sys

from birdsed_launch.demo import main

if __name__ == "__main__":
    sys.exit(main())
