"""Run a trained birdsed model over recordings: BirdCLEF submission rows (+ frame-wise events).

The command-line script (see `python code/predict.py --help`); the code is `birdsed.commands.predict`.
"""

import sys

from birdsed.commands.predict import main

if __name__ == "__main__":
    sys.exit(main())
