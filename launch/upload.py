"""Upload a BirdCLEF-style dataset, or a prepared cache, to S3 for `submit.py --train`.

The command-line script; the code is `birdsed_launch.upload` (installed by `make setup`).
"""

import sys

from birdsed_launch.upload import main

if __name__ == "__main__":
    sys.exit(main())
